"""Entry point of `selinux-mount-agent`: builds the parser from the subcommand modules and dispatches.

Errors the user caused (`AgentError`) become one line on stderr and exit code 2; nothing prints a traceback
for bad input. Only the chosen subcommand's module is imported (the others pull in gRPC, the Kubernetes
client code and more); help and unknown commands see them all.
"""

import argparse
import importlib
import sys

from agent import __version__
from agent.cli.examples import examples
from agent.errors import AgentError

# Each module has `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
SUBCOMMANDS = [
    "agent.cli.run_cmd",
    "agent.cli.csi_cmd",
    "agent.cli.explain_cmd",
    "agent.cli.audit_cmd",
    "agent.cli.controller_cmd",
    "agent.cli.relabel_cmd",
    "agent.cli.avc_cmd",
    "agent.cli.policy_cmd",
    "agent.cli.rbac_cmd",
]


def _module_of(argv) -> str | None:
    """The module of the subcommand named first in argv, or None (help, --version, a typo)."""
    for arg in argv:
        if not arg.startswith("-"):
            module = f"agent.cli.{arg}_cmd"
            return module if module in SUBCOMMANDS else None
        if arg in ("-h", "--help", "--version"):
            return None
    return None


def build_parser(argv=None) -> argparse.ArgumentParser:
    """The parser; with argv, only for the subcommand argv names (all of them when it names none)."""
    parser = argparse.ArgumentParser(
        prog="selinux-mount-agent",
        description="SELinux volume labelling for Kubernetes nodes: context= mounts where kubelet's "
        "KEP-1710 rules allow them, a fast race-safe relabel where they do not.",
        **examples(("what kubelet does with each volume of the bundled example cluster",
                    "explain -f examples/cluster.yaml"),
                   ("the node agent with defaults that work on a laptop", "run"),
                   ("the options of one command", "audit --help")),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    chosen = _module_of(argv) if argv is not None else None
    for name in SUBCOMMANDS if chosen is None else [chosen]:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AgentError as err:
        print(f"selinux-mount-agent {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"selinux-mount-agent {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
