"""CSI Controller service of the built-in driver: loop-backed ext4 or xfs image files under the state dir.

Each handler checks its arguments first, then answers a repeat of an earlier call with the earlier result
(idempotency, CSI spec "CreateVolume ... MUST be idempotent"), then does the work. A volume is an image file
`<state-dir>/volumes/<volume_id>.img`, sparse, formatted when created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid

from agent.errors import CapacityOutOfRange, InvalidInput, VolumeAlreadyExists, VolumeInUse, VolumeNotFound
from csi_shim import mounter, validate
from csi_shim.locks import VolumeLocks, name_key, volume_key
from csi_shim.plan import DEFAULT_FS_TYPE, SUPPORTED_FS_TYPES, TopologyUnsatisfiable, topology_satisfied
from csi_shim.proto import csi_pb2, csi_pb2_grpc
from csi_shim.records import DONE, PENDING, ImageVolume
from csi_shim.journal import State

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_CAPACITY = 64 * MiB
# mkfs refuses smaller filesystems (xfsprogs >= 5.19 wants 300 MiB).
MIN_CAPACITY = {"ext4": 8 * MiB, "xfs": 300 * MiB}
FS_TYPE_PARAMETER = "fsType"
# external-provisioner passes these through; they are not driver parameters.
_PROVISIONER_PREFIX = "csi.storage.k8s.io/"


def choose_capacity(required: int, limit: int, fs_type: str) -> int:
    """Bytes for a new image: what was asked for, raised to the filesystem's minimum, whole MiB."""
    size = max(required or DEFAULT_CAPACITY, MIN_CAPACITY[fs_type])
    size = -(-size // MiB) * MiB
    if limit and size > limit:
        raise CapacityOutOfRange(f"capacity_range limit {limit} bytes is below the smallest {fs_type} volume "
                                 f"this driver makes ({size} bytes)")
    return size


def fs_type_of(parameters) -> str:
    for key in parameters:
        if key != FS_TYPE_PARAMETER and not key.startswith(_PROVISIONER_PREFIX):
            raise InvalidInput(f"unknown parameter {key!r}; this driver takes only {FS_TYPE_PARAMETER}")
    fs_type = parameters.get(FS_TYPE_PARAMETER, "") or DEFAULT_FS_TYPE
    if fs_type not in SUPPORTED_FS_TYPES:
        raise InvalidInput(f"parameter {FS_TYPE_PARAMETER}={fs_type!r} is not supported; use one of "
                           f"{', '.join(SUPPORTED_FS_TYPES)}")
    return fs_type


def capability_supported(capability, fs_type: str) -> str | None:
    """Why this driver cannot give the capability, or None when it can."""
    if capability.WhichOneof("access_type") != "mount":
        return "only mount volumes are supported, not block"
    if capability.mount.fs_type and capability.mount.fs_type != fs_type:
        return f"the volume holds {fs_type}, not {capability.mount.fs_type}"
    if capability.access_mode.mode not in validate.SINGLE_NODE_MODES:
        mode = csi_pb2.VolumeCapability.AccessMode.Mode.Name(capability.access_mode.mode)
        return f"access mode {mode} needs a volume shared between nodes; loop-backed volumes are node-local"
    return None


def volume_message(volume_id: str, record: dict, topology: dict[str, str]) -> csi_pb2.Volume:
    return csi_pb2.Volume(volume_id=volume_id, capacity_bytes=record["capacity_bytes"],
                          volume_context={FS_TYPE_PARAMETER: record["fs_type"]},
                          accessible_topology=[csi_pb2.Topology(segments=topology)])


class ControllerService(csi_pb2_grpc.ControllerServicer):
    """CreateVolume, DeleteVolume, ValidateVolumeCapabilities, ControllerGetCapabilities; the rest of the
    service answers UNIMPLEMENTED (the generated base class does)."""

    def __init__(self, state: State, image_dir: str, locks: VolumeLocks, topology: dict[str, str]):
        self.state = state
        self.image_dir = image_dir
        self.locks = locks
        self.topology = topology  # this node's segment (plan.node_topology): where every volume lives
        os.makedirs(image_dir, mode=0o700, exist_ok=True)

    def ControllerGetCapabilities(self, request, context):
        rpc = csi_pb2.ControllerServiceCapability.RPC
        return csi_pb2.ControllerGetCapabilitiesResponse(capabilities=[
            csi_pb2.ControllerServiceCapability(rpc=rpc(type=rpc.CREATE_DELETE_VOLUME))])

    def CreateVolume(self, request, context):
        validate.create_volume(request)
        required, limit = validate.capacity_range(
            request.capacity_range if request.HasField("capacity_range") else None)
        fs_type = fs_type_of(request.parameters)
        for capability in request.volume_capabilities:
            why = capability_supported(capability, fs_type)
            if why:
                raise InvalidInput(f"volume_capabilities: {why}")
        if request.HasField("volume_content_source"):
            raise InvalidInput("volume_content_source is not supported (no snapshots or clones)")
        capacity = choose_capacity(required, limit, fs_type)
        requirement = request.accessibility_requirements if request.HasField("accessibility_requirements") else None
        fits_here = topology_satisfied(requirement, self.topology)

        with self.locks.hold(name_key(request.name)):
            found = self.state.volume_by_name(request.name)
            if found:
                volume_id, record = found
                fits = record["capacity_bytes"] >= required and (not limit or record["capacity_bytes"] <= limit)
                if not fits or record["fs_type"] != fs_type:
                    raise VolumeAlreadyExists(
                        f"volume {request.name!r} exists as {volume_id} with {record['capacity_bytes']} bytes of "
                        f"{record['fs_type']}, which does not match this request")
                if not fits_here:
                    raise VolumeAlreadyExists(f"volume {request.name!r} exists as {volume_id} on this node "
                                              f"({self._here()}), which accessibility_requirements.requisite "
                                              f"leaves out")
                return csi_pb2.CreateVolumeResponse(volume=volume_message(volume_id, record, self.topology))
            if not fits_here:
                raise TopologyUnsatisfiable(
                    f"accessibility_requirements.requisite does not include this node ({self._here()}); volumes "
                    f"of this driver are node-local and are made only on the node whose plugin is asked")

            volume_id = f"vol-{uuid.uuid4().hex}"
            image = os.path.join(self.image_dir, f"{volume_id}.img")
            pending = ImageVolume(name=request.name, capacity_bytes=capacity, fs_type=fs_type, image=image,
                                  status=PENDING)
            with self.state.intent("volumes", volume_id, pending):
                self._make_image(image, capacity, fs_type)
            log.info("created volume %s (%s, %d bytes of %s)", volume_id, request.name, capacity, fs_type)
            return csi_pb2.CreateVolumeResponse(volume=volume_message(volume_id, self.state.volumes[volume_id],
                                                                      self.topology))

    def _here(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(self.topology.items()))

    @staticmethod
    def _make_image(image: str, capacity: int, fs_type: str) -> None:
        tmp = image + ".tmp"
        try:
            with open(tmp, "wb") as handle:
                handle.truncate(capacity)
            mounter.make_filesystem(tmp, fs_type)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, image)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def DeleteVolume(self, request, context):
        validate.delete_volume(request)
        with self.locks.hold(volume_key(request.volume_id)):
            record = self.state.volumes.get(request.volume_id)
            if record is None:
                return csi_pb2.DeleteVolumeResponse()  # CSI: deleting a volume that is gone succeeds
            if request.volume_id in self.state.staged or self.state.publishers(request.volume_id):
                raise VolumeInUse(f"volume {request.volume_id} is still staged or published on this node")
            if record.get("image"):
                # The records are not the only witness: whatever they say, a mounted image stays.
                numbers = {mounter.device_number(device) for device in mounter.find_loop(record["image"])}
                mounted = sorted(m.mount_point for m in mounter.mounts() if m.major_minor in numbers)
                if mounted:
                    raise VolumeInUse(f"volume {request.volume_id} is still mounted at {', '.join(mounted)}")
                mounter.detach_image(record["image"])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(record["image"])
            # A given block device (pre-provisioned volume) is only forgotten: its data is not ours to erase.
            with self.state.change():
                self.state.volumes.pop(request.volume_id, None)
            log.info("deleted volume %s", request.volume_id)
            return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(self, request, context):
        validate.validate_volume_capabilities(request)
        record = self.state.volumes.get(request.volume_id)
        if record is None or record.get("status") != DONE:
            raise VolumeNotFound(f"volume {request.volume_id} does not exist")
        for index, capability in enumerate(request.volume_capabilities):
            validate.volume_capability(capability, f"volume_capabilities[{index}]", allow_block=True)
            why = capability_supported(capability, record["fs_type"])
            if why:
                return csi_pb2.ValidateVolumeCapabilitiesResponse(message=why)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context, volume_capabilities=request.volume_capabilities,
            parameters=request.parameters)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)
