"""The AVC pipeline: a source of records → the parser and event assembler → attribution → metrics and a
callback. A daemon runs it as a thread (`start` / `stop`); the CLI and tests drive it directly (`run`).

A source is any iterable of `(record type or None, text)` items, with `None` items as idle ticks; the
netlink and file sources both have that shape and a `stop()` method. Nothing here raises on bad input:
unreadable lines are counted, and an exception in the callback is counted and does not stop the stream.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from agent.avc.assembler import EventAssembler
from agent.avc.attribution import Attribution, Attributor
from agent.avc.counting import AvcCounts
from agent.avc.denial import Denial
from agent.avc.filesource import AuditLogFollower
from agent.errors import InvalidInput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributedDenial:
    """A denial and the pod it was tied to (or why it was not)."""

    denial: Denial
    attribution: Attribution

    def to_json(self) -> dict:
        out = self.denial.to_json()
        out["attribution"] = self.attribution.to_json()
        return out


_new = object.__new__
_set = object.__setattr__
# What the callback sees when no attributor is set (values are immutable, so one serves every denial).
_NO_ATTRIBUTION = Attribution()


class AvcWatcher:
    """Glue between a source and its consumers. `callback(AttributedDenial)` sees every AVC record,
    denials and granted ones; metrics count denials only."""

    def __init__(self, source: Iterable, attributor: Attributor | None = None, metrics: AvcCounts | None = None,
                 callback: Callable[[AttributedDenial], None] | None = None,
                 assembler: EventAssembler | None = None, wall_clock: Callable[[], float] = time.time):
        self.source = source
        self.attributor = attributor
        self.metrics = metrics
        self.callback = callback
        self.assembler = assembler or EventAssembler()
        self.wall_clock = wall_clock
        self.callback_errors = 0
        self.error: BaseException | None = None
        self._stopping = False  # tested for every record; set by stop() from any thread
        self._thread: threading.Thread | None = None
        self._seen_records: dict[str, int] = {}
        self._seen_bad = 0
        self._seen_drops = 0
        self._sync_lock = threading.Lock()

    # -- running ----------------------------------------------------------------------------------------

    def run(self) -> None:
        """Consume the source until it ends or `stop()` is called; close open events at the end."""
        feed = self.assembler.feed_line
        handle = self._handler()
        since_sync = 0
        try:
            for item in self.source:
                if item is None:
                    handle(self.assembler.expire(self.wall_clock()))
                    self._sync_counters()
                    since_sync = 0
                else:
                    denials = feed(item[1], item[0])
                    if denials:
                        handle(denials)
                    since_sync += 1
                    if since_sync >= 4096:  # a busy source has no idle ticks; keep counters fresh anyway
                        self._sync_counters()
                        since_sync = 0
                if self._stopping:
                    break
        finally:
            handle(self.assembler.finish())
            self._sync_counters()

    def start(self) -> "AvcWatcher":
        """Run in a daemon thread."""
        if self._thread is not None:
            return self
        self._stopping = False
        self._thread = threading.Thread(target=self._run_logged, name="avc-watcher", daemon=True)
        self._thread.start()
        return self

    def _run_logged(self) -> None:
        try:
            self.run()
        except BaseException as err:  # noqa: BLE001 - reported through `error` and the log
            self.error = err
            log.error("AVC watcher stopped: %s", err)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the source and wait for the thread (which ends within one source tick)."""
        self._stopping = True
        stop_source = getattr(self.source, "stop", None)
        if stop_source is not None:
            stop_source()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- per denial -------------------------------------------------------------------------------------

    def _handler(self) -> Callable[[list[Denial]], None]:
        """A function that attributes, counts and passes on each denial of one batch (the denials one
        record completed), bound to the attributor, metrics and callback as they are when a run starts."""
        attribute = self.attributor.attribute if self.attributor else None
        count = self.metrics.count_denial if self.metrics is not None else None
        callback = self.callback

        def handle(denials: list[Denial]) -> None:
            for denial in denials:
                attribution = attribute(denial) if attribute is not None else _NO_ATTRIBUTION
                if count is not None:
                    count(denial, attribution if attribute is not None else None)
                if callback is not None:
                    # AttributedDenial(denial, attribution) without the frozen __init__, whose
                    # object.__setattr__ calls cost more than the rest of this loop; same class and fields.
                    item = _new(AttributedDenial)
                    _set(item, "__dict__", {"denial": denial, "attribution": attribution})
                    try:
                        callback(item)
                    except StopIteration:
                        self.stop(timeout=0)
                    except Exception:  # noqa: BLE001 - a consumer bug must not stop the watcher
                        self.callback_errors += 1
                        log.exception("AVC callback failed")

        return handle

    def _sync_counters(self) -> None:
        """Move record, parse-error and drop counts into the metrics as deltas (cheap; on ticks and at end)."""
        if self.metrics is None:
            return
        with self._sync_lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        stats = self.assembler.stats
        delta = {}
        for rtype, count in stats.records.items():
            before = self._seen_records.get(rtype, 0)
            if count != before:
                delta[rtype] = count - before
                self._seen_records[rtype] = count
        self.metrics.count_records(delta)
        self.metrics.count_parse_errors(stats.bad_lines - self._seen_bad)
        self._seen_bad = stats.bad_lines
        drops = getattr(self.source, "drops", 0)
        self.metrics.count_netlink_drops(drops - self._seen_drops)
        self._seen_drops = drops


def open_source(spec: str, from_beginning: bool = False):
    """`netlink` or `file:PATH` → a source object (iterable with stop())."""
    if spec == "netlink":
        # pyroute2 is imported only by the commands that read the kernel: `--help` and file sources do without it.
        from agent.avc.netlink import AuditNetlinkSource

        return AuditNetlinkSource().open()
    if spec.startswith("file:") and len(spec) > 5:
        return AuditLogFollower(spec[5:], from_beginning=from_beginning)
    raise InvalidInput(f"unknown source {spec!r}: use 'netlink' or 'file:PATH'")
