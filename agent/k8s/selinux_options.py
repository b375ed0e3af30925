"""`seLinuxOptions` of a pod or container: the API value, read from its dict and checked with the label grammar."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from agent.errors import InvalidInput, InvalidLabel
from agent.label import Level, validate_identifier


@dataclass(frozen=True)
class SELinuxOptions:
    """A pod's or container's `seLinuxOptions`; empty strings are unset fields, as in the API."""

    user: str = ""
    role: str = ""
    type: str = ""
    level: str = ""

    @property
    def empty(self) -> bool:
        return not (self.user or self.role or self.type or self.level)

    @classmethod
    def from_api(cls, obj, where: str) -> "SELinuxOptions | None":
        """From the API dict; None when the field is absent (null), which differs from `{}`."""
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise InvalidInput(f"{where}: seLinuxOptions must be an object")
        values = {}
        for key in ("user", "role", "type", "level"):
            value = obj.get(key) or ""
            if not isinstance(value, str):
                raise InvalidInput(f"{where}: seLinuxOptions.{key} must be a string")
            values[key] = value
        return cls(**values)

    def validate(self, where: str) -> None:
        """Check every set field with the label grammar; errors name the object and the field."""
        try:
            _validate_options(self)
        except InvalidLabel as err:
            raise InvalidLabel(f"{err.field} in {where} seLinuxOptions", err.value, err.why) from None


@functools.lru_cache(maxsize=4096)
def _validate_options(options: SELinuxOptions) -> None:
    for name in ("user", "role", "type"):
        if getattr(options, name):
            validate_identifier(name, getattr(options, name))
    if options.level:
        Level.parse(options.level)
