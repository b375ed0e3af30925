"""Audit records as values: one parser for every text form an AVC denial arrives in, and event assembly.

Pure code: text in, values out. The forms accepted, all keyed on the `avc:` token the way sepolgen's
`AuditParser` keys on it (SELinuxProject/selinux python/sepolgen/src/sepolgen/audit.py), not on `type=AVC`:

- the bare netlink payload, where the record type is the netlink message type and the text starts with
  `audit(1700000000.123:456): avc:  denied  { read } for ...`;
- kmsg / dmesg / syslog lines: `[  12.3] audit: type=1400 audit(...): avc:  denied ...`;
- auditd's audit.log in RAW form: `type=AVC msg=audit(...): avc:  denied ...`, optionally after `node=HOST `;
- auditd's ENRICHED form: the RAW record, then `\\x1d` (group separator) and the interpreted fields
  (`UID="root" ...`), which are dropped here;
- `ausearch -i`: `msg=audit(02/12/2024 10:57:55.073:386) :` with a local date and unquoted values;
- USER_AVC from user-space object managers, whose AVC text sits inside `msg='...'`.

The kernel writes the AVC as `avc:  denied|granted  { perm ... } for  pid= comm= path=|name= dev= ino=
scontext= tcontext= tclass= [permissive=]` (security/selinux/avc.c, security/lsm_audit.c). Untrusted
strings (comm, path, name, exe) are either double-quoted or, when they hold a space, a quote or a
non-printable byte, written as upper-case hex (kernel/audit.c `audit_log_untrustedstring`); both are decoded.

Records of one event share `audit(seconds.millis:serial)`. The `EventAssembler` groups AVC, SYSCALL, PATH,
CWD, AVC_PATH and PROCTITLE records by that key and emits one `Denial` per AVC record when the event ends:
on an EOE record, when too many newer events are pending, when its time has passed (`expire`), or at `finish`.
No input line makes the parser raise; a line that cannot be read is counted in `ParseStats.bad_lines`.

Most lines never reach `parse_record`: fastpath.py reads the common layouts for a fraction of the cost and
hands the assembler the same values (tested line by line against this parser).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice

from agent.errors import InvalidLabel
from agent.label import Label

# Record type numbers (include/uapi/linux/audit.h). Netlink gives the number; audit.log gives the name;
# kmsg gives `type=NUMBER`.
RECORD_TYPES = {
    1100: "USER_AUTH", 1105: "USER_END", 1106: "USER_LOGIN", 1107: "USER_AVC", 1300: "SYSCALL",
    1302: "PATH", 1307: "CWD", 1320: "EOE", 1327: "PROCTITLE", 1335: "EVENT_LISTENER", 1400: "AVC",
    1401: "SELINUX_ERR", 1402: "AVC_PATH", 1403: "MAC_POLICY_LOAD", 1404: "MAC_STATUS",
    1405: "MAC_CONFIG_CHANGE", 1410: "MAC_UNLBL_ALLOW", 2000: "KERNEL",
}
AVC_TYPES = frozenset({"AVC", "USER_AVC"})
# Records whose fields are attached to the event's denials.
COMPANION_TYPES = frozenset({"SYSCALL", "PATH", "CWD", "AVC_PATH", "PROCTITLE"})

_HEADER = re.compile(r"audit\((?:(\d+)\.(\d+)|(\d\d/\d\d/\d{4} \d\d:\d\d:\d\d)\.(\d+)):(\d+)\)")
_TYPE = re.compile(r"type=(\w+)")
_NODE = re.compile(r"node=(\S+)")
_AVC = re.compile(r"avc:\s+(denied|granted)\s+\{([^}]*)\}\s*(?:for\b)?(.*)")
_FIELD = re.compile(r"([A-Za-z_][\w-]*)=(\"[^\"]*\"|'[^']*'|\S+)")
_HEX = re.compile(r"(?:[0-9A-F]{2})+\Z")
# Fields the kernel writes with audit_log_untrustedstring: quoted, or hex when they hold odd bytes.
_UNTRUSTED = frozenset({"comm", "path", "name", "exe", "cwd", "proctitle", "cmd", "srawcon", "trawcon"})
# Characters sepolgen strips from lines (ENRICHED separators and NEL).
_STRIP = str.maketrans("", "", "\x1c\x1e\x85")
MAX_LINE = 65536


class BoundedCache(dict):
    """A memo of at most `limit` entries, for values that repeat in the stream (contexts, tails of AVC lines).

    When full, the older half by insertion goes. A hit is a plain `dict.get`, and unlike an LRU it does not
    move the entry, so hits cost nothing extra; entries still in use come back at their next miss.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        """Store and return `value`."""
        if len(self) >= self.limit:
            for old in list(islice(self, max(self.limit // 2, 1))):
                del self[old]
        self[key] = value
        return value


def decode_value(key: str, value: str) -> str:
    """A field value with quotes removed and, for untrusted strings, hex decoded."""
    first = value[:1]
    if first == '"' or first == "'":
        return value[1:-1] if len(value) >= 2 and value[-1] == first else value[1:]
    if key in _UNTRUSTED and _HEX.match(value):
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            return value
        if key == "proctitle":
            raw = raw.replace(b"\0", b" ").rstrip()
        return raw.decode("utf-8", "replace")
    return value


def _unquote(key: str, value: str) -> str:
    if value[:1] == '"' and value[-1:] == '"' and len(value) >= 2:
        return value[1:-1]
    return decode_value(key, value)


# SYSCALL fields in the order the kernel writes them (audit_log_exit); other shapes use parse_fields.
_FAST_SYSCALL = re.compile(
    r"arch=\S+ syscall=(\d+) (?:success=(\w+) )?.*? ppid=(\d+) pid=(\d+) .*?comm=(\S+) exe=(\S+)")


def _syscall_fields(body: str) -> dict[str, str]:
    match = _FAST_SYSCALL.match(body)
    if match is None:
        return parse_fields(body)
    syscall, success, ppid, pid, comm, exe = match.groups()
    out = {"syscall": syscall, "ppid": ppid, "pid": pid, "comm": _unquote("comm", comm),
           "exe": _unquote("exe", exe)}
    if success is not None:
        out["success"] = success
    return out


def parse_fields(text: str) -> dict[str, str]:
    """`key=value` pairs of a record body; the first occurrence of a key wins (the kernel's own field).

    Kernel values never hold a space (audit_log_untrustedstring hex-encodes those), so splitting on
    whitespace is exact and fast; a quoted value with spaces (user-space records such as systemd's
    `cmdline="..."`) sends the line through the slower regular expression.
    """
    out: dict[str, str] = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if not sep or not key or key in out:
            continue
        first = value[:1]
        if first == '"' or first == "'":
            if len(value) < 2 or value[-1] != first:
                return _parse_fields_quoted(text)
            out[key] = value[1:-1]
        elif key in _UNTRUSTED:
            out[key] = decode_value(key, value)
        else:
            out[key] = value
    return out


def _parse_fields_quoted(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _FIELD.findall(text):
        if key not in out:
            out[key] = decode_value(key, value)
    return out


@dataclass(frozen=True)
class Record:
    """One audit record: its type name, the event key `audit(timestamp:serial)`, and its body text."""

    type: str
    timestamp: float
    serial: int
    body: str
    node: str | None = None

    @property
    def key(self) -> tuple[float, int]:
        return (self.timestamp, self.serial)


def _record_type(text: str, type_hint: int | str | None) -> str:
    if type_hint is not None:
        if isinstance(type_hint, int):
            return RECORD_TYPES.get(type_hint, str(type_hint))
        return type_hint
    match = _TYPE.search(text, 0, 200)
    if not match:
        return "UNKNOWN"
    name = match.group(1)
    if name.isdigit():
        return RECORD_TYPES.get(int(name), name)
    return name


def record_prefix(head: str, type_hint: int | str | None = None) -> tuple[str, str | None]:
    """(record type, node) of the text before `audit(`."""
    node = None
    if "node=" in head:
        node_match = _NODE.search(head)
        node = node_match.group(1) if node_match else None
    return _record_type(head, type_hint), node


def parse_record(text: str, type_hint: int | str | None = None) -> Record | None:
    """One line of any accepted form, or None when it is not an audit record.

    `type_hint` is the netlink message type (a number) for netlink payloads, which carry no `type=`.
    """
    if not isinstance(text, str) or len(text) > MAX_LINE:
        return None
    if "\x1d" in text:
        text = text.partition("\x1d")[0]
    start = text.find("audit(")
    if start < 0:
        return None
    match = _HEADER.match(text, start)
    if not match:
        match = _HEADER.search(text, start + 1)
        if not match:
            return None
    seconds, millis, local_date, local_millis, serial = match.groups()
    if seconds is not None:
        timestamp = float(seconds + "." + millis)
    else:
        try:
            moment = datetime.strptime(local_date, "%m/%d/%Y %H:%M:%S")
        except ValueError:
            return None
        # `ausearch -i` prints local time; it is read as local time here too.
        timestamp = moment.timestamp() + int(local_millis) / (10 ** len(local_millis))
    rtype, node = record_prefix(text[: match.start()], type_hint)
    body = text[match.end():]
    if body.startswith(" :"):  # ausearch -i writes `audit(...) : fields`
        body = body[2:]
    elif body.startswith(":"):
        body = body[1:]
    if rtype == "UNKNOWN" and "avc:" in body:
        rtype = "AVC"
    return Record(rtype, timestamp, int(serial), finish_body(body), node)


def finish_body(body: str) -> str:
    """A record body as `parse_record` leaves it: the ENRICHED part after \\x1d dropped, sepolgen's strip
    characters removed, surrounding white space trimmed. Applying it twice changes nothing, so bodies the
    fast path kept as they were can be finished only when an event turns out to need them."""
    if "\x1d" in body:
        body = body.partition("\x1d")[0]
    if "\x1c" in body or "\x1e" in body or "\x85" in body:
        body = body.translate(_STRIP)
    return body.strip()


# --- denials -------------------------------------------------------------------------------------------

_LABEL_CACHE = BoundedCache(8192)
# id(Label) → (Label, canonical level): formatting a level costs microseconds, and the same few Label
# objects (shared through _LABEL_CACHE) come back with every denial. The Label is held so its id stays
# its own while the entry lives.
_LEVEL_CACHE = BoundedCache(8192)


def context_value(text: str) -> Label | str:
    """A context as a `Label`, or the raw text when it does not parse (kept so nothing is lost)."""
    cached = _LABEL_CACHE.get(text)
    if cached is not None:
        return cached
    try:
        value: Label | str = Label.parse(text)
    except InvalidLabel:
        value = text
    return _LABEL_CACHE.put(text, value)


def context_type(context: Label | str | None) -> str | None:
    """The type part of a context, also for raw unparsable text when it has one."""
    if context is None:
        return None
    if isinstance(context, Label):
        return context.type
    parts = context.split(":")
    return parts[2] if len(parts) >= 3 and parts[2] else None


def context_level(context: Label | str | None) -> str | None:
    """The canonical MLS/MCS level of a context, or None."""
    if isinstance(context, Label):
        entry = _LEVEL_CACHE.get(id(context))
        if entry is not None and entry[0] is context:
            return entry[1]
        level = str(context.level) if context.level is not None else None
        _LEVEL_CACHE.put(id(context), (context, level))
        return level
    return None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value, 0) if value.startswith("0x") else int(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class Denial:
    """One AVC record (a denial, or a `granted` auditallow record) with the event's companion fields."""

    timestamp: float
    serial: int
    permissions: tuple[str, ...]
    scontext: Label | str
    tcontext: Label | str
    tclass: str
    denied: bool = True
    permissive: bool | None = None
    pid: int | None = None
    comm: str | None = None
    path: str | None = None
    name: str | None = None
    dev: str | None = None
    ino: int | None = None
    record_type: str = "AVC"
    node: str | None = None
    # From the SYSCALL / CWD / PROCTITLE records of the same event, when present.
    exe: str | None = None
    ppid: int | None = None
    syscall: int | None = None
    success: bool | None = None
    cwd: str | None = None
    proctitle: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def granted(self) -> bool:
        return not self.denied

    # The two type properties are read for every denial counted; the Label case is inline.
    @property
    def source_type(self) -> str | None:
        context = self.scontext
        return context.type if context.__class__ is Label else context_type(context)

    @property
    def target_type(self) -> str | None:
        context = self.tcontext
        return context.type if context.__class__ is Label else context_type(context)

    @property
    def source_level(self) -> str | None:
        return context_level(self.scontext)

    @property
    def target_level(self) -> str | None:
        return context_level(self.tcontext)

    @property
    def enforced(self) -> bool:
        """True when the access was refused: a denial that was not permissive (nor allowed by the syscall)."""
        if not self.denied:
            return False
        if self.permissive is not None:
            return not self.permissive
        return self.success is not True

    def to_json(self) -> dict:
        out = {
            "timestamp": self.timestamp, "serial": self.serial, "type": self.record_type,
            "result": "denied" if self.denied else "granted",
            "permissions": list(self.permissions), "scontext": str(self.scontext),
            "tcontext": str(self.tcontext), "tclass": self.tclass, "permissive": self.permissive,
        }
        for key in ("pid", "comm", "path", "name", "dev", "ino", "node", "exe", "ppid", "syscall",
                    "success", "cwd", "proctitle"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


_new = object.__new__
_set = object.__setattr__


def _make_denial(values: dict) -> Denial:
    """`Denial(**values)` without the generated __init__, which for a frozen class of 23 fields sets each
    through object.__setattr__ and costs more than parsing the line. Same class, same equality, hash and
    repr. Fields missing from `values` read as the class defaults, which dataclass puts on the class for
    every field with a default; `values` comes only from this module's parsers and fastpath.py, which
    always set the six required fields."""
    denial = _new(Denial)
    _set(denial, "__dict__", values)  # the dict becomes the instance's own; nothing else holds it
    return denial


def _avc_body(body: str, rtype: str) -> str:
    if rtype == "USER_AVC":
        # The kernel text sits inside msg='...'; the outer pid/uid are the object manager's.
        start = body.find("avc:")
        inner = body[start:] if start >= 0 else body
        quote = inner.rfind("'")
        return inner[:quote] if quote > 0 else inner
    return body


def _avc_values(record: Record) -> dict | None:
    """The Denial fields of an AVC record, or None when it holds no readable AVC."""
    body = record.body
    if "avc:" not in body:
        return None
    body = _avc_body(body, record.type)
    match = _AVC.search(body)
    if not match:
        return None
    result, perms_text, rest = match.groups()
    permissions = tuple(perms_text.split())
    if not permissions:
        return None
    fields = parse_fields(rest)
    scontext = fields.pop("scontext", None)
    tcontext = fields.pop("tcontext", None)
    tclass = fields.pop("tclass", None)
    if not scontext or not tcontext or not tclass:
        # sepolgen requires all three as well; the kernel prints ssid=/tsid= when it cannot map a SID.
        return None
    permissive_text = fields.pop("permissive", None)
    values = {
        "timestamp": record.timestamp, "serial": record.serial, "permissions": permissions,
        "scontext": context_value(scontext), "tcontext": context_value(tcontext), "tclass": tclass,
        "denied": result == "denied",
        "permissive": None if permissive_text is None else permissive_text == "1",
        "pid": _int(fields.pop("pid", None)), "comm": fields.pop("comm", None),
        "path": fields.pop("path", None), "name": fields.pop("name", None), "dev": fields.pop("dev", None),
        "ino": _int(fields.pop("ino", None)),
        "record_type": record.type if record.type in AVC_TYPES else "AVC", "node": record.node,
    }
    if fields:
        values["extra"] = tuple(sorted(fields.items()))
    return values


def denial_from_record(record: Record) -> Denial | None:
    """The AVC in a record, or None when the record holds none or lacks a required field."""
    values = _avc_values(record)
    return Denial(**values) if values is not None else None


# --- event assembly ------------------------------------------------------------------------------------


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
        return [_make_denial(values) for values in event[_AVCS]]
    # Only the records whose fields are attached are read (PATH records are kept, not parsed). The fast
    # path keeps bodies as they came, hence finish_body.
    body = companions.get("SYSCALL")
    syscall = {} if body is None else _syscall_fields(finish_body(body))
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
            values["ppid"] = _int(syscall.get("ppid"))
            values["syscall"] = _int(syscall.get("syscall"))
            values["success"] = None if success is None else success == "yes"
            if values.get("pid") is None:
                values["pid"] = _int(syscall.get("pid"))
            if values.get("comm") is None:
                values["comm"] = syscall.get("comm")
        if cwd:
            values["cwd"] = cwd
        if proctitle:
            values["proctitle"] = proctitle
        if values.get("path") is None and avc_path:
            values["path"] = avc_path
        done.append(_make_denial(values))
    return done


class EventAssembler:
    """Groups records by `audit(timestamp:serial)` and emits the denials of each event once it is complete.

    An event is complete at its EOE record; when more than `max_pending` events are open (the oldest goes);
    when `expire(now)` finds it older than `linger` seconds; or at `finish()`. Each call returns the denials
    that became complete, oldest first. Events that hold no AVC cost one dictionary entry until they close.

    Lines in the common layouts are read by `fastpath.read`, the rest by `parse_record`; both feed the
    same event steps (`feed_line` does the common ones inline, `_place` the rest), so the two readers
    differ in cost only.
    """

    def __init__(self, max_pending: int = 64, linger: float = 0.5):
        # Imported here because fastpath builds on this module's helpers.
        from agent.avc.fastpath import read

        self._read_fast = read
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
                values = _avc_values(record)
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
            denial = _new(Denial)  # _emit, inline
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
                for values in avcs:  # _make_denial, inline
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
