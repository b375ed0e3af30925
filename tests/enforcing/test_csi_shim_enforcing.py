"""The CSI shim end to end on an enforcing kernel: kubelet's calls over the real unix socket, and then what a
pod process at the volume's MCS level (and one at another level) can actually do with the files.

On the host these calls are checked for flags, mountinfo and state; only here does `context=` take effect and
the relabel fallback decide access: the built-in driver's context mount, and the proxy in front of a backend
that keeps `context=` (the kernel applies it) or drops it (libmount without SELinux: the shim relabels).
"""

from __future__ import annotations

import os

import pytest

from agent.label import Label

grpc = pytest.importorskip("grpc", reason="grpcio is not importable here (the CI guest gets the host's copy)")
try:
    from csi_shim.server import build_server
    from tests.root.csi_backend import BackendNode, serve_backend
    from tests.root.csi_helpers import (LABEL_A, Client, cleanup, context_flag, loops_under, mounts_under,
                                        shim_config)
except ImportError as err:  # protobuf older than the checked-in stubs need
    pytest.skip(f"the CSI stubs do not import here: {err}", allow_module_level=True)

pytestmark = pytest.mark.enforcing

OWN, OTHER = "s0:c1,c2", "s0:c3,c4"
PROBE = "written-by-the-pod"


def label_of(path: str) -> Label:
    return Label.parse(os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0").decode())


def pod_can_write_and_read(confined, level: str, directory: str) -> None:
    """The pod's own process writes a file into its volume and reads it back."""
    path = os.path.join(directory, PROBE)
    result = confined.run(level, "sh", "-c", f"echo {PROBE} > {path} && cat {path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == PROBE


def other_pod_is_denied(confined, directory: str) -> None:
    result = confined.run(OTHER, "cat", os.path.join(directory, PROBE))
    assert result.returncode != 0 and "Permission denied" in result.stderr, result


def stage_seed_publish(client, volume_id: str, staging: str, target: str) -> None:
    """kubelet's stage and publish with context=, and between them a file that was there before the pod (the
    relabel, when needed, must reach it)."""
    flags = [context_flag(LABEL_A)]
    client.stage(volume_id, staging, flags)
    with open(os.path.join(staging, "seed"), "w", encoding="utf-8") as handle:
        handle.write("from before the pod\n")
    client.publish(volume_id, staging, target, flags, pod=("team-a", "web-0"))


def volume_is_the_pods_own(confined, target: str) -> None:
    """The seed carries the pod's label and its process reads it; the pod writes and reads; another is denied."""
    assert label_of(os.path.join(target, "seed")) == Label.parse(LABEL_A)
    seed = confined.run(OWN, "cat", os.path.join(target, "seed"))
    assert seed.returncode == 0 and seed.stdout == "from before the pod\n", seed.stderr
    pod_can_write_and_read(confined, OWN, target)
    other_pod_is_denied(confined, target)


@pytest.fixture
def workdir(tmp_path):
    yield tmp_path
    cleanup(str(tmp_path))
    assert not mounts_under(str(tmp_path)) and not loops_under(str(tmp_path))


def test_builtin_driver_context_mount_gives_the_pod_its_volume(workdir, confined):
    config = shim_config(workdir)
    server = build_server(config).start()
    client = Client(config.socket, config.kubelet_root)
    try:
        volume = client.create("pvc-enforcing")
        staging = client.staging_path(volume.volume_id)
        target = client.target_path("pod-own")
        flags = [context_flag(LABEL_A)]
        client.stage(volume.volume_id, staging, flags)
        client.publish(volume.volume_id, staging, target, flags, pod=("team-a", "web-0"))

        record = server.state.published[target]
        assert (record["verification"], record["action"]) == ("applied", "nothing")
        assert label_of(target) == Label.parse(LABEL_A)  # the superblock's context, no file was relabelled
        pod_can_write_and_read(confined, OWN, target)
        assert label_of(os.path.join(target, PROBE)) == Label.parse(LABEL_A)
        other_pod_is_denied(confined, target)

        client.unpublish(volume.volume_id, target)
        client.unstage(volume.volume_id, staging)
        client.delete(volume.volume_id)
    finally:
        client.close()
        server.stop(0)


@pytest.mark.parametrize("mode, verification, action", [
    ("keep", "applied", "nothing"),   # the backend passes context= to mount(2): the kernel labels the mount
    ("drop", "dropped", "relabel"),   # the backend loses it: the shim notices and relabels the files
])
def test_proxy_makes_context_true_whatever_the_backend_does(workdir, confined, mode, verification, action):
    backend = serve_backend(f"{workdir}/backend.sock", BackendNode(mode=mode))
    config = shim_config(workdir, backend_endpoint=f"unix://{workdir}/backend.sock")
    server = build_server(config).start()
    client = Client(config.socket, config.kubelet_root)
    try:
        staging = client.staging_path("vol-1")
        target = client.target_path("pod-own")
        stage_seed_publish(client, "vol-1", staging, target)

        record = server.state.published[target]
        assert (record["verification"], record["action"]) == (verification, action)
        volume_is_the_pods_own(confined, target)

        client.unpublish("vol-1", target)
        client.unstage("vol-1", staging)
    finally:
        client.close()
        server.stop(0)
        backend.stop(0)
