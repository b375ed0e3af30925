"""Mounts, loop devices and the check against mountinfo: the one module here that calls mount(2).

mount(2) is called directly through libc, never mount(8): util-linux libmount drops `context=` without a word
when it believes SELinux is off (it looks at /sys/fs/selinux and /etc/selinux/config in its own mount
namespace; KEP-1710 "CSI driver considerations"), and that silent drop is the failure this shim exists to
prevent. The kernel can still drop it (no SELinux LSM: the option is ignored), so every context mount is read
back from /proc/self/mountinfo and classified by `verify`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass

from agent.node import host
from agent.errors import LabelConflict, MountFailed
from agent.label import Label, context_mount_option
from agent.node.mountinfo import Mount, find_mount, parse_line, read_mount_at, read_mountinfo, split_options
from csi_shim import fdpath
from csi_shim.plan import MS_BIND, MS_REMOUNT

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)

UMOUNT_NOFOLLOW = 8
MNT_DETACH = 2
MOUNTINFO = "/proc/self/mountinfo"

# Verification outcomes.
APPLIED = "applied"          # mountinfo shows the expected context
DROPPED = "dropped"          # a context was asked for, mountinfo shows none (kernel without SELinux, or a
                             # backend/mount(8) that removed the flag)
MISMATCH = "mismatch"        # mountinfo shows another context than asked for
NOT_MOUNTED = "not-mounted"  # nothing is mounted at the path
NO_CONTEXT = "no-context"    # none asked for (nothing to verify)


def _fs(text: str) -> bytes:
    return os.fsencode(text)


def _errno_text(code: int) -> str:
    return f"{os.strerror(code)} (errno {errno.errorcode.get(code, code)})"


def _shown(path: str) -> str:
    """A /proc/self/fd/N path as the directory it stands for, for messages."""
    if path.startswith("/proc/self/fd/"):
        with contextlib.suppress(OSError):
            return os.readlink(path)
    return path


def mount(source: str, target: str, fs_type: str | None, flags: int, data: str | None) -> None:
    result = _libc.mount(_fs(source), _fs(target), _fs(fs_type) if fs_type else None, flags,
                         _fs(data) if data else None)
    if result != 0:
        code = ctypes.get_errno()
        raise MountFailed(f"mount {_shown(source)} on {_shown(target)} (type {fs_type or '-'}, flags {flags:#x}, "
                          f"options {data!r}): {_errno_text(code)}", errno=code)


def mount_filesystem(source: str, target: str, fs_type: str, flags: int, data: str,
                     context_flag: str | None) -> bool:
    """mount(2) with the data string as planned, `context=` included; True when the kernel took it.

    A kernel without SELinux does not ignore `context=`: the filesystem refuses the unknown option with
    EINVAL. Only then (EINVAL, a context flag, no selinuxfs) is the mount repeated without the flag, loudly;
    the caller sees False, the verifier reports the context as dropped, and --on-context-dropped decides
    what happens next. With SELinux on, EINVAL is a real error (a bad label for this policy) and is raised.
    """
    try:
        mount(source, target, fs_type, flags, data)
        return context_flag is not None
    except MountFailed as err:
        if context_flag is None or err.errno != errno.EINVAL or host.selinux_enabled():
            raise
    rest = ",".join(option for option in split_options(data) if option != context_flag)
    mount(source, target, fs_type, flags, rest or None)
    log.warning("the kernel refused %s on %s (no SELinux on this node); mounted without it", context_flag,
                _shown(target))
    return False


def unmount(target: str) -> bool:
    """Unmount the topmost mount at `target`; False when nothing was mounted there."""
    return unmount_flags(target, UMOUNT_NOFOLLOW)


def unmount_flags(target: str, flags: int) -> bool:
    result = _libc.umount2(_fs(target), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOENT):
        return False
    raise MountFailed(f"unmount {target}: {_errno_text(code)}", errno=code)


def bind(source: str, target: str, flags: int) -> None:
    """Bind-mount `source` on `target`, then apply per-mount flags (read-only and the like) by a remount:
    the kernel ignores them on the bind itself."""
    mount(source, target, None, MS_BIND, None)
    if flags:
        try:
            mount("none", target, None, MS_BIND | MS_REMOUNT | flags, None)
        except MountFailed:
            unmount(target)
            raise


def mounts() -> list[Mount]:
    return read_mountinfo(MOUNTINFO)


def mounted_at(path: str, table: list[Mount] | None = None) -> Mount | None:
    return read_mount_at(path, MOUNTINFO) if table is None else find_mount(table, path)


# ---- mounts found and removed through descriptors (csi_shim.fdpath) ------------------------------------------

def mount_by_id(mount_id: int) -> Mount | None:
    """The mountinfo line of one mount id, parsing only that line."""
    with open(MOUNTINFO, "rb") as handle:
        data = b"\n" + handle.read()
    start = data.find(f"\n{mount_id} ".encode())
    if start < 0:
        return None
    end = data.find(b"\n", start + 1)
    return parse_line(data[start + 1:end if end >= 0 else None].decode("utf-8", "surrogateescape"))


def open_top(place: fdpath.Place) -> tuple[int | None, Mount | None]:
    """A descriptor of the directory at `place` now (None when there is none) and the mount whose root it is
    (the topmost when stacked), found by the directory's mount id, not by its name; None when nothing is
    mounted on it. The caller closes the descriptor."""
    child = place.open()
    if child is None:
        return None, None
    try:
        found = fdpath.mount_id(child)
        return child, None if found == fdpath.mount_id(place.parent) else mount_by_id(found)
    except BaseException:
        os.close(child)
        raise


def top_mount(place: fdpath.Place) -> Mount | None:
    child, entry = open_top(place)
    if child is not None:
        os.close(child)
    return entry


def open_root_of(place: fdpath.Place, entry: Mount) -> int:
    """A descriptor of the root of `entry`, a mount confirmed at `place`, checked to be that very mount:
    what remounts and the relabel and fsGroup walkers act on, whatever happens to the path's names meanwhile.
    The caller closes it."""
    child, now = open_top(place)
    if now is None or now.mount_id != entry.mount_id:
        if child is not None:
            os.close(child)
        raise MountFailed(f"{place.field} {place.given}: the mount there changed during the call")
    return child


def writable_views(entry: Mount, table: list[Mount]) -> list[tuple[Mount, str]]:
    """Pure: the writable mounts of `entry`'s filesystem whose tree holds `entry`'s root directory, top-most
    first, each with the path of that directory below the mount's root ("" for the mount's own root).

    A read-only bind mount of a writable filesystem (a driver's read-only publish of a directory) takes no
    relabel; the same directory reached through one of these can take it. None when the superblock itself is
    read-only: no view of it takes writes."""
    if "ro" in entry.super_options:
        return []
    views = []
    for other in reversed(table):
        if other.major_minor != entry.major_minor or other.read_only or other.mount_id == entry.mount_id:
            continue
        base = other.root.rstrip("/")
        if entry.root == other.root or entry.root.startswith(base + "/"):
            views.append((other, entry.root[len(base):].strip("/")))
    return views


def open_writable_view(root: int, entry: Mount) -> int | None:
    """A descriptor of the directory `root` (the root of the read-only mount `entry`) reached through a writable
    mount of the same filesystem, or None where there is none.

    The path there is taken from mountinfo and walked with no symlink followed; what it leads to is accepted
    only if it is the very directory `root` is (device and inode) and lies on the writable mount it was looked
    up through, so a name swapped meanwhile cannot redirect the relabel to another directory. Whoever walks
    the result must have checked `root` itself first: a view loses what the read-only mount's own source said
    (a bind of a system directory)."""
    here = os.fstat(root)
    for other, inside in writable_views(entry, mounts()):
        try:
            base = os.open(other.mount_point, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            view = fdpath.open_beneath(base, inside) if inside else os.dup(base)
        except OSError:
            continue
        finally:
            os.close(base)
        found = os.fstat(view)
        if (found.st_dev, found.st_ino) == (here.st_dev, here.st_ino) and fdpath.mount_id(view) == other.mount_id:
            return view
        os.close(view)
    return None


def mounted_here(place: fdpath.Place, entry: Mount | None) -> bool:
    """True when `entry` is listed at the path the CO named: a directory renamed away while it was worked on
    carries its mount to another name, which mountinfo shows."""
    return entry is not None and entry.mount_point == place.path


def unmount_place(place: fdpath.Place) -> bool:
    """umount2 of the topmost mount at `place`, reached through its open parent directory: a swapped
    ancestor cannot redirect it, and the last component, a mount point, can be neither renamed nor replaced;
    UMOUNT_NOFOLLOW refuses a symlink there."""
    return unmount(fdpath.proc_path(place.parent, place.name))


def undo_mount(directory_fd: int) -> None:
    """Remove the mount just made on the directory `directory_fd`, wherever a rename has moved it."""
    try:
        unmount_flags(fdpath.proc_path(directory_fd), 0)
    except MountFailed as err:
        log.error("could not undo a mount: %s", err)


def device_number(device: str) -> str:
    st = os.stat(device)
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


@dataclass(frozen=True)
class Verification:
    status: str
    expected: Label | None
    actual: Label | None
    path: str

    @property
    def ok(self) -> bool:
        return self.status in (APPLIED, NO_CONTEXT)

    def describe(self) -> str:
        want = context_mount_option(self.expected) if self.expected else "no context"
        if self.status == APPLIED:
            return f"{self.path} is mounted with {want}"
        if self.status == DROPPED:
            why = "somewhere on the mount path" if host.selinux_enabled() else "the kernel has no SELinux"
            return (f"{self.path} was mounted with {want} but /proc/self/mountinfo shows no context= on it: the "
                    f"option was dropped ({why})")
        if self.status == MISMATCH:
            return (f"{self.path} was mounted with {want} but /proc/self/mountinfo shows "
                    f"{context_mount_option(self.actual)}")
        if self.status == NOT_MOUNTED:
            return f"nothing is mounted at {self.path}"
        return f"{self.path}: no context requested"


def classify(mount_entry: Mount | None, expected: Label | None, path: str) -> Verification:
    """Pure comparison of one mountinfo entry with the expected label (canonical `Label` equality)."""
    if mount_entry is None:
        return Verification(NOT_MOUNTED, expected, None, path)
    actual = mount_entry.context
    if expected is None:
        return Verification(NO_CONTEXT, None, actual, path)
    if actual is None:
        return Verification(DROPPED, expected, None, path)
    if actual != expected:
        return Verification(MISMATCH, expected, actual, path)
    return Verification(APPLIED, expected, actual, path)


def verify(path: str, expected: Label | None) -> Verification:
    return classify(mounted_at(path), expected, path)


def shared_superblock_conflict(table: list[Mount], major_minor: str, label: Label | None, target: str,
                               selinux: bool) -> str | None:
    """Pure: why mounting device `major_minor` at `target` with `label` must be refused, or None.

    A second mount of a device that is mounted already shares its superblock, and a superblock has one
    context: the kernel either fails with EBUSY or, worse, hands out the old label. Where SELinux is off
    mountinfo never shows a context, so only a context mountinfo does show can conflict there.
    """
    for existing in table:
        if existing.major_minor != major_minor or existing.mount_point == target:
            continue
        if existing.context == label or (existing.context is None and not selinux):
            continue
        have = context_mount_option(existing.context) if existing.context else "no context"
        want = context_mount_option(label) if label else "no context"
        return (f"device {major_minor} is already mounted at {existing.mount_point} with {have}; mounting it "
                f"at {target} with {want} would share that superblock and its label")
    return None


def refuse_shared_superblock(device: str, label: Label | None, target: str) -> None:
    try:
        number = device_number(device)
    except OSError:
        return
    why = shared_superblock_conflict(mounts(), number, label, target, host.selinux_enabled())
    if why:
        raise LabelConflict(why)


# ---- loop devices --------------------------------------------------------------------------------------

_loop_lock = threading.Lock()
SYS_BLOCK = "/sys/block"


def loop_devices() -> dict[str, tuple[str, str]]:
    """Attached loop devices: /dev/loopN -> (backing file as the kernel reports it, "major:minor")."""
    out = {}
    try:
        names = os.listdir(SYS_BLOCK)
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"{SYS_BLOCK}/{name}/loop/backing_file", encoding="utf-8", errors="surrogateescape") as f:
                backing = f.read().rstrip("\n")
            with open(f"{SYS_BLOCK}/{name}/dev", encoding="ascii") as f:
                out[f"/dev/{name}"] = (backing, f.read().strip())
        except OSError:
            continue
    return out


def find_loop(image: str) -> list[str]:
    image = os.path.realpath(image)
    return sorted(dev for dev, (backing, _) in loop_devices().items() if backing == image)


def attach_loop(image: str) -> str:
    """The loop device backing `image`, attached now unless one already is (a retry after a crash)."""
    with _loop_lock:
        existing = find_loop(image)
        if existing:
            return existing[0]
        try:
            out = subprocess.run(["losetup", "--find", "--show", image], check=True, capture_output=True,
                                 text=True, timeout=60)
        except FileNotFoundError:
            raise MountFailed("losetup is not installed (util-linux)") from None
        except subprocess.CalledProcessError as err:
            raise MountFailed(f"losetup --find --show {image}: {err.stderr.strip() or err.returncode}") from None
        return out.stdout.strip()


def detach_loop(device: str, settle: float = 30.0) -> None:
    """Detach `device` and return once it is free. While another program holds it open (a probe such as blkid)
    the kernel only marks it for autoclear and frees it at the last close; the volume is not gone until then,
    so wait up to `settle` seconds and otherwise fail, letting the CO retry. A device still mounted somewhere
    (a bind the host made) is left to autoclear at that unmount: waiting for it would only stall the caller."""
    with _loop_lock:
        number = device_number(device) if os.path.exists(device) else None
        result = subprocess.run(["losetup", "--detach", device], capture_output=True, text=True, timeout=60)
        if result.returncode != 0 and "No such device" not in result.stderr:
            raise MountFailed(f"losetup --detach {device}: {result.stderr.strip() or result.returncode}")
        backing = f"{SYS_BLOCK}/{os.path.basename(device)}/loop/backing_file"
        deadline = time.monotonic() + settle
        pause = 0.005
        while os.path.exists(backing):
            if number is not None and any(m.major_minor == number for m in mounts()):
                log.info("%s is still mounted elsewhere: the kernel detaches it at that unmount", device)
                return
            if time.monotonic() >= deadline:
                raise MountFailed(f"{device} is still attached {settle:g} s after its detach: another program "
                                  f"holds it open; the kernel frees it when that program closes it")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


def detach_image(image: str) -> None:
    for device in find_loop(image):
        detach_loop(device)


def make_filesystem(device_or_image: str, fs_type: str) -> None:
    command = {"ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"],
               "xfs": ["mkfs.xfs", "-q", "-f"]}[fs_type]
    try:
        subprocess.run(command + [device_or_image], check=True, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise MountFailed(f"{command[0]} is not installed") from None
    except subprocess.CalledProcessError as err:
        raise MountFailed(f"{command[0]} {device_or_image}: {err.stderr.strip() or err.returncode}") from None


def probe_device(device: str) -> dict[str, str]:
    """What `blkid -p` (a direct probe of the device, no cache) finds on it: TYPE, USAGE, PTTYPE, ...; empty
    when the device holds no known signature."""
    try:
        out = subprocess.run(["blkid", "-p", "-o", "export", device], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise MountFailed("blkid is not installed (util-linux)") from None
    if out.returncode == 2 and not out.stdout.strip():
        return {}
    if out.returncode == 8:  # more than one signature: ambivalent, never guessed at
        return {"TYPE": "ambivalent", "USAGE": "ambivalent"}
    if out.returncode != 0:
        raise MountFailed(f"blkid -p {device}: {out.stderr.strip() or out.returncode}")
    found = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key != "DEVNAME":
            found[key] = value
    return found


def block_device_number(device: str) -> str | None:
    """"major:minor" of a block device (symlinks such as /dev/disk/by-id/... followed); None when `device` is
    missing or not a block device."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def writable(path: str) -> bool:
    """False when the mount at `path` is read-only (its own flag or its superblock's)."""
    return not os.statvfs(path).f_flag & os.ST_RDONLY


def statvfs_usage(path: str) -> tuple[int, int, int, int, int, int]:
    """(bytes available, total, used, inodes available, total, used) of the filesystem at `path`."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    available = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return available, total, used, st.f_favail, st.f_files, st.f_files - st.f_ffree
