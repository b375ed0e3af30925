"""The node's default container labels, read the way go-selinux reads them.

go-selinux (`ContainerLabels`, `loadLabels`) reads `/usr/share/containers/selinux/contexts` first and
`<policy root>/contexts/lxc_contexts` second; the built-in defaults apply when neither is there.
"""

from __future__ import annotations

import os

from agent.errors import InvalidInput
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS, ContainerDefaults, parse_contexts

CONTAINERS_CONTEXTS = "/usr/share/containers/selinux/contexts"


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
