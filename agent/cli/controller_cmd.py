"""`selinux-mount-agent controller`: live conflict detection against a cluster's API.

Watches Pods, PVCs, PVs and CSIDrivers, keeps the audit's model up to date, posts Events with the upstream
selinux-warning-controller's reasons and texts, and serves its metric on /metrics, with /healthz and /readyz
(agent/http.py). Unlike upstream it needs no kube-controller-manager restart and fills in node defaults in its
reasoning.
"""

from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import CollectorRegistry

from agent.apiclient.client import Client
from agent.apiclient.kubeconfig import controller_config
from agent.cli.examples import examples
from agent.config import split_address
from agent.conflict_watch import ConflictModel, ConflictWatch, conflict_collector
from agent.http import endpoints, serve
from agent.kubelet import gates as gates_mod
from agent.logs import FORMATS, LEVELS, configure_logging
from agent.node.contexts import load_node_defaults


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "controller", help="watch the cluster and report SELinux volume conflicts as Events and a metric",
        description="Live form of `audit`: list+watch Pods, PVCs, PVs and CSIDrivers, post an Event "
                    "(SELinuxLabelConflict, SELinuxChangePolicyConflict) on both pods of each new conflict, and "
                    "serve selinux_warning_controller_selinux_volume_conflict on /metrics. The API is found as "
                    "kubectl finds it: --kubeconfig, KUBECONFIG, the service account in a pod, ~/.kube/config.",
        **examples(("from a workstation, with kubectl's configuration (exec plugins included)", "controller"),
                   ("one context of one file, without posting Events",
                    "controller --kubeconfig ~/.kube/prod.yaml --context prod --no-events"),
                   ("in the cluster, as deploy/controller runs it",
                    "controller --metrics-address 0.0.0.0:9809 --k8s-version 1.37")))
    parser.add_argument("--kubeconfig", metavar="PATH",
                        help="kubeconfig file; without it: the files KUBECONFIG names, the pod's service account "
                             "in a cluster, else ~/.kube/config")
    parser.add_argument("--context", help="kubeconfig context (default: its current-context)")
    parser.add_argument("--k8s-version", default=gates_mod.DEFAULT_VERSION, metavar="1.MINOR",
                        help="Kubernetes version whose gates decide eligibility (default %(default)s)")
    parser.add_argument("--feature-gates", default="", metavar="Gate=bool,...",
                        help="override gates as the cluster's --feature-gates do, e.g. SELinuxMount=true")
    parser.add_argument("--defaults-file", metavar="PATH", help="contexts file with the nodes' container labels")
    parser.add_argument("--metrics-address", default="127.0.0.1:9809", metavar="HOST:PORT",
                        help="where /metrics, /healthz and /readyz are served (default %(default)s; empty to "
                             "disable)")
    parser.add_argument("--no-events", action="store_true", help="do not post Events, only serve the metric")
    parser.add_argument("--log-level", default="info", choices=LEVELS,
                        help="least severe messages logged (default: info)")
    parser.add_argument("--log-format", default="text", choices=FORMATS,
                        help="text lines, or one JSON object per line for log collectors (default: text)")
    parser.set_defaults(func=run)


def run(args) -> int:
    configure_logging(args.log_format, args.log_level)
    gates = gates_mod.resolve(args.k8s_version, gates_mod.parse_overrides(args.feature_gates))
    config = controller_config(args.kubeconfig, args.context)
    model = ConflictModel(gates, load_node_defaults(args.defaults_file))
    watch = ConflictWatch(Client(config), model, emit_events=not args.no_events)
    server = None
    if args.metrics_address:
        registry = CollectorRegistry(auto_describe=True)
        registry.register(conflict_collector(model, watch.lock))
        # /metrics as prometheus_client's own server answered it (OpenMetrics, gzip, name[] on request),
        # /healthz while the process serves, /readyz once every kind has been listed.
        answer = endpoints(registry, problems=list, ready=watch.synced.is_set, negotiate=True)
        server = serve(split_address(args.metrics_address), answer, f"--metrics-address {args.metrics_address}")
    stopping = threading.Event()

    def stop(signum, frame):
        stopping.set()
        watch.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("selinux-mount-agent.conflict_watch").info(
        "watching %s (Kubernetes %s gates: %s)", config.server, gates.version, gates.describe())
    try:
        watch.run()
    finally:
        if server is not None:
            server.stop()
    return 0
