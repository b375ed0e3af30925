"""`selinux-mount-agent explain`: the CLI contract, output shapes and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from hostile_inputs import REFUSED, assert_refused, run_cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = str(ROOT / "examples" / "cluster.yaml")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_shape_on_the_bundled_example(capsys):
    code, out, err = run(capsys, "explain", "-f", EXAMPLE, "-o", "json")
    assert code == 0, err
    document = json.loads(out)
    pods = {f"{p['namespace']}/{p['name']}": p for p in document["pods"]}
    assert set(pods) == {"shop/db-0", "shop/media-worker", "shop/media-backup", "shop/frontend"}
    volume = pods["shop/db-0"]["volumes"][0]
    assert set(volume) >= {"name", "decision", "label", "reasons"}
    assert (volume["name"], volume["decision"], volume["label"]) == (
        "data", "mount", "system_u:object_r:container_file_t:s0:c10,c20")
    assert document["kubernetes"]["version"] == "1.37"  # the default of explain, audit and controller
    assert document["defaults"]["file"] and document["selinuxEnabled"] is True


def test_version_changes_the_answer(capsys):
    def media(version):
        _, out, _ = run(capsys, "explain", "-f", EXAMPLE, "-o", "json", "--k8s-version", version)
        pods = {p["name"]: p for p in json.loads(out)["pods"]}
        return pods["media-worker"]["volumes"][0]["decision"]

    assert media("1.36") == "recursive"
    assert media("1.37") == "mount"


def test_feature_gates_flag(capsys):
    _, out, _ = run(capsys, "explain", "-f", EXAMPLE, "-o", "json", "--k8s-version", "1.33",
                    "--feature-gates", "SELinuxMount=true")
    pods = {p["name"]: p for p in json.loads(out)["pods"]}
    assert pods["media-worker"]["volumes"][0]["decision"] == "mount"


def test_selinux_disabled(capsys):
    _, out, _ = run(capsys, "explain", "-f", EXAMPLE, "-o", "json", "--selinux-disabled")
    decisions = {v["decision"] for p in json.loads(out)["pods"] for v in p["volumes"]}
    assert decisions == {"skip"}


def test_table_states_the_defaults_and_reasons(capsys):
    code, out, _ = run(capsys, "explain", "-f", EXAMPLE)
    assert code == 0
    assert out.startswith("Kubernetes 1.37: SELinuxMountReadWriteOncePod=true")
    assert "Container defaults (" in out and "container_file_t" in out
    assert "shop/db-0" in out and "mount" in out
    assert "pod blocked" not in out
    assert "    - the pod sets seLinuxChangePolicy: Recursive" in out


def test_defaults_file(capsys, tmp_path):
    contexts = tmp_path / "lxc_contexts"
    contexts.write_text('process = "system_u:system_r:container_t:s0"\nfile = "system_u:object_r:svirt_lxc_file_t:s0"\n')
    _, out, _ = run(capsys, "explain", "-f", EXAMPLE, "-o", "json", "--defaults-file", str(contexts))
    document = json.loads(out)
    assert document["defaults"]["source"] == str(contexts)
    assert document["pods"][0]["volumes"][0]["label"] == "system_u:object_r:svirt_lxc_file_t:s0:c10,c20"


def test_json_list_and_several_files(capsys, tmp_path):
    import yaml

    with open(EXAMPLE) as handle:
        objects = [o for o in yaml.safe_load_all(handle) if o]
    storage = [o for o in objects if o["kind"] != "Pod"]
    pods = [o for o in objects if o["kind"] == "Pod"]
    (tmp_path / "storage.json").write_text(json.dumps({"kind": "List", "apiVersion": "v1", "items": storage}))
    (tmp_path / "pods.json").write_text(json.dumps({"kind": "PodList", "apiVersion": "v1", "items": pods}))
    code, out, _ = run(capsys, "explain", "-f", str(tmp_path / "storage.json"), "-f", str(tmp_path / "pods.json"),
                       "-o", "json")
    assert code == 0 and len(json.loads(out)["pods"]) == 4


@pytest.mark.parametrize("content, words", [
    ("kind: Pod\nmetadata: {name: x\n", "invalid YAML at line"),
    ('{"kind": "Pod",', "invalid JSON"),
    ("- just\n- a list\n", "expected a Kubernetes object"),
    ("kind: Pod\nmetadata: {name: p, namespace: n}\nspec:\n  containers: [{name: c, volumeMounts: [{name: v, "
     "mountPath: /v}]}]\n  volumes: [{name: v, persistentVolumeClaim: {claimName: gone}}]\n",
     "Pod n/p: PersistentVolumeClaim n/gone is not in the input"),
    ("kind: Pod\nmetadata: {name: p}\nspec:\n  securityContext: {seLinuxOptions: {level: 's0:c1\"\"'}}\n"
     "  containers: [{name: c}]\n", "invalid SELinux level in Pod default/p"),
    ("kind: CSIDriver\nmetadata: {name: d}\nspec: {seLinuxMount: maybe}\n---\nkind: Pod\nmetadata: {name: p}\n"
     "spec:\n  containers: [{name: c, volumeMounts: [{name: v, mountPath: /v}]}]\n  volumes: [{name: v, csi: "
     "{driver: d}}]\n", "CSIDriver d: spec.seLinuxMount must be true or false"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, out, err = run(capsys, "explain", "-f", str(path))
    assert code == 2
    assert words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["--k8s-version", "1.20"], "outside the modelled range"),
    (["--feature-gates", "SELinuxMount=false", "--k8s-version", "1.37"], "locked to true"),
    (["--defaults-file", "/nonexistent/x"], "cannot read defaults file"),
])
def test_bad_flags_exit_2(capsys, argv, words):
    code, _, err = run(capsys, "explain", "-f", EXAMPLE, *argv)
    assert code == 2 and words in err


def test_missing_file_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "explain", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in err


def test_console_script_and_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "agent", "explain", "--help"], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    assert result.returncode == 0
    for flag in ("--k8s-version", "--feature-gates", "--selinux-disabled", "--defaults-file", "-o"):
        assert flag in result.stdout
    result = subprocess.run([sys.executable, "-m", "agent", "explain", "-f", "/nonexistent.yaml"],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("output", ["table", "json"])
def test_costly_input_is_refused_with_one_line(tmp_path, name, output):
    assert_refused(run_cli(tmp_path, name, "explain", "-o", output), REFUSED[name])


@pytest.mark.parametrize("command", ["explain", "audit"])
@pytest.mark.parametrize("content", ["", "# nothing here\n", "null\n"])
def test_a_file_with_no_document_is_bad_input_for_both_commands(capsys, tmp_path, command, content):
    path = tmp_path / "empty.yaml"
    path.write_text(content)
    code, out, err = run(capsys, command, "-f", str(path))
    assert (code, out) == (2, "")
    assert err == f"selinux-mount-agent {command}: error: {path}: no objects in the file: it is empty (a dump of " \
                  "a cluster with nothing to list is a List with no items)\n"


@pytest.mark.parametrize("command", ["explain", "audit"])
def test_json_is_one_line_unless_indent_is_asked_for(capsys, command):
    _, compact, _ = run(capsys, command, "-f", EXAMPLE, "-o", "json")
    assert compact.count("\n") == 1
    _, indented, _ = run(capsys, command, "-f", EXAMPLE, "-o", "json", "--indent", "2")
    document = json.loads(compact)
    assert json.loads(indented) == document
    assert indented == json.dumps(document, indent=2) + "\n"
