"""`selinux-mount-agent csi`: the CSI node shim for drivers with CSIDriver.spec.seLinuxMount: true.

Contract (relied on elsewhere, keep stable):
  csi [--csi-endpoint unix:///PATH.sock] [--backend-endpoint unix:///PATH.sock] [--state-dir DIR]
      [--kubelet-root DIR] [--node-id ID] [--strip-context] [--on-context-dropped relabel|fail]
      [--log-format text|json] [--log-level LEVEL] [--recover-state]
Without --backend-endpoint it serves the built-in loop-device driver; with it, it proxies to that plugin.
The defaults are `run`'s (agent.config.ShimOptions): state in ./state, the socket csi.sock inside it.
Runs until SIGTERM or SIGINT; exit code 0 after a clean stop, 2 for bad flags or a state file it cannot trust
(one line naming the file; the file is left as it is). --recover-state does not serve: it sets such files
aside, rebuilds the state from the node, prints what it rebuilt and what it could not, and exits 0; it takes
the state directory's instance lock too, so it refuses (exit 2) while a shim serves that directory.
"""

from __future__ import annotations

import signal
import threading

from agent.cli.examples import examples
from agent.config import SHIM_OPTIONS, RunConfig, holds_state
from agent.logs import configure_logging
from csi_shim.config import ShimConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "csi", help="serve the CSI node shim that applies or verifies context= mounts",
        description="Serve CSI (Identity, Controller, Node) on a unix socket. Without --backend-endpoint: a "
                    "built-in driver of loop-backed ext4/xfs volumes that mounts with kubelet's context= flag "
                    "through mount(2) and verifies it. With --backend-endpoint: a proxy in front of another CSI "
                    "node plugin that checks each context= mount against /proc/self/mountinfo and relabels or "
                    "fails when the context did not take.",
        **examples(("the built-in driver, state and socket in ./state", "csi"),
                   ("as a node plugin, where kubelet looks for it",
                    "csi --csi-endpoint unix:///var/lib/kubelet/plugins/local.selinux-mount-agent.io/csi.sock \\\n"
                    "      --state-dir /var/lib/selinux-mount-agent"),
                   ("a proxy in front of another driver that rejects context=",
                    "csi --csi-endpoint unix:///csi/csi.sock --backend-endpoint unix:///csi/backend.sock \\\n"
                    "      --strip-context"),
                   ("rebuild a state file the shim refuses to start on",
                    "csi --state-dir /var/lib/selinux-mount-agent --recover-state")))
    add_csi_arguments(parser)
    parser.add_argument("--recover-state", action="store_true",
                        help="do not serve: when the state file cannot be loaded (the shim refuses to start on "
                             "it), rename it and its journal to <name>.bad-<time>, rebuild the records from the "
                             "volume images, their loop devices and the mounts under --kubelet-root, print what "
                             "was rebuilt and what could not be (volume and pod names, given block devices), "
                             "write the new state and exit; a state that loads is left alone")
    parser.set_defaults(func=run)


def add_csi_arguments(parser) -> None:
    """The shim's flags (a contract, shared with `run`, with the same defaults: `RunConfig`). No flag has a
    default here, so `run`'s environment and config file can fill what the flags leave out."""
    defaults = RunConfig()
    parser.add_argument("--csi-endpoint", metavar="unix:///PATH.sock",
                        help="socket to serve CSI on (kubelet's plugin registration points here; default: "
                             "csi.sock in --state-dir)")
    parser.add_argument("--backend-endpoint", metavar="unix:///PATH.sock",
                        help="forward every call to this CSI node plugin (proxy mode)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="state file and, for the built-in driver, volume images (default: "
                             f"./{defaults.state_dir}; its csi/ subdirectory when an earlier version kept the state "
                             "there)")
    parser.add_argument("--kubelet-root", metavar="DIR",
                        help="kubelet --root-dir; staging and target paths must be below it (default: "
                             f"{defaults.kubelet_root})")
    parser.add_argument("--node-id", help="node id reported by NodeGetInfo (default: the host name)")
    parser.add_argument("--strip-context", action="store_const", const=True,
                        help="proxy mode: remove context= before forwarding, for backends that reject it; the "
                             "shim then relabels (or fails, see --on-context-dropped)")
    parser.add_argument("--on-context-dropped", choices=("relabel", "fail"),
                        help="when mountinfo shows no context after a context= mount: relabel the published "
                             f"volume recursively, or fail with FAILED_PRECONDITION (default: "
                             f"{defaults.on_context_dropped})")
    parser.add_argument("--log-format", choices=("text", "json"),
                        help=f"text lines, or one JSON object per line for log collectors (default: "
                             f"{defaults.log_format})")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        help=f"least severe messages logged (default: {defaults.log_level})")


# The options `csi` takes: the shim's, and how it logs.
CSI_OPTIONS = (*SHIM_OPTIONS, "log_format", "log_level")
# `csi --state-dir`'s default before `csi` shared `run`'s defaults. A node whose shim kept its volumes there goes
# on using it: starting empty elsewhere would leave kubelet's volumes without records and their loops attached.
EARLIER_STATE_DIR = "/var/lib/selinux-mount-agent/csi"


def options_from_args(args) -> RunConfig:
    """The `csi` flags over `run`'s defaults (no environment or config file: `csi` takes flags only)."""
    return RunConfig(**{name: getattr(args, name) for name in CSI_OPTIONS if getattr(args, name) is not None})


def config_from_args(args) -> ShimConfig:
    earlier = EARLIER_STATE_DIR if args.state_dir is None and holds_state(EARLIER_STATE_DIR) else None
    return ShimConfig.of(options_from_args(args).resolved(state_dir=earlier))


def run(args) -> int:
    options = options_from_args(args)
    configure_logging(options.log_format, options.log_level)
    config = config_from_args(args)
    if getattr(args, "recover_state", False):
        from csi_shim.instance_lock import InstanceLock
        from csi_shim.recovery import recover_state
        # A shim serving this state directory would write its records over the rebuilt ones.
        lock = InstanceLock.acquire(config.state_dir)
        try:
            for line in recover_state(config):
                print(line, flush=True)
        finally:
            lock.release()
        return 0
    from csi_shim.server import build_server
    server = build_server(config).start()
    done = threading.Event()

    def stop(signum, frame):
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()
    server.stop()
    return 0
