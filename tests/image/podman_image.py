"""Build and run the project's image with podman, as CI does on a machine that reaches no container registry.

The base image the Dockerfile names (debian:bookworm-slim) is made here: `debootstrap --variant=minbase`, trimmed
the way Debian's slim images are (no docs, man pages or locales), imported under that name. Podman keeps its
own storage below the cache directory, so the base, the dependency layer and every unchanged layer survive
between runs: a rebuild after a source change reruns only the layers after `COPY agent`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/debian:bookworm-slim"
TAG = "localhost/selinux-mount-agent:test"
SUITE = "bookworm"
# Bounded limits for every container: runc cannot raise them past what this process may (some sandboxes
# refuse podman's defaults, the host's hard limits, with EPERM).
LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
MIRROR = "http://deb.debian.org/debian"
# What Debian's slim images leave out, kept out of every later apt-get install too.
SLIM_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
# ... and their apt settings: no package caches kept, no translations fetched.
APT_SETTINGS = {
    "docker-clean": 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };\n'
                    'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
}


def cache_root() -> Path:
    """$SMA_IMAGE_CACHE, else selinux-mount-agent/image in the user's cache directory (as vm/ keeps its own)."""
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.environ.get("SMA_IMAGE_CACHE") or os.path.join(user_cache, "selinux-mount-agent", "image"))


def podman(*args: str, check: bool = True, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    """podman on its own storage below the cache; runc (crun refuses the hybrid cgroup layout of some
    sandboxes), cgroupfs and file events (no systemd), never a pull."""
    root = cache_root()
    command = ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
               "--storage-driver", "overlay", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
               "--events-backend", "file", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[13:])} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result


def missing_tools() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building the image needs root (debootstrap, podman with --isolation=chroot)"
    for tool in ("podman", "debootstrap", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install podman runc debootstrap)"
    return None


def base_tarball() -> Path:
    """The slim Debian root as a tarball, made once and cached."""
    tarball = cache_root() / f"debian-{SUITE}-slim.tar"
    if tarball.exists():
        return tarball
    work = cache_root() / "base.build"
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    rootfs.mkdir(parents=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True)
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker-slim").write_text(SLIM_EXCLUDES)
    subprocess.run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), MIRROR], check=True,
                   capture_output=True, timeout=1800)
    # debootstrap unpacks its first packages without dpkg, so the excludes did not apply to them.
    for name, text in APT_SETTINGS.items():
        (rootfs / "etc/apt/apt.conf.d" / name).write_text(text)
    for leftover in ("usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt", "var/lib/apt/lists"):
        for child in (rootfs / leftover).glob("*"):
            _remove(child)
    for child in (rootfs / "usr/share/doc").glob("*/*"):
        if child.name != "copyright":
            _remove(child)
    partial = work / "rootfs.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
    partial.rename(tarball)
    shutil.rmtree(work)
    return tarball


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def ensure_base() -> None:
    """The Dockerfile's base image, imported under its name from the local tarball (no registry)."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    podman("import", "--change", 'CMD ["bash"]', str(base_tarball()), BASE)


def pip_cert_options() -> list[str]:
    """The CA bundle this machine's pip trusts (a TLS-intercepting proxy's), handed to the build's pip, which
    otherwise knows only its own CA list. Nothing when this machine's pip uses its own too."""
    bundle = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    if not bundle or not os.path.isfile(bundle):
        return []
    inside = "/run/build-ca/bundle.pem"
    return ["--volume", f"{bundle}:{inside}:ro", "--build-arg", f"PIP_CERT={inside}"]


def build(tag: str = TAG) -> float:
    """Build the Dockerfile at the project root; returns the seconds it took."""
    ensure_base()
    started = time.monotonic()
    podman("build", "--isolation=chroot", "--pull=never", "--layers", *LIMITS, *pip_cert_options(), "-t", tag,
           "-f", str(ROOT / "Dockerfile"), str(ROOT))
    return time.monotonic() - started


def inspect(tag: str = TAG) -> dict:
    (data,) = json.loads(podman("image", "inspect", tag).stdout)
    return data
