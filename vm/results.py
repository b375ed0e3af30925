"""Reading back what the guest wrote: a tar archive on the raw results disk, and the JUnit XML inside it."""

from __future__ import annotations

import json
import tarfile
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path


class NoResults(Exception):
    """The guest stopped without writing its results (a hang, a panic, or init failed early)."""


def extract(disk: Path, into: Path) -> dict[str, Path]:
    """Unpack the results archive; name -> path of each file in it."""
    with open(disk, "rb") as handle:
        if not handle.read(512).strip(b"\0"):
            raise NoResults("the results disk is empty")
    into.mkdir(parents=True, exist_ok=True)
    found = {}
    try:
        with tarfile.open(disk, "r:") as archive:
            # The guest writes a flat directory; anything else (links, devices, nested or absolute paths)
            # is not ours and is left in the archive.
            for member in archive.getmembers():
                name = member.name.removeprefix("./")
                if not member.isfile() or not name or "/" in name or name.startswith("."):
                    continue
                target = into / name
                target.write_bytes(archive.extractfile(member).read())
                found[name] = target
    except tarfile.TarError as err:
        raise NoResults(f"the results disk holds no readable archive: {err}") from err
    return found


@dataclass
class Summary:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"enforcing: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def summarise(junit: Path) -> Summary:
    """Count test cases by outcome (errors count as failures)."""
    summary = Summary()
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            summary.failed += 1
            summary.failures.append(name)
        elif case.find("skipped") is not None:
            summary.skipped += 1
            summary.skips.append(f"{name}: {case.find('skipped').get('message', '')}")
        else:
            summary.passed += 1
    return summary


def figures(files: dict[str, Path]) -> dict:
    if "figures.json" not in files:
        return {}
    return json.loads(files["figures.json"].read_text())
