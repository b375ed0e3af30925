"""kubelet's fsGroup ownership rule (SetVolumeOwnership, pkg/volume/volume_linux.go), as the numbers the walker
applies.

The C walker decides nothing about ownership: it sets the group it is given and ORs the bits it is given into the
mode of directories and of every other entry. Which bits, and whether a volume needs the pass at all
(fsGroupChangePolicy), is decided here, from values only (no I/O), so the rule can be read and tested in one place.
As kubelet's changeFilePermission does, every entry is chowned (symlinks themselves, never their targets) and every
entry but a symlink is chmod-ed: Linux symlinks have no mode of their own.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

FS_GROUP_POLICIES = ("Always", "OnRootMismatch")  # kubelet's fsGroupChangePolicy values

# kubelet pkg/volume/volume_linux.go: rwMask, roMask, execMask
RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110


@dataclass(frozen=True)
class Ownership:
    """What the walker applies to every entry: group `gid`; mode | `dir_mode` on directories, | `file_mode` on the
    rest but symlinks."""

    gid: int
    dir_mode: int
    file_mode: int


def fs_group_modes(read_only: bool) -> tuple[int, int]:
    """The bits OR-ed into the mode of (directories, everything else but symlinks): rwMask 0660 (roMask 0440 on a
    read-only volume), directories also execMask 0110 and setgid. Files get no exec bit, as in kubelet."""
    mask = RO_MASK if read_only else RW_MASK
    return mask | EXEC_MASK | stat.S_ISGID, mask


def ownership_for(gid: int, read_only: bool) -> Ownership:
    """The full fsGroup pass for group `gid`."""
    dir_mode, file_mode = fs_group_modes(read_only)
    return Ownership(gid, dir_mode, file_mode)


def ownership_needs_change(root_mode: int, root_gid: int, gid: int, read_only: bool) -> bool:
    """kubelet requiresPermissionChange(): is the volume's root (its st_mode and st_gid) not yet a directory owned
    by `gid` and carrying every bit of the directory mask?"""
    if root_gid != gid or not stat.S_ISDIR(root_mode):
        return True
    wanted = fs_group_modes(read_only)[0]
    return (root_mode & wanted) != wanted


def ownership_to_apply(policy: str, gid: int, read_only: bool, root_mode: int, root_gid: int) -> Ownership | None:
    """The ownership pass a walk must make, or None when `OnRootMismatch` finds the root already right: the walker
    does the root last, so a right root means an earlier pass finished (kubelet skips the walk the same way)."""
    if policy == "OnRootMismatch" and not ownership_needs_change(root_mode, root_gid, gid, read_only):
        return None
    return ownership_for(gid, read_only)
