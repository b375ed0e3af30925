"""Debian packages the host needs to build and boot the enforcing guest, installed when missing."""

from __future__ import annotations

import os
import subprocess
import sys

HOST_PACKAGES = (
    "debootstrap",
    "qemu-system-x86",
    "qemu-utils",
    "selinux-policy-dev",   # /usr/share/selinux/devel/Makefile and the refpolicy interface headers
    "selinux-policy-src",   # the container module's source (not built into selinux-policy-default)
    "checkpolicy",
    "semodule-utils",
    "policycoreutils",      # setfiles, to label the guest's root filesystem offline
    "m4",
    "make",
    "zstd",
    "tar",
    "e2fsprogs",
    "xfsprogs",
)


def missing(packages=HOST_PACKAGES) -> list[str]:
    out = []
    for package in packages:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                capture_output=True, text=True)
        if result.returncode != 0 or "install ok installed" not in result.stdout:
            out.append(package)
    return out


def ensure(packages=HOST_PACKAGES) -> None:
    """apt-get install whatever is missing (we run as root; the index is refreshed first)."""
    needed = missing(packages)
    if not needed:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing host packages {' '.join(needed)}; install them or run as root")
    print(f"installing host packages: {' '.join(needed)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *needed], check=True, env=env)
