"""The lifecycle of the node agent process (`run`): its components started in order, served health, a live
reload, and a clean stop. What the components are is decided by the caller (agent/cli/run_cmd.py).

SIGTERM finishes in-flight calls and exits; SIGHUP re-reads the configuration and applies what can change live.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry

from agent.config import RunConfig, split_address
from agent.http import MetricsServer, endpoints, serve
from agent.logs import configure_logging
from agent.metrics import NodeMetrics
from agent.node import host

log = logging.getLogger("selinux-mount-agent")


class Component:
    """A part the daemon runs: started once, stopped with a grace period, asked whether it is healthy."""

    name = "component"

    def start(self) -> None: ...

    def stop(self, grace: float) -> None: ...

    def problem(self) -> str | None:
        return None


class Daemon:
    """Runs the components `components_factory(daemon)` returns, with /metrics, /healthz and /readyz.

    `take_lock()`, when given, runs before anything binds or writes (one agent per state directory: a second one
    must not take the metrics port or touch the socket); what it returns is released last, on stop."""

    def __init__(self, config: RunConfig, components_factory: Callable[["Daemon"], Iterable[Component]],
                 take_lock: Callable[[], object] | None = None):
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = NodeMetrics(self.registry)
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.selinux = False
        self.components: list[Component] = []
        self._factory = components_factory
        self._take_lock = take_lock
        self._http: MetricsServer | None = None
        self.instance_lock = None

    def start(self) -> None:
        if self._take_lock is not None:
            self.instance_lock = self._take_lock()
        self.selinux = host.selinux_enabled()
        self.metrics.selinux_enabled.set(1 if self.selinux else 0)
        if not self.selinux:
            # Like kubelet: start, say so once, and do no SELinux work.
            log.warning("SELinux is not enabled on this node: volumes are served without labels and nothing is "
                        "relabelled")
        os.makedirs(self.config.state_dir, exist_ok=True)
        answer = endpoints(self.registry, self.problems, lambda: self.ready.is_set() and not self.problems())
        self._http = serve(split_address(self.config.metrics_address), answer,
                           f"metrics address {self.config.metrics_address}")
        log.info("serving /metrics, /healthz and /readyz on %s", self.metrics_url)
        self.components = list(self._factory(self))
        for component in self.components:
            component.start()
            log.info("started %s", component.name)
        self.ready.set()

    @property
    def metrics_url(self) -> str:
        host_name, port = self._http.server_address[:2] if self._http else split_address(self.config.metrics_address)
        return f"http://{host_name}:{port}"

    def problems(self) -> list[str]:
        return [f"{c.name}: {p}" for c in self.components if (p := c.problem())]

    def reload(self, config: RunConfig) -> None:
        """Apply a re-read configuration: what can change live changes, the rest is named and kept."""
        changed = [f.name for f in dataclasses.fields(RunConfig)
                   if getattr(config, f.name) != getattr(self.config, f.name)]
        live = [name for name in changed if name in RunConfig.LIVE]
        frozen = [name for name in changed if name not in RunConfig.LIVE]
        self.config = dataclasses.replace(self.config, **{name: getattr(config, name) for name in live})
        configure_logging(self.config.log_format, self.config.log_level)
        if live:
            log.info("configuration reloaded: %s", ", ".join(live))
        if frozen:
            log.warning("configuration changes that need a restart were not applied: %s", ", ".join(frozen))
        if not changed:
            log.info("configuration reloaded: nothing changed")

    def stop(self, grace: float = 10.0) -> None:
        if self.stopped.is_set():
            return
        self.ready.clear()
        for component in reversed(self.components):
            try:
                component.stop(grace)
                log.info("stopped %s", component.name)
            except Exception:
                log.exception("stopping %s failed", component.name)
        if self._http:
            self._http.stop()
        if self.instance_lock is not None:
            self.instance_lock.release()
        self.stopped.set()
