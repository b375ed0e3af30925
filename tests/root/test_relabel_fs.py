"""agent.relabel.volume against real mounts, device nodes and permissions: needs root (and loop devices where marked).

Each test mounts what it needs below its own tmp_path and unmounts it again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import struct
import subprocess
import time

import pytest

from agent.cli.main import main as cli_main
from agent.errors import RelabelFailed
from agent.relabel import _walker
from agent.relabel.volume import FATAL_ERRNOS, IDENTICAL_SET_IS_NOOP, relabel

XATTR = "security.selinux"
LABEL = "system_u:object_r:container_file_t:s0:c7,c8"
WANT = LABEL.encode() + b"\0"
OTHER_LABEL = "system_u:object_r:container_file_t:s0:c9,c10"

pytestmark = pytest.mark.root


def label_of(path):
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise


@pytest.fixture
def mounts():
    """Mount helper; everything mounted is unmounted (innermost first) at teardown."""
    done = []

    def mount(*args):
        subprocess.run(["mount", *map(str, args)], check=True, capture_output=True)
        done.append(str(args[-1]))

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def test_device_nodes_are_labelled_not_opened(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(root / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 250))  # a loop minor nobody uses
    stats = relabel(root, LABEL)
    assert label_of(root / "null") == WANT and label_of(root / "blk") == WANT
    assert stats.seen == 3 and stats.errors == 0


def _tree_with_inner_mount(root, mounts):
    (root / "a").mkdir(parents=True)
    (root / "a" / "file").write_text("x")
    inner = root / "a" / "mnt"
    inner.mkdir()
    mounts("-t", "tmpfs", "tmpfs", inner)
    (inner / "sub").mkdir()
    (inner / "sub" / "deep").write_text("y")
    return inner


def _check_inner_mount(root, inner):
    stats = relabel(root, LABEL, one_file_system=True)
    assert stats.other_filesystem == 1
    assert label_of(root / "a" / "file") == WANT and label_of(root) == WANT
    # The mount point shows the mounted filesystem's root: neither it nor anything in it is touched.
    assert label_of(inner) is None and label_of(inner / "sub") is None and label_of(inner / "sub" / "deep") is None
    stats = relabel(root, LABEL, one_file_system=False)
    assert stats.other_filesystem == 0
    assert label_of(inner) == WANT and label_of(inner / "sub" / "deep") == WANT


def test_mount_inside_the_tree_is_skipped_with_one_file_system(tmp_path, mounts):
    root = tmp_path / "vol"
    inner = _tree_with_inner_mount(root, mounts)
    _check_inner_mount(root, inner)


@pytest.mark.loop
def test_tmpfs_inside_an_ext4_loop_image(tmp_path, mounts):
    image = tmp_path / "ext4.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    root = tmp_path / "vol"
    root.mkdir()
    mounts("-o", "loop", image, root)
    inner = _tree_with_inner_mount(root, mounts)
    _check_inner_mount(root, inner)


def _loop_fs(tmp_path, mounts, fstype: str):
    image = tmp_path / f"{fstype}.img"
    with open(image, "wb") as handle:
        handle.truncate(320 << 20)  # xfs wants 300 MB at least
    mkfs = [f"mkfs.{fstype}", "-q", "-f" if fstype == "xfs" else "-F", str(image)]
    if not shutil.which(mkfs[0]):
        pytest.skip(f"{mkfs[0]} is not installed")
    subprocess.run(mkfs, check=True, capture_output=True)
    root = tmp_path / "vol"
    root.mkdir()
    mounts("-o", "loop", image, root)
    return root


@pytest.mark.loop
@pytest.mark.parametrize("fstype, noop", [("ext4", True), ("xfs", False)])
def test_which_filesystems_leave_a_label_set_to_its_own_value_alone(tmp_path, mounts, fstype, noop):
    # volume.IDENTICAL_SET_IS_NOOP rests on this: ext4 (Linux 4.6+) skips a set of the value an xattr already
    # has, ctime included; xfs writes it again. If a kernel changes that, this test says so.
    root = _loop_fs(tmp_path, mounts, fstype)
    (root / "f").write_text("x")
    os.setxattr(root / "f", XATTR, WANT, follow_symlinks=False)
    before = os.lstat(root / "f").st_ctime_ns
    time.sleep(0.02)
    os.setxattr(root / "f", XATTR, WANT, follow_symlinks=False)
    assert (os.lstat(root / "f").st_ctime_ns == before) is noop
    assert (fstype in IDENTICAL_SET_IS_NOOP) is noop


@pytest.mark.loop
def test_relabel_on_ext4_writes_unread_after_a_run_of_other_labels_and_keeps_right_entries(tmp_path, mounts):
    root = _loop_fs(tmp_path, mounts, "ext4")
    names = [f"f{i:04d}" for i in range(600)]
    for name in names:
        (root / name).write_text("x")
        os.setxattr(root / name, XATTR, OTHER_LABEL.encode() + b"\0", follow_symlinks=False)
    right = names[::50]  # already labelled, spread over the listing
    for name in right:
        os.setxattr(root / name, XATTR, WANT, follow_symlinks=False)
    ctimes = {name: os.lstat(root / name).st_ctime_ns for name in right}
    time.sleep(0.02)
    stats = relabel(root, LABEL, threads=1)
    assert {label_of(root / name) for name in names} == {WANT} and label_of(root) == WANT
    entries = len(names) + 2  # the root and lost+found
    assert stats.changed + stats.already_correct == stats.seen == entries and stats.errors == 0
    # Read or written unread, an entry that had the label keeps its ctime: ext4 skipped the identical set.
    assert {name: os.lstat(root / name).st_ctime_ns for name in right} == ctimes
    # The already-labelled pass reads every entry (no run of other labels builds up) and writes none.
    again = relabel(root, LABEL, threads=1)
    assert (again.changed, again.already_correct) == (0, entries)


@pytest.mark.loop
def test_unread_writes_stay_on_the_roots_filesystem_when_crossing_mounts(tmp_path, mounts):
    # ext4 root, xfs mounted below it: the xfs entries are always read first, since xfs rewrites an identical
    # value (and its ctime) where ext4 does not.
    root = _loop_fs(tmp_path, mounts, "ext4")
    inner = root / "inner"
    inner.mkdir()
    image = tmp_path / "inner-xfs.img"
    with open(image, "wb") as handle:
        handle.truncate(320 << 20)
    if not shutil.which("mkfs.xfs"):
        pytest.skip("mkfs.xfs is not installed")
    subprocess.run(["mkfs.xfs", "-q", "-f", str(image)], check=True, capture_output=True)
    mounts("-o", "loop", image, inner)
    names = [f"f{i:04d}" for i in range(300)]
    for name in names:
        (inner / name).write_text("x")
        os.setxattr(inner / name, XATTR, OTHER_LABEL.encode() + b"\0", follow_symlinks=False)
    right = names[::60]
    for name in right:
        os.setxattr(inner / name, XATTR, WANT, follow_symlinks=False)
    ctimes = {name: os.lstat(inner / name).st_ctime_ns for name in right}
    time.sleep(0.02)
    stats = relabel(root, LABEL, threads=1, one_file_system=False)
    assert stats.errors == 0 and {label_of(inner / name) for name in names} == {WANT}
    assert {name: os.lstat(inner / name).st_ctime_ns for name in right} == ctimes
    assert stats.already_correct >= len(right)


def _file_mounted_over_an_entry(tmp_path, mounts, entry):
    """A tmpfs file bind-mounted over vol/`entry`; returns (vol, the file on its own filesystem)."""
    other = tmp_path / "other"
    other.mkdir()
    mounts("-t", "tmpfs", "tmpfs", other)
    (other / "file").write_text("x")
    root = tmp_path / "vol"
    (root / entry).parent.mkdir(parents=True, exist_ok=True)
    (root / entry).parent.joinpath("plain").write_text("x")
    (root / entry).write_text("placeholder")
    mounts("--bind", other / "file", root / entry)
    return root, other / "file"


def test_bind_mounted_file_is_another_filesystem(tmp_path, mounts):
    # A file mounted over an entry (what a runtime does for /etc/hosts-like files) is on another
    # filesystem: with one_file_system it is neither labelled nor chowned, like a mounted directory.
    root, secret = _file_mounted_over_an_entry(tmp_path, mounts, "d/over")
    before = os.lstat(secret)
    stats = relabel(root, LABEL, fs_group=4321)
    assert stats.other_filesystem == 1 and stats.errors == 0
    assert label_of(secret) is None
    after = os.lstat(secret)
    assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)
    assert label_of(root / "d" / "plain") == WANT and label_of(root) == WANT
    # Without fs_group the walker stats files only because mountinfo lists a mount below the root.
    stats = relabel(root, OTHER_LABEL)
    assert stats.other_filesystem == 1 and label_of(secret) is None
    # Crossing filesystems, the mounted file is labelled like everything else.
    stats = relabel(root, LABEL, one_file_system=False)
    assert stats.other_filesystem == 0 and label_of(secret) == WANT


def test_read_only_bind_mounted_file_does_not_stop_a_walk_that_crosses_mounts(tmp_path, mounts):
    # EROFS stops a walk only on the volume's own filesystem; a read-only file mounted inside it is an error
    # on that one entry.
    root, _ = _file_mounted_over_an_entry(tmp_path, mounts, "over")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(root / "over")], check=True, capture_output=True)
    stats = relabel(root, LABEL, one_file_system=False)
    assert stats.errors_by_errno == {"EROFS": 1}
    assert [s.path for s in stats.error_samples] == [os.fsencode(root / "over")]
    assert label_of(root / "plain") == WANT and stats.root_deferred


def test_filesystem_without_labels_fails_naming_it(tmp_path, mounts):
    root = tmp_path / "vol"
    root.mkdir()
    mounts("-t", "ramfs", "ramfs", root)
    (root / "f").write_text("x")
    with pytest.raises(RelabelFailed, match=r"ramfs filesystem mounted on .*does not support SELinux labels") as exc:
        relabel(root, LABEL)
    assert exc.value.errno == errno.ENOTSUP


def test_nested_filesystem_without_labels_is_counted_when_crossing_mounts(tmp_path, mounts):
    root = tmp_path / "vol"
    (root / "r").mkdir(parents=True)
    (root / "file").write_text("x")
    mounts("-t", "ramfs", "ramfs", root / "r")
    (root / "r" / "f").write_text("x")
    stats = relabel(root, LABEL, one_file_system=False)
    assert stats.errors_by_errno.get("EOPNOTSUPP", 0) + stats.errors_by_errno.get("ENOTSUP", 0) >= 1
    assert label_of(root / "file") == WANT
    assert stats.root_deferred and label_of(root) is None


def test_read_only_filesystem(tmp_path, mounts):
    root = tmp_path / "vol"
    root.mkdir()
    mounts("-t", "tmpfs", "tmpfs", root)
    (root / "f").write_text("x")
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    with pytest.raises(RelabelFailed, match=r"tmpfs filesystem mounted on .* is read-only") as exc:
        relabel(root, LABEL)
    assert exc.value.errno == errno.EROFS
    # Already labelled: a read-only volume is fine, nothing needs writing.
    subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)
    relabel(root, LABEL)
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    stats = relabel(root, LABEL)
    assert (stats.changed, stats.already_correct, stats.errors) == (0, 2, 0)


def test_which_errnos_stop_the_walk_is_the_callers_choice(tmp_path, mounts):
    # The walker has no errno of its own that stops it: volume.py names EROFS and ENOTSUP (FATAL_ERRNOS); told
    # none, the walker counts EROFS on every entry of a read-only filesystem and finishes.
    root = tmp_path / "vol"
    root.mkdir()
    mounts("-t", "tmpfs", "tmpfs", root)
    for name in ("a", "b", "c"):
        (root / name).write_text("x")
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        told_none = _walker.walk(fd, LABEL.encode(), 1, 0, fatal_errnos=())
        assert told_none["fatal_errno"] == 0 and told_none["errors_by_errno"] == {errno.EROFS: 3}
        told = _walker.walk(fd, LABEL.encode(), 1, 0, fatal_errnos=FATAL_ERRNOS)
        assert told["fatal_errno"] == errno.EROFS and told["errors"] == 1
        with pytest.raises(ValueError, match="fatal_errnos"):
            _walker.walk(fd, LABEL.encode(), 1, 0, fatal_errnos=(0,))
        with pytest.raises(ValueError, match="fatal_errnos"):
            _walker.walk(fd, LABEL.encode(), 1, 0, fatal_errnos=tuple(range(1, _walker.MAX_FATAL + 2)))
    finally:
        os.close(fd)
    assert FATAL_ERRNOS == (errno.EROFS, errno.ENOTSUP)


_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x10


def _set_immutable(path, on: bool):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        flags = struct.unpack("l", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        flags = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("l", flags))
    finally:
        os.close(fd)


def test_immutable_entries_are_errors_with_their_paths(tmp_path, capsys):
    root = os.fsencode(tmp_path / "vol")
    os.mkdir(root)
    bad = os.path.join(root, b"locked-\xff")
    with open(bad, "w"):
        pass
    with open(os.path.join(root, b"fine"), "w"):
        pass
    try:
        _set_immutable(bad, True)
    except OSError as err:
        pytest.skip(f"immutable flag unsupported on {tmp_path}: {err.strerror}")
    try:
        stats = relabel(root, LABEL)
        assert stats.errors == 1 and stats.errors_by_errno == {"EPERM": 1}
        assert [(s.errno, s.op, s.path) for s in stats.error_samples] == [(errno.EPERM, "setxattr", bad)]
        assert label_of(os.path.join(root, b"fine")) == WANT and label_of(bad) is None
        # The root is left as it was: a labelled root must mean that everything below it is done.
        assert stats.root_deferred and label_of(root) is None
        # The CLI exits 1 (walk done, some entries failed) and shows the non-UTF-8 path escaped.
        assert cli_main(["relabel", os.fsdecode(root), "--label", LABEL, "-o", "json"]) == 1
        doc = json.loads(capsys.readouterr().out)
        assert doc["errorSamples"][0]["path"].endswith("locked-\\xff")
        assert doc["errorsByErrno"] == {"EPERM": 1} and doc["rootDeferred"] is True
    finally:
        _set_immutable(bad, False)
    # Once the entry can be written, the next walk finishes and labels the root.
    stats = relabel(root, LABEL)
    assert stats.errors == 0 and not stats.root_deferred
    assert label_of(bad) == WANT and label_of(root) == WANT


def _run_as(uid: int, func):
    """Run func() in a forked child with uid/gid `uid`; return what it returned (JSON-able)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = func()
            os.write(write_end, json.dumps(result).encode())
        except BaseException as err:  # noqa: BLE001 - report anything to the parent
            os.write(write_end, json.dumps({"exception": repr(err)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.fixture
def public_dir():
    """A directory every uid can reach (pytest's tmp_path sits below a 0700 directory)."""
    import pathlib
    import tempfile

    path = pathlib.Path(tempfile.mkdtemp(prefix="relabel-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    os.chmod(path, 0o755)
    yield path
    os.chmod(path / "vol" / "closed", 0o700) if (path / "vol" / "closed").exists() else None
    shutil.rmtree(path)


def test_unprivileged_walk_counts_permission_errors(public_dir):
    nobody = 65534
    root = public_dir / "vol"
    (root / "open").mkdir(parents=True)
    (root / "open" / "f").write_text("x")
    (root / "closed").mkdir()
    (root / "closed" / "hidden").write_text("x")
    os.chmod(root / "closed", 0o000)
    for path in (root, root / "open", root / "open" / "f"):
        os.chown(path, nobody, nobody)

    def walk():
        stats = relabel(root, LABEL, threads=2)
        return stats.to_json()

    doc = _run_as(nobody, walk)
    assert "exception" not in doc, doc
    # Without an LSM the owner may write security.* xattrs; `closed` (root's, mode 000) can be neither
    # entered (EACCES) nor labelled (EPERM), and `hidden` inside it is never reached.
    assert doc["errorsByErrno"] == {"EACCES": 1, "EPERM": 1}
    assert sorted((s["op"], s["path"].rsplit("/", 1)[1]) for s in doc["errorSamples"]) == [
        ("open", "closed"), ("setxattr", "closed")]
    # The root is left unchecked and unlabelled: something below it failed.
    assert (doc["seen"], doc["changed"], doc["rootDeferred"]) == (3, 2, True)
    for path in (root / "open", root / "open" / "f"):
        assert label_of(path) == WANT
    for path in (root, root / "closed", root / "closed" / "hidden"):
        assert label_of(path) is None


def test_every_errno_keeps_a_sample_path(public_dir):
    # Twelve EPERMs fill the first samples; the EACCES that comes after them still gets its path.
    nobody = 65534
    root = public_dir / "vol"
    root.mkdir()
    for i in range(12):
        (root / f"root-owned-{i:02d}").write_text("x")
    (root / "closed").mkdir()
    os.chmod(root / "closed", 0o000)
    os.chown(root, nobody, nobody)

    def walk():
        return relabel(root, LABEL, threads=1).to_json()

    doc = _run_as(nobody, walk)
    assert "exception" not in doc, doc
    assert doc["errorsByErrno"] == {"EACCES": 1, "EPERM": 13}
    assert {s["errno"] for s in doc["errorSamples"]} == {"EACCES", "EPERM"}
    assert len(doc["errorSamples"]) == 9  # the first 8, and the first of the errno that came later


def test_directory_that_cannot_be_entered_still_gets_label_and_fs_group(public_dir):
    nobody = 65534
    root = public_dir / "vol"
    (root / "closed").mkdir(parents=True)
    os.chown(root, nobody, 0)
    os.chown(root / "closed", nobody, 0)
    os.chmod(root / "closed", 0o000)

    def walk():
        return relabel(root, LABEL, threads=1, fs_group=nobody).to_json()

    doc = _run_as(nobody, walk)
    assert "exception" not in doc, doc
    assert doc["errorsByErrno"] == {"EACCES": 1}  # it cannot be read, but it is labelled and owned
    st = os.lstat(root / "closed")
    assert label_of(root / "closed") == WANT
    assert st.st_gid == nobody and stat.S_IMODE(st.st_mode) == 0o2770  # kubelet: ug+rw, ug+x and setgid


def test_unprivileged_walk_enters_readable_directories_it_does_not_own(public_dir):
    # O_NOATIME is refused (EPERM) on a directory the caller does not own; the walker opens it without and
    # carries on, so the walk does not depend on owning every directory.
    nobody = 65534
    root = public_dir / "vol"
    (root / "foreign").mkdir(parents=True)
    (root / "foreign" / "mine").write_text("x")
    (root / "foreign" / "deeper").mkdir()
    os.chmod(root / "foreign", 0o755)
    for path in (root, root / "foreign" / "mine", root / "foreign" / "deeper"):
        os.chown(path, nobody, nobody)

    def walk():
        return relabel(root, LABEL, threads=2).to_json()

    doc = _run_as(nobody, walk)
    assert "exception" not in doc, doc
    # Only `foreign` itself (root's) cannot be labelled; what is inside it was reached and labelled.
    assert [s["op"] for s in doc["errorSamples"]] == ["setxattr"]
    assert doc["errorSamples"][0]["path"].endswith("/foreign")
    for path in (root / "foreign" / "mine", root / "foreign" / "deeper"):
        assert label_of(path) == WANT
    assert label_of(root / "foreign") is None
    assert doc["rootDeferred"] is True and label_of(root) is None
