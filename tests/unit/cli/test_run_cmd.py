"""`selinux-mount-agent run` for real: the CSI socket answers, /metrics shows the call, health, SIGHUP, SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from csi_shim.proto import csi_pb2, csi_pb2_grpc
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[3]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""



def test_run_serves_csi_and_metrics_and_stops_cleanly(tmp_path):
    port = free_port()
    config = tmp_path / "agent.yaml"
    config.write_text("log-format: json\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), SELINUX_MOUNT_AGENT_NODE_ID="node-under-test")
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--metrics-address", f"127.0.0.1:{port}", "--config", str(config),
         "--kubelet-root", str(tmp_path / "kubelet")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sock = tmp_path / "state" / "csi.sock"
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: get(base + "/readyz")[0] == 200, timeout=20), "never became ready"
        assert sock.exists()
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            info = csi_pb2_grpc.NodeStub(channel).NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=5)
            assert info.node_id == "node-under-test"  # from the environment
            plugin = csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
            assert plugin.name == "local.selinux-mount-agent.io"
        status, body = get(base + "/metrics")
        assert status == 200
        assert 'selinux_mount_agent_csi_request_duration_seconds_count{code="OK",method="NodeGetInfo"} 1.0' in body
        assert "volume_manager_selinux_volumes_admitted_total" in body
        assert get(base + "/healthz") == (200, "ok\n")

        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert process.poll() is None and get(base + "/healthz")[0] == 200
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert not sock.exists()
    messages = [line for line in err.splitlines() if line.startswith("{")]
    assert messages, "logs should be JSON lines (from the config file)"
    assert any("SELinux is not enabled" in line for line in messages) or os.path.exists("/sys/fs/selinux/enforce")
    assert any("configuration reloaded" in line for line in messages)


def test_run_refuses_bad_configuration(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), SELINUX_MOUNT_AGENT_LOG_FORMAT="xml")
    result = subprocess.run([sys.executable, "-m", "agent", "run"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "log_format must be text or json" in result.stderr
    assert "Traceback" not in result.stderr
