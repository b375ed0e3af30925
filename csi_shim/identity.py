"""CSI Identity service of the built-in driver: name, capabilities, readiness."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from agent import __version__
from csi_shim.proto import csi_pb2, csi_pb2_grpc


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver_name: str):
        self.driver_name = driver_name

    def GetPluginInfo(self, request, context):
        return csi_pb2.GetPluginInfoResponse(name=self.driver_name, vendor_version=__version__)

    def GetPluginCapabilities(self, request, context):
        # VOLUME_ACCESSIBILITY_CONSTRAINTS: every volume lives on one node, so the CO must learn which (the
        # external-provisioner then gives each PV node affinity, and the scheduler keeps its pods there).
        service = csi_pb2.PluginCapability.Service
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=[
            csi_pb2.PluginCapability(service=service(type=kind))
            for kind in (service.CONTROLLER_SERVICE, service.VOLUME_ACCESSIBILITY_CONSTRAINTS)])

    def Probe(self, request, context):
        # State is rebuilt before the socket opens, so a plugin that answers is ready.
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
