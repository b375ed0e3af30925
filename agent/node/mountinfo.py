"""`/proc/self/mountinfo` as values, and mount option lists split the way the kernel writes them.

The parser is pure; `read_mountinfo()` is the one small reader. The kernel prints the SELinux context in the
super options quoted, `context="system_u:object_r:container_file_t:s0:c1,c2"`, so option lists are split on
commas outside double quotes. Paths come octal-escaped (`\\040` for a space) and are unescaped here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.label import Label, parse_context_option

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape_path(text: str) -> str:
    """Undo the kernel's octal escapes (space, tab, newline, backslash) in mountinfo paths."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def split_options(text: str) -> list[str]:
    """Split a comma-separated option list, keeping commas inside double quotes."""
    out, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    if current or out:
        out.append("".join(current))
    return [option for option in out if option]


def context_from_options(options) -> Label | None:
    """The `context=` label among mount options (a list, or one comma-separated string), or None."""
    if isinstance(options, str):
        options = split_options(options)
    found = None
    for option in options:
        parsed = parse_context_option(option)
        if parsed and parsed[0] == "context":
            found = parsed[1]
    return found


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo (proc(5))."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    @property
    def context(self) -> Label | None:
        """The superblock's `context=` label, if it was mounted with one."""
        return context_from_options(self.super_options)

    @property
    def seclabel(self) -> bool:
        """True when the filesystem stores per-file labels (kubelet's test for 'relabel is possible')."""
        return "seclabel" in self.super_options or "seclabel" in self.mount_options

    @property
    def read_only(self) -> bool:
        return "ro" in self.mount_options


def parse_line(line: str) -> Mount:
    fields = line.rstrip("\n").split(" ")
    try:
        separator = fields.index("-", 6)
        return Mount(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            major_minor=fields[2],
            root=unescape_path(fields[3]),
            mount_point=unescape_path(fields[4]),
            mount_options=tuple(split_options(fields[5])),
            optional_fields=tuple(fields[6:separator]),
            fstype=fields[separator + 1],
            source=unescape_path(fields[separator + 2]),
            super_options=tuple(split_options(fields[separator + 3]) if len(fields) > separator + 3 else ()),
        )
    except (ValueError, IndexError) as err:
        raise ValueError(f"not a mountinfo line: {line.strip()!r}") from err


def parse_mountinfo(text: str) -> list[Mount]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[Mount]:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return parse_mountinfo(handle.read())


def escape_path(path: str) -> str:
    """The kernel's spelling of a path in mountinfo (the inverse of `unescape_path`)."""
    if not any(char in path for char in " \t\n\\"):
        return path
    return "".join(f"\\{ord(char):03o}" if char in " \t\n\\" else char for char in path)


def find_mount_in_text(text: str, mount_point: str) -> Mount | None:
    """`find_mount(parse_mountinfo(text), mount_point)` without parsing every line: the CSI calls that check
    one mount after mounting it would otherwise pay for the whole table, which grows with the node's pods."""
    field = escape_path(mount_point)
    needle = f" {field} "
    found, start = None, 0
    while (index := text.find(needle, start)) >= 0:
        line_start = text.rfind("\n", 0, index) + 1
        line_end = text.find("\n", index)
        if line_end < 0:
            line_end = len(text)
        line = text[line_start:line_end]
        fields = line.split(" ", 5)
        if len(fields) > 5 and fields[4] == field:  # the needle may also be the root field
            found = line
        start = line_end
    return parse_line(found) if found is not None else None


def read_mount_at(mount_point: str, path: str = "/proc/self/mountinfo") -> Mount | None:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return find_mount_in_text(handle.read(), mount_point)


def find_mount(mounts: list[Mount], mount_point: str) -> Mount | None:
    """The topmost mount at `mount_point` (the last one listed wins, as in the kernel's view)."""
    found = None
    for mount in mounts:
        if mount.mount_point == mount_point:
            found = mount
    return found
