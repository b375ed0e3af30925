"""The default container labels of a node as values, and the pod file label kubelet builds from them.

go-selinux (`ContainerLabels`, `loadLabels`) takes the `process` and `file` entries of a contexts file.
Kubelet's `SELinuxOptionsToFileLabel` then calls `label.InitLabels`, which copies only `user` and `level` from the
pod into the file label: the role and type always come from the `file` entry (KEP-1710; reference §1.4).
Reading the files is `agent.node.contexts`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from agent.errors import InvalidInput, InvalidLabel
from agent.k8s.selinux_options import SELinuxOptions
from agent.label import Label

BUILTIN_PROCESS = "system_u:system_r:container_t:s0"
BUILTIN_FILE = "system_u:object_r:container_file_t:s0"


@dataclass(frozen=True)
class ContainerDefaults:
    """The `process` and `file` labels containers get on this node, and where they came from."""

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


def file_labels(mounts, defaults: ContainerDefaults) -> dict[str, Label | None]:
    """The label set kubelet collects for one volume (GetMountSELinuxLabel), by label text: the file label of
    each container that mounts it with effective seLinuxOptions. A container without options adds nothing;
    options that are present but empty add "" (kubelet inserts the empty label into the set)."""
    labels: dict[str, Label | None] = {}
    for use in mounts:
        if use.options is not None:
            label = file_label(use.options, defaults)
            labels.setdefault(label.text if label else "", label)
    return labels
