"""A given block device that is in use anywhere on the node is not staged: mounted in another mount namespace
(invisible in the shim's own mountinfo), or claimed exclusively by another program. Its data would otherwise be
handed to a pod while the host (or another container) keeps writing to the same filesystem."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys

import grpc
import pytest

from tests.root.csi_helpers import mounts_at, mounts_under, running_shim, status_of
from csi_shim import mounter
from tests.root.test_csi_device import VOLUME, disk, publish, stage  # noqa: F401 - disk is a fixture

pytestmark = [pytest.mark.root, pytest.mark.loop]
C = grpc.StatusCode


@pytest.fixture
def shim(tmp_path):
    with running_shim(tmp_path) as pair:
        yield pair


@pytest.fixture
def given_disk(shim, disk):
    """disk(...) whose loop devices are detached before the shim's own clean-up checks that none is left
    (detach_loop waits out a short-lived probe that still holds one open)."""
    made = []

    def attach(*args, **kwargs):
        made.append(disk(*args, **kwargs))
        return made[-1]

    yield attach
    for name in made:
        mounter.detach_loop(name)


@contextlib.contextmanager
def holder(command: list[str], ready: str = "ready"):
    """A process of its own session that prints `ready` once it holds the device; killed (its group) at exit."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if readable else ""
        assert line.strip() == ready, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()


def in_other_namespace(device: str, point: str):
    """`device` mounted at `point` in a private mount namespace of its own, as a container or a host tool would."""
    script = f'mount -t ext4 "$1" "$2" && echo ready && exec sleep 600'
    return holder(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", device, point])


def test_a_device_mounted_in_another_mount_namespace_is_not_staged(shim, given_disk, tmp_path):
    server, client = shim
    device = given_disk("ext4", {"host-secret": "kept by the host"})
    point = tmp_path / "other-namespace"
    point.mkdir()
    staging = client.staging_path(VOLUME)
    with in_other_namespace(device, str(point)) as proc:
        # Invisible here: our own mount table does not list it.
        assert not [m for m in mounts_under("/") if m.source == device]
        code, message = status_of(stage, client, staging, device)
        assert code == C.FAILED_PRECONDITION, (code, message)
        assert device in message and str(point) in message and f"process {proc.pid}" in message, message
        assert not mounts_at(staging) and not mounts_under(client.root)
        assert VOLUME not in server.state.staged
    # Once the other namespace is gone the same device stages, and a repeat stage (our own mount) passes.
    stage(client, staging, device)
    stage(client, staging, device)
    assert open(os.path.join(staging, "host-secret")).read() == "kept by the host"
    client.unstage(VOLUME, staging)


def test_our_own_mounts_and_a_containers_copy_of_them_still_pass(shim, given_disk, tmp_path):
    """The device is busy with the volume's own publish and a container's bind mount of it (what a runtime
    makes): a stage again after the staging mount went away is this volume's, not someone else's."""
    server, client = shim
    device = given_disk("ext4")
    staging = client.staging_path(VOLUME)
    target = client.target_path("pod-disk")
    stage(client, staging, device)
    publish(client, staging, target, device)
    container_root = tmp_path / "container-root"
    container_root.mkdir()
    script = 'mount --bind "$1" "$2" && echo ready && exec sleep 600'
    with holder(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", target,
                 str(container_root)]):
        stage(client, staging, device)  # a repeat while mounted
        mounter.unmount(staging)         # the staging mount went away; the pod runs on
        stage(client, staging, device)
        assert len(mounts_at(staging)) == 1
        client.unpublish(VOLUME, target)
    client.unstage(VOLUME, staging)
    assert not mounts_under(client.root)


def test_a_device_claimed_exclusively_by_another_program_is_not_staged(shim, given_disk):
    server, client = shim
    device = given_disk("ext4")
    staging = client.staging_path(VOLUME)
    script = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_EXCL); print('ready', flush=True);"
              " time.sleep(600)")
    with holder([sys.executable, "-c", script, device]):
        code, message = status_of(stage, client, staging, device)
        assert code == C.FAILED_PRECONDITION and device in message and "exclusively" in message, (code, message)
        assert not mounts_under(client.root)
    stage(client, staging, device)
    client.unstage(VOLUME, staging)


def test_a_device_held_by_device_mapper_is_not_staged(shim, given_disk, tmp_path):
    server, client = shim
    device = given_disk("ext4")
    name = f"csi-test-{os.getpid()}-{tmp_path.name}"[:120]
    sectors = int(open(f"/sys/class/block/{os.path.basename(device)}/size").read())
    made = subprocess.run(["dmsetup", "create", name, "--table", f"0 {sectors} linear {device} 0"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"device-mapper is not usable here: {made.stderr.strip().splitlines()[0]}")
    try:
        holders = os.listdir(f"/sys/class/block/{os.path.basename(device)}/holders")
        code, message = status_of(stage, client, client.staging_path(VOLUME), device)
        assert code == C.FAILED_PRECONDITION and device in message and holders[0] in message, (code, message)
        assert not mounts_under(client.root)
    finally:
        subprocess.run(["dmsetup", "remove", "--retry", name], capture_output=True)
