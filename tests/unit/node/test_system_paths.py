"""The refusal rules for walk roots, on mountinfo text alone (no mounts, no I/O)."""

from __future__ import annotations

import pytest

from agent.errors import PathOutsideRoot
from agent.node.mountinfo import parse_mountinfo
from agent.node.system_paths import check_text, holder, mount_refusal

MOUNTINFO = """\
20 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
21 20 0:20 / /proc rw,nosuid shared:2 - proc proc rw
22 20 0:21 / /sys rw,nosuid shared:3 - sysfs sysfs rw
23 20 0:5 / /dev rw,nosuid shared:4 - devtmpfs udev rw
24 20 8:3 / /usr rw,relatime shared:5 - ext4 /dev/sda3 rw
25 20 8:2 / /data rw,relatime shared:6 - ext4 /dev/sda2 rw
30 25 8:1 /etc /data/vol/etc-bind rw shared:1 - ext4 /dev/sda1 rw
31 25 8:1 /etc/ssh /data/vol/ssh-bind rw shared:1 - ext4 /dev/sda1 rw
32 25 8:1 / /data/vol/root-bind rw shared:1 - ext4 /dev/sda1 rw
33 25 8:2 /etc /data/vol/own-etc rw shared:6 - ext4 /dev/sda2 rw
34 25 0:20 /sys /data/vol/proc-sys rw - proc proc rw
35 25 8:3 /share /data/vol/usr-share rw - ext4 /dev/sda3 rw
36 25 0:50 / /data/vol/tmp rw - tmpfs tmpfs rw
37 25 8:1 /srv/volumes/a /data/vol/a rw - ext4 /dev/sda1 rw
"""
MOUNTS = parse_mountinfo(MOUNTINFO)
BY_ID = {m.mount_id: m for m in MOUNTS}


@pytest.mark.parametrize("mount_id, is_root, refused", [
    (30, True, "/etc"),      # a bind of /etc
    (30, False, "/etc"),     # a directory inside a bind of /etc
    (31, True, "/etc"),      # a bind of a directory below /etc
    (32, True, "/"),         # a bind of the host's /
    (32, False, None),       # a directory inside it is judged by what it is, not by the mount
    (33, True, None),        # another filesystem's own /etc is not the host's
    (34, True, "/proc"),     # a bind of /proc/sys
    (35, False, "/usr"),     # /usr is its own filesystem: /usr/share is found on that device
    (36, True, None),        # a volume's own tmpfs
    (37, True, None),        # a bind of an ordinary directory of the root filesystem
    (20, False, None),       # a directory on the root filesystem
    (20, True, "/"),         # / itself
    (21, False, "/proc"),    # anything in /proc
])
def test_mount_refusal(mount_id, is_root, refused):
    assert mount_refusal(BY_ID[mount_id], MOUNTS, is_root) == refused


def test_holder_finds_the_path_inside_the_filesystem():
    mount, inside = holder(MOUNTS, "/usr/share")
    assert mount.mount_id == 24 and inside == "/share"
    mount, inside = holder(MOUNTS, "/data/vol/ssh-bind/keys")
    assert mount.mount_id == 31 and inside == "/etc/ssh/keys"
    assert holder([], "/etc") is None


@pytest.mark.parametrize("path", ["/proc/1/root/etc", "/proc/self/root/usr", "/proc", "/proc/../proc/1/cwd"])
def test_paths_through_proc_are_refused_by_name(path):
    with pytest.raises(PathOutsideRoot, match="is not allowed"):
        check_text(path)
