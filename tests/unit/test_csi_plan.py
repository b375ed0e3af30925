import pytest

from agent.errors import AgentError, InvalidInput, InvalidLabel, LabelConflict
from agent.label import Label
from csi_shim import plan
from csi_shim.proto import csi_pb2 as pb

A = "system_u:object_r:container_file_t:s0:c1,c2"
B = "system_u:object_r:container_file_t:s0:c3,c4"
MODE = pb.VolumeCapability.AccessMode


def cap(flags=(), fs_type="", mode=MODE.SINGLE_NODE_WRITER, group=""):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags),
                                                                     volume_mount_group=group),
                               access_mode=MODE(mode=mode))


def test_kubelet_flags_become_a_plan_with_the_context_kept_verbatim():
    flags = ["noexec", "noatime", f'context="{A}"']  # the e2e example's shape
    result = plan.plan_mount(cap(flags))
    assert result.fs_type == "ext4" and result.context == Label.parse(A)
    assert result.context_flag == f'context="{A}"' and result.flags_without_context == ("noexec", "noatime")
    bits, data = result.syscall()
    assert bits == plan.MS_NOEXEC | plan.MS_NOATIME and data == f'context="{A}"'
    assert result.bind_flags() == plan.MS_NOEXEC | plan.MS_NOATIME


@pytest.mark.parametrize("options, bits, data", [
    (["ro", "nosuid", "nodev"], plan.MS_RDONLY | plan.MS_NOSUID | plan.MS_NODEV, ""),
    (["ro", "rw"], 0, ""),
    (["defaults", "nofail", "x-systemd.automount", "discard"], 0, "discard"),
    (["dirsync", "user_xattr", 'context="a:b:c:s0:c1,c2"'], plan.MS_DIRSYNC, 'user_xattr,context="a:b:c:s0:c1,c2"'),
])
def test_kernel_options(options, bits, data):
    assert plan.kernel_options(options) == (bits, data)


@pytest.mark.parametrize("flag", ["bind", "remount", "rshared", "loop"])
def test_refused_options(flag):
    with pytest.raises(InvalidInput, match="not allowed"):
        plan.plan_mount(cap([flag]))
    plan.plan_mount(cap([flag]), check_options=False)  # proxy mode leaves them to the backend


@pytest.mark.parametrize("flags, error", [
    (['context="a b:c:d"'], InvalidLabel),
    (['context="system_u:object_r"'], InvalidLabel),
    ([f'context="{A}"', f'context="{B}"'], InvalidInput),
    ([f'context="{A}"', 'defcontext="system_u:object_r:x_t:s0"'], InvalidInput),
    (['context="a:b:c:s0",rw'], InvalidLabel),
])
def test_bad_context_flags(flags, error):
    with pytest.raises(error) as info:
        plan.plan_mount(cap(flags))
    assert info.value.code == "INVALID_ARGUMENT"


def test_bare_context_and_other_context_options():
    label, flag = plan.context_of([f"context={A.replace(',', '.').replace('c1.c2', 'c1')}"])
    assert label == Label.parse("system_u:object_r:container_file_t:s0:c1")
    assert plan.context_of(['fscontext="system_u:object_r:x_t:s0"']) == (None, None)


def test_reader_only_mode_and_fs_type_and_group():
    result = plan.plan_mount(cap(mode=MODE.SINGLE_NODE_READER_ONLY, fs_type="xfs", group="1000"),
                             fs_types=plan.SUPPORTED_FS_TYPES)
    assert result.readonly and result.fs_type == "xfs" and result.mount_group == 1000
    assert result.syscall()[0] & plan.MS_RDONLY
    with pytest.raises(InvalidInput, match="btrfs"):
        plan.plan_mount(cap(fs_type="btrfs"), fs_types=plan.SUPPORTED_FS_TYPES)
    for bad in ("-1", "abc", str(2**32)):
        with pytest.raises(InvalidInput, match="volume_mount_group"):
            plan.plan_mount(cap(group=bad))


def test_without_context():
    assert plan.without_context(["ro", f'context="{A}"', 'fscontext="x:y:z"']) == ["ro", 'fscontext="x:y:z"']


def test_pod_of():
    assert plan.pod_of({plan.POD_NAME_KEY: "p", plan.POD_NAMESPACE_KEY: "ns"}) == ("ns", "p")
    assert plan.pod_of({}) is None


def test_conflict_message_is_kubelets():
    err = plan.label_conflict("pvc-1", Label.parse(A), Label.parse(B))
    assert isinstance(err, LabelConflict) and err.code == "FAILED_PRECONDITION"
    assert str(err).startswith(f'conflicting SELinux labels of volume pvc-1: "{A}" and "{B}"')
    assert 'and ""' in str(plan.label_conflict("pvc-1", Label.parse(A), None))


def test_conflict_names_holder_only_in_same_namespace():
    holders = [("team-a", "web-0"), ("team-b", "db-0")]
    same = str(plan.label_conflict("v", Label.parse(A), Label.parse(B), holders, "team-a"))
    assert "team-a/web-0" in same and "db-0" not in same and "another pod" in same
    unknown = str(plan.label_conflict("v", Label.parse(A), Label.parse(B), holders, None))
    assert "web-0" not in unknown and "2 other pods" in unknown


@pytest.mark.parametrize("status, policy, group, action", [
    ("applied", "relabel", None, plan.NOTHING),
    ("applied", "relabel", 5, plan.FS_GROUP),
    ("no-context", "fail", 5, plan.FS_GROUP),
    ("dropped", "relabel", None, plan.RELABEL),
    ("dropped", "fail", None, plan.FAIL),
    ("mismatch", "relabel", None, plan.FAIL),
])
def test_after_mount(status, policy, group, action):
    assert plan.after_mount(status, policy, Label.parse(A), group) == action


@pytest.mark.parametrize("status, policy, group, action", [
    ("dropped", "relabel", None, plan.FAIL),    # nothing can be written: no relabel to make up for it
    ("dropped", "fail", 5, plan.FAIL),
    ("applied", "relabel", 5, plan.NOTHING),    # fsGroup skipped, as kubelet does for read-only volumes
    ("no-context", "relabel", 5, plan.NOTHING),
    ("mismatch", "relabel", None, plan.FAIL),
])
def test_after_mount_on_a_read_only_filesystem(status, policy, group, action):
    assert plan.after_mount(status, policy, Label.parse(A), group, writable=False) == action


def test_dropped_hint():
    assert "--on-context-dropped=fail" in plan.dropped_hint("fail", True)
    assert "mounted read-only" in plan.dropped_hint("relabel", False)
    assert plan.dropped_hint("relabel", True) == ""


def topo(**segments):
    return pb.Topology(segments=segments)


def test_topology():
    key = plan.topology_key("local.selinux-mount-agent.io")
    assert key == "topology.local.selinux-mount-agent.io/node"
    here = plan.node_topology("local.selinux-mount-agent.io", "n1")
    assert here == {key: "n1"}
    requirement = pb.TopologyRequirement
    assert plan.topology_satisfied(None, here)
    assert plan.topology_satisfied(requirement(), here)
    assert plan.topology_satisfied(requirement(requisite=[topo(**{key: "n2"}), topo(**{key: "n1"})]), here)
    assert not plan.topology_satisfied(requirement(requisite=[topo(**{key: "n2"})],
                                                   preferred=[topo(**{key: "n2"})]), here)
    # preferred alone binds nothing (CSI: the SP may then choose any of its topologies)
    assert plan.topology_satisfied(requirement(preferred=[topo(**{key: "n2"})]), here)
    # a key this driver does not report cannot be checked, so it is not met
    assert not plan.topology_satisfied(requirement(requisite=[topo(**{key: "n1", "zone": "a"})]), here)
    assert plan.TopologyUnsatisfiable("x").code == "RESOURCE_EXHAUSTED"


@pytest.mark.parametrize("probed, wanted, allow, expected", [
    ({"TYPE": "ext4", "USAGE": "filesystem"}, "", False, ("ext4", False)),
    ({"TYPE": "xfs", "USAGE": "filesystem"}, "xfs", True, ("xfs", False)),   # never reformats a filesystem
    ({}, "", True, ("ext4", True)),
    ({}, "xfs", True, ("xfs", True)),
])
def test_device_filesystem(probed, wanted, allow, expected):
    assert plan.device_filesystem(probed, "/dev/sdb", wanted, allow) == expected


@pytest.mark.parametrize("probed, wanted, allow, error, text", [
    ({"TYPE": "ext4", "USAGE": "filesystem"}, "xfs", True, InvalidInput, "holds ext4, not xfs"),
    ({}, "", False, plan.DeviceUnusable, "holds no filesystem"),
    ({"PTTYPE": "gpt", "PTUUID": "x"}, "", True, plan.DeviceUnusable, "PTTYPE=gpt"),
    ({"TYPE": "LVM2_member", "USAGE": "raid"}, "", True, plan.DeviceUnusable, "TYPE=LVM2_member"),
    ({"TYPE": "btrfs", "USAGE": "filesystem"}, "", True, plan.DeviceUnusable, "TYPE=btrfs"),
    ({"UUID": "x"}, "", True, plan.DeviceUnusable, "unknown signature"),
    ({}, "btrfs", True, InvalidInput, "not supported"),
])
def test_device_filesystem_refusals(probed, wanted, allow, error, text):
    with pytest.raises(error, match=text) as info:
        plan.device_filesystem(probed, "/dev/sdb", wanted, allow)
    assert isinstance(info.value, AgentError)
    if error is plan.DeviceUnusable:
        assert info.value.code == "FAILED_PRECONDITION"
