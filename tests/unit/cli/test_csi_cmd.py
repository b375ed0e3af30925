import pytest

from agent.cli.main import build_parser
from argparse_tree import command, option_help
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


@pytest.mark.parametrize("flag, dirs", [("--state-dir", {"state_dir": "state"}),
                                        ("--kubelet-root", {"state_dir": "/state", "kubelet_root": "kubelet"})])
def test_relative_dirs_refused(flag, dirs):
    with pytest.raises(InvalidInput, match=f"{flag} .* must be an absolute path"):
        ShimConfig(csi_endpoint="unix:///x.sock", **dirs)


def test_a_damaged_state_stops_csi_with_one_line_and_recover_state_rebuilds(tmp_path, capsys):
    """No root needed: no images, no mounts. The refusal is one line naming the file; --recover-state keeps
    the file aside, writes a valid state, and a second run finds nothing to recover."""
    import os

    from agent.cli.main import main

    state = tmp_path / "state"
    state.mkdir()
    (state / "csi-state.json").write_text('{"version": "1"}')
    flags = ["csi", "--csi-endpoint", f"unix://{tmp_path}/csi.sock", "--state-dir", str(state),
             "--kubelet-root", str(tmp_path / "kubelet"), "--node-id", "n1"]
    assert main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(state / "csi-state.json") in err[0] and "--recover-state" in err[0]
    assert (state / "csi-state.json").read_text() == '{"version": "1"}'
    assert not os.path.exists(tmp_path / "csi.sock")

    assert main(flags + ["--recover-state"]) == 0
    out = capsys.readouterr().out
    assert 'version "1"' in out and "kept aside: csi-state.json -> csi-state.json.bad-" in out
    [aside] = [p for p in os.listdir(state) if ".bad-" in p]
    assert (state / aside).read_text() == '{"version": "1"}'
    assert main(flags + ["--recover-state"]) == 0
    assert "nothing to recover" in capsys.readouterr().out


def test_recover_state_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        build_parser(["csi"]).parse_args(["csi", "--help"])
    assert "--recover-state" in capsys.readouterr().out

@pytest.mark.parametrize("where", ["too-long", "below-a-file"])
def test_a_socket_that_cannot_be_bound_stops_csi_with_one_line(tmp_path, capsys, where):
    """A start-up failure (here: an address the kernel refuses, a directory that cannot be made) is one line
    naming --csi-endpoint and exit 2, as a container with a read-only or misplaced socket directory meets it."""
    from agent.cli.main import main

    if where == "too-long":
        directory = tmp_path / ("d" * 120)
    else:
        (tmp_path / "file").write_text("")
        directory = tmp_path / "file"
    flags = ["csi", "--csi-endpoint", f"unix://{directory}/csi.sock", "--state-dir", str(tmp_path / "state"),
             "--kubelet-root", str(tmp_path / "kubelet"), "--node-id", "n1"]
    assert main(flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--csi-endpoint" in err[0] and "Traceback" not in err[0], err


def test_csi_and_run_share_their_defaults(tmp_path, monkeypatch):
    """One set of defaults for the shim's options, whichever command serves it: the state in ./state, the socket
    csi.sock inside it, resolved against the working directory (csi once required --csi-endpoint and kept its
    state elsewhere)."""
    from agent.cli import csi_cmd
    from agent.config import RunConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(csi_cmd, "EARLIER_STATE_DIR", str(tmp_path / "earlier"))
    from_csi = config_from_args(build_parser().parse_args(["csi"]))
    from_run = ShimConfig.of(RunConfig().resolved())
    assert from_csi == from_run
    assert (from_csi.state_dir, from_csi.csi_endpoint) == (str(tmp_path / "state"), f"unix://{tmp_path}/state/csi.sock")
    moved = config_from_args(build_parser().parse_args(["csi", "--state-dir", "/srv/sma"]))
    assert (moved.state_dir, moved.csi_endpoint) == ("/srv/sma", "unix:///srv/sma/csi.sock")
    csi_help, run_help = command("csi").format_help(), command("run").format_help()
    for flag in ("--state-dir", "--csi-endpoint", "--kubelet-root", "--on-context-dropped", "--log-level"):
        assert option_help(csi_help, flag) == option_help(run_help, flag)


def test_csi_keeps_using_the_state_its_earlier_default_held(tmp_path, monkeypatch):
    from agent.cli import csi_cmd

    earlier = tmp_path / "var-lib-csi"
    (earlier / "volumes").mkdir(parents=True)
    monkeypatch.setattr(csi_cmd, "EARLIER_STATE_DIR", str(earlier))
    monkeypatch.chdir(tmp_path)
    assert config_from_args(build_parser().parse_args(["csi"])).state_dir == str(earlier)
    # Named explicitly, --state-dir wins.
    assert config_from_args(build_parser().parse_args(["csi", "--state-dir", "/x"])).state_dir == "/x"

