"""`selinux-mount-agent policy`: turn AVC denials into an SELinux policy module, build it, install it.

Contract (keep stable):
  policy generate (--from FILE | --live [--duration S]) --module NAME [--namespace NS] [--workload NAME]
                  [--format te|cil|both] [--build] [--output-dir DIR] [--allow-capabilities]
                  [--pod-map FILE] [--proc-root DIR] [--force]
  policy install FILE [--priority N] [--template-dir DIR]

`generate` writes NAME.te and/or NAME.cil (and NAME.pp with --build) into the output directory (default: the
current one) and prints their paths, one per line, on stdout; what it refused or skipped goes to stderr.
The files are never written through a symbolic link planted under their names, and a file there that
`generate` did not write (it marks its own) is not overwritten without --force (agent.sepolicy.outfiles).
Exit code 0: files written; 1: no denial left to turn into a rule (nothing written); 2: bad input or a
failed build. `install` exits 0 once the module is listed by semodule at its priority and the store's copy
is the file given, 2 otherwise (including on a host without SELinux, which it says).

Attribution works offline: denials in a saved audit.log are tied to pods through `--pod-map` (the MCS level
of the source context against each pod's seLinuxOptions.level, and pod UIDs) and, for pids still running,
through /proc. `--namespace` and `--workload` keep only the denials that could be attributed to a match;
without them every denial counts.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from agent.avc.filesource import read_lines
from agent.avc.watcher import AvcWatcher
from agent.cli.avc_cmd import add_attribution_arguments, build_attributor
from agent.cli.examples import examples
from agent.cli.printable import printable
from agent.errors import InvalidInput
from agent.sepolicy.outfiles import Output, refuse_existing, write_outputs
from agent.sepolicy.build import DEFAULT_PRIORITY, TEMPLATE_DIR, compile_pp, install
from agent.sepolicy.generate import Denylist, generate, is_generated, validate_module_name

FORMATS = {"te": ("te",), "cil": ("cil",), "both": ("te", "cil")}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "policy", help="generate, build and install SELinux modules from AVC denials (audit2allow for pods)",
        description="Turn the AVC denials of a workload into an SELinux policy module.",
        **examples(("a module for the shop namespace from the sample log",
                    "policy generate --from examples/audit.log --namespace shop --module shop_web \\\n"
                    "      --pod-map examples/pods.json"),
                   ("install a module built with --build", "policy install shop_web.pp")))
    sub = parser.add_subparsers(dest="policy_command", metavar="ACTION")
    sub.required = True

    gen = sub.add_parser(
        "generate", help="write NAME.te / NAME.cil from denials in an audit log or seen live",
        description="Read AVC denials, keep those of the chosen namespace/workload, and write a module: "
                    ".te in the audit2allow form (grants the access to the domains as they are) and/or CIL "
                    "in the udica form (a new domain NAME.process inheriting 'container'). Dangerous "
                    "grants are refused and listed on stderr. Exit 0: written; 1: nothing to allow; "
                    "2: bad input.",
        **examples(("a module for the shop namespace from the sample log",
                    "policy generate --from examples/audit.log --namespace shop --module shop_web \\\n"
                    "      --pod-map examples/pods.json"),
                   ("two minutes of live denials of one workload, as .te and CIL, compiled",
                    "policy generate --live --duration 120 --workload web --module web --format both --build")))
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="from_file", metavar="FILE",
                        help="an audit.log, dmesg or journal dump ('-' for standard input)")
    source.add_argument("--live", action="store_true",
                        help="collect denials from the kernel audit stream (needs CAP_AUDIT_READ)")
    gen.add_argument("--duration", type=float, default=60.0, help="with --live, seconds to collect (default 60)")
    gen.add_argument("--module", required=True, help="module name: a letter, then letters, digits or '_'")
    gen.add_argument("--namespace", help="keep only denials attributed to this namespace")
    gen.add_argument("--workload", help="keep only denials attributed to this workload (owner name) or pod")
    gen.add_argument("--format", choices=tuple(FORMATS), default="te", help="te (default), cil or both")
    gen.add_argument("--build", action="store_true",
                     help="also compile NAME.pp (checkmodule + semodule_package)")
    gen.add_argument("--output-dir", default=".", metavar="DIR", help="where to write (default: current dir)")
    gen.add_argument("--force", action="store_true",
                     help="overwrite output files this command did not write (a link is replaced, never followed)")
    gen.add_argument("--allow-capabilities", action="store_true",
                     help="allow rules on capability classes (refused by default)")
    add_attribution_arguments(gen)
    gen.set_defaults(func=run_generate)

    inst = sub.add_parser(
        "install", help="install a .pp or .cil module with semodule and verify it",
        description="Run `semodule -X PRIORITY -i FILE`, check that the module is listed at that priority and "
                    "that the store's copy is this file (not an older one of the same name). A CIL module that "
                    "inherits the `container` template goes in with container-selinux's base_container.cil "
                    "when that is not installed yet. Needs an SELinux host; elsewhere it says so and exits 2.",
        **examples(("install a module built with policy generate --build", "policy install shop_web.pp"),
                   ("a CIL module at a priority of its own", "policy install web.cil --priority 300")))
    inst.add_argument("file", metavar="FILE", help="NAME.pp or NAME.cil")
    inst.add_argument("--priority", type=int, default=DEFAULT_PRIORITY,
                      help=f"semodule priority (default {DEFAULT_PRIORITY}, the container-tooling priority)")
    inst.add_argument("--template-dir", default=TEMPLATE_DIR, metavar="DIR",
                      help=f"where base_container.cil is (default {TEMPLATE_DIR}, from container-selinux)")
    inst.set_defaults(func=run_install)


def _collect(args, attributor):
    items = []
    watcher = None

    def keep(item):
        items.append(item)

    if args.live:
        if args.duration <= 0:
            raise InvalidInput("--duration must be positive")
        from agent.avc.netlink import AuditNetlinkSource  # pyroute2: only for --live

        source = AuditNetlinkSource().open()
        watcher = AvcWatcher(source, attributor=attributor, callback=keep)
        timer = threading.Timer(args.duration, watcher.stop, kwargs={"timeout": 0})
        timer.daemon = True
        timer.start()
        try:
            watcher.run()
        finally:
            timer.cancel()
            source.close()
    else:
        lines = ((None, line) for line in read_lines(args.from_file))
        watcher = AvcWatcher(lines, attributor=attributor, callback=keep)
        watcher.run()
    return items, watcher.assembler.stats


def _matches(attribution, namespace, workload) -> bool:
    if not attribution.attributed:
        return False
    if namespace and attribution.namespace != namespace:
        return False
    if workload and workload not in (attribution.workload, attribution.pod):
        return False
    return True


def run_generate(args) -> int:
    name = validate_module_name(args.module)
    formats = FORMATS[args.format]
    if args.build and "te" not in formats:
        raise InvalidInput("--build compiles the .te; use --format te or both (semodule takes CIL as it is)")
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInput(f"{out_dir} is not a directory")
    # Refused before any input is read, so the refusal is the only line; checked again when writing.
    refuse_existing(out_dir, _outputs(name, formats, args.build), is_generated, args.force)
    items, stats = _collect(args, build_attributor(args))
    err = sys.stderr
    denials = [item for item in items if item.denial.denied]
    if args.namespace or args.workload:
        selected = [i.denial for i in denials if _matches(i.attribution, args.namespace, args.workload)]
        unattributed = sum(1 for i in denials if not i.attribution.attributed)
        if unattributed:
            err.write(f"policy generate: {unattributed} denial(s) could not be attributed to a pod and were "
                      "left out (give --pod-map, or run where the pids are live)\n")
    else:
        selected = [i.denial for i in denials]
    err.write(f"policy generate: {stats.lines} line(s), {len(denials)} denial(s), {len(selected)} selected, "
              f"{stats.bad_lines} unreadable line(s)\n")
    module = generate(name, selected, formats, Denylist(allow_capabilities=args.allow_capabilities))
    # Record text, shown escaped: a log can hold terminal escapes in any field (agent.cli.printable).
    for refusal in module.ruleset.refused:
        rule = refusal.rule
        err.write(printable(f"refused: allow {rule.source} {rule.target}:{rule.tclass} {rule.permission} "
                            f"({refusal.reason})") + "\n")
    for skip in module.ruleset.skipped:
        err.write(printable(f"skipped ({skip.reason}): {skip.detail}") + "\n")
    if not module.ruleset.rules:
        err.write("policy generate: no rules to write; nothing written\n")
        return 1
    texts = {"te": module.te, "cil": module.cil}
    data = {ext: texts[ext].encode("utf-8") for ext in formats}
    if args.build:
        data["pp"] = compile_pp(module.te, name)  # built elsewhere: no NAME.mod in the output directory
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = [Output(o.name, data[o.name.rpartition(".")[2]], o.vouched_by)
               for o in _outputs(name, formats, args.build)]
    for path in write_outputs(out_dir, outputs, is_generated, args.force):
        print(path)  # relative when --output-dir is
    return 0


def _outputs(name: str, formats, build: bool) -> list[Output]:
    """The files `generate` writes, without their bytes; a NAME.pp is ours when the NAME.te beside it is."""
    names = [Output(f"{name}.{ext}") for ext in formats]
    return names + [Output(f"{name}.pp", vouched_by=f"{name}.te")] if build else names


def run_install(args) -> int:
    module = install(Path(args.file), priority=args.priority, template_dir=args.template_dir)
    print(f"installed {module.name} at priority {module.priority} ({module.kind})")
    return 0
