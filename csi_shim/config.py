"""Settings of one shim instance: the options `csi` and `run` share (`agent.config.ShimOptions`, declared
there once, already resolved to absolute paths) and what only the shim sets."""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.config import FALLBACKS, ShimOptions, shim_fields
from agent.errors import InvalidInput

DRIVER_NAME = "local.selinux-mount-agent.io"


def socket_path(endpoint: str, flag: str) -> str:
    """`unix:///run/csi/csi.sock` (or `unix:/path`) -> `/run/csi/csi.sock`; nothing but unix sockets."""
    if endpoint.startswith("unix://"):
        path = endpoint[len("unix://"):]
    elif endpoint.startswith("unix:"):
        path = endpoint[len("unix:"):]
    else:
        raise InvalidInput(f"{flag} {endpoint!r}: only unix:///path.sock endpoints are supported")
    if not path.startswith("/"):
        raise InvalidInput(f"{flag} {endpoint!r}: the socket path must be absolute")
    return path


@dataclass(frozen=True)
class ShimConfig(ShimOptions):
    driver_name: str = DRIVER_NAME
    max_workers: int = 32
    relabel_threads: int | None = None

    def __post_init__(self):
        socket_path(self.csi_endpoint or "", "--csi-endpoint")
        if self.backend_endpoint is not None:
            socket_path(self.backend_endpoint, "--backend-endpoint")
        if self.on_context_dropped not in FALLBACKS:
            raise InvalidInput(f"--on-context-dropped must be one of {', '.join(FALLBACKS)}")
        if not self.node_id:
            raise InvalidInput("--node-id must not be empty")
        for flag, path in (("--state-dir", self.state_dir), ("--kubelet-root", self.kubelet_root)):
            if not os.path.isabs(path):
                raise InvalidInput(f"{flag} {path!r} must be an absolute path")

    @classmethod
    def of(cls, options: ShimOptions, **shim) -> "ShimConfig":
        """The shim's value from options `run` or `csi` resolved (`ShimOptions.resolved`), plus `shim`'s own."""
        return cls(**shim_fields(options), **shim)

    @property
    def socket(self) -> str:
        return socket_path(self.csi_endpoint, "--csi-endpoint")

    @property
    def proxy(self) -> bool:
        return self.backend_endpoint is not None

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "csi-state.json")

    @property
    def image_dir(self) -> str:
        return os.path.join(self.state_dir, "volumes")
