"""Shared test set-up: markers that need something this machine may lack are skipped with the reason.

`root`: needs uid 0. `loop`: needs loop devices (/dev/loop-control) and mkfs. `enforcing`: needs an SELinux
kernel in enforcing mode, which only the CI guest (`make vm-test`) or a Vagrant machine has.
"""

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# Property tests check results, never speed: on a loaded machine (CI, parallel builds) an example may take
# longer than Hypothesis's default 200 ms deadline, or data generation may look slow. Neither is a failure.
settings.register_profile("project", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("project")


def _enforcing() -> bool:
    try:
        with open("/sys/fs/selinux/enforce", encoding="ascii") as handle:
            return handle.read().strip() == "1"
    except OSError:
        return False


def _missing(marker: str) -> str | None:
    if marker == "root" and os.geteuid() != 0:
        return "needs root (uid 0)"
    if marker == "loop":
        if os.geteuid() != 0:
            return "needs root for loop devices"
        if not os.path.exists("/dev/loop-control"):
            return "no loop devices (/dev/loop-control is absent)"
        if not shutil.which("mkfs.ext4"):
            return "mkfs.ext4 is not installed"
    if marker == "enforcing" and not _enforcing():
        return "needs an SELinux kernel in enforcing mode (run `make vm-test`)"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("root", "loop", "enforcing"):
            if item.get_closest_marker(marker):
                reason = _missing(marker)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))
                    break
