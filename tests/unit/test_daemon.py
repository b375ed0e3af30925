"""agent/daemon.py: the components' lifecycle, the metrics and health server, reload and stop."""

import json
import logging
import urllib.error
import urllib.request

import pytest

from agent.config import RunConfig
from agent.daemon import Component, Daemon
from agent.logs import configure_logging


class Probe(Component):
    name = "probe"

    def __init__(self):
        self.started = self.stopped_with = None
        self.broken = None

    def start(self):
        self.started = True

    def stop(self, grace):
        self.stopped_with = grace

    def problem(self):
        return self.broken


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_health_ready_and_stop(tmp_path):
    probe = Probe()
    daemon = Daemon(RunConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path / "state")),
                    components_factory=lambda d: [probe])
    daemon.start()
    try:
        url = daemon.metrics_url
        status, body = fetch(url + "/metrics")
        assert status == 200 and "volume_manager_selinux_volumes_admitted_total" in body
        assert "selinux_mount_agent_selinux_enabled 0.0" in body  # this host has no SELinux
        assert fetch(url + "/healthz") == (200, "ok\n") and fetch(url + "/readyz")[0] == 200
        probe.broken = "socket gone"
        assert fetch(url + "/healthz") == (503, "probe: socket gone\n") and fetch(url + "/readyz")[0] == 503
        assert fetch(url + "/nothing")[0] == 404
    finally:
        daemon.stop(grace=3)
    assert probe.started and probe.stopped_with == 3
    assert (tmp_path / "state").is_dir()


def test_without_selinux_it_says_so_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    daemon = Daemon(RunConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path)),
                    components_factory=lambda d: [])
    daemon.start()
    daemon.stop()
    messages = [r.getMessage() for r in caplog.records if "SELinux is not enabled" in r.getMessage()]
    assert len(messages) == 1


def test_reload_applies_live_options_and_names_the_rest(tmp_path, capsys):
    daemon = Daemon(RunConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path)),
                    components_factory=lambda d: [])
    daemon.start()
    try:
        daemon.reload(RunConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path), log_level="debug",
                                log_format="json", csi_endpoint="unix:///elsewhere.sock"))
        assert daemon.config.log_level == "debug" and daemon.config.log_format == "json"
        assert daemon.config.csi_endpoint is None
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        text = " ".join(entry["msg"] for entry in lines)
        assert "reloaded: log_format, log_level" in text
        assert "need a restart were not applied: csi_endpoint" in text
    finally:
        daemon.stop()
        configure_logging()


def test_the_lock_is_taken_before_anything_binds_and_released_last(tmp_path):
    """One agent per state directory: a second one fails before it takes the metrics port or makes a directory;
    the first releases its lock only after its components and server have stopped."""
    import socket

    from agent.errors import InvalidInput

    events = []

    class Lock:
        def release(self):
            events.append("released")

    class Recorder(Probe):
        def stop(self, grace):
            events.append("stopped")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]

        def refuse():
            raise InvalidInput("state directory in use by pid 1")

        second = Daemon(RunConfig(metrics_address=f"127.0.0.1:{port}", state_dir=str(tmp_path / "second")),
                        components_factory=lambda d: [Recorder()], take_lock=refuse)
        with pytest.raises(InvalidInput, match="in use by pid 1"):
            second.start()
        assert not (tmp_path / "second").exists() and second.components == []
    daemon = Daemon(RunConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path)),
                    components_factory=lambda d: [Recorder()], take_lock=Lock)
    daemon.start()
    daemon.stop()
    assert events == ["stopped", "released"]


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


def test_a_failing_level_update_does_not_fail_the_csi_call():
    """The shim's on_publish runs after publish and unpublish only; its failure is logged, and the call's
    metrics are still recorded."""
    import grpc

    from csi_shim.server import ErrorMapping

    seen, calls = [], []

    class Metrics:
        def observe_csi(self, method, code, seconds):
            seen.append(method)

    def broken():
        calls.append(1)
        raise RuntimeError("bug")

    mapping = ErrorMapping(Metrics(), "x", on_publish=broken)
    for method in ("NodePublishVolume", "NodeGetCapabilities", "NodeUnpublishVolume"):
        mapping._record(method, None, grpc.StatusCode.OK, None, 0.0)
    assert seen == ["NodePublishVolume", "NodeGetCapabilities", "NodeUnpublishVolume"] and len(calls) == 2


def test_the_node_daemonset_reads_audit_pids_in_the_host_pid_namespace():
    """Audit pids are host pids: the agent attributes them through its own /proc, so with the AVC watcher on
    the pod must share the host's pid namespace (and its network namespace for the audit group)."""
    from pathlib import Path

    import yaml

    manifest = Path(__file__).resolve().parents[2] / "deploy" / "base" / "daemonset.yaml"
    spec = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert "--avc=netlink" in agent["args"]
    assert spec.get("hostPID") is True and spec.get("hostNetwork") is True
    assert not any(m["mountPath"] == "/proc" for m in agent["volumeMounts"])  # its own /proc is the host's
