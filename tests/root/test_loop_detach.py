"""A loop device detached while another program holds it open (a probe such as blkid, a backup agent) is only
marked for autoclear: the kernel frees it at the last close. Unstage and DeleteVolume must not report the volume
gone while its loop device is still attached, so the detach waits for the device to be free and says so when
it stays held."""

from __future__ import annotations

import os
import subprocess
import threading

import pytest

from agent.errors import MountFailed
from csi_shim import mounter

pytestmark = [pytest.mark.root, pytest.mark.loop]


@pytest.fixture
def loop(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(8 << 20)
    device = mounter.attach_loop(str(image))
    yield str(image), device
    subprocess.run(["losetup", "--detach", device], capture_output=True)


def test_detach_returns_once_the_holder_closes_the_device(loop):
    image, device = loop
    holder = os.open(device, os.O_RDONLY)
    closer = threading.Timer(0.3, os.close, (holder,))
    closer.start()
    try:
        mounter.detach_loop(device)
        attached = mounter.find_loop(image)  # before the closer is joined: what the caller sees on return
    finally:
        closer.join()
    assert attached == [], "detach_loop returned while the loop device was still attached"


def test_detach_of_a_device_held_open_says_so(loop):
    image, device = loop
    holder = os.open(device, os.O_RDONLY)
    try:
        with pytest.raises(MountFailed, match=r"still attached.*holds it open"):
            mounter.detach_loop(device, settle=0.2)
        assert mounter.find_loop(image) == [device]
    finally:
        os.close(holder)
    mounter.detach_loop(device)  # the retry a CO makes: the holder is gone, the device goes
    assert mounter.find_loop(image) == []
