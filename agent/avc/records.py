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
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import MISSING, dataclass, field
from datetime import datetime

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
_NEEDS_STRIP = re.compile("[\x1c\x1e\x85]")
_MAX_LINE = 65536

# The layout the kernel itself writes (avc_audit_pre/post_callback, lsm_audit.c), as auditd (RAW, ENRICHED,
# `node=`) and kmsg show it. Lines in this shape, nearly all of them on a busy node, are read by this one
# expression; anything else goes through the general parser. Both give the same Denial (tested).
_FAST_AVC = re.compile(
    r"(?:\[[^\]]*\] )?(?:audit: )?(?:node=(\S+) )?type=(?:AVC|1400) (?:msg=)?"
    r"audit\((\d+)\.(\d+):(\d+)\): avc:  (denied|granted)  \{ ([^}]*) \} for  pid=(\d+) comm=(\S+) "
    r"(?:path=(\S+) )?(?:name=(\S+) )?(?:dev=(\S+) )?(?:ino=(\d+) )?"
    r"scontext=(\S+) tcontext=(\S+) tclass=(\w+)(?: permissive=([01]))?[ \t]*(?:\x1d.*)?\Z", re.DOTALL)


def _decode(key: str, value: str) -> str:
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
    return _decode(key, value)


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
            out[key] = _decode(key, value)
        else:
            out[key] = value
    return out


def _parse_fields_quoted(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _FIELD.findall(text):
        if key not in out:
            out[key] = _decode(key, value)
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


def parse_record(text: str, type_hint: int | str | None = None) -> Record | None:
    """One line of any accepted form, or None when it is not an audit record.

    `type_hint` is the netlink message type (a number) for netlink payloads, which carry no `type=`.
    """
    if not isinstance(text, str) or len(text) > _MAX_LINE:
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
    head = text[: match.start()]
    node = None
    if "node=" in head:
        node_match = _NODE.search(head)
        node = node_match.group(1) if node_match else None
    rtype = _record_type(head, type_hint)
    body = text[match.end():]
    if body.startswith(" :"):  # ausearch -i writes `audit(...) : fields`
        body = body[2:]
    elif body.startswith(":"):
        body = body[1:]
    if rtype == "UNKNOWN" and "avc:" in body:
        rtype = "AVC"
    if _NEEDS_STRIP.search(body):
        body = body.translate(_STRIP)
    return Record(rtype, timestamp, int(serial), body.strip(), node)


# --- denials -------------------------------------------------------------------------------------------

_LABEL_CACHE: dict[str, Label | str] = {}
_LABEL_CACHE_MAX = 8192


def context_value(text: str) -> Label | str:
    """A context as a `Label`, or the raw text when it does not parse (kept so nothing is lost)."""
    cached = _LABEL_CACHE.get(text)
    if cached is not None:
        return cached
    try:
        value: Label | str = Label.parse(text)
    except InvalidLabel:
        value = text
    if len(_LABEL_CACHE) >= _LABEL_CACHE_MAX:
        _LABEL_CACHE.clear()
    _LABEL_CACHE[text] = value
    return value


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
        return str(context.level) if context.level is not None else None
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

    @property
    def source_type(self) -> str | None:
        return context_type(self.scontext)

    @property
    def target_type(self) -> str | None:
        return context_type(self.tcontext)

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


_DENIAL_DEFAULTS = {name: spec.default for name, spec in Denial.__dataclass_fields__.items()
                    if spec.default is not MISSING}
_new = object.__new__


def _make_denial(values: dict) -> Denial:
    """`Denial(**values)` without the generated __init__, which for a frozen class of 23 fields sets each
    through object.__setattr__ and costs more than parsing the line. Same class, same equality and hash;
    `values` comes only from this module's parsers, which always set the required fields."""
    denial = _new(Denial)
    attributes = denial.__dict__
    attributes.update(_DENIAL_DEFAULTS)
    attributes.update(values)
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


class _Event:
    __slots__ = ("avcs", "companions", "timestamp")

    def __init__(self, timestamp: float):
        self.avcs: list[dict] = []  # Denial fields, turned into Denials when the event ends
        self.companions: dict[str, str] = {}  # record type → body, parsed only if the event has an AVC
        self.timestamp = timestamp


def _complete(event: _Event) -> list[Denial]:
    """The event's Denials, with SYSCALL, CWD, AVC_PATH and PROCTITLE fields attached."""
    if not event.companions:
        return [_make_denial(values) for values in event.avcs]
    parsed = {rtype: _syscall_fields(body) if rtype == "SYSCALL" else parse_fields(body)
              for rtype, body in event.companions.items()}
    syscall = parsed.get("SYSCALL", {})
    cwd = parsed.get("CWD", {}).get("cwd")
    avc_path = parsed.get("AVC_PATH", {}).get("path")
    proctitle = parsed.get("PROCTITLE", {}).get("proctitle")
    success = syscall.get("success")
    done = []
    for values in event.avcs:
        if syscall:
            values["exe"] = syscall.get("exe")
            values["ppid"] = _int(syscall.get("ppid"))
            values["syscall"] = _int(syscall.get("syscall"))
            values["success"] = None if success is None else success == "yes"
            if values["pid"] is None:
                values["pid"] = _int(syscall.get("pid"))
            if values["comm"] is None:
                values["comm"] = syscall.get("comm")
        if cwd:
            values["cwd"] = cwd
        if proctitle:
            values["proctitle"] = proctitle
        if values["path"] is None and avc_path:
            values["path"] = avc_path
        done.append(_make_denial(values))
    return done


class EventAssembler:
    """Groups records by `audit(timestamp:serial)` and emits the denials of each event once it is complete.

    An event is complete at its EOE record; when more than `max_pending` events are open (the oldest goes);
    when `expire(now)` finds it older than `linger` seconds; or at `finish()`. Each call returns the denials
    that became complete, oldest first. Events that hold no AVC cost one dictionary entry until they close.
    """

    def __init__(self, max_pending: int = 64, linger: float = 0.5):
        self.max_pending = max_pending
        self.linger = linger
        self.stats = ParseStats()
        self._pending: dict[tuple[float, int], _Event] = {}

    def feed_line(self, text: str, type_hint: int | str | None = None) -> list[Denial]:
        """Parse one line (or netlink payload) and return the denials completed by it."""
        self.stats.lines += 1
        if type_hint is None:
            match = _FAST_AVC.match(text)
            if match is not None:
                return self._add_fast(match)
        try:
            record = parse_record(text, type_hint)
        except Exception:  # noqa: BLE001 - one bad line must never stop the stream
            record = None
        if record is None:
            self.stats.bad_lines += 1
            return []
        return self.add(record)

    def add(self, record: Record) -> list[Denial]:
        stats = self.stats
        rtype = record.type
        stats.records[rtype] += 1
        key = (record.timestamp, record.serial)
        if rtype == "EOE":
            event = self._pending.pop(key, None)
            return self._emit(event) if event else []
        is_avc = rtype in AVC_TYPES or (rtype not in COMPANION_TYPES and "avc:" in record.body)
        if not is_avc and rtype not in COMPANION_TYPES:
            return []
        pending = self._pending
        event = pending.get(key)
        out: list[Denial] = []
        if event is None:
            event = pending[key] = _Event(record.timestamp)
            while len(pending) > self.max_pending:
                oldest = next(iter(pending))
                out.extend(self._emit(pending.pop(oldest)))
        if is_avc:
            try:
                values = _avc_values(record)
            except Exception:  # noqa: BLE001 - one bad record must never stop the stream
                values = None
            if values is None:
                stats.avc_unreadable += 1
            else:
                event.avcs.append(values)
        elif rtype not in event.companions:
            event.companions[rtype] = record.body
        return out

    def _add_fast(self, match: re.Match) -> list[Denial]:
        (node, seconds, millis, serial, result, perms, pid, comm, path, name, dev, ino, scontext, tcontext,
         tclass, permissive) = match.groups()
        permissions = tuple(perms.split())
        timestamp = float(seconds + "." + millis)
        serial_number = int(serial)
        self.stats.records["AVC"] += 1
        if not permissions:
            self.stats.avc_unreadable += 1
            return []
        values = {
            "timestamp": timestamp, "serial": serial_number, "permissions": permissions,
            "scontext": context_value(scontext), "tcontext": context_value(tcontext), "tclass": tclass,
            "denied": result == "denied", "permissive": None if permissive is None else permissive == "1",
            "pid": int(pid), "comm": comm[1:-1] if comm[0] == '"' and comm[-1] == '"' else _decode("comm", comm),
            "path": None if path is None else _unquote("path", path),
            "name": None if name is None else _unquote("name", name),
            "dev": None if dev is None else _unquote("dev", dev),
            "ino": None if ino is None else int(ino), "record_type": "AVC", "node": node,
        }
        key = (timestamp, serial_number)
        pending = self._pending
        event = pending.get(key)
        out: list[Denial] = []
        if event is None:
            event = pending[key] = _Event(timestamp)
            while len(pending) > self.max_pending:
                out.extend(self._emit(pending.pop(next(iter(pending)))))
        event.avcs.append(values)
        return out

    def expire(self, now: float) -> list[Denial]:
        """Close events whose audit timestamp is more than `linger` seconds before `now` (epoch seconds)."""
        out: list[Denial] = []
        limit = now - self.linger
        for key in [k for k, event in self._pending.items() if event.timestamp <= limit]:
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

    def _emit(self, event: _Event) -> list[Denial]:
        if not event.avcs:
            return []
        try:
            done = _complete(event)
        except Exception:  # noqa: BLE001
            self.stats.avc_unreadable += len(event.avcs)
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
