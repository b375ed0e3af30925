"""The checked-in stubs are exactly what grpcio-tools makes of csi_shim/proto/csi.proto, and the wire names
and numbers are CSI v1's."""

import os
import shutil
import subprocess
import sys

import pytest

from csi_shim.proto import csi_pb2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
GENERATED = ("csi_pb2.py", "csi_pb2_grpc.py")


def test_generated_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    os.makedirs(tmp_path / "csi_shim" / "proto")
    shutil.copy(os.path.join(REPO, "csi_shim/proto/csi.proto"), tmp_path / "csi_shim/proto/csi.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--grpc_python_out=.",
                    "csi_shim/proto/csi.proto"], cwd=tmp_path, check=True)
    for name in GENERATED:
        with open(tmp_path / "csi_shim/proto" / name, encoding="utf-8") as fresh, \
                open(os.path.join(REPO, "csi_shim/proto", name), encoding="utf-8") as checked_in:
            assert fresh.read() == checked_in.read(), (
                f"csi_shim/proto/{name} is stale: regenerate with "
                "python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. csi_shim/proto/csi.proto")


def test_wire_names_and_numbers_are_csi_v1():
    file = csi_pb2.DESCRIPTOR
    assert file.package == "csi.v1"
    assert [m.name for m in file.services_by_name["Node"].methods] == [
        "NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume", "NodeUnpublishVolume", "NodeGetVolumeStats",
        "NodeExpandVolume", "NodeGetCapabilities", "NodeGetInfo"]
    fields = {f.name: f.number for f in csi_pb2.NodePublishVolumeRequest.DESCRIPTOR.fields}
    assert fields == {"volume_id": 1, "publish_context": 2, "staging_target_path": 3, "target_path": 4,
                      "volume_capability": 5, "readonly": 6, "secrets": 7, "volume_context": 8}
    mount = {f.name: f.number for f in csi_pb2.VolumeCapability.MountVolume.DESCRIPTOR.fields}
    assert mount == {"fs_type": 1, "mount_flags": 2, "volume_mount_group": 3}
    rpc = csi_pb2.NodeServiceCapability.RPC
    assert (rpc.STAGE_UNSTAGE_VOLUME, rpc.GET_VOLUME_STATS, rpc.VOLUME_MOUNT_GROUP) == (1, 2, 6)
    assert "/csi.v1.Controller/CreateVolume" in {
        f"/{s.full_name}/{m.name}" for s in file.services_by_name.values() for m in s.methods}
