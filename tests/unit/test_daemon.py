"""agent/daemon.py: configuration layering, JSON logs, the metrics and health server, reload and stop."""

import json
import logging
import time
import urllib.error
import urllib.request

import pytest

from agent.daemon import Component, Daemon, DaemonConfig, JSONFormatter, configure_logging, resolve_config
from agent.errors import InvalidInput


def test_defaults_work_on_a_laptop():
    config = resolve_config({}, {})
    assert config.metrics_address.startswith("127.0.0.1:")
    assert config.csi_endpoint == "unix://state/csi.sock" and config.state_dir == "state"
    assert config.backend_endpoint is None and config.log_format == "text"


def test_layering_file_then_environment_then_flags():
    text = "csi-endpoint: unix:///from/file.sock\nstate_dir: /file/state\nlog-level: debug\nstrip-context: yes\n"
    env = {"SELINUX_MOUNT_AGENT_STATE_DIR": "/env/state", "SELINUX_MOUNT_AGENT_LOG_FORMAT": "json",
           "SELINUX_MOUNT_AGENT_STRIP_CONTEXT": "false"}
    flags = {"state_dir": "/flag/state", "node_id": None, "log_level": None}
    config = resolve_config(flags, env, text, "agent.yaml")
    assert config.csi_endpoint == "unix:///from/file.sock"  # file
    assert config.log_level == "debug"                         # file, flag not given
    assert config.log_format == "json"                         # environment
    assert config.strip_context is False                       # environment over file
    assert config.state_dir == "/flag/state"                   # flag over both


@pytest.mark.parametrize("text, env, words", [
    ("nonsense: 1\n", {}, "unknown option 'nonsense'"),
    ("- a list\n", {}, "expected a mapping"),
    ("log-format: xml\n", {}, "log_format must be text or json"),
    ("", {"SELINUX_MOUNT_AGENT_STRIP_CONTEXT": "maybe"}, "must be true or false"),
    ("metrics-address: nowhere\n", {}, "is not HOST:PORT"),
    ("key: [unclosed\n", {}, "invalid YAML"),
    ("kube-api: sometimes\n", {}, "kube_api must be auto|off|in-cluster|kubeconfig:PATH"),
])
def test_bad_configuration_is_named(text, env, words):
    with pytest.raises(InvalidInput) as info:
        resolve_config({}, env, text, "agent.yaml")
    assert words in str(info.value)


def test_json_log_lines():
    record = logging.LogRecord("selinux-mount-agent", logging.INFO, __file__, 1, "staged %s", ("vol-1",), None)
    record.volume = "vol-1"
    entry = json.loads(JSONFormatter().format(record))
    assert entry["msg"] == "staged vol-1" and entry["level"] == "info" and entry["volume"] == "vol-1"
    assert entry["time"].endswith("Z")


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
    daemon = Daemon(DaemonConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path / "state")),
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
    daemon = Daemon(DaemonConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path)),
                    components_factory=lambda d: [])
    daemon.start()
    daemon.stop()
    messages = [r.getMessage() for r in caplog.records if "SELinux is not enabled" in r.getMessage()]
    assert len(messages) == 1


def test_reload_applies_live_options_and_names_the_rest(tmp_path, capsys):
    daemon = Daemon(DaemonConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path)),
                    components_factory=lambda d: [])
    daemon.start()
    try:
        daemon.reload(DaemonConfig(metrics_address="127.0.0.1:0", state_dir=str(tmp_path), log_level="debug",
                                   log_format="json", csi_endpoint="unix:///elsewhere.sock"))
        assert daemon.config.log_level == "debug" and daemon.config.log_format == "json"
        assert daemon.config.csi_endpoint == "unix://state/csi.sock"
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        text = " ".join(entry["msg"] for entry in lines)
        assert "reloaded: log_format, log_level" in text
        assert "need a restart were not applied: csi_endpoint" in text
    finally:
        daemon.stop()
        configure_logging()


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
    from agent.daemon import AVCComponent

    daemon = Daemon(config, components_factory=lambda d: [AVCComponent(d)])
    daemon.start()
    try:
        def denied():
            body = fetch(daemon.metrics_url + "/metrics")[1]
            return 'permission="read"' in body and "selinux_avc_denials_total{" in body

        assert feed_denials(log_file, denied, pid=4242, level="s0:c1,c2")
        assert fetch(daemon.metrics_url + "/healthz") == (200, "ok\n")
    finally:
        daemon.stop()


def test_avc_denials_name_pods_from_the_node_pod_watch(tmp_path):
    """With kube_api, the daemon watches its node's pods: a denial at a pod's MCS level carries its name."""
    from agent.daemon import AVCComponent
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
    daemon = Daemon(config, components_factory=lambda d: [AVCComponent(d)])
    daemon.start()
    try:
        def named():
            return any('namespace="shop"' in line and 'pod="web-1"' in line
                       for line in fetch(daemon.metrics_url + "/metrics")[1].splitlines()
                       if line.startswith("selinux_avc_denials_total{"))

        assert feed_denials(log_file, named, pid=999999, level="s0:c7,c9")
    finally:
        daemon.stop()
        server.stop()


def test_avc_option_is_checked():
    with pytest.raises(InvalidInput, match="avc must be off, netlink or file:PATH"):
        resolve_config({"avc": "syslog"}, {})


def test_node_metrics_count_what_the_shim_reports():
    from prometheus_client import CollectorRegistry, generate_latest

    from agent.metrics import NodeMetrics

    registry = CollectorRegistry()
    metrics = NodeMetrics(registry)
    metrics.decided("recursive")
    metrics.verified("dropped")
    metrics.verified("applied")
    metrics.context_mount(True, "kubernetes.io/csi/local.selinux-mount-agent.io", "RWOP")
    metrics.observe_csi("NodeStageVolume", "OK", 0.002)
    metrics.observe_csi("SomethingElse", "OK", 0.002)
    text = generate_latest(registry).decode()
    assert 'selinux_mount_agent_decisions_total{decision="recursive"} 1.0' in text
    assert 'selinux_mount_agent_context_mount_verifications_total{result="failed"} 1.0' in text
    assert 'selinux_mount_agent_context_mount_verifications_total{result="ok"} 1.0' in text
    assert ('volume_manager_selinux_volumes_admitted_total{access_mode="RWOP",'
            'volume_plugin="kubernetes.io/csi/local.selinux-mount-agent.io"} 1.0') in text
    assert 'method="other"' in text  # unknown methods do not add label values
