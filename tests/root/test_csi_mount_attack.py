"""Hostile paths and races against the built-in driver, over the real socket with real threads.

kubelet creates the directories of a staging or target path, and some of them are reachable from pods (a
hostPath volume, a compromised pod with access to its own volume directory). Whoever can rename a component
of such a path while the node plugin works on it must never get a mount outside the kubelet root, nor a
directory created there, nor a mount that outlives the unstage or unpublish that answered OK. Two volumes must
never be stacked on one path, and a volume whose loop device is mounted must never be deleted.

Each attack runs a bounded number of tries and counts every unsafe outcome; the assertion is that none
happened (not that the attacker lost a race by timing).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import subprocess
import threading
import time

import grpc
import pytest

from csi_shim import mounter
from tests.root.csi_helpers import loops_under, mounts_under, running_shim, status_of

pytestmark = [pytest.mark.root, pytest.mark.loop]
C = grpc.StatusCode

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
AT_FDCWD = -100
RENAME_EXCHANGE = 2
SWAPS_PER_CALL = 200_000  # bounds the attacker; a call ends long before


def exchange(a: str, b: str) -> int:
    return _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)


class Swapper:
    """A thread that keeps exchanging a directory under the kubelet root with a symlink that points outside,
    as long as the `with` block runs; it leaves the directory at its own name again."""

    def __init__(self, directory: str, link: str):
        self.directory, self.link = directory, link
        self.stop = threading.Event()
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set() and self.swaps < SWAPS_PER_CALL:
            if exchange(self.directory, self.link) == 0:
                self.swaps += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        if os.path.islink(self.directory):
            assert exchange(self.directory, self.link) == 0
        return False


def tree(directory: str) -> set[str]:
    found = set()
    for top, dirs, files in os.walk(directory):
        found.update(os.path.join(top, name) for name in dirs + files)
    return found


def attempt(call, *args) -> bool:
    try:
        call(*args)
        return True
    except grpc.RpcError:
        return False


def finish(call, *args) -> bool:
    """kubelet retries a failed unstage or unpublish; the attack is over by then."""
    for _ in range(3):
        if attempt(call, *args):
            return True
    return False


def loop_numbers(image_dir: str) -> set[str]:
    prefix = image_dir.rstrip("/") + "/"
    return {number for backing, number in mounter.loop_devices().values() if backing.startswith(prefix)}


def mounts_of(numbers: set[str]) -> list:
    return [m for m in mounter.mounts() if m.major_minor in numbers]


def loops_left(image_dir: str) -> list[str]:
    """Loop devices still backed by an image: a detach while another process has the device open (a udev
    or blkid probe) is deferred by the kernel until that process closes it, so a bounded wait comes first."""
    for _ in range(50):
        left = loops_under(image_dir)
        if not left:
            return left
        time.sleep(0.1)
    return left


def release(directory: str) -> None:
    """Undo what a successful attack left, so that the next try starts clean (the tally keeps it)."""
    for point in sorted({m.mount_point for m in mounts_under(directory)}, key=len, reverse=True):
        with contextlib.suppress(Exception):
            mounter._libc.umount2(os.fsencode(point), mounter.MNT_DETACH)


@pytest.fixture
def shim(tmp_path):
    with running_shim(tmp_path) as pair:
        yield pair


def test_swapping_a_staging_path_component_never_mounts_outside(shim, tmp_path):
    server, client = shim
    outside = str(tmp_path / "outside")
    os.makedirs(outside)
    image_dir = server.config.image_dir
    volume = client.create("pvc-stage-swap").volume_id
    base = os.path.join(client.root, "plugins/kubernetes.io/csi/local.selinux-mount-agent")
    tally = {"mounted outside": 0, "created outside": 0, "ok but not mounted inside": 0, "left mounted": 0,
             "loop left": 0, "unstage refused": 0, "staged": 0}
    tries = 80
    for index in range(tries):
        directory = os.path.join(base, f"try-{index}")
        staging = os.path.join(directory, "globalmount")
        os.makedirs(staging)
        os.makedirs(os.path.join(outside, f"try-{index}", "globalmount"))
        link = os.path.join(base, f"swap-{index}")
        os.symlink(os.path.join(outside, f"try-{index}"), link)
        before = tree(outside)
        with Swapper(directory, link):
            staged = attempt(client.stage, volume, staging)
        tally["staged"] += staged
        if mounts_under(outside):
            tally["mounted outside"] += 1
        if tree(outside) - before:
            tally["created outside"] += 1
        if staged and not any(m.mount_point == staging for m in mounts_of(loop_numbers(image_dir))):
            tally["ok but not mounted inside"] += 1
        numbers = loop_numbers(image_dir)
        with Swapper(directory, link):
            unstaged = attempt(client.unstage, volume, staging)
        if not unstaged and not finish(client.unstage, volume, staging):
            tally["unstage refused"] += 1
        if mounts_of(numbers):
            tally["left mounted"] += 1
        if loops_left(image_dir):
            tally["loop left"] += 1
        release(outside)
        release(client.root)
        for device in loops_under(image_dir):
            subprocess.run(["losetup", "--detach", device], capture_output=True)
    unsafe = {key: value for key, value in tally.items() if key != "staged" and value}
    assert not unsafe, f"{tries} stage tries under attack ({tally['staged']} answered OK): {unsafe}"


def test_swapping_a_target_path_component_never_mounts_outside(shim, tmp_path):
    server, client = shim
    outside = str(tmp_path / "outside")
    os.makedirs(outside)
    volume = client.create("pvc-publish-swap").volume_id
    staging = client.staging_path(volume)
    client.stage(volume, staging)
    numbers = loop_numbers(server.config.image_dir)
    tally = {"mounted outside": 0, "created outside": 0, "ok but not mounted inside": 0, "left mounted": 0,
             "unpublish refused": 0, "published": 0}
    tries = 240
    for index in range(tries):
        parent = os.path.join(client.root, "pods", f"pod-{index}", "volumes/kubernetes.io~csi")
        directory = os.path.join(parent, "pv")
        os.makedirs(directory)
        os.makedirs(os.path.join(outside, f"pod-{index}", "pv"))
        link = os.path.join(parent, "swap")
        os.symlink(os.path.join(outside, f"pod-{index}", "pv"), link)
        target = os.path.join(directory, "mount")
        before = tree(outside)
        with Swapper(directory, link):
            published = attempt(client.publish, volume, staging, target)
        tally["published"] += published
        if mounts_under(outside):
            tally["mounted outside"] += 1
        if tree(outside) - before:
            tally["created outside"] += 1
        if published and not any(m.mount_point == target for m in mounts_of(numbers)):
            tally["ok but not mounted inside"] += 1
        with Swapper(directory, link):
            unpublished = attempt(client.unpublish, volume, target)
        if not unpublished and not finish(client.unpublish, volume, target):
            tally["unpublish refused"] += 1
        if [m for m in mounts_of(numbers) if m.mount_point != staging]:
            tally["left mounted"] += 1
        release(outside)
        release(os.path.join(client.root, "pods"))
    client.unstage(volume, staging)
    assert not mounts_of(numbers) and not loops_under(server.config.image_dir)
    unsafe = {key: value for key, value in tally.items() if key != "published" and value}
    assert not unsafe, f"{tries} publish tries under attack ({tally['published']} answered OK): {unsafe}"


def test_two_volumes_never_stack_on_one_staging_path(shim):
    server, client = shim
    first, second = client.create("pvc-stack-a").volume_id, client.create("pvc-stack-b").volume_id
    tries = 40
    tally = {"both staged": 0, "left mounted": 0, "unstage refused": 0, "loop left": 0}
    for index in range(tries):
        staging = os.path.join(client.root, "plugins/kubernetes.io/csi/local.selinux-mount-agent", f"shared-{index}",
                               "globalmount")
        os.makedirs(staging)
        barrier = threading.Barrier(2)
        results = {}

        def stage(volume):
            barrier.wait(30)
            results[volume] = attempt(client.stage, volume, staging)

        workers = [threading.Thread(target=stage, args=(volume,)) for volume in (first, second)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        if results.get(first) and results.get(second):
            tally["both staged"] += 1
        for volume in (first, second):
            if not finish(client.unstage, volume, staging):
                tally["unstage refused"] += 1
        if mounts_under(client.root):
            tally["left mounted"] += 1
        if loops_left(server.config.image_dir):
            tally["loop left"] += 1
        release(client.root)
        for device in loops_under(server.config.image_dir):
            subprocess.run(["losetup", "--detach", device], capture_output=True)
    unsafe = {key: value for key, value in tally.items() if value}
    assert not unsafe, f"{tries} pairs of concurrent stages on one path: {unsafe}"


def test_a_volume_with_a_live_mount_is_never_deleted(shim, tmp_path):
    server, client = shim
    volume = client.create("pvc-delete-live").volume_id
    image = server.state.volumes[volume]["image"]
    staging = client.staging_path(volume)
    client.stage(volume, staging)
    code, _ = status_of(client.delete, volume)
    assert code == C.FAILED_PRECONDITION and os.path.exists(image)

    # A mount of the volume the shim does not know of (a bind made on the host) outlives the unstage:
    # the loop device stays in use, and the image under it must stay as well.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mounter.bind(staging, str(elsewhere), 0)
    try:
        client.unstage(volume, staging)
        code, message = status_of(client.delete, volume)
        assert code == C.FAILED_PRECONDITION and str(elsewhere) in message
        assert os.path.exists(image)
    finally:
        mounter.unmount(str(elsewhere))
    client.delete(volume)
    assert not os.path.exists(image) and not loops_under(server.config.image_dir)
