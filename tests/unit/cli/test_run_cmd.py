"""`selinux-mount-agent run` for real: the CSI socket answers, /metrics shows the call, health, SIGHUP, SIGTERM;
and its parts as the daemon runs them: the AVC watcher from an audit log, pods named by the node's pod watch and
by the levels of volumes the CSI shim published."""

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
import pytest

from agent.avc.applied import AppliedLevels
from agent.cli.run_cmd import AVCComponent, node_agent
from agent.config import resolve_config
from agent.daemon import Daemon
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


def feed_denials(log_file, seen, pid: int, level: str, timeout: float = 10.0) -> bool:
    """The follower starts at the end of the log, like tail -F, once its thread has opened it: append one
    denial (a read by `pid` at `level`) at a time until `seen()` says it was counted."""
    deadline, serial = time.monotonic() + timeout, 456
    while not seen() and time.monotonic() < deadline:
        with open(log_file, "a") as handle:
            handle.write(f'type=AVC msg=audit(1700000000.123:{serial}): avc:  denied  {{ read }} for  pid={pid} '
                         f'comm="cat" name="secret" dev="loop0" ino=12 '
                         f'scontext=system_u:system_r:container_t:{level} '
                         'tcontext=system_u:object_r:container_file_t:s0:c3,c4 tclass=file permissive=0\n')
        serial += 1
        time.sleep(0.3)
    return seen()


def test_avc_watcher_runs_inside_the_daemon_from_an_audit_log(tmp_path):
    log_file = tmp_path / "audit.log"
    log_file.write_text("")
    config = resolve_config({"avc": f"file:{log_file}", "metrics_address": "127.0.0.1:0",
                             "state_dir": str(tmp_path / "state")}, {})
    daemon = Daemon(config, components_factory=lambda d: [AVCComponent(d, AppliedLevels())])
    daemon.start()
    try:
        def denied():
            body = get(daemon.metrics_url + "/metrics")[1]
            return 'permission="read"' in body and "selinux_avc_denials_total{" in body

        assert feed_denials(log_file, denied, pid=4242, level="s0:c1,c2")
        assert get(daemon.metrics_url + "/healthz") == (200, "ok\n")
    finally:
        daemon.stop()


def test_avc_denials_name_pods_from_the_node_pod_watch(tmp_path):
    """With kube_api, the daemon watches its node's pods: a denial at a pod's MCS level carries its name."""
    from tests.fake_apiserver import FakeAPIServer

    server = FakeAPIServer().start()
    server.put({"kind": "Pod", "apiVersion": "v1",
                "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1"},
                "spec": {"nodeName": "node-1", "securityContext": {"seLinuxOptions": {"level": "s0:c7,c9"}},
                         "containers": [{"name": "app"}]}})
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{server.url}"}}}}]
users: [{{name: nobody, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: nobody}}}}]
current-context: fake
""")
    log_file = tmp_path / "audit.log"
    log_file.write_text("")
    config = resolve_config({"avc": f"file:{log_file}", "metrics_address": "127.0.0.1:0", "node_id": "node-1",
                             "kube_api": f"kubeconfig:{kubeconfig}", "state_dir": str(tmp_path / "state")}, {})
    daemon = Daemon(config, components_factory=lambda d: [AVCComponent(d, AppliedLevels())])
    daemon.start()
    try:
        def named():
            return any('namespace="shop"' in line and 'pod="web-1"' in line
                       for line in get(daemon.metrics_url + "/metrics")[1].splitlines()
                       if line.startswith("selinux_avc_denials_total{"))

        assert feed_denials(log_file, named, pid=999999, level="s0:c7,c9")
    finally:
        daemon.stop()
        server.stop()


@pytest.mark.root
@pytest.mark.loop
def test_daemon_attributes_denials_by_the_level_of_a_volume_it_published(tmp_path):
    """The whole daemon: a real publish with pod info and context= (relabelled on a kernel without SELinux)
    makes a denial at that level from an exited process name the pod; the unpublish forgets it."""
    from tests.root.csi_helpers import Client, cleanup, context_flag

    log_file = tmp_path / "audit.log"
    log_file.write_text("")
    config = resolve_config({"avc": f"file:{log_file}", "metrics_address": "127.0.0.1:0", "kube_api": "off",
                             "state_dir": str(tmp_path / "state"), "csi_endpoint": f"unix://{tmp_path}/csi.sock",
                             "kubelet_root": str(tmp_path / "kubelet")}, {})
    (tmp_path / "kubelet").mkdir()
    daemon = node_agent(config)
    daemon.start()
    client = Client(str(tmp_path / "csi.sock"), str(tmp_path / "kubelet"))
    try:
        volume = client.create("pvc-levels").volume_id
        staging, target = client.staging_path(volume), client.target_path("pod-web-1")
        flags = [context_flag("system_u:object_r:container_file_t:s0:c4,c9")]
        client.stage(volume, staging, flags)
        client.publish(volume, staging, target, flags, pod=("shop", "web-1"))

        def named():
            return any('namespace="shop"' in line and 'pod="web-1"' in line
                       for line in get(daemon.metrics_url + "/metrics")[1].splitlines()
                       if line.startswith("selinux_avc_denials_total{"))

        assert feed_denials(log_file, named, pid=999999, level="s0:c4,c9")
        attributor = next(c for c in daemon.components if c.name == "avc").watcher.attributor
        client.unpublish(volume, target)
        assert attributor.pod_at_level("s0:c4,c9") is None
        client.unstage(volume, staging)
        client.delete(volume)
    finally:
        client.close()
        daemon.stop()
        cleanup(str(tmp_path))


LABEL_AT_C4_C9 = "system_u:object_r:container_file_t:s0:c4,c9"


def published_record(label, pod, status="done"):
    """A `published` record as the CSI node service writes it once NodePublishVolume has finished."""
    return {"volume_id": "vol-1", "staging_path": "/staging", "label": label, "readonly": False,
            "mount_flags": [f'context="{label}"'] if label else [], "pod": list(pod) if pod else None,
            "status": status, "verification": "applied", "action": "nothing"}


def test_levels_of_published_volumes_follow_the_csi_state(tmp_path):
    """AppliedLevels over a real shim State: publishes add their level, unpublishes remove it, a level shared
    by two pods names neither, and a pending or unlabelled publish counts for nothing."""
    from agent.avc.applied import AppliedLevels
    from agent.avc.assembler import parse_lines
    from agent.avc.attribution import Attributor
    from agent.cli.run_cmd import finished_publishes
    from csi_shim.journal import State

    state = State(str(tmp_path / "csi" / "csi-state.json"))
    attributor = Attributor(proc_root=str(tmp_path / "proc"))
    levels = AppliedLevels()
    levels.feed(attributor)
    levels.watch(lambda: finished_publishes(state))
    [gone] = parse_lines([
        'type=AVC msg=audit(1700000000.123:1): avc:  denied  { read } for  pid=999999 comm="cat" '
        'scontext=system_u:system_r:container_t:s0:c4,c9 tcontext=system_u:object_r:etc_t:s0 tclass=file '
        'permissive=0'])[0]

    def publish(target, record):
        with state.change():
            state.published[target] = record
        levels.sync()  # what the shim's on_publish does after the call

    def unpublish(target):
        with state.change():
            state.published.pop(target)
        levels.sync()

    publish("/pods/a/1", published_record(LABEL_AT_C4_C9, ("shop", "web-1"), status="pending"))
    publish("/pods/b/1", published_record(None, ("shop", "db-0")))
    assert attributor.attribute(gone).reason == "pid_gone" and len(levels) == 0
    publish("/pods/a/1", published_record(LABEL_AT_C4_C9, ("shop", "web-1")))
    publish("/pods/a/2", published_record("system_u:object_r:container_file_t:s0:c9,c4", ("shop", "web-1")))
    found = attributor.attribute(gone)
    assert (found.method, found.namespace, found.pod) == ("mcs", "shop", "web-1")
    unpublish("/pods/a/1")
    assert attributor.attribute(gone).pod == "web-1"  # its second volume still holds the level
    publish("/pods/c/1", published_record(LABEL_AT_C4_C9, ("other", "intruder")))
    assert not attributor.attribute(gone).attributed  # two pods at one level: ambiguous
    unpublish("/pods/c/1")
    unpublish("/pods/a/2")
    assert attributor.attribute(gone).reason == "pid_gone" and len(levels) == 0
    state.close()
