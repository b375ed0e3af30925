"""`selinux-mount-agent run`: the node agent (CSI shim, metrics and health, and the watchers), as the
DaemonSet runs it. Options: flags > environment (SELINUX_MOUNT_AGENT_<OPTION>) > --config file > defaults.

This is where `run`'s parts are wired: the CSI shim and the AVC denial watcher as `agent.daemon.Component`s,
sharing the levels the shim applied to published volumes; the daemon runs them."""

from __future__ import annotations

import logging
import os
import signal
import threading

from agent.avc.applied import AppliedLevels
from agent.cli.csi_cmd import add_csi_arguments
from agent.cli.examples import examples
from agent.config import RunConfig, resolve_config
from agent.daemon import Component, Daemon
from agent.errors import InvalidInput
from agent.logs import configure_logging
from csi_shim.config import ShimConfig

log = logging.getLogger("selinux-mount-agent")


def register(subparsers) -> None:
    defaults = RunConfig()
    parser = subparsers.add_parser(
        "run", help="run the node agent: the CSI shim, /metrics, /healthz and /readyz",
        description="Run the node agent. It serves the CSI node shim (the built-in local driver, or a proxy in "
                    "front of --backend-endpoint) and /metrics, /healthz and /readyz. Every option has a default "
                    "that works on a laptop; each can also be set in the environment as SELINUX_MOUNT_AGENT_<NAME> "
                    "or in a YAML file given with --config. SIGTERM stops after in-flight calls; SIGHUP reloads.",
        **examples(("on a laptop: CSI on ./state/csi.sock, metrics on 127.0.0.1:9808", "run"),
                   ("on a node, as the DaemonSet runs it, with AVC denials named by pod",
                    "run --csi-endpoint unix:///csi/csi.sock --state-dir /var/lib/selinux-mount-agent \\\n"
                    "      --metrics-address 0.0.0.0:9808 --avc netlink --kube-api in-cluster"),
                   ("in front of another driver's node plugin", "run --backend-endpoint unix:///csi/backend.sock"),
                   ("options from a YAML file; SELINUX_MOUNT_AGENT_<OPTION> variables and flags override it",
                    "run --config /etc/selinux-mount-agent.yaml")))
    add_csi_arguments(parser)
    parser.add_argument("--metrics-address", metavar="HOST:PORT",
                        help=f"metrics and health (default {defaults.metrics_address})")
    parser.add_argument("--config", dest="config_file", metavar="FILE",
                        help="YAML file of options named as the flags are, e.g. `log-level: debug`")
    parser.add_argument("--avc", metavar="off|netlink|file:PATH",
                        help="watch AVC denials from the kernel audit multicast group (needs CAP_AUDIT_READ) or "
                             "an audit log, attribute them to pods and count them (default off)")
    parser.add_argument("--kube-api", metavar="auto|off|in-cluster|kubeconfig[:PATH]",
                        help="where to watch this node's pods so AVC denials carry pod names, not only UIDs "
                             "(default auto: in-cluster when KUBERNETES_SERVICE_HOST is set, else the files "
                             "KUBECONFIG names when it is set, else off; kubeconfig: KUBECONFIG or ~/.kube/config "
                             "as kubectl reads them; kubeconfig:PATH: that file)")
    parser.set_defaults(func=run)


def load(args) -> RunConfig:
    flags = {name: value for name, value in vars(args).items() if name not in ("func", "command")}
    path = flags.get("config_file") or os.environ.get("SELINUX_MOUNT_AGENT_CONFIG_FILE")
    text = None
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as err:
            raise InvalidInput(f"cannot read config file {path}: {err.strerror}") from None
        flags["config_file"] = path
    return resolve_config(flags, dict(os.environ), text, path or "")


def run(args) -> int:
    config = load(args)
    configure_logging(config.log_format, config.log_level)
    daemon = node_agent(config)
    stop = threading.Event()

    def on_term(signum, frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    def on_hup(signum, frame):
        try:
            daemon.reload(load(args))
        except InvalidInput as err:
            log.error("configuration not reloaded: %s", err)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    try:
        daemon.start()
        stop.wait()
    finally:
        daemon.stop()
    return 0


def node_agent(config: RunConfig) -> Daemon:
    """The daemon of `run`: the CSI shim, and the AVC watcher when `avc` is not off, on the shim's state
    directory, which it holds exclusively (`csi_shim.instance_lock`) for as long as it runs."""
    from csi_shim.instance_lock import InstanceLock

    shim = ShimConfig.of(config.resolved())
    return Daemon(config, lambda daemon: node_components(daemon, shim),
                  take_lock=lambda: InstanceLock.acquire(shim.state_dir))


def node_components(daemon: Daemon, shim: ShimConfig) -> list[Component]:
    # The CSI shim's published volumes, as level -> pod hints for the AVC watcher (both run here).
    levels = AppliedLevels()
    parts: list[Component] = [CSIComponent(shim, daemon, levels)]
    if daemon.config.avc != "off":
        parts.append(AVCComponent(daemon, levels))
    return parts


def finished_publishes(state) -> list[tuple]:
    """(label, (namespace, name)) of each finished publish in the CSI shim's state, for `AppliedLevels`."""
    from csi_shim.records import DONE

    with state.lock:
        records = list(state.published.values())  # records are replaced, never edited: a shallow copy holds
    return [(record.get("label"), record.get("pod")) for record in records if record.get("status") == DONE]


class CSIComponent(Component):
    """The CSI shim: the built-in driver, or a proxy when a backend endpoint is set."""

    name = "csi"

    def __init__(self, shim: ShimConfig, daemon: Daemon, levels: AppliedLevels):
        self.shim_config = shim
        self.socket = shim.socket
        self.daemon = daemon
        self.levels = levels
        self.server = None

    def start(self) -> None:
        from csi_shim.server import build_server

        server = build_server(self.shim_config, self.daemon.metrics, on_publish=self.levels.sync,
                              instance_lock=self.daemon.instance_lock)
        self.levels.watch(lambda: finished_publishes(server.state))  # the records recovered from before a restart count too
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

    def __init__(self, daemon: Daemon, levels: AppliedLevels):
        self.spec = daemon.config.avc
        self.kube_api = daemon.config.kube_api
        self.node = daemon.config.node_id
        self.registry = daemon.registry
        self.levels = levels
        self.watcher = None
        self.pod_watch = None

    def start(self) -> None:
        from agent.apiclient.client import Client
        from agent.apiclient.kubeconfig import config_for
        from agent.avc.attribution import Attributor
        from agent.avc.counting import AvcCounts
        from agent.avc.podwatch import PodWatch
        from agent.avc.watcher import AvcWatcher, open_source
        from agent.metrics import AvcMetrics

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
