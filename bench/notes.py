"""Writing a benchmark's Markdown without losing what people wrote under it.

A benchmark regenerates its tables on every run; the reading of them (what was met, what was tried, why) is
written by hand below a marker line and carried over unchanged when the file is rewritten.
"""

from __future__ import annotations

import os

MARKER = "<!-- Written by hand below this line; the benchmark keeps it when it rewrites the file. -->"


def write_keeping_notes(path: str, generated: str) -> None:
    """Write `generated`, followed by the marker and everything below it in the current file, if any."""
    kept = ""
    try:
        with open(path, encoding="utf-8") as handle:
            old = handle.read()
    except FileNotFoundError:
        old = ""
    at = old.find(MARKER)
    if at >= 0:
        kept = old[at:]
    text = generated.rstrip("\n") + "\n"
    if kept:
        text += "\n" + kept
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
