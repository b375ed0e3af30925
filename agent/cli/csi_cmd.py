"""`selinux-mount-agent csi`: the CSI node shim for drivers with CSIDriver.spec.seLinuxMount: true.

Contract (relied on elsewhere, keep stable):
  csi --csi-endpoint unix:///PATH.sock [--backend-endpoint unix:///PATH.sock] [--state-dir DIR]
      [--kubelet-root DIR] [--node-id ID] [--strip-context] [--on-context-dropped relabel|fail]
      [--log-format text|json] [--log-level LEVEL] [--recover-state]
Without --backend-endpoint it serves the built-in loop-device driver; with it, it proxies to that plugin.
Runs until SIGTERM or SIGINT; exit code 0 after a clean stop, 2 for bad flags or a state file it cannot trust
(one line naming the file; the file is left as it is). --recover-state does not serve: it sets such files
aside, rebuilds the state from the node, prints what it rebuilt and what it could not, and exits 0; it takes
the state directory's instance lock too, so it refuses (exit 2) while a shim serves that directory.
"""

from __future__ import annotations

import signal
import socket
import threading

from agent.daemon import configure_logging


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "csi", help="serve the CSI node shim that applies or verifies context= mounts",
        description="Serve CSI (Identity, Controller, Node) on a unix socket. Without --backend-endpoint: a "
                    "built-in driver of loop-backed ext4/xfs volumes that mounts with kubelet's context= flag "
                    "through mount(2) and verifies it. With --backend-endpoint: a proxy in front of another CSI "
                    "node plugin that checks each context= mount against /proc/self/mountinfo and relabels or "
                    "fails when the context did not take.")
    add_csi_arguments(parser)
    parser.add_argument("--recover-state", action="store_true",
                        help="do not serve: when the state file cannot be loaded (the shim refuses to start on "
                             "it), rename it and its journal to <name>.bad-<time>, rebuild the records from the "
                             "volume images, their loop devices and the mounts under --kubelet-root, print what "
                             "was rebuilt and what could not be (volume and pod names, given block devices), "
                             "write the new state and exit; a state that loads is left alone")
    parser.set_defaults(func=run)


def add_csi_arguments(parser, daemon: bool = False) -> None:
    """The shim's flags (a contract, shared with `run`). For `run` nothing is required and nothing has a default
    here, so its environment and config file can fill what the flags leave out."""
    def default(value):
        return None if daemon else value

    parser.add_argument("--csi-endpoint", required=not daemon, metavar="unix:///PATH.sock",
                        help="socket to serve CSI on (kubelet's plugin registration points here)"
                             + (" (default unix://state/csi.sock)" if daemon else ""))
    parser.add_argument("--backend-endpoint", metavar="unix:///PATH.sock",
                        help="forward every call to this CSI node plugin (proxy mode)")
    parser.add_argument("--state-dir", default=default("/var/lib/selinux-mount-agent/csi"),
                        help="state file and, for the built-in driver, volume images (default: "
                             + ("./state" if daemon else "%(default)s") + ")")
    parser.add_argument("--kubelet-root", default=default("/var/lib/kubelet"),
                        help="kubelet --root-dir; staging and target paths must be below it (default: "
                             "/var/lib/kubelet)")
    parser.add_argument("--node-id", default=default(socket.gethostname()),
                        help="node id reported by NodeGetInfo (default: the host name)")
    parser.add_argument("--strip-context", action="store_const", const=True, default=default(False),
                        help="proxy mode: remove context= before forwarding, for backends that reject it; the "
                             "shim then relabels (or fails, see --on-context-dropped)")
    parser.add_argument("--on-context-dropped", choices=("relabel", "fail"), default=default("relabel"),
                        help="when mountinfo shows no context after a context= mount: relabel the published "
                             "volume recursively, or fail with FAILED_PRECONDITION (default: relabel)")
    parser.add_argument("--log-format", choices=("text", "json"), default=default("text"))
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=default("info"))


def config_from_args(args):
    from csi_shim.config import ShimConfig
    return ShimConfig(csi_endpoint=args.csi_endpoint, backend_endpoint=args.backend_endpoint,
                      state_dir=args.state_dir, kubelet_root=args.kubelet_root, node_id=args.node_id,
                      strip_context=args.strip_context, on_context_dropped=args.on_context_dropped)


def run(args) -> int:
    configure_logging(args.log_format, args.log_level)
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
