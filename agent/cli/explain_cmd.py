"""`selinux-mount-agent explain`: what kubelet would do with each volume of each pod, and why.

Contract (relied on elsewhere, keep stable):
  explain -f FILE [-f FILE ...] [--k8s-version 1.37] [--feature-gates Gate=bool,...]
          [--selinux-enabled|--selinux-disabled] [--defaults-file PATH] [-o table|json] [--indent N]
`-o json` prints {"pods":[{"namespace","name","volumes":[{"name","decision","label","reasons",...}]}], ...} on one
line, as `audit -o json` does; `--indent N` indents it.
An empty file (no document at all) is bad input, as for `audit`; an empty List lists no pods.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from agent.node import host
from agent.cli.examples import examples
from agent.cli.model_options import add_indent_argument, add_model_arguments, build_node
from agent.k8s.resolve import Cluster
from agent.k8s.manifests import batch_run, load_files
from agent.kubelet.decision import NodeFacts, decide_pod


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "explain", help="show, per pod volume, whether kubelet mounts with context= or relabels, and why",
        description="Decide for each volume of each pod what kubelet does on an SELinux node: a context= "
                    "mount (constant time), a recursive relabel by the container runtime, or nothing. "
                    "Follows KEP-1710 and the feature gates of the chosen Kubernetes version.",
        **examples(("the bundled example cluster on the default version (1.37)", "explain -f examples/cluster.yaml"),
                   ("a live cluster on 1.36, as JSON",
                    "explain -f <(kubectl get pods,pvc,pv,csidrivers -A -o json) --k8s-version 1.36 -o json"),
                   ("with a gate turned on", "explain -f cluster.yaml --feature-gates SELinuxMount=true")))
    add_model_arguments(parser)
    enabled = parser.add_mutually_exclusive_group()
    enabled.add_argument("--selinux-enabled", dest="selinux", action="store_true", default=None,
                         help="model a node with SELinux enabled (the default)")
    enabled.add_argument("--selinux-disabled", dest="selinux", action="store_false",
                         help="model a node without SELinux: nothing is labelled")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="a table with the reasons under each volume (default), or JSON")
    add_indent_argument(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    with batch_run():
        return _run(args)


def _run(args) -> int:
    selinux_enabled = True if args.selinux is None else args.selinux
    node = build_node(args, selinux_enabled)
    cluster = Cluster(load_files(args.files, allow_empty=False))
    pods = [check_with_local_policy(decide_pod(cluster.resolve_pod(pod), node)) for pod in cluster.pods]
    if args.output == "json":
        document = {
            "pods": [pod.to_json() for pod in pods],
            "kubernetes": {"version": node.gates.version, "featureGates": node.gates.as_dict()},
            "selinuxEnabled": selinux_enabled,
            "defaults": node.defaults.to_json(),
        }
        if args.indent is None:
            json.dump(document, sys.stdout, separators=(",", ":"))
        else:
            json.dump(document, sys.stdout, indent=args.indent)
        sys.stdout.write("\n")
        return 0
    print_table(pods, node, assumed=args.selinux is None)
    return 0


def check_with_local_policy(pod):
    """On a machine with SELinux, ask its loaded policy about every label (security_check_context)."""
    volumes = []
    for volume in pod.volumes:
        if volume.label is not None and host.context_accepted(volume.label) is False:
            volume = dataclasses.replace(volume, reasons=volume.reasons + (
                "warning: the SELinux policy loaded on this machine does not accept this label",))
        volumes.append(volume)
    return dataclasses.replace(pod, volumes=tuple(volumes))


def print_table(pods, node: NodeFacts, assumed: bool) -> None:
    out = sys.stdout
    out.write(f"Kubernetes {node.gates.version}: {node.gates.describe()}\n")
    state = "enabled" if node.selinux_enabled else "disabled"
    if assumed:
        state += " (assumed; --selinux-disabled models a node without SELinux)"
    out.write(f"SELinux: {state}\n")
    source = node.defaults.source
    if source == "built-in":
        source = "built-in, no contexts file found on this node"
    out.write(f"Container defaults ({source}): process {node.defaults.process.text}, "
              f"file {node.defaults.file.text}\n\n")
    if not pods:
        out.write("no pods in the input\n")
        return
    rows = [("POD", "VOLUME", "DECISION", "LABEL")]
    details = []
    for pod in pods:
        for volume in pod.volumes:
            decision = volume.mode.value + (" (pod blocked)" if volume.error else "")
            rows.append((f"{pod.namespace}/{pod.name}", volume.volume, decision,
                         volume.label.text if volume.label else "-"))
            details.append(volume.reasons)
        if not pod.volumes:
            rows.append((f"{pod.namespace}/{pod.name}", "-", "-", "-"))
            details.append(("the pod has no volumes",))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    header = rows[0]
    out.write(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  {header[3]}\n")
    for row, reasons in zip(rows[1:], details):
        out.write(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}\n")
        for reason in reasons:
            out.write(f"    - {reason}\n")
