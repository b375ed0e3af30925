"""Paths opened beneath a root by descriptor (csi_shim.fdpath) and the lock order (csi_shim.locks): real
directories, symlinks and threads, no root needed."""

from __future__ import annotations

import os
import threading

import pytest

from agent.errors import InvalidInput, PathOutsideRoot, VolumeNotFound
from csi_shim import fdpath
from csi_shim.locks import VolumeLocks, path_key, volume_key


@pytest.fixture(params=["openat2", "walk"])
def root(tmp_path, request, monkeypatch):
    """The kubelet root, reached through a symlink as on distributions that link /var/lib/kubelet; each test
    runs with openat2 and with the component walk used where the kernel lacks it."""
    if request.param == "walk":
        monkeypatch.setattr(fdpath, "_have_openat2", False)
    real = tmp_path / "real-kubelet"
    (real / "pods" / "uid" / "volumes").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(real, tmp_path / "kubelet")
    kubelet = fdpath.KubeletRoot(str(tmp_path / "kubelet"))
    yield kubelet
    kubelet.close()


def test_a_path_is_opened_and_named_by_the_real_root(root, tmp_path):
    given = f"{root.configured}/pods/uid/volumes/mount"
    with root.place(given, "target_path") as place:
        assert place.path == f"{tmp_path}/real-kubelet/pods/uid/volumes/mount" == root.resolved(given)
        assert place.open() is None and not place.is_directory()
        os.mkdir(place.name, dir_fd=place.parent)
        assert place.is_directory()
    with root.place(f"{root.real}/pods/uid/volumes/mount", "target_path") as again:
        assert again.path == place.path


@pytest.mark.parametrize("link", ["pods/uid", "pods/uid/volumes"])
def test_a_symlink_anywhere_below_the_root_is_refused(root, tmp_path, link):
    real = os.path.join(root.real, link)
    os.rename(real, real + "-moved")
    os.symlink(real + "-moved", real)  # points inside the root: refused all the same
    given = f"{root.configured}/pods/uid/volumes/mount"
    with pytest.raises(PathOutsideRoot, match="symbolic link") as info:
        root.place(given, "target_path")
    assert info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(VolumeNotFound, match="symbolic link"):
        root.check_volume_path(given, "volume_path")


def test_a_symlink_as_the_last_component_is_refused(root, tmp_path):
    os.symlink(tmp_path / "outside", os.path.join(root.real, "pods/uid/volumes/mount"))
    with root.place(f"{root.configured}/pods/uid/volumes/mount", "target_path") as place:
        with pytest.raises(PathOutsideRoot, match="symbolic link"):
            place.open()
        with pytest.raises(PathOutsideRoot, match="symbolic link"):
            place.check()


def test_missing_parents_and_files_in_the_way(root):
    with pytest.raises(FileNotFoundError):
        root.place(f"{root.configured}/pods/other/volumes/mount", "target_path")
    assert root.volume_place(f"{root.configured}/pods/other/volumes/mount", "volume_path") is None
    open(os.path.join(root.real, "pods/uid/file"), "w").close()
    with pytest.raises(InvalidInput, match="not a directory"):
        root.place(f"{root.configured}/pods/uid/file/mount", "target_path")
    with root.place(f"{root.configured}/pods/uid/file", "target_path") as place:
        place.check()  # a block volume's target is a file
        with pytest.raises(InvalidInput):
            place.open()


def test_locks_taken_in_any_order_never_deadlock():
    """Two calls that share two keys, naming them in opposite orders, many times over: the sorted order makes
    every round finish (a deadlock would leave the threads alive after the join)."""
    locks, rounds = VolumeLocks(), 2000
    keys = (volume_key("v"), path_key("/k/plugins/a/globalmount"))
    done = []

    def worker(order):
        for _ in range(rounds):
            with locks.hold(*order):
                done.append(order)

    threads = [threading.Thread(target=worker, args=(o,), daemon=True) for o in (keys, keys[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads) and len(done) == 2 * rounds
    assert not locks._locks and path_key(None) is None
