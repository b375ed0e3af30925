"""Recursive relabel: the fallback when a volume cannot be mounted with `-o context=`.

The C walker (`agent._relabel`) walks, compares and sets; this module decides. It validates the label
(`Label.parse`) and the options, refuses the system paths go-selinux refuses, applies kubelet's fsGroup
`OnRootMismatch` rule (a root that already has the group, the modes and the label means an earlier walk
finished, so none is made), and turns what the walker reports into `RelabelStats` or a typed error.

Semantics, compared with go-selinux `Chcon(path, label, true)` (what CRI-O, containerd and podman run):
  - symlinks are never followed, not even one swapped in during the walk; the link itself is labelled;
  - an entry that already has the label is not written, so its ctime does not change;
  - directories are read with O_NOATIME (where the caller owns them or has CAP_FOWNER), so the walk does not
    write their atimes either;
  - with `one_file_system` (the default) directories on another filesystem are neither labelled nor
    entered (go-selinux crosses mounts), and neither are files mounted over an entry (a bind-mounted file):
    when mountinfo lists a mount point below the root, every entry is stat'ed to find them;
  - entries removed during the walk count as `vanished`, not as errors (go-selinux does the same for ENOENT);
  - other errors do not stop the walk: they are counted by errno with the first few paths, except EROFS
    and ENOTSUP on the volume's own filesystem, which stop it and raise `RelabelFailed`;
  - the root is labelled last, and only when nothing below it failed (`root_deferred` otherwise), so a root
    carrying the label means a finished, complete walk.
"""

from __future__ import annotations

import errno as errno_mod
import os
import pwd
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import Callable

from agent.errors import InvalidInput, PathOutsideRoot, RelabelFailed
from agent.label import Label

# go-selinux selinux_linux.go chcon(): relabelling these exact paths is refused ("SELinux relabeling of %s
# is not allowed"), as are $HOME and the home directory of $SUDO_USER.
SYSTEM_PATHS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/etc/passwd", "/etc/pki", "/etc/shadow", "/home", "/lib", "/lib64",
    "/media", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib",
    "/var/log",
})

FS_GROUP_POLICIES = ("Always", "OnRootMismatch")  # kubelet's fsGroupChangePolicy values
XATTR_NAME = "security.selinux"

# kubelet pkg/volume/volume_linux.go
_RW_MASK = 0o660
_RO_MASK = 0o440
_EXEC_MASK = 0o110

Progress = Callable[["RelabelProgress"], None]


@dataclass(frozen=True)
class RelabelProgress:
    """What a progress callback sees, every `interval` seconds during the walk."""

    seen: int
    changed: int
    elapsed: float


@dataclass(frozen=True)
class ErrorSample:
    errno: int
    op: str
    path: bytes  # absolute; may not be UTF-8

    def to_json(self) -> dict:
        return {"errno": errno_mod.errorcode.get(self.errno, str(self.errno)), "op": self.op,
                "path": _show(self.path), "message": os.strerror(self.errno)}


@dataclass(frozen=True)
class RelabelStats:
    """The outcome of one walk. `changed` counts entries written (in a dry run: that would be written)."""

    path: bytes
    label: str
    seen: int = 0
    changed: int = 0
    already_correct: int = 0
    other_filesystem: int = 0
    vanished: int = 0
    owner_changed: int = 0
    mode_changed: int = 0
    errors: int = 0
    errors_by_errno: dict = field(default_factory=dict)  # errno name -> count
    error_samples: tuple[ErrorSample, ...] = ()
    dry_run: bool = False
    threads: int = 1
    elapsed: float = 0.0
    fs_group: int | None = None
    ownership_skipped: bool = False  # OnRootMismatch found the root's ownership already right
    walk_skipped: bool = False  # OnRootMismatch found ownership and label of the root right: no walk at all
    xattr_calls: str = "setxattrat"  # or "proc-fd" before Linux 6.13
    root_deferred: bool = False  # the root was left as it was because entries below it failed
    threads_active: int = 0  # walker threads that labelled at least one entry

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def rate(self) -> float:
        return self.seen / self.elapsed if self.elapsed > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "path": _show(self.path), "label": self.label, "dryRun": self.dry_run, "threads": self.threads,
            "seen": self.seen, "changed": self.changed, "alreadyCorrect": self.already_correct,
            "otherFilesystem": self.other_filesystem, "vanished": self.vanished,
            "fsGroup": self.fs_group, "ownershipSkipped": self.ownership_skipped, "walkSkipped": self.walk_skipped,
            "ownerChanged": self.owner_changed, "modeChanged": self.mode_changed,
            "errors": self.errors, "errorsByErrno": dict(self.errors_by_errno),
            "errorSamples": [sample.to_json() for sample in self.error_samples],
            "elapsedSeconds": round(self.elapsed, 6), "entriesPerSecond": round(self.rate),
            "xattrCalls": self.xattr_calls, "rootDeferred": self.root_deferred,
        }


def _show(path: bytes) -> str:
    """A path for people and JSON: UTF-8 where it is, backslash escapes where it is not."""
    return path.decode("utf-8", "backslashreplace")


def _refused_paths() -> set[str]:
    refused = set(SYSTEM_PATHS)
    home = os.environ.get("HOME")
    if home:
        refused.add(os.path.normpath(home))
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            refused.add(os.path.normpath(pwd.getpwnam(sudo_user).pw_dir))
        except KeyError:
            pass
    return refused


def check_path(path) -> bytes:
    """The absolute, normalised path to walk; raises PathOutsideRoot for the paths go-selinux refuses.

    Both the path as written and the path with symlinks resolved are checked, so `/data/link/..` or a
    symlink to `/usr` cannot stand in for a system path.
    """
    raw = os.fsencode(path)
    if not raw:
        raise InvalidInput("relabel: empty path")
    if b"\0" in raw:
        raise InvalidInput(f"relabel: path {_show(raw)!r} contains a NUL byte")
    absolute = os.path.normpath(os.path.abspath(raw))
    refused = {os.fsencode(p) for p in _refused_paths()}
    # realpath of the path as given: normalising `link/..` lexically first would hide where it leads.
    for candidate in (absolute, os.path.realpath(raw)):
        if candidate in refused:
            raise PathOutsideRoot(f"SELinux relabeling of {_show(candidate)} is not allowed")
    return absolute


def ownership_needs_change(st: os.stat_result, gid: int, read_only: bool) -> bool:
    """kubelet requiresPermissionChange(): is the root not yet owned and moded for the fsGroup?"""
    if st.st_gid != gid:
        return True
    if not stat_mod.S_ISDIR(st.st_mode):
        return True
    wanted = (_RO_MASK if read_only else _RW_MASK) | _EXEC_MASK
    return (st.st_mode & wanted) != wanted or not st.st_mode & stat_mod.S_ISGID


def root_label_matches(path: bytes, target: Label) -> bool:
    """Does the entry at `path` itself (not a symlink's target) carry `target`, compared canonically?"""
    try:
        raw = os.getxattr(path, XATTR_NAME, follow_symlinks=False)
    except OSError:
        return False
    try:
        return Label.parse(raw.rstrip(b"\0").decode("ascii")) == target
    except (UnicodeDecodeError, InvalidInput):
        return False


def _filesystem_of(path: bytes) -> str:
    """`fstype on mountpoint` for the mount holding path, for error messages; best effort."""
    try:
        from agent.mountinfo import read_mountinfo

        target = os.fsdecode(os.path.realpath(path))
        best = None
        for mount in read_mountinfo():
            point = mount.mount_point
            if target == point or target.startswith(point.rstrip("/") + "/"):
                if best is None or len(point) >= len(best.mount_point):
                    best = mount
        if best is not None:
            return f"{best.fstype} filesystem mounted on {best.mount_point}"
    except (OSError, ValueError):
        pass
    return "filesystem"


def mount_points_below(root: bytes, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether any mount point lies strictly below `root` (then the walker stats files too, to find files
    mounted over entries). An unreadable mountinfo counts as yes: the stat costs time, not correctness."""
    from agent.mountinfo import read_mountinfo

    try:
        mounts = read_mountinfo(mountinfo)
    except (OSError, ValueError):
        return True
    real = os.path.realpath(root).rstrip(b"/") + b"/"
    return any(os.fsencode(m.mount_point).startswith(real) for m in mounts)


def relabel(path, label, *, threads: int | None = None, one_file_system: bool = True, dry_run: bool = False,
            fs_group: int | None = None, fs_group_policy: str = "Always", read_only: bool = False,
            compare: bool = True, progress: Progress | None = None, progress_interval: float = 0.2,
            _force_proc: bool = False, _fd_budget: int = 0) -> RelabelStats:
    """Set the SELinux label `label` on `path` and everything below it; see the module docstring.

    `fs_group` applies kubelet's fsGroup ownership in the same pass (group to fs_group; group rw, or r on a
    `read_only` volume; directories also group x and setgid; symlinks only chowned). With
    `fs_group_policy="OnRootMismatch"` the ownership part is skipped when the root already has the group and
    the permissions, and the whole walk is skipped when the root also carries the label: the root is labelled
    last, so that root is what a finished walk leaves (`walk_skipped`). A root with the right ownership but
    another label gets a walk that checks labels only. `compare=False` writes every entry without
    reading it first (what chcon -R and go-selinux do): faster for a first labelling, but it changes the
    ctime of entries that were already right.
    """
    # Imported here so that the rest of the CLI works from a checkout whose extension is not built yet.
    from agent import _relabel

    target = label if isinstance(label, Label) else Label.parse(str(label))
    root = check_path(path)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) or os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 1024:
        raise InvalidInput(f"relabel: threads must be an integer from 1 to 1024, not {threads!r}")
    if fs_group_policy not in FS_GROUP_POLICIES:
        raise InvalidInput(f"relabel: fsGroupChangePolicy must be one of {', '.join(FS_GROUP_POLICIES)}, "
                           f"not {fs_group_policy!r}")
    if fs_group is not None and (isinstance(fs_group, bool) or not isinstance(fs_group, int)
                                 or not 0 <= fs_group < 2**32 - 1):
        raise InvalidInput(f"relabel: fsGroup must be a group id from 0 to 4294967294, not {fs_group!r}")

    try:
        root_stat = os.lstat(root)
    except FileNotFoundError:
        raise InvalidInput(f"relabel: {_show(root)}: no such file or directory") from None
    except OSError as err:
        raise RelabelFailed(f"relabel: {_show(root)}: {err.strerror}", errno=err.errno, path=root) from None

    gid = -1
    ownership_skipped = False
    if fs_group is not None:
        if fs_group_policy == "OnRootMismatch" and not ownership_needs_change(root_stat, fs_group, read_only):
            ownership_skipped = True
            if root_label_matches(root, target):
                return RelabelStats(path=root, label=str(target), seen=1, already_correct=1, dry_run=dry_run,
                                    threads=threads, fs_group=fs_group, ownership_skipped=True,
                                    walk_skipped=True)
        else:
            gid = fs_group

    flags = _relabel.ABORT_FATAL
    if one_file_system:
        flags |= _relabel.ONE_FS
    if dry_run:
        flags |= _relabel.DRY_RUN
    if read_only:
        flags |= _relabel.RO_GROUP
    if not compare:
        flags |= _relabel.BLIND
    if _force_proc:
        flags |= _relabel.FORCE_PROC
    if mount_points_below(root):
        flags |= _relabel.STAT_FILES

    callback = None
    started = time.monotonic()
    if progress is not None:
        def callback(seen, changed):
            progress(RelabelProgress(seen, changed, time.monotonic() - started))

    canonical = str(target).encode()
    try:
        raw = _relabel.walk(root, canonical, threads, flags, gid, callback, progress_interval, _fd_budget)
    except FileNotFoundError:
        raise InvalidInput(f"relabel: {_show(root)}: no such file or directory") from None
    except OSError as err:
        raise RelabelFailed(f"relabel: cannot open {_show(root)}: {err.strerror}", errno=err.errno,
                            path=root) from None
    elapsed = time.monotonic() - started

    samples = tuple(ErrorSample(err, op, os.path.join(root, rel) if rel else root)
                    for err, op, rel in raw["error_samples"])
    if raw["fatal_errno"]:
        code = raw["fatal_errno"]
        where = next((s.path for s in samples if s.errno == code), root)
        if code == errno_mod.EROFS:
            why = "is read-only"
        else:
            why = "does not support SELinux labels (security.selinux xattrs)"
        raise RelabelFailed(f"relabel: the {_filesystem_of(where)} {why}: {os.strerror(code)} at {_show(where)}",
                            errno=code, path=where)

    return RelabelStats(
        path=root, label=str(target), seen=raw["seen"], changed=raw["changed"],
        already_correct=raw["already_correct"], other_filesystem=raw["other_filesystem"],
        vanished=raw["vanished"], owner_changed=raw["owner_changed"], mode_changed=raw["mode_changed"],
        errors=raw["errors"],
        errors_by_errno={errno_mod.errorcode.get(k, str(k)): v for k, v in sorted(raw["errors_by_errno"].items())},
        error_samples=samples, dry_run=dry_run, threads=threads, elapsed=elapsed, fs_group=fs_group,
        ownership_skipped=ownership_skipped, xattr_calls="setxattrat" if raw["xattrat"] else "proc-fd",
        root_deferred=raw["root_deferred"], threads_active=raw["threads_active"],
    )
