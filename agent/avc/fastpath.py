"""The record layouts that make up nearly all of a busy node's stream, read without the general parser.

Almost every line on a node is either an AVC record in the layout the kernel writes (avc_audit_pre/post
callbacks, lsm_audit.c: `avc:  denied  { perms } for  pid= comm= [path=] [name=] [dev=] [ino=] scontext=
tcontext= tclass= [permissive=]`) or another record of the same events (SYSCALL, PROCTITLE, EOE, ...).
The general parser reads every form but costs several times more per line, and at 100,000 lines a second
on a small node the difference is the budget. `FastReader.read` does less, and memoises what repeats, in
caches the reader object holds (one reader per stream; nothing is kept at module level):

- the text before `audit(` (`type=AVC msg=`, `node=worker-1 type=SYSCALL msg=`, ...) → its record type
  and node, as the general parser reads them;
- the `scontext= tcontext= tclass= permissive=` tail and the permission list of AVC lines: a workload
  that is denied something is denied the same thing again and again, so the two `Label`s, the class and
  the permissive flag are looked up instead of built;
- the event key of the last record: the records of one event arrive together.

What changes from line to line (time stamp, serial, pid, comm, path, name, dev, ino) is read by one
regular expression per AVC; other records are split with `str.partition`, and their bodies are kept as
they are until their event turns out to hold an AVC.

Contract with record.py and denial.py: for any line, `read` returns exactly what the general parser
(`parse_record`, then `avc_values`) would make of it,
or None, and the caller then uses the general parser. Cached parts are checked once, on the miss, by the
general parser's own functions or by an expression at least as strict; the varying parts on every line.
Anything unusual — ausearch output, USER_AVC, capability or network AVCs, hex-encoded strings, quotes left
open, white space other than single spaces, fields out of the kernel's order — goes to the general
parser. tests/unit/avc/test_fastpath.py holds both to this.
"""

from __future__ import annotations

import re

from agent.avc.denial import parse_context
from agent.avc.record import AVC_TYPES, COMPANION_TYPES, MAX_LINE, BoundedCache, record_prefix
from agent.label import Label

# An AVC in the kernel layout, from after `audit(` up to its tail. The kernel quotes a string only when
# every byte is printable ASCII other than `"` and space (0x21-0x7e, audit_string_contains_control) and
# writes it in hex otherwise; hex strings are left to the general parser.
_AVC = re.compile(
    r'(([0-9]+\.[0-9]+):([0-9]+))\): avc:  (denied|granted)  \{ ([^}]*) \} for  pid=([0-9]+) '
    r'comm="([!#-~]*)"(?: path="([!#-~]*)")?(?: name="([!#-~]*)")?(?: dev="([!#-~]*)")?(?: ino=([0-9]+))?'
    r' scontext=')
_TAIL = re.compile(r"([^\s\"']\S*) tcontext=([^\s\"']\S*) tclass=(\w+)(?: permissive=([01]))?[ \t]*\Z")
_KMSG_STAMP = " .0123456789"


class FastReader:
    """Reads the common layouts of one stream, with the memos that make it cheap.

    `read` is the fast path; `context` is the memoised context reader, which the assembler also hands the
    general parser so both give the same `Label` object for the same text."""

    def __init__(self, contexts: int = 8192, prefixes: int = 1024, permissions: int = 1024, tails: int = 4096):
        # Context text → Label (or the raw text when it does not parse).
        self.contexts = BoundedCache(contexts)
        # What precedes `audit(` (with the netlink message type for netlink payloads) → (record type, node)
        # as the general parser reads them, or False.
        self.prefixes = BoundedCache(prefixes)
        # `read write` → ("read", "write"), or False.
        self.permissions = BoundedCache(permissions)
        # `system_u:... tcontext=... tclass=file permissive=0` (after `scontext=`) → (scontext, tcontext,
        # tclass, permissive), or False.
        self.tails = BoundedCache(tails)
        # The last `seconds.millis:serial` read and its event key: the records of one event arrive together.
        self._last_stamp: tuple[str, tuple[float, int] | None] = ("", None)

    def context(self, text: str) -> Label | str:
        """`parse_context(text)`, memoised."""
        cached = self.contexts.get(text)
        if cached is not None:
            return cached
        return self.contexts.put(text, parse_context(text))

    def _prefix(self, text: str, hint: int | None):
        """(record type, node) of the text before `audit(`, cached; False when the line is not for here."""
        key = text
        if text[:1] == "[":
            # kmsg: `[  3664.881234] audit: type=1400 `. The time stamp changes on every line and says
            # nothing the general parser reads; the rest is cached. (Short prefixes only, so the stamp cannot
            # push `type=` out of the 200 characters the general parser searches.)
            close = text.find("] ")
            if close > 0 and len(text) < 150 and not text[1:close].strip(_KMSG_STAMP):
                key = text[close + 2:]
            else:
                return False
        if hint is not None:
            key = (key, hint)  # the type comes from the hint
        found = self.prefixes.get(key)
        if found is None:
            head = key if hint is None else key[0]
            found = self.prefixes.put(key, record_prefix(head, hint) if "\x1d" not in head else False)
        return found

    def _permissions(self, text: str):
        # The general parser cuts lines at \x1d and drops \x1c \x1e \x85 before it splits: only printable
        # permission lists (nearly all) are read here.
        return self.permissions.put(text, tuple(text.split()) if text.isprintable() else False)

    def _tail(self, text: str):
        match = _TAIL.match(text)
        if match is None:
            return self.tails.put(text, False)
        scontext, tcontext, tclass, permissive = match.groups()
        return self.tails.put(text, (self.context(scontext), self.context(tcontext), tclass,
                                     None if permissive is None else permissive == "1"))

    def _key(self, stamp: str) -> tuple[float, int] | None:
        """`1700000000.123:456` → (1700000000.123, 456), or None for anything else."""
        seconds, _, serial = stamp.partition(":")
        whole, dot, millis = seconds.partition(".")
        if not (dot and whole.isdigit() and millis.isdigit() and serial.isdigit()):
            return None
        key = (float(seconds), int(serial))
        self._last_stamp = (stamp, key)
        return key

    def read(self, text: str, hint: int | None = None) -> tuple | None:
        """(record type, event key, payload) of a line in a common layout, or None for the general parser.

        The payload is the Denial fields of a kernel-layout AVC (None for an empty permission list; fields
        left out take the class defaults), and for any other record its body as it follows `):`, to be
        finished by `record.finish_body` when an event needs it. `hint` is the netlink message type.
        """
        if len(text) > MAX_LINE:
            return None
        prefix, found, rest = text.partition("audit(")
        if not found:
            return None
        known = self.prefixes.get(prefix) if hint is None else None
        if known is None:
            known = self._prefix(prefix, hint)
        if known is False:
            return None
        rtype, node = known
        if rtype == "AVC" or rtype == "UNKNOWN":
            # An AVC record, from after its `audit(`.
            match = _AVC.match(rest)
            if match is None:
                return None
            stamp, seconds, serial, result, perms, pid, comm, path, name, dev, ino = match.groups()
            tail = rest[match.end():]
            if "\x1d" in tail:
                tail = tail.partition("\x1d")[0]
            parts = self.tails.get(tail)
            if parts is None:
                parts = self._tail(tail)
            permissions = self.permissions.get(perms)
            if permissions is None:
                permissions = self._permissions(perms)
            if parts is False or permissions is False:
                return None
            key = (float(seconds), int(serial))
            self._last_stamp = (stamp, key)
            if not permissions:
                return "AVC", key, None
            scontext, tcontext, tclass, permissive = parts
            return "AVC", key, {
                "timestamp": key[0], "serial": key[1], "permissions": permissions, "scontext": scontext,
                "tcontext": tcontext, "tclass": tclass, "denied": result == "denied", "permissive": permissive,
                "pid": int(pid), "comm": comm, "path": path, "name": name, "dev": dev,
                "ino": None if ino is None else int(ino), "node": node}
        stamp, found, body = rest.partition("):")
        if not found:
            return None
        last = self._last_stamp
        key = last[1] if stamp == last[0] else self._key(stamp)
        if key is None:
            return None
        if rtype in COMPANION_TYPES or rtype == "EOE":
            return rtype, key, body
        if rtype in AVC_TYPES:
            return None  # USER_AVC: the general parser reads its inner text
        if "avc:" in body or "\x1c" in body or "\x1e" in body or "\x85" in body:
            # The general parser treats any record holding `avc:` (once \x1c \x1e \x85 are dropped) as an AVC.
            return None
        return rtype, key, body
