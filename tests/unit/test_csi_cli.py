import pytest

from agent.cli.main import build_parser
from agent.cli.csi_cmd import config_from_args
from agent.errors import InvalidInput
from csi_shim.config import ShimConfig, socket_path


def test_csi_flags_contract():
    args = build_parser().parse_args([
        "csi", "--csi-endpoint", "unix:///run/csi/csi.sock", "--backend-endpoint", "unix:///run/b/csi.sock",
        "--state-dir", "/var/lib/sma", "--kubelet-root", "/data/kubelet", "--node-id", "n1", "--strip-context",
        "--on-context-dropped", "fail", "--log-format", "json"])
    config = config_from_args(args)
    assert config.socket == "/run/csi/csi.sock" and config.proxy and config.strip_context
    assert (config.state_dir, config.kubelet_root, config.node_id) == ("/var/lib/sma", "/data/kubelet", "n1")
    assert config.on_context_dropped == "fail"


def test_defaults():
    config = config_from_args(build_parser().parse_args(["csi", "--csi-endpoint", "unix:///x.sock"]))
    assert config.kubelet_root == "/var/lib/kubelet" and not config.proxy and config.node_id


@pytest.mark.parametrize("endpoint", ["tcp://1.2.3.4:5", "/no/scheme.sock", "unix://relative.sock"])
def test_bad_endpoints(endpoint):
    with pytest.raises(InvalidInput):
        socket_path(endpoint, "--csi-endpoint")
    with pytest.raises(InvalidInput):
        ShimConfig(csi_endpoint=endpoint)


def test_relative_dirs_refused():
    with pytest.raises(InvalidInput):
        ShimConfig(csi_endpoint="unix:///x.sock", kubelet_root="kubelet")
