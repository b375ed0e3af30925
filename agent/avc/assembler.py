"""Event assembly: the records of one audit event (same `audit(seconds.millis:serial)`) become its denials.

Pure code. The `EventAssembler` groups AVC, SYSCALL, PATH, CWD, AVC_PATH and PROCTITLE records by that key
and emits one `Denial` per AVC record when the event ends: on an EOE record, when too many newer events are
pending, when its time has passed (`expire`), or at `finish`. A line that cannot be read is counted in
`ParseStats.bad_lines`; nothing raises.

Most lines are read by the assembler's `FastReader` (fastpath.py); the rest by `record.parse_record` and
`denial.avc_values`, which give the same values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from agent.avc.denial import Denial, as_int, avc_values, make_denial
from agent.avc.fastpath import FastReader
from agent.avc.record import (AVC_TYPES, COMPANION_TYPES, Record, finish_body, parse_fields, parse_record,
                              syscall_fields)

# Denial(**values) without its __init__ where it runs for nearly every denial (see denial.make_denial).
_new = object.__new__
_set = object.__setattr__


@dataclass
class ParseStats:
    """What the assembler has seen: lines, records by type, lines it could not read, denials emitted."""

    lines: int = 0
    bad_lines: int = 0
    records: Counter = field(default_factory=Counter)
    denials: int = 0
    avc_unreadable: int = 0


# An open event is a list, [audit timestamp, Denial fields of its AVC records, {record type: body} or
# None]: one is made for nearly every line on a busy node, and a list costs a fraction of an object.
_TIME, _AVCS, _COMPANIONS = 0, 1, 2


def _complete(event: list) -> list[Denial]:
    """The event's Denials, with SYSCALL, CWD, AVC_PATH and PROCTITLE fields attached."""
    companions = event[_COMPANIONS]
    if companions is None:
        return [make_denial(values) for values in event[_AVCS]]
    # Only the records whose fields are attached are read (PATH records are kept, not parsed). The fast
    # path keeps bodies as they came, hence finish_body.
    body = companions.get("SYSCALL")
    syscall = {} if body is None else syscall_fields(finish_body(body))
    body = companions.get("CWD")
    cwd = None if body is None else parse_fields(finish_body(body)).get("cwd")
    body = companions.get("AVC_PATH")
    avc_path = None if body is None else parse_fields(finish_body(body)).get("path")
    body = companions.get("PROCTITLE")
    proctitle = None if body is None else parse_fields(finish_body(body)).get("proctitle")
    success = syscall.get("success")
    done = []
    for values in event[_AVCS]:
        if syscall:
            values["exe"] = syscall.get("exe")
            values["ppid"] = as_int(syscall.get("ppid"))
            values["syscall"] = as_int(syscall.get("syscall"))
            values["success"] = None if success is None else success == "yes"
            if values.get("pid") is None:
                values["pid"] = as_int(syscall.get("pid"))
            if values.get("comm") is None:
                values["comm"] = syscall.get("comm")
        if cwd:
            values["cwd"] = cwd
        if proctitle:
            values["proctitle"] = proctitle
        if values.get("path") is None and avc_path:
            values["path"] = avc_path
        done.append(make_denial(values))
    return done


class EventAssembler:
    """Groups records by `audit(timestamp:serial)` and emits the denials of each event once it is complete.

    An event is complete at its EOE record; when more than `max_pending` events are open (the oldest goes);
    when `expire(now)` finds it older than `linger` seconds; or at `finish()`. Each call returns the denials
    that became complete, oldest first. Events that hold no AVC cost one dictionary entry until they close.

    Lines in the common layouts are read by the `FastReader`, the rest by `parse_record`; both feed the
    same event steps (`feed_line` does the common ones inline, `_place` the rest), so the two readers
    differ in cost only.
    """

    def __init__(self, max_pending: int = 64, linger: float = 0.5, reader: FastReader | None = None):
        self.reader = reader or FastReader()
        self._read_fast = self.reader.read
        self._context = self.reader.context
        self.max_pending = max_pending
        self.linger = linger
        self.stats = ParseStats()
        self._pending: dict[tuple[float, int], list] = {}

    def feed_line(self, text: str, type_hint: int | str | None = None) -> list[Denial]:
        """Parse one line (or netlink payload) and return the denials completed by it."""
        stats = self.stats
        stats.lines += 1
        if type_hint is None or type(type_hint) is int:
            try:
                fast = self._read_fast(text, type_hint)
            except Exception:  # noqa: BLE001 - anything odd is the general parser's to judge
                fast = None
            if fast is not None:
                # The common cases inline (this runs for nearly every line): an AVC record, a companion
                # record joining its event; the rest as in `add`.
                rtype, key, payload = fast
                stats.records[rtype] += 1
                if rtype == "AVC":
                    event = self._pending.get(key)
                    out: list[Denial] = []
                    if event is None:
                        event, out = self._open(key)
                    if payload is None:
                        stats.avc_unreadable += 1
                    else:
                        event[_AVCS].append(payload)
                    return out
                if rtype in COMPANION_TYPES:
                    event = self._pending.get(key)
                    if event is None:
                        return self._place(key, None, rtype, payload)
                    companions = event[_COMPANIONS]
                    if companions is None:
                        event[_COMPANIONS] = {rtype: payload}
                    elif rtype not in companions:
                        companions[rtype] = payload
                    return []
                if rtype == "EOE":
                    return self._close(key)
                return []
        try:
            record = parse_record(text, type_hint)
        except Exception:  # noqa: BLE001 - one bad line must never stop the stream
            record = None
        if record is None:
            stats.bad_lines += 1
            return []
        return self.add(record)

    def add(self, record: Record) -> list[Denial]:
        """Add one parsed record; returns the denials completed by it."""
        rtype = record.type
        self.stats.records[rtype] += 1
        key = (record.timestamp, record.serial)
        if rtype == "EOE":
            return self._close(key)
        if rtype in COMPANION_TYPES:
            return self._place(key, None, rtype, record.body)
        if rtype in AVC_TYPES or "avc:" in record.body:
            try:
                values = avc_values(record, self._context)
            except Exception:  # noqa: BLE001 - one bad record must never stop the stream
                values = None
            return self._place(key, values, None, None)
        return []

    def _open(self, key: tuple[float, int]) -> tuple[list, list[Denial]]:
        """A new pending event for `key`, and the denials of the oldest event when the window overflows."""
        pending = self._pending
        event = pending[key] = [key[0], [], None]
        return event, (self._evict() if len(pending) > self.max_pending else [])

    def _place(self, key: tuple[float, int], values: dict | None, rtype: str | None,
               body: str | None) -> list[Denial]:
        """Add an AVC's fields (`rtype` None; `values` None for an unreadable AVC) or a companion record's
        body to the event `key`, opening it if needed; returns the denials of events pushed out."""
        event = self._pending.get(key)
        out: list[Denial] = []
        if event is None:
            event, out = self._open(key)
        if rtype is None:
            if values is None:
                self.stats.avc_unreadable += 1
            else:
                event[_AVCS].append(values)
        else:
            companions = event[_COMPANIONS]
            if companions is None:
                event[_COMPANIONS] = {rtype: body}
            elif rtype not in companions:
                companions[rtype] = body
        return out

    def _evict(self) -> list[Denial]:
        """Close the oldest events until at most `max_pending` are open; returns their denials."""
        pending = self._pending
        oldest = pending.pop(next(iter(pending)))  # one, nearly always: an AVC without companions
        avcs = oldest[_AVCS]
        if len(avcs) == 1 and oldest[_COMPANIONS] is None:
            denial = _new(Denial)  # _emit and make_denial, inline: this runs for nearly every denial
            _set(denial, "__dict__", avcs[0])
            self.stats.denials += 1
            out = [denial]
        else:
            out = self._emit(oldest)
        while len(pending) > self.max_pending:
            out.extend(self._emit(pending.pop(next(iter(pending)))))
        return out

    def _close(self, key: tuple[float, int]) -> list[Denial]:
        event = self._pending.pop(key, None)
        return self._emit(event) if event else []

    def expire(self, now: float) -> list[Denial]:
        """Close events whose audit timestamp is more than `linger` seconds before `now` (epoch seconds)."""
        out: list[Denial] = []
        limit = now - self.linger
        for key in [k for k, event in self._pending.items() if event[_TIME] <= limit]:
            out.extend(self._emit(self._pending.pop(key)))
        return out

    def finish(self) -> list[Denial]:
        """Close every open event (end of input)."""
        out: list[Denial] = []
        for event in self._pending.values():
            out.extend(self._emit(event))
        self._pending.clear()
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _emit(self, event: list) -> list[Denial]:
        avcs = event[_AVCS]
        if not avcs:
            return []
        try:
            if event[_COMPANIONS] is None:
                done = []
                for values in avcs:  # make_denial, inline
                    denial = _new(Denial)
                    _set(denial, "__dict__", values)
                    done.append(denial)
            else:
                done = _complete(event)
        except Exception:  # noqa: BLE001
            self.stats.avc_unreadable += len(avcs)
            return []
        self.stats.denials += len(done)
        return done


def parse_lines(lines, max_pending: int = 64) -> tuple[list[Denial], ParseStats]:
    """Every denial in an iterable of lines (a whole audit.log or dmesg dump), and the parse statistics."""
    assembler = EventAssembler(max_pending=max_pending)
    out: list[Denial] = []
    for line in lines:
        out.extend(assembler.feed_line(line))
    out.extend(assembler.finish())
    return out, assembler.stats
