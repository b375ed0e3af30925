"""Text from audit records, made safe to print on a terminal.

`comm`, `path` and `name` in an AVC record are whatever bytes a process chose (the kernel hex-encodes them
when they hold odd bytes, kernel/audit.c audit_log_untrustedstring, and the reader decodes them). Printed raw,
an ESC or a C1 control starts a terminal escape sequence that can retitle, clear or rewrite the screen, and a
bidi override reorders what follows. Text output therefore shows every character that is not printable
(C0, DEL, C1, format and separator characters) as a Python-style escape, and a backslash as `\\`, so the
escaped form always reads back unambiguously. JSON output needs none of this: it escapes controls itself
and keeps the values exact.
"""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text) -> str:
    """`text` (anything, as str()) with backslashes doubled and non-printable characters escaped."""
    text = str(text)
    if text.isprintable() and "\\" not in text:
        return text  # the common case, one pass in C
    return "".join("\\\\" if char == "\\" else char if char.isprintable() else _escape(char) for char in text)
