"""Locks of the CSI handlers: one per volume id, volume name and CO-given path.

A lock per volume alone lets two volumes work on one staging path at once: both see it empty, both mount, and
the second stacks on the first (kubelet never asks for that, but a confused or hostile caller can). So a call
also locks each path it mounts on or unmounts from. A call takes all of its locks at once, in one global
order (sorted keys), so two calls that share keys can never wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import threading


def volume_key(volume_id: str) -> str:
    return f"volume:{volume_id}"


def name_key(name: str) -> str:
    return f"name:{name}"


def path_key(path: str | None) -> str | None:
    """`path` as mountinfo lists it (fdpath.KubeletRoot.resolved): two spellings of one directory, one lock.
    None (an optional path the request left out) locks nothing."""
    return None if path is None else f"path:{path}"


class VolumeLocks:
    """One lock per key: operations on one volume, name or path run one at a time, others in parallel."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def hold(self, *keys: str):
        """Hold the locks of every key (duplicates and None ignored), taken in sorted order."""
        ordered = sorted({key for key in keys if key is not None})
        with contextlib.ExitStack() as stack:
            for key in ordered:
                stack.enter_context(self._one(key))
            yield

    @contextlib.contextmanager
    def _one(self, key: str):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    self._locks.pop(key, None)
