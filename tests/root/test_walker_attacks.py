"""Hostile volumes against the relabel walker and the fsGroup pass: real threads racing real renames, real bind
mounts, real system directories. Needs root (chown to other groups, security.* xattrs, mounts).

A pod owns everything inside its volume and can rename, swap and symlink there while the node plugin works on
it; it cannot mount. Everything outside the volume must come out of a pass exactly as it went in.
"""

from __future__ import annotations

import ctypes
import os
import stat
import subprocess
import sys
import threading

import pytest

from agent.errors import PathOutsideRoot
from agent.relabel.volume import apply_fs_group, relabel
from csi_shim import publish
from test_relabel_fs import label_of, mounts  # noqa: F401 (mounts: a fixture)

pytestmark = pytest.mark.root

LABEL = "system_u:object_r:container_file_t:s0:c3,c4"
GID = 4711
HOST_FILES = 300
PASSES = 30
SWAPS_PER_PASS = 200_000  # upper bound on the attacker's loop; it stops as soon as the pass returns
RENAME_EXCHANGE = 2  # include/uapi/linux/fs.h
CLI = [sys.executable, "-c", "import sys; from agent.cli.main import main; sys.exit(main())"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _exchange(a: bytes, b: bytes) -> None:
    if _libc.renameat2(-100, a, -100, b, RENAME_EXCHANGE) != 0:  # AT_FDCWD
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _host_dir(path) -> list[str]:
    """The directory the pod must not reach: HOST_FILES files of group 0, mode 0644, no label."""
    path.mkdir()
    names = [f"f{i:03d}" for i in range(HOST_FILES)]
    for name in names:
        (path / name).write_text("host")
        os.chown(path / name, 0, 0)
        os.chmod(path / name, 0o644)
    return names


def _host_changed(host, names) -> int:
    changed = 0
    for name in names:
        st = os.lstat(host / name)
        if st.st_gid != 0 or stat.S_IMODE(st.st_mode) != 0o644 or label_of(host / name) is not None:
            changed += 1
    return changed


def _swap_attack(tmp_path, one_pass) -> int:
    """A volume with a subdirectory `d` holding the same names as the host directory, and a symlink `s` to the
    host directory; an attacker thread swaps `d` and `s` (RENAME_EXCHANGE) in a loop while `one_pass(vol)`
    runs, PASSES times. Returns how many host files changed."""
    host = tmp_path / "host"
    names = _host_dir(host)
    vol = tmp_path / "vol"
    (vol / "d").mkdir(parents=True)
    for name in names:
        (vol / "d" / name).write_text("pod")
    os.symlink(host, vol / "s")
    d, s = os.fsencode(vol / "d"), os.fsencode(vol / "s")
    for _ in range(PASSES):
        stop = threading.Event()

        def attacker():
            for _ in range(SWAPS_PER_PASS):
                if stop.is_set():
                    return
                _exchange(d, s)

        thread = threading.Thread(target=attacker)
        thread.start()
        try:
            one_pass(os.fspath(vol))
        except (OSError, RecursionError):
            pass  # a pass that fails is fine; one that reaches outside is not (depth: tests/unit/relabel/test_volume.py)
        finally:
            stop.set()
            thread.join()
    return _host_changed(host, names)


# ---- (a), (b): a symlink swapped in during the pass --------------------------------------------------------

def test_fs_group_pass_of_the_csi_shim_never_follows_a_swapped_symlink(tmp_path):
    changed = _swap_attack(tmp_path, lambda vol: publish.apply_fs_group(vol, GID, False))
    assert changed == 0, f"{changed} of {HOST_FILES} host files re-grouped or re-moded"


def test_ownership_walk_never_follows_a_swapped_symlink(tmp_path):
    changed = _swap_attack(tmp_path, lambda vol: apply_fs_group(vol, GID, threads=2))
    assert changed == 0, f"{changed} of {HOST_FILES} host files re-grouped or re-moded"


@pytest.mark.parametrize("no_xattrat", [False, True], ids=["xattrat", "cwd"])
def test_relabel_never_follows_a_swapped_symlink(tmp_path, no_xattrat):
    # "cwd": each thread enters the directory (fchdir) and names entries bare, as on kernels before 6.13.
    changed = _swap_attack(tmp_path, lambda vol: relabel(vol, LABEL, threads=2, fs_group=GID, _no_xattrat=no_xattrat))
    assert changed == 0, f"{changed} of {HOST_FILES} host files labelled, re-grouped or re-moded"


# ---- (d): bind mounts of the same filesystem inside the tree -------------------------------------------------

def _same_fs_binds(tmp_path, mounts):
    """One tmpfs holding the volume and an outside directory and file, bound (same st_dev) into the volume."""
    fs = tmp_path / "fs"
    fs.mkdir()
    mounts("-t", "tmpfs", "tmpfs", fs)
    outside = fs / "outside"
    names = _host_dir(outside)
    (fs / "secret").write_text("host")
    os.chmod(fs / "secret", 0o644)
    vol = fs / "vol"
    (vol / "own").mkdir(parents=True)
    (vol / "own" / "file").write_text("pod")
    (vol / "bound").mkdir()
    (vol / "boundfile").write_text("")
    mounts("--bind", outside, vol / "bound")
    mounts("--bind", fs / "secret", vol / "boundfile")
    assert os.stat(vol / "bound").st_dev == os.stat(vol).st_dev  # same filesystem: st_dev cannot tell
    return fs, vol, outside, names


def _outside_untouched(fs, outside, names):
    assert _host_changed(outside, names) == 0
    assert label_of(outside) is None and os.stat(outside).st_gid == 0
    st = os.stat(fs / "secret")
    assert label_of(fs / "secret") is None and st.st_gid == 0 and stat.S_IMODE(st.st_mode) == 0o644


@pytest.mark.parametrize("no_openat2", [False, True], ids=["openat2", "mount-id-fallback"])
def test_relabel_does_not_enter_a_same_filesystem_bind_mount(tmp_path, mounts, no_openat2):
    fs, vol, outside, names = _same_fs_binds(tmp_path, mounts)
    stats = relabel(vol, LABEL, threads=2, fs_group=GID, _no_openat2=no_openat2)
    _outside_untouched(fs, outside, names)
    assert stats.other_filesystem == 2 and stats.errors == 0
    assert label_of(vol / "own" / "file") == LABEL.encode() + b"\0"


def test_ownership_walk_does_not_enter_a_same_filesystem_bind_mount(tmp_path, mounts):
    fs, vol, outside, names = _same_fs_binds(tmp_path, mounts)
    stats = apply_fs_group(vol, GID, threads=2)
    _outside_untouched(fs, outside, names)
    assert stats.other_filesystem == 2 and stats.errors == 0
    assert os.stat(vol / "own" / "file").st_gid == GID


def test_fs_group_pass_of_the_csi_shim_does_not_enter_a_same_filesystem_bind_mount(tmp_path, mounts):
    fs, vol, outside, names = _same_fs_binds(tmp_path, mounts)
    publish.apply_fs_group(os.fspath(vol), GID, False)
    _outside_untouched(fs, outside, names)


# ---- (e), (f): system directories reached by another name -----------------------------------------------------

def _snapshot(path) -> dict:
    out = {}
    for name in sorted(os.listdir(path))[:200]:
        st = os.lstat(os.path.join(path, name))
        out[name] = (st.st_gid, st.st_mode, st.st_ctime_ns)
    return out


def test_bind_mount_of_etc_is_refused(tmp_path, mounts):
    target = tmp_path / "etc-bind"
    target.mkdir()
    mounts("--bind", "/etc", target)
    # Read-only first, so that a walker bug could not write /etc.
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
    before = _snapshot("/etc")
    for attempt in (lambda: relabel(target, LABEL), lambda: apply_fs_group(target, GID),
                    lambda: publish.apply_fs_group(os.fspath(target), GID, False)):
        with pytest.raises(PathOutsideRoot, match="is not allowed"):
            attempt()
    assert _snapshot("/etc") == before


def test_bind_mount_of_a_directory_below_a_system_path_is_refused(tmp_path, mounts):
    target = tmp_path / "share-bind"
    target.mkdir()
    mounts("--bind", "/usr/share", target)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
    with pytest.raises(PathOutsideRoot, match="is not allowed"):
        relabel(target, LABEL, dry_run=True)
    with pytest.raises(PathOutsideRoot, match="is not allowed"):
        apply_fs_group(target, GID, dry_run=True)


@pytest.mark.parametrize("path", ["/proc/1/root/etc", "/proc/self/root/usr", "/proc/self/root/etc/"])
def test_system_paths_through_proc_are_refused_in_one_line(path):
    run = subprocess.run([*CLI, "relabel", path, "--label", LABEL, "--dry-run"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert run.returncode == 2, run.stderr
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1, run.stderr
    assert "is not allowed" in run.stderr and "Traceback" not in run.stderr
