"""agent/config.py: `run`'s configuration layering, the shim's options shared with `csi`, and where the shim's
state lives."""

import dataclasses
import os

import pytest

from agent.config import SHIM_OPTIONS, RunConfig, ShimOptions, resolve_config, shim_state_dir
from agent.errors import InvalidInput
from csi_shim.config import ShimConfig


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
    ("on-context-dropped: ignore\n", {}, "on_context_dropped must be relabel or fail"),
    ("config-file: /elsewhere.yaml\n", {}, "unknown option 'config-file'"),
])
def test_bad_configuration_is_named(text, env, words):
    with pytest.raises(InvalidInput) as info:
        resolve_config({}, env, text, "agent.yaml")
    assert words in str(info.value)


def test_avc_option_is_checked():
    with pytest.raises(InvalidInput, match="avc must be off, netlink or file:PATH"):
        resolve_config({"avc": "syslog"}, {})


def test_every_option_has_one_name_for_flag_environment_and_file():
    """The contract: each option is a flag (--csi-endpoint), a variable (SELINUX_MOUNT_AGENT_CSI_ENDPOINT) and a
    file key (csi-endpoint or csi_endpoint); the shim's options are declared once, in ShimOptions."""
    names = [f.name for f in dataclasses.fields(RunConfig)]
    assert names == ["csi_endpoint", "backend_endpoint", "state_dir", "kubelet_root", "node_id", "strip_context",
                     "on_context_dropped", "avc", "kube_api", "metrics_address", "log_format", "log_level",
                     "config_file"]
    assert SHIM_OPTIONS == tuple(names[:7])
    shim_only = [f.name for f in dataclasses.fields(ShimConfig) if f.name not in SHIM_OPTIONS]
    assert shim_only == ["driver_name", "max_workers", "relabel_threads"]


def test_the_shim_takes_resolved_options(tmp_path, monkeypatch):
    """Relative paths against the working directory, the socket in the state directory; what `run` adds to the
    shim's options stays out of the shim's value."""
    monkeypatch.chdir(tmp_path)
    config = resolve_config({"kubelet_root": "kubelet", "node_id": "n1", "avc": "netlink"}, {})
    shim = ShimConfig.of(config.resolved())
    assert (shim.state_dir, shim.socket, shim.kubelet_root) == (
        str(tmp_path / "state"), str(tmp_path / "state" / "csi.sock"), str(tmp_path / "kubelet"))
    assert shim.node_id == "n1" and not hasattr(shim, "avc") and shim.driver_name == "local.selinux-mount-agent.io"
    named = ShimConfig.of(ShimOptions(csi_endpoint="unix:sock/csi.sock", state_dir="/srv/sma").resolved())
    assert (named.csi_endpoint, named.state_dir) == (f"unix://{tmp_path}/sock/csi.sock", "/srv/sma")
    assert ShimConfig.of(config.resolved(state_dir="/var/lib/x")).state_dir == "/var/lib/x"


@pytest.mark.parametrize("options, words", [
    ({"csi_endpoint": "tcp://1.2.3.4:5"}, "only unix:///path.sock"),
    ({"node_id": ""}, "--node-id must not be empty"),
    ({"backend_endpoint": "unix://relative.sock"}, "must be absolute"),
])
def test_bad_shim_options_are_named(options, words):
    with pytest.raises(InvalidInput, match=words):
        ShimConfig.of(ShimOptions(**options).resolved())


def test_shim_state_dir_is_the_state_dir_as_for_the_csi_command(tmp_path):
    assert shim_state_dir(str(tmp_path)) == str(tmp_path)
    # A node that kept its shim state in DIR/csi keeps it there.
    (tmp_path / "csi").mkdir()
    assert shim_state_dir(str(tmp_path)) == str(tmp_path)  # an empty directory is not state
    (tmp_path / "csi" / "csi-state.json").write_text('{"version": 1}')
    assert shim_state_dir(str(tmp_path)) == str(tmp_path / "csi")
    # Its snapshot deleted, its journal or images still there: still that directory (the shim refuses it).
    (tmp_path / "csi" / "csi-state.json").unlink()
    (tmp_path / "csi" / "volumes").mkdir()
    assert shim_state_dir(str(tmp_path)) == str(tmp_path / "csi")
    os.rmdir(tmp_path / "csi" / "volumes")
    (tmp_path / "csi" / "csi-state.json.journal").write_text("")
    assert shim_state_dir(str(tmp_path)) == str(tmp_path / "csi")
