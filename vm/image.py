"""The enforcing guest image: a Debian bookworm root filesystem with SELinux policy, built from Debian
packages only, labelled offline and cached on disk.

Steps (see docs/enforcing-vm.md for the timings):
  1. debootstrap --variant=minbase with the packages in vm/guest-packages.txt (kernel, initramfs,
     selinux-policy-default, python3 and the test modules);
  2. the refpolicy `container` module, compiled from Debian's selinux-policy-src with the devel Makefile
     (selinux-policy-default names container_t in lxc_contexts but does not ship it), and our test module
     vm/policy/smatest.te, both installed into the guest's policy store with `semodule -n`; the policy is
     then rebuilt without dontaudit rules (`semodule -DB`) so that every denial reaches the kernel log;
  3. our init (vm/guest/init -> /sbin/sma-init);
  4. setfiles over the whole tree with the guest's own policy and file_contexts;
  5. mkfs.ext4 -d, which copies the tree with its security.selinux xattrs into a raw disk image.

The image directory is named after a hash of the recipe files, so editing any of them builds a new image;
the kernel and initrd are kept next to it for qemu's -kernel/-initrd.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOT_SIZE = "3G"
POLICY_NAME = "default"
# Files whose content defines the image; any change gives a new cache key.
RECIPE_FILES = ("image.py", "guest-packages.txt", "guest/init", "policy/smatest.te")
CONTAINER_MODULE_IN_SRC = "selinux-policy-src/policy/modules/services/container"
POLICY_SRC = Path("/usr/src/selinux-policy-src.tar.zst")
DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")


def cache_root() -> Path:
    """$SMA_VM_CACHE, else $XDG_CACHE_HOME/selinux-mount-agent/vm, else ~/.cache/selinux-mount-agent/vm."""
    explicit = os.environ.get("SMA_VM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "selinux-mount-agent" / "vm"


def mirror() -> str:
    return os.environ.get("SMA_VM_MIRROR", DEFAULT_MIRROR)


def guest_packages() -> list[str]:
    packages = []
    for line in (VM_DIR / "guest-packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            packages.append(line)
    return packages


def recipe_key() -> str:
    digest = hashlib.sha256()
    digest.update(f"{SUITE} {mirror()} {ROOT_SIZE}\n".encode())
    for name in RECIPE_FILES:
        digest.update(name.encode() + b"\0" + (VM_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def complete(self) -> bool:
        return all(p.exists() for p in (self.rootfs, self.kernel, self.initrd, self.directory / "manifest.json"))


def image_for_recipe() -> Image:
    return Image(cache_root() / f"image-{recipe_key()}")


def _run(argv, **kwargs) -> None:
    print("+ " + " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, **kwargs)


class _Steps:
    """Prints each step with its wall time, and keeps the times for the manifest."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name):
        steps = self

        class _Step:
            def __enter__(self):
                print(f"== image: {name}", flush=True)
                self.start = time.monotonic()

            def __exit__(self, *exc):
                elapsed = time.monotonic() - self.start
                steps.times[name] = round(elapsed, 1)
                if exc[0] is None:
                    print(f"== image: {name}: {elapsed:.1f} s", flush=True)

        return _Step()


def build_policy_modules(workdir: Path) -> list[Path]:
    """container.pp from Debian's refpolicy source, smatest.pp from our own module text."""
    container_dir = workdir / "container"
    container_dir.mkdir(parents=True)
    members = [f"{CONTAINER_MODULE_IN_SRC}.{ext}" for ext in ("te", "if", "fc")]
    _run(["tar", "--zstd", "-xf", POLICY_SRC, "-C", container_dir, "--strip-components=4", *members])
    # The devel Makefile warns about container.if duplicating interfaces it already knows; harmless.
    _run(["make", "-s", "-f", DEVEL_MAKEFILE, "container.pp"], cwd=container_dir)

    test_dir = workdir / "smatest"
    test_dir.mkdir()
    shutil.copy(VM_DIR / "policy" / "smatest.te", test_dir / "smatest.te")
    # -M: the guest policy is MLS/MCS; a module built without it would not link.
    _run(["checkmodule", "-M", "-m", "-o", "smatest.mod", "smatest.te"], cwd=test_dir)
    _run(["semodule_package", "-o", "smatest.pp", "-m", "smatest.mod"], cwd=test_dir)
    return [container_dir / "container.pp", test_dir / "smatest.pp"]


def _policy_file(rootfs: Path) -> Path:
    candidates = sorted(glob.glob(str(rootfs / "etc/selinux" / POLICY_NAME / "policy/policy.*")))
    if not candidates:
        raise RuntimeError("the guest has no binary policy under /etc/selinux/default/policy")
    return Path(candidates[-1])


def build(image: Image) -> dict:
    """Build the image into image.directory (atomically: a temporary directory is renamed at the end)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    work = root / f"{image.directory.name}.build"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    rootfs = work / "rootfs"
    steps = _Steps()
    started = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")

    with steps("debootstrap"):
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(guest_packages()),
              SUITE, rootfs, mirror()], env=env)

    with steps("policy modules"):
        modules = build_policy_modules(work / "policy")
        for module in modules:
            shutil.copy(module, rootfs / "tmp" / module.name)
        _run(["chroot", rootfs, "semodule", "-n", "-i", *(f"/tmp/{m.name}" for m in modules)], env=env)
        # Without dontaudit rules: the tests must see every denial in the kernel log, and some MCS denials
        # of container_t are otherwise silenced. `semodule -B` restores them on a machine that wants quiet.
        _run(["chroot", rootfs, "semodule", "-n", "-D", "-B"], env=env)
        for module in modules:
            (rootfs / "tmp" / module.name).unlink()

    with steps("init and mount points"):
        init = rootfs / "sbin" / "sma-init"
        shutil.copy(VM_DIR / "guest" / "init", init)
        init.chmod(0o755)
        for mount_point in ("mnt/project", "mnt/volumes"):
            (rootfs / mount_point).mkdir(parents=True, exist_ok=True)
        # Keep the image lean: package caches and lists are not needed at run time.
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
        for lists in (rootfs / "var/lib/apt/lists").glob("*_Packages"):
            lists.unlink()

    with steps("setfiles"):
        contexts = rootfs / "etc/selinux" / POLICY_NAME / "contexts/files/file_contexts"
        _run(["setfiles", "-r", rootfs, "-c", _policy_file(rootfs), contexts, rootfs])

    with steps("kernel and initrd"):
        kernels = sorted(glob.glob(str(rootfs / "boot/vmlinuz-*")))
        initrds = sorted(glob.glob(str(rootfs / "boot/initrd.img-*")))
        if not kernels or not initrds:
            raise RuntimeError("debootstrap left no /boot/vmlinuz-* or /boot/initrd.img-*")
        shutil.copy(kernels[-1], work / "vmlinuz")
        shutil.copy(initrds[-1], work / "initrd.img")

    with steps("mkfs.ext4 -d"):
        _run(["mkfs.ext4", "-q", "-F", "-L", "smaroot", "-d", rootfs, work / "rootfs.img", ROOT_SIZE])

    shutil.rmtree(rootfs)
    shutil.rmtree(work / "policy")
    manifest = {
        "key": image.directory.name.removeprefix("image-"),
        "suite": SUITE,
        "mirror": mirror(),
        "kernel": os.path.basename(kernels[-1]),
        "packages": guest_packages(),
        "step_seconds": steps.times,
        "build_seconds": round(time.monotonic() - started, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if image.directory.exists():
        shutil.rmtree(image.directory)
    work.rename(image.directory)
    print(f"== image: built {image.directory} in {manifest['build_seconds']} s", flush=True)
    return manifest


def ensure_image(rebuild: bool = False) -> Image:
    image = image_for_recipe()
    if rebuild or not image.complete():
        build(image)
    else:
        print(f"== image: cached {image.directory}", flush=True)
    return image


def prune(keep: Image) -> None:
    """Remove images built from older recipes (each is ~1 GB of disk)."""
    for old in cache_root().glob("image-*"):
        if old.is_dir() and old != keep.directory:
            shutil.rmtree(old, ignore_errors=True)
