"""agent/conflict_watch.py and `selinux-mount-agent controller`: the live model against a real HTTP API server."""

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.kubelet import gates as gates_mod
from agent.conflict_watch import ConflictModel, ConflictWatch, conflict_collector, wait_synced
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS
from agent.errors import InvalidInput
from agent.apiclient.client import Client
from agent.apiclient.kubeconfig import kubeconfig_config
from agent.apiclient.retry import Backoff
from fake_apiserver import FakeAPIServer
from k8s_builders import csidriver, pod, pv, pvc
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]



@pytest.fixture
def api():
    server = FakeAPIServer().start()
    for obj in (csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"])):
        server.put(obj)
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(tmp_path, api):
    path = tmp_path / "kubeconfig"
    path.write_text(f"""
apiVersion: v1
kind: Config
current-context: test
contexts: [{{name: test, context: {{cluster: c, user: u}}}}]
clusters: [{{name: c, cluster: {{server: "{api.url}"}}}}]
users: [{{name: u, user: {{token: secret-token}}}}]
""")
    return str(path)


def start(kubeconfig):
    model = ConflictModel(gates_mod.resolve("1.37"), BUILTIN_DEFAULTS)
    watch = ConflictWatch(Client(kubeconfig_config(kubeconfig)), model, watch_timeout=5)
    thread = threading.Thread(target=watch.run, daemon=True)
    thread.start()
    assert wait_synced(watch, 10)
    return watch, thread


def series(watch):
    registry = CollectorRegistry()
    registry.register(conflict_collector(watch.model, watch.lock))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    return {tuple(sorted(s.labels.items())) for f in families for s in f.samples}


def test_conflicts_become_events_and_metric_series_and_follow_changes(api, kubeconfig):
    api.put(pod(name="a"))
    api.put(pod(name="b", policy="Recursive"))
    watch, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 4)
        reasons = sorted((e["involvedObject"]["name"], e["reason"]) for e in api.events)
        assert reasons == [("a", "SELinuxChangePolicyConflict"), ("a", "SELinuxLabelConflict"),
                           ("b", "SELinuxChangePolicyConflict"), ("b", "SELinuxLabelConflict")]
        message = next(e["message"] for e in api.events
                       if e["involvedObject"]["name"] == "a" and e["reason"] == "SELinuxChangePolicyConflict")
        assert message == ('SELinuxChangePolicy "MountOption" conflicts with pod b that uses the same volume as this '
                           'pod with SELinuxChangePolicy "Recursive". If both pods land on the same node, only one '
                           'of them may access the volume.')
        assert all(e["type"] == "Normal" and e["metadata"]["namespace"] == "ns" for e in api.events)
        assert len(series(watch)) == 4
        assert all(h.get("Authorization") == "Bearer secret-token" for h in api.headers)

        # An update that changes nothing relevant posts nothing new.
        changed = pod(name="a")
        changed["metadata"]["annotations"] = {"touched": "yes"}
        api.put(changed, "MODIFIED")
        time.sleep(0.5)
        assert len(api.events) == 4

        # The Recursive pod goes away: no conflict is left.
        api.delete(pod(name="b", policy="Recursive"))
        assert wait_for(lambda: series(watch) == set())

        # A pod with another level arrives: two label conflict events, one per pod.
        api.put(pod(name="c", options={"level": "s0:c7"}))
        assert wait_for(lambda: len(api.events) == 6)
        assert sorted(e["reason"] for e in api.events[4:]) == ["SELinuxLabelConflict"] * 2
        assert len(series(watch)) == 2

        # The driver stops supporting context mounts: everyone is Recursive, nothing conflicts.
        api.put(csidriver(se_linux_mount=False), "MODIFIED")
        assert wait_for(lambda: series(watch) == set())
        assert watch.errors == 0
    finally:
        watch.stop()
        thread.join(5)


def test_finished_pods_do_not_conflict(api, kubeconfig):
    api.put(pod(name="a"))
    done = pod(name="b", options={"level": "s0:c9"})
    done["status"] = {"phase": "Succeeded"}
    api.put(done)
    watch, thread = start(kubeconfig)
    try:
        time.sleep(0.5)
        assert api.events == [] and series(watch) == set()
    finally:
        watch.stop()
        thread.join(5)


def test_a_pod_waiting_for_its_claim_is_evaluated_when_the_claim_arrives(api, kubeconfig):
    api.put(pod(name="a"))
    late = pod(name="b", options={"level": "s0:c9"}, volumes=[{"name": "vol", "persistentVolumeClaim":
                                                                {"claimName": "late"}}])
    api.put(late)
    watch, thread = start(kubeconfig)
    try:
        assert "ns/b" in watch.model.unresolved and api.events == []
        api.put(pvc(name="late", volume="pv1", modes=["ReadWriteMany"]))
        assert wait_for(lambda: len(api.events) == 2)
    finally:
        watch.stop()
        thread.join(5)


def test_cross_namespace_events_are_censored(api, kubeconfig):
    other_pv = pv(name="pv2", modes=["ReadWriteMany"])
    other_pv["spec"]["csi"]["volumeHandle"] = "pv1"  # the same backend volume, seen from another namespace
    api.put(other_pv)
    api.put(pvc(volume="pv2", modes=["ReadWriteMany"], namespace="other"))
    api.put(pod(name="a"))
    api.put(pod(name="z", namespace="other", options={"level": "s0:c9"}))
    watch, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 2)
        for event in api.events:
            assert "conflicts with another pod" in event["message"]
            assert "s0:c9" not in event["message"] or event["involvedObject"]["name"] == "z"
        # The metric is not censored, as upstream's is not.
        assert any(dict(s)["pod2_namespace"] == "other" for s in series(watch))
    finally:
        watch.stop()
        thread.join(5)


def test_kubeconfig_errors(tmp_path):
    path = tmp_path / "kc"
    path.write_text("current-context: x\ncontexts: []\n")
    with pytest.raises(InvalidInput, match="context 'x' not found"):
        kubeconfig_config(str(path))
    path.write_text("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "clusters: [{name: c, cluster: {server: 'https://k'}}]\n"
                    "users: [{name: u, user: {exec: {command: aws}}}]\n")
    with pytest.raises(InvalidInput, match="exec apiVersion None is not supported"):
        kubeconfig_config(str(path))


def test_command_serves_metrics_and_stops_on_sigterm(api, kubeconfig):
    api.put(pod(name="a"))
    api.put(pod(name="b", policy="Recursive"))
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "controller", "--kubeconfig", kubeconfig, "--metrics-address",
         f"127.0.0.1:{port}", "--log-format", "json"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return response.read().decode()
            except OSError:
                return ""

        assert wait_for(lambda: scrape().count("selinux_warning_controller_selinux_volume_conflict{") == 4, 15)
        assert wait_for(lambda: len(api.events) == 4)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert (response.status, response.read()) == (200, b"ok\n")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            assert response.status == 200
        # What prometheus_client's own server answered: OpenMetrics and gzip when the scraper asks for them.
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert response.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(response.read()).endswith(b"# EOF\n")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    # The same log lines as `run --log-format json` (agent/logs.py).
    entries = [json.loads(line) for line in err.splitlines()]
    assert any(e["logger"] == "selinux-mount-agent.conflict_watch" and e["msg"].startswith("watching ")
               for e in entries)


def test_live_model_agrees_with_the_offline_audit():
    import random

    from agent.audit.findings import audit
    from agent.k8s.resolve import Cluster
    from agent.conflict_watch import conflict_key

    rng = random.Random(7)
    storage = [csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"])]
    pods = []
    for index in range(40):
        options = rng.choice([None, {"level": "s0:c1"}, {"level": "s0:c2"}, {"user": "staff_u", "level": "s0:c1"},
                              {"type": "x_t", "level": "s0:c1"}])
        pods.append(pod(name=f"p{index}", options=options, policy=rng.choice([None, "Recursive", "MountOption"])))
    gates = gates_mod.resolve("1.37")
    model = ConflictModel(gates, BUILTIN_DEFAULTS)
    model.replace("Pod", pods[:20])
    for obj in storage:
        model.apply(obj["kind"], "ADDED", obj)
    for obj in pods[20:]:
        model.apply("Pod", "ADDED", obj)
    model.apply("Pod", "DELETED", pods[3])
    expected = audit(Cluster(storage + pods[:3] + pods[4:]), gates, BUILTIN_DEFAULTS)
    assert {conflict_key(c) for c in model.all_conflicts()} == {conflict_key(c) for c in expected.conflicts}
    assert expected.conflicts


# --- malformed objects, conflicts per volume, re-evaluating only dependent pods -------------------------

def _model():
    model = ConflictModel(gates_mod.resolve("1.37"), BUILTIN_DEFAULTS)
    model.replace("CSIDriver", [csidriver()])
    model.replace("PersistentVolume", [pv(modes=["ReadWriteMany"])])
    model.replace("PersistentVolumeClaim", [pvc(modes=["ReadWriteMany"])])
    return model


def _malformed():
    volumes_string = pod(name="s")
    volumes_string["spec"]["volumes"] = "vol"
    entry_string = pod(name="e")
    entry_string["spec"]["volumes"].append("vol")
    context_string = pod(name="c")
    context_string["spec"]["securityContext"] = "restricted"
    status_string = pod(name="t")
    status_string["status"] = "Running"
    return [{"kind": "Pod", "metadata": "x"}, {"kind": "Pod", "metadata": {"name": ["n"]}}, volumes_string,
            entry_string, context_string, status_string]


def test_malformed_pods_are_logged_and_left_out(caplog):
    model = _model()
    model.replace("Pod", [pod(name="a")] + _malformed())
    for obj in _malformed():
        model.apply("Pod", "ADDED", obj)
    model.apply("Pod", "ADDED", pod(name="b", options={"level": "s0:c9"}))
    assert {c.pod.name for c in model.all_conflicts()} == {"a", "b"}
    assert model.unresolved == {
        "ns/s": "Pod ns/s: spec.volumes must be a list, got string",
        "ns/e": "Pod ns/e: spec.volumes[1] must be an object, got string",
        "ns/c": "Pod ns/c: spec.securityContext must be an object, got string",
        "ns/t": "Pod ns/t: status must be an object, got string"}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "ignoring a listed Pod that cannot be read: Pod: metadata must be an object, got string" in warnings
    assert "ignoring a Pod event for an object that cannot be read: Pod: metadata.name must be a string, got " \
           "list" in warnings


def test_malformed_storage_is_left_out_and_its_pods_wait():
    model = _model()
    model.replace("Pod", [pod(name="a"), pod(name="b", options={"level": "s0:c9"})])
    broken = pv(modes=["ReadWriteMany"])
    broken["spec"] = ["csi"]
    model.apply("PersistentVolume", "MODIFIED", broken)
    assert model.all_conflicts() == []
    assert model.unresolved["ns/a"] == "PersistentVolume pv1: spec must be an object, got list"
    model.apply("PersistentVolume", "MODIFIED", {"metadata": "pv1"})  # not even a name: ignored
    model.apply("PersistentVolume", "MODIFIED", pv(modes=["ReadWriteMany"]))
    assert len(model.all_conflicts()) == 2 and model.unresolved == {}


def test_a_malformed_pod_on_the_api_does_not_stop_the_controller(api, kubeconfig):
    for obj in _malformed()[2:]:
        api.put(obj)
    api.put(pod(name="a"))
    api.put(pod(name="b", options={"level": "s0:c9"}))
    watch, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 2)
        assert sorted(e["involvedObject"]["name"] for e in api.events) == ["a", "b"]
        assert set(watch.model.unresolved) == {"ns/s", "ns/e", "ns/c", "ns/t"}
        assert watch.errors == 0
    finally:
        watch.stop()
        thread.join(5)


def test_one_pair_on_two_volumes_is_two_conflicts_and_two_events(api, kubeconfig):
    from agent.conflict_watch import conflict_key

    api.put(pv(name="pv2", modes=["ReadWriteMany"]))
    api.put(pvc(name="claim2", volume="pv2", modes=["ReadWriteMany"]))
    volumes = [{"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}},
               {"name": "vol2", "persistentVolumeClaim": {"claimName": "claim2"}}]
    api.put(pod(name="a", volumes=volumes))
    api.put(pod(name="b", volumes=volumes, options={"level": "s0:c9"}))
    watch, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 4)
        time.sleep(0.3)
        assert sorted(e["involvedObject"]["name"] for e in api.events) == ["a", "a", "b", "b"]
        conflicts = watch.model.all_conflicts()
        assert len({conflict_key(c) for c in conflicts}) == len(conflicts) == 4
        assert len({c.volume for c in conflicts}) == 2
    finally:
        watch.stop()
        thread.join(5)


def test_storage_changes_reevaluate_only_the_pods_that_use_them():
    model = ConflictModel(gates_mod.resolve("1.37"), BUILTIN_DEFAULTS)
    other_driver = csidriver("other.example.com")
    other_pv = pv(name="pv2", modes=["ReadWriteMany"])
    other_pv["spec"]["csi"]["driver"] = "other.example.com"
    model.replace("CSIDriver", [csidriver(), other_driver])
    model.replace("PersistentVolume", [pv(modes=["ReadWriteMany"]), other_pv])
    model.replace("PersistentVolumeClaim", [pvc(modes=["ReadWriteMany"]),
                                            pvc(name="claim2", volume="pv2", modes=["ReadWriteMany"])])
    on_second = [{"name": "vol", "persistentVolumeClaim": {"claimName": "claim2"}}]
    model.replace("Pod", [pod(name=f"p{i}", options={"level": f"s0:c{i % 2}"}) for i in range(20)] +
                  [pod(name="q0", volumes=on_second), pod(name="q1", volumes=on_second, options={"level": "s0:c9"})])

    def evaluations(kind, obj, event="MODIFIED"):
        before = model.evaluations
        model.apply(kind, event, obj)
        return model.evaluations - before

    assert evaluations("PersistentVolumeClaim", pvc(name="claim2", volume="pv2", modes=["ReadWriteMany"])) == 2
    assert evaluations("PersistentVolume", other_pv) == 2
    assert evaluations("CSIDriver", csidriver("other.example.com", se_linux_mount=False)) == 2
    assert not any(c.pod.name.startswith("q") for c in model.all_conflicts())
    assert evaluations("CSIDriver", csidriver()) == 20
    assert evaluations("CSIDriver", csidriver("unused.example.com"), "ADDED") == 0
    assert evaluations("PersistentVolume", pv(modes=["ReadWriteMany"]), "DELETED") == 20
    assert len(model.unresolved) == 20 and model.all_conflicts() == []
    # The PV comes back: the pods that waited for it, and only those, are evaluated again.
    assert evaluations("PersistentVolume", pv(modes=["ReadWriteMany"]), "ADDED") == 20
    assert model.unresolved == {} and len(model.all_conflicts()) == 200
    # A relist that changes nothing evaluates nothing; one that changes one claim, that claim's pods.
    before = model.evaluations
    model.replace("PersistentVolumeClaim", [pvc(modes=["ReadWriteMany"]),
                                            pvc(name="claim2", volume="pv2", modes=["ReadWriteMany"])])
    assert model.evaluations == before
    model.replace("PersistentVolumeClaim", [pvc(modes=["ReadWriteMany"])])
    assert model.evaluations == before + 2 and set(model.unresolved) == {"ns/q0", "ns/q1"}


def test_an_unreachable_api_is_one_warning_for_all_four_watches_and_one_line_when_it_is_back(api, kubeconfig, caplog):
    """The four watches fail together when the API server refuses them; the log says so once, not four lines per
    retry, and once more with the number of failed attempts when every watch works again."""
    api.tokens = set()  # every request refused
    model = ConflictModel(gates_mod.resolve("1.37"), BUILTIN_DEFAULTS)
    watch = ConflictWatch(Client(kubeconfig_config(kubeconfig)), model, watch_timeout=5,
                          backoff=Backoff(base=0.01, cap=0.05))
    thread = threading.Thread(target=watch.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="selinux-mount-agent.apiclient.client"):
        thread.start()
        try:
            assert wait_for(lambda: watch.errors >= 12)
            api.tokens = {"secret-token"}
            assert wait_synced(watch, 20)
            assert wait_for(lambda: any("working again" in r.getMessage() for r in caplog.records))
        finally:
            watch.stop()
            thread.join(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "401 Unauthorized; retrying with backoff" in warnings[0]
    [back] = [r.getMessage() for r in caplog.records if "working again" in r.getMessage()]
    assert back.startswith(f"API server {api.url}: working again after ")
    assert int(back.split("after ")[1].split()[0]) >= 12


# --- parity with upstream's selinux_warning_controller.go syncPod (issue #19) ------------------------------

def _mixed(name="mixed"):
    """A pod whose two containers mount `vol` (a claim) and `scratch` (an emptyDir) with different labels."""
    volumes = [{"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}},
               {"name": "scratch", "emptyDir": {}}]
    mounts = [{"name": "vol", "mountPath": "/v"}, {"name": "scratch", "mountPath": "/s"}]
    return pod(name=name, volumes=volumes, containers=[
        {"name": "one", "volumeMounts": mounts, "securityContext": {"seLinuxOptions": {"level": "s0:c1,c2"}}},
        {"name": "two", "volumeMounts": mounts, "securityContext": {"seLinuxOptions": {"level": "s0:c5"}}}])


def test_multiple_labels_skip_the_volume_and_post_the_warning_event(api, kubeconfig):
    # syncPod: on MultipleSELinuxLabelsError, Eventf(pod, Warning, "MultipleSELinuxLabels", "Volume %q is mounted
    # twice with different SELinux labels inside this pod", mount), then `continue`: for every volume kind (the
    # emptyDir too: GetMountSELinuxLabel runs before syncVolume drops plugins the controller lacks).
    api.put(_mixed())
    api.put(pod(name="other", options={"level": "s0:c9"}))
    watch, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 2)
        time.sleep(0.3)
        assert sorted((e["type"], e["reason"], e["message"], e["involvedObject"]["name"]) for e in api.events) == [
            ("Warning", "MultipleSELinuxLabels", f'Volume "{name}" is mounted twice with different SELinux labels '
             "inside this pod", "mixed") for name in ("scratch", "vol")]
        assert watch.model.all_conflicts() == []
    finally:
        watch.stop()
        thread.join(5)


def test_a_missing_claim_leaves_out_that_volume_not_the_pod():
    # syncPod: CreateVolumeSpec fails for the missing claim, the error is kept and the loop goes on.
    model = _model()
    model.replace("CSIDriver", [csidriver()])
    model.replace("PersistentVolume", [pv(modes=["ReadWriteMany"])])
    model.replace("PersistentVolumeClaim", [pvc(modes=["ReadWriteMany"])])
    both = pod(name="b", options={"level": "s0:c9"}, volumes=[
        {"name": "gone", "persistentVolumeClaim": {"claimName": "gone"}},
        {"name": "vol", "persistentVolumeClaim": {"claimName": "claim"}}])
    model.replace("Pod", [pod(name="a"), both])
    assert {(c.pod.name, c.other.name) for c in model.all_conflicts()} == {("a", "b"), ("b", "a")}
    assert model.unresolved == {"ns/b": "Pod ns/b: PersistentVolumeClaim ns/gone is not in the input"}
    model.apply("PersistentVolumeClaim", "ADDED", pvc(name="gone", modes=["ReadWriteMany"]))
    assert model.unresolved == {} and len(model.all_conflicts()) == 2  # both claims name pv1: one use


def test_two_pods_naming_one_inline_disk_conflict_live():
    # selinux_warning_controller.go syncPod -> CreateVolumeSpec translates the inline awsElasticBlockStore
    # (csi-translation-lib aws_ebs.go) and syncVolume keys it by GetUniqueVolumeNameFromSpec: one volume.
    model = _model()
    model.replace("CSIDriver", [csidriver("ebs.csi.aws.com")])
    disk = [{"name": "disk", "awsElasticBlockStore": {"volumeID": "aws://eu-west-1a/vol-1"}}]
    model.replace("Pod", [pod(name="a", volumes=disk), pod(name="b", volumes=disk, options={"level": "s0:c9"})])
    assert {c.volume for c in model.all_conflicts()} == {"kubernetes.io/csi/ebs.csi.aws.com^vol-1"}
    assert len(model.all_conflicts()) == 2
