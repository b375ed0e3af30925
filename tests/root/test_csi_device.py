"""The built-in driver on a given block device: a pre-provisioned PV whose volume_context names `device`.

The "given" device is a loop device this test attaches itself (over a file outside the shim's state dir), so
to the shim it is any block device of the host: it is mounted as found, never formatted unless asked, never
detached, and known again after a restart.
"""

from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from csi_shim import mounter
from csi_shim.proto import csi_pb2 as pb
from csi_shim.server import build_server
from tests.root.csi_helpers import Client, capability, cleanup, mounts_at, mounts_under, running_shim, \
    shim_config, state_of, status_of

pytestmark = [pytest.mark.root, pytest.mark.loop]
C = grpc.StatusCode
VOLUME = "pv-static-disk"  # the PV's volumeHandle, chosen by whoever wrote the PV


@pytest.fixture
def shim(tmp_path):
    with running_shim(tmp_path) as pair:  # the test's own loop devices go too: their files are under tmp_path
        yield pair


@pytest.fixture
def disk(tmp_path):
    """attach(fs=None|"ext4"|"swap", files={name: text}) -> /dev/loopN over a new file under tmp_path/disks."""
    os.makedirs(tmp_path / "disks", exist_ok=True)
    made = []

    def attach(fs: str | None = "ext4", files=None) -> str:
        image = tmp_path / "disks" / f"disk{len(made)}.img"
        with open(image, "wb") as handle:
            handle.truncate(32 << 20)
        if fs == "ext4":
            content = tmp_path / "disks" / f"content{len(made)}"
            content.mkdir()
            for name, text in (files or {}).items():
                (content / name).write_text(text)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
        elif fs == "swap":
            subprocess.run(["mkswap", str(image)], check=True, capture_output=True)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                                text=True).stdout.strip()
        made.append(device)
        return device

    return attach


def attached(device: str) -> bool:
    return os.path.exists(f"/sys/block/{os.path.basename(device)}/loop/backing_file")


def blkid_type(device: str) -> str:
    out = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True)
    return out.stdout.strip()


def stage(client, staging, device=None, fs_type="", fmt=None, volume=VOLUME, **extra):
    context = dict(extra)
    if device is not None:
        context["device"] = device
    if fmt is not None:
        context["format"] = fmt
    return client.node.NodeStageVolume(pb.NodeStageVolumeRequest(
        volume_id=volume, staging_target_path=staging, volume_capability=capability(fs_type=fs_type),
        volume_context=context), timeout=60)


def publish(client, staging, target, device):
    return client.node.NodePublishVolume(pb.NodePublishVolumeRequest(
        volume_id=VOLUME, staging_target_path=staging, target_path=target, volume_capability=capability(),
        volume_context={"device": device}), timeout=60)


def test_given_device_lifecycle(shim, disk):
    server, client = shim
    device = disk("ext4", {"hello": "from the disk"})
    staging = client.staging_path(VOLUME)
    stage(client, staging, device)
    (entry,) = mounts_at(staging)
    assert entry.source == device and entry.fstype == "ext4"
    stage(client, staging, device)  # a repeat
    assert len(mounts_at(staging)) == 1
    record = state_of(server)["volumes"][VOLUME]
    assert record["device"] == device and record["fs_type"] == "ext4" and "image" not in record

    target = client.target_path("pod-disk")
    publish(client, staging, target, device)
    assert open(os.path.join(target, "hello")).read() == "from the disk"
    with open(os.path.join(target, "written"), "w") as handle:
        handle.write("by the pod")
    assert client.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=VOLUME, volume_path=target)).usage
    client.unpublish(VOLUME, target)
    client.unstage(VOLUME, staging)
    assert not mounts_under(client.root)
    assert attached(device)  # the device is the PV's, not ours: never detached
    assert server.config.image_dir and not os.listdir(server.config.image_dir)
    # Its data is still there for the next stage.
    stage(client, staging, device)
    assert open(os.path.join(staging, "written")).read() == "by the pod"
    client.unstage(VOLUME, staging)
    # DeleteVolume (a PV with reclaimPolicy Delete) forgets the record and leaves the device as it is.
    client.delete(VOLUME)
    assert VOLUME not in state_of(server)["volumes"] and attached(device) and blkid_type(device) == "ext4"


def test_blank_device_is_not_formatted_unless_asked(shim, disk):
    server, client = shim
    device = disk(None)
    staging = client.staging_path(VOLUME)
    code, message = status_of(stage, client, staging, device)
    assert code == C.FAILED_PRECONDITION and "holds no filesystem" in message and 'format: "true"' in message
    assert blkid_type(device) == "" and not mounts_at(staging)
    assert VOLUME not in state_of(server)["volumes"]

    stage(client, staging, device, fmt="true")
    assert blkid_type(device) == "ext4" and mounts_at(staging)[0].source == device
    client.unstage(VOLUME, staging)
    # Formatted once: the next stage mounts what is there, format: "true" or not.
    stage(client, staging, device, fmt="true")
    assert os.path.isdir(os.path.join(staging, "lost+found"))
    client.unstage(VOLUME, staging)


def test_devices_that_are_not_usable_are_refused(shim, disk, tmp_path):
    server, client = shim
    staging = client.staging_path(VOLUME)
    plain_file = tmp_path / "not-a-device"
    plain_file.write_text("x")
    for device, fmt, text in (("dev/loop0", None, "absolute"), ("/dev/../etc/passwd", None, "absolute"),
                              ("/dev/null", None, "not a block device"), (str(plain_file), None, "not a block device"),
                              ("/dev/no-such-disk", None, "not a block device"),
                              (disk("ext4"), "yes", "format")):
        code, message = status_of(stage, client, staging, device, fmt=fmt)
        assert code == C.INVALID_ARGUMENT and text in message, (device, message)
    code, message = status_of(stage, client, staging, volume="vol-x", fmt="true")
    assert code == C.INVALID_ARGUMENT and "only meaningful with device" in message

    swap = disk("swap")
    code, message = status_of(stage, client, staging, swap, fmt="true")
    assert code == C.FAILED_PRECONDITION and "TYPE=swap" in message and "neither mounts nor overwrites" in message
    assert blkid_type(swap) == "swap"

    ext4 = disk("ext4")
    code, message = status_of(stage, client, staging, ext4, fs_type="xfs")
    assert code == C.INVALID_ARGUMENT and f"{ext4} holds ext4, not xfs" in message

    # Mounted elsewhere on the host: someone else's filesystem, not handed to a pod.
    elsewhere = tmp_path / "host-mount"
    elsewhere.mkdir()
    mounter.mount(ext4, str(elsewhere), "ext4", 0, None)
    code, message = status_of(stage, client, staging, ext4)
    assert code == C.FAILED_PRECONDITION and f"already mounted at {elsewhere}" in message
    mounter.unmount(str(elsewhere))

    # A volume this driver created is not redirected to a device.
    created = client.create("pvc-made-here")
    code, message = status_of(stage, client, client.staging_path(created.volume_id), ext4, volume=created.volume_id)
    assert code == C.INVALID_ARGUMENT and "pre-provisioned volumes only" in message
    assert not mounts_under(client.root)
    client.delete(created.volume_id)


def test_restart_knows_a_given_device(tmp_path, disk):
    """After a restart the volume is still known: a staged mount is kept (and its device not detached), and
    after a reboot-like loss of the mounts kubelet's unpublish and unstage still succeed instead of NOT_FOUND."""
    config = shim_config(tmp_path)
    device = disk("ext4")
    server = build_server(config).start()
    client = Client(config.socket, config.kubelet_root)
    staging = client.staging_path(VOLUME)
    target = client.target_path("pod-disk")
    try:
        stage(client, staging, device)
        publish(client, staging, target, device)
        client.close()
        server.stop(0)

        server = build_server(config).start()  # recovery with the mounts in place
        client = Client(config.socket, config.kubelet_root)
        assert VOLUME in server.state.staged and target in server.state.published and attached(device)
        assert len(mounts_at(staging)) == 1 and len(mounts_at(target)) == 1
        publish(client, staging, target, device)  # kubelet's retry after the restart: adopted, not stacked
        assert len(mounts_at(target)) == 1
        client.close()
        server.stop(0)

        mounter.unmount(target)  # what a reboot does to the mounts; the state file stays
        mounter.unmount(staging)
        server = build_server(config).start()
        client = Client(config.socket, config.kubelet_root)
        assert not server.state.staged and not server.state.published and VOLUME in server.state.volumes
        assert any("forgot" in note for note in server.recovery_notes) and attached(device)
        client.unpublish(VOLUME, target)  # kubelet tears down the reconstructed volume
        client.unstage(VOLUME, staging)
        assert not os.path.exists(target) and attached(device)
    finally:
        client.close()
        server.stop(0)
        cleanup(str(tmp_path))
