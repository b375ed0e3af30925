import pytest

from agent.errors import InvalidInput, PathOutsideRoot
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
