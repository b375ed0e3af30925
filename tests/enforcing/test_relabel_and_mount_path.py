"""The agent's own SELinux paths on an enforcing kernel: the relabel walker gives a volume a label that a
confined process of that pod can use and another pod's cannot; the CSI mounter's context mount is verified as
applied, a different context is a mismatch, and a second mount of the same superblock with another context is
refused by our mount path with a clear message before the kernel's generic error."""

from __future__ import annotations

import os
import subprocess

import pytest

from agent.errors import LabelConflict
from agent.label import Label, context_mount_option
from agent.relabel.volume import relabel
from csi_shim import mounter
from tests.enforcing.volume_images import PROBE_NAME, PROBE_TEXT, build_image

pytestmark = pytest.mark.enforcing

LABEL_A = Label.parse("system_u:object_r:container_file_t:s0:c1,c2")
LABEL_B = Label.parse("system_u:object_r:container_file_t:s0:c3,c4")


@pytest.fixture
def fresh_device(tmp_path):
    """A new ext4 filesystem with files, on its own loop device (never one of the cached images)."""
    image = tmp_path / "fresh.img"
    build_image(image, "ext4", 200, tmp_path / "tree")
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                            check=True).stdout.strip()
    yield device
    subprocess.run(["losetup", "-d", device], check=False)


def test_walker_labels_a_volume_for_its_pod_only(fresh_device, mounts, confined):
    target = mounts.mount(fresh_device, "relabelled", "ext4")
    stats = relabel(target, LABEL_A.text)
    assert stats.changed > 0 and not stats.errors
    for directory, dirs, files in os.walk(target):
        for name in dirs + files:
            raw = os.getxattr(os.path.join(directory, name), "security.selinux", follow_symlinks=False)
            assert Label.parse(raw.rstrip(b"\0").decode()) == LABEL_A, os.path.join(directory, name)
    again = relabel(target, LABEL_A.text)
    assert again.changed == 0 and again.already_correct == again.seen == stats.seen

    own = confined.run("s0:c1,c2", "cat", os.path.join(target, PROBE_NAME))
    assert own.returncode == 0, own.stderr
    assert own.stdout == PROBE_TEXT
    other = confined.run("s0:c3,c4", "cat", os.path.join(target, PROBE_NAME))
    assert other.returncode != 0 and "Permission denied" in other.stderr


def test_context_mount_verified_and_second_context_refused(fresh_device, mounts):
    first = mounts.point("first")
    assert mounter.mount_filesystem(fresh_device, first, "ext4", 0, context_mount_option(LABEL_A),
                                    context_mount_option(LABEL_A))
    mounts.mounted.append(first)
    assert mounter.verify(first, LABEL_A).status == mounter.APPLIED
    assert mounter.verify(first, LABEL_B).status == mounter.MISMATCH

    second = mounts.point("second")
    with pytest.raises(LabelConflict) as info:
        mounter.refuse_shared_superblock(fresh_device, LABEL_B, second)
    message = str(info.value)
    assert f"already mounted at {first}" in message and context_mount_option(LABEL_B) in message
    # The same context shares the superblock legitimately.
    mounter.refuse_shared_superblock(fresh_device, LABEL_A, second)
    # What the kernel would have said instead: the generic EINVAL of mount(2).
    with pytest.raises(Exception) as kernel:
        mounter.mount(fresh_device, second, "ext4", 0, context_mount_option(LABEL_B))
    assert getattr(kernel.value, "errno", None) == 22
