"""Per-volume state of the shim: a snapshot plus an append-only journal, reconciled with mountinfo on start.

Every step that changes the node writes its intent first (`status: "pending"`) and its result after, so a
kill -9 anywhere leaves a record saying what may have happened. `reconcile` (pure) then compares the records
with /proc/self/mountinfo and the attached loop devices: a pending mount that exists stays pending (kubelet's
retry adopts it and runs the verification and relabel that may not have run), one that does not exist is
forgotten and its loop device detached, and a half-created volume image is removed. kubelet retries every
operation it did not see succeed, and each handler is idempotent, so the node converges with no duplicate
mounts and no leaked loop devices.

Why a journal: a change appends one line (one write(2)) instead of rewriting every record, so the cost of a
call does not grow with the number of volumes on the node. The snapshot is rewritten (compacted) on start and
when the journal grows well past the number of records.

Why only some appends are fsynced: records of mounts (`staged`, `published`) describe kernel state that a
reboot wipes as well, and a kill -9 of the shim does not lose what write(2) already put in the page cache; so
losing them in a power cut loses nothing that still exists. The volume table of the built-in driver describes
images on disk, which outlive a reboot, so changes to it are fsynced before the call returns.

Files (version 1):
  csi-state.json      {"version": 1, "journal": "csi-state.<n>.journal",
                       "volumes":   {volume_id: {"name", "capacity_bytes", "fs_type", "image", "status"}
                                     or, for a given block device, {"device", "device_number", "fs_type",
                                                                    "status"}},
                       "staged":    {volume_id: {"staging_path", "label", "mount_flags", "fs_type", "device",
                                                 "status", "verification"}},
                       "published": {target_path: {"volume_id", "staging_path", "label", "readonly", "pod",
                                                   "status", "verification", "action"}}}
  csi-state.<n>.journal  one JSON line per change: {"t": table, "k": key, "r": record or null (removed)}
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

VERSION = 1
PENDING = "pending"
DONE = "done"
TABLES = ("volumes", "staged", "published")
DURABLE_TABLES = frozenset({"volumes"})
# Compact when the journal holds this many lines more than twice the number of records.
COMPACT_SLACK = 4096


def empty() -> dict:
    return {"version": VERSION, "volumes": {}, "staged": {}, "published": {}}


def write_atomically(path: str, data: dict) -> None:
    """tmp file + fsync + rename + fsync of the directory: readers see the old file or the new, never half."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    payload = json.dumps(data, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def replay(data: dict, lines: list[bytes], source: str) -> int:
    """Apply journal lines to `data` in order; returns how many applied. A last line cut short (power loss
    during the write) is dropped; a bad line elsewhere is logged and skipped."""
    applied = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            table, key, record = data[entry["t"]], entry["k"], entry["r"]
        except (ValueError, KeyError, TypeError):
            where = "last line" if number == len(lines) else f"line {number}"
            log.error("state journal %s: %s is unreadable; skipped", source, where)
            continue
        if record is None:
            table.pop(key, None)
        else:
            table[key] = record
        applied += 1
    return applied


class Table(dict):
    """One kind of record. Writes are allowed only inside `State.change()`, which journals them; records are
    replaced, never edited in place, so the undo log needs no copies."""

    def __init__(self, name: str, state: "State", records: dict):
        super().__init__(records)
        self.name = name
        self._state = state

    def __setitem__(self, key, record):
        self._state._touch(self, key)
        super().__setitem__(key, record)

    def __delitem__(self, key):
        self._state._touch(self, key)
        super().__delitem__(key)

    def pop(self, key, *default):
        if key in self:
            self._state._touch(self, key)
        return super().pop(key, *default)

    def _refuse(self, *args, **kwargs):
        raise TypeError("state tables change by item assignment or pop only")

    update = setdefault = clear = popitem = __ior__ = _refuse


_MISSING = object()


class State:
    """The records and the files behind them. All access goes through `lock`; changes go through `change()`."""

    def __init__(self, path: str):
        self.path = path
        self.directory = os.path.dirname(path)
        self.lock = threading.RLock()
        self._undo: list | None = None
        self._journal_fd = -1
        self._journal_lines = 0
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._set(self._load())

    # ---- loading --------------------------------------------------------------------------------------------

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return empty()
        except (OSError, ValueError) as err:
            aside = f"{self.path}.corrupt.{int(time.time())}"
            log.error("state file %s unreadable (%s); moved to %s and rebuilt from mountinfo", self.path, err, aside)
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            return empty()
        if not isinstance(data, dict) or data.get("version") != VERSION:
            log.error("state file %s has an unknown version; starting empty", self.path)
            return empty()
        for key in TABLES:
            if not isinstance(data.get(key), dict):
                data[key] = {}
        journal = data.pop("journal", None)
        if isinstance(journal, str) and "/" not in journal:
            path = os.path.join(self.directory, journal)
            with contextlib.suppress(FileNotFoundError):
                with open(path, "rb") as handle:
                    self._journal_lines = replay(data, handle.read().split(b"\n"), path)
        return data

    def _set(self, data: dict) -> None:
        self.data = {"version": VERSION, **{name: Table(name, self, data.get(name, {})) for name in TABLES}}

    @property
    def volumes(self) -> Table:
        return self.data["volumes"]

    @property
    def staged(self) -> Table:
        return self.data["staged"]

    @property
    def published(self) -> Table:
        return self.data["published"]

    def plain(self) -> dict:
        """A deep copy of the records as plain dicts (for the pure `reconcile`)."""
        with self.lock:
            return copy.deepcopy({"version": VERSION, **{name: dict(self.data[name]) for name in TABLES}})

    def records(self) -> int:
        return sum(len(self.data[name]) for name in TABLES)

    # ---- changing -------------------------------------------------------------------------------------------

    def _touch(self, table: Table, key) -> None:
        if self._undo is None:
            raise RuntimeError(f"state table {table.name} changed outside State.change()")
        self._undo.append((table, key, dict.get(table, key, _MISSING)))

    @contextlib.contextmanager
    def change(self):
        """Modify records under the lock; the changes are journalled when the block ends without an exception,
        and rolled back when it raises. Nested blocks join the outer one."""
        with self.lock:
            if self._undo is not None:
                yield self
                return
            self._undo = []
            try:
                yield self
            except BaseException:
                for table, key, old in reversed(self._undo):
                    if old is _MISSING:
                        dict.pop(table, key, None)
                    else:
                        dict.__setitem__(table, key, old)
                raise
            finally:
                undo, self._undo = self._undo, None
            self._journal(undo)

    def _journal(self, undo: list) -> None:
        """Append one line per key whose record differs from before the change (a repeat writes nothing)."""
        first: dict = {}
        for table, key, old in undo:
            first.setdefault((table.name, key), old)
        lines, durable = [], False
        for (name, key), old in first.items():
            new = dict.get(self.data[name], key, _MISSING)
            if new == old:
                continue
            lines.append(json.dumps({"t": name, "k": key, "r": None if new is _MISSING else new},
                                    separators=(",", ":"), sort_keys=True))
            durable = durable or name in DURABLE_TABLES
        if not lines:
            return
        if self._journal_fd < 0 or self._journal_lines + len(lines) > 2 * self.records() + COMPACT_SLACK:
            self.commit()  # a new snapshot holds this change too
            return
        os.write(self._journal_fd, ("\n".join(lines) + "\n").encode())
        self._journal_lines += len(lines)
        if durable:
            os.fdatasync(self._journal_fd)

    def commit(self) -> None:
        """Write every record to a new snapshot and start a new, empty journal."""
        with self.lock:
            name = f"csi-state.{time.time_ns()}.journal"
            fd = os.open(os.path.join(self.directory, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                         0o600)
            try:
                write_atomically(self.path, {**self.data, "journal": name})
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
                raise
            old_fd, self._journal_fd, self._journal_lines = self._journal_fd, fd, 0
            if old_fd >= 0:
                os.close(old_fd)
            for entry in os.listdir(self.directory):
                if entry.startswith("csi-state.") and entry.endswith(".journal") and entry != name:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.directory, entry))

    def replace(self, data: dict) -> None:
        """Take `data` (e.g. reconciled records) as the whole state and save it as a new snapshot."""
        with self.lock:
            self._set(data)
            self.commit()

    def close(self) -> None:
        with self.lock:
            if self._journal_fd >= 0:
                os.close(self._journal_fd)
                self._journal_fd = -1

    # ---- queries --------------------------------------------------------------------------------------------

    def publishers(self, volume_id: str) -> list[tuple[str, dict]]:
        with self.lock:
            return [(target, rec) for target, rec in self.published.items() if rec.get("volume_id") == volume_id]

    def volume_by_name(self, name: str) -> tuple[str, dict] | None:
        with self.lock:
            for volume_id, rec in self.volumes.items():
                if rec.get("name") == name:
                    return volume_id, rec
        return None


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


def reconcile(data: dict, mount_points: dict[str, str], loops: dict[str, str], image_dir: str):
    """Pure: bring the records in line with what the node shows after a restart.

    `mount_points`: mount point -> "major:minor" from mountinfo; `loops`: /dev/loopN -> (backing file,
    "major:minor");
    `image_dir`: where the built-in driver keeps volume images. Returns (new data, loop devices to detach,
    files to remove, empty directories to remove, notes for the log).
    """
    data = copy.deepcopy(data)
    notes, detach, remove, rmdirs = [], [], [], []

    for volume_id, rec in list(data["volumes"].items()):
        if rec.get("device"):
            continue  # a given block device: nothing half-made to remove, never a loop device to detach
        if rec.get("status") != DONE:
            # Created half-way: the CO saw no success and will call CreateVolume again with the same name.
            remove.extend([rec.get("image", ""), rec.get("image", "") + ".tmp"])
            del data["volumes"][volume_id]
            notes.append(f"volume {volume_id}: removed a half-created image")

    for target, rec in list(data["published"].items()):
        if target in mount_points:
            if rec.get("status") != DONE:
                # Mounted, but the verification or the relabel after it may not have run: stays pending, and
                # kubelet's retry (it saw no success) adopts the mount and finishes the work.
                notes.append(f"{target}: a publish was mounted but not finished; the retry completes it")
        else:
            del data["published"][target]
            if rec.get("status") == DONE:
                notes.append(f"{target}: forgot a publish that is no longer mounted")
            else:
                # Killed between creating the target directory and mounting on it: the directory goes too
                # (only if empty), so a pod that is gone by now leaves nothing behind.
                rmdirs.append(target)
                notes.append(f"{target}: forgot a publish that never mounted; its empty directory is removed")

    in_use = set(mount_points.values())
    for volume_id, rec in list(data["staged"].items()):
        path = rec.get("staging_path")
        if path in mount_points:
            if rec.get("status") != DONE:
                notes.append(f"volume {volume_id}: a stage was mounted but not finished; the retry completes it")
        else:
            del data["staged"][volume_id]
            notes.append(f"volume {volume_id}: forgot a stage that is not mounted at {path}")

    prefix = image_dir.rstrip("/") + "/"
    for device, (backing, number) in sorted(loops.items()):
        if not backing.startswith(prefix):
            continue  # not ours
        if number in in_use:
            continue
        detach.append(device)
        notes.append(f"{device}: detached a loop device for {backing} that nothing mounts")
    return data, detach, [path for path in remove if path], rmdirs, notes

