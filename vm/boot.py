"""Booting the guest with qemu: a KVM probe, then one run with a wall-clock limit.

KVM is used only when a probe boot proves it works: on some hosts /dev/kvm answers but guests hang right
after the boot loader. The probe boots the kernel with no root filesystem and waits for it to reach its
"cannot mount root" panic; a kernel that gets that far under KVM will run the guest. The answer is kept per
host boot (keyed by /proc/sys/kernel/random/boot_id), so the probe costs its time once.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

QEMU = "qemu-system-x86_64"
PROBE_SECONDS = 25
PROBE_PROOF = ("Kernel panic", "VFS: Unable to mount root", "Run /init", "Freeing unused kernel")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def kvm_works(kernel: Path, cache: Path) -> bool:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    remembered = cache / f"kvm-probe-{_boot_id()}"
    if remembered.exists():
        return remembered.read_text().strip() == "yes"
    argv = [QEMU, "-accel", "kvm", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-no-reboot", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1"]
    started = time.monotonic()
    try:
        output = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_SECONDS).stdout
        works = any(proof.encode() in output for proof in PROBE_PROOF)
    except subprocess.TimeoutExpired as hung:
        works = any(proof.encode() in (hung.stdout or b"") for proof in PROBE_PROOF)
    print(f"== boot: KVM probe {'succeeded' if works else 'failed'} in {time.monotonic() - started:.1f} s; "
          f"using {'KVM' if works else 'TCG (software emulation)'}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("kvm-probe-*"):
        old.unlink()
    remembered.write_text("yes\n" if works else "no\n")
    return works


@dataclass
class Outcome:
    returncode: int | None    # qemu's exit status; None when it was killed at the time limit
    timed_out: bool
    seconds: float
    tail: list[str]           # the last console lines


def run(*, kernel: Path, initrd: Path, disks: list[tuple[Path, bool]], accel: str, memory_mb: int, cpus: int,
        append: str, timeout: float, console_log: Path, echo: bool) -> Outcome:
    """Boot and wait for the guest to power off; disks are (path, snapshot) in /dev/vda, vdb, ... order."""
    argv = [QEMU, "-accel", accel, "-m", str(memory_mb), "-smp", str(cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
            "-device", "virtio-rng-pci"]
    for path, snapshot in disks:
        drive = f"file={path},format=raw,if=virtio,cache=unsafe"
        argv += ["-drive", drive + (",snapshot=on" if snapshot else "")]
    print("+ " + " ".join(argv), flush=True)

    tail: collections.deque[str] = collections.deque(maxlen=80)
    started = time.monotonic()
    with open(console_log, "w", encoding="utf-8", errors="replace") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def pump():
            for raw in process.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log.write(line + "\n")
                log.flush()
                tail.append(line)
                if echo:
                    print(line, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode, timed_out = process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode, timed_out = None, True
        reader.join(timeout=5)
    return Outcome(returncode, timed_out, time.monotonic() - started, list(tail))
