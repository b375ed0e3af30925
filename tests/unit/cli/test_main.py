"""The command line's entry point: one subcommand imported per run, the same output and exit codes as a process
as in process, help that lists every subcommand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main as cli
from test_audit_cmd import conflicting

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("argv, module", [
    (["audit", "-f", "x"], "agent.cli.audit_cmd"),
    (["explain", "-f", "x"], "agent.cli.explain_cmd"),
    (["relabel", "/x", "--label", "l"], "agent.cli.relabel_cmd"),
    (["run"], "agent.cli.run_cmd"),
    (["--help"], None),
    (["--version"], None),
    (["-h", "audit"], None),
    (["no-such-command"], None),
    ([], None),
])
def test_module_of_the_named_subcommand(argv, module):
    assert cli._module_of(argv) == module


def test_parser_for_one_subcommand_registers_only_it():
    parser = cli.build_parser(["audit", "-f", "dump.json"])
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert list(choices) == ["audit"]
    full = cli.build_parser()
    names = set(next(a for a in full._actions if a.dest == "command").choices)
    assert {"run", "csi", "explain", "audit", "controller", "relabel", "avc", "policy"} <= names


def test_help_lists_every_subcommand():
    done = _as_process("--help")
    assert done.returncode == 0
    for name in ("run", "csi", "explain", "audit", "controller", "relabel", "avc", "policy"):
        assert name in done.stdout.decode()


def test_unknown_subcommand_lists_them_all(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err and "audit" in err and "relabel" in err


def _as_process(*argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "agent", *argv], cwd=REPO, capture_output=True, **kwargs)


def test_as_a_process_same_output_and_exit_code(capsys, tmp_path):
    path = conflicting(tmp_path)
    assert cli.main(["audit", "-f", path, "-o", "json"]) == 1
    in_process = capsys.readouterr().out
    done = _as_process("audit", "-f", path, "-o", "json")
    assert done.returncode == 1, done.stderr
    assert done.stdout.decode() == in_process
    assert done.stderr == b""
    done = _as_process("audit", "-f", path, "-o", "json", "--k8s-version", "1.36")
    assert done.returncode == 0 and json.loads(done.stdout)["conflicts"]


def test_into_a_closed_pipe_no_traceback(tmp_path):
    path = conflicting(tmp_path)
    reader = subprocess.Popen([sys.executable, "-m", "agent", "audit", "-f", path], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()
    _, err = reader.communicate(timeout=60)
    assert b"Traceback" not in err


def test_bad_input_as_a_process_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    done = _as_process("audit", "-f", str(bad))
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and "audit: error:" in done.stderr.decode()


def test_explain_audit_and_controller_default_to_the_same_kubernetes_version():
    from agent.cli.main import build_parser

    versions = {}
    for argv in (["explain", "-f", "x"], ["audit", "-f", "x"], ["controller"]):
        versions[argv[0]] = build_parser(argv).parse_args(argv).k8s_version
    assert set(versions.values()) == {"1.37"}, versions
