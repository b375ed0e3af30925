"""Audit records as values: one parser for every text form an audit record arrives in.

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

Untrusted strings (comm, path, name, exe) are either double-quoted or, when they hold a space, a quote or a
non-printable byte, written as upper-case hex (kernel/audit.c `audit_log_untrustedstring`); both are decoded.
No input line makes the parser raise. What an AVC record means is denial.py's; grouping the records of one
event is assembler.py's; fastpath.py reads the common layouts for less and agrees with this parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

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
_FIELD = re.compile(r"([A-Za-z_][\w-]*)=(\"[^\"]*\"|'[^']*'|\S+)")
_HEX = re.compile(r"(?:[0-9A-F]{2})+\Z")
# Fields the kernel writes with audit_log_untrustedstring: quoted, or hex when they hold odd bytes.
_UNTRUSTED = frozenset({"comm", "path", "name", "exe", "cwd", "proctitle", "cmd", "srawcon", "trawcon"})
# Characters sepolgen strips from lines (ENRICHED separators and NEL).
_STRIP = str.maketrans("", "", "\x1c\x1e\x85")
MAX_LINE = 65536


class BoundedCache(dict):
    """A memo of at most `limit` entries, for values that repeat in the stream (contexts, tails of AVC lines).
    The readers that memoise own their instances (`fastpath.FastReader`); this module keeps none.

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


def syscall_fields(body: str) -> dict[str, str]:
    """The fields of a SYSCALL record body that a denial takes (exe, ppid, pid, comm, syscall, success)."""
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
