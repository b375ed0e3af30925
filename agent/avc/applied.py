"""The MCS levels this agent applied to volumes, kept in an `Attributor` from the CSI shim's own records.

When a denial's process has exited, its source level is the only hint left of the pod it ran in. The agent
knows which pod holds which level because it mounted (or relabelled) the pod's volumes at that level: the
shim records each finished publish with its label and, when the CSIDriver has `podInfoOnMount: true`, the
pod's namespace and name (csi_shim/journal.py, table `published`). `AppliedLevels.sync()` reads those records
and gives the attributor the difference from last time, so a pod with two volumes at one level keeps it until
both are unpublished, and two pods at one level make it ambiguous, as in `PodDirectory`.

The records carry no pod UID; the attributor takes UID and workload from its pod directory when that holds
the same pod at the same level.
"""

from __future__ import annotations

import functools
import threading
from typing import Mapping

from agent.avc.attribution import PodRef
from agent.errors import InvalidLabel
from agent.label import Label
from csi_shim.records import DONE


@functools.lru_cache(maxsize=1024)
def _level_of(label: str) -> str | None:
    """The canonical level of a context, or None when it has none or names no pod (`s0` alone)."""
    try:
        level = Label.parse(label).level
    except InvalidLabel:
        return None
    text = str(level) if level is not None else ""
    return text if ":" in text else None


def levels_in_records(published: Mapping[str, dict]) -> dict[tuple, PodRef]:
    """(level, namespace, name) → PodRef for each finished publish that has a label with categories and a
    pod. Pure."""
    out: dict[tuple, PodRef] = {}
    for record in published.values():
        pod, label = record.get("pod"), record.get("label")
        if record.get("status") != DONE or not label or not pod or len(pod) != 2:
            continue
        level = _level_of(label)
        if level is not None:
            namespace, name = pod
            out[(level, namespace, name)] = PodRef(namespace, name, level=level)
    return out


class AppliedLevels:
    """Links the CSI state (`watch`) to an attributor (`feed`); `sync()` may be called from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._state = None
        self._attributor = None
        self._given: dict[tuple, PodRef] = {}

    def watch(self, state) -> None:
        """Read the records of this `csi_shim.journal.State` (None to stop)."""
        self._state = state
        self.sync()

    def feed(self, attributor) -> None:
        self._attributor = attributor
        self._given = {}
        self.sync()

    def sync(self) -> None:
        with self._lock:
            state, attributor = self._state, self._attributor
            if state is None or attributor is None:
                return
            with state.lock:
                published = dict(state.published)  # records are replaced, never edited: a shallow copy holds
            wanted = levels_in_records(published)
            for key in self._given.keys() - wanted.keys():
                attributor.remove_level(key[0], self._given[key])
            for key in wanted.keys() - self._given.keys():
                attributor.add_level(key[0], wanted[key])
            self._given = wanted

    def __len__(self) -> int:
        return len(self._given)

