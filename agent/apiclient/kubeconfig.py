"""Where the API server is and how to authenticate to it, found the way kubectl finds it.

Sources, in kubectl's order: an explicit file (`--kubeconfig PATH`, `--kube-api kubeconfig:PATH`), else the files
named by `KUBECONFIG` (separated by ':'), else `~/.kube/config`; the pod's service account in a cluster.

Merging several files follows client-go's loader: files that do not exist are skipped (an explicit file must
exist); for each cluster, user and context name the first file that defines it wins, and so does the first
file that sets `current-context`. Relative paths in a file (certificate-authority, client-certificate,
client-key, tokenFile, and an exec command with a '/') are relative to that file.

Certificates and keys embedded in a kubeconfig (`*-data`) stay in memory (see `agent.apiclient.client`).
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

import yaml

from agent.errors import InvalidInput

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig `user.exec` stanza: a command that prints an ExecCredential."""

    command: str
    api_version: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    interactive_mode: str = "IfAvailable"
    provide_cluster_info: bool = False
    install_hint: str = ""
    user: str = ""


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
    # Read again while the process runs: projected service account tokens and `tokenFile` rotate.
    token_file: str | None = None
    exec_plugin: ExecPlugin | None = None


def in_cluster_config(root: str = SERVICE_ACCOUNT, environ=None, hint: str = "--kube-api kubeconfig:PATH"
                      ) -> ClusterConfig:
    """The pod's service account. `hint` names the flag that points elsewhere, for the error outside a pod."""
    environ = os.environ if environ is None else environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise InvalidInput(f"not running in a cluster: KUBERNETES_SERVICE_HOST is not set (use {hint})")
    token_file = os.path.join(root, "token")
    try:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as err:
        raise InvalidInput(f"cannot read the service account token: {err.strerror}") from None
    if ":" in host:
        host = f"[{host}]"
    return ClusterConfig(f"https://{host}:{port}", token=token, ca_file=os.path.join(root, "ca.crt"),
                         token_file=token_file)


def search_paths(environ, home: str | None) -> list[str]:
    """The files kubectl would read without --kubeconfig: KUBECONFIG's entries (empty ones and repeats dropped),
    or ~/.kube/config when KUBECONFIG is unset or empty."""
    entries = []
    for entry in (environ.get("KUBECONFIG") or "").split(os.pathsep):
        if entry and entry not in entries:
            entries.append(entry)
    if entries:
        return entries
    return [os.path.join(home, ".kube", "config")] if home else []


def _named(document: dict, key: str, inner: str, path: str) -> list[tuple[str, dict]]:
    entries = document.get(key) or []
    if not isinstance(entries, list):
        raise InvalidInput(f"kubeconfig {path}: {key} must be a list")
    named = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput(f"kubeconfig {path}: every entry of {key} needs a name")
        body = entry.get(inner) or {}
        if not isinstance(body, dict):
            raise InvalidInput(f"kubeconfig {path}: {key} {entry['name']!r}: {inner} must be a mapping")
        named.append((entry["name"], body))
    return named


def _resolved(body: dict, keys: tuple[str, ...], base: str) -> dict:
    body = dict(body)
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value):
            body[key] = os.path.join(base, value)
    exec_stanza = body.get("exec")
    if isinstance(exec_stanza, dict):
        command = exec_stanza.get("command")
        # client-go resolves a command with a path separator against the file; a bare name is looked up in PATH.
        if isinstance(command, str) and "/" in command and not os.path.isabs(command):
            body["exec"] = {**exec_stanza, "command": os.path.join(base, command)}
    return body


def merge(documents: list[tuple[str, dict]]) -> dict:
    """One kubeconfig from several (path, parsed document), by client-go's rules: first definition of each
    name wins, first `current-context` wins, relative paths resolved against their own file. Pure."""
    merged: dict = {"current-context": "", "clusters": {}, "users": {}, "contexts": {}}
    for path, document in documents:
        if not isinstance(document, dict):
            raise InvalidInput(f"kubeconfig {path}: not a mapping")
        base = os.path.dirname(os.path.abspath(path))
        current = document.get("current-context")
        if current and not merged["current-context"]:
            merged["current-context"] = current
        for key, inner, paths in (("clusters", "cluster", ("certificate-authority",)),
                                  ("users", "user", ("client-certificate", "client-key", "tokenFile")),
                                  ("contexts", "context", ())):
            for name, body in _named(document, key, inner, path):
                if name not in merged[key]:
                    merged[key][name] = (path, _resolved(body, paths, base))
    return merged


def read_documents(paths: list[str], explicit: bool) -> list[tuple[str, dict]]:
    """Parse each file. A missing file is skipped, as kubectl skips missing KUBECONFIG entries, unless the
    file was named explicitly."""
    documents = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as handle:
                document = yaml.safe_load(handle) or {}
        except FileNotFoundError:
            if explicit:
                raise InvalidInput(f"cannot read kubeconfig {path}: no such file") from None
            continue
        except (OSError, yaml.YAMLError) as err:
            raise InvalidInput(f"cannot read kubeconfig {path}: {err}") from None
        documents.append((path, document))
    return documents


def _decode(data_b64, path: str, field_name: str) -> bytes | None:
    """A kubeconfig `*-data` value: base64 of PEM."""
    if not data_b64:
        return None
    try:
        return base64.b64decode(data_b64, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidInput(f"kubeconfig {path}: {field_name} is not base64") from None


def exec_plugin(stanza, user: str, path: str) -> ExecPlugin:
    """Check a `user.exec` stanza as client-go does (apiVersion known, interactiveMode given for v1)."""
    if not isinstance(stanza, dict) or not isinstance(stanza.get("command"), str) or not stanza["command"]:
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec needs a command")
    version = stanza.get("apiVersion")
    if version not in EXEC_API_VERSIONS:
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec apiVersion {version!r} is not supported "
                           f"(use {' or '.join(EXEC_API_VERSIONS)})")
    mode = stanza.get("interactiveMode")
    if mode is None and version.endswith("/v1"):
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec interactiveMode must be set for {version} "
                           f"({', '.join(INTERACTIVE_MODES)})")
    mode = mode or "IfAvailable"
    if mode not in INTERACTIVE_MODES:
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec interactiveMode {mode!r} is not one of "
                           f"{', '.join(INTERACTIVE_MODES)}")
    args = stanza.get("args") or []
    env = stanza.get("env") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec args must be a list of strings")
    if not isinstance(env, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                            and isinstance(e.get("value", ""), str) for e in env):
        raise InvalidInput(f"kubeconfig {path}: user {user!r}: exec env must be a list of {{name, value}}")
    return ExecPlugin(command=stanza["command"], api_version=version, args=tuple(args),
                      env=tuple((e["name"], e.get("value", "")) for e in env), interactive_mode=mode,
                      provide_cluster_info=bool(stanza.get("provideClusterInfo")),
                      install_hint=str(stanza.get("installHint") or ""), user=user)


def config_from(merged: dict, context: str | None, where: str) -> ClusterConfig:
    """The ClusterConfig of one context of a merged kubeconfig; `where` names the files in messages."""
    name = context or merged["current-context"]
    if not name:
        raise InvalidInput(f"kubeconfig {where}: no current-context is set (give a context)")
    if name not in merged["contexts"]:
        raise InvalidInput(f"kubeconfig {where}: context {name!r} not found")
    _, ctx = merged["contexts"][name]
    cluster_path, cluster = merged["clusters"].get(ctx.get("cluster"), (where, None))
    if cluster is None or not cluster.get("server"):
        raise InvalidInput(f"kubeconfig {where}: cluster {ctx.get('cluster')!r} has no server")
    user_name = ctx.get("user")
    user_path, user = merged["users"].get(user_name, (where, {}))
    if "auth-provider" in user:
        raise InvalidInput(f"kubeconfig {user_path}: user {user_name!r} uses an auth-provider, which kubectl "
                           "itself dropped; use an exec credential plugin, a token or a client certificate")
    plugin = exec_plugin(user["exec"], user_name, user_path) if user.get("exec") is not None else None
    return ClusterConfig(
        server=cluster["server"].rstrip("/"),
        # As client-go: with both, the token is the fallback and the file, read again each minute, wins.
        token=user.get("token") or None,
        token_file=user.get("tokenFile") or None,
        ca_file=cluster.get("certificate-authority"),
        cert_file=user.get("client-certificate"),
        key_file=user.get("client-key"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        ca_data=_decode(cluster.get("certificate-authority-data"), cluster_path, "certificate-authority-data"),
        cert_data=_decode(user.get("client-certificate-data"), user_path, "client-certificate-data"),
        key_data=_decode(user.get("client-key-data"), user_path, "client-key-data"),
        exec_plugin=plugin,
    )


def kubeconfig_config(path: str, context: str | None = None) -> ClusterConfig:
    """One kubeconfig file named explicitly (it must exist)."""
    return config_from(merge(read_documents([path], explicit=True)), context, path)


def default_kubeconfig(environ=None, home: str | None = None, context: str | None = None) -> ClusterConfig | None:
    """The kubeconfig kubectl would use without --kubeconfig (KUBECONFIG's files merged, or ~/.kube/config);
    None when none of those files exists."""
    environ = os.environ if environ is None else environ
    if home is None:
        home = environ.get("HOME") or os.path.expanduser("~")
    paths = search_paths(environ, home)
    documents = read_documents(paths, explicit=False)
    if not documents:
        return None
    return config_from(merge(documents), context, os.pathsep.join(paths))


KUBE_API_CHOICES = "auto|off|in-cluster|kubeconfig[:PATH]"


def config_for(spec: str, environ=None) -> ClusterConfig | None:
    """Where the node agent finds the API (`run --kube-api`). `auto`: in-cluster when KUBERNETES_SERVICE_HOST is
    set, else the files KUBECONFIG names when it is set, else none; `off`: none; `in-cluster`; `kubeconfig`:
    KUBECONFIG or ~/.kube/config as kubectl reads them; `kubeconfig:PATH`: that file. None means: work without
    an API."""
    environ = os.environ if environ is None else environ
    if spec == "off":
        return None
    if spec == "auto":
        if environ.get("KUBERNETES_SERVICE_HOST"):
            return in_cluster_config(environ=environ)
        return default_kubeconfig(environ) if environ.get("KUBECONFIG") else None
    if spec == "in-cluster":
        return in_cluster_config(environ=environ)
    if spec == "kubeconfig":
        config = default_kubeconfig(environ)
        if config is None:
            raise InvalidInput("--kube-api kubeconfig: no kubeconfig found ("
                               + ("none of the files KUBECONFIG names exists" if environ.get("KUBECONFIG")
                                  else "KUBECONFIG is not set and ~/.kube/config does not exist") + ")")
        return config
    if spec.startswith("kubeconfig:") and spec[len("kubeconfig:"):]:
        return kubeconfig_config(spec[len("kubeconfig:"):])
    raise InvalidInput(f"kube_api must be {KUBE_API_CHOICES}, not {spec!r}")


def controller_config(kubeconfig: str | None, context: str | None, environ=None) -> ClusterConfig:
    """Where `controller` finds the API, in controller-runtime's order: --kubeconfig, KUBECONFIG, the service
    account when in a pod, ~/.kube/config."""
    environ = os.environ if environ is None else environ
    if kubeconfig:
        return kubeconfig_config(kubeconfig, context)
    if environ.get("KUBECONFIG") or not environ.get("KUBERNETES_SERVICE_HOST"):
        config = default_kubeconfig(environ, context=context)
        if config is not None:
            return config
        if environ.get("KUBECONFIG"):
            raise InvalidInput(f"none of the kubeconfig files KUBECONFIG names exists ({environ['KUBECONFIG']}); "
                               "use --kubeconfig PATH")
    return in_cluster_config(environ=environ, hint="--kubeconfig PATH, KUBECONFIG or ~/.kube/config")
