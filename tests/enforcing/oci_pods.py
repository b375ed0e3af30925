"""Pods started by a real OCI runtime (runc) from a bundle whose config.json carries the SELinux labels the way
CRI-O and containerd write them: `process.selinuxLabel` for the container's processes and `linux.mountLabel` for
the mounts the runtime makes itself (/dev here), with the pod's volume bind-mounted in.

The runtime applies the labels, not the test: runc writes the process label to /proc/self/attr/exec before it
executes the container's program, and adds `context="<mountLabel>"` to the tmpfs it mounts on /dev. The rootfs
is a static busybox labelled container_file_t:s0 (container_t's entrypoint type, at a level every pod level
dominates), as a container image's files are labelled.

What runc needed on the guest, which has no systemd and starts its tests from kernel_t (tried on c9s and
debian, docs/enforcing-vm.md):
  - cgroup v2 at /sys/fs/cgroup: the guest's init mounts no cgroup file system, and runc then stops with
    "no cgroup mount found in mountinfo". Mounted here for the module when absent, unmounted after;
  - `process.noNewPrivileges` false, which is what kubelet asks for unless a container sets
    allowPrivilegeEscalation: false. Where runc stays kernel_t (debian: refpolicy has no transition into an
    engine domain for kernel_t) the kernel refuses a no-new-privileges transition into container_t
    (`nnp_transition` denied, "exec /bin/sh: operation not permitted"); on c9s runc enters
    container_runtime_t, which may;
  - nothing else: runc's session keyring, labelled with the process label, works on both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from agent.node.mountinfo import read_mountinfo

CGROUP_ROOT = "/sys/fs/cgroup"
PT_INTERP = 3
POD_DOMAIN = "system_u:system_r:container_t"
POD_FILE = "system_u:object_r:container_file_t"
VOLUME_IN_POD = "/data"


def process_label(level: str) -> str:
    return f"{POD_DOMAIN}:{level}"


def mount_label(level: str) -> str:
    return f"{POD_FILE}:{level}"


def is_cgroup2(path: str) -> bool:
    """Whether the top-most mount at `path` is a cgroup v2 hierarchy (what runc's cgroup manager looks for)."""
    found = [m for m in read_mountinfo() if m.mount_point == path]
    return bool(found) and found[-1].fstype == "cgroup2"


def is_static(program: str) -> bool:
    """True when the ELF file asks for no program interpreter (no PT_INTERP header): it runs in an empty root."""
    with open(program, "rb") as handle:
        header = handle.read(64)
        if header[:5] != b"\x7fELF\x02":  # 64-bit ELF, as the guest's and the host's busybox are
            return False
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != PT_INTERP for i in range(phnum))


class OCIPods:
    """Writes one bundle per pod and runs it with `runc run` in the foreground, stdio through pipes."""

    def __init__(self, runc: str, directory: Path):
        self.runc = runc
        self.directory = directory
        self.state = directory / "runc-state"
        self.rootfs = directory / "rootfs"
        self.count = 0
        self._build_rootfs()

    def _build_rootfs(self) -> None:
        busybox = shutil.which("busybox")
        if not busybox or not is_static(busybox):
            pytest.skip("no static busybox (busybox-static) here: it is the pods' only program")
        for name in ("bin", "proc", "dev", "tmp", VOLUME_IN_POD.lstrip("/")):
            (self.rootfs / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(busybox, self.rootfs / "bin" / "busybox")
        for applet in ("sh", "cat", "echo"):
            (self.rootfs / "bin" / applet).symlink_to("busybox")
        # As an image's layers are labelled on a node: container_file_t at s0, readable by every pod level.
        subprocess.run(["chcon", "-R", f"{POD_FILE}:s0", str(self.rootfs)], check=True)

    def config(self, level: str, volume: str, args: list[str], cgroup: str) -> dict:
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": args,
                "env": ["PATH=/bin"], "noNewPrivileges": False,
                "selinuxLabel": process_label(level),
            },
            "root": {"path": str(self.rootfs), "readonly": True},
            "hostname": "pod",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
                # How CRI-O and containerd hand a pod its CSI volume: a bind mount of kubelet's target path.
                {"destination": VOLUME_IN_POD, "type": "bind", "source": volume, "options": ["rbind", "rw"]},
            ],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
                "mountLabel": mount_label(level),
                "cgroupsPath": cgroup,
                "maskedPaths": [], "readonlyPaths": [],
            },
        }

    def run(self, level: str, volume: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `sh -c script` in a new pod at `level` with `volume` at /data; runc's own status and output."""
        self.count += 1
        name = f"pod{self.count}"
        bundle = self.directory / name
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(
            self.config(level, volume, ["sh", "-c", script], f"/sma-test/{name}"), indent=1))
        return subprocess.run([self.runc, "--root", str(self.state), "run", "--bundle",
                               str(bundle), name], input="", capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def cgroup2_mounted():
    """cgroup v2 at /sys/fs/cgroup for as long as the pods run: mounted here when the system has none there
    (the CI guest), and unmounted again; a system that has it keeps it untouched."""
    if is_cgroup2(CGROUP_ROOT):
        yield
        return
    subprocess.run(["mount", "-t", "cgroup2", "cgroup2", CGROUP_ROOT], check=True, capture_output=True)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(CGROUP_ROOT, "sma-test"))
        subprocess.run(["umount", CGROUP_ROOT], check=False)
