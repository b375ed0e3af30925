"""agent/apiclient/client.py: kubeconfig certificates embedded as data never stay on disk."""

import base64
import http.server
import json
import os
import ssl
import stat
import tempfile
import threading

import pytest

from agent.errors import InvalidInput
from agent.apiclient.client import Client
from agent.apiclient.kubeconfig import kubeconfig_config
from pki import make_pki, server_context


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(tmp_path, server, ca=b"", cert=b"", key=b""):
    user = {"client-certificate-data": b64(cert), "client-key-data": b64(key)} if cert else {"token": "t"}
    cluster = {"server": server, **({"certificate-authority-data": b64(ca)} if ca else {})}
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": cluster}], "users": [{"name": "u", "user": user}]}))
    return str(path)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's directory, empty, to see what the client leaves there."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def test_client_key_is_written_0600_in_a_0700_directory_and_removed(tmp_path, private_tmp, monkeypatch):
    seen = {}

    def load_cert_chain(self, certfile, keyfile=None, password=None):
        for name, path in (("cert", certfile), ("key", keyfile)):
            with open(path, "rb") as handle:
                seen[name] = (stat.S_IMODE(os.stat(path).st_mode), handle.read())
        seen["dir"] = stat.S_IMODE(os.stat(os.path.dirname(certfile)).st_mode)
        seen["parent"] = os.path.dirname(os.path.dirname(certfile))

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_cert_chain)
    config = kubeconfig_config(write_kubeconfig(tmp_path, "https://k.example:6443", cert=b"CERT", key=b"KEY"))
    assert config.cert_file is None and config.cert_data == b"CERT" and "KEY" not in repr(config)
    assert list(private_tmp.iterdir()) == []  # reading the kubeconfig writes nothing
    Client(config)
    assert seen == {"cert": (0o600, b"CERT"), "key": (0o600, b"KEY"), "dir": 0o700, "parent": str(private_tmp)}
    assert list(private_tmp.iterdir()) == []


def test_directory_is_removed_when_loading_fails(tmp_path, private_tmp):
    config = kubeconfig_config(write_kubeconfig(tmp_path, "https://k.example:6443", cert=b"not a certificate",
                                                key=b"not a key"))
    with pytest.raises(InvalidInput, match="cannot load the TLS certificates"):
        Client(config)
    assert list(private_tmp.iterdir()) == []


def test_data_that_is_not_base64_is_bad_input(tmp_path):
    path = write_kubeconfig(tmp_path, "https://k.example:6443")
    document = json.loads(open(path).read())
    document["clusters"][0]["cluster"]["certificate-authority-data"] = "%%% not base64"
    open(path, "w").write(json.dumps(document))
    with pytest.raises(InvalidInput, match="certificate-authority-data is not base64"):
        kubeconfig_config(path)


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def test_embedded_client_certificate_authenticates_over_tls(tmp_path, private_tmp, pki):
    subjects = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            subjects.append(dict(item[0] for item in self.connection.getpeercert()["subject"])["commonName"])
            body = json.dumps({"kind": "APIVersions"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # No client certificate, no connection.
    server.socket = server_context(pki, require_client_cert=True).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = write_kubeconfig(tmp_path, f"https://127.0.0.1:{server.server_port}", ca=(pki / "ca.crt").read_bytes(),
                                cert=(pki / "client.crt").read_bytes(), key=(pki / "client.key").read_bytes())
        client = Client(kubeconfig_config(path))
        assert list(private_tmp.iterdir()) == []  # gone before the first request
        assert client.get("/api") == {"kind": "APIVersions"}
        assert subjects == ["auditor"]
    finally:
        server.shutdown()
        server.server_close()
