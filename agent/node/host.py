"""This node's SELinux state, through libselinux when it is there.

The only module besides `defaults` that asks the running system about SELinux, so the decision code can stay
pure and every caller sees the same answer.
"""

from __future__ import annotations

import os

from agent.errors import InvalidLabel
from agent.label import Label

SELINUXFS = "/sys/fs/selinux"


def _bindings():
    try:
        import selinux

        return selinux
    except Exception:
        return None


def selinux_enabled() -> bool:
    """True when the kernel has SELinux and a policy is loaded (libselinux's is_selinux_enabled)."""
    binding = _bindings()
    if binding is not None:
        try:
            return bool(binding.is_selinux_enabled())
        except OSError:
            return False
    return os.path.exists(os.path.join(SELINUXFS, "enforce"))


def context_accepted(label: Label) -> bool | None:
    """Whether the loaded policy accepts the context; None when this node cannot tell (no SELinux)."""
    if not selinux_enabled():
        return None
    binding = _bindings()
    if binding is None:
        return None
    try:
        return binding.security_check_context(label.canonical) == 0
    except OSError:
        return False


def check_context(label: Label) -> None:
    """Ask the loaded policy whether the context is valid (security_check_context); a no-op without SELinux.

    The grammar check in `agent.label` already ran; this catches names the policy does not know, such as a
    type or a category that does not exist.
    """
    if context_accepted(label) is False:
        raise InvalidLabel("context", label.text, "the loaded SELinux policy does not accept it")
