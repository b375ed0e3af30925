"""kubeconfig exec credential plugins (agent/apiclient/execcred.py) and the client's use of them, against the test API
server over real HTTP(S), with a real plugin: a small script each test writes, which logs what it was given."""

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.apiclient.execcred import CredentialError, ExecCredentials, interactive, parse_output
from agent.apiclient.client import APIError, Client, follow
from agent.apiclient.kubeconfig import ClusterConfig, ExecPlugin, default_kubeconfig, kubeconfig_config
from agent.apiclient.retry import Backoff
from fake_apiserver import FakeAPIServer
from k8s_builders import csidriver, pod, pv, pvc
from pki import make_pki, server_context
from tests.polling import terminate, wait_for

ROOT = Path(__file__).resolve().parents[3]
V1, V1BETA1 = "client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1"

PLUGIN = """#!{python}
import json, os, sys
log = os.environ["PLUGIN_LOG"]
with open(log, "a") as handle:
    handle.write(json.dumps({{"info": json.loads(os.environ["KUBERNETES_EXEC_INFO"]), "argv": sys.argv[1:],
                              "region": os.environ.get("REGION"), "stdin_tty": sys.stdin.isatty()}}) + "\\n")
runs = sum(1 for _ in open(log))
print("plugin ran", file=sys.stderr)
if os.environ.get("FAIL"):
    sys.exit(3)
status = {{"token": f"tok-{{runs}}"}}
if os.environ.get("CERT_DIR"):
    status = {{"clientCertificateData": open(os.environ["CERT_DIR"] + "/client.crt").read(),
               "clientKeyData": open(os.environ["CERT_DIR"] + "/client.key").read()}}
if os.environ.get("EXPIRES"):
    status["expirationTimestamp"] = os.environ["EXPIRES"]
version = os.environ.get("ANSWER_VERSION") or json.loads(os.environ["KUBERNETES_EXEC_INFO"])["apiVersion"]
print(json.dumps({{"apiVersion": version, "kind": "ExecCredential", "status": status}}))
"""


def plugin_script(tmp_path) -> str:
    path = tmp_path / "bin" / "get-token"
    path.parent.mkdir(exist_ok=True)
    path.write_text(PLUGIN.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def runs(tmp_path) -> list[dict]:
    log = tmp_path / "plugin.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def kubeconfig(tmp_path, server, version=V1, env=(), ca=None, name="kubeconfig", **exec_extra):
    stanza = {"command": "bin/get-token", "apiVersion": version, "args": ["token", "--cluster", "c1"],
              "env": [{"name": "PLUGIN_LOG", "value": str(tmp_path / "plugin.log")}, {"name": "REGION", "value": "eu"},
                      *({"name": k, "value": v} for k, v in env)], **exec_extra}
    if version == V1:
        stanza.setdefault("interactiveMode", "IfAvailable")
    cluster = {"server": server, **({"certificate-authority-data": base64.b64encode(ca).decode()} if ca else {})}
    path = tmp_path / name
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "c1", "user": "eks"}}],
        "clusters": [{"name": "c1", "cluster": cluster}], "users": [{"name": "eks", "user": {"exec": stanza}}]}))
    plugin_script(tmp_path)
    return str(path)


@pytest.fixture
def api():
    server = FakeAPIServer(tokens={"tok-1"}).start()
    yield server
    server.stop()


class Clock:
    def __init__(self, now=1_900_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def client_for(path, clock=None):
    config = kubeconfig_config(path)
    return Client(config, credentials=ExecCredentials(config, clock=clock or Clock(), stdin=open(os.devnull)))


@pytest.mark.parametrize("version", [V1, V1BETA1])
def test_plugin_token_authenticates_and_the_plugin_gets_kubectls_input(tmp_path, api, version):
    path = kubeconfig(tmp_path, api.url, version, provideClusterInfo=True)
    client = client_for(path)
    assert client.list("/api/v1/pods") == ([], "1")
    assert api.headers[-1]["Authorization"] == "Bearer tok-1"
    [run] = runs(tmp_path)
    assert run["info"] == {"apiVersion": version, "kind": "ExecCredential",
                           "spec": {"interactive": False, "cluster": {"server": api.url}}}
    assert run["argv"] == ["token", "--cluster", "c1"] and run["region"] == "eu" and run["stdin_tty"] is False


def test_without_provide_cluster_info_the_input_has_no_cluster(tmp_path, api):
    client_for(kubeconfig(tmp_path, api.url, V1BETA1)).get("/api/v1/pods")
    assert runs(tmp_path)[0]["info"]["spec"] == {"interactive": False}


def test_the_credential_is_kept_until_it_expires_then_renewed(tmp_path, api):
    api.tokens = {"tok-1", "tok-2"}
    clock = Clock(now=1_900_000_000.0)
    path = kubeconfig(tmp_path, api.url, env=[("EXPIRES", "2030-03-17T18:03:20Z")])  # 1_900_000_000 + 1000 s
    client = client_for(path, clock)
    for _ in range(3):
        client.get("/api/v1/pods")
    assert len(runs(tmp_path)) == 1
    clock.now += 999
    client.get("/api/v1/pods")
    assert len(runs(tmp_path)) == 1
    clock.now += 1  # the expiration time itself is past
    client.get("/api/v1/pods")
    assert len(runs(tmp_path)) == 2
    assert [h["Authorization"] for h in api.headers] == ["Bearer tok-1"] * 4 + ["Bearer tok-2"]


def test_a_credential_without_expiry_is_kept_until_the_server_refuses_it(tmp_path, api):
    api.tokens = {"tok-2"}  # the first token was revoked
    client = client_for(kubeconfig(tmp_path, api.url))
    assert client.get("/api/v1/pods")["kind"] == "List"
    assert len(runs(tmp_path)) == 2
    assert [h["Authorization"] for h in api.headers] == ["Bearer tok-1", "Bearer tok-2"]
    api.tokens = set()
    with pytest.raises(APIError, match="401 Unauthorized") as caught:
        client.get("/api/v1/pods")  # one renewal per refused request, then the 401 stands
    assert caught.value.status == 401 and len(runs(tmp_path)) == 3


def test_a_client_certificate_from_the_plugin_authenticates_over_tls(tmp_path):
    pki = make_pki(tmp_path)
    server = FakeAPIServer(tokens=set(), tls=server_context(pki, require_client_cert=False)).start()
    try:
        path = kubeconfig(tmp_path, server.url, V1BETA1, env=[("CERT_DIR", str(pki))],
                          ca=(pki / "ca.crt").read_bytes())
        client = client_for(path)
        assert client.get("/api/v1/pods")["kind"] == "List"
        client.get("/api/v1/pods")
        assert server.peers == ["auditor", "auditor"] and len(runs(tmp_path)) == 1
        assert "Authorization" not in server.headers[-1]
    finally:
        server.stop()


@pytest.mark.parametrize("env,message", [
    ([("FAIL", "1")], r"exec plugin '.*get-token' of user 'eks' exited with status 3"),
    ([("ANSWER_VERSION", V1BETA1)], "answered apiVersion 'client.authentication.k8s.io/v1beta1', the kubeconfig "
                                    "asks for 'client.authentication.k8s.io/v1'"),
    ([("EXPIRES", "tomorrow")], "expirationTimestamp 'tomorrow' is not an RFC 3339 time"),
])
def test_plugin_failures_are_one_line_errors(tmp_path, api, env, message):
    with pytest.raises(CredentialError, match=message):
        client_for(kubeconfig(tmp_path, api.url, env=env)).get("/api/v1/pods")


def test_a_missing_plugin_shows_the_install_hint(tmp_path, api):
    path = kubeconfig(tmp_path, api.url, installHint="install aws-cli: https://aws.amazon.com/cli/")
    (tmp_path / "bin" / "get-token").unlink()
    with pytest.raises(CredentialError, match="not found: install aws-cli"):
        client_for(path).get("/api/v1/pods")


PLUGIN_DEF = ExecPlugin(command="p", api_version=V1, interactive_mode="IfAvailable", user="u")


@pytest.mark.parametrize("status,message", [
    ({}, "neither a token nor a client certificate"),
    ({"clientCertificateData": "C"}, "come together"),
    ({"token": 5}, "token must be a string"),
    ({"token": "t", "expirationTimestamp": "2030-01-01T00:00:00"}, "has no time zone"),
])
def test_unusable_output_is_refused(status, message):
    with pytest.raises(CredentialError, match=message):
        parse_output(json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": status}), PLUGIN_DEF)
    with pytest.raises(CredentialError, match="not JSON"):
        parse_output("token", PLUGIN_DEF)
    with pytest.raises(CredentialError, match="without a status"):
        parse_output(json.dumps({"apiVersion": V1, "kind": "ExecCredential"}), PLUGIN_DEF)


def test_output_with_fractional_seconds_and_offsets():
    credential = parse_output(json.dumps({"apiVersion": V1, "kind": "ExecCredential", "status": {
        "token": "t", "expirationTimestamp": "2030-01-01T01:00:00.5+01:00"}}), PLUGIN_DEF)
    assert credential.expires == 1893456000.5 and credential.valid_at(1893456000.4)
    assert not credential.valid_at(1893456000.5)


@pytest.mark.parametrize("mode,terminal,expected", [
    ("Never", True, False), ("Never", False, False), ("IfAvailable", True, True), ("IfAvailable", False, False),
    ("Always", True, True)])
def test_interactive_follows_the_mode_and_the_terminal(mode, terminal, expected):
    plugin = ExecPlugin(command="p", api_version=V1, interactive_mode=mode)
    assert interactive(plugin, terminal) is expected


def test_always_interactive_without_a_terminal_is_an_error():
    with pytest.raises(CredentialError, match="needs a terminal"):
        interactive(ExecPlugin(command="p", api_version=V1, interactive_mode="Always"), False)


def test_a_token_file_is_read_again_once_a_minute(tmp_path, api):
    api.tokens = {"tok-1", "tok-2"}
    token_file = tmp_path / "token"
    token_file.write_text("tok-1\n")
    clock = Clock(now=100.0)
    client = Client(ClusterConfig(api.url, token_file=str(token_file)), clock=clock)
    client.get("/api/v1/pods")
    token_file.write_text("tok-2\n")  # rotated by the kubelet
    clock.now += 59
    client.get("/api/v1/pods")
    clock.now += 1
    client.get("/api/v1/pods")
    token_file.unlink()  # mid-rotation: the last good token is used
    clock.now += 60
    client.get("/api/v1/pods")
    assert [h["Authorization"] for h in api.headers] == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2",
                                                         "Bearer tok-2"]


class RecordingStop(threading.Event):
    """A stop event whose waits return at once and are recorded: the backoff schedule without sleeping."""

    def __init__(self, after: int):
        super().__init__()
        self.waits, self.after = [], after

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if len(self.waits) >= self.after:
            self.set()
        return self.is_set()


def test_follow_backs_off_exponentially_and_logs_once_per_streak(tmp_path, api, caplog):
    api.tokens = set()  # every list is refused
    stop = RecordingStop(after=7)
    client = Client(ClusterConfig(api.url, token="wrong"))
    errors = []
    with caplog.at_level(logging.INFO, logger="selinux-mount-agent.apiclient.client"):
        follow(client, "/api/v1/pods", lambda items: None, lambda e, o: None, stop, on_error=errors.append,
               backoff=Backoff(base=1.0, cap=10.0), fraction=lambda: 0.5)
    assert stop.waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert len(errors) == 7
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "401 Unauthorized; retrying with backoff" in warnings[0]


def test_follow_says_once_when_the_api_works_again(tmp_path, api, caplog):
    api.tokens = set()
    api.put(pod(name="a", node="n1"))
    stop = threading.Event()
    listed = []

    def failed(err):
        if len(failed.seen) == 2:
            api.tokens = {"good"}
        failed.seen.append(err)

    failed.seen = []
    client = Client(ClusterConfig(api.url, token="good"))
    thread = threading.Thread(target=follow, args=(client, "/api/v1/pods", listed.append, lambda e, o: None, stop),
                              kwargs={"on_error": failed, "fraction": lambda: 0.0, "watch_timeout": 2}, daemon=True)
    with caplog.at_level(logging.INFO, logger="selinux-mount-agent.apiclient.client"):
        thread.start()
        try:
            assert wait_for(lambda: any("working again" in r.getMessage() for r in caplog.records))
        finally:
            stop.set()
            thread.join(10)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[1] == "watch /api/v1/pods: working again after 3 failed attempts"
    assert [len(items) for items in listed] == [1]


def test_controller_with_an_exec_plugin_from_merged_kubeconfig_files(tmp_path, api):
    """The operator's case: KUBECONFIG names two files, the user (an exec plugin, as EKS writes it) in one, the
    cluster and the current context in the other; the controller authenticates and posts its Events."""
    for obj in (csidriver(), pv(modes=["ReadWriteMany"]), pvc(modes=["ReadWriteMany"]), pod(name="a"),
                pod(name="b", policy="Recursive")):
        api.put(obj)
    users = json.loads(Path(kubeconfig(tmp_path, api.url, V1)).read_text())
    users_file, clusters_file = tmp_path / "users.yaml", tmp_path / "clusters.yaml"
    users_file.write_text(json.dumps({"users": users["users"]}))
    clusters_file.write_text(json.dumps({"current-context": "c", "contexts": users["contexts"],
                                         "clusters": users["clusters"], "users": [{"name": "eks", "user": {}}]}))
    os.unlink(tmp_path / "kubeconfig")
    environ = {"KUBECONFIG": f"{users_file}:{clusters_file}", "HOME": str(tmp_path)}
    assert default_kubeconfig(environ).exec_plugin.user == "eks"  # the first file's user wins
    process = subprocess.Popen([sys.executable, "-m", "agent", "controller", "--metrics-address", ""],
                               env=dict(os.environ, PYTHONPATH=str(ROOT), **environ), cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(api.events) == 4, 20)
    finally:
        terminate(process)
    stderr = process.stderr.read()
    assert "plugin ran" in stderr and "Traceback" not in stderr
    assert {h.get("Authorization") for h in api.headers} == {"Bearer tok-1"}
    assert len(runs(tmp_path)) == 1


def test_with_token_and_token_file_the_file_wins_and_the_token_is_the_fallback(tmp_path, api):
    api.tokens = {"tok-1", "from-file"}
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    path = tmp_path / "config"
    path.write_text(json.dumps({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": api.url}}],
        "users": [{"name": "u", "user": {"token": "tok-1", "tokenFile": "token"}}]}))
    clock = Clock(now=0.0)
    client = Client(kubeconfig_config(str(path)), clock=clock)
    client.get("/api/v1/pods")
    token_file.unlink()
    clock.now += 60
    client.get("/api/v1/pods")  # the file is gone: the last token read from it stays
    assert [h["Authorization"] for h in api.headers] == ["Bearer from-file", "Bearer from-file"]
