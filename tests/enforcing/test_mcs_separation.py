"""MCS separation between pods, with real confined processes: a `container_t` process reads the volume mounted
with its own categories and is refused (EACCES, with an AVC in the kernel log) on another pod's volume.

Each pod's process is a static busybox started with runcon as `container_t:s0:cX,cY`, as a container runtime
would start it. Both pods have the same type, so the refusal comes from the policy's MCS constraints alone.
"""

from __future__ import annotations

import os

import pytest

from agent.label import Label, context_mount_option
from tests.enforcing.volume_images import PROBE_NAME, PROBE_TEXT, file_counts

pytestmark = pytest.mark.enforcing

POD_A = "s0:c1,c2"
POD_B = "s0:c3,c4"


def volume_label(level: str) -> Label:
    return Label.parse(f"system_u:object_r:container_file_t:{level}")


@pytest.fixture
def pod_volumes(volumes, mounts):
    """Pod A's volume (ext4) at s0:c1,c2 and pod B's (xfs) at s0:c3,c4, both context= mounts."""
    count = file_counts()["probe"]
    return {
        POD_A: mounts.mount(volumes.device("ext4", count), "pod-a", "ext4", context_mount_option(volume_label(POD_A))),
        POD_B: mounts.mount(volumes.device("xfs", count), "pod-b", "xfs", context_mount_option(volume_label(POD_B))),
    }


@pytest.mark.parametrize("own, other", [(POD_A, POD_B), (POD_B, POD_A)])
def test_pod_reads_its_own_volume(own, other, pod_volumes, confined):
    result = confined.run(own, "cat", os.path.join(pod_volumes[own], PROBE_NAME))
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROBE_TEXT


@pytest.mark.parametrize("own, other", [(POD_A, POD_B), (POD_B, POD_A)])
def test_pod_is_denied_the_other_pods_volume(own, other, pod_volumes, confined, kernel_log):
    kernel_log.mark()
    result = confined.run(own, "cat", os.path.join(pod_volumes[other], PROBE_NAME))
    assert result.returncode != 0
    assert "Permission denied" in result.stderr, result.stderr
    assert result.stdout == ""

    denials = kernel_log.wait_for("avc:  denied", f"scontext=system_u:system_r:container_t:{own} ",
                                  f"tcontext=system_u:object_r:container_file_t:{other} ")
    assert denials, f"no AVC denial for container_t:{own} on container_file_t:{other} in the kernel log"


def test_process_really_runs_confined(confined):
    """The runner is not a no-op: the process reports the domain and level it was started in."""
    result = confined.run(POD_A, "cat", "/proc/self/attr/current")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\0\n") == f"system_u:system_r:container_t:{POD_A}"
