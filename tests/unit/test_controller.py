"""agent/controller.py and `selinux-mount-agent controller`: the live model against a real HTTP API server."""

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

from agent import gates as gates_mod
from agent.controller import ConflictController, ConflictModel, conflict_collector, wait_synced
from agent.defaults import BUILTIN_DEFAULTS
from agent.errors import InvalidInput
from agent.kubeapi import Client, kubeconfig_config
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
    controller = ConflictController(Client(kubeconfig_config(kubeconfig)), model, watch_timeout=5)
    thread = threading.Thread(target=controller.run, daemon=True)
    thread.start()
    assert wait_synced(controller, 10)
    return controller, thread


def series(controller):
    registry = CollectorRegistry()
    registry.register(conflict_collector(controller.model, controller.lock))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    return {tuple(sorted(s.labels.items())) for f in families for s in f.samples}


def test_conflicts_become_events_and_metric_series_and_follow_changes(api, kubeconfig):
    api.put(pod(name="a"))
    api.put(pod(name="b", policy="Recursive"))
    controller, thread = start(kubeconfig)
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
        assert len(series(controller)) == 4
        assert all(h.get("Authorization") == "Bearer secret-token" for h in api.headers)

        # An update that changes nothing relevant posts nothing new.
        changed = pod(name="a")
        changed["metadata"]["annotations"] = {"touched": "yes"}
        api.put(changed, "MODIFIED")
        time.sleep(0.5)
        assert len(api.events) == 4

        # The Recursive pod goes away: no conflict is left.
        api.delete(pod(name="b", policy="Recursive"))
        assert wait_for(lambda: series(controller) == set())

        # A pod with another level arrives: two label conflict events, one per pod.
        api.put(pod(name="c", options={"level": "s0:c7"}))
        assert wait_for(lambda: len(api.events) == 6)
        assert sorted(e["reason"] for e in api.events[4:]) == ["SELinuxLabelConflict"] * 2
        assert len(series(controller)) == 2

        # The driver stops supporting context mounts: everyone is Recursive, nothing conflicts.
        api.put(csidriver(se_linux_mount=False), "MODIFIED")
        assert wait_for(lambda: series(controller) == set())
        assert controller.errors == 0
    finally:
        controller.stop()
        thread.join(5)


def test_finished_pods_do_not_conflict(api, kubeconfig):
    api.put(pod(name="a"))
    done = pod(name="b", options={"level": "s0:c9"})
    done["status"] = {"phase": "Succeeded"}
    api.put(done)
    controller, thread = start(kubeconfig)
    try:
        time.sleep(0.5)
        assert api.events == [] and series(controller) == set()
    finally:
        controller.stop()
        thread.join(5)


def test_a_pod_waiting_for_its_claim_is_evaluated_when_the_claim_arrives(api, kubeconfig):
    api.put(pod(name="a"))
    late = pod(name="b", options={"level": "s0:c9"}, volumes=[{"name": "vol", "persistentVolumeClaim":
                                                                {"claimName": "late"}}])
    api.put(late)
    controller, thread = start(kubeconfig)
    try:
        assert "ns/b" in controller.model.unresolved and api.events == []
        api.put(pvc(name="late", volume="pv1", modes=["ReadWriteMany"]))
        assert wait_for(lambda: len(api.events) == 2)
    finally:
        controller.stop()
        thread.join(5)


def test_cross_namespace_events_are_censored(api, kubeconfig):
    other_pv = pv(name="pv2", modes=["ReadWriteMany"])
    other_pv["spec"]["csi"]["volumeHandle"] = "pv1"  # the same backend volume, seen from another namespace
    api.put(other_pv)
    api.put(pvc(volume="pv2", modes=["ReadWriteMany"], namespace="other"))
    api.put(pod(name="a"))
    api.put(pod(name="z", namespace="other", options={"level": "s0:c9"}))
    controller, thread = start(kubeconfig)
    try:
        assert wait_for(lambda: len(api.events) == 2)
        for event in api.events:
            assert "conflicts with another pod" in event["message"]
            assert "s0:c9" not in event["message"] or event["involvedObject"]["name"] == "z"
        # The metric is not censored, as upstream's is not.
        assert any(dict(s)["pod2_namespace"] == "other" for s in series(controller))
    finally:
        controller.stop()
        thread.join(5)


def test_kubeconfig_errors(tmp_path):
    path = tmp_path / "kc"
    path.write_text("current-context: x\ncontexts: []\n")
    with pytest.raises(InvalidInput, match="context 'x' not found"):
        kubeconfig_config(str(path))
    path.write_text("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "clusters: [{name: c, cluster: {server: 'https://k'}}]\n"
                    "users: [{name: u, user: {exec: {command: aws}}}]\n")
    with pytest.raises(InvalidInput, match="credential plugin"):
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
         f"127.0.0.1:{port}"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def scrape():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    return response.read().decode()
            except OSError:
                return ""

        assert wait_for(lambda: scrape().count("selinux_warning_controller_selinux_volume_conflict{") == 4, 15)
        assert wait_for(lambda: len(api.events) == 4)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err


def test_live_model_agrees_with_the_offline_audit():
    import random

    from agent.audit import audit
    from agent.cluster import Cluster
    from agent.controller import conflict_key

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
