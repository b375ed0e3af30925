"""`selinux-mount-agent avc watch`: print AVC denials, attributed to pods, as they arrive.

  avc watch [--source netlink|file:PATH] [--from-beginning] [-o text|json] [--count N] [--duration S]
            [--pod-map FILE] [--proc-root DIR] [--all]

A debugging aid, bounded by design: it stops after `--count` denials (default 100) or `--duration` seconds
(default: no limit besides the count). Exit code 0 when it ran, 2 when the source cannot be opened (no
CAP_AUDIT_READ, missing log). Attribution: /proc (with `--proc-root`) for live pids, then the MCS level of
the source context against `--pod-map`.

The options that build the attribution are shared with `policy generate` (see `add_attribution_arguments`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TYPE_CHECKING

from agent.avc.attribution import Attributor
from agent.avc.poddir import PodDirectory, pods_from_json
from agent.cli.examples import examples
from agent.cli.printable import printable
from agent.errors import InvalidInput

if TYPE_CHECKING:
    from agent.avc.watcher import AttributedDenial


def add_attribution_arguments(parser) -> None:
    parser.add_argument("--pod-map", metavar="FILE",
                        help="pods to attribute denials to: `kubectl get pods -A -o json` output, or a JSON "
                             "list of {namespace, name, uid, level, workload, containers: {id: name}}; "
                             "levels (seLinuxOptions.level) let denials of exited processes be attributed")
    parser.add_argument("--proc-root", default="/proc", metavar="DIR",
                        help="where to read /proc/<pid>/cgroup for live pids (default /proc)")


def build_attributor(args) -> Attributor:
    pods = PodDirectory()
    if getattr(args, "pod_map", None):
        try:
            with open(args.pod_map, encoding="utf-8") as handle:
                document = json.load(handle)
        except OSError as err:
            raise InvalidInput(f"cannot read pod map {args.pod_map}: {err.strerror}") from err
        except ValueError as err:
            raise InvalidInput(f"pod map {args.pod_map} is not JSON: {err}") from err
        for pod in pods_from_json(document):
            pods.add(pod)
    return Attributor(proc_root=args.proc_root, pods=pods)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "avc", help="watch SELinux AVC denials and the pods they come from",
        description="Work with SELinux AVC denials as this node sees them.",
        **examples(("denials live from the kernel, for one minute", "avc watch --duration 60"),
                   ("the sample log, with pod names",
                    "avc watch --source file:examples/audit.log --from-beginning --pod-map examples/pods.json")))
    sub = parser.add_subparsers(dest="avc_command", metavar="ACTION")
    sub.required = True
    watch = sub.add_parser(
        "watch", help="print denials, attributed to pods, as they arrive (bounded)",
        description="Read audit records live from the kernel's audit multicast group (needs CAP_AUDIT_READ "
                    "and the host network namespace) or by following an audit log, and print each AVC "
                    "denial with the pod it came from. Stops after --count denials or --duration seconds; says on "
                    "stderr where it listens and ends with a summary there.",
        **examples(("denials live from the kernel, for one minute", "avc watch --duration 60"),
                   ("the sample log, with pod names",
                    "avc watch --source file:examples/audit.log --from-beginning --pod-map examples/pods.json"),
                   ("follow the node's audit log as JSON lines; pods.json: kubectl get pods -A -o json",
                    "avc watch --source file:/var/log/audit/audit.log -o json --pod-map pods.json")))
    watch.add_argument("--source", default="netlink", metavar="netlink|file:PATH",
                       help="netlink (default) or file:/var/log/audit/audit.log")
    watch.add_argument("--from-beginning", action="store_true",
                       help="with file:PATH, read the file from its start instead of from its end")
    watch.add_argument("-o", "--output", choices=("text", "json"), default="text",
                       help="one line per denial (default), or one JSON object per line")
    watch.add_argument("--count", type=int, default=100, help="stop after this many denials (default 100)")
    watch.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    watch.add_argument("--all", action="store_true", help="also print granted (auditallow) records")
    add_attribution_arguments(watch)
    watch.set_defaults(func=run_watch)


def format_text(item: AttributedDenial) -> str:
    """One line per denial. Every field that comes from the record or the attribution is shown through
    `printable`: a process names its own comm and files, and a hostile log can hold anything."""
    denial, who, p = item.denial, item.attribution, printable
    if who.attributed:
        pod = f"{p(who.namespace)}/{p(who.pod)}" if who.pod else f"pod {p(who.pod_uid)}"
        if who.container:
            pod += f" [{p(who.container)}]"
        origin = f"{pod} (by {p(who.method)})"
    else:
        origin = f"unattributed ({p(who.reason)})"
    result = "denied" if denial.denied else "granted"
    mode = "" if denial.permissive is None else (" permissive" if denial.permissive else " enforcing")
    target = denial.path or denial.name or ""
    return (f"{result}{mode} {{ {p(' '.join(denial.permissions))} }} {p(denial.source_type)} -> "
            f"{p(denial.target_type)}:{p(denial.tclass)} pid={p(denial.pid)} comm={p(denial.comm)} "
            f"{p(target) + ' ' if target else ''}{origin}")


class WatchSummary:
    """What a bounded `avc watch` saw, for the line it ends with (stderr: stdout holds only denials)."""

    def __init__(self):
        self.denials = self.attributed = self.granted = self.shown = 0

    def add(self, item: AttributedDenial, shown: bool) -> None:
        if item.denial.denied:
            self.denials += 1
            self.attributed += bool(item.attribution.attributed)
        else:
            self.granted += 1
        self.shown += shown

    def text(self, seconds: float, why: str, drops: int = 0) -> str:
        plural = "" if self.denials == 1 else "s"
        parts = [f"avc watch: {self.denials} denial{plural} in {seconds:.1f} s"]
        if self.denials:
            parts[0] += f" ({self.attributed} attributed to pods, {self.denials - self.attributed} not)"
        if self.granted:
            parts.append(f"{self.granted} granted record(s) " + ("shown" if self.shown > self.denials else
                                                                  "not shown (--all shows them)"))
        if drops:
            parts.append(f"the kernel dropped audit records {drops} time(s) (ENOBUFS)")
        return "; ".join(parts) + f"; stopped: {why}"


def describe_source(spec: str, from_beginning: bool) -> str:
    if spec == "netlink":
        return "the kernel audit multicast group"
    return f"{printable(spec[5:])} from its {'start' if from_beginning else 'end'}"


def run_watch(args) -> int:
    if args.count < 1:
        raise InvalidInput("--count must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise InvalidInput("--duration must be a positive number of seconds")
    from agent.avc.watcher import AvcWatcher, open_source

    source = open_source(args.source, args.from_beginning)
    out = sys.stdout
    summary = WatchSummary()
    done = threading.Event()
    timed_out = threading.Event()

    def show(item: AttributedDenial) -> None:
        if done.is_set():
            return
        visible = item.denial.denied or args.all
        summary.add(item, visible)
        if not visible:
            return
        if args.output == "json":
            out.write(json.dumps(item.to_json(), sort_keys=True) + "\n")
        else:
            out.write(format_text(item) + "\n")
        out.flush()
        if summary.shown >= args.count:
            done.set()
            raise StopIteration

    def time_up():
        timed_out.set()
        watcher.stop(timeout=0)

    watcher = AvcWatcher(source, attributor=build_attributor(args), callback=show)
    limit = f"--count {args.count}" + (f" or --duration {args.duration:g} s" if args.duration is not None else "")
    print(f"avc watch: listening on {describe_source(args.source, args.from_beginning)}; stops after {limit} "
          "(Ctrl-C ends it)", file=sys.stderr, flush=True)
    started = time.monotonic()
    timer = None
    if args.duration is not None:
        timer = threading.Timer(args.duration, time_up)
        timer.daemon = True
        timer.start()
    code, why = 0, "the source ended"
    try:
        watcher.run()
    except KeyboardInterrupt:
        code, why = 130, "interrupted"
    finally:
        if timer:
            timer.cancel()
        source.stop()
    if code == 0 and done.is_set():
        why = f"{args.count} shown (--count)"
    elif code == 0 and timed_out.is_set():
        why = f"{args.duration:g} s passed (--duration)"
    print(summary.text(time.monotonic() - started, why, getattr(source, "drops", 0)), file=sys.stderr)
    return code
