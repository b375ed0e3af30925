"""agent.relabel.apply_fs_group, kubelet's fsGroup ownership without labels, and walks rooted at an open fd.
Needs root (chown to other groups)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from agent.errors import InvalidInput, PathOutsideRoot
from agent.relabel import apply_fs_group, relabel

pytestmark = pytest.mark.root

XATTR = "security.selinux"
LABEL = "system_u:object_r:container_file_t:s0:c5,c6"
GID = 4321


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def has_label(path) -> bool:
    try:
        os.getxattr(path, XATTR, follow_symlinks=False)
        return True
    except OSError as err:
        assert err.errno in (errno.ENODATA, errno.ENOTSUP)
        return False


def _tree(root):
    outside = root.parent / "outside"
    outside.write_text("o")
    os.chmod(outside, 0o600)
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "sub").mkdir()
    os.chmod(root / "sub", 0o700)
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o604)
    (root / "sub" / "exe").write_text("x")
    os.chmod(root / "sub" / "exe", 0o4744)
    os.symlink(outside, root / "link")
    return outside


def test_ownership_only_writes_no_label_and_follows_kubelet(tmp_path):
    root = tmp_path / "vol"
    outside = _tree(root)
    stats = apply_fs_group(root, GID, threads=2)
    for path in (root, root / "sub", root / "file", root / "sub" / "exe", root / "link"):
        assert os.lstat(path).st_gid == GID, path
        assert not has_label(path), path
    assert mode(root) == 0o2775 and mode(root / "sub") == 0o2770
    assert mode(root / "file") == 0o664
    assert mode(root / "sub" / "exe") == 0o4764  # setuid back after chown cleared it; no group x for files
    assert os.stat(outside).st_gid != GID and mode(outside) == 0o600  # the link was not followed
    assert (stats.seen, stats.changed, stats.owner_changed, stats.mode_changed, stats.errors) == (5, 0, 5, 4, 0)
    again = apply_fs_group(root, GID)
    assert (again.owner_changed, again.mode_changed, again.walk_skipped) == (0, 0, False)


def test_read_only_mask_and_on_root_mismatch(tmp_path):
    root = tmp_path / "vol"
    root.mkdir()
    (root / "file").write_text("x")
    os.chmod(root / "file", 0o600)
    apply_fs_group(root, GID, read_only=True)
    assert mode(root / "file") == 0o640 and mode(root) & 0o2550 == 0o2550
    # The root is right (a finished pass): OnRootMismatch walks no further, Always does.
    os.chown(root / "file", -1, 0)
    stats = apply_fs_group(root, GID, read_only=True, policy="OnRootMismatch")
    assert stats.walk_skipped and os.lstat(root / "file").st_gid == 0
    stats = apply_fs_group(root, GID, read_only=True, policy="Always")
    assert not stats.walk_skipped and os.lstat(root / "file").st_gid == GID


def test_bad_arguments(tmp_path):
    for kwargs in (dict(gid=-1), dict(gid=True), dict(gid=GID, policy="Sometimes"), dict(gid=GID, threads=0)):
        with pytest.raises(InvalidInput):
            apply_fs_group(tmp_path, **kwargs)
    with pytest.raises(InvalidInput, match="no such file"):
        apply_fs_group(tmp_path / "missing", GID)
    with open(tmp_path / "plain", "w") as handle:
        with pytest.raises(InvalidInput, match="not an open directory"):
            apply_fs_group(handle.fileno(), GID)


def test_walks_from_an_open_fd_leave_the_callers_fd_alone(tmp_path):
    root = tmp_path / "vol"
    _tree(root)
    for flags in (os.O_RDONLY | os.O_DIRECTORY, os.O_PATH | os.O_DIRECTORY):
        fd = os.open(root, flags)
        try:
            stats = relabel(fd, LABEL, fs_group=GID, threads=2)
            assert stats.errors == 0 and stats.seen == 5 and stats.path == os.fsencode(root)
            assert has_label(root / "sub" / "exe") and os.lstat(root / "file").st_gid == GID
            assert apply_fs_group(fd, GID + 1).owner_changed == 5
            os.fstat(fd)  # still open
            if not flags & os.O_PATH:
                assert sorted(os.listdir(fd)) == ["file", "link", "sub"]
        finally:
            os.close(fd)


def test_an_fd_of_a_system_directory_is_refused():
    for path in ("/etc", "/usr", "/"):
        fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
        try:
            with pytest.raises(PathOutsideRoot, match="is not allowed"):
                apply_fs_group(fd, GID, dry_run=True)
            with pytest.raises(PathOutsideRoot, match="is not allowed"):
                relabel(fd, LABEL, dry_run=True)
        finally:
            os.close(fd)
