"""Recursive relabel and kubelet's fsGroup ownership: the fallback when a volume cannot be mounted with
`-o context=`, and the ownership pass for a volume that needs no label.

The C walker (`agent.relabel._walker`) walks, compares and sets; this module decides. It validates the label
(`Label.parse`) and the options, opens the root and refuses system directories (`agent.node.system_paths`: by
name as go-selinux does, and by what the opened directory is), takes kubelet's fsGroup rule and its
`OnRootMismatch` policy from `agent.relabel.ownership` (the walker applies the numbers it is given), names the
errnos that stop a walk (`FATAL_ERRNOS`), and turns what the walker reports into `RelabelStats` or a typed error.

Semantics, compared with go-selinux `Chcon(path, label, true)` (what CRI-O, containerd and podman run):
  - symlinks are never followed, not even one swapped in during the walk; the link itself is labelled; the
    root is opened without following any symlink on its way (its path is resolved first), or taken as an
    already open directory fd;
  - an entry that already has the label is not written, so its ctime does not change (on ext4, which itself
    skips a set of the value an xattr already holds, entries after a run of other labels are written without
    being read first: `IDENTICAL_SET_IS_NOOP`; such an entry counts as changed, but stays as it was);
  - directories are read with O_NOATIME (where the caller owns them or has CAP_FOWNER), so the walk does not
    write their atimes either;
  - with `one_file_system` (the default) no mount point below the root is labelled, chowned or entered, of
    another filesystem or a bind mount of the same one (go-selinux crosses mounts); neither are files
    mounted over an entry (a bind-mounted file): when mountinfo lists a mount point below the root, every
    entry is stat'ed to find them. They count as `other_filesystem`;
  - entries removed during the walk count as `vanished`, not as errors (go-selinux does the same for ENOENT);
  - other errors do not stop the walk: they are counted by errno with the first few paths, except EROFS
    and ENOTSUP on the volume's own filesystem, which stop it and raise `RelabelFailed`;
  - the root is labelled (and owned) last, and only when nothing below it failed (`root_deferred`
    otherwise), so a root carrying the label means a finished, complete walk.
`apply_fs_group` is the same walk for ownership only: no label is read or written.
"""

from __future__ import annotations

import errno as errno_mod
import os
import stat as stat_mod
import time
from dataclasses import dataclass, field
from typing import Callable

from agent.errors import InvalidInput, RelabelFailed
from agent.label import Label
from agent.node.mountinfo import read_mountinfo
from agent.node.system_paths import SYSTEM_PATHS, check_identity, check_text  # noqa: F401 (SYSTEM_PATHS: re-export)
from agent.node.system_paths import show as _show
from agent.relabel import _walker
from agent.relabel.ownership import FS_GROUP_POLICIES, Ownership, ownership_to_apply

XATTR_NAME = "security.selinux"

# Errors that stop a walk when they happen on the volume's own filesystem: a read-only filesystem (EROFS) or one
# that cannot hold security.* xattrs (ENOTSUP) fails every remaining entry the same way, so walking on would only
# repeat the error; the caller gets one RelabelFailed naming the filesystem instead. Anywhere else (a mount below
# the root, entered with one_file_system off) they are counted like any other error.
FATAL_ERRNOS = (errno_mod.EROFS, errno_mod.ENOTSUP)

# Filesystems that leave an xattr set to the value it already has as it is: no write, no ctime change (ext4 since
# Linux 4.6, "ext4: shortcut setting of xattr to the same value"). There a get before each set buys nothing once a
# chunk shows the walk is relabelling: after UNREAD_AFTER entries in a row with another label, the walker writes
# the rest of that chunk without reading (a get costs 0.2-0.5x a set; on an already-labelled tree the run never
# builds up, so that pass stays gets only). An entry among them that had the label already is counted as changed
# (written), but the filesystem leaves it and its ctime alone. Elsewhere (xfs, tmpfs, btrfs...) a set rewrites,
# so every entry is read first.
IDENTICAL_SET_IS_NOOP = frozenset({"ext4"})
UNREAD_AFTER = 32

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


def check_path(path) -> bytes:
    """The absolute, normalised path to walk; raises PathOutsideRoot for the paths go-selinux refuses, as
    written or with symlinks resolved (`agent.node.system_paths.check_text`). What the path turns out to be is
    checked again once it is open (`_open_root`)."""
    return check_text(path)


def root_label_matches(path: bytes, target: Label, follow: bool = False) -> bool:
    """Does the entry at `path` itself (not a symlink's target; `follow` for a /proc/self/fd link) carry
    `target`, compared canonically?"""
    try:
        raw = os.getxattr(path, XATTR_NAME, follow_symlinks=follow)
    except OSError:
        return False
    try:
        return Label.parse(raw.rstrip(b"\0").decode("ascii")) == target
    except (UnicodeDecodeError, InvalidInput):
        return False


@dataclass
class _Root:
    """What a walk starts from: our own O_PATH fd of a directory (None: a single non-directory entry, walked
    by path without following it), the path shown in messages, and its stat."""

    fd: int | None
    path: bytes
    st: os.stat_result
    mounts: list | None = None  # the mount table read for the identity check; None when it was unreadable

    @property
    def walk_arg(self):
        return self.fd if self.fd is not None else self.path

    @property
    def xattr_path(self) -> bytes:
        return f"/proc/self/fd/{self.fd}".encode() if self.fd is not None else self.path

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _mounts() -> list | None:
    try:
        return read_mountinfo()
    except (OSError, ValueError):
        return None


def _refuse_by_identity(fd: int, shown: bytes, is_dir: bool, real: bytes | None) -> list | None:
    """`check_identity` for an open root: its mount, and whether it is that mount's root (`..` is on another
    mount, or is the directory itself) or, for a file, the mount point. Returns the mount table it read (None
    when unreadable), which the walk reuses to look for mount points below the root."""
    table = _mounts()
    mounts = table or []
    mount_id = _walker.mount_id(fd)
    if is_dir:
        here, parent = os.fstat(fd), os.stat("..", dir_fd=fd, follow_symlinks=False)
        is_mount_root = (_walker.mount_id(fd, b"..") != mount_id or
                         (here.st_dev, here.st_ino) == (parent.st_dev, parent.st_ino))
    else:
        is_mount_root = real is not None and any(m.mount_id == mount_id and os.fsencode(m.mount_point) == real
                                                 for m in mounts)
    check_identity(fd, shown, mounts, mount_id, is_mount_root)
    return table


def _open_root(path_or_fd) -> _Root:
    """Open and check the root of a walk. A path is checked by name, resolved, and opened with no symlink on
    the way (so what is walked is what was checked); an fd is taken as it is. Either way the open directory is
    then refused if it is a system directory or on a mount of one."""
    if isinstance(path_or_fd, int) and not isinstance(path_or_fd, bool):
        try:
            fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=path_or_fd)
        except OSError as err:
            raise InvalidInput(f"relabel: fd {path_or_fd} is not an open directory: {err.strerror}") from None
        try:
            shown = os.readlink(f"/proc/self/fd/{fd}".encode())
        except OSError:
            shown = f"fd {path_or_fd}".encode()
        return _checked_dir(fd, shown)
    root = check_path(path_or_fd)
    try:
        st = os.lstat(root)
        if not stat_mod.S_ISDIR(st.st_mode):
            fd = os.open(root, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                table = _refuse_by_identity(fd, root, False, os.path.realpath(root))
            finally:
                os.close(fd)
            return _Root(None, root, st, table)
        fd = _walker.open_root(os.path.realpath(root))
    except FileNotFoundError:
        raise InvalidInput(f"relabel: {_show(root)}: no such file or directory") from None
    except OSError as err:
        raise RelabelFailed(f"relabel: cannot open {_show(root)}: {err.strerror}", errno=err.errno,
                            path=root) from None
    return _checked_dir(fd, root)


def _checked_dir(fd: int, shown: bytes) -> _Root:
    """The root for our own directory fd, which is closed when it is refused."""
    try:
        table = _refuse_by_identity(fd, shown, True, None)
        return _Root(fd, shown, os.fstat(fd), table)
    except BaseException:
        os.close(fd)
        raise


def _filesystem_of(path: bytes) -> str:
    """`fstype on mountpoint` for the mount holding path, for error messages; best effort."""
    try:
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


def mount_points_below(root: bytes, mountinfo: str = "/proc/self/mountinfo", mounts: list | None = None) -> bool:
    """Whether any mount point lies strictly below `root` (then the walker stats files too, to find files
    mounted over entries), in `mounts` or, when not given, in the table read from `mountinfo`. An unreadable
    mountinfo counts as yes: the stat costs time, not correctness."""
    if mounts is None:
        try:
            mounts = read_mountinfo(mountinfo)
        except (OSError, ValueError):
            return True
    real = os.path.realpath(root).rstrip(b"/") + b"/"
    return any(os.fsencode(m.mount_point).startswith(real) for m in mounts)


def unread_after(fstype: str, compare: bool, dry_run: bool) -> int:
    """The walker's unread_after for a walk on `fstype`: UNREAD_AFTER where a set of the same value is a no-op,
    else 0 (read every entry first). A dry run always reads: it reports what would change."""
    return UNREAD_AFTER if compare and not dry_run and fstype in IDENTICAL_SET_IS_NOOP else 0


def _fstype(root: _Root) -> str:
    """The filesystem type of an opened root directory, from the mount table read when it was checked; "" when
    unknown."""
    if root.fd is None or not root.mounts:
        return ""
    mount_id = _walker.mount_id(root.fd)
    return next((m.fstype for m in root.mounts if m.mount_id == mount_id), "")


def _check_options(threads, fs_group, fs_group_policy) -> int:
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
    return threads


def relabel(path, label, *, threads: int | None = None, one_file_system: bool = True, dry_run: bool = False,
            fs_group: int | None = None, fs_group_policy: str = "Always", read_only: bool = False,
            compare: bool = True, progress: Progress | None = None, progress_interval: float = 0.2,
            _force_proc: bool = False, _fd_budget: int = 0, _no_openat2: bool = False,
            _no_xattrat: bool = False) -> RelabelStats:
    """Set the SELinux label `label` on `path` (a path, or an open directory fd) and everything below it; see
    the module docstring.

    `fs_group` applies kubelet's fsGroup ownership in the same pass (group to fs_group; group rw, or r on a
    `read_only` volume; directories also group x and setgid; symlinks only chowned). With
    `fs_group_policy="OnRootMismatch"` the ownership part is skipped when the root already has the group and
    the permissions, and the whole walk is skipped when the root also carries the label: the root is labelled
    last, so that root is what a finished walk leaves (`walk_skipped`). A root with the right ownership but
    another label gets a walk that checks labels only. `compare=False` writes every entry without
    reading it first (what chcon -R and go-selinux do): faster for a first labelling, but it changes the
    ctime of entries that were already right.
    """
    target = label if isinstance(label, Label) else Label.parse(str(label))
    threads = _check_options(threads, fs_group, fs_group_policy)
    root = _open_root(path)
    try:
        ownership = None
        if fs_group is not None:
            ownership = ownership_to_apply(fs_group_policy, fs_group, read_only, root.st.st_mode, root.st.st_gid)
        ownership_skipped = fs_group is not None and ownership is None
        if ownership_skipped and root_label_matches(root.xattr_path, target, follow=root.fd is not None):
            return RelabelStats(path=root.path, label=str(target), seen=1, already_correct=1, dry_run=dry_run,
                                threads=threads, fs_group=fs_group, ownership_skipped=True, walk_skipped=True)
        return _walk(root, str(target).encode(), ownership, threads=threads, one_file_system=one_file_system,
                     dry_run=dry_run, compare=compare, progress=progress, progress_interval=progress_interval,
                     force_proc=_force_proc, no_openat2=_no_openat2, no_xattrat=_no_xattrat, fd_budget=_fd_budget,
                     label=str(target),
                     fs_group=fs_group, ownership_skipped=ownership_skipped)
    finally:
        root.close()


def apply_fs_group(path_or_fd, gid: int, *, read_only: bool = False, policy: str = "Always",
                   threads: int | None = None, one_file_system: bool = True, dry_run: bool = False,
                   progress: Progress | None = None, progress_interval: float = 0.2) -> RelabelStats:
    """kubelet's fsGroup ownership alone (SetVolumeOwnership), for a volume that gets no label: the same walk
    as `relabel` with no label read or written. Group to `gid`, the bits of `fs_group_modes(read_only)`
    added; symlinks only chowned. `policy="OnRootMismatch"` skips the walk when the root is already right
    (the root is done last, so a right root means a finished walk). `path_or_fd` is a path or an open
    directory fd (the caller keeps its fd)."""
    if gid is None:
        raise InvalidInput("relabel: fsGroup is required")
    threads = _check_options(threads, gid, policy)
    root = _open_root(path_or_fd)
    try:
        ownership = ownership_to_apply(policy, gid, read_only, root.st.st_mode, root.st.st_gid)
        if ownership is None:
            return RelabelStats(path=root.path, label="", seen=1, dry_run=dry_run, threads=threads,
                                fs_group=gid, ownership_skipped=True, walk_skipped=True)
        return _walk(root, b"", ownership, threads=threads, one_file_system=one_file_system, dry_run=dry_run,
                     compare=True, progress=progress, progress_interval=progress_interval, ownership_only=True,
                     label="", fs_group=gid)
    finally:
        root.close()


def _walk(root: _Root, canonical: bytes, ownership: Ownership | None, *, threads: int, one_file_system: bool,
          dry_run: bool, compare: bool, progress, progress_interval: float, label: str, fs_group,
          ownership_skipped: bool = False, ownership_only: bool = False, force_proc: bool = False,
          no_openat2: bool = False, no_xattrat: bool = False, fd_budget: int = 0) -> RelabelStats:
    """Run the C walker on an opened root and turn its report into RelabelStats or RelabelFailed. `ownership`:
    the fsGroup pass to apply as well, if any."""
    flags = 0
    if one_file_system:
        flags |= _walker.ONE_FS
    if dry_run:
        flags |= _walker.DRY_RUN
    if not compare:
        flags |= _walker.NO_COMPARE
    if force_proc:
        flags |= _walker.FORCE_PROC
    if ownership_only:
        flags |= _walker.NO_LABEL
    if no_openat2:
        flags |= _walker.NO_OPENAT2
    if no_xattrat:
        flags |= _walker.NO_XATTRAT
    real = root.path
    if root.fd is not None:
        try:
            real = os.readlink(root.xattr_path)
        except OSError:
            real = b""
    if not real.startswith(b"/") or mount_points_below(real, mounts=root.mounts):
        flags |= _walker.STAT_FILES
    own = ownership or Ownership(-1, 0, 0)

    callback = None
    started = time.monotonic()
    if progress is not None:
        def callback(seen, changed):
            progress(RelabelProgress(seen, changed, time.monotonic() - started))

    try:
        raw = _walker.walk(root.walk_arg, canonical, threads, flags, own.gid, callback, progress_interval, fd_budget,
                           own.dir_mode, own.file_mode, FATAL_ERRNOS,
                           unread_after(_fstype(root), compare and not ownership_only, dry_run))
    except FileNotFoundError:
        raise InvalidInput(f"relabel: {_show(root.path)}: no such file or directory") from None
    except OSError as err:
        raise RelabelFailed(f"relabel: cannot open {_show(root.path)}: {err.strerror}", errno=err.errno,
                            path=root.path) from None
    elapsed = time.monotonic() - started

    samples = tuple(ErrorSample(err, op, os.path.join(root.path, rel) if rel else root.path)
                    for err, op, rel in raw["error_samples"])
    if raw["fatal_errno"]:
        code = raw["fatal_errno"]
        where = next((s.path for s in samples if s.errno == code), root.path)
        if code == errno_mod.EROFS:
            why = "is read-only"
        else:
            why = "does not support SELinux labels (security.selinux xattrs)"
        raise RelabelFailed(f"relabel: the {_filesystem_of(where)} {why}: {os.strerror(code)} at {_show(where)}",
                            errno=code, path=where)

    return RelabelStats(
        path=root.path, label=label, seen=raw["seen"], changed=raw["changed"],
        already_correct=raw["already_correct"], other_filesystem=raw["other_filesystem"],
        vanished=raw["vanished"], owner_changed=raw["owner_changed"], mode_changed=raw["mode_changed"],
        errors=raw["errors"],
        errors_by_errno={errno_mod.errorcode.get(k, str(k)): v for k, v in sorted(raw["errors_by_errno"].items())},
        error_samples=samples, dry_run=dry_run, threads=threads, elapsed=elapsed, fs_group=fs_group,
        ownership_skipped=ownership_skipped, xattr_calls="setxattrat" if raw["xattrat"] else "proc-fd",
        root_deferred=raw["root_deferred"], threads_active=raw["threads_active"],
    )
