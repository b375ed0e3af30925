"""`mounter.open_writable_view`: the same directory as a read-only bind's root, reached through a writable mount
of its filesystem, and nothing else: a directory swapped in under the name mountinfo gives is refused."""

from __future__ import annotations

import os

import pytest

from csi_shim import mounter
from csi_shim.plan import MS_RDONLY
from tests.root.csi_helpers import cleanup, mounts_at

pytestmark = [pytest.mark.root]


@pytest.fixture
def read_only_bind(tmp_path):
    """A tmpfs (writable), a directory in it, and a read-only bind of that directory: (tmpfs, dir, target)."""
    fs, target = tmp_path / "fs", tmp_path / "target"
    fs.mkdir()
    target.mkdir()
    mounter.mount("tmpfs", str(fs), "tmpfs", 0, "size=4m")
    try:
        (fs / "vol").mkdir()
        (fs / "vol" / "file").write_text("x")
        mounter.bind(str(fs / "vol"), str(target), MS_RDONLY)
        yield fs, fs / "vol", target
    finally:
        cleanup(str(tmp_path))


def test_the_view_is_the_same_directory_and_takes_writes(read_only_bind):
    fs, directory, target = read_only_bind
    (entry,) = mounts_at(str(target))
    root = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        assert not mounter.writable(root)
        view = mounter.open_writable_view(root, entry)
        assert view is not None
        try:
            assert (os.fstat(view).st_dev, os.fstat(view).st_ino) == (os.stat(directory).st_dev,
                                                                      os.stat(directory).st_ino)
            assert mounter.writable(view)
            os.setxattr(f"/proc/self/fd/{view}/file", "user.through-the-view", b"1")
            assert os.getxattr(target / "file", "user.through-the-view") == b"1"
        finally:
            os.close(view)
    finally:
        os.close(root)


def test_a_directory_swapped_in_under_the_name_is_no_view(read_only_bind):
    fs, directory, target = read_only_bind
    (entry,) = mounts_at(str(target))
    root = os.open(target, os.O_PATH | os.O_DIRECTORY)
    try:
        os.rename(directory, fs / "moved-away")
        (fs / "vol").mkdir()  # the name mountinfo gives for the bind's root now holds another directory
        assert mounter.open_writable_view(root, entry) is None
        os.rmdir(fs / "vol")
        os.symlink("moved-away", fs / "vol")  # nor is a symlink to the right one followed
        assert mounter.open_writable_view(root, entry) is None
    finally:
        os.close(root)
