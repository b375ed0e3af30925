"""The three KEP-1710 feature gates, their defaults per Kubernetes version, and overrides.

Pure code. Source: `pkg/features/kube_features.go` (v1.36.3) and the KEP's kep.yaml for 1.37; the names of the other
gates each release knows: agent/kubelet/gate_names.py.
A gate that does not exist yet in a version, or a locked GA gate set to false, is refused the way kubelet
refuses it at start-up, so `explain` never answers for a configuration no real node can have.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from agent.errors import InvalidFeatureGates
from agent.kubelet.gate_names import CHECKED_MINORS, FIRST_RELEASE, known_in

RWOP = "SELinuxMountReadWriteOncePod"
CHANGE_POLICY = "SELinuxChangePolicy"
MOUNT = "SELinuxMount"
GATE_NAMES = (RWOP, CHANGE_POLICY, MOUNT)

SUPPORTED_MINORS = range(28, 38)  # 1.28 .. 1.37
# The release `explain`, `audit` and `controller` answer for unless told otherwise: the one the README's
# commands name, where SELinuxMount is on by default.
DEFAULT_VERSION = "1.37"

# (first minor, stage, default, locked) in order; a gate is absent before its first entry.
_HISTORY = {
    RWOP: [(25, "alpha", False, False), (27, "beta", False, False), (28, "beta", True, False),
           (36, "GA", True, True)],
    CHANGE_POLICY: [(32, "alpha", False, False), (33, "beta", True, False), (36, "GA", True, True)],
    MOUNT: [(30, "alpha", False, False), (33, "beta", False, False), (37, "GA", True, True)],
}


def parse_version(text: str) -> int:
    """'1.36', 'v1.36.3' -> 36 (the minor). Only 1.28-1.37 are modelled."""
    match = re.fullmatch(r"v?1\.(\d+)(?:\.\d+)?", text.strip())
    if not match:
        raise InvalidFeatureGates(f"Kubernetes version {text!r} is not of the form 1.MINOR[.PATCH]")
    minor = int(match.group(1))
    if minor not in SUPPORTED_MINORS:
        raise InvalidFeatureGates(
            f"Kubernetes version {text!r} is outside the modelled range "
            f"1.{SUPPORTED_MINORS.start}-1.{SUPPORTED_MINORS.stop - 1}")
    return minor


def gate_stage(name: str, minor: int) -> tuple[str, bool, bool] | None:
    """(stage, default, locked) of a gate in a version, or None when the gate does not exist there."""
    found = None
    for first, stage, default, locked in _HISTORY[name]:
        if minor >= first:
            found = (stage, default, locked)
    return found


@dataclass(frozen=True)
class FeatureGates:
    """Effective gate values for one Kubernetes version. Absent gates are False."""

    minor: int
    rwop: bool
    change_policy: bool
    mount: bool

    @property
    def version(self) -> str:
        return f"1.{self.minor}"

    @property
    def mount_effective(self) -> bool:
        """SELinuxMount only acts with SELinuxMountReadWriteOncePod on (KEP: otherwise 'invalid configuration,
        kubelet behaves as if SELinuxMount == false')."""
        return self.mount and self.rwop

    def as_dict(self) -> dict[str, bool]:
        return {RWOP: self.rwop, CHANGE_POLICY: self.change_policy, MOUNT: self.mount}

    def describe(self) -> str:
        return " ".join(f"{name}={'true' if value else 'false'}" for name, value in self.as_dict().items())


def parse_overrides(text: str | None) -> dict[str, bool]:
    """'Gate=true,Other=false' -> {'Gate': True, 'Other': False} (kubelet's --feature-gates syntax)."""
    overrides: dict[str, bool] = {}
    if not text:
        return overrides
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if not sep or value not in ("true", "false"):
            raise InvalidFeatureGates(f"feature gate setting {item!r} is not of the form Name=true|false")
        overrides[name] = value == "true"
    return overrides


def resolve(version: str = DEFAULT_VERSION, overrides: dict[str, bool] | None = None) -> FeatureGates:
    minor = parse_version(version)
    values = {}
    for name in GATE_NAMES:
        stage = gate_stage(name, minor)
        values[name] = bool(stage and stage[1])
    for name, value in (overrides or {}).items():
        if name not in GATE_NAMES:
            close = difflib.get_close_matches(name, GATE_NAMES, n=1, cutoff=0.8)
            if close:
                # A misspelt SELinux gate: kubelet refuses a gate it does not know (component-base featuregate
                # `Set`: "unrecognized feature gate"); ignoring it would answer for a node that cannot exist.
                raise InvalidFeatureGates(f"unrecognized feature gate: {name} (did you mean {close[0]}?)")
            _check_other_gate(name, minor)  # it changes no decision, but kubelet refuses a name it does not know
            continue
        stage = gate_stage(name, minor)
        if stage is None:
            raise InvalidFeatureGates(f"unrecognized feature gate: {name} (it does not exist in 1.{minor})")
        if stage[2] and value != stage[1]:
            raise InvalidFeatureGates(
                f"cannot set feature gate {name} to {str(value).lower()}, feature is locked to "
                f"{str(stage[1]).lower()} in 1.{minor}")
        values[name] = value
    return FeatureGates(minor, values[RWOP], values[CHANGE_POLICY], values[MOUNT])


def _check_other_gate(name: str, minor: int) -> None:
    """Refuse a gate name kubelet 1.`minor` does not know (component-base featuregate `Set`: "unrecognized
    feature gate"), with the closest name it knows; agent/kubelet/gate_names.py says where the names come from."""
    if minor not in CHECKED_MINORS:
        return  # no list of names for that release: only the SELinux gates are checked
    first = FIRST_RELEASE.get(name)
    if first is not None and first <= minor:
        return
    if first is not None:
        raise InvalidFeatureGates(f"unrecognized feature gate: {name} (it does not exist in 1.{minor}; it appears "
                                  f"in 1.{first})")
    close = difflib.get_close_matches(name, known_in(minor), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else f" (not a feature gate of Kubernetes 1.{minor})"
    raise InvalidFeatureGates(f"unrecognized feature gate: {name}{hint}")
