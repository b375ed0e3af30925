"""The proxy's node hooks without root: the label guard before the backend is called, the check of the
backend's mount after it, the relabel fallback, and the rollback through the backend when the check fails.

The backend is a CSI node plugin on its own unix socket whose "mounts" go into the same fake mount table
(csi_fake_mounter.FakeMounter) the proxy reads back; the proxy itself is the real one: gRPC forwarding of raw
bytes, the shim's error mapping, request checks, plan, records, journal, locks and openat2 paths on temp
dirs. tests/root/test_csi_proxy.py runs the proxy in front of real mounts.
"""

from __future__ import annotations

import os
from concurrent import futures

import grpc
import pytest

from csi_fake_mounter import FakeMounter, FakeNode
from csi_shim.locks import VolumeLocks
from csi_shim.plan import MS_BIND, MS_RDONLY, MS_REMOUNT
from csi_shim.proto import csi_pb2 as pb
from csi_shim.proto import csi_pb2_grpc
from csi_shim.proxy import Proxy
from tests.root.csi_helpers import LABEL_A, LABEL_B, context_flag, status_of

C = grpc.StatusCode
VOLUME = FakeNode.VOLUME


class Backend(csi_pb2_grpc.NodeServicer):
    """A node plugin that mounts the way the CO asks, flags included, into the fake mount table."""

    def __init__(self, fake: FakeMounter):
        self.fake = fake
        self.received: list[str] = []

    def NodeStageVolume(self, request, context):
        self.received.append("stage")
        flags = list(request.volume_capability.mount.mount_flags)
        context_flags = [f for f in flags if f.startswith("context=")]
        device = self.fake.attach_loop(f"/images/{request.volume_id}")
        self.fake.mount_filesystem(device, request.staging_target_path, "ext4", 0, ",".join(flags),
                                   context_flags[0] if context_flags else None)
        return pb.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, request, context):
        self.received.append("unstage")
        self.fake.remove_top(request.staging_target_path)
        self.fake.detach_image(f"/images/{request.volume_id}")
        return pb.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, request, context):
        self.received.append("publish")
        os.makedirs(request.target_path, exist_ok=True)
        self.fake.mount(request.staging_target_path, request.target_path, None, MS_BIND, None)
        if request.readonly:
            self.fake.mount("none", request.target_path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        return pb.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request, context):
        self.received.append("unpublish")
        self.fake.remove_top(request.target_path)
        if os.path.isdir(request.target_path):
            os.rmdir(request.target_path)
        return pb.NodeUnpublishVolumeResponse()


class ProxiedNode(FakeNode):
    """The proxy over the fake mounter, in front of a Backend on its own socket."""

    def __init__(self, tmp_path, **config):
        super().__init__(tmp_path, backend_endpoint=f"unix://{tmp_path}/backend.sock", **config)

    def serve(self, server):
        self.backend = Backend(self.fake)
        self.backend_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        csi_pb2_grpc.add_NodeServicer_to_server(self.backend, self.backend_server)
        self.backend_server.add_insecure_port(self.config.backend_endpoint)
        self.backend_server.start()
        self.proxy = Proxy(self.config, self.state, VolumeLocks(), None, self.root, mounter=self.fake)
        server.add_generic_rpc_handlers([self.proxy])

    def close(self):
        super().close()
        self.proxy.close()
        self.backend_server.stop(0)


@pytest.fixture
def proxied(tmp_path, request):
    with ProxiedNode(tmp_path, **getattr(request, "param", {})) as subject:
        yield subject


def test_a_checked_sequence_passes_through_and_leaves_nothing(proxied):
    proxied.fake.selinux = True
    target = proxied.client.target_path("pod-1")
    proxied.client.stage(VOLUME, proxied.staging, [context_flag(LABEL_A)])
    proxied.client.publish(VOLUME, proxied.staging, target, [context_flag(LABEL_A)], pod=("team-a", "web-0"))
    record = proxied.saved()["published"][target]
    assert (record["verification"], record["action"], record["pod"]) == ("applied", "nothing", ["team-a", "web-0"])
    proxied.client.unpublish(VOLUME, target)
    proxied.client.unstage(VOLUME, proxied.staging)
    assert proxied.backend.received == ["stage", "publish", "unpublish", "unstage"]
    assert not proxied.fake.table and proxied.saved()["staged"] == proxied.saved()["published"] == {}


def test_a_label_conflict_is_refused_before_the_backend_is_called(proxied):
    proxied.client.stage(VOLUME, proxied.staging, [context_flag(LABEL_A)])
    target = proxied.client.target_path("pod-1")
    code, message = status_of(proxied.client.publish, VOLUME, proxied.staging, target, [context_flag(LABEL_B)],
                              pod=("team-a", "web-1"))
    assert code == C.FAILED_PRECONDITION
    assert message.startswith(f'conflicting SELinux labels of volume {VOLUME}: "{LABEL_A}" and "{LABEL_B}"')
    code, _ = status_of(proxied.client.stage, VOLUME, proxied.staging, [context_flag(LABEL_B)])
    assert code == C.FAILED_PRECONDITION
    assert proxied.backend.received == ["stage"] and target not in proxied.saved()["published"]


def test_a_dropped_context_is_relabelled_after_the_backends_publish(proxied):
    target = proxied.client.target_path("pod-1")
    proxied.client.stage(VOLUME, proxied.staging, [context_flag(LABEL_A)])
    assert proxied.saved()["staged"][VOLUME]["verification"] == "dropped"
    proxied.client.publish(VOLUME, proxied.staging, target, [context_flag(LABEL_A)])
    record = proxied.saved()["published"][target]
    assert (record["verification"], record["action"]) == ("dropped", "relabel")
    if os.geteuid() == 0:  # security.* xattrs need CAP_SYS_ADMIN
        assert os.getxattr(target, "security.selinux").rstrip(b"\0").decode() == LABEL_A


@pytest.mark.parametrize("proxied", [{"on_context_dropped": "fail"}], indirect=True)
def test_fail_mode_rolls_the_backend_back(proxied):
    code, message = status_of(proxied.client.stage, VOLUME, proxied.staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION
    assert message.endswith("(backend NodeStageVolume was rolled back with NodeUnstageVolume)")
    assert proxied.backend.received == ["stage", "unstage"]
    assert not proxied.fake.table and proxied.saved()["staged"] == {}
