"""The configuration of `run`, and of `csi`, which takes the CSI shim's part of it as flags only.

`ShimOptions` holds the shim's options once, with the defaults both commands share; `RunConfig` adds what only
`run` has. The shim's own value, `csi_shim.config.ShimConfig`, extends `ShimOptions` with what only the shim
sets, so no option is declared twice. `run` layers its sources: defaults < an optional YAML file < environment
(`SELINUX_MOUNT_AGENT_<OPTION>`) < flags. Every default works on a laptop: state under ./state, the CSI socket
inside it, metrics on localhost.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field

import yaml

from agent.apiclient.kubeconfig import KUBE_API_CHOICES
from agent.errors import InvalidInput
from agent.logs import FORMATS, LEVELS
from agent.parsing.numbers import ascii_decimal

ENV_PREFIX = "SELINUX_MOUNT_AGENT_"
FALLBACKS = ("relabel", "fail")  # --on-context-dropped


@dataclass(frozen=True)
class ShimOptions:
    """The CSI shim's options as `csi` and `run` take them (flags, and for `run` also environment and file)."""

    csi_endpoint: str | None = None  # unix://<state_dir>/csi.sock
    backend_endpoint: str | None = None
    state_dir: str = "state"
    kubelet_root: str = "/var/lib/kubelet"
    node_id: str = field(default_factory=socket.gethostname)
    strip_context: bool = False
    # What to do when a context= mount comes back without the context (see docs/csi-shim.md).
    on_context_dropped: str = "relabel"

    def resolved(self, state_dir: str | None = None) -> ShimOptions:
        """These options as the shim takes them, the same for `run` and `csi`: relative paths against the
        working directory, the socket `csi.sock` in the state directory unless --csi-endpoint says otherwise,
        the state in `shim_state_dir`. `state_dir` overrides that last choice."""
        endpoint = self.csi_endpoint or "unix://" + os.path.join(self.state_dir, "csi.sock")
        path = endpoint.removeprefix("unix://").removeprefix("unix:")
        if endpoint.startswith("unix:") and path and not path.startswith("/"):
            endpoint = "unix://" + os.path.abspath(path)
        return ShimOptions(**{**shim_fields(self), "csi_endpoint": endpoint,
                              "state_dir": state_dir or shim_state_dir(self.state_dir),
                              "kubelet_root": os.path.abspath(self.kubelet_root)})


SHIM_OPTIONS = tuple(f.name for f in dataclasses.fields(ShimOptions))


def shim_fields(options: ShimOptions) -> dict:
    """The `ShimOptions` part of `options` (a `RunConfig`, or a `ShimConfig`), by name."""
    return {name: getattr(options, name) for name in SHIM_OPTIONS}


@dataclass(frozen=True)
class RunConfig(ShimOptions):
    """Everything `run` is configured with: the shim's options and the node agent's own."""

    avc: str = "off"  # off, netlink, or file:/var/log/audit/audit.log
    kube_api: str = "auto"  # pod names for AVC attribution: auto, off, in-cluster, kubeconfig:PATH
    metrics_address: str = "127.0.0.1:9808"
    log_format: str = "text"
    log_level: str = "info"
    config_file: str | None = None

    # Options a SIGHUP may change without a restart.
    LIVE = ("log_format", "log_level")


OPTIONS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _coerce(name: str, value, source: str):
    kind = OPTIONS[name].type
    if "bool" in str(kind):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InvalidInput(f"{source}: {name} must be true or false, not {value!r}")
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{source}: {name} must be a string")
    return value


def resolve_config(flags: dict, environ: dict, file_text: str | None = None, file_name: str = "") -> RunConfig:
    """Layer the sources (pure: the caller reads the file and the environment)."""
    values: dict = {}
    if file_text:
        try:
            document = yaml.safe_load(file_text) or {}
        except yaml.YAMLError as err:
            raise InvalidInput(f"config file {file_name}: invalid YAML: {err}") from None
        if not isinstance(document, dict):
            raise InvalidInput(f"config file {file_name}: expected a mapping of options")
        for key, value in document.items():
            name = str(key).replace("-", "_")
            if name not in OPTIONS or name == "config_file":
                raise InvalidInput(f"config file {file_name}: unknown option {key!r}")
            values[name] = _coerce(name, value, f"config file {file_name}")
    for name in OPTIONS:
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None and name != "config_file":
            values[name] = _coerce(name, env, f"environment {ENV_PREFIX + name.upper()}")
    for name, value in flags.items():
        if value is not None and name in OPTIONS:
            values[name] = value
    config = RunConfig(**values)
    if config.log_format not in FORMATS:
        raise InvalidInput(f"log_format must be text or json, not {config.log_format!r}")
    if config.on_context_dropped not in FALLBACKS:
        raise InvalidInput(f"on_context_dropped must be relabel or fail, not {config.on_context_dropped!r}")
    if config.log_level not in LEVELS:
        raise InvalidInput(f"log_level must be debug, info, warning or error, not {config.log_level!r}")
    if config.avc != "off" and config.avc != "netlink" and not config.avc.startswith("file:"):
        raise InvalidInput(f"avc must be off, netlink or file:PATH, not {config.avc!r}")
    if (config.kube_api not in ("auto", "off", "in-cluster", "kubeconfig")
            and not config.kube_api.startswith("kubeconfig:")):
        raise InvalidInput(f"kube_api must be {KUBE_API_CHOICES}, not {config.kube_api!r}")
    split_address(config.metrics_address)
    return config


def split_address(text: str) -> tuple[str, int]:
    """A listening address, HOST:PORT ([V6]:PORT; an empty host is every address)."""
    host_part, sep, port = text.rpartition(":")
    number = ascii_decimal(port, 65535)
    if not sep or number is None:
        raise InvalidInput(f"address {text!r} is not HOST:PORT")
    return host_part.strip("[]") or "0.0.0.0", number


def holds_state(directory: str) -> bool:
    """Whether a shim kept its volumes in `directory`: any state file or the image directory counts, a damaged
    or deleted snapshot included (the shim then refuses to start on it instead of starting empty elsewhere)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return False
    return any(n.startswith("csi-state.") or n == "volumes" for n in names)


def shim_state_dir(state_dir: str) -> str:
    """Where the shim keeps its files: `--state-dir` itself, for `run` as for `csi`, so both commands find the
    same volumes. A node whose state was kept in DIR/csi (as `run` once did) keeps using that directory: moving
    away from it would lose the volume records and leave their loop devices attached (docs/csi-shim.md)."""
    base = os.path.abspath(state_dir)
    earlier = os.path.join(base, "csi")
    return earlier if holds_state(earlier) else base
