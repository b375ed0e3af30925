"""One instance per state directory: a second `run` or `csi` on the same state exits 2 naming the holder, and
nothing but the process that bound the CSI socket ever removes it."""

import os
import socket
import subprocess
import sys

import grpc
import pytest

from csi_shim.proto import csi_pb2, csi_pb2_grpc
from tests.unit.test_http_flood import ROOT, Agent, free_port, http_get, ready_agent


def plugin_name(path) -> str:
    with grpc.insecure_channel(f"unix://{path}") as channel:
        return csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10).name


@pytest.fixture
def first(tmp_path):
    with ready_agent(tmp_path, fd_limit=False) as running:
        yield running


@pytest.mark.parametrize("command", ["run", "csi"])
def test_a_second_instance_on_the_same_state_exits_2_and_leaves_the_socket(first, tmp_path, command):
    identity = os.stat(first.socket)
    second = Agent(tmp_path, free_port(), command=command, fd_limit=False)
    try:
        second.proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    exited = second.proc.poll()
    code = second.stop()  # a second instance still running is stopped the way kubelet or systemd would
    lines = second.stderr().strip().splitlines()
    try:
        now = os.stat(first.socket)
        kept = (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino)
    except FileNotFoundError:
        kept = False
    print(f"\nsecond `{command}`: exited by itself with {exited}; after it stopped the live socket was "
          f"{'kept' if kept else 'replaced or removed'}; stderr {lines[-3:]}")
    assert exited == 2
    assert len(lines) == 1 and str(first.proc.pid) in lines[0] and "Traceback" not in lines[0]
    assert kept, "the live socket was replaced or removed"
    assert plugin_name(first.socket) == "local.selinux-mount-agent.io"
    assert http_get(first.port, "/healthz")[0] == 200

def test_recover_state_refuses_while_a_shim_serves_the_directory(first, tmp_path):
    """Rebuilding the records under a running shim would have both write the same state files."""
    before = sorted(os.listdir(tmp_path / "state"))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "csi", "--csi-endpoint", f"unix://{tmp_path}/other.sock", "--state-dir",
         str(tmp_path / "state"), "--kubelet-root", str(tmp_path / "kubelet"), "--recover-state"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and str(first.proc.pid) in lines[0], done.stderr
    assert sorted(os.listdir(tmp_path / "state")) == before
    assert plugin_name(first.socket) == "local.selinux-mount-agent.io"


def test_the_lock_file_names_the_holder(first, tmp_path):
    assert (tmp_path / "state" / "instance.lock").read_text().strip() == str(first.proc.pid)


def test_stop_leaves_a_socket_that_is_not_its_own(tmp_path):
    """What is at the path when the server stops is removed only if it is the socket the server bound."""
    from csi_shim.config import ShimConfig
    from csi_shim.server import build_server

    (tmp_path / "kubelet").mkdir()
    config = ShimConfig(csi_endpoint=f"unix://{tmp_path}/csi.sock", state_dir=f"{tmp_path}/state",
                        kubelet_root=f"{tmp_path}/kubelet", node_id="node-1")
    server = build_server(config).start()
    try:
        assert plugin_name(config.socket) == "local.selinux-mount-agent.io"
        os.unlink(config.socket)
        other = socket.socket(socket.AF_UNIX)
        other.bind(config.socket)  # another owner's socket now lives at the path
        other.listen()
    finally:
        server.stop(0)
    try:
        assert os.path.exists(config.socket), "stop removed a socket it did not bind"
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(config.socket)
    finally:
        other.close()


def test_a_stale_socket_is_replaced_and_a_live_foreign_one_is_refused(tmp_path):
    from agent.errors import AgentError
    from csi_shim.config import ShimConfig
    from csi_shim.server import build_server

    (tmp_path / "kubelet").mkdir()
    path = f"{tmp_path}/csi.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on: what a killed instance leaves behind
    config = ShimConfig(csi_endpoint=f"unix://{path}", state_dir=f"{tmp_path}/a", kubelet_root=f"{tmp_path}/kubelet",
                        node_id="node-1")
    server = build_server(config).start()
    try:
        assert plugin_name(path) == "local.selinux-mount-agent.io"
        identity = os.stat(path)
        # Another state directory, the same socket: the lock does not see it, the live socket does.
        other = ShimConfig(csi_endpoint=f"unix://{path}", state_dir=f"{tmp_path}/b",
                           kubelet_root=f"{tmp_path}/kubelet", node_id="node-1")
        with pytest.raises(AgentError, match="in use"):
            build_server(other)
        now = os.stat(path)
        assert (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino)
        assert plugin_name(path) == "local.selinux-mount-agent.io"
    finally:
        server.stop(0)
    assert not os.path.exists(path)


def test_the_lock_is_exclusive_until_released(tmp_path):
    from csi_shim.instance_lock import InstanceLock, InstanceRunning, holder_text

    held = InstanceLock.acquire(str(tmp_path / "state"))
    with pytest.raises(InstanceRunning, match=f"in use by pid {os.getpid()} "):
        InstanceLock.acquire(str(tmp_path / "state"))  # another open file description: flock refuses it too
    held.release()
    InstanceLock.acquire(str(tmp_path / "state")).release()
    assert holder_text(b"") == "a process whose pid is not written yet"


def test_a_lock_file_that_is_a_symbolic_link_is_refused(tmp_path):
    from agent.errors import InvalidInput
    from csi_shim.instance_lock import InstanceLock

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "instance.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidInput, match="cannot lock the state directory"):
        InstanceLock.acquire(str(tmp_path / "state"))
    assert not (tmp_path / "elsewhere").exists()


def test_a_metrics_address_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = Agent(tmp_path, taken.getsockname()[1], fd_limit=False)
        code = agent.proc.wait(30)
        agent.stop()
    log = agent.stderr()
    assert code == 2 and "Traceback" not in log
    assert "metrics address" in log.splitlines()[-1] and "in use" in log.splitlines()[-1]
    assert not (tmp_path / "csi.sock").exists()
