"""`selinux-mount-agent rbac`: least-privilege RBAC from API-server audit logs, and a check of given RBAC.

Contract (keep stable):
  rbac generate -f FILE [-f FILE|-]... (--user NAME | --serviceaccount NS:NAME) [--namespace NS]
                [--expand-multi-namespace] [--expand-multi-name] [--name NAME] [--labels k=v,...]
                [--annotations k=v,...] [-o yaml|json]
  rbac check -f FILE [-f ...] (--user NAME | --serviceaccount NS:NAME) [--namespace NS] --against PATH
             [--against PATH]... [-o text|json]

`generate` prints the objects on stdout (YAML documents, or one JSON `List`); what it read, and each line it
could not use (FILE:LINE: why), go to stderr. `check` prints the requests the RBAC would deny and the rules
that grant what was never used. Exit codes: generate 0, or 2 when nothing usable was read (no Event of the
subject); check 0 when everything was allowed and every granted rule used, 1 when not, 2 on bad input.
"""

from __future__ import annotations

import json
import sys

import yaml

from agent.cli.examples import examples
from agent.cli.printable import printable
from agent.errors import InvalidInput
from agent.rbac import reader
from agent.rbac.check import check
from agent.rbac.compaction import Options, compact
from agent.rbac.rbac_objects import grants_for
from agent.rbac.recorder import Recorder
from agent.rbac.render import DEFAULT_PREFIX, object_name, parse_pairs, render
from agent.rbac.subject import service_account, user

GENERATE_EXAMPLE = ("RBAC for the shop's web service account from the sample log",
                    "rbac generate -f examples/kube-audit.log --serviceaccount shop:web")
CHECK_EXAMPLE = ("check the hand-written RBAC of examples/ against what the service account did",
                 "rbac check -f examples/kube-audit.log --serviceaccount shop:web --against examples/rbac.yaml")


def _add_common(parser) -> None:
    parser.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                        help="an API-server audit log in JSON lines (audit.k8s.io v1, v1beta1 or v1alpha1 "
                             "Events, Metadata level is enough); repeat for more, '-' for standard input")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--serviceaccount", metavar="NS:NAME",
                     help="the service account whose requests count (user system:serviceaccount:NS:NAME)")
    who.add_argument("--user", metavar="NAME", help="the user whose requests count; impersonated requests count "
                                                   "as the impersonated user")
    parser.add_argument("--namespace", metavar="NS",
                        help="keep only the requests in this namespace (cluster-wide ones are left out)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "rbac", help="least-privilege RBAC from API-server audit logs (audit2rbac), and a check of given RBAC",
        description="Derive Roles and ClusterRoles from what a subject really did against the API server, or "
                    "check existing RBAC against it.",
        **examples(GENERATE_EXAMPLE, CHECK_EXAMPLE))
    sub = parser.add_subparsers(dest="rbac_command", metavar="ACTION")
    sub.required = True

    gen = sub.add_parser(
        "generate", help="print Roles, ClusterRoles and bindings that allow exactly what the subject did",
        description="Read audit Events, keep the subject's requests (allowed or denied, at their last stage), "
                    "and print a Role and RoleBinding per namespace plus a ClusterRole and ClusterRoleBinding for "
                    "cluster-scoped requests and non-resource URLs, rules compacted. Lines that are not audit "
                    "Events are reported one per line on stderr. Exit 0: printed; 2: nothing usable read.",
        **examples(GENERATE_EXAMPLE,
                   ("as JSON, one name for the objects, namespaces merged where the same call was made in several",
                    "rbac generate -f audit.log --serviceaccount shop:web --expand-multi-namespace \\\n"
                    "      --name shop-web -o json"),
                   ("from standard input, for a user, in one namespace",
                    "rbac generate -f - --user jane --namespace shop --labels team=shop < audit.log")))
    _add_common(gen)
    gen.add_argument("--expand-multi-namespace", action="store_true",
                     help="a request made alike in two or more namespaces is allowed in every namespace")
    gen.add_argument("--expand-multi-name", action="store_true",
                     help="a request made alike on two or more names is allowed on every name")
    gen.add_argument("--name", metavar="NAME",
                     help=f"name of every object (default {DEFAULT_PREFIX}:<username>)")
    gen.add_argument("--labels", metavar="K=V,...", help="labels to add to every object")
    gen.add_argument("--annotations", metavar="K=V,...", help="annotations to add to every object")
    gen.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml",
                     help="yaml (documents, default) or json (a List)")
    gen.set_defaults(func=run_generate)

    chk = sub.add_parser(
        "check", help="which recorded requests given RBAC denies, and which of its rules were never used",
        description="Evaluate the RBAC in the --against files (YAML or JSON files, directories of them, "
                    "kustomizations, rendered with kubectl kustomize) for the subject, over every request it "
                    "made. Exit 0: all allowed and every granted rule used; 1: a request denied or a rule "
                    "unused; 2: bad input.",
        **examples(CHECK_EXAMPLE,
                   ("the project's own controller RBAC",
                    "rbac check -f audit.log --serviceaccount selinux-mount-agent:selinux-mount-agent-controller \\\n"
                    "      --against deploy/controller")))
    _add_common(chk)
    chk.add_argument("--against", action="append", required=True, metavar="PATH",
                     help="RBAC to check: a file, a directory, or a kustomization directory; repeat for more")
    chk.add_argument("-o", "--output", choices=("text", "json"), default="text",
                     help="text (default) or json (one object)")
    chk.set_defaults(func=run_check)


def _subject(args):
    return service_account(args.serviceaccount) if args.serviceaccount else user(args.user)


def _record(args, subject, command: str) -> dict:
    """The subject's requests from every log; bad lines reported as they are met."""
    err = sys.stderr

    def report(bad) -> None:
        err.write(printable(f"rbac {command}: {bad}") + "\n")

    opened = reader.open_logs(args.files)
    try:
        recorder = Recorder(subject.username, args.namespace, report).feed_all(reader.log_lines(opened))
    except OSError as err:
        raise InvalidInput(f"reading the audit log: {err.strerror or err}") from None
    finally:
        reader.close_logs(opened)
    requests = recorder.finish()
    where = f" in namespace {args.namespace}" if args.namespace else ""
    err.write(printable(f"rbac {command}: {recorder.lines} line(s): {recorder.events} audit event(s), "
                        f"{recorder.bad} not usable; {sum(requests.values())} request(s) of {subject}{where}, "
                        f"{len(requests)} distinct") + "\n")
    if recorder.events == 0:
        raise InvalidInput("no audit Event was read")
    if not requests:
        raise InvalidInput(printable(f"no request of {subject}{where} among {recorder.events} audit event(s)"))
    return requests


def run_generate(args) -> int:
    subject = _subject(args)
    labels = parse_pairs(args.labels, "labels", values_are_labels=True)
    annotations = parse_pairs(args.annotations, "annotations", values_are_labels=False)
    name = args.name if args.name is not None else object_name(DEFAULT_PREFIX, subject)
    if not name or name in (".", "..") or "/" in name or "%" in name:
        raise InvalidInput(f"--name {name!r}: not a valid RBAC object name (no '/' or '%', not '.' or '..')")
    requests = _record(args, subject, "generate")
    options = Options(expand_multi_name=args.expand_multi_name, expand_multi_namespace=args.expand_multi_namespace)
    objects = render(compact(requests, options), subject, name, labels, annotations)
    if args.output == "json":
        sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
    return 0


def run_check(args) -> int:
    subject = _subject(args)
    objects = reader.load_rbac_sources(args.against)
    held = grants_for(objects, subject)
    for missing in held.missing:
        sys.stderr.write(printable(f"rbac check: {missing}") + "\n")
    requests = _record(args, subject, "check")
    result = check(requests.items(), held.grants)
    if args.output == "json":
        print(json.dumps({"subject": str(subject), "requests": len(requests),
                          "denied": [dict(request.to_json(), count=count) for request, count in result.denied],
                          "unused": [unused.to_json() for unused in result.unused],
                          "missingRoles": list(held.missing)}, indent=2))
    else:
        for request, count in result.denied:
            print(printable(f"denied: {request.describe()} ({count} request(s))"))
        for unused in result.unused:
            print(printable(f"unused: {unused.binding} -> {unused.role} rule {unused.rule} ({unused.text}): "
                            f"{'; '.join(unused.unused)}"))
        if result.ok:
            print(printable(f"ok: {len(requests)} distinct request(s) of {subject} allowed, every granted rule used"))
    return 0 if result.ok else 1
