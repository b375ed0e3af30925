"""`context=` mounts on an enforcing kernel: the label covers every file at once, and costs the same whatever
the file count, while a recursive relabel of the same volume grows with it (the reason KEP-1710 exists).

The option string is built by agent.label exactly as kubelet builds it, quotes included:
`context="system_u:object_r:container_file_t:s0:c1,c2"`; without the quotes the kernel splits the option
at the category comma.
"""

from __future__ import annotations

import errno
import os
import statistics
import subprocess
import time

import pytest

from agent.label import Label, context_mount_option
from agent.node.mountinfo import find_mount, read_mountinfo
from tests.enforcing.conftest import drop_caches
from tests.enforcing.volume_images import FSTYPES, PROBE_NAME, expected_entries, file_counts, file_paths

pytestmark = pytest.mark.enforcing

LABEL = Label.parse("system_u:object_r:container_file_t:s0:c1,c2")
COUNTS = file_counts()
MOUNT_ROUNDS = 5
# How much faster a recursive relabel of `large` must be than one of `small` for the measurement to count as
# "grows with the file count"; the file counts differ 100 times by default.
MIN_RELABEL_GROWTH = 10


def file_label(path: str) -> Label:
    raw = os.getxattr(path, "security.selinux", follow_symlinks=False)
    return Label.parse(raw.rstrip(b"\0").decode("ascii"))


def test_option_carries_the_quotes_kubelet_sends():
    assert context_mount_option(LABEL) == 'context="system_u:object_r:container_file_t:s0:c1,c2"'


@pytest.mark.parametrize("fstype", FSTYPES)
def test_every_file_reports_the_mount_label(fstype, volumes, mounts, figures):
    count = COUNTS["label"]
    device = volumes.device(fstype, count)
    target = mounts.mount(device, "labelled", fstype, context_mount_option(LABEL))

    mount = find_mount(read_mountinfo(), target)
    assert mount is not None and mount.fstype == fstype
    assert mount.context == LABEL, f"superblock options {mount.super_options} do not carry {LABEL}"
    assert f'context="{LABEL.canonical}"' in mount.super_options

    started = time.perf_counter()
    paths = [target]
    for directory, subdirs, files in os.walk(target):
        paths.extend(os.path.join(directory, name) for name in subdirs + files)
    wrong = [(path, label) for path in paths if (label := file_label(path)) != LABEL]
    figures[f"{fstype}.label_check_s.{count}"] = round(time.perf_counter() - started, 3)
    assert wrong == []
    # The volume's tree, its root, and on ext4 the lost+found directory mkfs.ext4 makes (labelled as well).
    assert len(paths) == expected_entries(count) + 1 + (fstype == "ext4")

    # libselinux agrees, and a file created now gets the mount's label too.
    import selinux

    assert Label.parse(selinux.lgetfilecon(os.path.join(target, PROBE_NAME))[1]) == LABEL
    new_file = os.path.join(target, "created-after-mount")
    with open(new_file, "w", encoding="ascii") as handle:
        handle.write("x")
    assert file_label(new_file) == LABEL

    # A context= mount has one label for everything: per-file relabelling is refused.
    with pytest.raises(OSError) as refused:
        os.setxattr(new_file, "security.selinux", b"system_u:object_r:container_file_t:s0:c3,c4\0",
                    follow_symlinks=False)
    assert refused.value.errno == errno.EOPNOTSUPP


def _timed_mount(mounts, device: str, fstype: str, data: str) -> float:
    drop_caches()
    started = time.perf_counter()
    target = mounts.mount(device, "timed", fstype, data)
    elapsed = time.perf_counter() - started
    assert find_mount(read_mountinfo(), target).context == LABEL
    mounts.umount(target)
    return elapsed


@pytest.mark.parametrize("fstype", FSTYPES)
def test_context_mount_time_does_not_grow_with_file_count(fstype, volumes, mounts, figures):
    small, large = COUNTS["small"], COUNTS["large"]
    devices = {small: volumes.device(fstype, small), large: volumes.device(fstype, large)}
    option = context_mount_option(LABEL)
    for device in devices.values():  # warm-up: module load, first-mount journal work
        _timed_mount(mounts, device, fstype, option)

    times = {small: [], large: []}
    for _ in range(MOUNT_ROUNDS):  # interleaved, so that drift in the machine's speed hits both alike
        for count, device in devices.items():
            times[count].append(_timed_mount(mounts, device, fstype, option))

    median = {count: statistics.median(values) for count, values in times.items()}
    for count in (small, large):
        figures[f"{fstype}.context_mount_s.{count}"] = round(median[count], 4)
    ratio = median[large] / median[small]
    figures[f"{fstype}.context_mount_ratio"] = round(ratio, 2)
    assert ratio <= 2.0, (f"{fstype}: mounting {large} files took {median[large]:.4f} s, {small} files "
                          f"{median[small]:.4f} s (median of {MOUNT_ROUNDS}); a context= mount should be O(1)")


@pytest.mark.parametrize("fstype", FSTYPES)
def test_recursive_relabel_time_grows_with_file_count(fstype, volumes, mounts, figures):
    small, large = COUNTS["small"], COUNTS["large"]
    elapsed = {}
    for count in (small, large):
        # A plain mount keeps per-file labels, which is what a relabel writes.
        target = mounts.mount(volumes.device(fstype, count), f"plain-{count}", fstype)
        assert find_mount(read_mountinfo(), target).context is None
        drop_caches()
        started = time.perf_counter()
        subprocess.run(["chcon", "-R", LABEL.text, target], check=True)
        elapsed[count] = time.perf_counter() - started
        names = file_paths(count)
        for relative in (PROBE_NAME, names[0], names[-1]):
            assert file_label(os.path.join(target, relative)) == LABEL
        mounts.umount(target)
        figures[f"{fstype}.chcon_R_s.{count}"] = round(elapsed[count], 3)

    growth = elapsed[large] / elapsed[small]
    figures[f"{fstype}.chcon_R_ratio"] = round(growth, 1)
    assert growth >= MIN_RELABEL_GROWTH, (
        f"{fstype}: chcon -R over {large} files took {elapsed[large]:.2f} s, over {small} files "
        f"{elapsed[small]:.2f} s; expected the relabel to scale with the file count")
