"""Walking the command line's argparse tree: every (sub)command parser with its name, for tests of --help."""

import argparse

from agent.cli.main import build_parser


def commands(parser=None, name="selinux-mount-agent"):
    """(name, parser) for the top parser and every subcommand below it, depth first."""
    parser = parser or build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from commands(sub, f"{name} {sub_name}")


def command(path: str) -> argparse.ArgumentParser:
    """The parser of one subcommand, e.g. "avc watch"."""
    return dict(commands())[f"selinux-mount-agent {path}"]


def option_help(text: str, flag: str) -> str:
    """The help paragraph of one option in --help output, joined into one line."""
    lines, found = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith((flag + " ", flag + ",")) or stripped == flag:
            found = True
            lines.append(stripped)
            continue
        if found:
            if stripped.startswith("-") or not stripped:
                break
            lines.append(stripped)
    assert found, flag
    return " ".join(lines)
