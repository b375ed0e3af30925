"""The agent's own SELinux module (deploy/selinux) built the way a node builds it: with the distribution's devel
Makefile and headers. For the targeted flavours those headers come from the same pinned sources as the guest's
policy (refpolicy's `make install-headers`, what selinux-policy-devel ships); for debian they are Debian's
selinux-policy-dev on the host, the same refpolicy release the guest runs.

The headers of a targeted flavour take about 40 s to make (minutes on a busy host), so they are cached beside
the images, keyed like the policy they describe (pinned sources and vm/targeted.py's recipe files), and shared
by vm-test and the host tests that build the module.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

import policy_sources
import targeted

VM_DIR = Path(__file__).resolve().parent
SOURCE_DIR = VM_DIR.parent / "deploy" / "selinux"
NAME = "selinux_mount_agent"
SOURCES = tuple(f"{NAME}.{ext}" for ext in ("te", "if", "fc"))
DEBIAN_DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")


def headers_key(flavour: str) -> str:
    digest = hashlib.sha256(policy_sources.key_material(flavour))
    for path in targeted.recipe_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def devel_makefile(flavour: str, cache: Path) -> Path:
    """The devel Makefile of the flavour's policy; its headers lie beside it (built and cached if needed)."""
    if flavour == "debian":
        if not DEBIAN_DEVEL_MAKEFILE.is_file():
            raise FileNotFoundError(f"{DEBIAN_DEVEL_MAKEFILE} is absent: install selinux-policy-dev")
        return DEBIAN_DEVEL_MAKEFILE
    done = cache / f"devel-{flavour}-{headers_key(flavour)}"
    include = done / "usr/share/selinux" / targeted.POLICY_NAME / "include"
    cache.mkdir(parents=True, exist_ok=True)
    # Its own lock: vm-test holds the cache's .lock while it calls this; the host tests build here too.
    with open(cache / ".devel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (include / "Makefile").is_file():
            _build_headers(flavour, cache, done)
    return include / "Makefile"


def _build_headers(flavour: str, cache: Path, done: Path) -> None:
    """Headers into `done`, renamed into place whole; older keys' headers of the flavour are removed."""
    work = cache / f"{done.name}.build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    targeted.headers(flavour, work, cache / "policy-src")
    shutil.rmtree(done, ignore_errors=True)
    (work / "devel").rename(done)
    shutil.rmtree(work)
    for old in cache.glob(f"devel-{flavour}-*"):
        if old != done and not old.name.endswith(".build"):
            shutil.rmtree(old, ignore_errors=True)


def build(makefile: Path, out: Path, source_dir: Path = SOURCE_DIR) -> Path:
    """selinux_mount_agent.pp from the module's .te/.if/.fc with that devel Makefile, built in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SOURCES:
        shutil.copy(source_dir / name, out / name)
    # The targeted headers' Makefile finds them through HEADERDIR and NAME (else /etc/selinux/config,
    # which the build host need not have); Debian's knows its own place.
    argv = ["make", "-s", "-f", str(makefile)]
    if makefile != DEBIAN_DEVEL_MAKEFILE:
        argv += [f"HEADERDIR={makefile.parent}", f"NAME={targeted.POLICY_NAME}"]
    result = subprocess.run([*argv, f"{NAME}.pp"], cwd=out, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {NAME}.pp with {makefile} failed:\n{result.stdout}{result.stderr}")
    return out / f"{NAME}.pp"


def package(flavour: str, cache: Path, out: Path) -> Path:
    """The module package for the flavour's guest, built with the flavour's own headers in a fresh `out`."""
    makefile = devel_makefile(flavour, cache)
    shutil.rmtree(out, ignore_errors=True)
    return build(makefile, out)
