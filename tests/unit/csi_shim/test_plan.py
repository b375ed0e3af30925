import random

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


def kernel_split(data: str) -> list[str]:
    """How the kernel cuts mount(2)'s data string (security/selinux/hooks.c opt_len): at commas outside double
    quotes; the SELinux options then lose every double quote (selinux_sb_eat_lsm_opts)."""
    options, current, quoted = [], "", False
    for char in data:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            options.append(current)
            current = ""
        else:
            current += char
    return options + [current] if data else options


def test_the_kernel_sees_exactly_the_options_that_were_checked():
    """Random flag lists made of the pieces an attacker would use: each is refused, or the kernel's split of the
    data string gives back the flags one for one, and the only context it finds is the checked one."""
    pieces = ["noatime", "rw", ",", '"', "'", "context=", "fscontext=", A, "c2", "s0", "x-a", "comment=", "user_xattr"]
    rng = random.Random(1710)
    accepted = 0
    for _ in range(5000):
        flags = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        try:
            result = plan.plan_mount(cap(flags))
            _, data = result.syscall()
        except InvalidInput:
            continue
        accepted += 1
        kept = [flag for flag in flags if plan.kernel_options([flag])[1]]
        assert kernel_split(data) == kept, flags
        seen = [option for option in kernel_split(data) if option.partition("=")[0] == "context"]
        assert len(seen) == (result.context is not None), flags
        for option in seen:
            assert Label.parse(option.partition("=")[2].replace('"', "")) == result.context, flags
    assert accepted > 100  # the generator does reach the accepting side


@pytest.mark.parametrize("flag", [f'noatime,context="{A}"', 'a"', "context='x:y:z'"])
def test_kernel_options_refuses_a_flag_that_would_not_stay_one_option(flag):
    with pytest.raises(InvalidInput, match="mount flag"):
        plan.kernel_options([flag])


@pytest.mark.parametrize("group", ["\u00b2", "\u0663", "\uff11", "1\n", " 1", "+1", "1_000", "0x10",
                                   "4294967295", "9" * 5000])
def test_mount_group_is_ascii_digits_in_range(group):
    with pytest.raises(InvalidInput, match="volume_mount_group"):
        plan.mount_group(group)


def test_mount_group_bounds():
    assert plan.mount_group("0") == 0 and plan.mount_group("4294967294") == 4294967294
    assert plan.mount_group("") is None


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
