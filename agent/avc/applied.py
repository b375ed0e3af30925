"""The MCS levels this agent applied to volumes, kept in an `Attributor`.

When a denial's process has exited, its source level is the only hint left of the pod it ran in. The agent
knows which pod holds which level because it mounted (or relabelled) the pod's volumes at that level: the
CSI shim records each finished publish with its label and, when the CSIDriver has `podInfoOnMount: true`, the
pod's namespace and name. The code that wires `run` hands `AppliedLevels.watch` a callable that lists those
publishes as `(label, (namespace, name))` pairs, so this package needs nothing of the shim's. `sync()` gives
the attributor the difference from last time, so a pod with two volumes at one level keeps it until both are
unpublished, and two pods at one level make it ambiguous, as in `PodDirectory`.

The publishes carry no pod UID; the attributor takes UID and workload from its pod directory when that holds
the same pod at the same level.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from agent.avc.poddir import PodRef
from agent.errors import InvalidLabel
from agent.label import Label, canonical_level

# (label, (namespace, name)) of each finished publish; either part may be missing (None).
Publishes = Callable[[], Iterable[tuple]]


def pod_level(label: str) -> str | None:
    """The canonical level of a volume's context, or None when it has none or names no pod (`s0` alone)."""
    try:
        level = canonical_level(Label.parse(label).level)
    except InvalidLabel:
        return None
    return level if level is not None and ":" in level else None


def levels_in_publishes(publishes: Iterable[tuple]) -> dict[tuple, PodRef]:
    """(level, namespace, name) → PodRef for each publish that has a label with categories and a pod. Pure."""
    out: dict[tuple, PodRef] = {}
    for label, pod in publishes:
        if not label or not pod or len(pod) != 2:
            continue
        level = pod_level(label)
        if level is not None:
            namespace, name = pod
            out[(level, namespace, name)] = PodRef(namespace, name, level=level)
    return out


class AppliedLevels:
    """Links the publishes (`watch`) to an attributor (`feed`); `sync()` may be called from any thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._publishes: Publishes | None = None
        self._attributor = None
        self._given: dict[tuple, PodRef] = {}

    def watch(self, publishes: Publishes | None) -> None:
        """Read the publishes this callable lists (None to stop)."""
        self._publishes = publishes
        self.sync()

    def feed(self, attributor) -> None:
        self._attributor = attributor
        self._given = {}
        self.sync()

    def sync(self) -> None:
        with self._lock:
            publishes, attributor = self._publishes, self._attributor
            if publishes is None or attributor is None:
                return
            wanted = levels_in_publishes(publishes())
            for key in self._given.keys() - wanted.keys():
                attributor.remove_level(key[0], self._given[key])
            for key in wanted.keys() - self._given.keys():
                attributor.add_level(key[0], wanted[key])
            self._given = wanted

    def __len__(self) -> int:
        return len(self._given)
