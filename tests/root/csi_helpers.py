"""What the CSI root tests share: a kubelet-like client over the real unix socket, the shim in-process or as
a subprocess, kubelet's directory layout, and a cleanup that leaves no mount or loop device behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import grpc

from agent.node.mountinfo import read_mountinfo
from csi_shim import mounter
from csi_shim.config import ShimConfig
from csi_shim.proto import csi_pb2 as pb
from csi_shim.proto import csi_pb2_grpc as rpc
from tests.polling import terminate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABEL_A = "system_u:object_r:container_file_t:s0:c1,c2"
LABEL_A_OTHER_SPELLING = "system_u:object_r:container_file_t:s0:c2,c1"
LABEL_B = "system_u:object_r:container_file_t:s0:c3,c4"
LEVEL_A, LEVEL_B = "s0:c1,c2", "s0:c3,c4"  # the levels of LABEL_A and LABEL_B: a pod's and another pod's
MODE = pb.VolumeCapability.AccessMode
SIZE = 16 << 20


def context_flag(label: str) -> str:
    """Exactly what kubelet appends (AddSELinuxMountOption, Go %q)."""
    return f'context="{label}"'


def capability(flags=(), fs_type="", mode=MODE.SINGLE_NODE_WRITER, group=""):
    return pb.VolumeCapability(mount=pb.VolumeCapability.MountVolume(fs_type=fs_type, mount_flags=list(flags),
                                                                     volume_mount_group=group),
                               access_mode=MODE(mode=mode))


class Client:
    """A kubelet-like CSI client: the same calls, fields and directory layout kubelet uses."""

    def __init__(self, socket_path: str, kubelet_root: str):
        self.socket = socket_path
        self.root = kubelet_root
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.identity = rpc.IdentityStub(self.channel)
        self.controller = rpc.ControllerStub(self.channel)
        self.node = rpc.NodeStub(self.channel)

    def close(self):
        self.channel.close()

    # kubelet: plugins/kubernetes.io/csi/<driver>/<sha256(volume handle)>/globalmount, created by kubelet.
    def staging_path(self, volume_id: str, create: bool = True) -> str:
        path = os.path.join(self.root, "plugins/kubernetes.io/csi/local.selinux-mount-agent", volume_id,
                            "globalmount")
        if create:
            os.makedirs(path, exist_ok=True)
        return path

    # kubelet: pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount; kubelet creates the parent, the plugin the dir.
    def target_path(self, pod_uid: str, pv: str = "pv") -> str:
        parent = os.path.join(self.root, "pods", pod_uid, "volumes/kubernetes.io~csi", pv)
        os.makedirs(parent, exist_ok=True)
        return os.path.join(parent, "mount")

    def create(self, name: str, size: int = SIZE, fs_type: str | None = None, limit: int = 0):
        params = {"fsType": fs_type} if fs_type else {}
        return self.controller.CreateVolume(pb.CreateVolumeRequest(
            name=name, capacity_range=pb.CapacityRange(required_bytes=size, limit_bytes=limit),
            volume_capabilities=[capability()], parameters=params), timeout=120).volume

    def delete(self, volume_id: str):
        return self.controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=60)

    def stage(self, volume_id: str, staging: str, flags=(), **cap):
        return self.node.NodeStageVolume(pb.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, volume_capability=capability(flags, **cap)),
            timeout=60)

    def unstage(self, volume_id: str, staging: str):
        return self.node.NodeUnstageVolume(pb.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=staging), timeout=60)

    def publish(self, volume_id: str, staging: str, target: str, flags=(), readonly=False, pod=None, **cap):
        context = {}
        if pod:
            context = {"csi.storage.k8s.io/pod.namespace": pod[0], "csi.storage.k8s.io/pod.name": pod[1]}
        return self.node.NodePublishVolume(pb.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=staging, target_path=target, readonly=readonly,
            volume_capability=capability(flags, **cap), volume_context=context), timeout=60)

    def create_stage_publish(self, name: str, pod_dir: str, readonly=False):
        """A new volume staged and published at target_path(pod_dir): (volume, staging, target)."""
        volume = self.create(name)
        staging = self.staging_path(volume.volume_id)
        self.stage(volume.volume_id, staging)
        target = self.target_path(pod_dir)
        self.publish(volume.volume_id, staging, target, readonly=readonly)
        return volume, staging, target

    def unpublish(self, volume_id: str, target: str):
        return self.node.NodeUnpublishVolume(pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
                                             timeout=60)

    def stats(self, volume_id: str, path: str):
        return self.node.NodeGetVolumeStats(pb.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path),
                                            timeout=30)


def status_of(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err.code(), err.details()
    raise AssertionError(f"{getattr(call, '__name__', call)} succeeded; an error was expected")


def mounts_at(path: str) -> list:
    return [m for m in read_mountinfo() if m.mount_point == path]


def mounts_under(directory: str) -> list:
    prefix = directory.rstrip("/") + "/"
    return [m for m in read_mountinfo() if m.mount_point.startswith(prefix)]


def loops_under(directory: str) -> list[str]:
    prefix = os.path.realpath(directory).rstrip("/") + "/"
    return sorted(dev for dev, (backing, _) in mounter.loop_devices().items() if backing.startswith(prefix))


def cleanup(directory: str) -> None:
    """Unmount everything below `directory` (deepest first) and detach loop devices backed by files there."""
    for _ in range(5):
        found = sorted({m.mount_point for m in mounts_under(directory)}, key=len, reverse=True)
        if not found:
            break
        for point in found:
            with contextlib.suppress(Exception):
                mounter._libc.umount2(os.fsencode(point), mounter.MNT_DETACH)
    for device in loops_under(directory):
        subprocess.run(["losetup", "--detach", device], capture_output=True)


def shim_config(tmp, **overrides) -> ShimConfig:
    values = dict(csi_endpoint=f"unix://{tmp}/csi.sock", state_dir=f"{tmp}/state", kubelet_root=f"{tmp}/kubelet",
                  node_id="node-1")
    values.update(overrides)
    os.makedirs(values["kubelet_root"], exist_ok=True)
    return ShimConfig(**values)


class ShimProcess:
    """The shim as `selinux-mount-agent csi` in a subprocess, for kill -9 tests."""

    def __init__(self, tmp, *extra):
        self.tmp = str(tmp)
        os.makedirs(f"{self.tmp}/kubelet", exist_ok=True)
        self.args = [sys.executable, "-c", "from agent.cli.main import main; raise SystemExit(main())", "csi",
                     "--csi-endpoint", f"unix://{self.tmp}/csi.sock", "--state-dir", f"{self.tmp}/state",
                     "--kubelet-root", f"{self.tmp}/kubelet", "--node-id", "node-1", *extra]
        self.proc = None
        self.log = open(f"{self.tmp}/shim.log", "ab")

    def start(self, timeout: float = 30.0) -> "ShimProcess":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{self.tmp}/csi.sock")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + timeout
        while not os.path.exists(f"{self.tmp}/csi.sock"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shim did not start; see {self.tmp}/shim.log")
            time.sleep(0.02)
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc, grace=10)
        self.log.close()


@contextlib.contextmanager
def running_shim(tmp_path, **overrides):
    """A built-in-driver shim on a socket under tmp_path and a client for it; at exit both are stopped and
    every mount and loop device the test made under tmp_path is gone (asserted)."""
    from csi_shim.server import build_server

    config = shim_config(tmp_path, **overrides)
    server = build_server(config).start()
    client = Client(config.socket, config.kubelet_root)
    try:
        yield server, client
    finally:
        client.close()
        server.stop(0)
        cleanup(str(tmp_path))
        assert not mounts_under(str(tmp_path)) and not loops_under(str(tmp_path))


def state_of(server) -> dict:
    """What a restarted shim would load: the snapshot plus the journal, read from disk."""
    from csi_shim.journal import State

    reader = State(server.config.state_file)
    try:
        return reader.plain()
    finally:
        reader.close()
