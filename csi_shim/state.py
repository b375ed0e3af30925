"""What the CSI handlers use of the shim's state: the store (csi_shim/journal.py) and the record statuses
(csi_shim/records.py). The handlers' locks live in csi_shim/locks.py, start-up reconciliation in
csi_shim/recovery.py."""

from __future__ import annotations

from csi_shim.journal import State, empty, write_atomically  # noqa: F401 - the handlers' import path
from csi_shim.records import DONE, PENDING, TABLES  # noqa: F401
