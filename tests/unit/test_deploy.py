"""deploy/ and the Dockerfile: schemas, cross-references, least-privilege RBAC, the SELinux module, image lint,
and the kustomizations as `kubectl kustomize` renders them (overlays, components, image overrides)."""

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from agent.conflict_watch import RESOURCES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Not built in: checked by shape below (Prometheus Operator, OpenShift).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "SecurityContextConstraints"}
VERSIONS = ["1.36.0", "1.37.0"]


def documents(path):
    with open(path) as handle:
        return [d for d in yaml.safe_load_all(handle) if d]


def manifests():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.parent.name == "proxy-sidecar":
            continue  # the sidecar patch is a fragment: validated once rendered, below
        for doc in documents(path):
            yield path, doc


def by_kind(kind):
    return [doc for _, doc in manifests() if doc["kind"] == kind]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_schemas(version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for path, doc in manifests():
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {err}")
        checked += 1
    assert checked >= 12


def test_kustomizations_list_exactly_the_files_beside_them():
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        (doc,) = documents(kustomization)
        listed = set(doc.get("resources", [])) | {p["path"] for p in doc.get("patches", []) if "path" in p}
        listed = {name for name in listed if "/" not in name}  # other kustomizations (../base) are not files here
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, kustomization


def test_each_service_monitor_selects_one_metrics_service():
    monitors = by_kind("ServiceMonitor")
    assert len(monitors) == 2  # the node agents and the controller
    selected = set()
    for monitor in monitors:
        (service,) = [s for s in by_kind("Service")
                      if all(s["metadata"]["labels"].get(k) == v
                             for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
        assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selected.add(service["metadata"]["name"])
    assert selected == {"selinux-mount-agent-metrics", "selinux-mount-agent-controller"}


def test_openshift_scc_admits_exactly_the_node_service_account():
    (scc,) = by_kind("SecurityContextConstraints")
    assert scc["apiVersion"] == "security.openshift.io/v1"
    (account,) = [a for a in by_kind("ServiceAccount") if a["metadata"]["name"] == "selinux-mount-agent-node"]
    assert scc["users"] == [f"system:serviceaccount:{account['metadata']['namespace']}:{account['metadata']['name']}"]
    spec = _agent_daemonset()["spec"]["template"]["spec"]
    assert scc["allowHostNetwork"] is spec["hostNetwork"] is True and scc["allowHostPID"] is spec["hostPID"] is True
    assert scc["allowPrivilegedContainer"] is True and "hostPath" in scc["volumes"]
    kinds = {next(iter(v.keys() - {"name"})) for v in spec["volumes"]}
    assert kinds <= set(scc["volumes"])


def _agent_daemonset():
    (daemonset,) = by_kind("DaemonSet")
    return daemonset


def test_daemonset_mounts_what_the_node_plugin_needs():
    daemonset = _agent_daemonset()
    spec = daemonset["spec"]["template"]["spec"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert mounts["/etc/selinux"]["readOnly"] is True
    assert "/sys/fs/selinux" in mounts and "/dev" in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/sys/fs/selinux"]["name"]]["hostPath"]["path"] == "/sys/fs/selinux"
    (driver,) = by_kind("CSIDriver")
    assert driver["spec"]["seLinuxMount"] is True and driver["spec"]["podInfoOnMount"] is True
    registrar = next(c for c in spec["containers"] if c["name"] == "node-driver-registrar")
    env = {e["name"]: e.get("value") for e in registrar["env"]}
    assert "--kubelet-registration-path=$(KUBELET_REGISTRATION_PATH)" in registrar["args"]
    assert env["KUBELET_REGISTRATION_PATH"] == f"/var/lib/kubelet/plugins/{driver['metadata']['name']}/csi.sock"
    (storage_class,) = by_kind("StorageClass")
    assert storage_class["provisioner"] == driver["metadata"]["name"]
    assert volumes["plugin-dir"]["hostPath"]["path"] == f"/var/lib/kubelet/plugins/{driver['metadata']['name']}"


def test_proxy_sidecar_patch_validates_on_a_driver_daemonset():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (patch,) = documents(DEPLOY / "proxy-sidecar" / "sidecar-patch.yaml")
    base = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "csi-node", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"app": "csi-node"}}, "template": {
                "metadata": {"labels": {"app": "csi-node"}},
                "spec": {"containers": [{"name": "driver", "image": "example/driver:1",
                                         "volumeMounts": [{"name": "socket-volume", "mountPath": "/csi"}]}],
                         "volumes": [{"name": "socket-volume", "hostPath": {"path": "/var/lib/kubelet/plugins/x"}},
                                     {"name": "kubelet-volume", "hostPath": {"path": "/var/lib/kubelet"}}]}}}}
    merged = copy.deepcopy(base)
    pod_spec = merged["spec"]["template"]["spec"]
    pod_spec["containers"] += patch["spec"]["template"]["spec"]["containers"]
    pod_spec["volumes"] += patch["spec"]["template"]["spec"]["volumes"]
    for version in VERSIONS:
        kubernetes_validate.validate(merged, version, strict=True)
    sidecar = patch["spec"]["template"]["spec"]["containers"][0]
    assert sidecar["securityContext"]["seLinuxOptions"]["type"] == "selinux_mount_agent_t"
    # Added capabilities reach only root in Kubernetes runtimes (no ambient set for other users).
    assert sidecar["securityContext"]["runAsUser"] == 0 and sidecar["securityContext"]["capabilities"]["add"]
    assert "--backend-endpoint=unix:///csi/backend.sock" in sidecar["args"]
    selinux_module = (DEPLOY / "selinux" / "selinux_mount_agent.te").read_text()
    assert re.search(r"^type selinux_mount_agent_t;", selinux_module, re.M)


def _rules(role):
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return out


def _role(name):
    return next(r for r in by_kind("ClusterRole") if r["metadata"]["name"] == name)


def test_controller_rbac_grants_exactly_what_the_code_calls():
    used = set()
    for kind, path in RESOURCES:
        group = "" if path.startswith("/api/v1/") else path.split("/")[2]
        resource = path.rstrip("/").split("/")[-1]
        used |= {(group, resource, "list"), (group, resource, "watch")}
    used.add(("", "events", "create"))  # ConflictWatch._post
    assert _rules(_role("selinux-mount-agent-controller")) == used


# external-provisioner's documented RBAC for --node-deployment (kubernetes-csi/external-provisioner rbac.yaml).
PROVISIONER_NEEDS = {
    ("", "persistentvolumes", v) for v in ("get", "list", "watch", "create", "delete")
} | {("", "persistentvolumeclaims", v) for v in ("get", "list", "watch", "update")} | {
    ("storage.k8s.io", r, v) for r in ("storageclasses", "csinodes") for v in ("get", "list", "watch")
} | {("", "nodes", v) for v in ("get", "list", "watch")} | {
    ("", "events", v) for v in ("list", "watch", "create", "update", "patch")}
NODE_AGENT_NEEDS = {("", "pods", "list"), ("", "pods", "watch")}  # agent.avc.podwatch.PodWatch


def test_node_rbac_grants_nothing_beyond_the_sidecar_and_the_agent():
    assert _rules(_role("selinux-mount-agent-node")) == PROVISIONER_NEEDS | NODE_AGENT_NEEDS


def test_selinux_module_readme_has_the_install_commands():
    text = (DEPLOY / "selinux" / "README.md").read_text()
    for command in ("make -f /usr/share/selinux/devel/Makefile selinux_mount_agent.pp", "semodule -i",
                    "restorecon -R /var/lib/selinux-mount-agent"):
        assert command in text


# --- Dockerfile ------------------------------------------------------------------------------------------

def _instructions():
    dockerfile = pytest.importorskip("dockerfile")
    return dockerfile.parse_file(str(ROOT / "Dockerfile"))


def test_dockerfile_copies_only_paths_that_exist():
    copies = [c for c in _instructions() if c.cmd.upper() == "COPY" and not any(f.startswith("--from") for f in c.flags)]
    assert copies
    for instruction in copies:
        for source in instruction.value[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_dockerfile_entrypoint_is_the_console_script():
    instructions = _instructions()
    (entrypoint,) = [c for c in instructions if c.cmd.upper() == "ENTRYPOINT"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(entrypoint.value[0]).name in scripts
    (cmd,) = [c for c in instructions if c.cmd.upper() == "CMD"]
    from agent.cli.main import SUBCOMMANDS
    assert f"agent.cli.{cmd.value[0]}_cmd" in SUBCOMMANDS or cmd.value[0] == "run"


def test_dockerfile_best_practices():
    instructions = _instructions()
    froms = [c.value[0] for c in instructions if c.cmd.upper() == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert all(":" in image and not image.endswith(":latest") for image in froms), "pin base image tags"
    final = instructions[max(i for i, c in enumerate(instructions) if c.cmd.upper() == "FROM"):]
    kinds = [c.cmd.upper() for c in final]
    (user,) = [c.value[0] for c in final if c.cmd.upper() == "USER"]
    assert not user.startswith("0") and not user.startswith("root")
    # No HEALTHCHECK, and the Dockerfile says why: three servers with different endpoints (csi has none),
    # dropped from OCI images, ignored by Kubernetes, whose probes deploy/ sets per container.
    assert "HEALTHCHECK" not in kinds
    assert re.search(r"^# No HEALTHCHECK: ", (ROOT / "Dockerfile").read_text(), re.M)
    for run in (c for c in instructions if c.cmd.upper() == "RUN" and "apt-get install" in c.value[0]):
        assert "--no-install-recommends" in run.value[0] and "rm -rf /var/lib/apt/lists" in run.value[0]
    exposed = {int(c.value[0]) for c in final if c.cmd.upper() == "EXPOSE"}
    ports = {p["containerPort"] for c in _agent_daemonset()["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    assert exposed <= ports


def test_daemonset_args_are_accepted_by_run():
    from agent.cli.main import build_parser

    agent = next(c for c in _agent_daemonset()["spec"]["template"]["spec"]["containers"] if c["name"] == "agent")
    parsed = build_parser().parse_args(expand(agent))
    assert parsed.command == "run" and parsed.avc == "netlink" and parsed.kubelet_root == "/var/lib/kubelet"
    assert _agent_daemonset()["spec"]["template"]["spec"]["hostNetwork"] is True
    (patch,) = documents(DEPLOY / "proxy-sidecar" / "sidecar-patch.yaml")
    sidecar = patch["spec"]["template"]["spec"]["containers"][0]
    parsed = build_parser().parse_args(expand(sidecar))
    assert parsed.command == "csi" and parsed.backend_endpoint == "unix:///csi/backend.sock"


def expand(container, node="node-1"):
    """A container's args as kubelet passes them: $(VAR) from the container's env (fieldRefs: the node name)."""
    env = {e["name"]: e.get("value", node) for e in container.get("env", [])}
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]


def test_the_images_defaults_work_in_a_container():
    """State and socket at absolute paths under the image's volume, metrics on every address at the exposed
    port, and `run` accepts them as its environment."""
    from agent.config import resolve_config

    instructions = _instructions()
    (env_instruction,) = [c for c in instructions if c.cmd.upper() == "ENV"]
    env = dict(zip(env_instruction.value[::2], env_instruction.value[1::2]))
    (volume,) = [c.value[0] for c in instructions if c.cmd.upper() == "VOLUME"]
    (exposed,) = [c.value[0] for c in instructions if c.cmd.upper() == "EXPOSE"]
    config = resolve_config({}, env)
    assert config.state_dir == volume
    assert config.csi_endpoint == f"unix://{volume}/csi.sock"
    assert config.metrics_address == f"0.0.0.0:{exposed}"


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
