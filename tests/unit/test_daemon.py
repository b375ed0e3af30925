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
