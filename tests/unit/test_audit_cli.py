"""`selinux-mount-agent audit`: exit codes, the JSON contract, the upstream metric, and --remediate."""

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent import gates
from agent.audit import audit
from agent.cli.main import main
from agent.cluster import Cluster
from agent.defaults import load_node_defaults
from agent.manifests import load_files
from k8s_builders import csidriver, owned, pod, pv, pvc

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml")


def dump(tmp_path, objects, name="dump.json"):
    """Write objects as `kubectl get pods,pvc,pv,csidrivers -A -o json` prints them: one List."""
    path = tmp_path / name
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {}}))
    return str(path)


def conflicting(tmp_path):
    web = owned(pod(name="web-1", namespace="shop"), "ReplicaSet", "web-7f", {"pod-template-hash": "7f"})
    job = pod(name="backup", namespace="shop", policy="Recursive")
    other = pod(name="reader", namespace="team", options={"level": "s0:c9"})
    volume_a, volume_b = pv("pv-a", modes=["ReadWriteMany"]), pv("pv-b", modes=["ReadWriteMany"])
    volume_b["spec"]["csi"]["volumeHandle"] = "pv-a"
    return dump(tmp_path, [csidriver(), volume_a, volume_b,
                           pvc(volume="pv-a", modes=["ReadWriteMany"], namespace="shop"),
                           pvc(volume="pv-b", modes=["ReadWriteMany"], namespace="team"), web, job, other])


def run(capsys, *argv):
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_1_and_json_contract(capsys, tmp_path):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "-o", "json")
    assert code == 1
    document = json.loads(out)
    conflict = document["conflicts"][0]
    assert set(conflict) >= {"volume", "property", "pod1", "pod2"}
    assert set(conflict["pod1"]) == {"namespace", "name", "value"}
    assert conflict["property"] in ("SELinuxLabel", "SELinuxChangePolicy")
    workloads = {(w["kind"], w["namespace"], w["name"]): w for w in document["workloads"]}
    assert workloads[("Deployment", "shop", "web")]["verdict"] == "breaks"
    assert all(set(w) >= {"kind", "namespace", "name", "verdict", "remedy"} for w in document["workloads"])


def test_exit_0_when_nothing_breaks_on_the_target(capsys, tmp_path):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "-o", "json", "--k8s-version", "1.36")
    assert code == 0
    assert {w["verdict"] for w in json.loads(out)["workloads"]} == {"conflicts"}


def test_table_output(capsys, tmp_path):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path))
    assert code == 1
    assert out.startswith("Target Kubernetes 1.37")
    assert "breaks    Deployment shop/web (inferred from pod names)" in out
    assert "Result: something breaks on Kubernetes 1.37." in out


def test_prometheus_output_is_the_upstream_metric(capsys, tmp_path):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "-o", "prometheus")
    assert code == 1
    (family,) = list(text_string_to_metric_families(out))
    assert family.name == "selinux_warning_controller_selinux_volume_conflict" and family.type == "gauge"
    assert {tuple(sorted(s.labels)) for s in family.samples} == {(
        "pod1_name", "pod1_namespace", "pod1_value", "pod2_name", "pod2_namespace", "pod2_value", "property")}
    assert all(s.value == 1 for s in family.samples)
    pods = {(s.labels["pod1_name"], s.labels["pod2_name"]) for s in family.samples}
    assert ("web-1", "reader") in pods and ("reader", "web-1") in pods


def test_censor_hides_other_namespaces(capsys, tmp_path):
    _, out, _ = run(capsys, "-f", conflicting(tmp_path), "-o", "prometheus", "--censor")
    (family,) = list(text_string_to_metric_families(out))
    for sample in family.samples:
        if sample.labels["pod2_namespace"]:
            assert sample.labels["pod2_namespace"] == sample.labels["pod1_namespace"]
        else:
            assert sample.labels["pod2_name"] == "" and sample.labels["pod2_value"] == ""
    assert "reader" not in {s.labels["pod2_name"] for s in family.samples if s.labels["pod1_namespace"] == "shop"}


@pytest.mark.parametrize("form, kinds", [
    ("patches", ["Deployment", "Pod"]),
    ("mutating-admission-policy", ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]),
    ("kyverno", ["ClusterPolicy"]),
])
def test_remediate_prints_applicable_yaml(capsys, tmp_path, form, kinds):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "--remediate", form)
    assert code == 1
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted({d["kind"] for d in docs}) == sorted(kinds)


def test_bundled_example(capsys):
    code, out, _ = run(capsys, "-f", EXAMPLE, "-o", "json")
    assert code == 1
    names = {w["name"]: w["verdict"] for w in json.loads(out)["workloads"]}
    assert names == {"media-worker": "breaks", "media-backup": "breaks"}


@pytest.mark.parametrize("censor", [[], ["--censor"]])
def test_json_output_is_the_report_as_json(capsys, tmp_path, censor):
    path = conflicting(tmp_path)
    _, out, _ = run(capsys, "-f", path, "-o", "json", *censor)
    report = audit(Cluster(load_files([path])), gates.resolve("1.37"), load_node_defaults())
    assert out == json.dumps(report.to_json(censor=bool(censor)), separators=(",", ":")) + "\n"


def test_nested_lists_and_nulls_read_like_a_flat_list(capsys, tmp_path):
    flat = conflicting(tmp_path)
    items = json.loads(Path(flat).read_text())["items"]
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"kind": "List", "items": [
        None, {"kind": "PodList", "items": [o for o in items if o["kind"] == "Pod"]},
        *[o for o in items if o["kind"] != "Pod"]]}))
    _, expected, _ = run(capsys, "-f", flat, "-o", "json")
    _, out, _ = run(capsys, "-f", str(nested), "-o", "json")
    assert json.loads(out)["summary"] == json.loads(expected)["summary"]
    assert out == expected


@pytest.mark.parametrize("content, words", [
    ("{not json", "invalid JSON"),
    ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, volumeMounts: [{name: v, mountPath: /v}]}]\n"
     "  volumes: [{name: v, persistentVolumeClaim: {claimName: gone}}]\n", "PersistentVolumeClaim default/gone"),
])
def test_bad_input_exits_2(capsys, tmp_path, content, words):
    path = tmp_path / "bad"
    path.write_text(content)
    code, _, err = run(capsys, "-f", str(path))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
