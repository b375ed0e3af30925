"""agent.relabel.ownership: kubelet's fsGroup rule as values (pkg/volume/volume_linux.go SetVolumeOwnership)."""

from __future__ import annotations

import stat

import pytest

from agent.relabel.ownership import (FS_GROUP_POLICIES, Ownership, fs_group_modes, ownership_for,
                                     ownership_needs_change, ownership_to_apply)


def test_modes_follow_kubelet_masks():
    # rwMask 0660 / roMask 0440; directories also execMask 0110 and setgid; files never get an exec bit.
    assert fs_group_modes(False) == (0o2770, 0o660)
    assert fs_group_modes(True) == (0o2550, 0o440)
    assert ownership_for(5, False) == Ownership(5, 0o2770, 0o660)
    assert ownership_for(7, True) == Ownership(7, 0o2550, 0o440)


@pytest.mark.parametrize("mode, root_gid, read_only, needed", [
    (stat.S_IFDIR | 0o2770, 5, False, False),
    (stat.S_IFDIR | 0o2775, 5, False, False),  # more bits than the mask: still right
    (stat.S_IFDIR | 0o0770, 5, False, True),   # no setgid
    (stat.S_IFDIR | 0o2750, 5, False, True),   # group not rwx
    (stat.S_IFDIR | 0o2550, 5, True, False),   # read-only volume: group r-x is enough
    (stat.S_IFDIR | 0o2770, 6, False, True),   # another group
    (stat.S_IFREG | 0o2770, 5, False, True),   # not a directory
])
def test_root_needs_change_as_kubelet_requires_permission_change(mode, root_gid, read_only, needed):
    assert ownership_needs_change(mode, root_gid, 5, read_only) is needed


def test_on_root_mismatch_skips_only_a_right_root():
    right, wrong = stat.S_IFDIR | 0o2770, stat.S_IFDIR | 0o755
    assert ownership_to_apply("OnRootMismatch", 5, False, right, 5) is None
    assert ownership_to_apply("OnRootMismatch", 5, False, wrong, 5) == Ownership(5, 0o2770, 0o660)
    assert ownership_to_apply("OnRootMismatch", 5, False, right, 6) == Ownership(5, 0o2770, 0o660)
    # Always walks whatever the root looks like.
    assert ownership_to_apply("Always", 5, True, right, 5) == Ownership(5, 0o2550, 0o440)
    assert FS_GROUP_POLICIES == ("Always", "OnRootMismatch")
