"""The built-in driver over a real unix socket: loop devices, mount(2), bind mounts, kubelet's call order.

This host has no SELinux: the kernel refuses `context=` with EINVAL. The tests therefore assert on what
reached mount(2) (a spy on the one libc wrapper), on mountinfo, on the state file and on the errors; the
verifier reports the context as dropped and the relabel walker labels the files instead, which is what the
tests check on disk (security.selinux xattrs). tests/enforcing covers the applied case on an SELinux kernel.
"""

from __future__ import annotations

import os

import grpc
import pytest

from agent.node import host
from agent.errors import InvalidInput
from csi_shim import mounter
from csi_shim.plan import MS_NOATIME
from csi_shim.proto import csi_pb2 as pb
from csi_shim.server import build_server
from tests.root.csi_helpers import (LABEL_A, LABEL_A_OTHER_SPELLING, LABEL_B, MODE, Client, capability, cleanup,
                                    context_flag, loops_under, mounts_at, mounts_under, running_shim, shim_config,
                                    state_of, status_of)

pytestmark = [pytest.mark.root, pytest.mark.loop]
C = grpc.StatusCode
TOPOLOGY_KEY = "topology.local.selinux-mount-agent.io/node"


def _walker_available() -> str | None:
    try:
        from agent.relabel.volume import relabel  # noqa: F401
    except ImportError as err:
        return f"the relabel walker (agent.relabel.volume) is not importable yet: {err}"
    return None


needs_walker = pytest.mark.skipif(_walker_available() is not None, reason=str(_walker_available()))


@pytest.fixture
def shim(tmp_path, request):
    with running_shim(tmp_path, **getattr(request, "param", {})) as pair:
        yield pair


@pytest.fixture
def spy(monkeypatch):
    """Every mount(2) call: (source, target, fs_type, flags, data)."""
    calls = []
    real = mounter.mount

    def shown(path):
        # The shim mounts on directories it opened: /proc/self/fd/N names the directory N holds.
        return os.readlink(path) if path.startswith("/proc/self/fd/") else path

    def recording(source, target, fs_type, flags, data):
        calls.append((shown(source), shown(target), fs_type, flags, data))
        return real(source, target, fs_type, flags, data)

    monkeypatch.setattr(mounter, "mount", recording)
    return calls


def test_identity_and_capabilities(shim):
    server, client = shim
    from csi_shim.proto import csi_pb2 as pb
    info = client.identity.GetPluginInfo(pb.GetPluginInfoRequest())
    assert info.name == "local.selinux-mount-agent.io" and info.vendor_version
    assert client.identity.Probe(pb.ProbeRequest()).ready.value is True
    node_caps = {c.rpc.type for c in client.node.NodeGetCapabilities(pb.NodeGetCapabilitiesRequest()).capabilities}
    rpc = pb.NodeServiceCapability.RPC
    assert node_caps == {rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_MOUNT_GROUP}
    plugin_caps = {c.service.type for c in client.identity.GetPluginCapabilities(
        pb.GetPluginCapabilitiesRequest()).capabilities}
    service = pb.PluginCapability.Service
    assert plugin_caps == {service.CONTROLLER_SERVICE, service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    info = client.node.NodeGetInfo(pb.NodeGetInfoRequest())
    assert info.node_id == "node-1"
    assert dict(info.accessible_topology.segments) == {TOPOLOGY_KEY: "node-1"}
    code, _ = status_of(client.controller.ListVolumes, pb.ListVolumesRequest())
    assert code == C.UNIMPLEMENTED
    code, _ = status_of(client.node.NodeExpandVolume, pb.NodeExpandVolumeRequest(volume_id="x"))
    assert code == C.UNIMPLEMENTED


def test_full_lifecycle_without_label(shim, spy):
    server, client = shim
    volume = client.create("pvc-plain")
    staging = client.staging_path(volume.volume_id)
    client.stage(volume.volume_id, staging, ["noatime"])
    (entry,) = mounts_at(staging)
    assert entry.fstype == "ext4" and entry.source.startswith("/dev/loop") and "noatime" in entry.mount_options
    targets = [client.target_path(f"pod-{i}") for i in range(2)]
    for target in targets:
        client.publish(volume.volume_id, staging, target, ["noatime"])
        (bound,) = mounts_at(target)
        assert bound.major_minor == entry.major_minor
    with open(os.path.join(targets[0], "hello"), "w") as handle:
        handle.write("x")
    assert os.path.exists(os.path.join(targets[1], "hello"))
    stats = client.stats(volume.volume_id, targets[0])
    assert {u.unit for u in stats.usage} == {1, 2} and all(u.total > 0 for u in stats.usage)
    for target in targets:
        client.unpublish(volume.volume_id, target)
        assert not mounts_at(target) and not os.path.exists(target)
    client.unstage(volume.volume_id, staging)
    assert not mounts_at(staging) and not loops_under(server.config.state_dir)
    client.delete(volume.volume_id)
    assert not os.listdir(server.config.image_dir)
    assert state_of(server) == {"version": 1, "volumes": {}, "staged": {}, "published": {}}
    assert all("context" not in (call[4] or "") for call in spy)


@needs_walker
def test_context_flag_reaches_mount_syscall_then_fallback_relabels(shim, spy):
    server, client = shim
    volume = client.create("pvc-labelled")
    staging = client.staging_path(volume.volume_id)
    flags = ["noatime", context_flag(LABEL_A)]
    client.stage(volume.volume_id, staging, flags)
    # kubelet's flag went to mount(2) exactly as given, quotes included; noatime became its flag bit.
    first = next(call for call in spy if call[1] == staging)
    assert first[2] == "ext4" and first[3] & MS_NOATIME and first[4] == f'context="{LABEL_A}"'
    # This kernel has no SELinux: it refused the option, the shim mounted without it and recorded that.
    assert not host.selinux_enabled()
    (entry,) = mounts_at(staging)
    assert entry.context is None
    assert state_of(server)["staged"][volume.volume_id]["verification"] == "dropped"

    target = client.target_path("pod-a")
    with open(os.path.join(staging, "data"), "w") as handle:
        handle.write("x")
    client.publish(volume.volume_id, staging, target, flags, pod=("ns", "a"))
    record = state_of(server)["published"][target]
    assert record["verification"] == "dropped" and record["action"] == "relabel"
    assert os.getxattr(os.path.join(target, "data"), "security.selinux").rstrip(b"\0") == LABEL_A.encode()
    # Same label in another spelling: canonical equality, no conflict.
    second = client.target_path("pod-b")
    client.publish(volume.volume_id, staging, second, ["noatime", context_flag(LABEL_A_OTHER_SPELLING)],
                   pod=("ns", "b"))
    client.unpublish(volume.volume_id, target)
    client.unpublish(volume.volume_id, second)
    client.unstage(volume.volume_id, staging)


@pytest.mark.parametrize("shim", [{"on_context_dropped": "fail"}], indirect=True)
def test_dropped_context_fails_when_configured(shim):
    server, client = shim
    volume = client.create("pvc-strict")
    staging = client.staging_path(volume.volume_id)
    code, message = status_of(client.stage, volume.volume_id, staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION
    assert "shows no context=" in message and "the kernel has no SELinux" in message
    assert not mounts_at(staging) and not loops_under(server.config.state_dir)
    assert volume.volume_id not in state_of(server)["staged"]


@pytest.mark.parametrize("shim", [{"on_context_dropped": "fail"}], indirect=True)
def test_failed_stage_over_an_adopted_mount_leaves_nothing_mounted(shim):
    """A stage killed after its mount(2) leaves the mount; the retry adopts it, and when the retry fails the
    mount and its loop device go too, instead of staying behind unrecorded."""
    server, client = shim
    volume = client.create("pvc-adopted")
    staging = client.staging_path(volume.volume_id)
    image = server.state.volumes[volume.volume_id]["image"]
    device = mounter.attach_loop(image)
    mounter.mount_filesystem(device, staging, "ext4", 0, "", None)  # what the killed call had done
    code, message = status_of(client.stage, volume.volume_id, staging, [context_flag(LABEL_A)])
    assert code == C.FAILED_PRECONDITION and "shows no context=" in message
    assert not mounts_at(staging) and not loops_under(server.config.state_dir)
    assert volume.volume_id not in state_of(server)["staged"]


def test_idempotent_repeats(shim):
    server, client = shim
    first = client.create("pvc-idem")
    again = client.create("pvc-idem")
    assert first.volume_id == again.volume_id and len(os.listdir(server.config.image_dir)) == 1
    staging = client.staging_path(first.volume_id)
    target = client.target_path("pod-1")
    for _ in range(2):
        client.stage(first.volume_id, staging)
    assert len(mounts_at(staging)) == 1 and len(loops_under(server.config.state_dir)) == 1
    for _ in range(2):
        client.publish(first.volume_id, staging, target)
    assert len(mounts_at(target)) == 1
    for _ in range(2):
        client.unpublish(first.volume_id, target)
    for _ in range(2):
        client.unstage(first.volume_id, staging)
    for _ in range(2):
        client.delete(first.volume_id)
    client.delete("vol-never-existed")


def test_readonly_publish(shim):
    server, client = shim
    volume, staging, target = client.create_stage_publish("pvc-ro", "pod-ro", readonly=True)
    (entry,) = mounts_at(target)
    assert entry.read_only
    with pytest.raises(OSError):
        open(os.path.join(target, "nope"), "w").close()
    assert not mounts_at(staging)[0].read_only
    # The same target again but writable: incompatible.
    code, _ = status_of(client.publish, volume.volume_id, staging, target, readonly=False)
    assert code == C.ALREADY_EXISTS
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)


def test_volume_mount_group_without_context(shim):
    server, client = shim
    volume = client.create("pvc-group")
    staging = client.staging_path(volume.volume_id)
    client.stage(volume.volume_id, staging, group="2345")
    os.makedirs(os.path.join(staging, "sub"))
    target = client.target_path("pod-group")
    client.publish(volume.volume_id, staging, target, group="2345")
    st = os.stat(os.path.join(target, "sub"))
    assert st.st_gid == 2345 and st.st_mode & 0o2070 == 0o2070
    assert state_of(server)["published"][target]["action"] == "fs-group"
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)


def test_xfs_and_capacity(shim):
    server, client = shim
    if not os.path.exists("/usr/sbin/mkfs.xfs") and not os.path.exists("/sbin/mkfs.xfs"):
        pytest.skip("mkfs.xfs is not installed")
    volume = client.create("pvc-xfs", size=0, fs_type="xfs")
    assert volume.capacity_bytes == 300 << 20 and volume.volume_context["fsType"] == "xfs"
    staging = client.staging_path(volume.volume_id)
    client.stage(volume.volume_id, staging, fs_type="xfs")
    assert mounts_at(staging)[0].fstype == "xfs"
    code, _ = status_of(client.stage, volume.volume_id, client.staging_path("other"), fs_type="xfs")
    assert code == C.ALREADY_EXISTS
    client.unstage(volume.volume_id, staging)
    code, _ = status_of(client.create, "pvc-tiny", size=1 << 20, limit=2 << 20, fs_type="xfs")
    assert code == C.OUT_OF_RANGE


def test_error_codes(shim):
    server, client = shim
    from csi_shim.proto import csi_pb2 as pb
    volume = client.create("pvc-errors", size=8 << 20)
    staging = client.staging_path(volume.volume_id)
    root = client.root
    cases = [
        (client.create, ("",), C.INVALID_ARGUMENT, "name is required"),
        (client.create, ("pvc-errors",), C.ALREADY_EXISTS, "does not match"),
        (client.controller.CreateVolume, (pb.CreateVolumeRequest(name="x"),), C.INVALID_ARGUMENT,
         "volume_capabilities is required"),
        (client.controller.CreateVolume, (pb.CreateVolumeRequest(
            name="x", volume_capabilities=[pb.VolumeCapability(
                mount=pb.VolumeCapability.MountVolume(), access_mode=MODE(mode=MODE.MULTI_NODE_MULTI_WRITER))]),),
         C.INVALID_ARGUMENT, "node-local"),
        (client.controller.CreateVolume, (pb.CreateVolumeRequest(
            name="x", volume_capabilities=[pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(),
                                                               access_mode=MODE(mode=1))],
            parameters={"fsType": "btrfs"}),), C.INVALID_ARGUMENT, "btrfs"),
        (client.delete, ("",), C.INVALID_ARGUMENT, "volume_id is required"),
        (client.stage, ("", staging), C.INVALID_ARGUMENT, "volume_id is required"),
        (client.stage, (volume.volume_id, ""), C.INVALID_ARGUMENT, "staging_target_path is required"),
        (client.stage, ("vol-unknown", staging), C.NOT_FOUND, "does not exist"),
        (client.stage, (volume.volume_id, "/tmp/elsewhere"), C.INVALID_ARGUMENT, "kubelet root"),
        (client.stage, (volume.volume_id, f"{root}/../escape"), C.INVALID_ARGUMENT, "'..'"),
        (client.stage, (volume.volume_id, "relative/path"), C.INVALID_ARGUMENT, "absolute"),
        (client.stage, (volume.volume_id, staging, ['context="not a label"']), C.INVALID_ARGUMENT,
         "invalid SELinux"),
        (client.stage, (volume.volume_id, staging, ["context=system_u:object_r"]), C.INVALID_ARGUMENT,
         "user:role:type"),
        (client.stage, (volume.volume_id, staging, [context_flag(LABEL_A), context_flag(LABEL_B)]),
         C.INVALID_ARGUMENT, "more than one context="),
        (client.stage, (volume.volume_id, staging, ["bind"]), C.INVALID_ARGUMENT, "not allowed"),
        (None, (), C.INVALID_ARGUMENT, None),  # NodeStageVolume asking for xfs on an ext4 volume, below
        (client.publish, (volume.volume_id, staging, client.target_path("p")), C.FAILED_PRECONDITION,
         "not staged"),
        (client.publish, (volume.volume_id, staging, "/etc/target"), C.INVALID_ARGUMENT, "kubelet root"),
        (client.publish, ("vol-unknown", staging, client.target_path("p")), C.NOT_FOUND, "does not exist"),
        (client.unpublish, (volume.volume_id, ""), C.INVALID_ARGUMENT, "target_path is required"),
        (client.unpublish, ("vol-unknown", client.target_path("p")), C.NOT_FOUND, "does not exist"),
        (client.unstage, ("", staging), C.INVALID_ARGUMENT, "volume_id is required"),
        (client.unstage, ("vol-unknown", staging), C.NOT_FOUND, "does not exist"),
        (client.stats, (volume.volume_id, client.target_path("nowhere")), C.NOT_FOUND, "not mounted"),
        (client.stats, ("vol-unknown", staging), C.NOT_FOUND, "does not exist"),
    ]
    for call, args, expected, text in cases:
        if text is None:
            code, message = status_of(client.node.NodeStageVolume, pb.NodeStageVolumeRequest(
                volume_id=volume.volume_id, staging_target_path=staging,
                volume_capability=pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type="xfs"),
                                                      access_mode=MODE(mode=1))))
            text = "holds ext4"
        else:
            code, message = status_of(call, *args)
        assert code == expected, (call, args, message)
        assert text in message, (call, args, message)
    # Nothing was mounted by any refused call.
    assert not mounts_under(client.root) and not loops_under(server.config.state_dir)
    code, message = status_of(client.controller.ValidateVolumeCapabilities, pb.ValidateVolumeCapabilitiesRequest(
        volume_id="vol-unknown", volume_capabilities=[pb.VolumeCapability(
            mount=pb.VolumeCapability.MountVolume(), access_mode=MODE(mode=1))]))
    assert code == C.NOT_FOUND
    # Still published: unstage and delete are refused.
    client.stage(volume.volume_id, staging)
    target = client.target_path("pod-busy")
    client.publish(volume.volume_id, staging, target)
    assert status_of(client.unstage, volume.volume_id, staging)[0] == C.FAILED_PRECONDITION
    assert status_of(client.delete, volume.volume_id)[0] == C.FAILED_PRECONDITION
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)


@needs_walker
def test_label_conflicts(shim):
    server, client = shim
    volume = client.create("pvc-conflict")
    staging = client.staging_path(volume.volume_id)
    client.stage(volume.volume_id, staging, [context_flag(LABEL_A)])
    target = client.target_path("pod-a")
    client.publish(volume.volume_id, staging, target, [context_flag(LABEL_A)], pod=("team-a", "web-0"))

    # Same namespace: the holder is named.
    code, message = status_of(client.publish, volume.volume_id, staging, client.target_path("pod-b"),
                              [context_flag(LABEL_B)], pod=("team-a", "web-1"))
    assert code == C.FAILED_PRECONDITION
    assert message.startswith(f'conflicting SELinux labels of volume {volume.volume_id}: "{LABEL_A}" and '
                              f'"{LABEL_B}"')
    assert "team-a/web-0" in message
    # Another namespace: not named.
    code, message = status_of(client.publish, volume.volume_id, staging, client.target_path("pod-c"),
                              [context_flag(LABEL_B)], pod=("team-b", "api-0"))
    assert code == C.FAILED_PRECONDITION and "web-0" not in message and "another pod" in message
    # A pod without a label conflicts with one that has one (kubelet prints it as "").
    code, message = status_of(client.publish, volume.volume_id, staging, client.target_path("pod-d"), [],
                              pod=("team-a", "plain"))
    assert code == C.FAILED_PRECONDITION and f'"{LABEL_A}" and ""' in message
    # NodeStageVolume with another label.
    code, message = status_of(client.stage, volume.volume_id, staging, [context_flag(LABEL_B)])
    assert code == C.FAILED_PRECONDITION and "conflicting SELinux labels" in message
    assert len(mounts_at(staging)) == 1 and not mounts_at(client.target_path("pod-b"))

    # After unpublish + unstage, the new label is accepted (kubelet's sequence for the second pod).
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)
    client.stage(volume.volume_id, staging, [context_flag(LABEL_B)])
    assert state_of(server)["staged"][volume.volume_id]["label"] == LABEL_B
    client.unstage(volume.volume_id, staging)


def test_metrics_follow_a_published_volume(tmp_path):
    """With metrics, a publish whose context did not take on this host is counted as a failed verification
    and a recursive decision, and the stage as an admitted context mount."""
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.metrics import NodeMetrics

    registry = CollectorRegistry()
    server = build_server(shim_config(tmp_path), NodeMetrics(registry)).start()
    client = Client(server.config.socket, server.config.kubelet_root)
    try:
        volume = client.create("metrics-vol").volume_id
        staging = client.staging_path(volume)
        target = client.target_path("pod-m")
        flags = [context_flag(LABEL_A)]
        client.stage(volume, staging, flags)
        client.publish(volume, staging, target, flags)
        text = generate_latest(registry).decode()
        assert 'volume_manager_selinux_volumes_admitted_total{access_mode="RWO"' in text
        assert 'selinux_mount_agent_csi_request_duration_seconds_count{code="OK",method="NodePublishVolume"} 1.0' in text
        if not host.selinux_enabled():
            assert 'selinux_mount_agent_context_mount_verifications_total{result="failed"} 1.0' in text
            assert 'selinux_mount_agent_decisions_total{decision="recursive"} 1.0' in text
        client.unpublish(volume, target)
        client.unstage(volume, staging)
        client.delete(volume)
    finally:
        client.close()
        server.stop()
        cleanup(str(tmp_path))


# ---- topology -------------------------------------------------------------------------------------------------

def topology(node: str) -> pb.Topology:
    return pb.Topology(segments={TOPOLOGY_KEY: node})


def create_with(client, name, requisite=(), preferred=()):
    return client.controller.CreateVolume(pb.CreateVolumeRequest(
        name=name, capacity_range=pb.CapacityRange(required_bytes=8 << 20), volume_capabilities=[capability()],
        accessibility_requirements=pb.TopologyRequirement(requisite=list(requisite), preferred=list(preferred))),
        timeout=120).volume


def test_create_volume_reports_and_honours_topology(shim):
    """external-provisioner (--feature-gates=Topology=true --strict-topology) turns accessible_topology into the
    PV's node affinity; without it a pod rescheduled to another node would find no volume there."""
    server, client = shim
    plain = client.create("pvc-topo-plain")
    assert [dict(t.segments) for t in plain.accessible_topology] == [{TOPOLOGY_KEY: "node-1"}]
    # What the provisioner sends with --strict-topology: the selected node, as requisite and preferred.
    here = create_with(client, "pvc-topo-here", [topology("node-1")], [topology("node-1")])
    assert [dict(t.segments) for t in here.accessible_topology] == [{TOPOLOGY_KEY: "node-1"}]
    # Only preferred binds nothing (CSI: without requisite the SP may choose any topology it has).
    assert create_with(client, "pvc-topo-pref", preferred=[topology("node-2")]).accessible_topology
    images, records = sorted(os.listdir(server.config.image_dir)), state_of(server)["volumes"]

    code, message = status_of(create_with, client, "pvc-topo-away", [topology("node-2"), topology("node-3")])
    assert code == C.RESOURCE_EXHAUSTED and "does not include this node" in message and "node-1" in message
    # Nothing was made.
    assert sorted(os.listdir(server.config.image_dir)) == images and state_of(server)["volumes"] == records
    # A segment with a key this driver does not report cannot be checked, so it is not met.
    code, _ = status_of(create_with, client, "pvc-topo-zone", [pb.Topology(segments={
        TOPOLOGY_KEY: "node-1", "topology.kubernetes.io/zone": "a"})])
    assert code == C.RESOURCE_EXHAUSTED
    # The same name again, now asked for elsewhere: it exists, here, which the request excludes.
    code, message = status_of(create_with, client, "pvc-topo-here", [topology("node-2")])
    assert code == C.ALREADY_EXISTS and "requisite" in message
    for volume in (plain, here):
        client.delete(volume.volume_id)


def test_node_id_that_cannot_be_a_topology_value_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="topology value"):
        build_server(shim_config(tmp_path, node_id="node/" + "x" * 70))
    assert not os.path.exists(f"{tmp_path}/state")  # refused before anything was written


# ---- read-only volumes ------------------------------------------------------------------------------------------

@needs_walker
def test_readonly_publish_relabel_gives_fs_group_read_only(shim):
    """A dropped context on a readonly publish of a writable volume: the walker labels the files and applies
    fsGroup with kubelet's read-only mask (group r, not rw) before the bind mount is made read-only."""
    server, client = shim
    volume = client.create("pvc-ro-relabel")
    staging = client.staging_path(volume.volume_id)
    flags = [context_flag(LABEL_A)]
    client.stage(volume.volume_id, staging, flags, group="2345")
    path = os.path.join(staging, "data")
    with open(path, "w") as handle:
        handle.write("x")
    os.chmod(path, 0o600)
    target = client.target_path("pod-ro-relabel")
    client.publish(volume.volume_id, staging, target, flags, readonly=True, group="2345")
    assert state_of(server)["published"][target]["action"] == "relabel"
    st = os.stat(os.path.join(target, "data"))
    assert st.st_gid == 2345 and st.st_mode & 0o070 == 0o040, oct(st.st_mode)
    assert mounts_at(target)[0].read_only
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)


def test_reader_only_access_mode_skips_fs_group_on_the_read_only_filesystem(shim):
    """SINGLE_NODE_READER_ONLY stages the filesystem read-only: nothing can be written there, so fsGroup is
    skipped (kubelet skips it for read-only volumes) instead of failing with EROFS."""
    server, client = shim
    volume = client.create("pvc-reader")
    staging = client.staging_path(volume.volume_id)
    reader = MODE.SINGLE_NODE_READER_ONLY
    client.stage(volume.volume_id, staging, mode=reader, group="2345")
    assert mounts_at(staging)[0].read_only
    target = client.target_path("pod-reader")
    client.publish(volume.volume_id, staging, target, mode=reader, group="2345")
    assert mounts_at(target)[0].read_only
    assert os.stat(target).st_gid == 0 and os.stat(os.path.join(target, "lost+found")).st_gid == 0
    assert state_of(server)["published"][target]["action"] == "nothing"
    client.unpublish(volume.volume_id, target)
    client.unstage(volume.volume_id, staging)


def test_reader_only_access_mode_with_a_dropped_context_fails_at_stage(shim):
    """A read-only filesystem cannot be relabelled, so a context that did not take cannot be made up for: the
    stage fails with the reason, and nothing stays mounted or attached."""
    server, client = shim
    volume = client.create("pvc-reader-label")
    staging = client.staging_path(volume.volume_id)
    code, message = status_of(client.stage, volume.volume_id, staging, [context_flag(LABEL_A)],
                              mode=MODE.SINGLE_NODE_READER_ONLY)
    assert code == C.FAILED_PRECONDITION, message
    assert "shows no context=" in message and "mounted read-only" in message and "cannot be relabelled" in message
    assert not mounts_at(staging) and not loops_under(server.config.state_dir)
    assert volume.volume_id not in state_of(server)["staged"]


# ---- symbolic links under the kubelet root ----------------------------------------------------------------------

def test_symlinks_out_of_the_kubelet_root_are_refused(shim, tmp_path):
    """mount(2) follows symlinks: a link under the kubelet root must not carry a mount elsewhere on the host."""
    server, client = shim
    volume = client.create("pvc-link")
    outside = tmp_path / "outside"
    outside.mkdir()
    staging = client.staging_path(volume.volume_id, create=False)
    os.makedirs(os.path.dirname(staging))
    os.symlink(outside, staging)
    code, message = status_of(client.stage, volume.volume_id, staging)
    assert code == C.INVALID_ARGUMENT and "symbolic link" in message and staging in message
    assert not mounts_at(str(outside)) and not loops_under(server.config.state_dir)

    # A link that stays inside the root is refused as well: what it points at can change after the check.
    os.unlink(staging)
    real_staging = os.path.join(client.root, "plugins", "real-globalmount")
    os.makedirs(real_staging)
    os.symlink(real_staging, staging)
    code, message = status_of(client.stage, volume.volume_id, staging)
    assert code == C.INVALID_ARGUMENT and "symbolic link" in message
    assert not mounts_at(real_staging)
    os.unlink(staging)
    os.makedirs(staging)
    client.stage(volume.volume_id, staging)

    # A target whose parent directory is a link out of the root.
    pod_dir = os.path.join(client.root, "pods", "pod-link", "volumes", "kubernetes.io~csi")
    os.makedirs(pod_dir)
    os.symlink(outside, os.path.join(pod_dir, "pv"))
    target = os.path.join(pod_dir, "pv", "mount")
    code, message = status_of(client.publish, volume.volume_id, staging, target)
    assert code == C.INVALID_ARGUMENT and "symbolic link" in message
    assert not os.path.exists(outside / "mount") and not mounts_under(str(outside))
    code, _ = status_of(client.unpublish, volume.volume_id, target)
    assert code == C.INVALID_ARGUMENT
    client.unstage(volume.volume_id, staging)
    assert not mounts_at(staging)


# ---- unpublish leaves mounts it did not make --------------------------------------------------------------------

def _tmpfs(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    mounter.mount("foreign-tmpfs", path, "tmpfs", 0, "size=1m")


def test_unpublish_leaves_a_mount_it_did_not_make(shim):
    server, client = shim
    volume, staging, ours = client.create_stage_publish("pvc-foreign", "pod-ours")

    # Nothing of this volume at the target, but something else is: already unpublished (CSI: OK), left alone.
    foreign = client.target_path("pod-foreign")
    _tmpfs(foreign)
    client.unpublish(volume.volume_id, foreign)
    (entry,) = mounts_at(foreign)
    assert entry.fstype == "tmpfs" and os.path.isdir(foreign)

    # A foreign mount on top of ours: ours cannot be unmounted without it, so the call fails and keeps both.
    _tmpfs(ours)
    code, message = status_of(client.unpublish, volume.volume_id, ours)
    assert code == C.FAILED_PRECONDITION and "did not make" in message
    assert [m.fstype for m in mounts_at(ours)] == ["ext4", "tmpfs"]
    assert ours in state_of(server)["published"]
    mounter.unmount(ours)  # the operator removes it; kubelet's retry then succeeds
    client.unpublish(volume.volume_id, ours)
    assert not mounts_at(ours) and not os.path.exists(ours)
    client.unstage(volume.volume_id, staging)
    mounter.unmount(foreign)


def test_delete_volume_refuses_a_mounted_image_the_records_do_not_show(shim):
    """The records are not the only witness: an image whose loop device is mounted anywhere is not deleted,
    whatever the tables say (a record lost or damaged must not let DeleteVolume pull it from under a pod)."""
    server, client = shim
    volume, staging, target = client.create_stage_publish("pvc-unrecorded", "pod-a")
    with server.state.change():
        server.state.published.pop(target)
        server.state.staged.pop(volume.volume_id)
    code, message = status_of(client.delete, volume.volume_id)
    assert code == C.FAILED_PRECONDITION and target in message and staging in message
    assert os.path.exists(server.state.volumes[volume.volume_id]["image"])
    assert len(mounts_at(target)) == 1 and len(mounts_at(staging)) == 1
