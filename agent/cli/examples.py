"""The examples every subcommand's --help ends with, and the formatter that prints them as written."""

from __future__ import annotations

import argparse

PROG = "selinux-mount-agent"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that text with line breaks (the examples) is printed as written; single
    paragraphs (descriptions) are wrapped as usual."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def examples(*pairs: tuple[str, str]) -> dict:
    """`add_parser` keywords for an "examples:" epilog of (what it does, command line after the program name)."""
    lines = ["examples:"]
    for what, command in pairs:
        lines.append(f"  # {what}")
        lines.append(f"  {PROG} {command}")
    return {"epilog": "\n".join(lines) + "\n", "formatter_class": HelpFormatter}
