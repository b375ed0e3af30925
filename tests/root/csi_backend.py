"""A small CSI node plugin to stand behind the proxy in tests and the benchmark.

Modes, for what real backends do with `context=`:
  keep   - pass every flag to mount(2) (the kernel applies context=, or refuses it without SELinux);
  drop   - remove context= and mount (what util-linux libmount does when it thinks SELinux is off);
  reject - INVALID_ARGUMENT when context= is present (plugins that validate their flags);
  none   - succeed without mounting anything (a misbehaving plugin).
Volumes are tmpfs filesystems mounted at the staging path; publish bind-mounts them. Every request is kept
in `received` so tests can assert what was forwarded.
"""

from __future__ import annotations

import contextlib
import os
from concurrent import futures

import grpc
from google.protobuf import wrappers_pb2

from csi_shim import mounter
from csi_shim.plan import MS_RDONLY, kernel_options, without_context
from csi_shim.proto import csi_pb2 as pb
from csi_shim.proto import csi_pb2_grpc as rpc

NAME = "backend.test.local"


class BackendNode(rpc.NodeServicer, rpc.IdentityServicer, rpc.ControllerServicer):
    def __init__(self, mode: str = "drop", mount: bool = True):
        self.mode = mode
        self.mount = mount
        self.received: list[tuple[str, object]] = []

    def GetPluginInfo(self, request, context):
        return pb.GetPluginInfoResponse(name=NAME, vendor_version="0.0.1")

    def GetPluginCapabilities(self, request, context):
        return pb.GetPluginCapabilitiesResponse()

    def Probe(self, request, context):
        return pb.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))

    def NodeGetInfo(self, request, context):
        return pb.NodeGetInfoResponse(node_id="backend-node")

    def NodeGetCapabilities(self, request, context):
        rpc_type = pb.NodeServiceCapability.RPC
        return pb.NodeGetCapabilitiesResponse(capabilities=[
            pb.NodeServiceCapability(rpc=rpc_type(type=rpc_type.STAGE_UNSTAGE_VOLUME))])

    def _flags(self, request, context):
        flags = list(request.volume_capability.mount.mount_flags)
        has_context = any(f.startswith("context=") for f in flags)
        if self.mode == "reject" and has_context:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "mount flag context= is not supported")
        if self.mode == "drop":
            flags = without_context(flags)
        return flags

    def NodeStageVolume(self, request, context):
        self.received.append(("NodeStageVolume", request))
        flags = self._flags(request, context)
        if self.mode == "none" or not self.mount:
            return pb.NodeStageVolumeResponse()
        if mounter.mounted_at(request.staging_target_path) is None:
            try:
                bits, data = kernel_options(["size=4m"] + flags)
                mounter.mount("backend-tmpfs", request.staging_target_path, "tmpfs", bits, data)
            except Exception as err:  # noqa: BLE001 - a plugin reports its mount error as INTERNAL
                context.abort(grpc.StatusCode.INTERNAL, str(err))
        return pb.NodeStageVolumeResponse()

    def NodeUnstageVolume(self, request, context):
        self.received.append(("NodeUnstageVolume", request))
        while mounter.mounted_at(request.staging_target_path) is not None:
            mounter.unmount(request.staging_target_path)
        return pb.NodeUnstageVolumeResponse()

    def NodePublishVolume(self, request, context):
        self.received.append(("NodePublishVolume", request))
        self._flags(request, context)
        if self.mode == "none" or not self.mount:
            return pb.NodePublishVolumeResponse()
        os.makedirs(request.target_path, exist_ok=True)
        if mounter.mounted_at(request.target_path) is None:
            mounter.bind(request.staging_target_path, request.target_path,
                         MS_RDONLY if request.readonly else 0)
        return pb.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request, context):
        self.received.append(("NodeUnpublishVolume", request))
        while mounter.mounted_at(request.target_path) is not None:
            mounter.unmount(request.target_path)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(request.target_path)
        return pb.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(self, request, context):
        self.received.append(("NodeGetVolumeStats", request))
        return pb.NodeGetVolumeStatsResponse(usage=[pb.VolumeUsage(total=1, unit=pb.VolumeUsage.BYTES)])

    def NodeExpandVolume(self, request, context):
        self.received.append(("NodeExpandVolume", request))
        return pb.NodeExpandVolumeResponse(capacity_bytes=request.capacity_range.required_bytes)

    def CreateVolume(self, request, context):
        return pb.CreateVolumeResponse(volume=pb.Volume(volume_id=f"backend-{request.name}", capacity_bytes=1))


def serve_backend(socket_path: str, plugin: BackendNode, workers: int = 32):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    rpc.add_NodeServicer_to_server(plugin, server)
    rpc.add_IdentityServicer_to_server(plugin, server)
    rpc.add_ControllerServicer_to_server(plugin, server)
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    return server


if __name__ == "__main__":  # used by bench/csi.py: python -m tests.root.csi_backend SOCKET MODE
    import signal
    import sys
    import threading

    backend = serve_backend(sys.argv[1], BackendNode(mode=sys.argv[2] if len(sys.argv) > 2 else "drop"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    backend.stop(0)
