"""The distinct requests one subject made, gathered from audit lines as they stream past.

Memory holds one entry per distinct request plus the requests still in flight (an earlier stage seen, no final
stage yet), never one per line: the log can be far larger than memory. A request counts once, at its final
stage (ResponseComplete or Panic); one whose final stage never shows up counts at the last stage seen. Allowed
and denied requests count alike: what matters is what the subject attempted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from agent.rbac.attributes import Request
from agent.rbac.events import FINAL_STAGES, NotAnEvent, acting_user, decode, request_of


@dataclass(frozen=True)
class BadLine:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Recorder:
    """Feeds on (source, line number, bytes); keeps the requests of `username`, in `namespace` when given."""

    username: str
    namespace: str | None = None
    on_bad: Callable[[BadLine], None] | None = None
    requests: dict[Request, int] = field(default_factory=dict)
    lines: int = 0
    events: int = 0
    bad: int = 0
    _in_flight: dict[str, Request] = field(default_factory=dict)

    def feed(self, source: str, number: int, line: bytes) -> None:
        self.lines += 1
        if not line.strip():
            return
        try:
            event = decode(line)
        except NotAnEvent as err:
            self.bad += 1
            if self.on_bad is not None:
                self.on_bad(BadLine(source, number, str(err)))
            return
        self.events += 1
        if acting_user(event) != self.username:
            return
        request = request_of(event)
        if self.namespace is not None and (not request.resource_request or request.namespace != self.namespace):
            return
        if event.stage in FINAL_STAGES:
            self._in_flight.pop(event.auditID, None)
            self.requests[request] = self.requests.get(request, 0) + 1
        else:
            self._in_flight[event.auditID] = request

    def feed_all(self, lines: Iterable[tuple[str, int, bytes]]) -> "Recorder":
        for source, number, line in lines:
            self.feed(source, number, line)
        return self

    def finish(self) -> dict[Request, int]:
        """Every request of the subject with how often it was made, those never completed included."""
        for request in self._in_flight.values():
            self.requests[request] = self.requests.get(request, 0) + 1
        self._in_flight.clear()
        return self.requests

    @property
    def used(self) -> int:
        return sum(self.requests.values()) + len(self._in_flight)
