"""kill -9 at any point, restart, kubelet-style retries: correct mounts, no duplicates, no leaks.

The shim runs as `selinux-mount-agent csi` in a subprocess. A thread drives a volume through its lifecycle
while the test kills the shim after a varying delay; after the restart the client retries the step that had
not been acknowledged (as kubelet's operation executor does) until it succeeds, and the node is checked:
exactly one mount at the staging path and at each target, exactly one loop device while staged, none after.
"""

from __future__ import annotations

import os
import random
import threading
import time

import grpc
import pytest

from csi_shim.server import build_server
from csi_shim.journal import State
from csi_shim.records import PENDING
from tests.root.csi_helpers import (Client, ShimProcess, cleanup, loops_under, mounts_at, mounts_under,
                                    shim_config)

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.slow]
ROUNDS = 12


def retry(call, *args, attempts: int = 50):
    """kubelet retries a failed or unanswered operation until it succeeds."""
    for _ in range(attempts):
        try:
            return call(*args)
        except grpc.RpcError as err:
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL):
                raise
            time.sleep(0.05)
    raise AssertionError(f"{call} never succeeded")


@pytest.fixture
def shim_process(tmp_path):
    shim = ShimProcess(tmp_path)
    try:
        yield shim
    finally:
        shim.stop()
        cleanup(str(tmp_path))
        assert not mounts_under(str(tmp_path)) and not loops_under(str(tmp_path))


def lifecycle(client, volume_id, staging, targets):
    steps = [(client.stage, volume_id, staging)]
    steps += [(client.publish, volume_id, staging, t) for t in targets]
    steps += [(client.unpublish, volume_id, t) for t in targets]
    steps += [(client.unstage, volume_id, staging)]
    return steps


def test_kill9_during_lifecycle_then_restart(shim_process, tmp_path):
    shim = shim_process.start()
    client = Client(f"{tmp_path}/csi.sock", f"{tmp_path}/kubelet")
    volume_id = retry(client.create, "pvc-restart").volume_id
    staging = client.staging_path(volume_id)
    targets = [client.target_path("pod-a"), client.target_path("pod-b")]
    steps = lifecycle(client, volume_id, staging, targets)
    rng = random.Random(1710)
    kills = 0
    for round_ in range(ROUNDS):
        done = []
        def run(steps=steps, done=done):
            try:
                for call, *args in steps:
                    done.append(call(*args))
            except grpc.RpcError:
                pass  # the shim was killed under this call

        worker = threading.Thread(target=run)
        worker.daemon = True
        worker.start()
        time.sleep(rng.uniform(0.0, 0.04))  # a lifecycle takes ~30 ms: kill inside it
        shim.kill9()
        kills += 1
        worker.join(30)
        shim.start()
        client.close()
        client = Client(f"{tmp_path}/csi.sock", f"{tmp_path}/kubelet")
        steps = lifecycle(client, volume_id, staging, targets)
        # Every step is idempotent, so the whole sequence is replayed from the start, the acknowledged
        # steps included (kubelet re-runs stage/publish for volumes it finds unmounted after a restart).
        for index, (call, *args) in enumerate(steps):
            retry(call, *args)
            if index == 2:
                assert len(mounts_at(staging)) == 1, round_
                assert all(len(mounts_at(t)) == 1 for t in targets), round_
                assert len(loops_under(str(tmp_path))) == 1, round_
        assert not mounts_under(f"{tmp_path}/kubelet"), round_
        assert not loops_under(str(tmp_path)), round_
    state = State(f"{tmp_path}/state/csi-state.json").plain()
    assert state["staged"] == {} and state["published"] == {} and list(state["volumes"]) == [volume_id]
    retry(client.delete, volume_id)
    assert os.listdir(f"{tmp_path}/state/volumes") == []
    client.close()
    assert kills == ROUNDS


def test_kill9_during_create_leaves_no_orphan_image(shim_process, tmp_path):
    shim = shim_process.start()
    client = Client(f"{tmp_path}/csi.sock", f"{tmp_path}/kubelet")
    for delay in (0.0, 0.01, 0.03, 0.06):
        def create(client=client):
            try:
                client.create("pvc-create")
            except grpc.RpcError:
                pass  # killed under the call

        worker = threading.Thread(target=create, daemon=True)
        worker.start()
        time.sleep(delay)
        shim.kill9()
        worker.join(30)
        shim.start()
        client.close()
        client = Client(f"{tmp_path}/csi.sock", f"{tmp_path}/kubelet")
    volume = retry(client.create, "pvc-create")
    images = os.listdir(f"{tmp_path}/state/volumes")
    assert images == [f"{volume.volume_id}.img"]
    retry(client.delete, volume.volume_id)
    client.close()


def test_restart_removes_the_directory_of_a_publish_killed_before_its_mount(tmp_path):
    """NodePublishVolume creates the target directory, records its intent, then mounts: a kill -9 in between
    leaves an empty directory that recovery removes along with the record."""
    config = shim_config(tmp_path)
    target = f"{config.kubelet_root}/pods/uid-1/volumes/kubernetes.io~csi/pv/mount"
    os.makedirs(target)
    state = State(config.state_file)
    with state.change():
        state.published[target] = {"volume_id": "vol-1", "staging_path": None, "label": None, "readonly": False,
                                   "mount_flags": [], "pod": None, "status": PENDING, "verification": None,
                                   "action": None}
    state.close()
    server = build_server(config)
    try:
        assert not os.path.exists(target) and os.path.isdir(os.path.dirname(target))
        assert target not in server.state.published
        assert any("never mounted" in note for note in server.recovery_notes)
    finally:
        server.stop(0)
