"""`selinux-mount-agent audit`: offline check of a cluster dump before an upgrade (default target 1.37, where
SELinuxMount is on), with remediation.

Contract (relied on elsewhere, keep stable):
  audit -f DUMP [-f ...] [--k8s-version 1.37] [--feature-gates ...] [--defaults-file PATH]
        [-o table|json|prometheus] [--indent N] [--remediate patches|mutating-admission-policy|kyverno] [--censor]
`-o json` is one line unless --indent is given (as in `explain`); the table counts the conflicting pairs it lists
and says how many conflicts the controller reports for them (one per pod of each pair).
Exit code: 0 nothing breaks on the target version, 1 something breaks, 2 bad input: unreadable or malformed
objects (one line on stderr naming the object and field, nothing on stdout), or a file with no document at all.
An empty List is a valid dump: exit 0 with an empty report. A claim, PV or StorageClass a pod names but the dump
lacks is no bad input: an `UnresolvedVolume` finding with the pod, whose other volumes still count (as upstream's
controller goes on with them).
"""

from __future__ import annotations

import json
import sys

from agent.audit.findings import AuditReport, audit
from agent.cli.examples import examples
from agent.cli.model_options import add_indent_argument, add_model_arguments, build_node
from agent.k8s.resolve import Cluster
from agent.k8s.manifests import batch_run, load_files
from agent.audit.remediation import FORMATS, bare_pods, documents

# yaml and prometheus_client are imported by the output modes that use them: together they are most of the
# command's import time, which a JSON report of a large dump would otherwise pay for nothing.


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help="find pods that share volumes with conflicting SELinux labels or policies before an upgrade",
        description="Read a cluster dump (kubectl get pods,pvc,pv,csidrivers -A -o json) and report the conflicts "
                    "the upstream selinux-warning-controller would report, then say per workload whether it "
                    "breaks on the target Kubernetes version (pods stuck in ContainerCreating) or only conflicts "
                    "in principle. A volume whose claim or PV the dump lacks is reported with its pod. "
                    "Exit code 0: nothing breaks; 1: something breaks; 2: bad input (a malformed object, "
                    "or a file with no document at all, such as the empty file a failed `kubectl get ... > FILE` "
                    "leaves; an empty List is a valid dump with nothing to report). Objects that appear more than "
                    "once (the same file given twice, overlapping dumps) count once: the last copy read wins.",
        **examples(("check a dump before the upgrade to 1.37",
                    "audit -f cluster.json  # kubectl get pods,pvc,pv,csidrivers -A -o json > cluster.json"),
                   ("the patches that fix what breaks", "audit -f cluster.json --remediate patches"),
                   ("the controller's metric, for a one-off scrape", "audit -f cluster.json -o prometheus")))
    add_model_arguments(parser)
    parser.add_argument("-o", "--output", choices=("table", "json", "prometheus"), default="table",
                        help="a table of conflicts and verdicts per workload (default), JSON, or the upstream "
                             "controller's metric in the Prometheus text format")
    add_indent_argument(parser)
    parser.add_argument("--remediate", choices=FORMATS,
                        help="print YAML that fixes the conflicts instead of the report: strategic-merge patches "
                             "per workload, a MutatingAdmissionPolicy with its binding, or a Kyverno ClusterPolicy")
    parser.add_argument("--censor", action="store_true",
                        help="hide the other pod's namespace, name and label when two namespaces conflict, as "
                             "the upstream events do")
    parser.set_defaults(func=run)


def run(args) -> int:
    with batch_run():
        return _run(args)


def _run(args) -> int:
    node = build_node(args)
    report = audit(Cluster(load_files(args.files, allow_empty=False)), node.gates, node.defaults)
    out = sys.stdout
    if args.remediate:
        docs = documents(report, args.remediate)
        out.write(remediation_yaml(docs, args.remediate, report))
    elif args.output == "json" and args.indent is not None:
        out.write(json.dumps(report.to_json(censor=args.censor), indent=args.indent))
        out.write("\n")
    elif args.output == "json":
        # Compact and written at once: reports can hold 100k pods.
        out.writelines(report.json_chunks(censor=args.censor))
        out.write("\n")
    elif args.output == "prometheus":
        out.write(prometheus_text(report, censor=args.censor))
    else:
        print_table(report, censor=args.censor)
    return 1 if report.breaks else 0


def remediation_yaml(docs: list[dict], form: str, report: AuditReport) -> str:
    recreate = "".join(f"# Pod {w.workload.namespace}/{w.workload.name} is a bare Pod: its spec cannot be patched; "
                       "recreate it with spec.securityContext.seLinuxChangePolicy: Recursive\n"
                       for w in bare_pods(report)) if form == "patches" else ""
    if not docs:
        return recreate or f"# nothing to remediate for Kubernetes {report.gates.version}\n"
    header = {
        "patches": "# Apply each document with: kubectl patch KIND NAME -n NAMESPACE --type strategic --patch-file F\n"
                   "# Pod templates of Jobs are immutable: recreate those Jobs with the field set.\n",
        "mutating-admission-policy": "# kubectl apply -f F  (admissionregistration.k8s.io/v1, Kubernetes 1.36+).\n"
                                     "# It changes pods created from now on; restart existing workloads.\n",
        "kyverno": "# kubectl apply -f F  (needs Kyverno). It changes pods created from now on.\n",
    }[form]
    import yaml

    return header + recreate + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


def prometheus_text(report: AuditReport, censor: bool = False) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.metrics import VolumeConflictCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(VolumeConflictCollector(lambda: report.conflicts, censor))
    return generate_latest(registry).decode()


def print_table(report: AuditReport, censor: bool) -> None:
    out = sys.stdout
    out.write(f"Target Kubernetes {report.gates.version}: {report.gates.describe()}\n")
    lines = []  # one per pair: the controller reports each pair once for each of its pods
    for conflict in report.conflicts:
        data = conflict.to_json(censor)
        first, second = data["pod1"], data["pod2"]
        if (first["namespace"], first["name"]) > (second["namespace"], second["name"]) and second["name"]:
            continue
        other = f"{second['namespace']}/{second['name']}" if second["name"] else "(another namespace)"
        lines.append(f"  {conflict.volume}  {conflict.property}  {first['namespace']}/{first['name']} "
                     f"{first['value']!r}  vs  {other} {second['value']!r}\n")
    out.write(f"Checked {report.pods_checked} pods ({report.pods_finished} finished pods ignored), "
              f"{report.shared_volumes} shared volumes, {len(lines)} conflicting pairs ({len(report.conflicts)} "
              "conflicts as the controller reports them, one per pod of each pair).\n")
    if lines:
        out.write("\nConflicts, as the upstream selinux-warning-controller reports them (one line per pair):\n")
        out.writelines(lines)
    if report.workloads:
        out.write("\nWorkloads sharing volumes:\n")
        for workload in report.workloads:
            data = workload.to_json()
            guessed = " (inferred from pod names)" if workload.workload.inferred else ""
            out.write(f"  {data['verdict']:<9} {workload.workload.ref}{guessed}  volumes: "
                      f"{', '.join(data['volumes'])}\n")
            for reason in data["reasons"][:6]:
                out.write(f"      - {reason}\n")
            if len(data["reasons"]) > 6:
                out.write(f"      - ... and {len(data['reasons']) - 6} more (see -o json)\n")
            if data["remedy"]:
                out.write(f"      remedy: {data['remedy']}\n")
    if report.findings:
        out.write("\nBeyond the upstream controller:\n")
        for finding in report.findings:
            where = f" {finding.volume}" if finding.volume else ""
            out.write(f"  {finding.kind}{where}: {finding.message}\n")
    verdict = ("something breaks" if report.breaks else "nothing breaks")
    out.write(f"\nResult: {verdict} on Kubernetes {report.gates.version}.\n")
