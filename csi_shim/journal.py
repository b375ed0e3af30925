"""The store behind the shim's state: a snapshot plus an append-only journal, records checked on load and write.

Every step that changes the node writes its intent first (`status: "pending"`) and its result after
(`intent()`), so a kill -9 anywhere leaves a record saying what may have happened; recovery.reconcile then
compares the records with the node.

Why a journal: a change appends one line (one write(2)) instead of rewriting every record, so the cost of a
call does not grow with the number of volumes on the node. The snapshot is rewritten (compacted) on start and
when the journal grows well past the number of records.

Why only some appends are fsynced: records of mounts (`staged`, `published`) describe kernel state that a
reboot wipes as well, and a kill -9 of the shim does not lose what write(2) already put in the page cache; so
losing them in a power cut loses nothing that still exists. The volume table of the built-in driver describes
images on disk, which outlive a reboot, so changes to it are fsynced before the call returns.

Why loading refuses instead of starting empty: the records are the only memory of which mounts and loop
devices are ours. A shim that starts with an empty table answers NOT_FOUND to every unpublish and unstage of
the volumes it forgot, and DeleteVolume of a forgotten volume answers OK while its image stays mounted. So
anything but a missing state (a fresh node) or a torn last journal line (power loss in the middle of an
append) raises StateInvalid naming the file, and the file is left for `--recover-state`.

Files (version 1; the records are described in csi_shim/records.py):
  csi-state.json      {"version": 1, "journal": "csi-state.<n>.journal",
                       "volumes":   {volume_id: ImageVolume or DeviceVolume},
                       "staged":    {volume_id: Staged},
                       "published": {target_path: Published}}
  csi-state.<n>.journal  one JSON line per change: {"k": key, "r": record or null (removed), "t": table}
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import logging
import os
import re
import stat
import threading
import time

from agent.errors import StateInvalid
from csi_shim import records
from csi_shim.records import DONE, TABLES, Record, RecordInvalid

log = logging.getLogger(__name__)

VERSION = 1
SNAPSHOT = "csi-state.json"
JOURNAL_NAME = re.compile(r"csi-state\.\d+\.journal")
TOP_LEVEL = frozenset({"version", "journal", *TABLES})
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


# ---- loading: every way a file can be wrong raises StateInvalid --------------------------------------------

_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFLNK: "a symbolic link"}


def read_regular(path: str) -> bytes | None:
    """The bytes of `path`, None when it does not exist. Never follows a symlink or blocks on a pipe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise StateInvalid(path, "is a symbolic link, not a regular file") from None
        raise StateInvalid(path, f"cannot be opened: {err.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StateInvalid(path, f"is {_KINDS.get(stat.S_IFMT(mode), 'not a file')}, not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise StateInvalid(path, f"cannot be read: {err.strerror}") from None
    finally:
        os.close(fd)


def parse_snapshot(path: str, payload: bytes) -> tuple[dict, str | None]:
    """The tables of a snapshot (plain JSON records, each checked) and the name of its journal."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise StateInvalid(path, "is not UTF-8 text (damaged)") from None
    except ValueError as err:
        raise StateInvalid(path, f"is not valid JSON ({err}; truncated or damaged)") from None
    if not isinstance(data, dict):
        raise StateInvalid(path, f"holds {records._kind(data)}, not the state object")
    version = data.get("version")
    if type(version) is not int or version != VERSION:  # noqa: E721 - true == 1 in Python, not here
        shown = json.dumps(version) if "version" in data else "missing"
        raise StateInvalid(path, f"has version {shown}; this shim reads version {VERSION} (a file of another "
                                 f"format or release)")
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise StateInvalid(path, f"has unknown top-level keys {', '.join(map(repr, unknown))}")
    tables = {}
    for table in TABLES:
        value = data.get(table)
        if not isinstance(value, dict):
            raise StateInvalid(path, f"table {table!r} is {records._kind(value) if table in data else 'missing'}, "
                                     f"not an object")
        try:
            tables[table] = {key: records.normalised(table, key, record) for key, record in value.items()}
        except RecordInvalid as err:
            raise StateInvalid(path, f"record {err}") from None
    journal = data.get("journal")
    if journal is not None and not (isinstance(journal, str) and JOURNAL_NAME.fullmatch(journal)):
        raise StateInvalid(path, f"names the journal {json.dumps(journal)}, which is not a file name of the form "
                                 f"csi-state.<n>.journal in the same directory")
    return tables, journal


def parse_entry(line: bytes) -> tuple[str, str, dict | None]:
    """(table, key, record or None) of one journal line; ValueError or RecordInvalid when it is not one."""
    entry = json.loads(line.decode("utf-8"))
    if not isinstance(entry, dict) or set(entry) != {"t", "k", "r"}:
        raise ValueError("is not an object with exactly t, k and r")
    table, key, record = entry["t"], entry["k"], entry["r"]
    if table not in TABLES:
        raise ValueError(f"names the table {json.dumps(table)}, not one of {', '.join(TABLES)}")
    if not isinstance(key, str):
        raise ValueError(f"has a key that is {records._kind(key)}, not a string")
    return table, key, None if record is None else records.normalised(table, key, record)


def replay(tables: dict, payload: bytes, path: str) -> int:
    """Apply the journal's lines to `tables` in order; returns how many lines it holds. Every line ends with
    the newline written with it in one write(2): a last piece without one is a write that power loss cut
    short, dropped when it does not parse (the call it belonged to never returned). Any other unreadable
    line raises StateInvalid."""
    *lines, tail = payload.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            table, key, record = parse_entry(line)
        except (ValueError, RecordInvalid) as err:
            raise StateInvalid(path, f"line {number} is unreadable: {err}") from None
        _apply(tables, table, key, record)
    if tail.strip():
        try:
            _apply(tables, *parse_entry(tail))
        except (ValueError, RecordInvalid):
            log.warning("state journal %s: its last line (%d bytes, no newline) was cut short by a power loss "
                        "during a write; dropped", path, len(tail))
    return len(lines)


def _apply(tables: dict, table: str, key: str, record: dict | None) -> None:
    if record is None:
        tables[table].pop(key, None)
    else:
        tables[table][key] = record


def journals_in(directory: str) -> list[str]:
    return sorted(name for name in os.listdir(directory) if JOURNAL_NAME.fullmatch(name))


def load(directory: str) -> tuple[dict, int, bool]:
    """(tables, journal lines, fresh) of the state in `directory`: fresh when there is no state at all."""
    path = os.path.join(directory, SNAPSHOT)
    payload = read_regular(path)
    if payload is None:
        present = journals_in(directory)
        if present:
            raise StateInvalid(path, f"is missing while the journal {present[-1]} is present (the snapshot was "
                                     f"deleted; the journal alone holds only the latest changes)")
        return empty(), 0, True
    tables, journal = parse_snapshot(path, payload)
    lines = 0
    if journal is not None:
        journal_path = os.path.join(directory, journal)
        content = read_regular(journal_path)
        if content is None:
            raise StateInvalid(journal_path, f"is missing, and {SNAPSHOT} names it as its journal (changes since "
                                             f"the snapshot would be lost)")
        lines = replay(tables, content, journal_path)
    return {"version": VERSION, **tables}, lines, False


# ---- the live store ------------------------------------------------------------------------------------------

class Table(dict):
    """One kind of record, held in its JSON form. Writes are allowed only inside `State.change()`, which
    journals them, and are checked (records.normalised): the store never writes what it would refuse to
    load. Records are replaced, never edited in place, so the undo log needs no copies."""

    def __init__(self, name: str, state: "State", rows: dict):
        super().__init__(rows)
        self.name = name
        self._state = state

    def __setitem__(self, key, record):
        record = records.normalised(self.name, key, record)
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
    """The records and the files behind them. All access goes through `lock`; changes go through `change()`
    or `intent()`. Raises StateInvalid when the files on disk cannot be trusted. `fresh`: no state was on
    disk (a new node) and none has been saved yet."""

    def __init__(self, path: str):
        self.path = path
        self.directory = os.path.dirname(path)
        self.lock = threading.RLock()
        self._undo: list | None = None
        self._journal_fd = -1
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except OSError as err:
            raise StateInvalid(self.directory, f"cannot be used as the state directory: "
                                               f"{err.strerror or err}") from None
        if not os.path.isdir(self.directory):
            raise StateInvalid(self.directory, "is not a directory")
        data, self._journal_lines, self.fresh = load(self.directory)
        self._set(data)

    def _set(self, data: dict) -> None:
        self.data = {"version": VERSION, **{name: Table(name, self, {}) for name in TABLES}}
        for name in TABLES:
            dict.update(self.data[name], {key: records.normalised(name, key, record)
                                          for key, record in data.get(name, {}).items()})

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
        """A deep copy of the records as plain dicts (for the pure `recovery.reconcile`)."""
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

    @contextlib.contextmanager
    def intent(self, table: str, key: str, pending: Record | dict):
        """Record a step before it acts on the node: `pending` (status pending) is written, the block runs, and
        on success the record is marked done with the fields the block put into the yielded dict; when the
        block raises, the record is removed (the step left nothing behind, or its caller cleaned up).

        The window between the two writes is what recovery.reconcile resolves after a kill -9."""
        with self.change():
            self.data[table][key] = pending
        result: dict = {}
        try:
            yield result
        except BaseException:
            with self.change():
                self.data[table].pop(key, None)
            raise
        with self.change():
            self.data[table][key] = {**self.data[table][key], **result, "status": DONE}

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
            self.fresh = False  # a state is on disk now
            if old_fd >= 0:
                os.close(old_fd)
            for entry in journals_in(self.directory):
                if entry != name:
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
            return [(target, rec) for target, rec in self.published.items() if rec["volume_id"] == volume_id]

    def volume_by_name(self, name: str) -> tuple[str, dict] | None:
        with self.lock:
            for volume_id, rec in self.volumes.items():
                if name and rec.get("name") == name:
                    return volume_id, rec
        return None
