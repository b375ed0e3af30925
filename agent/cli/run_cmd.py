"""`selinux-mount-agent run`: the node agent (CSI shim, metrics and health, and the watchers), as the
DaemonSet runs it. Options: flags > environment (SELINUX_MOUNT_AGENT_<OPTION>) > --config file > defaults."""

from __future__ import annotations

import logging
import os
import signal
import threading

from agent.cli.csi_cmd import add_csi_arguments
from agent.cli.examples import examples
from agent.daemon import Daemon, DaemonConfig, configure_logging, resolve_config
from agent.errors import InvalidInput

log = logging.getLogger("selinux-mount-agent")


def register(subparsers) -> None:
    defaults = DaemonConfig()
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


def load(args) -> DaemonConfig:
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
    daemon = Daemon(config)
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
