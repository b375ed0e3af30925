"""The proxy in front of a real CSI driver, csi-driver-host-path, on an enforcing kernel.

hostpath's NodePublishVolume bind-mounts the volume's directory: a bind mount keeps the labels of the
filesystem it comes from, so kubelet's `context=` cannot take effect whatever the driver passes along. The
proxy must see that in mountinfo (no context on the target's mount) and relabel the volume with the walker;
then the pod's process at the volume's level reads what the volume held and writes, and a process at another
level is refused, with the AVC in the kernel log.
"""

from __future__ import annotations

import os

import pytest

from agent.label import Label

from tests.enforcing.csi_steps import LEVEL_A as OWN, LEVEL_B as OTHER
from tests.enforcing.csi_steps import (LABEL_A, SEED, label_of, mounts_at, proxy_in_front_of_hostpath,
                                       published_record, stage_and_publish, unpublish_unstage_delete)

pytestmark = pytest.mark.enforcing



def test_proxy_relabels_what_hostpath_bind_mounts(tmp_path, confined, kernel_log):
    """hostpath bind-mounts its directory for the pod: the proxy sees no context and relabels."""
    with proxy_in_front_of_hostpath(tmp_path) as (plugin, shim, client):
        volume = client.create("pvc-hostpath")
        data = plugin.volume_dir(volume.volume_id)
        assert os.path.isdir(data), f"hostpathplugin keeps no directory {data} for volume {volume.volume_id}"
        with open(os.path.join(data, "seed"), "w", encoding="utf-8") as handle:
            handle.write(SEED)
        before = label_of(os.path.join(data, "seed"))
        assert before != Label.parse(LABEL_A)  # created in a tmp_t directory: the relabel has work to do

        staging, target = stage_and_publish(client, volume.volume_id, LABEL_A)

        # The driver's bind mount of its own directory, as mountinfo shows it: no context on the superblock.
        (entry,) = mounts_at(target)
        assert entry.context is None and entry.root.endswith("/" + volume.volume_id), entry
        record = published_record(tmp_path, target)
        assert (record["verification"], record["action"]) == ("dropped", "relabel")
        assert label_of(target) == Label.parse(LABEL_A)
        assert label_of(os.path.join(target, "seed")) == Label.parse(LABEL_A)

        seed = confined.run(OWN, "cat", os.path.join(target, "seed"))
        assert seed.returncode == 0 and seed.stdout == SEED, seed.stderr
        probe = os.path.join(target, "probe")
        wrote = confined.run(OWN, "sh", "-c", f"echo from-the-pod > {probe} && cat {probe}")
        assert wrote.returncode == 0 and wrote.stdout == "from-the-pod\n", wrote.stderr

        kernel_log.mark()
        denied = confined.run(OTHER, "cat", os.path.join(target, "seed"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        avcs = kernel_log.wait_for("avc:  denied", f"scontext=system_u:system_r:container_t:{OTHER}",
                                   f"tcontext={LABEL_A}")
        assert avcs, "no AVC for the other level's access in the kernel log"

        unpublish_unstage_delete(client, volume.volume_id, staging, target)
        assert not os.path.exists(data)


def test_read_only_hostpath_publish_is_relabelled_and_stays_read_only(tmp_path, confined, kernel_log):
    """A pod's read-only claim: hostpath publishes a read-only bind and stages without a mount, so the proxy
    relabels the directory through the driver's writable mount of it; the pod reads and cannot write."""
    with proxy_in_front_of_hostpath(tmp_path) as (plugin, shim, client):
        volume = client.create("pvc-hostpath-ro")
        with open(os.path.join(plugin.volume_dir(volume.volume_id), "seed"), "w", encoding="utf-8") as handle:
            handle.write(SEED)
        staging, target = stage_and_publish(client, volume.volume_id, LABEL_A, readonly=True)

        (entry,) = mounts_at(target)
        assert entry.read_only and entry.context is None, entry
        record = published_record(tmp_path, target)
        assert (record["verification"], record["action"]) == ("dropped", "relabel")
        assert label_of(target) == label_of(os.path.join(target, "seed")) == Label.parse(LABEL_A)

        seed = confined.run(OWN, "cat", os.path.join(target, "seed"))
        assert seed.returncode == 0 and seed.stdout == SEED, seed.stderr
        wrote = confined.run(OWN, "sh", "-c", f"echo x > {os.path.join(target, 'probe')}")
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, wrote
        kernel_log.mark()
        denied = confined.run(OTHER, "cat", os.path.join(target, "seed"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        assert kernel_log.wait_for("avc:  denied", f"scontext=system_u:system_r:container_t:{OTHER}",
                                   f"tcontext={LABEL_A}"), "no AVC for the other level's access in the kernel log"

        unpublish_unstage_delete(client, volume.volume_id, staging, target)
