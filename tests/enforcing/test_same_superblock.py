"""One block device, two mounts: the kernel keeps one superblock per device, and SELinux refuses to mount it
again with different security settings. This is why two pods with different labels cannot share a volume
mounted with `context=` (KEP-1710's conflict rule), and the exact kernel message a CSI driver will see:

    SELinux: mount invalid.  Same superblock, different security settings for (dev loop0, type ext4)

mount(8) reports it only as "wrong fs type, bad option, bad superblock ..." (EINVAL).
"""

from __future__ import annotations

import pytest

from agent.label import Label, context_mount_option
from agent.node.mountinfo import read_mountinfo
from tests.enforcing.volume_images import FSTYPES, file_counts

pytestmark = pytest.mark.enforcing

FIRST = Label.parse("system_u:object_r:container_file_t:s0:c1,c2")
SECOND = Label.parse("system_u:object_r:container_file_t:s0:c3,c4")


@pytest.mark.parametrize("fstype", FSTYPES)
def test_second_mount_with_another_context_is_refused(fstype, volumes, mounts, kernel_log):
    device = volumes.device(fstype, file_counts()["probe"])
    first = mounts.mount_cmd(device, "first", context_mount_option(FIRST))
    assert first.returncode == 0, first.stderr

    kernel_log.mark()
    second = mounts.mount_cmd(device, "second", context_mount_option(SECOND))
    assert second.returncode != 0, "the kernel mounted one superblock with two different contexts"
    assert "wrong fs type, bad option" in second.stderr or "Invalid argument" in second.stderr, second.stderr

    dev = device.removeprefix("/dev/")
    expected = f"SELinux: mount invalid.  Same superblock, different security settings for (dev {dev}, type {fstype})"
    assert kernel_log.wait_for(expected), f"kernel log lacks {expected!r}"
    assert [m for m in read_mountinfo() if m.mount_point == mounts.point("second")] == []


@pytest.mark.parametrize("fstype", FSTYPES)
def test_second_mount_with_the_same_context_shares_the_superblock(fstype, volumes, mounts):
    device = volumes.device(fstype, file_counts()["probe"])
    # The same label spelled another way is the same context to the kernel.
    same = Label.parse("system_u:object_r:container_file_t:s0:c1.c2")
    assert same == FIRST and same.text != FIRST.text
    for name, label in (("first", FIRST), ("second", same)):
        result = mounts.mount_cmd(device, name, context_mount_option(label))
        assert result.returncode == 0, result.stderr

    found = {m.mount_point: m for m in read_mountinfo()}
    first, second = found[mounts.point("first")], found[mounts.point("second")]
    assert first.major_minor == second.major_minor
    assert first.context == second.context == FIRST
