import pytest

from agent.errors import InvalidInput, PathOutsideRoot, VolumeNotFound
from csi_shim import validate
from csi_shim.proto import csi_pb2 as pb

ROOT = "/var/lib/kubelet"
MODE = pb.VolumeCapability.AccessMode


def cap(flags=(), mode=MODE.SINGLE_NODE_WRITER, block=False):
    if block:
        return pb.VolumeCapability(block=pb.VolumeCapability.BlockVolume(), access_mode=MODE(mode=mode))
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(mount_flags=list(flags)),
                               access_mode=MODE(mode=mode))


@pytest.mark.parametrize("path, expected", [
    ("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount", "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pv/mount"),
    ("/var/lib/kubelet//plugins/x/globalmount/", "/var/lib/kubelet/plugins/x/globalmount"),
])
def test_paths_below_root(path, expected):
    assert validate.path_below(path, ROOT, "target_path") == expected


@pytest.mark.parametrize("path, error", [
    ("", InvalidInput), ("/var/lib/kubelet", PathOutsideRoot), ("/var/lib/kubelet-other/x", PathOutsideRoot),
    ("/etc", PathOutsideRoot), ("var/lib/kubelet/x", PathOutsideRoot), ("/var/lib/kubelet/../../etc", PathOutsideRoot),
    ("/var/lib/kubelet/a\0b", InvalidInput), ("/var/lib/kubelet/" + "a" * 5000, InvalidInput),
])
def test_paths_refused(path, error):
    with pytest.raises(error) as info:
        validate.path_below(path, ROOT, "target_path")
    assert info.value.code == "INVALID_ARGUMENT"


def test_stage_checks_in_order():
    request = pb.NodeStageVolumeRequest()
    with pytest.raises(InvalidInput, match="volume_id is required"):
        validate.node_stage(request, ROOT)
    request.volume_id = "v"
    with pytest.raises(InvalidInput, match="staging_target_path is required"):
        validate.node_stage(request, ROOT)
    request.staging_target_path = f"{ROOT}/plugins/x/globalmount"
    with pytest.raises(InvalidInput, match="volume_capability is required"):
        validate.node_stage(request, ROOT)
    request.volume_capability.CopyFrom(cap(block=True))
    with pytest.raises(InvalidInput, match="block volumes"):
        validate.node_stage(request, ROOT)
    request.volume_capability.CopyFrom(cap(mode=MODE.UNKNOWN))
    with pytest.raises(InvalidInput, match="access_mode"):
        validate.node_stage(request, ROOT)
    request.volume_capability.CopyFrom(cap())
    assert validate.node_stage(request, ROOT) == f"{ROOT}/plugins/x/globalmount"


def test_publish_paths_must_not_overlap():
    request = pb.NodePublishVolumeRequest(volume_id="v", staging_target_path=f"{ROOT}/a",
                                          target_path=f"{ROOT}/a/b", volume_capability=cap())
    with pytest.raises(InvalidInput, match="overlap"):
        validate.node_publish(request, ROOT)


def test_mount_flags_size_limit():
    with pytest.raises(InvalidInput, match="4096"):
        validate.mount_flags(["x" * 4000, "y" * 200])
    with pytest.raises(InvalidInput):
        validate.mount_flags([""])


A = "system_u:object_r:container_file_t:s0:c1,c2"


@pytest.mark.parametrize("flag, text", [
    (f'noatime,context="{A}"', "each mount flag is one option"),
    ('rw,noatime', "each mount flag is one option"),
    (f'context="{A}",rw', "does not close its double quotes at its end"),
    (f'context="{A}', "does not close its double quotes at its end"),
    ('context="a"b"', "does not close its double quotes at its end"),
    (f"context='{A}'", "single quotes"),
    (f"defcontext='x:y:z'", 'defcontext="<label>"'),
    (f"context={A}", "unquoted label"),
    ('user_xattr"', "double quote"),
])
def test_a_flag_that_would_not_stay_one_option_is_refused_naming_it(flag, text):
    with pytest.raises(InvalidInput) as info:
        validate.node_stage(pb.NodeStageVolumeRequest(
            volume_id="v", staging_target_path=f"{ROOT}/plugins/x/globalmount",
            volume_capability=cap(["noexec", flag])), ROOT)
    assert text in str(info.value) and repr(flag) in str(info.value) and "mount_flags[1]" in str(info.value)
    assert info.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize("flag", [f'context="{A}"', "context=system_u:object_r:container_file_t:s0", "noatime",
                                  'fscontext="system_u:object_r:x_t:s0:c0.c9"', "comment=a'b", "uid=1000"])
def test_flags_that_stay_one_option_pass(flag):
    assert validate.mount_flags([flag]) == [flag]


@pytest.mark.parametrize("name, ok", [("pvc-1", True), ("", False), ("a" * 129, False), ("a/b", False),
                                      ("a\x07", False)])
def test_create_volume_name(name, ok):
    request = pb.CreateVolumeRequest(name=name, volume_capabilities=[cap()])
    if ok:
        validate.create_volume(request)
    else:
        with pytest.raises(InvalidInput):
            validate.create_volume(request)


def test_capacity_range():
    assert validate.capacity_range(None) == (0, 0)
    assert validate.capacity_range(pb.CapacityRange(required_bytes=5, limit_bytes=10)) == (5, 10)
    with pytest.raises(InvalidInput):
        validate.capacity_range(pb.CapacityRange(required_bytes=11, limit_bytes=10))
    with pytest.raises(InvalidInput):
        validate.capacity_range(pb.CapacityRange(required_bytes=-1))


def test_volume_paths_outside_the_root_are_not_found():
    """NodeGetVolumeStats / NodeExpandVolume: no volume of this node can be outside the root (csi-sanity asks
    with the relative path "some/path" and expects NOT_FOUND)."""
    assert validate.node_get_volume_stats(pb.NodeGetVolumeStatsRequest(
        volume_id="v", volume_path=f"{ROOT}/pods/u/mount", staging_target_path=f"{ROOT}/plugins/g"), ROOT) == [
        f"{ROOT}/pods/u/mount", f"{ROOT}/plugins/g"]
    for request in (pb.NodeGetVolumeStatsRequest(volume_id="v", volume_path="some/path"),
                    pb.NodeGetVolumeStatsRequest(volume_id="v", volume_path=f"{ROOT}/x", staging_target_path="/etc")):
        with pytest.raises(VolumeNotFound):
            validate.node_get_volume_stats(request, ROOT)
    with pytest.raises(VolumeNotFound):
        validate.node_expand_volume(pb.NodeExpandVolumeRequest(volume_id="v", volume_path="/dev/sda"), ROOT)
    with pytest.raises(InvalidInput, match="volume_id is required"):
        validate.node_expand_volume(pb.NodeExpandVolumeRequest(volume_path=f"{ROOT}/x"), ROOT)
    with pytest.raises(InvalidInput, match="volume_path is required"):
        validate.node_expand_volume(pb.NodeExpandVolumeRequest(volume_id="v"), ROOT)


@pytest.mark.parametrize("context, expected", [
    ({}, None),
    ({"csi.storage.k8s.io/pod.name": "p"}, None),
    ({"device": "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"}, ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", False)),
    ({"device": "/dev/sdb", "format": "true"}, ("/dev/sdb", True)),
    ({"device": "/dev/sdb", "format": "false"}, ("/dev/sdb", False)),
])
def test_static_device(context, expected):
    assert validate.static_device(context) == expected


@pytest.mark.parametrize("context, text", [
    ({"device": "sdb"}, "absolute"), ({"device": "/dev/../sdb"}, "absolute"), ({"device": "/dev//sdb"}, "normalised"),
    ({"device": "/dev/sdb\0"}, "NUL"), ({"device": "/dev/sdb", "format": "yes"}, "format"),
    ({"format": "true"}, "only meaningful with device"),
])
def test_static_device_refused(context, text):
    with pytest.raises(InvalidInput, match=text):
        validate.static_device(context)


@pytest.mark.parametrize("value, ok", [("node-1", True), ("ip-10-0-0-1.ec2.internal", True), ("N_1", True),
                                       ("", False), ("-node", False), ("node.", False), ("a" * 64, False),
                                       ("a/b", False), ("a b", False)])
def test_topology_value(value, ok):
    assert (validate.topology_value_problem(value) is None) == ok
