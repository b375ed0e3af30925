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
    assert config.csi_endpoint is None and config.state_dir == "state"  # the socket: csi.sock in the state dir
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
    ("kube-api: sometimes\n", {}, "kube_api must be auto|off|in-cluster|kubeconfig[:PATH]"),
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
        assert daemon.config.csi_endpoint is None
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
    from agent.daemon import finished_publishes
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
    daemon = Daemon(config)
    daemon.start()
    client = Client(str(tmp_path / "csi.sock"), str(tmp_path / "kubelet"))
    try:
        volume = client.create("pvc-levels").volume_id
        staging, target = client.staging_path(volume), client.target_path("pod-web-1")
        flags = [context_flag(LABEL_AT_C4_C9)]
        client.stage(volume, staging, flags)
        client.publish(volume, staging, target, flags, pod=("shop", "web-1"))

        def named():
            return any('namespace="shop"' in line and 'pod="web-1"' in line
                       for line in fetch(daemon.metrics_url + "/metrics")[1].splitlines()
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


def test_csi_state_dir_is_the_state_dir_as_for_the_csi_command(tmp_path):
    from agent.daemon import csi_state_dir

    assert csi_state_dir(str(tmp_path)) == str(tmp_path)
    # A node that kept its shim state in DIR/csi keeps it there.
    (tmp_path / "csi").mkdir()
    assert csi_state_dir(str(tmp_path)) == str(tmp_path)  # an empty directory is not state
    (tmp_path / "csi" / "csi-state.json").write_text('{"version": 1}')
    assert csi_state_dir(str(tmp_path)) == str(tmp_path / "csi")
    # Its snapshot deleted, its journal or images still there: still that directory (the shim refuses it).
    (tmp_path / "csi" / "csi-state.json").unlink()
    (tmp_path / "csi" / "volumes").mkdir()
    assert csi_state_dir(str(tmp_path)) == str(tmp_path / "csi")
