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
from agent.rbac.events import FINAL_STAGES, NotAnEvent, decode, request_of


# What a reader yields in place of a line too long to hold (it reads past it without keeping it).
LINE_TOO_LONG = b"\x00"


@dataclass(frozen=True)
class BadLine:
    source: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Recorder:
    """Feeds on (source name, lines); keeps the requests of `username`, in `namespace` when given. The set of
    requests is exact whatever the order of the lines; the counts assume each request's stages come in order
    (an earlier stage read after its final one would count it twice)."""

    username: str
    namespace: str | None = None
    on_bad: Callable[[BadLine], None] | None = None
    requests: dict[Request, int] = field(default_factory=dict)
    lines: int = 0
    events: int = 0
    bad: int = 0
    _in_flight: dict[str, Request] = field(default_factory=dict)

    def feed_all(self, sources: Iterable[tuple[str, Iterable[bytes]]]) -> "Recorder":
        """Every line of every (source name, lines) in turn, numbered from 1 per source. One loop with
        everything it touches in locals, over the lines as they come (a file object is iterated directly): at
        a million lines, a method call, a generator step or an attribute lookup per line is a large share of
        the time."""
        username, namespace, on_bad = self.username, self.namespace, self.on_bad
        requests, in_flight = self.requests, self._in_flight
        count = requests.get
        read = events = bad = 0
        try:
            for source, lines in sources:
                number = 0
                for line in lines:
                    number += 1
                    read += 1
                    try:
                        event = decode(line)
                    except NotAnEvent as err:
                        if not line.strip():
                            continue
                        bad += 1
                        if on_bad is not None:
                            reason = "line too long, skipped unread" if line is LINE_TOO_LONG else str(err)
                            on_bad(BadLine(source, number, reason))
                        continue
                    events += 1
                    # An impersonated request is authorized as the impersonated user, so it is theirs.
                    impersonated = event.impersonatedUser
                    if (impersonated.username if impersonated is not None else event.user.username) != username:
                        continue
                    request = request_of(event)
                    if namespace is not None and (not request.resource_request or request.namespace != namespace):
                        continue
                    if event.stage in FINAL_STAGES:
                        if in_flight:
                            in_flight.pop(event.auditID, None)
                        requests[request] = count(request, 0) + 1
                    else:
                        in_flight[event.auditID] = request
        finally:
            self.lines += read
            self.events += events
            self.bad += bad
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
