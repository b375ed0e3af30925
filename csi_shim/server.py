"""The gRPC server on a unix socket: which services it carries and the one place errors become status codes;
on start the state is loaded (refused when it cannot be trusted) and reconciled (csi_shim/recovery.py).

`build_server(config)` is what the `csi` subcommand runs and what the `run` daemon will run: it returns a
`ShimServer` that is started, stopped and waited on, so a caller can embed it next to other work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import threading
import time
from concurrent import futures

import grpc

from agent.errors import AgentError, InvalidInput, LabelConflict
from csi_shim import validate
from csi_shim.config import ShimConfig
from csi_shim.fdpath import KubeletRoot
from csi_shim.instance_lock import InstanceLock
from csi_shim.locks import VolumeLocks
from csi_shim.plan import node_topology
from csi_shim.proto import csi_pb2_grpc
from csi_shim.recovery import recover
from csi_shim.journal import State

log = logging.getLogger(__name__)


def status_code(error: AgentError) -> grpc.StatusCode:
    """AgentError.code names the status (INVALID_ARGUMENT, NOT_FOUND, ...); unknown names become INTERNAL."""
    return getattr(grpc.StatusCode, str(getattr(error, "code", "INTERNAL")), grpc.StatusCode.INTERNAL)


# csi.v1 VolumeCapability.AccessMode.Mode -> kubelet's access_mode metric label.
ACCESS_MODE_LABELS = {1: "RWO", 2: "ROX", 3: "ROX", 4: "RWX", 5: "RWX", 6: "RWOP", 7: "RWO"}


def access_mode_label(request) -> str:
    capability = getattr(request, "volume_capability", None)
    return ACCESS_MODE_LABELS.get(capability.access_mode.mode, "") if capability is not None else ""


class ErrorMapping(grpc.ServerInterceptor):
    """Every unary handler runs inside this: typed errors become their status, anything else INTERNAL with
    the traceback in the log. Handlers never build status codes themselves. Requests are never logged whole:
    CSI secrets and mount flags may be sensitive (CSI spec, "csi_secret"). With metrics, it also records each
    call's latency and status, and the context mounts kubelet would count as admitted or refused. `on_publish`
    is called after every NodePublishVolume and NodeUnpublishVolume, when the state holds the call's outcome;
    its failure is logged and never fails the call."""

    PUBLISH_CALLS = frozenset({"NodePublishVolume", "NodeUnpublishVolume"})

    def __init__(self, metrics=None, driver_name: str = "", on_publish=None):
        self.metrics = metrics
        self.plugin = f"kubernetes.io/csi/{driver_name}"
        self.on_publish = on_publish

    def _notify(self, method: str) -> None:
        if self.on_publish is None or method not in self.PUBLISH_CALLS:
            return
        try:
            self.on_publish()
        except Exception:  # noqa: BLE001 - a listener must not fail a mount
            log.exception("the listener for %s failed", method)

    def _record(self, method: str, request, code: grpc.StatusCode, error, started: float) -> None:
        self._notify(method)
        if self.metrics is None:
            return
        self.metrics.observe_csi(method, code.name, time.monotonic() - started)
        if method == "NodeStageVolume" or method == "NodePublishVolume":
            if isinstance(error, LabelConflict):
                self.metrics.context_mount(False, self.plugin, access_mode_label(request))
            elif code == grpc.StatusCode.OK and method == "NodeStageVolume" and any(
                    flag.startswith("context=") for flag in request.volume_capability.mount.mount_flags):
                self.metrics.context_mount(True, self.plugin, access_mode_label(request))

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        def call(request, context):
            started = time.monotonic()
            try:
                response = inner(request, context)
            except AgentError as err:
                code = status_code(err)
                log.info("%s -> %s: %s (%.1f ms)", method, code.name, err, (time.monotonic() - started) * 1e3)
                self._record(method, request, code, err, started)
                context.abort(code, str(err))
            except NotImplementedError as err:
                self._record(method, request, grpc.StatusCode.UNIMPLEMENTED, err, started)
                context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this plugin")
            except Exception as err:  # noqa: BLE001 - the last line of defence, logged with its traceback
                log.exception("%s failed", method)
                self._record(method, request, grpc.StatusCode.INTERNAL, err, started)
                context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {err}")
            log.debug("%s -> OK (%.1f ms)", method, (time.monotonic() - started) * 1e3)
            self._record(method, request, grpc.StatusCode.OK, None, started)
            return response

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def _prepare_socket(path: str) -> None:
    """Refuse a path that is not a socket, or a socket another process serves (a shim on another state
    directory, which the instance lock does not see). A socket nobody listens on was left by a killed run and
    is replaced by `_bind_socket`; kubelet reconnects by path."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as err:
        raise InvalidInput(f"--csi-endpoint {path}: cannot make its directory: {err.strerror or err}") from None
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise InvalidInput(f"--csi-endpoint {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return
        except OSError:
            pass  # a full backlog or a timeout: someone is there
    raise InvalidInput(f"--csi-endpoint {path} is in use by another process")


def _bind_socket(server, path: str) -> tuple[int, int]:
    """Bind the socket under a private name and rename it into place, so the path never points at nothing
    and gRPC, which removes the path it bound when it stops, only ever removes the private name. Returns the
    socket's (st_dev, st_ino): `stop` removes the path only while it is still this socket."""
    _prepare_socket(path)
    # A leading dot: kubelet's plugin watcher ignores such files (pluginwatcher/plugin_watcher.go).
    private = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}~")
    try:
        server.add_insecure_port(f"unix://{private}")
    except RuntimeError:  # gRPC names no errno: say what a reader can check
        directory = os.path.dirname(path)
        reason = ("its directory is not writable" if not os.access(directory, os.W_OK | os.X_OK) else
                  "the path is too long for a unix socket" if len(private.encode()) >= 108 else
                  "gRPC could not bind it")
        raise InvalidInput(f"--csi-endpoint {path}: cannot serve there: {reason}") from None
    os.chmod(private, 0o660)
    identity = os.stat(private)
    os.rename(private, path)
    return identity.st_dev, identity.st_ino


def _remove_own_socket(path: str, identity: tuple[int, int]) -> None:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == identity:
        os.unlink(path)
    else:
        log.warning("left %s in place: it is no longer the socket this process bound", path)


class ShimServer:
    def __init__(self, config: ShimConfig, metrics=None, on_publish=None, instance_lock=None):
        self.config = config
        self.metrics = metrics
        problem = None if config.proxy else validate.topology_value_problem(config.node_id)
        if problem:
            # kubelet writes NodeGetInfo's topology as a node label: registration would fail later, less clearly.
            raise InvalidInput(f"--node-id {config.node_id!r} cannot be this driver's topology value: {problem}")
        # Before the state or the socket is touched: one instance per state directory.
        self._owns_lock = instance_lock is None
        self.instance_lock = instance_lock or InstanceLock.acquire(config.state_dir)
        self.state = State(config.state_file)
        self.locks = VolumeLocks()
        self.root = KubeletRoot(config.kubelet_root)
        self.recovery_notes = recover(self.state, config, self.root)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                             thread_name_prefix="csi"),
                                  interceptors=[ErrorMapping(metrics, config.driver_name, on_publish)])
        self.proxy = None
        if config.proxy:
            from csi_shim.proxy import Proxy
            self.proxy = Proxy(config, self.state, self.locks, metrics, self.root)
            self.server.add_generic_rpc_handlers([self.proxy])
        else:
            from csi_shim.controller import ControllerService
            from csi_shim.identity import IdentityService
            from csi_shim.node import NodeService
            csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(config.driver_name), self.server)
            csi_pb2_grpc.add_ControllerServicer_to_server(
                ControllerService(self.state, config.image_dir, self.locks,
                                  node_topology(config.driver_name, config.node_id)), self.server)
            csi_pb2_grpc.add_NodeServicer_to_server(NodeService(self.state, self.config, self.locks, metrics,
                                                                self.root),
                                                    self.server)
        self.socket_identity = _bind_socket(self.server, config.socket)
        self._stopped = threading.Event()

    def start(self) -> "ShimServer":
        self.server.start()
        log.info("CSI %s listening on %s%s", "proxy" if self.proxy else "driver", self.config.csi_endpoint,
                 f", forwarding to {self.config.backend_endpoint}" if self.proxy else "")
        return self

    def stop(self, grace: float | None = 5.0) -> None:
        self.server.stop(grace).wait()
        if self.proxy is not None:
            self.proxy.close()
        self.state.close()
        self.root.close()
        _remove_own_socket(self.config.socket, self.socket_identity)
        if self._owns_lock:
            self.instance_lock.release()
        self._stopped.set()

    def wait(self) -> None:
        self.server.wait_for_termination()


def build_server(config: ShimConfig, metrics=None, on_publish=None, instance_lock=None) -> ShimServer:
    """The shim for these settings, state recovered, socket bound, not yet serving. `metrics` (an
    agent.metrics.NodeMetrics) receives what the shim does; None records nothing. `on_publish()` runs after
    each NodePublishVolume and NodeUnpublishVolume (see ErrorMapping). Without `instance_lock` (an
    InstanceLock the caller took on config.state_dir) the server takes it and releases it when it stops."""
    return ShimServer(config, metrics, on_publish, instance_lock)
