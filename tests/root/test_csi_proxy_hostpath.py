"""The proxy in front of csi-driver-host-path, a real driver that publishes with bind mounts and stages without a
mount of its own: `context=` never takes, so the proxy relabels.

A read-only publish (a pod's `persistentVolumeClaim.readOnly: true`) gets a read-only bind mount of a writable
filesystem: the files cannot be relabelled through the target, and there is no staging mount to relabel
through instead. The same directory is writable through the driver's own mount of it, which mountinfo names;
the proxy relabels through that once it has checked it is the very directory the target shows.
"""

from __future__ import annotations

import errno
import os

import pytest

from agent.label import Label
from tests.root.csi_helpers import LABEL_A, mounts_at
from tests.root.hostpath_driver import (label_of, proxy_in_front_of_hostpath, published_record,
                                        stage_and_publish, unpublish_unstage_delete)

pytestmark = [pytest.mark.root]


def test_read_only_publish_is_relabelled_through_the_drivers_writable_mount(tmp_path):
    with proxy_in_front_of_hostpath(tmp_path) as (plugin, shim, client):
        volume = client.create("pvc-read-only")
        with open(os.path.join(plugin.volume_dir(volume.volume_id), "seed"), "w", encoding="utf-8") as handle:
            handle.write("data\n")
        staging, target = stage_and_publish(client, volume.volume_id, LABEL_A, readonly=True)

        (entry,) = mounts_at(target)
        assert entry.read_only and entry.root.endswith("/" + volume.volume_id), entry
        assert not mounts_at(staging)  # hostpath stages without a mount: nothing else to relabel through
        record = published_record(tmp_path, target)
        assert (record["verification"], record["action"]) == ("dropped", "relabel")
        assert label_of(target) == label_of(os.path.join(target, "seed")) == Label.parse(LABEL_A)
        with pytest.raises(OSError) as raised:
            open(os.path.join(target, "new"), "w").close()
        assert raised.value.errno == errno.EROFS  # the pod's view stays read-only

        unpublish_unstage_delete(client, volume.volume_id, staging, target)
