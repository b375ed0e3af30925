"""The `Denial` value: one AVC record with the fields of its event, and how an AVC record's text becomes one.

Pure code. The kernel writes the AVC as `avc:  denied|granted  { perm ... } for  pid= comm= path=|name= dev=
ino= scontext= tcontext= tclass= [permissive=]` (security/selinux/avc.c, security/lsm_audit.c).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from agent.avc.record import AVC_TYPES, Record, parse_fields
from agent.errors import InvalidLabel
from agent.label import Label, canonical_level

_AVC = re.compile(r"avc:\s+(denied|granted)\s+\{([^}]*)\}\s*(?:for\b)?(.*)")


def parse_context(text: str) -> Label | str:
    """A context as a `Label`, or the raw text when it does not parse (kept so nothing is lost)."""
    try:
        return Label.parse(text)
    except InvalidLabel:
        return text


def context_type(context: Label | str | None) -> str | None:
    """The type part of a context, also for raw unparsable text when it has one."""
    if context is None:
        return None
    if isinstance(context, Label):
        return context.type
    parts = context.split(":")
    return parts[2] if len(parts) >= 3 and parts[2] else None


def context_level(context: Label | str | None) -> str | None:
    """The canonical MLS/MCS level of a context, or None (raw unparsable text has none)."""
    return canonical_level(context.level) if isinstance(context, Label) else None


def as_int(value: str | None) -> int | None:
    """A decimal or 0x-hex field value as a number; None when absent or unreadable."""
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


def make_denial(values: dict) -> Denial:
    """`Denial(**values)` without the generated __init__, which for a frozen class of 23 fields sets each
    through object.__setattr__ and costs more than parsing the line. Same class, same equality, hash and
    repr. Fields missing from `values` read as the class defaults, which dataclass puts on the class for
    every field with a default; `values` comes only from `avc_values` and fastpath.py, which always set
    the six required fields. The dict becomes the instance's own: the caller must hold no other use of it."""
    denial = _new(Denial)
    _set(denial, "__dict__", values)
    return denial


def _avc_body(body: str, rtype: str) -> str:
    if rtype == "USER_AVC":
        # The kernel text sits inside msg='...'; the outer pid/uid are the object manager's.
        start = body.find("avc:")
        inner = body[start:] if start >= 0 else body
        quote = inner.rfind("'")
        return inner[:quote] if quote > 0 else inner
    return body


def avc_values(record: Record, context: Callable[[str], Label | str] = parse_context) -> dict | None:
    """The Denial fields of an AVC record, or None when it holds no readable AVC. `context` reads a context
    (a reader that memoises passes its own)."""
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
        "scontext": context(scontext), "tcontext": context(tcontext), "tclass": tclass,
        "denied": result == "denied",
        "permissive": None if permissive_text is None else permissive_text == "1",
        "pid": as_int(fields.pop("pid", None)), "comm": fields.pop("comm", None),
        "path": fields.pop("path", None), "name": fields.pop("name", None), "dev": fields.pop("dev", None),
        "ino": as_int(fields.pop("ino", None)),
        "record_type": record.type if record.type in AVC_TYPES else "AVC", "node": record.node,
    }
    if fields:
        values["extra"] = tuple(sorted(fields.items()))
    return values


def denial_from_record(record: Record) -> Denial | None:
    """The AVC in a record, or None when the record holds none or lacks a required field."""
    values = avc_values(record)
    return Denial(**values) if values is not None else None
