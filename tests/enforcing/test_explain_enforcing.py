"""`explain` on a node with a real policy and its container contexts: with no `--defaults-file` it must find the
node's contexts file where go-selinux (and so kubelet) finds it, and the label it predicts for a pod's volume
must be the label the volume's mount carries once our CSI shim mounts it with kubelet's `context=`.

Which file that is depends on the policy, and the test holds on each flavour rather than skipping on one:
the targeted flavours (c9s, f40) install container-selinux's /usr/share/containers/selinux/contexts, which
go-selinux reads first; Debian's refpolicy has none, so its `lxc_contexts` is the one read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent.label import Label

from tests.enforcing.csi_steps import REPO, mounts_at, running_shim, stage_and_publish, unpublish_unstage_delete

pytestmark = pytest.mark.enforcing

selinux = pytest.importorskip("selinux", reason="the libselinux bindings (python3-selinux) are not installed")

CONTAINERS_CONTEXTS = "/usr/share/containers/selinux/contexts"
LEVEL = "s0:c5,c7"
CLUSTER = f"""
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {{name: local.selinux-mount-agent.io}}
spec: {{seLinuxMount: true}}
---
apiVersion: v1
kind: PersistentVolume
metadata: {{name: pv-db}}
spec:
  accessModes: [ReadWriteOncePod]
  capacity: {{storage: 1Gi}}
  csi: {{driver: local.selinux-mount-agent.io, volumeHandle: vol-db}}
  claimRef: {{namespace: shop, name: db-data}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{namespace: shop, name: db-data}}
spec:
  accessModes: [ReadWriteOncePod]
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: pv-db
---
apiVersion: v1
kind: Pod
metadata: {{namespace: shop, name: db-0}}
spec:
  securityContext:
    seLinuxOptions: {{level: "{LEVEL}"}}
  containers:
  - {{name: db, image: postgres, volumeMounts: [{{name: data, mountPath: /var/lib/db}}]}}
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: db-data}}}}
"""


def node_contexts_file() -> str:
    """The file go-selinux reads on this node: the containers contexts file where it exists, which a targeted
    node (container-selinux) must have, its absence there being a failure rather than a fallback; else the
    policy's lxc_contexts (Debian's refpolicy, no container-selinux)."""
    if selinux.selinux_getpolicytype()[1] == "targeted":
        assert os.path.isfile(CONTAINERS_CONTEXTS), f"a targeted node without {CONTAINERS_CONTEXTS}"
    if os.path.isfile(CONTAINERS_CONTEXTS):
        return CONTAINERS_CONTEXTS
    return os.path.join(selinux.selinux_policy_root(), "contexts", "lxc_contexts")


def kubelet_file_label(contexts_file: str, level: str) -> str:
    """What kubelet builds (go-selinux InitLabels): user, role and type of the file entry, the pod's level.
    Read here with plain text handling, independent of agent.node.contexts, which the test is checking."""
    with open(contexts_file, encoding="utf-8") as handle:
        for line in handle:
            key, _, value = line.partition("=")
            if key.strip() == "file":
                user, role, kind = value.strip().strip('"').split(":")[:3]
                return f"{user}:{role}:{kind}:{level}"
    raise AssertionError(f"{contexts_file} has no file entry")


def test_explain_predicts_the_label_the_context_mount_carries(tmp_path):
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(CLUSTER)
    result = subprocess.run([sys.executable, "-m", "agent.cli.main", "explain", "-f", str(manifest), "-o", "json"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    source = node_contexts_file()
    assert document["defaults"]["source"] == source, document["defaults"]
    (volume,) = document["pods"][0]["volumes"]
    assert volume["decision"] == "mount", volume
    assert not [r for r in volume["reasons"] if "does not accept" in r], volume["reasons"]
    predicted = Label.parse(volume["label"])
    kubelet = kubelet_file_label(source, LEVEL)
    assert predicted == Label.parse(kubelet), (predicted.text, kubelet)

    with running_shim(tmp_path) as (server, client):
        created = client.create("pvc-explain")
        staging, target = stage_and_publish(client, created.volume_id, kubelet, "db-0")

        assert mounts_at(target)[0].context == predicted  # the kernel's context of the superblock
        path = os.path.join(target, "written-after-mount")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("x")
        assert Label.parse(selinux.getfilecon(path)[1]) == predicted
        assert Label.parse(selinux.getfilecon(target)[1]) == predicted

        unpublish_unstage_delete(client, created.volume_id, staging, target)
