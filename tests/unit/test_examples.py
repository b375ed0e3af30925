"""The files under examples/ work with the commands the README shows them with."""

import json
from pathlib import Path

from agent.cli.main import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
README = (EXAMPLES.parent / "README.md").read_text()


def test_avc_watch_reads_the_sample_audit_log(capsys, tmp_path):
    code = main(["avc", "watch", "--source", f"file:{EXAMPLES / 'audit.log'}", "--from-beginning", "--count", "7",
                 "--pod-map", str(EXAMPLES / "pods.json"), "--proc-root", str(tmp_path), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 0
    denials = [json.loads(line) for line in out.splitlines()]
    pods = [(d["attribution"].get("namespace"), d["attribution"].get("pod")) for d in denials]
    assert pods == [("shop", "web-7d9f8b6c4-x2x9q")] * 3 + [("billing", "db-0")] * 3 + [(None, None)]
    assert "7 denials" in err and "(6 attributed to pods, 1 not)" in err


def test_policy_generate_turns_the_sample_into_a_module_per_workload(capsys, tmp_path):
    code = main(["policy", "generate", "--from", str(EXAMPLES / "audit.log"), "--module", "shop_web",
                 "--namespace", "shop", "--pod-map", str(EXAMPLES / "pods.json"), "--output-dir", str(tmp_path),
                 "--proc-root", str(tmp_path), "--format", "both"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [str(tmp_path / "shop_web.te"), str(tmp_path / "shop_web.cil")]
    te = (tmp_path / "shop_web.te").read_text()
    assert "allow container_t var_lib_t:file { open read };" in te
    assert "allow container_t var_lib_t:dir getattr;" in te
    assert "container_file_t" not in te and "sshd_t" not in te  # other pods' and the host's denials left out
    assert "3 selected" in err


def test_readme_shows_the_sample_commands():
    assert "examples/audit.log" in README and "examples/pods.json" in README
