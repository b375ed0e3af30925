"""The records of the shim's state, typed: what each table holds, checked field by field on load and on write.

The state file decides what the shim unmounts, detaches and deletes, so a record of the wrong shape must stop
the shim with a message that names it, not surface later as a KeyError halfway through an unpublish (which
then leaves kubelet free to unstage and delete under a live mount). `from_json` accepts exactly the fields
the shim writes, each of its type, and raises `RecordInvalid` naming table, key and field; `to_json` gives
back the same JSON object, so valid files of format version 1 load and save unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, ClassVar

from agent.errors import AgentError, InvalidInput
from agent.label import Label

PENDING = "pending"   # the step's intent is recorded; it may or may not have happened
DONE = "done"
STATUSES = (PENDING, DONE)
TABLES = ("volumes", "staged", "published")


class RecordInvalid(AgentError):
    """A record that is not what the shim writes. `table`, `key` and `field` (None: the record as a whole)
    say which."""

    def __init__(self, table: str, key, field: str | None, why: str):
        self.table, self.key, self.field, self.why = table, key, field, why
        where = f"{table}[{key!r}]" + (f".{field}" if field else "")
        super().__init__(f"{where}: {why}")


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# ---- field checks: None when the value fits, else why not ---------------------------------------------------

Check = Callable[[object], "str | None"]


def is_text(value) -> str | None:
    return None if isinstance(value, str) else f"is {_kind(value)}, not a string"


def is_name(value) -> str | None:
    return is_text(value) or (None if value else "is empty")


def is_absolute(value) -> str | None:
    if not isinstance(value, str):
        return f"is {_kind(value)}, not a path"
    return None if value.startswith("/") and "\0" not in value else f"{value!r} is not an absolute path"


def is_count(value) -> str | None:
    if type(value) is not int:  # noqa: E721 - bool is an int subclass and is refused
        return f"is {_kind(value)}, not a whole number"
    return None if value > 0 else f"{value} is not positive"


def is_flag(value) -> str | None:
    return None if type(value) is bool else f"is {_kind(value)}, not true or false"  # noqa: E721


def is_status(value) -> str | None:
    return None if value in STATUSES and isinstance(value, str) else f"{value!r} is not one of {STATUSES}"


def is_device_number(value) -> str | None:
    if not isinstance(value, str):
        return f"is {_kind(value)}, not \"major:minor\""
    return None if re.fullmatch(r"\d+:\d+", value) else f"{value!r} is not \"major:minor\""


def is_label(value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"is {_kind(value)}, not an SELinux context"
    try:
        Label.parse(value)
    except InvalidInput as err:
        return str(err)
    return None


def is_strings(value) -> str | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return f"is {_kind(value)}, not an array of strings"
    return None


def is_pod(value) -> str | None:
    """[namespace, name] from volume_context, or null when kubelet did not pass them."""
    if value is None:
        return None
    if is_strings(value) or len(value) != 2:
        return "is not null or [namespace, name]"
    return None


def optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def checked(check: Check):
    return dataclasses.field(metadata={"check": check})


# ---- records --------------------------------------------------------------------------------------------------

class Record:
    """Base of the typed records. Arrays are held as tuples (the records are frozen) and written as arrays."""

    TABLE: ClassVar[str]

    @classmethod
    def from_json(cls, value, key, table: str | None = None):
        table = table or cls.TABLE
        if not isinstance(value, dict):
            raise RecordInvalid(table, key, None, f"is {_kind(value)}, not an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for field in value:
            if field not in known:
                raise RecordInvalid(table, key, str(field), "is not a field of this record")
        for field in known.values():
            if field.name not in value:
                raise RecordInvalid(table, key, field.name, "is missing")
            why = field.metadata["check"](value[field.name])
            if why:
                raise RecordInvalid(table, key, field.name, why)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})

    def to_json(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ImageVolume(Record):
    """A volume of the built-in driver: a loop-mounted image file. `name` is the CO's CreateVolume name; ""
    when it is not known (a volume rebuilt by --recover-state), which no CreateVolume name matches."""

    TABLE: ClassVar[str] = "volumes"
    name: str = checked(is_text)
    capacity_bytes: int = checked(is_count)
    fs_type: str = checked(is_name)
    image: str = checked(is_absolute)
    status: str = checked(is_status)


@dataclass(frozen=True)
class DeviceVolume(Record):
    """A pre-provisioned volume on a given block device (volume_context `device`): never erased, only
    forgotten. `device_number` is what its mounts show in mountinfo."""

    TABLE: ClassVar[str] = "volumes"
    device: str = checked(is_absolute)
    device_number: str = checked(is_device_number)
    fs_type: str = checked(is_name)
    status: str = checked(is_status)


@dataclass(frozen=True)
class Staged(Record):
    """A NodeStageVolume: where, with which label and flags; `device` once the mount exists."""

    TABLE: ClassVar[str] = "staged"
    staging_path: str = checked(is_absolute)
    label: str | None = checked(is_label)
    mount_flags: tuple[str, ...] = checked(is_strings)
    fs_type: str = checked(is_name)
    device: str | None = checked(optional(is_absolute))
    status: str = checked(is_status)
    verification: str | None = checked(optional(is_text))


@dataclass(frozen=True)
class Published(Record):
    """A NodePublishVolume, keyed by target path. `staging_path` is null for a proxied backend that does not
    stage; `pod` is null when kubelet did not pass the pod (podInfoOnMount off, or rebuilt)."""

    TABLE: ClassVar[str] = "published"
    volume_id: str = checked(is_name)
    staging_path: str | None = checked(optional(is_absolute))
    label: str | None = checked(is_label)
    readonly: bool = checked(is_flag)
    mount_flags: tuple[str, ...] = checked(is_strings)
    pod: tuple[str, str] | None = checked(is_pod)
    status: str = checked(is_status)
    verification: str | None = checked(optional(is_text))
    action: str | None = checked(optional(is_text))


def volume_from_json(value, key) -> ImageVolume | DeviceVolume:
    """The volume table holds two kinds; a given device's record is the one with `device`."""
    kind = DeviceVolume if isinstance(value, dict) and "device" in value else ImageVolume
    return kind.from_json(value, key)


PARSERS = {"volumes": volume_from_json, "staged": Staged.from_json, "published": Published.from_json}
KEY_CHECKS = {"volumes": is_name, "staged": is_name, "published": is_absolute}


def parse(table: str, key, value) -> Record:
    """The typed record of `value` in `table` under `key`, or RecordInvalid."""
    why = KEY_CHECKS[table](key)
    if why:
        raise RecordInvalid(table, key, None, f"key {why}")
    return PARSERS[table](value, key)


def normalised(table: str, key, record) -> dict:
    """The JSON form of a record (typed, or already JSON) after checking it: what a table holds."""
    return parse(table, key, record.to_json() if isinstance(record, Record) else record).to_json()
