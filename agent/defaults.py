"""The node's default container labels, read the way go-selinux reads them, and the pod file label built
from them the way kubelet builds it.

go-selinux (`ContainerLabels`, `loadLabels`) reads `/usr/share/containers/selinux/contexts` first and
`<policy root>/contexts/lxc_contexts` second, taking the `process` and `file` entries. Kubelet's
`SELinuxOptionsToFileLabel` then calls `label.InitLabels`, which copies only `user` and `level` from the pod
into the file label: the role and type always come from the `file` entry (KEP-1710; reference §1.4).

Parsing and label building are pure; `load_node_defaults` is the one reader.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from agent.errors import InvalidInput, InvalidLabel
from agent.label import Label, Level, validate_identifier

CONTAINERS_CONTEXTS = "/usr/share/containers/selinux/contexts"
BUILTIN_PROCESS = "system_u:system_r:container_t:s0"
BUILTIN_FILE = "system_u:object_r:container_file_t:s0"


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


@dataclass(frozen=True, eq=False)
class ContainerDefaults:
    """The `process` and `file` labels containers get on this node, and where they came from.

    Compared by identity: a node has one set, and label building is memoised per set."""

    process: Label
    file: Label
    source: str

    def to_json(self) -> dict:
        return {"source": self.source, "process": self.process.text, "file": self.file.text}


BUILTIN_DEFAULTS = ContainerDefaults(Label.parse(BUILTIN_PROCESS), Label.parse(BUILTIN_FILE), "built-in")


def parse_contexts(text: str, source: str) -> ContainerDefaults:
    """Parse the `key = "value"` lines of lxc_contexts / containers' contexts file."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidInput(f"{source}:{number}: expected 'key = \"value\"', got {line!r}")
        entries[key.strip()] = value.strip().strip('"').strip("'")
    labels = {}
    for key in ("process", "file"):
        if key not in entries:
            raise InvalidInput(f"{source}: no '{key}' entry")
        try:
            labels[key] = Label.parse(entries[key], field_name=f"{key} entry of {source}")
        except InvalidLabel as err:
            raise InvalidInput(str(err)) from None
    return ContainerDefaults(labels["process"], labels["file"], source)


@functools.lru_cache(maxsize=4096)
def file_label(options: SELinuxOptions | None, defaults: ContainerDefaults) -> Label | None:
    """The file label kubelet computes for a container's effective options, or None for 'no label'.

    None for absent or all-empty options (kubelet's contextOptions gives no arguments, so ""). User and level
    come from the pod, role and type from the defaults' `file` entry. Without a level kubelet would use a
    level go-selinux invents in its own memory; callers must treat a label without the pod's level as
    ineligible for a context mount, so `level` stays None here when the pod sets none.
    """
    if options is None or options.empty:
        return None
    user = options.user or defaults.file.user
    level = options.level or None
    return Label.from_parts(user, defaults.file.role, defaults.file.type, level)


# --- reading the node (edge) -----------------------------------------------------------------------------

def _policy_root() -> str | None:
    try:
        import selinux  # libselinux bindings (Debian: python3-selinux)

        return selinux.selinux_policy_root()
    except Exception:
        pass
    try:
        with open("/etc/selinux/config", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                if key.strip() == "SELINUXTYPE" and value.strip():
                    return os.path.join("/etc/selinux", value.strip())
    except OSError:
        pass
    return None


def candidate_files() -> list[str]:
    files = [CONTAINERS_CONTEXTS]
    root = _policy_root()
    if root:
        files.append(os.path.join(root, "contexts", "lxc_contexts"))
    return files


def load_node_defaults(defaults_file: str | None = None) -> ContainerDefaults:
    """An explicit file wins; then the node's files in go-selinux's order; then the built-in defaults."""
    if defaults_file:
        try:
            with open(defaults_file, encoding="utf-8") as handle:
                return parse_contexts(handle.read(), defaults_file)
        except OSError as err:
            raise InvalidInput(f"cannot read defaults file {defaults_file}: {err.strerror}") from None
    for path in candidate_files():
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError:
            continue
        return parse_contexts(text, path)
    return BUILTIN_DEFAULTS
