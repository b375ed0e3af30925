"""Whether a given block device is in use anywhere on the node, and where.

The shim's own /proc/self/mountinfo only shows its own mount namespace. A device mounted by a container or a
host tool in a private namespace is invisible there, yet a second mount of it would share that superblock and
hand a pod whatever the other side keeps writing. The kernel knows better: an exclusive open (open(2) O_EXCL
on a block device) fails with EBUSY while the device is mounted in any namespace, held by device-mapper, md or
bcache, used as swap, or opened O_EXCL by a program. That answer decides; sysfs holders and the mountinfo of
the other namespaces only say where, for the message.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from agent.node.mountinfo import read_mountinfo

SYS_DEV_BLOCK = "/sys/dev/block"
PROC = "/proc"


@dataclass(frozen=True)
class DeviceUse:
    """What the node shows about one block device (and its partitions)."""

    device: str
    number: str
    busy: bool                                         # an exclusive open failed with EBUSY
    mounted_here: tuple[str, ...] = ()                 # mount points in our own mount namespace
    mounted_elsewhere: tuple[tuple[int, str, str], ...] = ()  # (pid, comm, mount point) in other namespaces
    holders: tuple[str, ...] = ()                      # kernel names of devices stacked on it


def in_use_problem(use: DeviceUse, ours: set[str]) -> str | None:
    """Pure: why `use.device` must not be mounted for this volume, or None. `ours` are the volume's own paths
    (its staging path and publish targets), whose mounts are this driver's and account for a busy device."""
    name = f"device {use.device} ({use.number})"
    reasons = []
    here = sorted(point for point in use.mounted_here if point not in ours)
    if here:
        reasons.append(f"{name} is already mounted at {', '.join(here)}")
    # While the volume has mounts of its own, the other namespaces hold copies of them: the propagated ones
    # at the same paths (kubelet's directory is shared, mountPropagation: Bidirectional) and the container
    # runtime's bind mounts of a publish into its containers. Only without any are theirs someone else's.
    own = bool(set(use.mounted_here) & ours)
    if use.mounted_elsewhere and not own:
        # Both are another program's text: shown escaped, as a name and path could hold control characters.
        where = ", ".join(f"{point!r} in the mount namespace of process {pid} ({comm!r})"
                          for pid, comm, point in sorted(use.mounted_elsewhere))
        reasons.append(f"{name} is mounted in another mount namespace: at {where}")
    if use.holders:
        reasons.append(f"{name} is held by {', '.join(sorted(use.holders))} (a device stacked on it)")
    if use.busy and not reasons and not own:
        reasons.append(f"{name} is in use: the kernel refuses to open it exclusively (another program holds it "
                       f"open exclusively, or it is mounted where this node plugin cannot see)")
    if not reasons:
        return None
    return "; ".join(reasons) + "; a given block device must not be in use elsewhere"


def device_use(device: str, number: str, mounted_here) -> DeviceUse:
    """Gather what `in_use_problem` decides on. `mounted_here` is our own mount table (mountinfo entries).

    Raises OSError when the device cannot be opened at all (the caller refuses it: unknown is not free)."""
    family = _family(number)
    here = tuple(m.mount_point for m in mounted_here if m.major_minor in family)
    busy = _exclusive_open_busy(device)
    holders = tuple(holder for dev in family.values() for holder in _listdir(os.path.join(dev, "holders")))
    elsewhere = _other_namespace_mounts(set(family)) if busy else ()
    return DeviceUse(device, number, busy, here, elsewhere, holders)


def _exclusive_open_busy(device: str) -> bool:
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.EBUSY:
            return True
        raise
    os.close(fd)
    return False


def _family(number: str) -> dict[str, str]:
    """"major:minor" -> sysfs directory, of the device and each of its partitions."""
    top = os.path.join(SYS_DEV_BLOCK, number)
    family = {number: top}
    for entry in _listdir(top):
        part = os.path.join(top, entry)
        if os.path.exists(os.path.join(part, "partition")):
            try:
                with open(os.path.join(part, "dev"), encoding="ascii") as handle:
                    family[handle.read().strip()] = part
            except OSError:
                continue
    return family


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _other_namespace_mounts(numbers: set[str]) -> tuple[tuple[int, str, str], ...]:
    """Mounts of these devices in the mount namespaces of /proc other than ours, one process read per
    namespace (the node plugin runs with hostPID, so /proc shows the node's processes)."""
    try:
        seen = {os.readlink(f"{PROC}/self/ns/mnt")}
    except OSError:
        seen = set()
    found = []
    for entry in _listdir(PROC):
        if not (entry.isascii() and entry.isdigit()):
            continue
        try:
            namespace = os.readlink(f"{PROC}/{entry}/ns/mnt")
            if namespace in seen:
                continue
            seen.add(namespace)
            table = read_mountinfo(f"{PROC}/{entry}/mountinfo")
            with open(f"{PROC}/{entry}/comm", encoding="utf-8", errors="replace") as handle:
                comm = handle.read().strip()
        except (OSError, ValueError):
            continue  # the process ended, or is not ours to read
        found.extend((int(entry), comm, m.mount_point) for m in table if m.major_minor in numbers)
    return tuple(found)
