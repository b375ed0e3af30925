"""The real `run` process under a connection flood on its metrics port: 1,020 idle TCP connections against a
1,024 file-descriptor limit must leave /healthz answering, CSI working, the CPU idle, and the log free of
tracebacks when the clients reset their connections."""

import contextlib
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from csi_shim.proto import csi_pb2, csi_pb2_grpc
from tests.polling import terminate, wait_for

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 1020  # the measured case: just under the agent's own limit once its other files are counted
CHILD_FD_LIMIT = 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str, float]:
    """(status, body, seconds) of one GET; status 0 when nothing answered within `timeout`."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    except OSError:
        return 0, "", time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace"), time.monotonic() - started


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Agent:
    """`selinux-mount-agent run` as a subprocess with its state, socket and kubelet root under tmp."""

    def __init__(self, tmp: Path, port: int, command: str = "run", fd_limit: bool = True):
        self.tmp = tmp
        self.port = port
        self.socket = tmp / "csi.sock"
        self.log_path = tmp / f"{command}-{port}.log"
        (tmp / "kubelet").mkdir(exist_ok=True)
        args = [sys.executable, "-m", "agent", command, "--csi-endpoint", f"unix://{self.socket}",
                "--state-dir", str(tmp / "state"), "--kubelet-root", str(tmp / "kubelet"), "--node-id", "node-1"]
        if command == "run":
            args += ["--metrics-address", f"127.0.0.1:{port}", "--avc", "off", "--kube-api", "off"]
        self.log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=self.log, stderr=self.log)
        if fd_limit:
            # Set from here rather than in a preexec_fn: this process runs gRPC threads, and Python code
            # between fork and exec in a threaded process can hang or abort. The limit binds every descriptor
            # the agent opens from now on; the interpreter has barely started.
            resource.prlimit(self.proc.pid, resource.RLIMIT_NOFILE, (CHILD_FD_LIMIT, CHILD_FD_LIMIT))

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = terminate(self.proc)
        self.log.close()
        return code


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, FLOOD * 2 + 500)
    if wanted < FLOOD + 100:
        pytest.skip(f"needs a file-descriptor limit above {FLOOD + 100} (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def ready_agent(tmp_path, fd_limit: bool = True):
    """`run` started, ready (/readyz), and stopped at the end."""
    port = free_port()
    running = Agent(tmp_path, port, fd_limit=fd_limit)
    try:
        assert wait_for(lambda: http_get(port, "/readyz", 2)[0] == 200 or running.proc.poll() is not None,
                        timeout=30)
        assert running.proc.poll() is None, running.stderr()
        yield running
    finally:
        running.stop()


@pytest.fixture
def agent(tmp_path):
    with ready_agent(tmp_path) as running:
        yield running


def open_idle(port: int, count: int, batch: int = 4, wait: float = 1.0) -> list[socket.socket]:
    """`count` TCP connections to the port that send nothing, opened a few at a time with a pause, the way a
    patient client would, so that a small listen backlog does not hide the flood: a connection the kernel
    completes with a SYN cookie while the accept queue is full never reaches the server. Each batch gets
    `wait` seconds; a server that stops accepting only makes this slower, never stalls it."""
    clients = []
    for start in range(0, count, batch):
        pending = selectors.DefaultSelector()
        for _ in range(min(batch, count - start)):
            conn = socket.socket()
            conn.setblocking(False)
            conn.connect_ex(("127.0.0.1", port))
            clients.append(conn)
            pending.register(conn, selectors.EVENT_WRITE)
        deadline = time.monotonic() + wait
        while pending.get_map() and time.monotonic() < deadline:
            for key, _ in pending.select(timeout=max(0.0, deadline - time.monotonic())):
                pending.unregister(key.fileobj)
        pending.close()
        time.sleep(0.01)
    return clients


def established(clients: list[socket.socket]) -> int:
    count = 0
    for conn in clients:
        with contextlib.suppress(OSError):
            conn.getpeername()
            count += 1
    return count


def reset_all(clients: list[socket.socket]) -> None:
    """Close every client with a reset (SO_LINGER 0); half of them first send a whole request, so the server
    is writing its answer into a connection that is gone."""
    for index, conn in enumerate(clients):
        with contextlib.suppress(OSError):
            if index % 2:
                conn.send(b"GET /metrics HTTP/1.1\r\nHost: flood\r\n\r\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def node_id(path) -> str:
    """NodeGetInfo's node id over the CSI socket, or the gRPC status name when the call fails."""
    try:
        with grpc.insecure_channel(f"unix://{path}") as channel:
            return csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id
    except grpc.RpcError as err:
        return err.code().name


def test_health_answers_and_the_cpu_idles_while_1020_connections_are_held(agent, many_fds):
    """Everything is measured first and asserted at the end, so one run reports every figure."""
    clients = open_idle(agent.port, FLOOD)
    try:
        with open(f"/proc/{agent.proc.pid}/limits") as limits:
            assert any(line.startswith("Max open files") and f" {CHILD_FD_LIMIT} " in line for line in limits)
        print(f"\n{established(clients)} of {FLOOD} connections established; "
              f"the agent has {open_fds(agent.proc.pid)} fds open (limit {CHILD_FD_LIMIT})")
        health = http_get(agent.port, "/healthz", timeout=10)
        print(f"/healthz while they are held: status {health[0]} in {health[2]:.3f} s")
        metrics = http_get(agent.port, "/metrics", timeout=10)
        print(f"/metrics while they are held: status {metrics[0]} in {metrics[2]:.3f} s")
        node = node_id(agent.socket)
        print(f"CSI NodeGetInfo while they are held: {node}")
        before = cpu_seconds(agent.proc.pid)
        time.sleep(3)
        spent = cpu_seconds(agent.proc.pid) - before
        print(f"CPU time of the agent over 3 s while they are held: {spent:.2f} s")
    finally:
        reset_all(clients)
    recovered = wait_for(lambda: http_get(agent.port, "/healthz", 5)[0] == 200, timeout=15)
    code = agent.stop()
    tracebacks = agent.stderr().count("Traceback")
    print(f"after the resets: /healthz answers {recovered}; exit code {code}; {tracebacks} tracebacks in the log")
    assert health[:2] == (200, "ok\n")
    assert metrics[0] == 200 and "selinux_mount_agent_csi_request_duration_seconds" in metrics[1]
    assert node == "node-1"
    assert spent < 1.0, "a server holding idle connections must not spin"
    assert recovered and code == 0
    assert tracebacks == 0


@pytest.mark.root
@pytest.mark.loop
def test_create_volume_succeeds_while_1000_connections_are_held(agent, many_fds):
    clients = open_idle(agent.port, FLOOD)
    try:
        with grpc.insecure_channel(f"unix://{agent.socket}") as channel:
            controller = csi_pb2_grpc.ControllerStub(channel)
            capability = csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(),
                access_mode=csi_pb2.VolumeCapability.AccessMode(
                    mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER))
            volume = controller.CreateVolume(csi_pb2.CreateVolumeRequest(
                name="pvc-flood", capacity_range=csi_pb2.CapacityRange(required_bytes=16 << 20),
                volume_capabilities=[capability]), timeout=60).volume
            controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=60)
    finally:
        reset_all(clients)
