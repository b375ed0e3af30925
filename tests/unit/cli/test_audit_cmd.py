"""`selinux-mount-agent audit`: exit codes, the JSON contract, the upstream metric, and --remediate."""

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.kubelet import gates
from agent.audit.findings import audit
from agent.cli.main import main
from agent.k8s.resolve import Cluster
from agent.node.contexts import load_node_defaults
from agent.k8s.manifests import load_files
from hostile_inputs import REFUSED, assert_refused, run_cli
from k8s_builders import csidriver, owned, pod, pv, pvc

EXAMPLE = str(Path(__file__).resolve().parents[3] / "examples" / "cluster.yaml")


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
    # The count is of the lines listed; the controller's count (each pair once per pod) is said as such.
    listed = out.split("one line per pair):\n")[1].split("\n\n")[0].splitlines()
    conflicts = json.loads(run(capsys, "-f", conflicting(tmp_path), "-o", "json")[1])["conflicts"]
    assert len(conflicts) == 2 * len(listed)
    assert f"{len(listed)} conflicting pairs ({len(conflicts)} conflicts as the controller reports them, one " \
           "per pod of each pair)" in out
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
    ("patches", ["Deployment"]),
    ("mutating-admission-policy", ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]),
    ("kyverno", ["ClusterPolicy"]),
])
def test_remediate_prints_applicable_yaml(capsys, tmp_path, form, kinds):
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "--remediate", form)
    assert code == 1
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert sorted({d["kind"] for d in docs}) == sorted(kinds)


def test_patches_leave_bare_pods_out_and_say_how_to_fix_them(capsys, tmp_path):
    # A Pod's spec is immutable (but for images and a few fields): a patch would be refused by the API server.
    code, out, _ = run(capsys, "-f", conflicting(tmp_path), "--remediate", "patches")
    assert code == 1
    assert [d["kind"] for d in yaml.safe_load_all(out) if d] == ["Deployment"]
    assert "# Pod team/reader is a bare Pod: its spec cannot be patched; recreate it with " \
           "spec.securityContext.seLinuxChangePolicy: Recursive\n" in out


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


def test_bad_input_exits_2(capsys, tmp_path):
    path = tmp_path / "bad"
    path.write_text("{not json")
    code, _, err = run(capsys, "-f", str(path))
    assert code == 2 and "invalid JSON" in err and len(err.strip().splitlines()) == 1


def test_a_missing_claim_is_a_finding_with_the_pod_not_bad_input(capsys, tmp_path):
    # Upstream's syncPod reports the volume whose CreateVolumeSpec fails and goes on (selinux_warning_controller.go);
    # exit 2 is kept for input that cannot be parsed.
    path = tmp_path / "dump.yaml"
    path.write_text("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, volumeMounts: [{name: v, "
                    "mountPath: /v}]}]\n  volumes: [{name: v, persistentVolumeClaim: {claimName: gone}}]\n")
    code, out, err = run(capsys, "-f", str(path))
    assert code == 0 and err == ""
    assert "UnresolvedVolume" in out and "PersistentVolumeClaim default/gone is not in the input" in out
    code, out, _ = run(capsys, "-f", str(path), "-o", "json")
    assert json.loads(out)["findings"] == [{
        "kind": "UnresolvedVolume", "volume": "", "pods": ["default/p"],
        "message": "Pod default/p: PersistentVolumeClaim default/gone is not in the input"}]


# --- malformed input: exit 2, one line on stderr naming object and field, nothing on stdout ----------------

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "audit"
STORAGE = str(FIXTURES / "storage.yaml")


def _shop_pod(name="web-0", **spec):
    obj = pod(name=name, namespace="shop", volumes=[{"name": "data", "persistentVolumeClaim": {"claimName":
                                                                                               "shared"}}])
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize("obj, message", [
    (_shop_pod(volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}, "x", "y"]),
     "Pod shop/web-0: spec.volumes[1] must be an object, got string"),
    (_shop_pod(volumes="data"), "Pod shop/web-0: spec.volumes must be a list, got string"),
    (_shop_pod(securityContext="restricted"), "Pod shop/web-0: spec.securityContext must be an object, got string"),
    (_shop_pod(containers=[["app"]]), "Pod shop/web-0: spec.containers[0] must be an object, got list"),
    (_shop_pod(containers="app"), "Pod shop/web-0: spec.containers must be a list, got string"),
    ({"kind": "Pod", "metadata": ["web-0"], "spec": {}}, "Pod: metadata must be an object, got list"),
    ({"kind": "PersistentVolume", "metadata": {"name": "pv-shared"}, "spec": ["csi"]},
     "PersistentVolume pv-shared: spec must be an object, got list"),
    (42, "dump.json: expected a Kubernetes object or a List, got number"),
])
def test_malformed_objects_exit_2_with_one_line(capsys, tmp_path, obj, message):
    # A well-formed dump in one file (storage and a pod of the shared claim), the malformed object in another.
    # The malformed pod shares the volume, so the audit reads all of it; a malformed PV is read because the
    # pods claim it.
    replaced = obj["kind"] if isinstance(obj, dict) else None
    good = [o for o in load_files([STORAGE]) if o["kind"] != replaced] + [_shop_pod(name="web-1")]
    code, out, err = run(capsys, "-f", dump(tmp_path, good, name="good.json"), "-f", dump(tmp_path, [obj]),
                         "-o", "json")
    assert (code, out) == (2, "")
    assert err.startswith("selinux-mount-agent audit: error: ") and err.endswith(f"{message}\n")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("content", ["", "\n  \n", "# nothing here\n", "---\n", "null\n"])
def test_a_file_with_no_document_is_bad_input(capsys, tmp_path, content):
    path = tmp_path / "empty.yaml"
    path.write_text(content)
    code, out, err = run(capsys, "-f", str(path))
    assert (code, out) == (2, "")
    assert err == f"selinux-mount-agent audit: error: {path}: no objects in the file: it is empty (a dump of a " \
                  "cluster with nothing to list is a List with no items)\n"


def test_an_empty_list_is_an_empty_report(capsys, tmp_path):
    code, out, err = run(capsys, "-f", dump(tmp_path, []), "-o", "json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["conflicts"] == [] and document["workloads"] == [] and document["findings"] == []
    assert document["summary"]["podsChecked"] == 0


# --- several files, duplicates ---------------------------------------------------------------------------

def test_the_same_file_twice_gives_the_report_of_once(capsys, tmp_path):
    path = conflicting(tmp_path)
    _, once, _ = run(capsys, "-f", path, "-o", "json")
    code, twice, _ = run(capsys, "-f", path, "-f", path, "-o", "json")
    assert code == 1 and twice == once
    assert json.loads(twice)["summary"]["podsChecked"] == 3


def test_pods_and_storage_in_two_files_read_like_one_merged_file(capsys, tmp_path):
    pods = str(FIXTURES / "pods-two-nodes.yaml")
    merged = tmp_path / "merged.yaml"
    merged.write_text(Path(STORAGE).read_text() + "---\n" + Path(pods).read_text())
    _, expected, _ = run(capsys, "-f", str(merged), "-o", "json")
    code, out, _ = run(capsys, "-f", pods, "-f", STORAGE, "-o", "json")
    assert code == 1 and out == expected and json.loads(out)["conflicts"]


# --- cases named by the issue, from fixtures -------------------------------------------------------------

def _report(capsys, *files, extra=()):
    code, out, err = run(capsys, *[arg for f in files for arg in ("-f", str(FIXTURES / f))], "-o", "json", *extra)
    assert err == ""
    return code, json.loads(out)


def test_pods_of_one_volume_on_different_nodes_still_conflict(capsys):
    # The controller's key is the volume, cluster-wide: two nodes do not keep the pods apart for long, since
    # either may be rescheduled next to the other.
    code, report = _report(capsys, "storage.yaml", "pods-two-nodes.yaml")
    assert code == 1
    assert {(c["pod1"]["name"], c["pod2"]["name"]) for c in report["conflicts"]} == {
        ("web-7f-a", "report-0"), ("report-0", "web-7f-a")}
    verdicts = {(w["kind"], w["name"]): w["verdict"] for w in report["workloads"]}
    assert verdicts == {("Deployment", "web"): "breaks", ("StatefulSet", "report"): "breaks"}
    reasons = [r for w in report["workloads"] for r in w["reasons"]]
    assert any("whichever starts second on a shared node" in r for r in reasons)
    assert not any("same node now" in r for r in reasons)


def test_container_t_next_to_no_type_is_no_conflict_for_either_view(capsys):
    """The blind spot the issue names: `type: container_t` on one pod, no type on the other.

    The controller compares raw options, and an empty type on one side is incomparable (PR #133425), so it
    reports nothing. Filling in node defaults does not change that: kubelet's file label takes only user and
    level from the pod (go-selinux InitLabels) and role and type from the node's `file` entry, so both pods get
    system_u:object_r:container_file_t:s0:c1,c2 and kubelet sees one label too. No conflict, no finding, exit 0,
    with any defaults file (it is the same for both pods)."""
    for contexts in ("system-contexts", "staff-contexts"):
        code, report = _report(capsys, "storage.yaml", "pods-container-t.yaml",
                               extra=("--defaults-file", str(FIXTURES / contexts)))
        assert code == 0
        assert report["conflicts"] == [] and report["findings"] == []
        assert {w["name"]: w["verdict"] for w in report["workloads"]} == {"typed": "ok", "untyped": "ok"}


def test_spc_t_pod_sharing_a_volume_with_a_confined_pod_is_flagged(capsys):
    code, report = _report(capsys, "storage.yaml", "pods-spc-t.yaml")
    (finding,) = [f for f in report["findings"] if f["kind"] == "PrivilegedSharing"]
    assert finding["pods"] == ["shop/backup-agent", "shop/app"]
    assert "spc_t" in finding["message"]


def test_defaults_file_changes_what_kubelet_compares(capsys):
    # staff_u vs no user: with a node file label of system_u kubelet mounts two labels; with staff_u, one.
    code, report = _report(capsys, "storage.yaml", "pods-user.yaml",
                           extra=("--defaults-file", str(FIXTURES / "system-contexts")))
    assert code == 1 and report["conflicts"] == []
    assert [f["kind"] for f in report["findings"]] == ["KubeletOnlyConflict"]
    code, report = _report(capsys, "storage.yaml", "pods-user.yaml",
                           extra=("--defaults-file", str(FIXTURES / "staff-contexts")))
    assert code == 0 and report["findings"] == []
    assert {w["verdict"] for w in report["workloads"]} == {"ok"}


def test_feature_gates_change_the_verdict(capsys):
    # 1.36 enforces RWX volumes only with SELinuxMount, which is off there by default.
    code, report = _report(capsys, "storage.yaml", "pods-two-nodes.yaml", extra=("--k8s-version", "1.36"))
    assert code == 0 and {w["verdict"] for w in report["workloads"]} == {"conflicts"}
    code, report = _report(capsys, "storage.yaml", "pods-two-nodes.yaml",
                           extra=("--k8s-version", "1.36", "--feature-gates", "SELinuxMount=true"))
    assert code == 1 and {w["verdict"] for w in report["workloads"]} == {"breaks"}
    assert report["summary"]["featureGates"]["SELinuxMount"] is True


# --- input that costs more than it is worth: refused early, through the real command ------------------------

@pytest.mark.parametrize("name", sorted(REFUSED))
def test_costly_input_is_refused_with_one_line(tmp_path, name):
    assert_refused(run_cli(tmp_path, name, "audit"), REFUSED[name])
