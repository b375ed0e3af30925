"""`selinux-mount-agent policy generate|install` and `avc watch`: exit codes, paths printed, filters."""

import json
import shutil

import pytest

from agent.cli.main import main

SCON = "system_u:system_r:container_t:s0:{level}"


def line(serial, perms, target, level="c1,c2", tclass="file", pid=999999):
    return (f"type=AVC msg=audit(1700000000.{serial:03d}:{serial}): avc:  denied  {{ {perms} }} for  pid={pid} "
            f'comm="app" name="f" scontext={SCON.format(level=level)} tcontext=system_u:object_r:{target}:s0 '
            f"tclass={tclass} permissive=0")


LOG = [
    line(1, "read open", "user_home_t"),
    line(2, "getattr", "user_home_t"),
    line(3, "read", "shadow_t"),
    line(4, "search", "var_lib_t", level="c5,c6", tclass="dir"),
    "garbage line",
]
PODS = [
    {"namespace": "shop", "name": "web-1", "uid": "11111111-1111-1111-1111-111111111111", "level": "s0:c1,c2",
     "workload": "web"},
    {"namespace": "team", "name": "db-0", "uid": "22222222-2222-2222-2222-222222222222", "level": "s0:c5,c6",
     "workload": "db"},
]


@pytest.fixture
def files(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("\n".join(LOG) + "\n")
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps(PODS))
    return log, pods


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_te_and_prints_its_path(capsys, tmp_path, files):
    log, _ = files
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--module", "webapp",
                         "--output-dir", str(out_dir), "--proc-root", str(tmp_path / "proc"))
    assert code == 0
    assert out.splitlines() == [str(out_dir / "webapp.te")]
    te = (out_dir / "webapp.te").read_text()
    assert te.startswith("module webapp 1.0;")
    assert "allow container_t user_home_t:file { getattr open read };" in te
    assert "allow container_t var_lib_t:dir search;" in te
    assert "shadow_t" not in te
    assert "refused: allow container_t shadow_t:file read (target type shadow_t is on the denylist)" in err
    assert "1 unreadable line" in err


@pytest.mark.skipif(not (shutil.which("checkmodule") and shutil.which("semodule_package")),
                    reason="checkmodule and semodule_package are not installed")
def test_generate_both_and_build(capsys, tmp_path, files):
    log, _ = files
    code, out, _ = run(capsys, "policy", "generate", "--from", str(log), "--module", "webapp", "--format", "both",
                       "--build", "--output-dir", str(tmp_path))
    assert code == 0
    paths = out.splitlines()
    assert paths == [str(tmp_path / f"webapp.{ext}") for ext in ("te", "cil", "pp")]
    assert all((tmp_path / f"webapp.{ext}").exists() for ext in ("te", "cil", "pp"))
    assert (tmp_path / "webapp.cil").read_text().count("(block webapp") == 1


@pytest.mark.skipif(not (shutil.which("checkmodule") and shutil.which("semodule_package")),
                    reason="checkmodule and semodule_package are not installed")
def test_build_with_a_relative_output_dir(capsys, tmp_path, files, monkeypatch):
    # The tools run inside the output directory, so a relative one must not be taken relative to itself.
    log, _ = files
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--module", "webapp", "--build",
                         "--output-dir", "out")
    assert code == 0, err
    assert out.splitlines() == ["out/webapp.te", "out/webapp.pp"]
    assert (tmp_path / "out" / "webapp.pp").stat().st_size > 0
    assert not (tmp_path / "out" / "webapp.mod").exists()


def test_namespace_and_workload_filters_use_the_pod_map(capsys, tmp_path, files):
    log, pods = files
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--module", "db", "--namespace", "team",
                         "--pod-map", str(pods), "--output-dir", str(tmp_path), "--proc-root", str(tmp_path))
    assert code == 0
    te = (tmp_path / "db.te").read_text()
    assert "var_lib_t" in te and "user_home_t" not in te
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--module", "web", "--workload", "web",
                         "--pod-map", str(pods), "--output-dir", str(tmp_path), "--proc-root", str(tmp_path))
    assert code == 0 and "user_home_t" in (tmp_path / "web.te").read_text()


def test_filter_without_attribution_leaves_nothing(capsys, tmp_path, files):
    log, _ = files
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--module", "x", "--namespace", "shop",
                         "--output-dir", str(tmp_path), "--proc-root", str(tmp_path))
    assert code == 1 and out == ""
    assert "could not be attributed" in err and "nothing written" in err
    assert not (tmp_path / "x.te").exists()


@pytest.mark.parametrize("argv,message", [
    (["--module", "bad-name"], "invalid module name"),
    (["--module", "ok", "--format", "cil", "--build"], "--build compiles the .te"),
    (["--module", "require"], "keyword of the SELinux policy language"),
    (["--module", "container"], "taken by a module of the system policy"),
])
def test_bad_input_exits_2(capsys, tmp_path, files, argv, message):
    log, _ = files
    code, out, err = run(capsys, "policy", "generate", "--from", str(log), "--output-dir", str(tmp_path), *argv)
    assert code == 2 and message in err and out == ""


def test_missing_log_and_bad_pod_map_exit_2(capsys, tmp_path, files):
    _, pods = files
    code, _, err = run(capsys, "policy", "generate", "--from", str(tmp_path / "nope"), "--module", "m")
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "policy", "generate", "--from", str(pods), "--module", "m", "--pod-map", str(bad))
    assert code == 2 and "not JSON" in err


def test_install_without_selinux(capsys, tmp_path):
    if shutil.os.path.exists("/sys/fs/selinux/enforce"):
        pytest.skip("this host has SELinux; the refusal path is for hosts without it")
    module = tmp_path / "webapp.pp"
    module.write_bytes(b"x")
    code, out, err = run(capsys, "policy", "install", str(module), "--priority", "350")
    assert code == 2 and "SELinux is not enabled on this host" in err and out == ""


def test_avc_watch_file_json_is_bounded(capsys, tmp_path, files):
    log, pods = files
    code, out, err = run(capsys, "avc", "watch", "--source", f"file:{log}", "--from-beginning", "-o", "json",
                         "--count", "2", "--pod-map", str(pods), "--proc-root", str(tmp_path))
    assert code == 0
    records = [json.loads(text) for text in out.splitlines()]
    assert len(records) == 2
    assert records[0]["permissions"] == ["read", "open"]
    assert records[0]["attribution"] == {"method": "mcs", "namespace": "shop", "pod": "web-1",
                                         "pod_uid": "11111111-1111-1111-1111-111111111111", "workload": "web"}


def test_avc_watch_text(capsys, tmp_path, files):
    log, _ = files
    code, out, _ = run(capsys, "avc", "watch", "--source", f"file:{log}", "--from-beginning", "--count", "1",
                       "--proc-root", str(tmp_path))
    assert code == 0
    assert out.strip() == ("denied enforcing { read open } container_t -> user_home_t:file pid=999999 comm=app "
                           "f unattributed (pid_gone)")


def test_avc_watch_bad_source(capsys):
    code, _, err = run(capsys, "avc", "watch", "--source", "tcp:1")
    assert code == 2 and "unknown source" in err


def test_avc_watch_netlink_duration(capsys):
    code, out, err = run(capsys, "avc", "watch", "--source", "netlink", "--duration", "0.3")
    # 0 when the audit group is readable here, 2 with the reason when it is not.
    assert code in (0, 2)
    if code == 2:
        assert "audit" in err and "listening" not in err
    else:
        lines = err.splitlines()
        assert lines[0].startswith("avc watch: listening on the kernel audit multicast group")
        assert lines[-1].endswith("stopped: 0.3 s passed (--duration)")


def test_avc_watch_says_it_listens_and_sums_up_even_when_nothing_came(capsys, tmp_path):
    """`--duration 2` on a quiet source printed nothing at all: now a line when it starts and one when it ends."""
    log = tmp_path / "audit.log"
    log.write_text("")
    code, out, err = run(capsys, "avc", "watch", "--source", f"file:{log}", "--duration", "0.3")
    assert code == 0 and out == ""
    first, last = err.splitlines()
    assert first == (f"avc watch: listening on {log} from its end; stops after --count 100 or --duration 0.3 s "
                     "(Ctrl-C ends it)")
    assert last.startswith("avc watch: 0 denials in ") and last.endswith("; stopped: 0.3 s passed (--duration)")


def test_avc_watch_summary_counts_what_it_saw(capsys, tmp_path, files):
    log, pods = files
    code, out, err = run(capsys, "avc", "watch", "--source", f"file:{log}", "--from-beginning", "--count", "3",
                         "--pod-map", str(pods), "--proc-root", str(tmp_path))
    assert code == 0 and len(out.splitlines()) == 3
    summary = err.splitlines()[-1]
    assert summary.startswith("avc watch: 3 denials in ")
    assert summary.endswith(" s (3 attributed to pods, 0 not); stopped: 3 shown (--count)")


@pytest.mark.parametrize("duration", ["0", "-1", "nan"])
def test_avc_watch_refuses_a_duration_that_is_not_positive(capsys, duration):
    code, out, err = run(capsys, "avc", "watch", "--source", "file:/nonexistent", "--duration", duration)
    assert code == 2 and out == "" and "--duration must be a positive number of seconds" in err


def test_generate_live_collects_from_the_audit_group(capsys, tmp_path):
    """--live over the real audit multicast group: a USER_AVC denial sent through the kernel while it
    collects becomes a rule. Needs CAP_AUDIT_READ and CAP_AUDIT_WRITE, not SELinux."""
    import os
    import threading

    from tests.unit.avc.test_sources import inject_user_avc, open_or_skip

    open_or_skip().close()
    text = ('avc:  denied  { read } for pid=1 comm="livegen" scontext=system_u:system_r:container_t:s0:c1,c2 '
            'tcontext=system_u:object_r:user_home_t:s0 tclass=file permissive=0')
    inject_user_avc(text)  # skips here when the kernel refuses records from user space
    done = threading.Event()

    def keep_sending():
        while not done.wait(0.1):
            inject_user_avc(text)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        code, out, err = run(capsys, "policy", "generate", "--live", "--duration", "1", "--module",
                             f"live{os.getpid()}", "--output-dir", str(tmp_path))
    finally:
        done.set()
        sender.join(5)
    assert code == 0, err
    (te,) = out.splitlines()
    assert "allow container_t user_home_t:file read;" in open(te).read()
