"""The per-run disks of the enforcing guest: the project tree, the test volumes, and an empty results disk.

The project disk is an ext4 image made with `mkfs.ext4 -d` from a copy of the tree: the files git knows
about (tracked, and untracked but not ignored) plus in-tree built extension modules (`*.so`, ignored by
git), so that a C extension built on the host with /usr/bin/python3 travels with the project. The guest's
python3 is the same Debian 3.11, so such a module loads there. If setup.py declares extensions, they are
built into the copy (never into the working tree) unless the run asks not to.

The guest mounts the project and volume disks with one `context=` label (vm/guest/init), so they need no
labels of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
PROJECT = VM_DIR.parent
SYSTEM_PYTHON = "/usr/bin/python3"
RESULTS_MB = 64


def _mkfs_ext4(image: Path, tree: Path, size_mb: int, label: str) -> None:
    """An ext4 image holding a copy of `tree` (sparse files stay sparse)."""
    with open(image, "wb") as handle:
        handle.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(tree), str(image)], check=True)


def _project_files(project: Path) -> list[str]:
    listed = subprocess.run(["git", "-C", str(project), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    files = {name for name in listed.decode().split("\0") if name}
    # Built extension modules are ignored by git but belong with the code they extend.
    for package in ("agent", "csi_shim"):
        for built in (project / package).rglob("*.so"):
            files.add(str(built.relative_to(project)))
    return sorted(f for f in files if (project / f).is_file() and not f.startswith(".vm-run/"))


def _build_extensions(tree: Path) -> None:
    """Build setup.py's extensions in place in the copy, with the interpreter the guest also has."""
    setup = tree / "setup.py"
    if not setup.exists() or "Extension(" not in setup.read_text():
        return
    print("== disks: building C extensions into the project copy", flush=True)
    result = subprocess.run([SYSTEM_PYTHON, "setup.py", "-q", "build_ext", "--inplace",
                             "--build-temp", str(tree.parent / "build-temp")],
                            cwd=tree, capture_output=True, text=True)
    if result.returncode != 0:
        # Not fatal: tests that need the extension report it themselves; the rest still run.
        print(f"== disks: extension build failed, continuing without it:\n{result.stderr[-2000:]}",
              file=sys.stderr, flush=True)
    shutil.rmtree(tree / "build", ignore_errors=True)


# Python packages Debian's guest ships too old for the checked-in CSI stubs (protobuf >= 7, grpcio >= 1.85) and
# for the audit reader (pyroute2 0.9's socket core; bookworm has 0.7), copied from the host's venv (same Python
# 3.11, same glibc) into .vm-run/site, which run-tests puts first on PYTHONPATH. Module name -> directory below
# site-packages.
GUEST_SITE_PACKAGES = {"grpc": "grpc", "google.protobuf": "google/protobuf", "pyroute2": "pyroute2"}
OPTIONAL_SITE_DIRS = ("google/_upb",)  # protobuf's C core, present in binary wheels
UDICA_TEMPLATES = "usr/share/udica/templates"  # below site-packages: udica's absolute data_files land there
# What the venv must hold, checked in one interpreter run: each module's import, pyroute2's version (the guest
# would otherwise fall back to bookworm's 0.7, whose API the audit reader does not speak) and the templates.
_PROBE = """
import importlib, json, os, sys
found, missing = {}, []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except Exception as err:
        missing.append(f"{name} ({type(err).__name__}: {err})")
        continue
    found[name] = os.path.dirname(module.__file__)
try:
    from importlib.metadata import version
    if not version("pyroute2").startswith("0.9"):
        missing.append("pyroute2 0.9 (the venv has " + version("pyroute2") + ")")
except Exception:
    pass
print(json.dumps({"found": found, "missing": missing}))
"""


class VenvIncomplete(RuntimeError):
    """The venv lacks what the guest needs; the message names it and how to get it."""


def venv_python() -> Path:
    """The project's venv interpreter (`make deps` makes it), or $SMA_VM_VENV_PYTHON."""
    return Path(os.environ.get("SMA_VM_VENV_PYTHON") or PROJECT / ".venv/bin/python")


def venv_site(python: Path | None = None) -> Path:
    """The venv's site-packages, after checking it holds every package and the templates the guest needs."""
    python = python or venv_python()
    if not python.exists():
        raise VenvIncomplete(f"no {python}: run `make deps` (or `make vm-test`, which runs it) first")
    probe = subprocess.run([str(python), "-c", _PROBE, *GUEST_SITE_PACKAGES], capture_output=True, text=True)
    if probe.returncode != 0:
        raise VenvIncomplete(f"{python} does not run: {probe.stderr.strip()[-200:]}")
    answer = json.loads(probe.stdout)
    missing = list(answer["missing"])
    site = Path(answer["found"]["grpc"]).parent if "grpc" in answer["found"] else None
    if site is not None and not (site / UDICA_TEMPLATES / "base_container.cil").is_file():
        missing.append(f"udica 0.2.2's templates ({site / UDICA_TEMPLATES}/base_container.cil)")
    if missing or site is None:
        raise VenvIncomplete(f"the venv lacks what the guest needs: {'; '.join(missing)}; "
                             f"run `make deps` (pip install -e '.[test]')")
    return site


def _site_packages(site_dir: Path) -> None:
    root = venv_site()
    for directory in (*GUEST_SITE_PACKAGES.values(), *OPTIONAL_SITE_DIRS):
        if (root / directory).is_dir():
            shutil.copytree(root / directory, site_dir / directory, ignore=shutil.ignore_patterns("__pycache__"))
    # container-selinux's CIL templates as udica 0.2.2 (a test extra) installs them; run-tests points
    # SMA_UDICA_TEMPLATES here for the generated-CIL test.
    shutil.copytree(root / UDICA_TEMPLATES, site_dir.parent / "udica-templates")
    # A regular package that also extends its path, so that it is found before Debian's `google`.
    (site_dir / "google" / "__init__.py").write_text(
        "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n")


def project_disk(workdir: Path, image: Path, pytest_args: list[str], env: dict[str, str],
                 build_extensions: bool = True, run_files: tuple[Path, ...] = ()) -> Path:
    """The project disk; `run_files` (built on the host for this run) go to .vm-run/ beside the arguments."""
    tree = workdir / "project"
    for name in _project_files(PROJECT):
        destination = tree / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, destination)
    if build_extensions:
        _build_extensions(tree)
    run_dir = tree / ".vm-run"
    run_dir.mkdir()
    _site_packages(run_dir / "site")
    for path in run_files:
        shutil.copy(path, run_dir / path.name)
    (run_dir / "pytest-args").write_text("".join(f"{arg}\n" for arg in pytest_args))
    (run_dir / "env").write_text("".join(f"{key}={value}\n" for key, value in sorted(env.items())))
    used = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    size_mb = 64 + 2 * used // (1024 * 1024)
    _mkfs_ext4(image, tree, size_mb, "smaproject")
    shutil.rmtree(tree)
    return image


def volumes_key(counts: dict[str, int]) -> str:
    source = (PROJECT / "tests/enforcing/volume_images.py").read_bytes()
    digest = hashlib.sha256(source + repr(sorted(counts.items())).encode())
    return digest.hexdigest()[:16]


def volumes_disk(cache: Path, counts: dict[str, int]) -> Path:
    """An ext4 disk holding every volume image the tests use, cached by generator code and file counts.

    Built on the host because creating 100k files in a software-emulated guest would take minutes.
    """
    sys.path.insert(0, str(PROJECT))
    from tests.enforcing.volume_images import FSTYPES, build_image, image_name

    disk = cache / f"volumes-{volumes_key(counts)}.img"
    if disk.exists():
        print(f"== disks: cached {disk}", flush=True)
        return disk
    work = cache / f"{disk.name}.build"
    shutil.rmtree(work, ignore_errors=True)
    images = work / "images"
    for count in sorted(set(counts.values())):
        tree = work / f"tree-{count}"
        for fstype in FSTYPES:
            print(f"== disks: {image_name(fstype, count)}", flush=True)
            build_image(images / image_name(fstype, count), fstype, count, tree)
        shutil.rmtree(tree)
    allocated = sum(f.stat().st_blocks * 512 for f in images.iterdir())
    size_mb = 128 + 2 * allocated // (1024 * 1024)
    partial = work / "volumes.img"
    _mkfs_ext4(partial, images, size_mb, "smavolumes")
    partial.rename(disk)
    shutil.rmtree(work)
    for old in cache.glob("volumes-*.img"):
        if old != disk:
            old.unlink()
    return disk


def results_disk(image: Path) -> Path:
    """A zeroed disk; the guest writes one tar archive onto the raw device."""
    with open(image, "wb") as handle:
        handle.truncate(RESULTS_MB * 1024 * 1024)
    return image
