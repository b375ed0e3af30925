"""Whole numbers from text: ASCII digits only, bounded before they are converted.

str.isdigit() is also true for superscripts ("²", which int() then refuses with a ValueError), and int() also
reads other scripts' digits ("٣" is 3), full-width digits, a sign, spaces and underscores ("1_000"). Text that
names a port, a group id or a count is written by programs in ASCII (kubelet's strconv.FormatInt for
volume_mount_group), so anything else is not a number here.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")


def ascii_decimal(text, maximum: int) -> int | None:
    """The value of `text` when it is ASCII digits only and at most `maximum`; None otherwise. The length is
    checked first, so a huge string is never converted (int() refuses more than 4300 digits with an error)."""
    if not isinstance(text, str) or len(text) > len(str(maximum)) or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None
