"""Flags shared by the commands that model nodes and clusters (`explain`, `audit`), and what they build."""

from __future__ import annotations

import argparse

from agent.kubelet import gates as gates_mod
from agent.node.contexts import load_node_defaults
from agent.kubelet.decision import NodeFacts


def add_model_arguments(parser, default_version: str = gates_mod.DEFAULT_VERSION) -> None:
    parser.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                        help="Kubernetes YAML or JSON (objects, multi-document YAML, or a List); '-' reads stdin. "
                             "Repeat for several files")
    parser.add_argument("--k8s-version", default=default_version, metavar="1.MINOR",
                        help="Kubernetes version whose feature-gate defaults apply (1.28-1.37, default "
                             "%(default)s)")
    parser.add_argument("--feature-gates", default="", metavar="Gate=bool,...",
                        help="override gates as kubelet's --feature-gates does, e.g. SELinuxMount=true")
    parser.add_argument("--defaults-file", metavar="PATH",
                        help="contexts file (lxc_contexts format: process = \"...\", file = \"...\") to use instead "
                             "of this node's")


def add_indent_argument(parser) -> None:
    parser.add_argument("--indent", type=_indent, metavar="N",
                        help="with -o json: indent by N spaces (default: one line, the compact form)")


def _indent(text: str) -> int:
    if not text.isdigit() or int(text) > 16:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of spaces from 0 to 16")
    return int(text)


def build_node(args, selinux_enabled: bool = True) -> NodeFacts:
    gates = gates_mod.resolve(args.k8s_version, gates_mod.parse_overrides(args.feature_gates))
    return NodeFacts(gates, selinux_enabled, load_node_defaults(args.defaults_file))
