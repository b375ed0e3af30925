"""A small Kubernetes API client: list, watch and create, over HTTPS with the standard library.

Enough for the agent's controllers (Pods, PVCs, PVs, CSIDrivers; Events) without a large client library (the
reasons are in docs/kubernetes-api.md). Where the configuration comes from is agent/apiclient/kubeconfig.py; exec
credential plugins run in agent/apiclient/execcred.py. Bearer tokens are read per request: a token file is read again
every minute (projected service account tokens rotate), an exec credential is renewed when it expires or the
server answers 401 to it.

Certificates and keys embedded in a kubeconfig (`*-data`) or printed by an exec plugin stay in memory. The CA is
handed to ssl as data; ssl reads a client certificate and key only from files, so those are written to a
private directory (0700, files 0600) for the one call that loads them and removed right after: no client key is
left on disk.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import shutil
import ssl
import tempfile
import threading
import time
import urllib.parse

from agent.errors import AgentError, InvalidInput
from agent.apiclient.kubeconfig import ClusterConfig
from agent.apiclient.retry import Backoff, FailureStreak

log = logging.getLogger("selinux-mount-agent.apiclient.client")
TOKEN_FILE_REREAD_SECONDS = 60.0  # client-go's cachingTokenSource re-reads a token file each minute


class APIError(AgentError):
    """The API server refused a request or could not be reached."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


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


class Client:
    """One connection per request; watches keep theirs open while they are read."""

    def __init__(self, config: ClusterConfig, timeout: float = 30.0, clock=time.monotonic, credentials=None):
        self.config = config
        self.timeout = timeout
        self.clock = clock
        parsed = urllib.parse.urlsplit(config.server)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidInput(f"API server address {config.server!r} is not an http(s) URL")
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._ssl = self._tls_context(config.cert_data or config.cert_file, config.key_data or config.key_file)
        self._exec_ssl: tuple | None = None  # (credential, context) for an exec plugin's client certificate
        self._token_read: tuple[float, str | None] | None = None
        self._lock = threading.Lock()
        if credentials is None and config.exec_plugin is not None:
            from agent.apiclient.execcred import ExecCredentials
            credentials = ExecCredentials(config)
        self.credentials = credentials

    def _tls_context(self, cert, key):
        if self._scheme != "https":
            return None
        config = self.config
        try:
            if config.ca_data:
                context = ssl.create_default_context(cadata=config.ca_data.decode("ascii", "replace"))
            else:
                context = ssl.create_default_context(cafile=config.ca_file)
            if config.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if cert:
                load_client_cert(context, cert, key)
        except (ssl.SSLError, OSError) as err:
            raise InvalidInput(f"cannot load the TLS certificates for {config.server}: {err}") from None
        return context

    def _file_token(self) -> str | None:
        """The token file's content, read again once a minute; the last good one while it cannot be read."""
        now = self.clock()
        with self._lock:
            if self._token_read is not None and now - self._token_read[0] < TOKEN_FILE_REREAD_SECONDS:
                return self._token_read[1]
            previous = self._token_read[1] if self._token_read else self.config.token
            try:
                with open(self.config.token_file, encoding="utf-8") as handle:
                    token = handle.read().strip() or previous
            except OSError as err:
                if previous is None:
                    raise APIError(f"cannot read the token file {self.config.token_file}: {err.strerror}") from None
                token = previous
            self._token_read = (now, token)
            return token

    def _authentication(self):
        """(bearer token or None, ssl context, exec credential or None) for the next request."""
        if self.credentials is not None:
            credential = self.credentials.current()
            context = self._ssl
            if credential.cert_data:
                with self._lock:
                    if self._exec_ssl is None or self._exec_ssl[0] is not credential:
                        self._exec_ssl = (credential, self._tls_context(credential.cert_data, credential.key_data))
                    context = self._exec_ssl[1]
            return credential.token, context, credential
        if self.config.token_file:
            return self._file_token(), self._ssl, None
        return self.config.token, self._ssl, None

    def _connection(self, timeout: float | None, context):
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        connection, response, credential = self._send(method, path, body, timeout)
        if response.status == 401 and (credential is not None or self.config.token_file):
            # A renewed credential may work where the old one expired early: ask for a new one, try once more.
            response.read()
            connection.close()
            if credential is not None:
                self.credentials.refused(credential)
            else:
                with self._lock:
                    self._token_read = None
            connection, response, _ = self._send(method, path, body, timeout)
        if response.status >= 400:
            text = response.read().decode(errors="replace")
            connection.close()
            try:
                message = json.loads(text).get("message", text)
            except (ValueError, AttributeError):
                message = text
            raise APIError(f"{method} {path}: {response.status} {message.strip()[:300]}", response.status)
        return connection, response

    def _send(self, method: str, path: str, body: dict | None, timeout: float | None):
        token, context, credential = self._authentication()
        connection = self._connection(self.timeout if timeout is None else timeout, context)
        headers = {"Accept": "application/json", "User-Agent": "selinux-mount-agent"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
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
        return connection, response, credential

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
        """Start a watch; once the server has accepted it (so a caller knows the API answers before the first
        event arrives), return an iterator of (type, object) events that ends when the server ends the watch.
        A 410 Gone raises APIError with status 410: the caller lists again."""
        query = {**(params or {}), "watch": "1", "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(timeout_seconds), "resourceVersion": resource_version}
        connection, response = self._request("GET", f"{path}?{urllib.parse.urlencode(query)}",
                                             timeout=timeout_seconds + 30)
        return self._events(path, connection, response)

    @staticmethod
    def _events(path, connection, response):
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
           watch_timeout: int = 300, streak: FailureStreak | None = None, on_error=None,
           backoff: Backoff = Backoff(), fraction=random.random) -> None:
    """list+watch one collection until `stop` (a threading.Event) is set: `on_list(items)` after every (re)list,
    `on_event(type, object)` for each ADDED/MODIFIED/DELETED. An expired watch (410 Gone) lists again at once.
    Other failures call `on_error(exception)` and retry after `backoff.delay(attempt, fraction())`, attempt
    counting the failures since a watch was last accepted, so a flaky API server or a malformed object never ends
    the loop and a long outage is retried about once a minute. `streak` (shared by the watches of one process)
    logs one line when failures start and one when they end."""
    streak = streak if streak is not None else FailureStreak(f"watch {path}")
    attempt = 0
    while not stop.is_set():
        try:
            items, version = client.list(path, params)
            on_list(items)
            while not stop.is_set():
                events = client.watch(path, version, watch_timeout, params)
                attempt = 0
                _log(streak.succeeded(path), logging.INFO)
                for event, obj in events:
                    if stop.is_set():
                        return
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if event in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(event, obj)
        except AgentError as err:  # the API's answer, an exec plugin's failure, its unusable certificate
            if getattr(err, "status", 0) == 410:
                continue
            attempt += 1
            _failed(streak, path, err, on_error, attempt)
            stop.wait(backoff.delay(attempt, fraction()))
        except Exception as err:  # noqa: BLE001 - reported through the streak; the loop goes on
            attempt += 1
            _failed(streak, path, err, on_error, attempt, unexpected=True)
            stop.wait(backoff.delay(attempt, fraction()))


def _log(line: str | None, level: int, exc_info=None) -> None:
    if line is not None:
        log.log(level, "%s", line, exc_info=exc_info)


def _failed(streak: FailureStreak, path: str, err: Exception, on_error, attempt: int, unexpected=False) -> None:
    line = streak.failed(path, f"{path}: {err}" if unexpected else err)
    _log(line, logging.ERROR if unexpected else logging.WARNING, exc_info=err if unexpected else None)
    if unexpected and line is None:
        log.debug("%s: attempt %d failed: %r", path, attempt, err)
    if on_error is not None:
        on_error(err)
