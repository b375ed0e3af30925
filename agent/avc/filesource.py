"""Audit records from a file: follow /var/log/audit/audit.log across rotation, or read a file once.

auditd rotates by renaming audit.log to audit.log.1 and opening a new audit.log (`max_log_file_action =
ROTATE`); logrotate with `copytruncate` instead empties the file in place. The follower notices both: a
different inode at the path means rotation (the rest of the old file is read first, then the new file from
its start), a size below the read position means truncation (read again from the start). A missing file is
waited for. Lines are yielded without their newline; a line still being written (no newline yet) is held
back until it is complete.

Items are `(None, line)`, the same shape as the netlink source's `(type, text)` with no type, and `None` on
idle ticks so the consumer can close lingering events and check for a stop request.
"""

from __future__ import annotations

import os
import threading
from typing import Iterator

from agent.errors import AuditUnavailable

DEFAULT_AUDIT_LOG = "/var/log/audit/audit.log"
_CHUNK = 1 << 16
_MAX_LINE = 1 << 16


def read_lines(path: str) -> Iterator[str]:
    """Every line of a file once (`-` is standard input); for offline `policy generate --from`."""
    if path == "-":
        import sys

        for line in sys.stdin.buffer:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")
        return
    try:
        handle = open(path, "rb")
    except OSError as err:
        raise AuditUnavailable(f"cannot read {path}: {err.strerror}") from err
    with handle:
        for line in handle:
            yield line.rstrip(b"\r\n").decode("utf-8", "replace")


class AuditLogFollower:
    """Follows an audit log. `from_beginning=False` starts at the current end, like `tail -F`."""

    def __init__(self, path: str = DEFAULT_AUDIT_LOG, from_beginning: bool = False, tick: float = 0.25):
        self.path = path
        self.from_beginning = from_beginning
        self.tick = tick
        self.rotations = 0
        self.truncations = 0
        self.oversized = 0  # lines longer than 64 KiB, dropped
        self._stop = threading.Event()
        self._handle = None
        self._inode: tuple[int, int] | None = None
        self._buffer = b""

    def _open(self, at_end: bool) -> bool:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return False
        except OSError as err:
            raise AuditUnavailable(f"cannot read {self.path}: {err.strerror}") from err
        status = os.fstat(handle.fileno())
        self._inode = (status.st_dev, status.st_ino)
        if at_end:
            handle.seek(0, os.SEEK_END)
        self._handle = handle
        self._buffer = b""
        return True

    def _lines(self, data: bytes) -> Iterator[tuple[None, str]]:
        data = self._buffer + data
        lines = data.split(b"\n")
        self._buffer = lines.pop()
        if len(self._buffer) > _MAX_LINE:
            self.oversized += 1
            self._buffer = b""
        for line in lines:
            yield None, line.rstrip(b"\r").decode("utf-8", "replace")

    def _drain(self) -> Iterator[tuple[None, str]]:
        while True:
            data = self._handle.read(_CHUNK)
            if not data:
                return
            yield from self._lines(data)

    def _changed(self) -> str | None:
        """'rotated', 'truncated' or None, judged from the path against the open handle."""
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return "rotated"  # renamed away and not yet recreated: keep the old handle until it is
        except OSError:
            return None
        if (status.st_dev, status.st_ino) != self._inode:
            return "rotated"
        if status.st_size < self._handle.tell():
            return "truncated"
        return None

    def __iter__(self) -> Iterator[tuple[None, str] | None]:
        self._stop.clear()
        first = True
        while not self._stop.is_set():
            if self._handle is None:
                if not self._open(at_end=first and not self.from_beginning):
                    first = False
                    yield None
                    self._stop.wait(self.tick)
                    continue
                first = False
            got = False
            for item in self._drain():
                got = True
                yield item
                if self._stop.is_set():
                    break
            if got:
                continue
            change = self._changed()
            if change == "truncated":
                self.truncations += 1
                self._handle.seek(0)
                self._buffer = b""
                continue
            if change == "rotated":
                if os.path.exists(self.path):
                    # Read what the writer added to the old file between the drain and the rename,
                    # and a last line without its newline, then switch to the new file.
                    yield from self._drain()
                    if self._buffer:
                        yield None, self._buffer.decode("utf-8", "replace")
                    self.rotations += 1
                    self._handle.close()
                    self._handle = None
                    if self._open(at_end=False):
                        continue
            yield None
            self._stop.wait(self.tick)
        self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
