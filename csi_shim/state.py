"""What the CSI handlers use of the shim's state: the store (csi_shim/journal.py), the record statuses
(csi_shim/records.py) and one lock per volume. Start-up reconciliation lives in csi_shim/recovery.py."""

from __future__ import annotations

import contextlib
import threading

from csi_shim.journal import State, empty, write_atomically  # noqa: F401 - the handlers' import path
from csi_shim.records import DONE, PENDING, TABLES  # noqa: F401


class VolumeLocks:
    """One lock per key (volume id or name): operations on one volume run one at a time, others in parallel."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}

    @contextlib.contextmanager
    def hold(self, key: str):
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
