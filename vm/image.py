"""The enforcing guest image: a Debian bookworm root filesystem with SELinux policy, labelled offline and
cached on disk. One userland and kernel, several policies (flavours):

  c9s     CentOS Stream 9's targeted policy with container-selinux's `container` module (vm/targeted.py), the
          default: what our users' nodes run;
  debian  Debian's refpolicy (selinux-policy-default) with refpolicy's own `container` module;
  f40     Fedora 40's targeted policy, likewise.

Steps (see docs/enforcing-vm.md for the timings):
  1. debootstrap --variant=minbase with the packages in vm/guest-packages.txt (kernel, initramfs,
     selinux-policy-default, python3 and the test modules), kept as a tarball that every flavour starts from;
  2. the policy: for debian, the refpolicy `container` module, compiled from Debian's selinux-policy-src with the
     devel Makefile (selinux-policy-default names container_t in lxc_contexts but does not ship it) and
     vm/policy/debian-shims.te; for c9s and f40, the targeted store built from the pinned sources. Then our test
     module vm/policy/smatest.te, installed with `semodule -n`; the policy is rebuilt without dontaudit rules
     (`semodule -DB`) so that every denial reaches the kernel log;
  3. our init (vm/guest/init -> /sbin/sma-init);
  4. setfiles over the whole tree with the guest's own policy and file_contexts;
  5. mkfs.ext4 -d, which copies the tree with its security.selinux xattrs into a raw disk image.

The image directory is named after the flavour and a hash of the recipe files (and, for c9s and f40, the pinned
policy sources and module list), so editing any of them builds a new image of that flavour;
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

import policy_sources
import targeted

VM_DIR = Path(__file__).resolve().parent
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOT_SIZE = "3G"
FLAVOURS = ("debian", "c9s", "f40")
DEFAULT_FLAVOUR = "c9s"
# Files whose content defines the image; any change gives a new cache key.
RECIPE_FILES = ("image.py", "guest-packages.txt", "guest/init", "policy/smatest.te", "policy/smatest.fc",
                "policy/debian-shims.te")
# ... and the debootstrap tarball every flavour starts from.
BASE_RECIPE_FILES = ("guest-packages.txt",)
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


def policy_name(flavour: str) -> str:
    """The guest's SELINUXTYPE: Debian's policy is called `default`, the RHEL family's `targeted`."""
    return "default" if flavour == "debian" else targeted.POLICY_NAME


def base_key() -> str:
    digest = hashlib.sha256(f"{SUITE} {mirror()}\n".encode())
    for name in BASE_RECIPE_FILES:
        digest.update(name.encode() + b"\0" + (VM_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def recipe_key(flavour: str = DEFAULT_FLAVOUR) -> str:
    digest = hashlib.sha256()
    digest.update(f"{SUITE} {mirror()} {ROOT_SIZE} {flavour}\n".encode())
    for name in RECIPE_FILES:
        digest.update(name.encode() + b"\0" + (VM_DIR / name).read_bytes() + b"\0")
    if flavour != "debian":
        digest.update(policy_sources.key_material(flavour))
        for path in targeted.recipe_files():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    directory: Path
    flavour: str = DEFAULT_FLAVOUR

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


def image_for_recipe(flavour: str = DEFAULT_FLAVOUR) -> Image:
    return Image(cache_root() / f"image-{flavour}-{recipe_key(flavour)}", flavour)


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


def _test_module(workdir: Path, name: str, source: str) -> Path:
    """A module package from one of our .te files (checkmodule -M -m + semodule_package), with the file
    contexts of the .fc file of the same name if there is one."""
    directory = workdir / name
    directory.mkdir()
    shutil.copy(VM_DIR / "policy" / source, directory / f"{name}.te")
    # -M: the guest policy is MLS/MCS; a module built without it would not link.
    _run(["checkmodule", "-M", "-m", "-o", f"{name}.mod", f"{name}.te"], cwd=directory)
    contexts = VM_DIR / "policy" / source.replace(".te", ".fc")
    file_contexts = ["-f", contexts] if contexts.exists() else []
    _run(["semodule_package", "-o", f"{name}.pp", "-m", f"{name}.mod", *file_contexts], cwd=directory)
    return directory / f"{name}.pp"


def build_debian_modules(workdir: Path) -> list[Path]:
    """container.pp from Debian's refpolicy source and the shims refpolicy needs."""
    container_dir = workdir / "container"
    container_dir.mkdir(parents=True)
    members = [f"{CONTAINER_MODULE_IN_SRC}.{ext}" for ext in ("te", "if", "fc")]
    _run(["tar", "--zstd", "-xf", POLICY_SRC, "-C", container_dir, "--strip-components=4", *members])
    # The devel Makefile warns about container.if duplicating interfaces it already knows; harmless.
    _run(["make", "-s", "-f", DEVEL_MAKEFILE, "container.pp"], cwd=container_dir)
    return [container_dir / "container.pp", _test_module(workdir, "debianshims", "debian-shims.te")]


def _install_modules(rootfs: Path, store: str, modules: list[Path], env: dict) -> None:
    for module in modules:
        shutil.copy(module, rootfs / "tmp" / module.name)
    _run(["chroot", rootfs, "semodule", "-s", store, "-n", "-i", *(f"/tmp/{m.name}" for m in modules)], env=env)
    for module in modules:
        (rootfs / "tmp" / module.name).unlink()


def install_policy(flavour: str, rootfs: Path, workdir: Path, env: dict) -> None:
    """The flavour's policy and our test module into the guest's store, dontaudit rules off."""
    store = policy_name(flavour)
    if flavour == "debian":
        _install_modules(rootfs, store, build_debian_modules(workdir), env)
    else:
        tree, container = targeted.build(flavour, workdir, cache_root() / "policy-src")
        targeted.install(flavour, tree, container, rootfs, env)
    _install_modules(rootfs, store, [_test_module(workdir, "smatest", "smatest.te")], env)
    # Without dontaudit rules: the tests must see every denial in the kernel log, and some MCS denials
    # of container_t are otherwise silenced. `semodule -B` restores them on a machine that wants quiet.
    _run(["chroot", rootfs, "semodule", "-s", store, "-n", "-D", "-B"], env=env)


def _policy_file(rootfs: Path, store: str) -> Path:
    candidates = sorted(glob.glob(str(rootfs / "etc/selinux" / store / "policy/policy.*")))
    if not candidates:
        raise RuntimeError(f"the guest has no binary policy under /etc/selinux/{store}/policy")
    return Path(candidates[-1])


def debootstrap_tarball(env: dict) -> Path:
    """The debootstrapped tree as a tarball (xattrs kept), shared by every flavour and cached by package list."""
    tarball = cache_root() / f"debootstrap-{base_key()}.tar"
    if tarball.exists():
        print(f"== image: cached {tarball.name}", flush=True)
        return tarball
    work = cache_root() / f"{tarball.name}.build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(guest_packages()),
          SUITE, work / "rootfs", mirror()], env=env)
    partial = work / "rootfs.tar"
    _run(["tar", "--xattrs", "--acls", "--numeric-owner", "-C", work / "rootfs", "-cf", partial, "."])
    partial.rename(tarball)
    shutil.rmtree(work)
    for old in cache_root().glob("debootstrap-*.tar"):
        if old != tarball:
            old.unlink()
    return tarball


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
        tarball = debootstrap_tarball(env)
        rootfs.mkdir()
        _run(["tar", "--xattrs", "--acls", "--numeric-owner", "-C", rootfs, "-xf", tarball])

    with steps(f"policy ({image.flavour})"):
        (work / "policy").mkdir()
        install_policy(image.flavour, rootfs, work / "policy", env)

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
        store = policy_name(image.flavour)
        contexts = rootfs / "etc/selinux" / store / "contexts/files/file_contexts"
        _run(["setfiles", "-r", rootfs, "-c", _policy_file(rootfs, store), contexts, rootfs])

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
        "key": image.directory.name.removeprefix(f"image-{image.flavour}-"),
        "flavour": image.flavour,
        "policy": policy_name(image.flavour),
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


def ensure_image(flavour: str = DEFAULT_FLAVOUR, rebuild: bool = False) -> Image:
    image = image_for_recipe(flavour)
    if rebuild or not image.complete():
        build(image)
    else:
        print(f"== image: cached {image.directory}", flush=True)
    return image


def prune(keep: Image) -> None:
    """Remove this flavour's images built from older recipes (each is ~1 GB of disk), and images named before
    there were flavours; other flavours' images stay."""
    for old in cache_root().glob("image-*"):
        if not old.is_dir() or old == keep.directory:
            continue
        flavour = old.name.split("-")[1]
        if flavour == keep.flavour or flavour not in FLAVOURS:
            shutil.rmtree(old, ignore_errors=True)
