"""Which roots a relabel or fsGroup walk must refuse: system directories, by name and by what they are.

go-selinux refuses a fixed list of paths by their text. A path's text is not what it is: `/proc/1/root/etc`, a
bind mount of `/etc` somewhere under a volume, or a symlink all reach a system directory by another name. So a
root is refused when
  - its text, or the text with symlinks resolved, is a system path (go-selinux's rule), or lies below /proc
    (whose magic links lead anywhere);
  - the directory itself (st_dev, st_ino) is a system directory;
  - mountinfo shows it on a mount whose source is a system directory (the mount's root, field 4, on the same
    device as that directory), or a directory at or below /etc, /usr, /boot, /proc, /sys or /dev.
The mountinfo rule (`mount_refusal`) is pure; `check_text` and `check_identity` do the I/O.
"""

from __future__ import annotations

import os
import posixpath
import pwd

from agent.errors import InvalidInput, PathOutsideRoot
from agent.node.mountinfo import Mount

# go-selinux selinux_linux.go chcon(): relabelling these exact paths is refused ("SELinux relabeling of %s
# is not allowed"), as are $HOME and the home directory of $SUDO_USER.
SYSTEM_PATHS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/etc/passwd", "/etc/pki", "/etc/shadow", "/home", "/lib", "/lib64",
    "/media", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib",
    "/var/log",
})
# Trees no mount below a volume may come from, at any depth (a bind of /usr/share is as bad as one of /usr).
SYSTEM_TREES = ("/etc", "/usr", "/boot", "/proc", "/sys", "/dev")


def show(path) -> str:
    """A path for people: UTF-8 where it is, backslash escapes where it is not."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def refused(shown) -> PathOutsideRoot:
    return PathOutsideRoot(f"SELinux relabeling of {show(shown)} is not allowed")


def refused_paths() -> set[str]:
    paths = set(SYSTEM_PATHS)
    home = os.environ.get("HOME")
    if home:
        paths.add(os.path.normpath(home))
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            paths.add(os.path.normpath(pwd.getpwnam(sudo_user).pw_dir))
        except KeyError:
            pass
    return paths


def _at_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def check_text(path) -> bytes:
    """The absolute, normalised path; raises PathOutsideRoot for a system path as written or with symlinks
    resolved (`/data/link/..` or a symlink to `/usr` cannot stand in for one), and for paths below /proc."""
    raw = os.fsencode(path)
    if not raw:
        raise InvalidInput("relabel: empty path")
    if b"\0" in raw:
        raise InvalidInput(f"relabel: path {show(raw)!r} contains a NUL byte")
    absolute = os.path.normpath(os.path.abspath(raw))
    if _at_or_below(os.fsdecode(absolute), "/proc"):
        raise refused(absolute)
    try:
        # realpath of the path as given: normalising `link/..` lexically first would hide where it leads.
        real = os.path.realpath(raw)
    except OSError as err:
        raise PathOutsideRoot(f"SELinux relabeling of {show(absolute)} is not allowed: it cannot be resolved "
                              f"({err.strerror})") from None
    names = {os.fsencode(p) for p in refused_paths()}
    for candidate in (absolute, real):
        if candidate in names or _at_or_below(os.fsdecode(candidate), "/proc"):
            raise refused(candidate)
    return absolute


def holder(mounts: list[Mount], path: str) -> tuple[Mount, str] | None:
    """The mount that shows `path` (the deepest mount point above it, the last listed among equals) and where
    `path` lies inside that mount's filesystem (its root, field 4, joined with the rest of the path)."""
    best = None
    for mount in mounts:
        if _at_or_below(path, mount.mount_point) and (best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    if best is None:
        return None
    rest = path[len(best.mount_point.rstrip("/")):].lstrip("/")
    return best, posixpath.normpath(posixpath.join(best.root, rest))


def mount_refusal(mount: Mount, mounts: list[Mount], is_mount_root: bool,
                  names=frozenset(SYSTEM_PATHS), trees=SYSTEM_TREES) -> str | None:
    """The system path that `mount` (the mount a walk root is on) is a bind of, or None.

    A root that is the mount's own root is refused when the mount's source (field 4) is a system path on its
    device; any root on a mount whose source lies at or below one of `trees` on its device is refused too
    (a bind of /etc/ssh, and every directory inside it). Devices are compared so that another filesystem's own
    `/` or `/etc` is not mistaken for the host's."""
    for system in sorted(set(names) | set(trees)):
        held = holder(mounts, system)
        if held is None or held[0].major_minor != mount.major_minor:
            continue
        inside = held[1]
        if system in trees and _at_or_below(mount.root, inside):
            return system
        if is_mount_root and system in names and mount.root == inside:
            return system
    return None


def check_identity(fd: int, shown, mounts: list[Mount], mount_id: int, is_mount_root: bool) -> None:
    """Refuse the open directory `fd` when it is a system directory by (st_dev, st_ino), or is on a mount of
    one (`mount_refusal`); `mount_id` is its mount (0: unknown, then only the identity is compared)."""
    st = os.fstat(fd)
    for path in sorted(refused_paths()):
        try:
            other = os.stat(path)
        except OSError:
            continue
        if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
            raise PathOutsideRoot(f"SELinux relabeling of {show(shown)} is not allowed: it is {path}")
    mount = next((m for m in mounts if m.mount_id == mount_id), None) if mount_id else None
    if mount is not None:
        system = mount_refusal(mount, mounts, is_mount_root, frozenset(refused_paths()))
        if system is not None:
            raise PathOutsideRoot(f"SELinux relabeling of {show(shown)} is not allowed: it is mounted from "
                                  f"{system if mount.root == '/' else mount.root}")
