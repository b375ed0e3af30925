"""A small Kubernetes API client: list, watch and create, over HTTPS with the standard library.

Enough for the agent's controllers (Pods, PVCs, PVs, CSIDrivers; Events) without a large client library.
Configuration comes from the pod's service account (in-cluster) or from a kubeconfig file (token, basic client
certificate and CA; exec credential plugins are not supported and say so).

Certificates and keys embedded in a kubeconfig (`*-data`) stay in memory. The CA is handed to ssl as data; ssl
reads a client certificate and key only from files, so those are written to a private directory (0700, files
0600) for the one call that loads them and removed right after: no client key is left on disk.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import binascii
import shutil
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass, field

import yaml

from agent.errors import AgentError, InvalidInput

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class APIError(AgentError):
    """The API server refused a request or could not be reached."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ClusterConfig:
    server: str  # https://host:port or http://host:port
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    # Embedded (kubeconfig `*-data`, decoded) instead of a file; each wins over its file when set.
    ca_data: bytes | None = field(default=None, repr=False)
    cert_data: bytes | None = field(default=None, repr=False)
    key_data: bytes | None = field(default=None, repr=False)


def in_cluster_config(root: str = SERVICE_ACCOUNT) -> ClusterConfig:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise InvalidInput("not running in a cluster: KUBERNETES_SERVICE_HOST is not set (use --kubeconfig)")
    try:
        with open(os.path.join(root, "token"), encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as err:
        raise InvalidInput(f"cannot read the service account token: {err.strerror}") from None
    if ":" in host:
        host = f"[{host}]"
    return ClusterConfig(f"https://{host}:{port}", token=token, ca_file=os.path.join(root, "ca.crt"))


def _decode(data_b64, path: str, field_name: str) -> bytes | None:
    """A kubeconfig `*-data` value: base64 of PEM."""
    if not data_b64:
        return None
    try:
        return base64.b64decode(data_b64, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidInput(f"kubeconfig {path}: {field_name} is not base64") from None


def load_client_cert(context: ssl.SSLContext, cert: bytes | str, key: bytes | str | None) -> None:
    """`context.load_cert_chain` for a certificate and key each given as PEM data (bytes) or a file (str). Data
    is written to a private directory that is removed as soon as ssl has read it."""
    if isinstance(cert, str) and (key is None or isinstance(key, str)):
        context.load_cert_chain(cert, key)
        return
    directory = tempfile.mkdtemp(prefix="selinux-mount-agent-tls-")  # mode 0700
    try:
        def place(data, name):
            if not isinstance(data, bytes):
                return data
            path = os.path.join(directory, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            return path

        context.load_cert_chain(place(cert, "client.crt"), place(key, "client.key"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def kubeconfig_config(path: str, context: str | None = None) -> ClusterConfig:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InvalidInput(f"cannot read kubeconfig {path}: {err}") from None
    name = context or document.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in document.get("contexts") or ()}
    if name not in contexts:
        raise InvalidInput(f"kubeconfig {path}: context {name!r} not found")
    ctx = contexts[name]
    clusters = {c.get("name"): c.get("cluster") or {} for c in document.get("clusters") or ()}
    users = {u.get("name"): u.get("user") or {} for u in document.get("users") or ()}
    cluster, user = clusters.get(ctx.get("cluster")), users.get(ctx.get("user"), {})
    if cluster is None or not cluster.get("server"):
        raise InvalidInput(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise InvalidInput(f"kubeconfig {path}: user {ctx.get('user')!r} uses a credential plugin, which is not "
                           "supported; use a token or a client certificate")
    base = os.path.dirname(os.path.abspath(path))

    def relative(value):
        return os.path.join(base, value) if value and not os.path.isabs(value) else value

    return ClusterConfig(
        server=cluster["server"].rstrip("/"),
        token=user.get("token"),
        ca_file=relative(cluster.get("certificate-authority")),
        cert_file=relative(user.get("client-certificate")),
        key_file=relative(user.get("client-key")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        ca_data=_decode(cluster.get("certificate-authority-data"), path, "certificate-authority-data"),
        cert_data=_decode(user.get("client-certificate-data"), path, "client-certificate-data"),
        key_data=_decode(user.get("client-key-data"), path, "client-key-data"),
    )


KUBE_API_CHOICES = "auto|off|in-cluster|kubeconfig:PATH"


def config_for(spec: str, environ=None) -> ClusterConfig | None:
    """Where the node agent finds the API: `auto` (in-cluster when KUBERNETES_SERVICE_HOST is set, else none),
    `off`, `in-cluster`, or `kubeconfig:PATH`. None means: work without an API."""
    environ = os.environ if environ is None else environ
    if spec == "off" or (spec == "auto" and not environ.get("KUBERNETES_SERVICE_HOST")):
        return None
    if spec in ("auto", "in-cluster"):
        return in_cluster_config()
    if spec.startswith("kubeconfig:") and spec[len("kubeconfig:"):]:
        return kubeconfig_config(spec[len("kubeconfig:"):])
    raise InvalidInput(f"kube_api must be {KUBE_API_CHOICES}, not {spec!r}")


class Client:
    """One connection per request; watches keep theirs open while they are read."""

    def __init__(self, config: ClusterConfig, timeout: float = 30.0):
        self.config = config
        self.timeout = timeout
        parsed = urllib.parse.urlsplit(config.server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInput(f"API server address {config.server!r} is not an http(s) URL")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._ssl = None
        if self._scheme == "https":
            try:
                if config.ca_data:
                    context = ssl.create_default_context(cadata=config.ca_data.decode("ascii", "replace"))
                else:
                    context = ssl.create_default_context(cafile=config.ca_file)
                if config.insecure:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                cert = config.cert_data or config.cert_file
                if cert:
                    load_client_cert(context, cert, config.key_data or config.key_file)
            except (ssl.SSLError, OSError) as err:
                raise InvalidInput(f"cannot load the TLS certificates for {config.server}: {err}") from None
            self._ssl = context

    def _connection(self, timeout: float | None):
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        connection = self._connection(self.timeout if timeout is None else timeout)
        headers = {"Accept": "application/json", "User-Agent": "selinux-mount-agent"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=payload, headers=headers)
            response = connection.getresponse()
        except OSError as err:
            connection.close()
            raise APIError(f"{method} {path}: cannot reach the API server {self.config.server}: {err}") from None
        if response.status >= 400:
            text = response.read().decode(errors="replace")
            connection.close()
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise APIError(f"{method} {path}: {response.status} {message.strip()[:300]}", response.status)
        return connection, response

    def get(self, path: str) -> dict:
        connection, response = self._request("GET", path)
        try:
            return json.loads(response.read())
        finally:
            connection.close()

    def create(self, path: str, body: dict) -> dict:
        connection, response = self._request("POST", path, body)
        try:
            return json.loads(response.read())
        finally:
            connection.close()

    def list(self, path: str, params: dict | None = None) -> tuple[list[dict], str]:
        """All items of a collection (following `continue`), and the resourceVersion to watch from. `params`:
        extra query parameters such as a fieldSelector."""
        items, token = [], ""
        while True:
            query = {**(params or {}), "limit": "500", **({"continue": token} if token else {})}
            page = self.get(f"{path}?{urllib.parse.urlencode(query)}")
            items.extend(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items, (page.get("metadata") or {}).get("resourceVersion", "")

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300, params: dict | None = None):
        """Yield (type, object) watch events until the server ends the watch. A 410 Gone raises APIError with
        status 410: the caller lists again."""
        query = {**(params or {}), "watch": "1", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds), "resourceVersion": resource_version}
        connection, response = self._request("GET", f"{path}?{urllib.parse.urlencode(query)}",
                                             timeout=timeout_seconds + 30)
        try:
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                if kind == "ERROR":
                    status = event.get("object") or {}
                    raise APIError(f"watch {path}: {status.get('message', 'error')}", status.get("code", 0))
                yield kind, event.get("object") or {}
        finally:
            connection.close()


def follow(client: Client, path: str, on_list, on_event, stop, *, params: dict | None = None,
           watch_timeout: int = 300, on_error=None, retry_after: float = 2.0) -> None:
    """list+watch one collection until `stop` (a threading.Event) is set: `on_list(items)` after every (re)list,
    `on_event(type, object)` for each ADDED/MODIFIED/DELETED. An expired watch (410 Gone) lists again at once;
    other failures call `on_error(exception)` and retry after `retry_after` seconds, so a flaky API server or a
    malformed object never ends the loop."""
    while not stop.is_set():
        try:
            items, version = client.list(path, params)
            on_list(items)
            while not stop.is_set():
                for event, obj in client.watch(path, version, watch_timeout, params):
                    if stop.is_set():
                        return
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if event in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event, obj)
        except APIError as err:
            if err.status == 410:
                continue
            if on_error is not None:
                on_error(err)
            stop.wait(retry_after)
        except Exception as err:  # noqa: BLE001 - reported through on_error; the loop goes on
            if on_error is not None:
                on_error(err)
            stop.wait(retry_after)
