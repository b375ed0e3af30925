"""Fixtures for tests that need a real SELinux-enforcing kernel (the CI guest of `make vm-test`, or a Vagrant
machine): loop-device volumes, tracked mounts, the kernel log, and a runner for confined "pod" processes.

Everything in this directory is skipped, with the reason, on a machine that is not enforcing: a kernel
without SELinux accepts `context=` mount options and security.selinux xattrs silently, so nothing here
would prove anything there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.enforcing.volume_images import build_image, image_name, mount, umount

SELINUX_ENFORCE = "/sys/fs/selinux/enforce"
CONTAINER_DOMAIN = "system_u:system_r:container_t"
CONTAINER_FILE = "system_u:object_r:container_file_t"
VOLUME_TOOLS = ("losetup", "mount", "umount", "mkfs.ext4", "mkfs.xfs")
CONFINED_TOOLS = ("runcon", "chcon")


def why_not_enforcing() -> str | None:
    """None when this machine can run the enforcing tests, else the reason it cannot."""
    try:
        with open(SELINUX_ENFORCE, encoding="ascii") as handle:
            mode = handle.read().strip()
    except OSError:
        return f"SELinux is not enabled here ({SELINUX_ENFORCE} is absent); run `make vm-test`"
    if mode != "1":
        return f"SELinux is not enforcing ({SELINUX_ENFORCE} is {mode}); run `make vm-test`"
    if os.geteuid() != 0:
        return "needs root (loop devices, mounts, runcon into container_t)"
    return None


def require_tools(tools) -> None:
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")


@pytest.fixture(autouse=True)
def _enforcing_only():
    reason = why_not_enforcing()
    if reason:
        pytest.skip(reason)


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as handle:
        handle.write("3\n")


class KernelLog:
    """Reads the kernel log (/dev/kmsg) from the point of creation, or of the last `mark()`, on.

    Where auditd runs (the Vagrant machines), AVC records go to its log instead of the kernel's, so the
    audit log's new lines are read too.
    """

    AUDIT_LOG = "/var/log/audit/audit.log"

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        self.audit_offset = None
        self.mark()

    def mark(self) -> None:
        os.lseek(self.fd, 0, os.SEEK_END)
        try:
            self.audit_offset = os.path.getsize(self.AUDIT_LOG)
        except OSError:
            self.audit_offset = None

    def read(self) -> list[str]:
        """The messages logged since the mark (for /dev/kmsg, each record's text after the ';')."""
        messages = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue  # records were overwritten while we read; go on with the next
            text = record.decode("utf-8", "replace")
            messages.append(text.split(";", 1)[1].split("\n", 1)[0] if ";" in text else text)
        if self.audit_offset is not None:
            with open(self.AUDIT_LOG, "rb") as handle:
                handle.seek(self.audit_offset)
                data = handle.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.audit_offset += len(complete)
            messages.extend(complete.decode("utf-8", "replace").splitlines())
        return messages

    def wait_for(self, *needles: str, timeout: float = 5.0) -> list[str]:
        """Messages since the mark that contain every needle; waits up to `timeout` for the first one."""
        seen, deadline = [], time.monotonic() + timeout
        while True:
            seen.extend(self.read())
            found = [m for m in seen if all(n in m for n in needles)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def kernel_log():
    log = KernelLog()
    yield log
    log.close()


class Volumes:
    """Filesystem images with N files, attached to loop devices once per session.

    Images come from $SMA_VOLUME_DIR when it holds one (the CI host prebuilds them), else they are built here.
    One loop device per image: attaching the same file twice would give two superblocks of one filesystem.
    """

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.prebuilt = Path(os.environ["SMA_VOLUME_DIR"]) if os.environ.get("SMA_VOLUME_DIR") else None
        self.devices: dict[tuple[str, int], str] = {}

    def image(self, fstype: str, count: int) -> Path:
        name = image_name(fstype, count)
        if self.prebuilt and (self.prebuilt / name).exists():
            return self.prebuilt / name
        built = self.scratch / name
        if not built.exists():
            build_image(built, fstype, count, self.scratch / f"tree-{count}")
        return built

    def device(self, fstype: str, count: int) -> str:
        key = (fstype, count)
        if key not in self.devices:
            result = subprocess.run(["losetup", "-f", "--show", str(self.image(fstype, count))],
                                    capture_output=True, text=True, check=True)
            self.devices[key] = result.stdout.strip()
        return self.devices[key]

    def detach_all(self) -> None:
        for device in self.devices.values():
            subprocess.run(["losetup", "-d", device], check=False)
        self.devices.clear()


@pytest.fixture(scope="session")
def volumes(tmp_path_factory):
    require_tools(VOLUME_TOOLS)
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no loop devices (/dev/loop-control is absent; modprobe loop)")
    found = Volumes(tmp_path_factory.mktemp("volumes"))
    yield found
    found.detach_all()


class Mounts:
    """Mount points made for one test, all unmounted at its end (last mounted first)."""

    def __init__(self, base: Path):
        self.base = base
        self.mounted: list[str] = []

    def point(self, name: str) -> str:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def mount(self, device: str, name: str, fstype: str, data: str = "") -> str:
        target = self.point(name)
        mount(device, target, fstype, data)
        self.mounted.append(target)
        return target

    def mount_cmd(self, device: str, name: str, options: str | None = None) -> subprocess.CompletedProcess:
        """mount(8), as kubelet and CSI drivers call it; the mount is tracked only when it succeeded."""
        target = self.point(name)
        argv = ["mount"] + (["-o", options] if options else []) + [device, target]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode == 0:
            self.mounted.append(target)
        return result

    def umount(self, target: str) -> None:
        umount(target)
        self.mounted.remove(target)

    def umount_all(self) -> None:
        for target in reversed(self.mounted):
            try:
                umount(target)
            except OSError:
                subprocess.run(["umount", "-l", target], check=False)
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path):
    tracked = Mounts(tmp_path / "mnt")
    yield tracked
    tracked.umount_all()


class ConfinedRunner:
    """Runs a program as `container_t:<level>`, the way a container runtime starts a pod's process.

    The program is a static busybox (an applet name picks the program), or, where there is no busybox, a
    copy of the coreutils program of that name. Either copy is labelled container_file_t:s0: container_t's
    entrypoint type, at a level every pod level dominates. stdio goes through pipes: early in the CI guest's
    boot the console device carries a label a confined process may not write to.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.busybox = shutil.which("busybox")
        self.entrypoints: dict[str, Path] = {}

    def _entrypoint(self, program: str) -> Path:
        source = self.busybox or shutil.which(program)
        if not source:
            pytest.skip(f"neither busybox nor {program} is installed")
        name = "busybox" if self.busybox else program
        if name not in self.entrypoints:
            copy = self.directory / name
            shutil.copy(source, copy)
            subprocess.run(["chcon", f"{CONTAINER_FILE}:s0", str(copy)], check=True)
            self.entrypoints[name] = copy
        return self.entrypoints[name]

    def run(self, level: str, program: str, *args: str, timeout: float = 60,
            domain: str = CONTAINER_DOMAIN) -> subprocess.CompletedProcess:
        entrypoint = self._entrypoint(program)
        argv = [str(entrypoint), program, *args] if self.busybox else [str(entrypoint), *args]
        return subprocess.run(["runcon", f"{domain}:{level}", *argv],
                              input="", capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def confined():
    require_tools(CONFINED_TOOLS)
    # Outside pytest's tmp tree so that the path to the binary is short and plainly tmp_t.
    directory = Path(tempfile.mkdtemp(prefix="ctr-", dir="/tmp"))
    yield ConfinedRunner(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def figures():
    """Measured numbers by name; written to $SMA_RESULTS_DIR/figures.json (the CI guest prints them)."""
    collected: dict[str, float] = {}
    yield collected
    out = os.environ.get("SMA_RESULTS_DIR")
    if collected and out and os.path.isdir(out):
        with open(os.path.join(out, "figures.json"), "w", encoding="utf-8") as handle:
            json.dump(collected, handle, indent=2, sort_keys=True)
