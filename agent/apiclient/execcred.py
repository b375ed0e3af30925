"""kubeconfig `exec` credential plugins (client.authentication.k8s.io v1 and v1beta1), as kubectl runs them.

The plugin gets the ExecCredential input in KUBERNETES_EXEC_INFO (with the cluster when `provideClusterInfo`),
the agent's environment plus the stanza's `env`, the terminal as stdin only when it may be interactive, and
our stderr for its messages. It prints an ExecCredential whose status holds a bearer token or a client
certificate and key, and optionally an expirationTimestamp. The credential is kept until that time passes (for
ever when there is none) or until the API server answers 401 to it, then the plugin runs again.

`exec_input` and `parse_output` are pure; `ExecCredentials` runs the command.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime

from agent.apiclient.kubeconfig import ClusterConfig, ExecPlugin
from agent.errors import AgentError

# A plugin that may not talk to a person gets this long; one that may (a browser login) is not cut short.
NON_INTERACTIVE_TIMEOUT = 120.0


class CredentialError(AgentError):
    """The exec plugin could not be run or printed no usable credential."""

    code = "UNAUTHENTICATED"


@dataclass(frozen=True)
class Credential:
    token: str | None = field(default=None, repr=False)
    cert_data: bytes | None = field(default=None, repr=False)
    key_data: bytes | None = field(default=None, repr=False)
    expires: float | None = None  # seconds since the epoch

    def valid_at(self, now: float) -> bool:
        return self.expires is None or now < self.expires


def interactive(plugin: ExecPlugin, stdin_is_terminal: bool) -> bool:
    """client-go's rule: never with `Never`; otherwise when stdin is a terminal. `Always` without one fails."""
    if plugin.interactive_mode == "Never":
        return False
    if plugin.interactive_mode == "Always" and not stdin_is_terminal:
        raise CredentialError(f"exec plugin {plugin.command!r} of user {plugin.user!r} needs a terminal "
                              "(interactiveMode: Always) and stdin is not one")
    return stdin_is_terminal


def exec_input(plugin: ExecPlugin, config: ClusterConfig, is_interactive: bool) -> dict:
    """The ExecCredential put in KUBERNETES_EXEC_INFO."""
    spec: dict = {"interactive": is_interactive}
    if plugin.provide_cluster_info:
        cluster: dict = {"server": config.server}
        if config.insecure:
            cluster["insecure-skip-tls-verify"] = True
        ca = config.ca_data
        if ca is None and config.ca_file:
            try:
                with open(config.ca_file, "rb") as handle:
                    ca = handle.read()
            except OSError:
                ca = None
        if ca:
            cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
        spec["cluster"] = cluster
    return {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": spec}


def _timestamp(text, plugin: ExecPlugin) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise CredentialError(f"exec plugin {plugin.command!r}: expirationTimestamp {text!r} is not an RFC 3339 "
                              "time") from None
    if moment.tzinfo is None:
        raise CredentialError(f"exec plugin {plugin.command!r}: expirationTimestamp {text!r} has no time zone")
    return moment.timestamp()


def parse_output(text: str, plugin: ExecPlugin) -> Credential:
    """The credential in a plugin's stdout, checked as client-go checks it."""
    name = repr(plugin.command)
    try:
        document = json.loads(text)
    except ValueError:
        raise CredentialError(f"exec plugin {name} did not print an ExecCredential (not JSON)") from None
    if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
        raise CredentialError(f"exec plugin {name} did not print an ExecCredential (kind)")
    if document.get("apiVersion") != plugin.api_version:
        raise CredentialError(f"exec plugin {name} answered apiVersion {document.get('apiVersion')!r}, the "
                              f"kubeconfig asks for {plugin.api_version!r}")
    status = document.get("status")
    if not isinstance(status, dict):
        raise CredentialError(f"exec plugin {name} printed an ExecCredential without a status")
    token, cert, key = status.get("token"), status.get("clientCertificateData"), status.get("clientKeyData")
    if bool(cert) != bool(key):
        raise CredentialError(f"exec plugin {name}: clientCertificateData and clientKeyData come together, "
                              "one of them is missing")
    if not token and not cert:
        raise CredentialError(f"exec plugin {name} printed neither a token nor a client certificate")
    for value, what in ((token, "token"), (cert, "clientCertificateData"), (key, "clientKeyData")):
        if value is not None and not isinstance(value, str):
            raise CredentialError(f"exec plugin {name}: {what} must be a string")
    expires = status.get("expirationTimestamp")
    return Credential(token=token or None,
                      cert_data=cert.encode() if cert else None, key_data=key.encode() if key else None,
                      expires=None if expires is None else _timestamp(expires, plugin))


class ExecCredentials:
    """The current credential of one exec plugin, run again when it expires or the server refused it."""

    def __init__(self, config: ClusterConfig, clock=time.time, stdin=None):
        assert config.exec_plugin is not None
        self.config, self.plugin = config, config.exec_plugin
        self.clock = clock
        self.stdin = sys.stdin if stdin is None else stdin
        self.runs = 0
        self._current: Credential | None = None
        self._lock = threading.Lock()

    def current(self) -> Credential:
        with self._lock:
            if self._current is None or not self._current.valid_at(self.clock()):
                self._current = self._run()
            return self._current

    def refused(self, credential: Credential) -> None:
        """The API server answered 401 to `credential`: the next request runs the plugin again."""
        with self._lock:
            if self._current is credential:
                self._current = None

    def _run(self) -> Credential:
        plugin = self.plugin
        try:
            terminal = self.stdin is not None and os.isatty(self.stdin.fileno())
        except (OSError, ValueError, AttributeError):
            terminal = False
        is_interactive = interactive(plugin, terminal)
        env = dict(os.environ)
        env.update(plugin.env)
        env["KUBERNETES_EXEC_INFO"] = json.dumps(exec_input(plugin, self.config, is_interactive))
        self.runs += 1
        try:
            done = subprocess.run([plugin.command, *plugin.args], env=env, stdout=subprocess.PIPE,
                                  stdin=self.stdin if is_interactive else subprocess.DEVNULL,
                                  timeout=None if is_interactive else NON_INTERACTIVE_TIMEOUT, check=False)
        except FileNotFoundError:
            hint = f": {plugin.install_hint.strip()}" if plugin.install_hint.strip() else ""
            raise CredentialError(f"exec plugin {plugin.command!r} of user {plugin.user!r} not found{hint}") from None
        except subprocess.TimeoutExpired:
            raise CredentialError(f"exec plugin {plugin.command!r} did not answer within "
                                  f"{NON_INTERACTIVE_TIMEOUT:.0f} s") from None
        except OSError as err:
            raise CredentialError(f"cannot run exec plugin {plugin.command!r}: {err.strerror or err}") from None
        if done.returncode != 0:
            raise CredentialError(f"exec plugin {plugin.command!r} of user {plugin.user!r} exited with "
                                  f"status {done.returncode}")
        return parse_output(done.stdout.decode("utf-8", "replace"), plugin)
