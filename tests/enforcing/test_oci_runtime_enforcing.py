"""Pods started by runc from OCI bundles (tests/enforcing/oci_pods.py) on volumes our CSI path prepared: the
built-in driver's `context=` mount, and csi-driver-host-path's bind mount relabelled by the proxy. The pod at
the volume's level reads what was there and writes; a pod at another level is refused by the kernel, which
logs the AVC. Unlike runcon, the runtime sets the labels from the spec, so these also show that a bundle as
CRI-O and containerd write it (selinuxLabel, mountLabel, a bind-mounted volume) meets our labels as it should.
"""

from __future__ import annotations

import os
import shutil

import pytest

from agent.label import Label
from agent.node.mountinfo import parse_mountinfo
from tests.enforcing.csi_steps import LEVEL_A as OWN, LEVEL_B as OTHER
from tests.enforcing.csi_steps import (LABEL_A, SEED, label_of, mounts_at, proxy_in_front_of_hostpath,
                                       published_record, running_shim, stage_and_publish,
                                       unpublish_unstage_delete)
from tests.enforcing.oci_pods import VOLUME_IN_POD, OCIPods, cgroup2_mounted, mount_label, process_label

pytestmark = pytest.mark.enforcing

SPLIT = "=====\n"
# The pod prints its own label and mount table, reads the seed, writes a file and reads it back.
OWN_POD_SCRIPT = (f"cat /proc/self/attr/current; echo; printf '{SPLIT}'; cat /proc/self/mountinfo; "
                  f"printf '{SPLIT}'; cat {VOLUME_IN_POD}/seed && echo from-the-pod > {VOLUME_IN_POD}/probe "
                  f"&& cat {VOLUME_IN_POD}/probe")


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    runc = shutil.which("runc")
    if not runc:
        pytest.skip("runc is not installed (the CI guest has Debian's, vm/guest-packages.txt)")
    with cgroup2_mounted():
        yield OCIPods(runc, tmp_path_factory.mktemp("oci"))


def own_pod_uses_its_volume(pods: OCIPods, volume: str) -> None:
    result = pods.run(OWN, volume, OWN_POD_SCRIPT)
    assert result.returncode == 0, (result.stdout, result.stderr)
    current, table, data = result.stdout.split(SPLIT)
    assert current.strip("\0\n") == process_label(OWN)  # runc applied process.selinuxLabel
    mounts = {m.mount_point: m for m in parse_mountinfo(table)}
    assert mounts["/dev"].context == Label.parse(mount_label(OWN))  # ... and linux.mountLabel to its own mount
    assert data == SEED + "from-the-pod\n"
    assert label_of(os.path.join(volume, "probe")) == Label.parse(LABEL_A)


def other_pod_is_denied(pods: OCIPods, volume: str, kernel_log) -> None:
    kernel_log.mark()
    result = pods.run(OTHER, volume, f"cat {VOLUME_IN_POD}/seed")
    assert result.returncode != 0 and "Permission denied" in result.stderr, (result.stdout, result.stderr)
    assert SEED not in result.stdout
    avcs = kernel_log.wait_for("avc:  denied", f"scontext={process_label(OTHER)}", f"tcontext={LABEL_A}")
    assert avcs, "no AVC for the other pod's access in the kernel log"


def test_runc_pod_on_a_context_mounted_volume(tmp_path, pods, kernel_log):
    """The built-in driver stages and publishes with kubelet's `context=`; runc's pods meet the kernel's label."""
    with running_shim(tmp_path) as (server, client):
        volume = client.create("pvc-oci")
        staging, target = stage_and_publish(client, volume.volume_id, LABEL_A)
        assert mounts_at(target)[0].context == Label.parse(LABEL_A)
        with open(os.path.join(target, "seed"), "w", encoding="utf-8") as handle:
            handle.write(SEED)

        own_pod_uses_its_volume(pods, target)
        other_pod_is_denied(pods, target, kernel_log)

        unpublish_unstage_delete(client, volume.volume_id, staging, target)


def test_runc_pod_on_a_hostpath_volume_the_proxy_relabelled(tmp_path, pods, kernel_log):
    """csi-driver-host-path bind-mounts (no `context=` possible); the proxy relabels; runc's pods meet that."""
    with proxy_in_front_of_hostpath(tmp_path) as (plugin, shim, client):
        volume = client.create("pvc-oci-hostpath")
        with open(os.path.join(plugin.volume_dir(volume.volume_id), "seed"), "w", encoding="utf-8") as handle:
            handle.write(SEED)
        staging, target = stage_and_publish(client, volume.volume_id, LABEL_A)
        record = published_record(tmp_path, target)
        assert (record["verification"], record["action"]) == ("dropped", "relabel")

        own_pod_uses_its_volume(pods, target)
        other_pod_is_denied(pods, target, kernel_log)

        unpublish_unstage_delete(client, volume.volume_id, staging, target)
