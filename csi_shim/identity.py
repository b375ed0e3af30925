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
        service = csi_pb2.PluginCapability.Service(type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE)
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=[csi_pb2.PluginCapability(service=service)])

    def Probe(self, request, context):
        # State is rebuilt before the socket opens, so a plugin that answers is ready.
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
