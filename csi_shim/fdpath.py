"""CO-given paths opened beneath the kubelet root by file descriptor, never followed by name.

Directories below the kubelet root are created by kubelet, and some of them can be renamed by whoever has a
pod's volume directory or a hostPath under the root. A path that is checked and then handed to mkdir(2) or
mount(2) by name can change between the two: one swap of a component for a symlink (renameat2
RENAME_EXCHANGE) puts the mount anywhere on the host. So each path is opened once with openat2(2)
(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) from a descriptor of the root, and
everything after acts on the descriptors: a symlink anywhere below the root is refused, and the directory
that was opened is the one that gets the mount, wherever a rename moves its name later (callers confirm
against mountinfo that it is still at its name).

The configured root itself may be a symlink (some distributions link /var/lib/kubelet elsewhere): that is
configuration, resolved once at start, not hostile input.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import posixpath
import stat
import threading

from agent.errors import InvalidInput, PathOutsideRoot, VolumeNotFound

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long

SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic, Linux >= 5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_have_openat2 = True


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return fd


def _walk(dirfd: int, relative: str, directory: bool) -> int:
    """openat2's guarantees where it is missing (before Linux 5.6, or refused by seccomp): one component at a
    time, refusing each symlink; '..' never reaches here (validate.path_below refuses it), so this stays
    beneath `dirfd`."""
    current = os.dup(dirfd)
    names = relative.split("/")
    try:
        for index, name in enumerate(names):
            following = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            os.close(current)
            current = following
            mode = os.fstat(current).st_mode
            if stat.S_ISLNK(mode):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
            if not stat.S_ISDIR(mode) and (directory or index < len(names) - 1):
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), relative)
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)


def open_beneath(dirfd: int, relative: str, directory: bool = True) -> int:
    """An O_PATH descriptor of `relative` below `dirfd` (a directory unless `directory` is False), no symlink
    followed on the way nor at the end."""
    global _have_openat2
    if _have_openat2:
        try:
            return openat2(dirfd, relative, _DIR_FLAGS if directory else _DIR_FLAGS & ~os.O_DIRECTORY, _RESOLVE)
        except OSError as err:
            # ENOSYS: before Linux 5.6. EPERM: a seccomp filter that refuses syscalls it does not know (an
            # O_PATH open as root has no other EPERM); the walk below then answers for real.
            if err.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _have_openat2 = False
    return _walk(dirfd, relative, directory)


def mount_id(fd: int) -> int:
    """The id of the mount `fd` lives on, as /proc/self/mountinfo numbers it (fdinfo: Linux >= 3.15)."""
    info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(info, 4096)
    finally:
        os.close(info)
    start = data.find(b"mnt_id:")
    if start < 0:
        raise OSError(errno.ENOTSUP, "no mnt_id in /proc/self/fdinfo")
    return int(data[start + len(b"mnt_id:"):data.index(b"\n", start)])


def proc_path(fd: int, name: str | None = None) -> str:
    """A path naming what `fd` holds (the kernel jumps to it without walking names), or its entry `name`."""
    return f"/proc/self/fd/{fd}" if name is None else f"/proc/self/fd/{fd}/{name}"


class Place:
    """One CO-given path below the root, held open: `parent` (descriptor of its parent directory), `name`
    (its last component), `path` (root's real path + the rest: what /proc/self/mountinfo shows once a mount
    is there), `field` (the CSI field, for messages). Close it (or use `with`) when done."""

    def __init__(self, parent: int, name: str, path: str, given: str, field: str):
        self.parent, self.name, self.path, self.given, self.field = parent, name, path, given, field

    def open(self, directory: bool = True) -> int | None:
        """A new O_PATH descriptor of the directory at `name` now (the top mount's root when something is
        mounted there); None when there is no such entry. Symlinks are refused, and so are other files
        unless `directory` is False (a block volume's target is a file)."""
        try:
            return open_beneath(self.parent, self.name, directory)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return None
            raise refusal(err, self.given, self.field) from None

    def is_directory(self) -> bool:
        """True when a directory (not a symlink) is at `name` now; False when nothing is."""
        child = self.open()
        if child is None:
            return False
        os.close(child)
        return True

    def check(self) -> None:
        """Refuse a symlink at `name` (for paths handed on to a backend, which would follow it)."""
        child = self.open(directory=False)
        if child is not None:
            os.close(child)

    def close(self) -> None:
        if self.parent >= 0:
            os.close(self.parent)
            self.parent = -1

    def __enter__(self) -> "Place":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def refusal(err: OSError, given: str, field: str) -> Exception:
    """The one-line error for a path openat2 refused; INVALID_ARGUMENT like the other path checks."""
    if err.errno == errno.ELOOP:
        return PathOutsideRoot(f"{field} {given!r} goes through a symbolic link below the kubelet root; symbolic "
                               f"links there are refused (mount(2) would follow them out of the root)")
    if err.errno == errno.EXDEV:
        return PathOutsideRoot(f"{field} {given!r} leads out of the kubelet root")
    if err.errno == errno.ENOTDIR:
        return InvalidInput(f"{field} {given!r}: a component is not a directory")
    if err.errno == errno.ENOENT:
        return InvalidInput(f"{field} {given!r}: its parent directory does not exist")
    return InvalidInput(f"{field} {given!r}: {os.strerror(err.errno)}")


class KubeletRoot:
    """The kubelet root held open, and CO-given paths opened beneath it."""

    def __init__(self, configured: str):
        self.configured = posixpath.normpath(configured)
        self.real = os.path.realpath(configured)
        self._fd = -1
        self._lock = threading.Lock()

    @property
    def fd(self) -> int:
        """The root's descriptor, opened on first use (the shim may start before kubelet creates it)."""
        with self._lock:
            if self._fd < 0:
                try:
                    self._fd = os.open(self.real, _DIR_FLAGS)
                except OSError as err:
                    raise InvalidInput(f"--kubelet-root {self.configured}: {err.strerror}") from None
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def relative(self, normal: str) -> str:
        """`normal` (checked by validate.path_below against the configured root) relative to the root; a path
        spelled with the root's real path is taken as well."""
        for prefix in (self.configured, self.real):
            if normal.startswith(prefix.rstrip("/") + "/"):
                return normal[len(prefix.rstrip("/")) + 1:]
        raise PathOutsideRoot(f"{normal!r} is not below the kubelet root directory {self.configured}")

    def resolved(self, normal: str) -> str:
        """The path as mountinfo lists it: no symlink below the root is accepted, so only the root's changes."""
        return posixpath.join(self.real, self.relative(normal))

    def place(self, normal: str, field: str) -> Place:
        """Open the parent of `normal` beneath the root; refusals raise (INVALID_ARGUMENT), a missing parent
        raises FileNotFoundError for the caller to answer as its call needs."""
        relative = self.relative(normal)
        head, name = posixpath.split(relative)
        try:
            parent = open_beneath(self.fd, head) if head else os.dup(self.fd)
        except OSError as err:
            if err.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, f"{field} {normal!r}: its parent directory does not "
                                                      f"exist") from None
            raise refusal(err, normal, field) from None
        return Place(parent, name, posixpath.join(self.real, relative), normal, field)

    def volume_place(self, normal: str, field: str) -> Place | None:
        """place() for a path that must hold a mounted volume (NodeGetVolumeStats, NodeExpandVolume): a refused
        path can hold none of this node's volumes, which the CSI spec answers with NOT_FOUND; None when the
        parent is missing."""
        try:
            return self.place(normal, field)
        except FileNotFoundError:
            return None
        except (PathOutsideRoot, InvalidInput) as err:
            raise _not_found(err, self.configured) from None

    def check_volume_path(self, normal: str, field: str) -> None:
        """volume_place() and the last component too; nothing of it stays open."""
        place = self.volume_place(normal, field)
        if place is None:
            return
        with place:
            try:
                place.check()
            except (PathOutsideRoot, InvalidInput) as err:
                raise _not_found(err, self.configured) from None


def _not_found(err: Exception, root: str) -> VolumeNotFound:
    return VolumeNotFound(f"{err} (no volume of this node can be there; the kubelet root is {root})")
