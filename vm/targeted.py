"""The RHEL-family policy for a guest flavour: fedora-selinux's *targeted* (MCS) policy with container-selinux's
`container` module, built on the host with Debian's checkpolicy and installed into the guest's own store.

What the distributions' spec files do, in the order they do it (selinux-policy.spec, container-selinux.spec):
  1. container-selinux's container.{te,if,fc} go into the tree's contrib folder (the base names
     container_spc_stream_connect, so it does not compile without container.if);
  2. RHEL 9 only: the `user_namespace` rules are removed and /run becomes /var/run in container.fc (the spec's
     no_user_namespace / file-context edits for the el9 kernel and policy);
  3. `make conf`, then modules.conf switched to the module list of the flavour (vm/policy/targeted-modules.txt:
     the base modules plus those the tests and the container module's requirements need; the distributions'
     full lists take minutes to load under emulation and cover services the guest does not run);
  4. the targeted users (vm/policy/targeted-users, the spec's users-targeted) replace the tree's defaults,
     whose seusers names users the tree does not declare;
  5. base.pp and the modules, the contexts/ files (`install-appconfig`), and in the guest `semodule -s targeted`
     with container.pp at priority 200 as container-selinux installs it; its contexts file and udica
     templates go where container-selinux puts them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import policy_sources

VM_DIR = Path(__file__).resolve().parent
POLICY_NAME = "targeted"
BUILD_OPTIONS = ("NAME=targeted", "TYPE=mcs", "DISTRO=redhat", "UBAC=n", "DIRECT_INITRC=n", "MONOLITHIC=n",
                 "MLS_SENS=1", "MLS_CATS=1024", "MCS_CATS=1024", "UNK_PERMS=allow")
CONTAINER_PRIORITY = 200
# RHEL 9's container-selinux.spec edits: the el9 kernel policy has no user_namespace class.
RHEL9_FLAVOURS = ("c9s",)


def module_list() -> list[str]:
    path = VM_DIR / "policy" / "targeted-modules.txt"
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def recipe_files() -> list[Path]:
    """The files whose content defines the targeted flavours' policy (part of the image cache key)."""
    return [Path(__file__), VM_DIR / "policy" / "targeted-modules.txt", VM_DIR / "policy" / "targeted-users"]


def select_modules(modules_conf: str, wanted: list[str]) -> str:
    """modules.conf with every non-base module not in `wanted` switched off; refuses names the tree lacks."""
    present = set(re.findall(r"^([\w-]+) = (?:module|base|off)$", modules_conf, re.M))
    unknown = sorted(set(wanted) - present)
    if unknown:
        raise RuntimeError(f"modules not in this policy tree: {' '.join(unknown)}")

    def switch(match):
        name = match.group(1)
        return f"{name} = {'module' if name in wanted else 'off'}"

    return re.sub(r"^([\w-]+) = (?:module|off)$", switch, modules_conf, flags=re.M)


def _run(argv, **kwargs) -> None:
    print("+ " + " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, **kwargs)


def prepare(flavour: str, workdir: Path, cache: Path) -> tuple[Path, Path]:
    """The flavour's policy tree configured as the spec files leave it before compiling (steps 1-4);
    returns (the policy tree, container-selinux's tree)."""
    policy_src, container_src = policy_sources.FLAVOUR_SOURCES[flavour]
    tree = policy_sources.unpack(policy_src, policy_sources.fetch(policy_src, cache), workdir)
    container = policy_sources.unpack(container_src, policy_sources.fetch(container_src, cache), workdir)
    contrib = tree / "policy/modules/contrib"
    for ext in ("te", "if", "fc"):
        shutil.copy(container / f"container.{ext}", contrib / f"container.{ext}")
    if flavour in RHEL9_FLAVOURS:
        te = contrib / "container.te"
        te.write_text("".join(line for line in te.read_text().splitlines(keepends=True)
                              if "user_namespace" not in line))
        fc = contrib / "container.fc"
        fc.write_text(re.sub(r"^/run/", "/var/run/", fc.read_text(), flags=re.M))
    _run(["make", "-s", *BUILD_OPTIONS, "conf"], cwd=tree, stdout=subprocess.DEVNULL)
    modules_conf = tree / "policy/modules.conf"
    modules_conf.write_text(select_modules(modules_conf.read_text(), module_list()))
    shutil.copy(VM_DIR / "policy" / "targeted-users", tree / "policy/users")
    return tree, container


def build(flavour: str, workdir: Path, cache: Path, jobs: int = 2) -> tuple[Path, Path]:
    """Build the flavour's base.pp and modules; returns (the policy tree, container-selinux's tree)."""
    tree, container = prepare(flavour, workdir, cache)
    _run(["make", "-s", f"-j{jobs}", *BUILD_OPTIONS, "base.pp", "modules"], cwd=tree)
    return tree, container


def install_headers(tree: Path, destdir: Path) -> Path:
    """The distribution's devel headers from a prepared tree (what selinux-policy-devel ships, from the same
    sources the guest's policy is built from): returns the folder holding their Makefile, which builds a
    module with `make -f <folder>/Makefile NAME.pp`."""
    _run(["make", "-s", *BUILD_OPTIONS, f"DESTDIR={destdir}", "install-headers"], cwd=tree,
         stdout=subprocess.DEVNULL)
    return destdir / "usr/share/selinux" / POLICY_NAME / "include"


def headers(flavour: str, workdir: Path, cache: Path) -> Path:
    """The flavour's devel headers, built under `workdir` (about 10 s: no module is compiled)."""
    tree, _ = prepare(flavour, workdir / "src", cache)
    return install_headers(tree, workdir / "devel")


def packages(tree: Path, flavour: str) -> list[Path]:
    """base.pp first, then the flavour's modules except container (installed at its own priority)."""
    names = [name for name in module_list() if name != "container"]
    return [tree / "base.pp", *(tree / f"{name}.pp" for name in names)]


def install(flavour: str, tree: Path, container: Path, rootfs: Path, env: dict) -> None:
    """Into the guest: the store (semodule in a chroot), contexts/, /etc/selinux/config, container-selinux's
    contexts file and udica templates."""
    stage = rootfs / "tmp/targeted"
    stage.mkdir(parents=True)
    modules = packages(tree, flavour)
    for package in [*modules, tree / "container.pp"]:
        shutil.copy(package, stage / package.name)
    _run(["make", "-s", *BUILD_OPTIONS, f"DESTDIR={rootfs}", "install-appconfig"], cwd=tree)
    _run(["chroot", rootfs, "semodule", "-s", POLICY_NAME, "-n", "-X", "100", "-i",
          *(f"/tmp/targeted/{p.name}" for p in modules)], env=env)
    _run(["chroot", rootfs, "semodule", "-s", POLICY_NAME, "-n", "-X", str(CONTAINER_PRIORITY), "-i",
          "/tmp/targeted/container.pp"], env=env)
    shutil.rmtree(stage)
    config = rootfs / "etc/selinux/config"
    text = config.read_text() if config.exists() else "SELINUX=enforcing\n"
    text = re.sub(r"^SELINUXTYPE=.*$", f"SELINUXTYPE={POLICY_NAME}", text, flags=re.M)
    text = re.sub(r"^SELINUX=.*$", "SELINUX=enforcing", text, flags=re.M)
    if "SELINUXTYPE=" not in text:
        text += f"SELINUXTYPE={POLICY_NAME}\n"
    config.write_text(text)
    contexts = rootfs / "usr/share/containers/selinux/contexts"
    contexts.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(container / "container_contexts", contexts)
    shutil.copytree(container / "udica-templates", rootfs / "usr/share/udica/templates", dirs_exist_ok=True)

