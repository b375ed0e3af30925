"""SELinux security contexts as values: parse, canonicalise, validate, and the `context=` mount-option form.

Pure code. Canonical form is the one the kernel prints (`security/selinux/ss/mls.c`, `mls_sid_to_context`):
categories sorted, a run of two written `cA,cB`, a run of three or more `cA.cB`, and a range whose high level
equals its low level written as the low level alone. Two labels are equal exactly when the kernel would store
the same context for them, so `s0:c2,c1`, `s0:c1.c2` and `s0:c1,c2-s0:c1,c2` are one label (while
`s0-s0:c1,c2` is the range from `s0` to `s0:c1,c2`, another label).

The grammar is strict on purpose: a label ends up inside a mount option string, so anything that could
close the quotes or start another option (quotes, commas outside the category list, `=`, whitespace, NUL)
is refused with an error naming the field and the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from agent.errors import InvalidLabel

MAX_CONTEXT_BYTES = 4096
# Category and sensitivity numbers are bounded so that a hostile range cannot make a huge bit set;
# real policies use c0..c1023 and s0..s15.
MAX_CATEGORY = 65535
MAX_SENSITIVITY = 65535

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
_PLAIN = re.compile(r"[A-Za-z0-9_.:\-]*\Z")  # nothing that needs a closer look (commas aside)
_SENSITIVITY = re.compile(r"s([0-9]+)\Z")
_CATEGORY = re.compile(r"c([0-9]+)\Z")


def _number(match: re.Match, limit: int, field_name: str, value: str, whole: str) -> int:
    digits = match.group(1)
    if len(digits) > 1 and digits.startswith("0"):
        raise InvalidLabel(field_name, whole, f"{value!r} has a leading zero")
    number = int(digits)
    if number > limit:
        raise InvalidLabel(field_name, whole, f"{value!r} is above the limit {limit}")
    return number


def _format_categories(bits: int) -> str:
    """Write a category bit set the way the kernel does."""
    parts = []
    index = 0
    while bits >> index:
        if not (bits >> index) & 1:
            # Skip a run of zero bits quickly.
            rest = bits >> index
            index += (rest & -rest).bit_length() - 1
            continue
        start = index
        while (bits >> (index + 1)) & 1:
            index += 1
        run = index - start + 1
        if run == 1:
            parts.append(f"c{start}")
        elif run == 2:
            parts.append(f"c{start},c{index}")
        else:
            parts.append(f"c{start}.c{index}")
        index += 1
    return ",".join(parts)


@dataclass(frozen=True)
class SensitivityLevel:
    """One end of an MLS range: a sensitivity and a set of categories (a bit set, bit N = cN)."""

    sensitivity: int
    categories: int = 0

    def dominates(self, other: "SensitivityLevel") -> bool:
        return self.sensitivity >= other.sensitivity and (other.categories & ~self.categories) == 0

    def category_numbers(self) -> tuple[int, ...]:
        bits, out, index = self.categories, [], 0
        while bits:
            if bits & 1:
                out.append(index)
            bits >>= 1
            index += 1
        return tuple(out)

    def __str__(self) -> str:
        cats = _format_categories(self.categories)
        return f"s{self.sensitivity}:{cats}" if cats else f"s{self.sensitivity}"

    @classmethod
    def parse(cls, text: str, whole: str, field_name: str = "level") -> "SensitivityLevel":
        sens_text, sep, cats_text = text.partition(":")
        match = _SENSITIVITY.match(sens_text)
        if not match:
            raise InvalidLabel(field_name, whole, f"{sens_text!r} is not a sensitivity like s0")
        sensitivity = _number(match, MAX_SENSITIVITY, field_name, sens_text, whole)
        if not sep:
            return cls(sensitivity)
        if not cats_text:
            raise InvalidLabel(field_name, whole, "empty category list after ':'")
        bits = 0
        for item in cats_text.split(","):
            first, dot, last = item.partition(".")
            start_match = _CATEGORY.match(first)
            if not start_match:
                raise InvalidLabel(field_name, whole, f"{item!r} is not a category like c5 or a range like c0.c9")
            start = _number(start_match, MAX_CATEGORY, field_name, first, whole)
            end = start
            if dot:
                end_match = _CATEGORY.match(last)
                if not end_match:
                    raise InvalidLabel(field_name, whole, f"{item!r} is not a category range like c0.c9")
                end = _number(end_match, MAX_CATEGORY, field_name, last, whole)
                if end <= start:
                    # The kernel refuses a range whose end is not above its start (mls_context_to_sid).
                    raise InvalidLabel(field_name, whole, f"category range {item!r} does not go upwards")
            bits |= ((1 << (end - start + 1)) - 1) << start
        return cls(sensitivity, bits)


@dataclass(frozen=True)
class Level:
    """An MLS/MCS level or range, `low[-high]`. `high` is None when it equals `low` (canonical form)."""

    low: SensitivityLevel
    high: SensitivityLevel | None = None

    def __post_init__(self):
        if self.high is not None and self.high == self.low:
            object.__setattr__(self, "high", None)

    def __str__(self) -> str:
        return self.canonical

    @cached_property
    def canonical(self) -> str:
        """The kernel's spelling, made once per value: denials of one pod share one Level and ask again."""
        return str(self.low) if self.high is None else f"{self.low}-{self.high}"

    @property
    def categories(self) -> tuple[int, ...]:
        """Categories of the low (effective) level, as numbers."""
        return self.low.category_numbers()

    @classmethod
    def parse(cls, text: str, field_name: str = "level") -> "Level":
        _check_characters(field_name, text, allow_comma=True)
        if not text:
            raise InvalidLabel(field_name, text, "empty")
        low_text, dash, high_text = text.partition("-")
        low = SensitivityLevel.parse(low_text, text, field_name)
        if not dash:
            return cls(low)
        if "-" in high_text:
            raise InvalidLabel(field_name, text, "more than one '-' in the range")
        high = SensitivityLevel.parse(high_text, text, field_name)
        if not high.dominates(low):
            raise InvalidLabel(field_name, text, f"high level {high} does not dominate low level {low}")
        return cls(low, high)


def canonical_level(level: Level | str | None) -> str | None:
    """A level in the kernel's spelling (`s0:c2,c1` → `s0:c1,c2`), from a `Level` or its text; None when there
    is none or the text does not parse. The one place a level is canonicalised for comparison as text."""
    if level is None:
        return None
    if isinstance(level, str):
        try:
            level = Level.parse(level)
        except InvalidLabel:
            return None
    return level.canonical


def _check_characters(field_name: str, value, allow_comma: bool = False) -> None:
    """Refuse early, with a precise reason, anything that could escape a mount option string."""
    if not isinstance(value, str):
        raise InvalidLabel(field_name, value, f"must be a string, not {type(value).__name__}")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_CONTEXT_BYTES:
        raise InvalidLabel(field_name, value, f"longer than {MAX_CONTEXT_BYTES} bytes")
    if _PLAIN.match(value.replace(",", "") if allow_comma else value):
        return
    for char, why in (
        ("\0", "contains a NUL byte"),
        ('"', "contains a double quote"),
        ("'", "contains a single quote"),
        ("\\", "contains a backslash"),
        ("=", "contains '='"),
    ):
        if char in value:
            raise InvalidLabel(field_name, value, why)
    if any(ch.isspace() for ch in value):
        raise InvalidLabel(field_name, value, "contains whitespace or a newline")
    if not allow_comma and "," in value:
        raise InvalidLabel(field_name, value, "contains ',' outside the category list")
    if not value.isascii() or not value.isprintable():
        raise InvalidLabel(field_name, value, "contains a non-printable or non-ASCII character")


def validate_identifier(field_name: str, value: str) -> str:
    """Check one of user, role or type; returns it unchanged."""
    _check_characters(field_name, value)
    if not value:
        raise InvalidLabel(field_name, value, "empty")
    if not _IDENTIFIER.match(value):
        raise InvalidLabel(field_name, value, "not an SELinux identifier (letters, digits, '_', '.', '-')")
    return value


@dataclass(frozen=True)
class Label:
    """A full security context `user:role:type[:level]`.

    Equality and hashing use the canonical parts only; `text` keeps the spelling it was built from, because
    kubelet sends the pod's own spelling to the CSI driver and we must reproduce that byte for byte.
    """

    user: str
    role: str
    type: str
    level: Level | None
    text: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        if not self.text:
            object.__setattr__(self, "text", self.canonical)

    @property
    def canonical(self) -> str:
        base = f"{self.user}:{self.role}:{self.type}"
        return base if self.level is None else f"{base}:{self.level}"

    def __str__(self) -> str:
        return self.canonical

    @classmethod
    def parse(cls, text: str, field_name: str = "context") -> "Label":
        _check_characters(field_name, text, allow_comma=True)
        parts = text.split(":", 3)
        if len(parts) < 3:
            raise InvalidLabel(field_name, text, "needs at least user:role:type")
        user, role, type_ = parts[:3]
        for name, value in (("user", user), ("role", role), ("type", type_)):
            if "," in value:
                raise InvalidLabel(field_name, text, f"{name} {value!r} contains ',' outside the category list")
            try:
                validate_identifier(name, value)
            except InvalidLabel as err:
                raise InvalidLabel(field_name, text, f"{name} {value!r}: {err.why}") from None
        level = None
        if len(parts) == 4:
            try:
                level = Level.parse(parts[3])
            except InvalidLabel as err:
                raise InvalidLabel(field_name, text, f"level {parts[3]!r}: {err.why}") from None
        return cls(user, role, type_, level, text)

    @classmethod
    def from_parts(cls, user: str, role: str, type_: str, level: str | None) -> "Label":
        """Build a label from separately validated parts, keeping the level's own spelling in `text`."""
        for name, value in (("user", user), ("role", role), ("type", type_)):
            validate_identifier(name, value)
        if level is None:
            return cls(user, role, type_, None, f"{user}:{role}:{type_}")
        parsed = Level.parse(level)
        return cls(user, role, type_, parsed, f"{user}:{role}:{type_}:{level}")

    def to_json(self) -> str:
        return self.text


# --- the `context=` mount option -------------------------------------------------------------------------

_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f",
               "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def go_quote(text: str) -> str:
    """Go's `%q` / strconv.Quote for the characters a label could hold (kubelet formats with it)."""
    out = []
    for char in text:
        if char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x80 else f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def context_mount_option(label: Label) -> str:
    """The one mount flag kubelet appends: `context="<label>"` (pkg/volume/util AddSELinuxMountOption).

    Only a parsed, validated Label is accepted, so a malformed string can never reach a mount option.
    """
    if not isinstance(label, Label):
        raise TypeError("context_mount_option takes a Label; parse the text with Label.parse first")
    return "context=" + go_quote(label.text)


CONTEXT_OPTION_KEYS = ("context", "fscontext", "defcontext", "rootcontext")


def parse_context_option(option: str) -> tuple[str, Label] | None:
    """Parse one mount option such as `context="u:r:t:s0:c1,c2"`; None if it is not a context option.

    Accepts the quoted form (kubelet, the kernel's mountinfo) and the bare form a person might type when the
    label has no comma. Raises InvalidLabel when it is a context option with a bad value.
    """
    key, sep, value = option.partition("=")
    if not sep or key not in CONTEXT_OPTION_KEYS:
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return key, Label.parse(value, field_name=f"{key} mount option")
