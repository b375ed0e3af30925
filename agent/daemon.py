"""`run`: the node agent process. Wires configuration, logging, the metrics and health server, and the parts
(the CSI shim, the AVC watcher) together, and stops them cleanly.

Configuration comes from defaults < an optional YAML file < environment (`SELINUX_MOUNT_AGENT_<OPTION>`) <
flags. Every default works on a laptop: state under ./state, the CSI socket inside it, metrics on localhost.
SIGTERM finishes in-flight calls and exits; SIGHUP re-reads the file and applies what can change live.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import yaml
from prometheus_client import CollectorRegistry

from agent.node import host
from agent.avc.applied import AppliedLevels
from agent.errors import InvalidInput
from agent.http import MetricsServer, Request, Response, health_response, metrics_response
from agent.apiclient.kubeconfig import KUBE_API_CHOICES
from agent.metrics import NodeMetrics
from agent.parsing.numbers import ascii_decimal

log = logging.getLogger("selinux-mount-agent")
ENV_PREFIX = "SELINUX_MOUNT_AGENT_"


@dataclass(frozen=True)
class DaemonConfig:
    csi_endpoint: str | None = None  # unix://<state_dir>/csi.sock
    backend_endpoint: str | None = None
    state_dir: str = "state"
    kubelet_root: str = "/var/lib/kubelet"
    node_id: str = field(default_factory=socket.gethostname)
    strip_context: bool = False
    on_context_dropped: str = "relabel"
    avc: str = "off"  # off, netlink, or file:/var/log/audit/audit.log
    kube_api: str = "auto"  # pod names for AVC attribution: auto, off, in-cluster, kubeconfig:PATH
    metrics_address: str = "127.0.0.1:9808"
    log_format: str = "text"
    log_level: str = "info"
    config_file: str | None = None

    # Options a SIGHUP may change without a restart.
    LIVE = ("log_format", "log_level")


OPTIONS = {f.name: f for f in dataclasses.fields(DaemonConfig)}


def _coerce(name: str, value, source: str):
    kind = OPTIONS[name].type
    if "bool" in str(kind):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InvalidInput(f"{source}: {name} must be true or false, not {value!r}")
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{source}: {name} must be a string")
    return value


def resolve_config(flags: dict, environ: dict, file_text: str | None = None, file_name: str = "") -> DaemonConfig:
    """Layer the sources (pure: the caller reads the file and the environment)."""
    values: dict = {}
    if file_text:
        try:
            document = yaml.safe_load(file_text) or {}
        except yaml.YAMLError as err:
            raise InvalidInput(f"config file {file_name}: invalid YAML: {err}") from None
        if not isinstance(document, dict):
            raise InvalidInput(f"config file {file_name}: expected a mapping of options")
        for key, value in document.items():
            name = str(key).replace("-", "_")
            if name not in OPTIONS or name == "config_file":
                raise InvalidInput(f"config file {file_name}: unknown option {key!r}")
            values[name] = _coerce(name, value, f"config file {file_name}")
    for name in OPTIONS:
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None and name != "config_file":
            values[name] = _coerce(name, env, f"environment {ENV_PREFIX + name.upper()}")
    for name, value in flags.items():
        if value is not None and name in OPTIONS:
            values[name] = value
    config = DaemonConfig(**values)
    if config.log_format not in ("text", "json"):
        raise InvalidInput(f"log_format must be text or json, not {config.log_format!r}")
    if config.on_context_dropped not in ("relabel", "fail"):
        raise InvalidInput(f"on_context_dropped must be relabel or fail, not {config.on_context_dropped!r}")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"log_level must be debug, info, warning or error, not {config.log_level!r}")
    if config.avc != "off" and config.avc != "netlink" and not config.avc.startswith("file:"):
        raise InvalidInput(f"avc must be off, netlink or file:PATH, not {config.avc!r}")
    if (config.kube_api not in ("auto", "off", "in-cluster", "kubeconfig")
            and not config.kube_api.startswith("kubeconfig:")):
        raise InvalidInput(f"kube_api must be {KUBE_API_CHOICES}, not {config.kube_api!r}")
    split_address(config.metrics_address)
    return config


def split_address(text: str) -> tuple[str, int]:
    host_part, sep, port = text.rpartition(":")
    number = ascii_decimal(port, 65535)
    if not sep or number is None:
        raise InvalidInput(f"address {text!r} is not HOST:PORT")
    return host_part.strip("[]") or "0.0.0.0", number


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in self.RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str = "text", log_level: str = "info", stream=None) -> None:
    """Text or JSON lines on stderr for every logger of the process (`csi`, `run`)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level.upper())


def _answer(daemon: "Daemon", request: Request) -> Response:
    """What the metrics and health server answers for `run` (a contract: paths, codes and bodies)."""
    if request.path == "/metrics":
        return metrics_response(daemon.registry, request)
    if request.path == "/healthz":
        return health_response(daemon.problems())
    if request.path == "/readyz":
        ready = daemon.ready.is_set() and not daemon.problems()
        return Response(200, b"ready\n", "text/plain") if ready else Response(503, b"not ready\n", "text/plain")
    return Response(404, b"not found\n", "text/plain")


class Component:
    """A part the daemon runs: started once, stopped with a grace period, asked whether it is healthy."""

    name = "component"

    def start(self) -> None: ...

    def stop(self, grace: float) -> None: ...

    def problem(self) -> str | None:
        return None


class Daemon:
    def __init__(self, config: DaemonConfig, components_factory=None):
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = NodeMetrics(self.registry)
        # The CSI shim's published volumes, as level → pod hints for the AVC watcher (both run here).
        self.applied_levels = AppliedLevels()
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.selinux = False
        self.components: list[Component] = []
        self._factory = components_factory or default_components
        self._http: MetricsServer | None = None
        self.instance_lock = None

    def start(self) -> None:
        from csi_shim.instance_lock import InstanceLock

        # First of all: a second agent on the same state must not bind the metrics port or touch the socket.
        self.instance_lock = InstanceLock.acquire(csi_state_dir(self.config.state_dir))
        self.selinux = host.selinux_enabled()
        self.metrics.selinux_enabled.set(1 if self.selinux else 0)
        if not self.selinux:
            # Like kubelet: start, say so once, and do no SELinux work.
            log.warning("SELinux is not enabled on this node: volumes are served without labels and nothing is "
                        "relabelled")
        os.makedirs(self.config.state_dir, exist_ok=True)
        host_name, port = split_address(self.config.metrics_address)
        try:
            self._http = MetricsServer((host_name, port), lambda request: _answer(self, request)).start()
        except OSError as err:
            raise InvalidInput(f"metrics address {self.config.metrics_address}: {err.strerror or err}") from None
        log.info("serving /metrics, /healthz and /readyz on %s", self.metrics_url)
        self.components = list(self._factory(self))
        for component in self.components:
            component.start()
            log.info("started %s", component.name)
        self.ready.set()

    @property
    def metrics_url(self) -> str:
        host_name, port = self._http.server_address[:2] if self._http else split_address(self.config.metrics_address)
        return f"http://{host_name}:{port}"

    def problems(self) -> list[str]:
        return [f"{c.name}: {p}" for c in self.components if (p := c.problem())]

    def reload(self, config: DaemonConfig) -> None:
        """Apply a re-read configuration: what can change live changes, the rest is named and kept."""
        changed = [f.name for f in dataclasses.fields(DaemonConfig)
                   if getattr(config, f.name) != getattr(self.config, f.name)]
        live = [name for name in changed if name in DaemonConfig.LIVE]
        frozen = [name for name in changed if name not in DaemonConfig.LIVE]
        self.config = dataclasses.replace(self.config, **{name: getattr(config, name) for name in live})
        configure_logging(self.config.log_format, self.config.log_level)
        if live:
            log.info("configuration reloaded: %s", ", ".join(live))
        if frozen:
            log.warning("configuration changes that need a restart were not applied: %s", ", ".join(frozen))
        if not changed:
            log.info("configuration reloaded: nothing changed")

    def stop(self, grace: float = 10.0) -> None:
        if self.stopped.is_set():
            return
        self.ready.clear()
        for component in reversed(self.components):
            try:
                component.stop(grace)
                log.info("stopped %s", component.name)
            except Exception:
                log.exception("stopping %s failed", component.name)
        if self._http:
            self._http.stop()
        if self.instance_lock is not None:
            self.instance_lock.release()
        self.stopped.set()


def csi_state_dir(state_dir: str) -> str:
    """Where the shim keeps its files under `run`: `--state-dir` itself, as for `csi`, so both commands find
    the same volumes. A node whose state was kept in DIR/csi (as `run` once did) keeps using that directory:
    moving away from it would lose the volume records and leave their loop devices attached. Any state file
    or the image directory there counts, a damaged or deleted snapshot included: the shim then refuses to
    start on that directory instead of starting empty in another."""
    base = os.path.abspath(state_dir)
    earlier = os.path.join(base, "csi")
    try:
        names = os.listdir(earlier)
    except OSError:
        return base
    return earlier if any(n.startswith("csi-state.") or n == "volumes" for n in names) else base


def shim_config(config: DaemonConfig, state_dir: str | None = None):
    """The CSI shim's configuration from the options `run` and `csi` share, resolved the same way for both:
    relative paths against the working directory, the socket `csi.sock` in the state directory unless
    --csi-endpoint says otherwise, the state in `csi_state_dir`. `state_dir` overrides that last choice."""
    from csi_shim.config import ShimConfig

    endpoint = config.csi_endpoint or "unix://" + os.path.join(config.state_dir, "csi.sock")
    path = endpoint.removeprefix("unix://").removeprefix("unix:")
    if endpoint.startswith("unix:") and path and not path.startswith("/"):
        endpoint = "unix://" + os.path.abspath(path)
    return ShimConfig(
        csi_endpoint=endpoint, backend_endpoint=config.backend_endpoint,
        state_dir=state_dir or csi_state_dir(config.state_dir),
        kubelet_root=os.path.abspath(config.kubelet_root), node_id=config.node_id,
        strip_context=config.strip_context, on_context_dropped=config.on_context_dropped)


def finished_publishes(state) -> list[tuple]:
    """(label, (namespace, name)) of each finished publish in the CSI shim's state, for `AppliedLevels`."""
    from csi_shim.records import DONE

    with state.lock:
        records = list(state.published.values())  # records are replaced, never edited: a shallow copy holds
    return [(record.get("label"), record.get("pod")) for record in records if record.get("status") == DONE]


class CSIComponent(Component):
    """The CSI shim: the built-in driver, or a proxy when a backend endpoint is set."""

    name = "csi"

    def __init__(self, daemon: "Daemon"):
        from csi_shim.config import socket_path

        self.shim_config = shim_config(daemon.config)
        self.socket = socket_path(self.shim_config.csi_endpoint, "--csi-endpoint")
        self.metrics = daemon.metrics
        self.levels = daemon.applied_levels
        self.daemon = daemon
        self.server = None

    def start(self) -> None:
        from csi_shim.server import build_server

        server = build_server(self.shim_config, self.metrics, on_publish=self.levels.sync,
                              instance_lock=self.daemon.instance_lock)
        # The records recovered from before a restart count too.
        self.levels.watch(lambda: finished_publishes(server.state))
        self.server = server.start()

    def stop(self, grace: float) -> None:
        if self.server is not None:
            self.server.stop(grace)
            self.levels.watch(None)

    def problem(self) -> str | None:
        if self.server is not None and not os.path.exists(self.socket):
            return f"socket {self.socket} is gone"
        return None


class AVCComponent(Component):
    """The AVC denial watcher: kernel audit multicast (netlink) or an audit log, attributed to pods, counted in
    selinux_avc_denials_total. With an API (`kube_api`), a watch of this node's pods turns UIDs into names;
    the levels the CSI shim applied to published volumes name the pods of processes that have exited."""

    name = "avc"

    def __init__(self, daemon: "Daemon"):
        self.spec = daemon.config.avc
        self.kube_api = daemon.config.kube_api
        self.node = daemon.config.node_id
        self.registry = daemon.registry
        self.levels = daemon.applied_levels
        self.watcher = None
        self.pod_watch = None

    def start(self) -> None:
        from agent.avc.attribution import Attributor
        from agent.avc.counting import AvcCounts
        from agent.avc.watcher import AvcWatcher, open_source
        from agent.metrics import AvcMetrics
        from agent.apiclient.client import Client
        from agent.apiclient.kubeconfig import config_for
        from agent.avc.podwatch import PodWatch

        api = config_for(self.kube_api)
        if api is not None:
            self.pod_watch = PodWatch(Client(api), self.node).start()
        else:
            log.info("no Kubernetes API configured (kube_api=%s): denials name pods by UID", self.kube_api)
        pods = self.pod_watch.pods if self.pod_watch is not None else None
        attributor = Attributor(pods=pods)
        self.levels.feed(attributor)  # levels the CSI shim applied, kept current as volumes come and go
        self.watcher = AvcWatcher(open_source(self.spec), attributor,
                                  AvcCounts(AvcMetrics(self.registry))).start()

    def stop(self, grace: float) -> None:
        if self.watcher is not None:
            self.watcher.stop(grace)
        if self.pod_watch is not None:
            self.pod_watch.stop(grace)

    def problem(self) -> str | None:
        if self.watcher is not None and self.watcher.error is not None:
            return f"watcher stopped: {self.watcher.error}"
        return None


def default_components(daemon: Daemon) -> list[Component]:
    parts: list[Component] = [CSIComponent(daemon)]
    if daemon.config.avc != "off":
        parts.append(AVCComponent(daemon))
    return parts
