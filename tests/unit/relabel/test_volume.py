"""agent.relabel.volume and its C walker on real files: every assertion reads the xattrs back from the kernel.

Writing `security.selinux` needs no SELinux kernel (without an LSM the kernel stores the bytes as given),
but it needs CAP_SYS_ADMIN; without it the whole module is skipped with that reason.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import stat
import threading
import time

import pytest

from agent.relabel import _walker
from agent.cli.main import main as cli_main
from agent.errors import InvalidInput, InvalidLabel, PathOutsideRoot
from agent.node.mountinfo import read_mountinfo
from agent.relabel.volume import (IDENTICAL_SET_IS_NOOP, UNREAD_AFTER, RelabelStats, apply_fs_group, check_path,
                                  relabel, unread_after)

XATTR = "security.selinux"
LABEL = "system_u:object_r:container_file_t:s0:c1,c2"
OTHER = "system_u:object_r:container_file_t:s0:c3,c4"


def _can_write_security_xattrs(tmp_dir: str) -> str | None:
    probe = os.path.join(tmp_dir, "probe")
    with open(probe, "w"):
        pass
    try:
        os.setxattr(probe, XATTR, b"x\0")
    except OSError as err:
        return f"cannot write security.* xattrs here ({err.strerror}); needs CAP_SYS_ADMIN"
    finally:
        os.unlink(probe)
    return None


@pytest.fixture(autouse=True)
def _needs_security_xattrs(tmp_path_factory):
    reason = _can_write_security_xattrs(str(tmp_path_factory.getbasetemp()))
    if reason:
        pytest.skip(reason)


@pytest.fixture
def shm_path(tmp_path):
    """A directory on tmpfs. ext4 skips a write of an identical xattr value (no ctime change), tmpfs does not,
    so only on tmpfs does an unchanged ctime prove that the walker did not write."""
    base = "/dev/shm"
    if not os.path.isdir(base) or not os.access(base, os.W_OK):
        pytest.skip("needs a writable tmpfs at /dev/shm")
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="relabel-test-", dir=base)
    yield __import__("pathlib").Path(path)
    shutil.rmtree(path)


def label_of(path) -> bytes | None:
    try:
        return os.getxattr(path, XATTR, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA:
            return None
        raise


def _fstype_of(path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    target = os.path.realpath(path)
    mounts = [m for m in read_mountinfo() if target == m.mount_point or
              target.startswith(m.mount_point.rstrip("/") + "/")]
    return max(mounts, key=lambda m: len(m.mount_point)).fstype


def want(label: str = LABEL) -> bytes:
    return label.encode() + b"\0"


def all_entries(root):
    """Every path below root and root itself, never following symlinks."""
    out = [os.fsencode(root)]
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        out += [os.path.join(dirpath, name) for name in dirnames + filenames]
    return out


def make_tree(root, *, dirs=3, files=4, depth=2):
    os.makedirs(root, exist_ok=True)
    count = 0

    def fill(path, level):
        nonlocal count
        for f in range(files):
            with open(os.path.join(path, f"f{f}"), "w") as handle:
                handle.write("x")
            count += 1
        if level < depth:
            for d in range(dirs):
                sub = os.path.join(path, f"d{d}")
                os.mkdir(sub)
                count += 1
                fill(sub, level + 1)

    fill(root, 0)
    return count + 1  # the root


# --- the basic walk ------------------------------------------------------------------------------------


# How entries are reached: *xattrat (Linux 6.13+), each thread's own working directory and bare names (the path
# on older kernels, e.g. the enforcing guest's 6.1), or /proc/self/fd/<dirfd>/<name> where unshare is refused.
CALLS = {"xattrat": {}, "cwd": {"_no_xattrat": True}, "proc-fd": {"_force_proc": True}}


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("calls", CALLS)
def test_full_tree_every_entry_labelled(tmp_path, threads, calls):
    root = tmp_path / "vol"
    total = make_tree(root, dirs=3, files=5, depth=3)
    stats = relabel(root, LABEL, threads=threads, **CALLS[calls])
    assert isinstance(stats, RelabelStats)
    entries = all_entries(root)
    assert len(entries) == total
    assert {label_of(p) for p in entries} == {want()}
    assert (stats.seen, stats.changed, stats.already_correct, stats.errors) == (total, total, 0, 0)
    assert stats.xattr_calls == ("setxattrat" if calls == "xattrat" and _walker.xattrat_available() else "proc-fd")


def test_unread_after_only_where_a_set_of_the_same_value_is_a_noop():
    assert unread_after("ext4", compare=True, dry_run=False) == UNREAD_AFTER > 0
    assert unread_after("xfs", compare=True, dry_run=False) == 0
    assert unread_after("tmpfs", compare=True, dry_run=False) == 0
    assert unread_after("ext4", compare=True, dry_run=True) == 0  # a dry run reports what would change: it reads
    assert unread_after("ext4", compare=False, dry_run=False) == 0  # no reads to save


def test_walker_writes_the_rest_of_a_chunk_unread_after_a_run_of_other_labels(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    for i in range(10):
        (root / f"f{i}").write_text("x")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        first = _walker.walk(fd, LABEL.encode(), 1, 0, unread_after=4)
        assert (first["changed"], first["written_unread"], first["already_correct"]) == (11, 6, 0)
        assert {label_of(root / f"f{i}") for i in range(10)} == {want()}
        again = _walker.walk(fd, LABEL.encode(), 1, 0, unread_after=4)
        assert (again["changed"], again["written_unread"], again["already_correct"]) == (0, 0, 11)
        with pytest.raises(ValueError, match="unread_after"):
            _walker.walk(fd, LABEL.encode(), 1, 0, unread_after=-1)
    finally:
        os.close(fd)


def test_label_is_written_canonical_and_in_libselinux_form(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "f").write_text("x")
    stats = relabel(root, "system_u:object_r:container_file_t:s0:c2,c1-s0:c1,c2")
    assert label_of(root / "f") == b"system_u:object_r:container_file_t:s0:c1,c2\0"
    assert stats.label == "system_u:object_r:container_file_t:s0:c1,c2"


def test_special_files_symlinks_and_hard_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    os.link(root / "file", root / "hardlink")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    try:
        os.symlink(outside, root / "link-to-outside-dir")
        os.symlink(outside / "secret", root / "link-to-outside-file")
        os.symlink("dangling-target", root / "dangling")
        stats = relabel(root, LABEL, threads=2)
    finally:
        sock.close()
    for name in ("file", "hardlink", "fifo", "sock", "link-to-outside-dir", "link-to-outside-file", "dangling"):
        assert label_of(root / name) == want(), name
    assert label_of(root) == want()
    # The links themselves were labelled; what they point to was not touched.
    assert label_of(outside) is None
    assert label_of(outside / "secret") is None
    assert stats.seen == 8 and stats.errors == 0
    # The hard link is one inode seen under two names: written once, then found correct.
    assert stats.changed == 7 and stats.already_correct == 1


def test_symlink_root_labels_the_link_only(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "f").write_text("x")
    link = tmp_path / "link"
    os.symlink(target, link)
    stats = relabel(link, LABEL)
    assert stats.seen == 1
    assert label_of(link) == want()
    assert label_of(target) is None and label_of(target / "f") is None


def test_single_file_root(tmp_path):
    path = tmp_path / "one"
    path.write_text("x")
    stats = relabel(path, LABEL)
    assert (stats.seen, stats.changed) == (1, 1)
    assert label_of(path) == want()


def test_non_utf8_names(tmp_path):
    root = os.fsencode(tmp_path / "vol")
    os.mkdir(root)
    odd_dir = os.path.join(root, b"dir-\xff\xfe")
    os.mkdir(odd_dir)
    odd_file = os.path.join(odd_dir, b"file-\x80\x81")
    with open(odd_file, "w"):
        pass
    stats = relabel(root, LABEL)
    assert label_of(odd_dir) == want() and label_of(odd_file) == want()
    assert stats.seen == 3
    json.dumps(stats.to_json())


# --- compare before set ----------------------------------------------------------------------------------


def test_already_correct_entries_are_not_written(shm_path):
    root = shm_path / "vol"
    total = make_tree(root, dirs=2, files=3, depth=2)
    relabel(root, LABEL)
    before = {p: os.lstat(p).st_ctime_ns for p in all_entries(root)}
    time.sleep(0.02)
    stats = relabel(root, LABEL, threads=2)
    assert (stats.changed, stats.already_correct) == (0, total)
    assert {p: os.lstat(p).st_ctime_ns for p in all_entries(root)} == before


def test_blind_writes_do_change_ctime(shm_path):
    # The counterpart of the test above: it shows that a write is visible in ctime on this filesystem.
    root = shm_path / "vol"
    total = make_tree(root, dirs=2, files=3, depth=1)
    relabel(root, LABEL)
    before = {p: os.lstat(p).st_ctime_ns for p in all_entries(root)}
    time.sleep(0.02)
    stats = relabel(root, LABEL, compare=False)
    assert stats.changed == total
    after = {p: os.lstat(p).st_ctime_ns for p in all_entries(root)}
    assert all(after[p] > before[p] for p in before)


def test_mixed_tree_only_wrong_entries_change(shm_path):
    root = shm_path / "vol"
    root.mkdir()
    for name in ("right", "wrong", "noncanonical", "no-nul", "longer", "missing"):
        (root / name).write_text("x")
    os.setxattr(root / "right", XATTR, want(), follow_symlinks=False)
    os.setxattr(root / "wrong", XATTR, want(OTHER), follow_symlinks=False)
    os.setxattr(root / "noncanonical", XATTR, b"system_u:object_r:container_file_t:s0:c2,c1\0")
    os.setxattr(root / "no-nul", XATTR, LABEL.encode())  # how go-selinux writes it
    os.setxattr(root / "longer", XATTR, want() + b"extra" * 50)
    ctime = {name: os.lstat(root / name).st_ctime_ns for name in ("right", "no-nul")}
    stats = relabel(root, LABEL, threads=1)
    assert stats.already_correct == 2  # right, no-nul
    assert stats.changed == 5  # wrong, noncanonical, longer, missing, the root
    for name in ("right", "wrong", "noncanonical", "longer", "missing"):
        assert label_of(root / name) == want(), name
    assert label_of(root / "no-nul") == LABEL.encode()
    assert {name: os.lstat(root / name).st_ctime_ns for name in ctime} == ctime


def test_dry_run_changes_nothing(shm_path):
    root = shm_path / "vol"
    total = make_tree(root, dirs=2, files=3, depth=2)
    os.setxattr(root / "f0", XATTR, want())
    before = {p: (label_of(p), os.lstat(p).st_ctime_ns, os.lstat(p).st_mode, os.lstat(p).st_gid)
              for p in all_entries(root)}
    stats = relabel(root, LABEL, dry_run=True, fs_group=4321)
    assert stats.dry_run
    assert (stats.changed, stats.already_correct) == (total - 1, 1)
    assert stats.owner_changed == total
    after = {p: (label_of(p), os.lstat(p).st_ctime_ns, os.lstat(p).st_mode, os.lstat(p).st_gid)
             for p in all_entries(root)}
    assert after == before


# --- shape: deep, wide, huge directories -----------------------------------------------------------------


def _make_deep(root: str, depth: int, side: bool) -> None:
    """A chain of `depth` nested directories built with dir fds (the paths exceed PATH_MAX)."""
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            if side:
                os.mkdir("side", dir_fd=fd)
                side_fd = os.open("side", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=side_fd))
                os.close(side_fd)
            os.mkdir("d", dir_fd=fd)
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def _deep_labels(root: str, side: bool):
    """Labels of every entry of a tree made by _make_deep, read through /proc/self/fd paths."""
    seen = [label_of(root)]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while True:
            base = f"/proc/self/fd/{fd}"
            if side and os.path.lexists(f"{base}/side"):
                seen.append(label_of(f"{base}/side"))
                seen.append(label_of(f"{base}/side/leaf"))
            if not os.path.lexists(f"{base}/d"):
                seen.append(label_of(f"{base}/bottom"))
                return seen
            seen.append(label_of(f"{base}/d"))
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)


def _rmtree_deep(root: str) -> None:
    """Remove a _make_deep tree one level at a time (shutil.rmtree recurses and hits Python's limit)."""
    import shutil

    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while os.path.lexists(f"/proc/self/fd/{root_fd}/d"):
            os.rename("d", "top", src_dir_fd=root_fd, dst_dir_fd=root_fd)
            top_fd = os.open("top", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root_fd)
            try:
                if os.path.lexists(f"/proc/self/fd/{top_fd}/d"):
                    os.rename("d", "d", src_dir_fd=top_fd, dst_dir_fd=root_fd)
            finally:
                os.close(top_fd)
            shutil.rmtree("top", dir_fd=root_fd)
    finally:
        os.close(root_fd)
    shutil.rmtree(root)


def test_depth_ten_thousand(tmp_path):
    root = str(tmp_path / "deep")
    _make_deep(root, 10_000, side=False)
    try:
        stats = relabel(root, LABEL, threads=2)
        assert stats.errors == 0
        assert stats.seen == 10_000 + 2  # the chain, the bottom file, the root
        labels = _deep_labels(root, side=False)
        assert len(labels) == 10_002 and set(labels) == {want()}
    finally:
        _rmtree_deep(root)


def _bottom_of_deep(root: str) -> os.stat_result:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while os.path.lexists(f"/proc/self/fd/{fd}/d"):
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return os.stat("bottom", dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def test_fs_group_passes_complete_a_deep_tree(tmp_path):
    """1,500 levels: the CSI shim's fsGroup pass (once an os.walk that died with RecursionError here) and the
    ownership-only walk both reach the bottom."""
    from csi_shim import publish

    root = str(tmp_path / "deep")
    _make_deep(root, 1500, side=False)
    try:
        publish.apply_fs_group(root, 4711, False)
        st = _bottom_of_deep(root)
        assert st.st_gid == 4711 and stat.S_IMODE(st.st_mode) == 0o664
        stats = apply_fs_group(root, 4712, threads=2)
        assert stats.errors == 0 and stats.seen == 1500 + 2 and stats.owner_changed == 1500 + 2
        assert _bottom_of_deep(root).st_gid == 4712
    finally:
        _rmtree_deep(root)


def test_deep_tree_with_fd_budget_reopens_directories(tmp_path):
    # Each level keeps a sibling pending, so open directories pile up; with a budget of 16 fds the walker
    # must close idle ones and reopen them from an ancestor.
    root = str(tmp_path / "deep")
    _make_deep(root, 300, side=True)
    try:
        stats = relabel(root, LABEL, threads=2, _fd_budget=16)
        assert stats.errors == 0 and stats.vanished == 0
        labels = _deep_labels(root, side=True)
        assert len(labels) == stats.seen == 1 + 300 * 3 + 1
        assert set(labels) == {want()}
        assert len(os.listdir("/proc/self/fd")) < 64  # nothing leaked
    finally:
        _rmtree_deep(root)


@pytest.mark.parametrize("threads", [1, 3])
def test_huge_flat_directory_is_split_across_threads(tmp_path, threads):
    root = tmp_path / "flat"
    root.mkdir()
    count = 20 * _walker.CHUNK_ENTRIES + 7
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    os.setxattr(root / "f17", XATTR, want())
    stats = relabel(root, LABEL, threads=threads)
    assert stats.seen == stats.changed + stats.already_correct == count + 1
    if _fstype_of(root) in IDENTICAL_SET_IS_NOOP:
        # f17 may come after a run of other labels and be written unread: counted as changed, left alone by ext4.
        assert stats.already_correct in (0, 1)
    else:
        assert stats.already_correct == 1
    assert all(label_of(root / f"f{i}") == want() for i in range(count))
    # One directory, yet every thread got a share of it (its chunks are handed to idle threads).
    if threads == 1:
        assert stats.threads_active == 1
    else:
        assert stats.threads_active >= 2


def test_wide_tree_of_many_small_directories(tmp_path):
    root = tmp_path / "wide"
    root.mkdir()
    for d in range(2000):
        sub = root / f"d{d}"
        sub.mkdir()
        (sub / "f").write_text("x")
    stats = relabel(root, LABEL, threads=4)
    assert stats.seen == 4001 and stats.errors == 0
    assert {label_of(p) for p in all_entries(root)} == {want()}


def test_large_directory_of_files_and_subdirectories(tmp_path):
    # Over the sort threshold and many chunks long, with subdirectories spread through it: chunks handed to
    # other threads queue the subdirectories they find.
    root = tmp_path / "big"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(5000):
            os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            if i % 8 == 0:
                os.mkdir(f"d{i}", dir_fd=fd)
                os.close(os.open(f"d{i}/inner", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    stats = relabel(root, LABEL, threads=3)
    assert (stats.seen, stats.changed, stats.errors) == (1 + 5000 + 2 * 625, 1 + 5000 + 2 * 625, 0)
    assert {label_of(p) for p in all_entries(root)} == {want()}


def test_directory_atimes_are_left_alone(tmp_path):
    # Reading a directory whose atime is older than its ctime updates the atime under relatime; the walk
    # opens directories with O_NOATIME, so a relabel (or a check) writes nothing but labels.
    root = tmp_path / "vol"
    make_tree(root, dirs=2, files=2, depth=2)
    control = tmp_path / "control"
    control.mkdir()
    (control / "f").write_text("x")
    old = time.time() - 3 * 86400
    dirs = [p for p in all_entries(root) if os.path.isdir(p)]
    for path in [*dirs, os.fsencode(control)]:
        os.utime(path, (old, os.stat(path).st_mtime))
    os.listdir(control)
    if os.stat(control).st_atime == pytest.approx(old, abs=1):
        pytest.skip(f"{tmp_path} does not update atimes on reads (noatime mount)")
    atimes = {p: os.stat(p).st_atime_ns for p in dirs}
    relabel(root, LABEL, threads=2)
    relabel(root, LABEL, threads=2)
    assert {label_of(p) for p in dirs} == {want()}
    assert {p: os.stat(p).st_atime_ns for p in dirs} == atimes


# --- races ---------------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a)


@pytest.mark.parametrize("calls", CALLS)
def test_race_swapping_directory_and_symlink_never_labels_outside(tmp_path, calls):
    """A hostile writer keeps swapping a directory (and a file) in the volume for symlinks that point
    outside it. However the swaps interleave with the walk, nothing outside may get the label."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(50):
        (outside / f"s{i}").write_text("s")
    (outside / "sub").mkdir()
    (outside / "sub" / "deeper").write_text("s")
    root = tmp_path / "vol"
    make_tree(root, dirs=3, files=20, depth=2)
    stash = tmp_path / "stash"
    stash.mkdir()
    (root / "swap").mkdir()
    for i in range(50):
        (root / "swap" / f"s{i}").write_text("x")
    os.symlink(outside, stash / "swap")
    (root / "swapfile").write_text("x")
    os.symlink(outside / "s0", stash / "swapfile")

    stop = threading.Event()
    swaps = [0]

    def swapper():
        while not stop.is_set():
            _exchange(str(root / "swap"), str(stash / "swap"))
            _exchange(str(root / "swapfile"), str(stash / "swapfile"))
            swaps[0] += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        for round_ in range(60):
            relabel(root, LABEL if round_ % 2 else OTHER, threads=2, **CALLS[calls])
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 60
    outside_entries = all_entries(outside)
    assert len(outside_entries) == 53
    assert [p for p in outside_entries if label_of(p) is not None] == []


def test_entries_vanishing_during_the_walk_are_counted_not_errors(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    names = [f"f{i}" for i in range(3000)]
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            for name in names:
                try:
                    os.unlink(root / name)
                except FileNotFoundError:
                    pass
            for name in names:
                with open(root / name, "w"):
                    pass
            for d in range(20):
                (root / f"d{d}").mkdir(exist_ok=True)
                (root / f"d{d}" / "f").write_text("x")
            for d in range(20):
                os.unlink(root / f"d{d}" / "f")
                os.rmdir(root / f"d{d}")

    for name in names:
        (root / name).write_text("x")
    thread = threading.Thread(target=churn)
    thread.start()
    vanished = 0
    try:
        for round_ in range(200):
            stats = relabel(root, LABEL if round_ % 2 else OTHER, threads=2)
            assert stats.errors == 0, stats.error_samples
            vanished += stats.vanished
            if vanished > 20:
                break
    finally:
        stop.set()
        thread.join()
    assert vanished > 0


# --- fsGroup ----------------------------------------------------------------------------------------------


def _ownership_tree(root):
    outside = root.parent / "outside-target"
    outside.write_text("o")
    os.chmod(outside, 0o600)
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    (root / "sub").mkdir()
    os.chmod(root / "sub", 0o700)
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o604)
    (root / "sub" / "exe").write_text("x")
    os.chmod(root / "sub" / "exe", 0o4755)
    os.symlink(outside, root / "link")
    return outside


def test_fs_group_always(tmp_path):
    root = tmp_path / "vol"
    outside = _ownership_tree(root)
    gid = 4242
    stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="Always")
    for path in (root, root / "sub", root / "file", root / "sub" / "exe", root / "link"):
        assert os.lstat(path).st_gid == gid, path
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    assert mode(root) == 0o755 | 0o070 | stat.S_ISGID
    assert mode(root / "sub") == 0o700 | 0o070 | stat.S_ISGID
    assert mode(root / "file") == 0o664
    assert mode(root / "sub" / "exe") == 0o4775  # setuid restored after chown cleared it, as kubelet does
    assert mode(outside) == 0o600 and os.stat(outside).st_gid != gid  # the link was not followed
    assert stats.owner_changed == 5 and stats.mode_changed == 4
    assert label_of(root / "sub" / "exe") == want()
    # Second pass: nothing to do.
    again = relabel(root, LABEL, fs_group=gid)
    assert (again.owner_changed, again.mode_changed, again.changed) == (0, 0, 0)


def test_fs_group_read_only_mask(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o600)
    relabel(root, LABEL, fs_group=77, read_only=True)
    assert stat.S_IMODE(os.lstat(root / "file").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(root).st_mode) & 0o2550 == 0o2550


def test_fs_group_on_root_mismatch(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o600)
    gid = 5151
    # Root not yet right: the walk applies ownership and labels everywhere.
    stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="OnRootMismatch")
    assert not stats.ownership_skipped and not stats.walk_skipped
    assert os.lstat(root / "file").st_gid == gid and label_of(root / "file") == want()

    # Root's ownership and label right (what a finished walk leaves), a file below wrong in both: no walk.
    os.chown(root / "file", -1, 0)
    os.setxattr(root / "file", XATTR, want(OTHER))
    before = os.lstat(root / "file").st_ctime_ns, os.lstat(root).st_ctime_ns
    stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="OnRootMismatch")
    assert stats.walk_skipped and stats.ownership_skipped
    assert (stats.seen, stats.changed, stats.already_correct, stats.owner_changed) == (1, 0, 1, 0)
    assert stats.to_json()["walkSkipped"] is True
    assert os.lstat(root / "file").st_gid == 0 and label_of(root / "file") == want(OTHER)
    assert (os.lstat(root / "file").st_ctime_ns, os.lstat(root).st_ctime_ns) == before

    # Ownership right but the root has another label: a walk that checks labels only.
    os.setxattr(root, XATTR, want(OTHER))
    stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="OnRootMismatch")
    assert stats.ownership_skipped and not stats.walk_skipped and stats.owner_changed == 0
    assert os.lstat(root / "file").st_gid == 0
    assert label_of(root / "file") == want() and label_of(root) == want()

    # The same label in another spelling still counts as the root's label (canonical compare).
    os.setxattr(root, XATTR, b"system_u:object_r:container_file_t:s0:c2,c1\0")
    assert relabel(root, LABEL, fs_group=gid, fs_group_policy="OnRootMismatch").walk_skipped

    # Always walks whatever the root says; so does a relabel without fsGroup.
    os.setxattr(root / "file", XATTR, want(OTHER))
    stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="Always")
    assert not stats.walk_skipped and os.lstat(root / "file").st_gid == gid and stats.owner_changed == 1
    assert label_of(root / "file") == want()
    os.setxattr(root / "file", XATTR, want(OTHER))
    stats = relabel(root, LABEL, fs_group_policy="OnRootMismatch")
    assert not stats.walk_skipped and label_of(root / "file") == want()


def test_on_root_mismatch_walks_when_root_label_unreadable(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    gid = 5152
    relabel(root, LABEL, fs_group=gid)
    os.setxattr(root / "file", XATTR, want(OTHER))
    for garbage in (b"not a label\0", b"\xff\xfe", None):
        if garbage is None:
            os.removexattr(root, XATTR)
        else:
            os.setxattr(root, XATTR, garbage)
        stats = relabel(root, LABEL, fs_group=gid, fs_group_policy="OnRootMismatch")
        assert not stats.walk_skipped and label_of(root / "file") == want()
        os.setxattr(root / "file", XATTR, want(OTHER))


# --- fsGroup without labels, and walks from an open fd ----------------------------------------------------------


def test_ownership_only_writes_no_label_and_follows_kubelet(tmp_path):
    root = tmp_path / "vol"
    outside = _ownership_tree(root)
    gid = 4343
    stats = apply_fs_group(root, gid, threads=2)
    for path in (root, root / "sub", root / "file", root / "sub" / "exe", root / "link"):
        assert os.lstat(path).st_gid == gid and label_of(path) is None, path
    mode = lambda p: stat.S_IMODE(os.lstat(p).st_mode)  # noqa: E731
    assert mode(root) == 0o2775 and mode(root / "sub") == 0o2770 and mode(root / "file") == 0o664
    assert mode(root / "sub" / "exe") == 0o4775  # setuid back after chown cleared it
    assert mode(outside) == 0o600 and os.stat(outside).st_gid != gid  # the link was not followed
    assert (stats.seen, stats.changed, stats.owner_changed, stats.mode_changed, stats.errors) == (5, 0, 5, 4, 0)
    again = apply_fs_group(root, gid)
    assert (again.owner_changed, again.mode_changed, again.walk_skipped) == (0, 0, False)
    # OnRootMismatch: a right root is a finished pass, nothing below is looked at; Always walks.
    os.chown(root / "file", -1, 0)
    assert apply_fs_group(root, gid, policy="OnRootMismatch").walk_skipped
    assert os.lstat(root / "file").st_gid == 0
    assert apply_fs_group(root, gid, policy="Always").owner_changed == 1


def test_ownership_only_read_only_mask(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o600)
    apply_fs_group(root, 77, read_only=True)
    assert stat.S_IMODE(os.lstat(root / "file").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(root).st_mode) & 0o2550 == 0o2550


def test_ownership_only_bad_arguments(tmp_path):
    for kwargs in (dict(gid=-1), dict(gid=True), dict(gid=None), dict(gid=5, policy="Sometimes"),
                   dict(gid=5, threads=0)):
        with pytest.raises(InvalidInput):
            apply_fs_group(tmp_path, **kwargs)
    with pytest.raises(InvalidInput, match="no such file"):
        apply_fs_group(tmp_path / "missing", 5)
    with open(tmp_path / "plain", "w") as handle:
        with pytest.raises(InvalidInput, match="not an open directory"):
            apply_fs_group(handle.fileno(), 5)


def test_walks_from_an_open_fd_leave_the_callers_fd_alone(tmp_path):
    root = tmp_path / "vol"
    _ownership_tree(root)
    for flags in (os.O_RDONLY | os.O_DIRECTORY, os.O_PATH | os.O_DIRECTORY):
        fd = os.open(root, flags)
        try:
            stats = relabel(fd, LABEL, fs_group=4344, threads=2)
            assert stats.errors == 0 and stats.seen == 5 and stats.path == os.fsencode(root)
            assert label_of(root / "sub" / "exe") == want() and os.lstat(root / "file").st_gid == 4344
            assert apply_fs_group(fd, 4345).owner_changed == 5
            if not flags & os.O_PATH:
                assert sorted(os.listdir(fd)) == ["file", "link", "sub"]  # still open, still readable
        finally:
            os.close(fd)


@pytest.mark.parametrize("path", ["/etc", "/usr", "/"])
def test_an_fd_of_a_system_directory_is_refused(path):
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(PathOutsideRoot, match="is not allowed"):
            apply_fs_group(fd, 5, dry_run=True)
        with pytest.raises(PathOutsideRoot, match="is not allowed"):
            relabel(fd, LABEL, dry_run=True)
    finally:
        os.close(fd)


# --- input checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/usr", "/usr/", "/etc/../usr", "/var/lib", "/tmp", "/root", "/home",
                                  "/etc/shadow", "//usr"])
def test_system_paths_are_refused(path):
    with pytest.raises(PathOutsideRoot, match="not allowed"):
        relabel(path, LABEL)


def test_home_and_symlinked_system_paths_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home-of-someone"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(PathOutsideRoot):
        relabel(home, LABEL)
    os.symlink("/usr", tmp_path / "usr-link")
    with pytest.raises(PathOutsideRoot):
        check_path(tmp_path / "usr-link")
    # The kernel resolves `usr-link/..` to `/`; the lexical form would say tmp_path. Both are checked.
    with pytest.raises(PathOutsideRoot, match="of / is not allowed"):
        check_path(tmp_path / "usr-link" / "..")
    # Below a system directory is allowed: only the directories themselves are refused.
    assert check_path(tmp_path / "usr-link" / "share") == os.fsencode(tmp_path / "usr-link" / "share")


@pytest.mark.parametrize("kwargs", [dict(threads=0), dict(threads=True), dict(threads="2"),
                                    dict(fs_group=-1), dict(fs_group=2**32), dict(fs_group_policy="Sometimes")])
def test_bad_options_are_refused(tmp_path, kwargs):
    with pytest.raises(InvalidInput):
        relabel(tmp_path, LABEL, **kwargs)


def test_bad_label_and_missing_path(tmp_path):
    with pytest.raises(InvalidLabel):
        relabel(tmp_path, "not a label")
    with pytest.raises(InvalidLabel):
        relabel(tmp_path, "system_u:object_r:t:s0:c2.c1")
    with pytest.raises(InvalidInput, match="no such file"):
        relabel(tmp_path / "missing", LABEL)
    assert label_of(tmp_path) is None


def test_progress_callback_sees_the_walk_and_can_stop_it(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(30000):
        (root / f"f{i}").touch()
    calls = []

    class Stop(Exception):
        pass

    def progress(p):
        calls.append(p)
        raise Stop

    with pytest.raises(Stop):
        relabel(root, LABEL, threads=1, progress=progress, progress_interval=0.001, compare=True)
    assert calls and calls[0].elapsed >= 0
    # Stopped early: the root, labelled last, has no label yet.
    assert label_of(root) is None


# --- CLI -----------------------------------------------------------------------------------------------------


def test_cli_json_and_exit_codes(tmp_path, capsys):
    root = tmp_path / "vol"
    total = make_tree(root, dirs=2, files=2, depth=1)
    assert cli_main(["relabel", str(root), "--label", LABEL, "-o", "json", "--threads", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["seen"] == doc["changed"] == total and doc["errors"] == 0 and doc["label"] == LABEL
    assert label_of(root) == want()

    assert cli_main(["relabel", str(root), "--label", OTHER, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would change" in out and f"{total}" in out
    assert label_of(root) == want()

    assert cli_main(["relabel", str(root), "--label", "bad label"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid SELinux context" in err

    assert cli_main(["relabel", "/usr", "--label", LABEL]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert cli_main(["relabel", str(tmp_path / "missing"), "--label", LABEL]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_fs_group_in_the_same_pass(tmp_path, capsys):
    root = tmp_path / "vol"
    total = make_tree(root, dirs=2, files=2, depth=1)
    assert cli_main(["relabel", str(root), "--label", LABEL, "--fs-group", "4321", "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["seen"], doc["changed"], doc["fsGroup"], doc["errors"]) == (total, total, 4321, 0)
    assert doc["ownerChanged"] == total
    for dirpath, dirnames, filenames in os.walk(root):
        st = os.lstat(dirpath)
        assert st.st_gid == 4321 and st.st_mode & 0o2070 == 0o2070  # setgid, group rwx
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_gid == 4321 and st.st_mode & 0o060 == 0o060
    # OnRootMismatch: the root is right, so nothing is walked; the table says so.
    assert cli_main(["relabel", str(root), "--label", LABEL, "--fs-group", "4321",
                     "--fs-group-policy", "OnRootMismatch"]) == 0
    assert "walk skipped" in capsys.readouterr().out


def test_progress_line_shows_after_a_second_and_is_cleared():
    import io

    from agent.cli.relabel_cmd import _ProgressLine
    from agent.relabel.volume import RelabelProgress

    stream = io.StringIO()
    line = _ProgressLine(stream)
    line(RelabelProgress(500, 10, 0.4))
    assert stream.getvalue() == ""  # short walks show nothing
    line(RelabelProgress(250_000, 1_000, 2.0))
    assert stream.getvalue() == "\rrelabel: 250,000 entries, 1,000 changed, 125,000/s, 2s\x1b[K"
    line.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_progress_line_only_on_a_terminal(tmp_path):
    """Through a real pseudo-terminal: the command asks for progress when stderr is a TTY, not otherwise."""
    import pty
    import subprocess
    import sys

    root = tmp_path / "vol"
    make_tree(root, dirs=2, files=2, depth=1)
    code = ("import sys, agent.cli.relabel_cmd as c, agent.relabel.volume as r\n"
            "real = r.relabel\n"
            "def spy(*a, **k):\n"
            "    print('progress' if k.get('progress') else 'no progress', file=sys.stdout, flush=True)\n"
            "    return real(*a, **k)\n"
            "c.relabel = spy\n"
            "from agent.cli.main import main\n"
            "sys.exit(main(['relabel', sys.argv[1], '--label', sys.argv[2], '-o', 'json']))\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(root), LABEL], stdout=subprocess.PIPE,
                              stderr=secondary, cwd=repo, timeout=60)
    finally:
        os.close(secondary)
        os.close(primary)
    assert proc.returncode == 0 and proc.stdout.decode().splitlines()[0] == "progress"
    proc = subprocess.run([sys.executable, "-c", code, str(root), OTHER], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=repo, timeout=60)
    assert proc.returncode == 0 and proc.stdout.decode().splitlines()[0] == "no progress"


def test_mount_points_below_reads_mountinfo(tmp_path):
    from agent.relabel.volume import mount_points_below

    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
        "30 22 0:30 / /data/vol rw - ext4 /dev/sdb rw\n"
        "31 30 0:31 /hosts /data/vol/etc/hosts\\040x rw - tmpfs tmpfs rw\n")
    assert mount_points_below(b"/data/vol", str(info)) is True
    assert mount_points_below(b"/data/vol/etc", str(info)) is True
    assert mount_points_below(b"/data/vol/etc/hosts x", str(info)) is False  # the root itself is not below
    assert mount_points_below(b"/data/volume", str(info)) is False  # a prefix of a name is not a parent
    assert mount_points_below(b"/data/vol", str(tmp_path / "missing")) is True  # unreadable: check anyway


def test_cli_rejects_bad_numbers(tmp_path, capsys):
    for argv in (["--threads", "0"], ["--threads", "x"], ["--fs-group", "-5"], ["--fs-group-policy", "Never"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(["relabel", str(tmp_path), "--label", LABEL, *argv])
        assert exc.value.code == 2
    capsys.readouterr()
    assert label_of(tmp_path) is None


def test_the_table_escapes_names_a_pod_wrote(capsys):
    # An error sample's path is named by whoever writes the volume: an ESC in it must not reach the terminal.
    from agent.cli.relabel_cmd import print_table
    from agent.relabel.volume import ErrorSample, RelabelStats

    name = b"/vol/\x1b]0;pwned\x07\x1b[2J"
    stats = RelabelStats(path=b"/vol/\x1b[2Jroot", label="system_u:object_r:container_file_t:s0", seen=2,
                         errors=1, errors_by_errno={"EPERM": 1},
                         error_samples=(ErrorSample(1, "setxattr", name),))
    print_table(stats)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "/vol/\\x1b]0;pwned\\x07\\x1b[2J" in out and "/vol/\\x1b[2Jroot" in out
