"""Proxy mode over real sockets: kubelet-like client -> shim -> a small backend node plugin (csi_backend.py).

The backend mounts tmpfs. On this host (no SELinux) a backend that keeps `context=` gets EINVAL from the
kernel, and one that drops it (as util-linux libmount does) mounts without it: the second is the realistic
failure the proxy exists for, and the tests check that the proxy notices it in mountinfo and relabels or
fails as configured.
"""

from __future__ import annotations

import os

import grpc
import pytest

from csi_shim.proto import csi_pb2 as pb
from csi_shim.server import build_server
from tests.root.csi_backend import NAME, BackendNode, serve_backend
from tests.root.csi_helpers import (LABEL_A, LABEL_B, Client, cleanup, context_flag, mounts_at, mounts_under,
                                    shim_config, status_of)

pytestmark = [pytest.mark.root]
C = grpc.StatusCode


def _walker_missing() -> str | None:
    try:
        from agent.relabel.volume import relabel  # noqa: F401
    except ImportError as err:
        return f"the relabel walker (agent.relabel.volume) is not importable yet: {err}"
    return None


needs_walker = pytest.mark.skipif(_walker_missing() is not None, reason=str(_walker_missing()))


@pytest.fixture
def proxied(tmp_path, request):
    options = dict(getattr(request, "param", {}))
    plugin = BackendNode(mode=options.pop("mode", "drop"))
    backend = serve_backend(f"{tmp_path}/backend.sock", plugin)
    config = shim_config(tmp_path, backend_endpoint=f"unix://{tmp_path}/backend.sock", **options)
    server = build_server(config).start()
    client = Client(config.socket, config.kubelet_root)
    try:
        yield plugin, server, client
    finally:
        client.close()
        server.stop(0)
        backend.stop(0)
        cleanup(str(tmp_path))
        assert not mounts_under(str(tmp_path))


def test_forwards_identity_and_unhooked_calls(proxied):
    plugin, server, client = proxied
    assert client.identity.GetPluginInfo(pb.GetPluginInfoRequest()).name == NAME
    assert client.node.NodeGetInfo(pb.NodeGetInfoRequest()).node_id == "backend-node"
    assert client.controller.CreateVolume(pb.CreateVolumeRequest(name="v")).volume.volume_id == "backend-v"
    code, _ = status_of(client.controller.ListVolumes, pb.ListVolumesRequest())
    assert code == C.UNIMPLEMENTED  # the backend's own answer, passed through


@needs_walker
def test_dropped_context_is_detected_and_relabelled(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    target = client.target_path("pod-1")
    flags = ["nosuid", context_flag(LABEL_A)]
    client.stage("vol-1", staging, flags)
    # The backend got kubelet's flags unchanged and dropped the context itself.
    name, request = plugin.received[0]
    assert name == "NodeStageVolume" and list(request.volume_capability.mount.mount_flags) == flags
    assert mounts_at(staging)[0].context is None
    with open(os.path.join(staging, "file"), "w") as handle:
        handle.write("x")
    client.publish("vol-1", staging, target, flags, pod=("ns", "p"))
    assert os.getxattr(os.path.join(target, "file"), "security.selinux").rstrip(b"\0") == LABEL_A.encode()
    assert server.state.published[target]["action"] == "relabel"
    assert server.state.published[target]["verification"] == "dropped"
    client.unpublish("vol-1", target)
    client.unstage("vol-1", staging)
    assert not server.state.staged and not server.state.published


@pytest.mark.parametrize("proxied", [{"on_context_dropped": "fail"}], indirect=True)
def test_dropped_context_fails_and_rolls_back(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    code, message = status_of(client.stage, "vol-1", staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION
    assert "shows no context=" in message and "rolled back" in message
    assert [name for name, _ in plugin.received] == ["NodeStageVolume", "NodeUnstageVolume"]
    assert not mounts_at(staging) and not server.state.staged


@pytest.mark.parametrize("proxied", [{"mode": "keep"}], indirect=True)
def test_backend_error_is_passed_through(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    code, message = status_of(client.stage, "vol-1", staging, [context_flag(LABEL_A)])
    # Without SELinux the kernel refuses context=; the backend says INTERNAL and the proxy keeps its code.
    assert code == C.INTERNAL and message.startswith("backend NodeStageVolume:")
    assert not server.state.staged


@pytest.mark.parametrize("proxied", [{"mode": "reject"}], indirect=True)
def test_backend_rejecting_context(proxied):
    plugin, server, client = proxied
    code, message = status_of(client.stage, "vol-1", client.staging_path("vol-1"), [context_flag(LABEL_A)])
    assert code == C.INVALID_ARGUMENT and "context= is not supported" in message


@needs_walker
@pytest.mark.parametrize("proxied", [{"mode": "reject", "strip_context": True}], indirect=True)
def test_strip_context_for_rejecting_backend(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    target = client.target_path("pod-1")
    client.stage("vol-1", staging, ["noexec", context_flag(LABEL_A)])
    assert list(plugin.received[0][1].volume_capability.mount.mount_flags) == ["noexec"]
    client.publish("vol-1", staging, target, ["noexec", context_flag(LABEL_A)])
    assert os.getxattr(target, "security.selinux").rstrip(b"\0") == LABEL_A.encode()
    # The label is still tracked for conflicts even though the backend never saw it.
    code, message = status_of(client.stage, "vol-1", staging, [context_flag(LABEL_B)])
    assert code == C.FAILED_PRECONDITION and "conflicting SELinux labels of volume vol-1" in message
    client.unpublish("vol-1", target)
    client.unstage("vol-1", staging)


@pytest.mark.parametrize("proxied", [{"mode": "none"}], indirect=True)
def test_backend_that_mounts_nothing(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    client.stage("vol-1", staging, [context_flag(LABEL_A)])  # verified at publish instead
    assert server.state.staged["vol-1"]["verification"] == "not-mounted"
    code, message = status_of(client.publish, "vol-1", staging, client.target_path("pod-1"),
                              [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION and "nothing is mounted at" in message
    assert plugin.received[-1][0] == "NodeUnpublishVolume"  # rolled back


def test_proxy_checks_before_forwarding(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    for flags, text in (([context_flag("bad label")], "invalid SELinux"),):
        code, message = status_of(client.stage, "vol-1", staging, flags)
        assert code == C.INVALID_ARGUMENT and text in message
    code, message = status_of(client.stage, "vol-1", "/var/tmp/outside")
    assert code == C.INVALID_ARGUMENT and "kubelet root" in message
    code, message = status_of(client.unpublish, "vol-1", "/etc")
    assert code == C.INVALID_ARGUMENT
    assert plugin.received == []  # nothing refused reached the backend


def test_symlinks_below_the_root_never_reach_the_backend(proxied):
    """The backend follows symlinks when it mounts, and what a link below the root points at can change
    after any check: a link anywhere in a path, pointing inside the root or not, is refused before forwarding."""
    plugin, server, client = proxied
    real_staging = client.staging_path("vol-real")
    linked_staging = os.path.join(client.root, "plugins", "linked-globalmount")
    os.symlink(real_staging, linked_staging)
    code, message = status_of(client.stage, "vol-1", linked_staging, [context_flag(LABEL_A)])
    assert code == C.INVALID_ARGUMENT and "symbolic link" in message
    pod = os.path.join(client.root, "pods", "pod-real")
    os.makedirs(os.path.join(pod, "volumes"))
    os.symlink(pod, os.path.join(client.root, "pods", "pod-link"))
    target = os.path.join(client.root, "pods", "pod-link", "volumes", "mount")
    for call, args in ((client.publish, ("vol-1", real_staging, target)), (client.unpublish, ("vol-1", target)),
                       (client.unstage, ("vol-1", linked_staging))):
        code, message = status_of(call, *args)
        assert code == C.INVALID_ARGUMENT and "symbolic link" in message
    assert plugin.received == [] and not mounts_under(client.root)


def test_without_label_is_plain_forwarding(proxied):
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    target = client.target_path("pod-1")
    client.stage("vol-1", staging)
    client.publish("vol-1", staging, target, readonly=True)
    assert mounts_at(target)[0].read_only
    client.unpublish("vol-1", target)
    client.unstage("vol-1", staging)
    assert [name for name, _ in plugin.received] == ["NodeStageVolume", "NodePublishVolume",
                                                    "NodeUnpublishVolume", "NodeUnstageVolume"]


def test_expand_and_stats_get_the_path_checks(proxied, tmp_path):
    """NodeExpandVolume and NodeGetVolumeStats carry paths too; outside the kubelet root (by text or through a
    symlink) no volume of this node can be there: NOT_FOUND, and nothing reaches the backend."""
    plugin, server, client = proxied
    inside = client.target_path("pod-1")
    os.makedirs(inside)
    link = client.target_path("pod-link")
    os.symlink(tmp_path, link)
    stats = pb.NodeGetVolumeStatsRequest
    expand = pb.NodeExpandVolumeRequest
    refused = [
        (client.node.NodeGetVolumeStats, stats(volume_id="vol-1", volume_path="/etc")),
        (client.node.NodeGetVolumeStats, stats(volume_id="vol-1", volume_path=inside, staging_target_path="/")),
        (client.node.NodeGetVolumeStats, stats(volume_id="vol-1", volume_path=link)),
        (client.node.NodeExpandVolume, expand(volume_id="vol-1", volume_path="/dev/sda")),
        (client.node.NodeExpandVolume, expand(volume_id="vol-1", volume_path=inside, staging_target_path="/var")),
        (client.node.NodeExpandVolume, expand(volume_id="vol-1", volume_path=f"{link}/x")),
    ]
    for call, request in refused:
        code, message = status_of(call, request)
        assert code == C.NOT_FOUND and "kubelet root" in message, (request, message)
    code, _ = status_of(client.node.NodeExpandVolume, expand(volume_path=inside))
    assert code == C.INVALID_ARGUMENT  # volume_id is REQUIRED
    assert plugin.received == []
    assert client.node.NodeGetVolumeStats(stats(volume_id="vol-1", volume_path=inside)).usage[0].total == 1
    assert client.node.NodeExpandVolume(expand(volume_id="vol-1", volume_path=inside, capacity_range=pb.CapacityRange(
        required_bytes=5))).capacity_bytes == 5
    assert [name for name, _ in plugin.received] == ["NodeGetVolumeStats", "NodeExpandVolume"]


def test_symlinked_staging_path_out_of_the_root_is_refused(proxied, tmp_path):
    plugin, server, client = proxied
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = client.staging_path("vol-1", create=False)
    os.makedirs(os.path.dirname(staging))
    os.symlink(outside, staging)
    code, message = status_of(client.stage, "vol-1", staging, [context_flag(LABEL_A)])
    assert code == C.INVALID_ARGUMENT and "symbolic link" in message
    assert plugin.received == [] and not mounts_at(str(outside))


@needs_walker
def test_dropped_context_on_a_read_only_filesystem_says_why(proxied):
    """A backend that stages read-only (here: mount flag ro) leaves no writable mount to relabel through: the
    publish fails with the reason and is rolled back."""
    plugin, server, client = proxied
    staging = client.staging_path("vol-1")
    target = client.target_path("pod-1")
    flags = ["ro", context_flag(LABEL_A)]
    client.stage("vol-1", staging, flags)
    assert mounts_at(staging)[0].read_only
    code, message = status_of(client.publish, "vol-1", staging, target, flags, readonly=True)
    assert code == C.FAILED_PRECONDITION
    assert "mounted read-only" in message and "cannot be relabelled" in message
    assert plugin.received[-1][0] == "NodeUnpublishVolume" and not mounts_at(target)
    client.unstage("vol-1", staging)
