"""Live audit records from the kernel: the NETLINK_AUDIT multicast group AUDIT_NLGRP_READLOG.

This is the read-only group added in Linux 3.16 for readers "such as systemd" (kernel commit 451f9216).
Binding to it needs CAP_AUDIT_READ in the initial user namespace, and the kernel multicasts only on the
initial network namespace's audit socket, so in a pod the agent needs `hostNetwork: true` and that
capability. Reading the group runs beside auditd and journald and takes nothing from them; delivery is best
effort, and an overflowing receive buffer shows up as ENOBUFS on recv, which is counted in `drops`.

Each datagram carries netlink messages whose payload is the record text without `type=`: the type is the
message type (1400 for AVC, 1300 for SYSCALL, ...). Only messages from the kernel (sender port 0) are
accepted, as journald does (systemd src/journal/journald-audit.c), so a local process cannot inject records
into the multicast group and have them counted.

The socket is pyroute2's: `AuditSocket` is an `AsyncNetlinkSocket` of family NETLINK_AUDIT, so pyroute2
creates and configures it and runs it on its asyncio endpoint. Three of
its defaults do not suit a multicast reader, and the subclass replaces them at pyroute2's own extension
points:

- the datagram protocol (`setup_endpoint`): pyroute2's stores a receive error as the socket's status and
  raises it on every later call, while for an audit reader ENOBUFS only means "records were lost", to be
  counted while reading goes on; pyroute2's also drops the sender's address, which the kernel-only check
  needs;
- `bind`: pyroute2's tries port after port for a unicast address and turns a refusal into
  `KeyError('no free address available')`; a reader of a group binds once, to port 0 (the kernel picks),
  and an EPERM must stay an EPERM, since it means "no CAP_AUDIT_READ";
- message decoding: the payload is plain text, so datagrams are split with one `struct` call per message
  (`split_datagram`) instead of building pyroute2 message objects for every record.

pyroute2 sockets belong to the thread that made them (their socket, event loop and queues are
thread-local), and the watcher consumes records in a thread of its own. So `AuditNetlinkSource` runs the
socket's event loop in one reader thread and hands records over in batches through a bounded queue: records
wait up to 5 ms for more, so a hand-over (a thread wake-up) serves hundreds of records, not one; and when
the consumer falls behind the reader stops reading, so the kernel buffer fills and the loss is seen as
ENOBUFS instead of memory growing without bound. `bench/avc_netlink.py` compares it with a plain socket
and with pyroute2's stock `get()`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import socket
import struct
import threading
from typing import Callable, Iterator

from pyroute2.netlink import NETLINK_AUDIT
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket

from agent.errors import AuditUnavailable

log = logging.getLogger(__name__)

AUDIT_NLGRP_READLOG = 1  # enum audit_nlgrps { AUDIT_NLGRP_NONE, AUDIT_NLGRP_READLOG }
READLOG_MASK = 1 << (AUDIT_NLGRP_READLOG - 1)  # bind(2) takes groups as a bit mask
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
_HEADER = struct.Struct("=LHHLL")  # struct nlmsghdr: len, type, flags, seq, pid
# MAX_AUDIT_MESSAGE_LENGTH is 8970; a datagram holds one record, so 64 KiB leaves a wide margin.
RECV_SIZE = 65536
DEFAULT_RCVBUF = 8 * 1024 * 1024
# Read in one go after the datagram that woke the loop, at most; also the batch size that is handed over at once.
BATCH_DATAGRAMS = 256
# How long read records may wait for more before they are handed over: the latency a record may gain.
HAND_OVER_DELAY = 0.005
# Batches waiting for the consumer; past this the reader waits and the kernel buffer takes the rest.
QUEUED_BATCHES = 256


def split_datagram(data: bytes) -> list[tuple[int, str]]:
    """The (message type, text) pairs in one netlink datagram; control messages and short tails dropped.

    Walks messages by their length rounded up to 4 bytes (NLMSG_ALIGN). Pure.
    """
    out = []
    offset = 0
    size = len(data)
    while offset + _HEADER.size <= size:
        length, mtype, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            break
        end = min(offset + length, size)
        if mtype not in (NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE):
            text = data[offset + _HEADER.size:end].rstrip(b"\0\n").decode("utf-8", "replace")
            out.append((mtype, text))
        offset += (length + 3) & ~3
    return out


class ReaderCounters:
    """What the reader saw besides records; written by the reader thread, read by anyone."""

    def __init__(self):
        self.drops = 0  # ENOBUFS: the kernel dropped records for this socket
        self.foreign = 0  # datagrams not sent by the kernel, ignored
        self.datagrams = 0
        self.errors = 0  # other receive errors (none are expected on a receive-only socket)


class AuditProtocol(asyncio.DatagramProtocol):
    """Turns what the transport reads into record batches for `deliver`.

    After the datagram the transport read, the rest of a burst is read straight from the socket (the
    transport reads one datagram per loop turn). Records wait up to `HAND_OVER_DELAY` for more to join them,
    so that a steady stream is handed over a few hundred times a second instead of once per datagram: each
    hand-over wakes the consumer's thread, which costs more than reading a record.
    """

    def __init__(self, sock: socket.socket, counters: ReaderCounters, deliver: Callable[[list], None]):
        self.recvfrom = sock.recvfrom  # the socket the transport reads (non-blocking once it is registered)
        self.counters = counters
        self.deliver = deliver
        self.pending: list[tuple[int, str]] = []
        self.flush_timer: asyncio.TimerHandle | None = None

    def datagram_received(self, data: bytes, address) -> None:
        batch = self.pending
        self._take(data, address, batch)
        recvfrom = self.recvfrom
        for _ in range(BATCH_DATAGRAMS - 1):
            try:
                data, address = recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                self.error_received(err)
                if err.errno != errno.ENOBUFS:
                    break
                continue
            self._take(data, address, batch)
        if len(batch) >= BATCH_DATAGRAMS:
            self.flush()
        elif batch and self.flush_timer is None:
            self.flush_timer = asyncio.get_running_loop().call_later(HAND_OVER_DELAY, self.flush)

    def flush(self) -> None:
        if self.flush_timer is not None:
            self.flush_timer.cancel()
            self.flush_timer = None
        batch, self.pending = self.pending, []
        if batch:
            self.deliver(batch)

    def _take(self, data: bytes, address, batch: list) -> None:
        if address and address[0] != 0:
            self.counters.foreign += 1
            return
        self.counters.datagrams += 1
        batch.extend(split_datagram(data))

    def error_received(self, exc: OSError) -> None:
        # The transport goes on reading after this: ENOBUFS is loss to count, not the end of the stream.
        if exc.errno == errno.ENOBUFS:
            self.counters.drops += 1
            return
        self.counters.errors += 1
        if self.counters.errors == 1:
            log.warning("audit netlink socket: receive error %s; reading goes on (later ones are only counted)",
                        exc)


class AuditSocket(AsyncNetlinkSocket):
    """pyroute2's netlink socket for the audit family, bound to the read-only multicast group."""

    def __init__(self, counters: ReaderCounters, deliver: Callable[[list], None],
                 rcvbuf: int = DEFAULT_RCVBUF):
        super().__init__(family=NETLINK_AUDIT, rcvbuf=_kernel_size(rcvbuf))
        self._counters = counters
        self._deliver = deliver

    async def setup_endpoint(self) -> None:
        if getattr(self.local, "transport", None) is not None:
            return
        self.local.transport, self.local.protocol = await self.event_loop.create_datagram_endpoint(
            lambda: AuditProtocol(self.socket, self._counters, self._deliver), sock=self.socket)

    async def bind(self, groups: int = READLOG_MASK, pid: int = 0) -> None:  # type: ignore[override]
        """Join `groups` once, at a port the kernel picks; an OSError (EPERM: no CAP_AUDIT_READ) is raised."""
        await self.setup_endpoint()
        self.socket.bind((pid, groups))

    def grow_receive_buffer(self, size: int) -> None:
        """SO_RCVBUFFORCE passes net.core.rmem_max when we hold CAP_NET_ADMIN; pyroute2 already set SO_RCVBUF.

        journald asks for 128 MiB for the same reason: audit bursts are large and their loss is silent.
        """
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), _kernel_size(size))
        except OSError:
            pass

    @property
    def receive_buffer(self) -> int:
        return self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    @property
    def port(self) -> int:
        """The netlink port the kernel gave this socket (what a sender would address)."""
        return self.socket.getsockname()[0]


def _kernel_size(size: int) -> int:
    # The kernel doubles the value it is given; a value under its minimum is raised to that minimum.
    return max(1, min(int(size), 2**31 - 1))


class AuditNetlinkSource:
    """Iterates `(record type number, text)` pairs from the audit multicast group, and `None` on idle
    ticks (every `tick` seconds without data) so the consumer can close lingering events and check for a
    stop request.

    `open()` starts the reader thread and returns once the socket is bound, or raises AuditUnavailable with
    the reason (no CAP_AUDIT_READ, kernel without audit).
    """

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF, tick: float = 0.25, max_batches: int = QUEUED_BATCHES):
        self.rcvbuf = rcvbuf
        self.tick = tick
        self.max_batches = max_batches
        self.counters = ReaderCounters()
        self.receive_buffer = 0
        self.port = 0
        self._batches: queue.Queue = queue.Queue(max_batches)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: Callable[[], None] | None = None

    # The watcher reads `drops`; tests and the CLI read the others.
    drops = property(lambda self: self.counters.drops)
    foreign = property(lambda self: self.counters.foreign)
    datagrams = property(lambda self: self.counters.datagrams)
    errors = property(lambda self: self.counters.errors)

    def open(self) -> "AuditNetlinkSource":
        if self._thread is not None:
            return self
        self._stop.clear()
        self._batches = queue.Queue(self.max_batches)
        ready: queue.Queue = queue.Queue(1)
        thread = threading.Thread(target=self._read, args=(ready,), name="audit-netlink", daemon=True)
        thread.start()
        failure = ready.get()
        if failure is not None:
            thread.join()
            raise failure
        self._thread = thread
        return self

    # -- the reader thread --------------------------------------------------------------------------------

    def _read(self, ready: queue.Queue) -> None:
        """The reader thread: make and bind the socket, say so on `ready`, then run its loop until stopped."""
        sock = None
        announced = False
        try:
            try:
                sock = AuditSocket(self.counters, self._put_blocking, self.rcvbuf)
                sock.fileno()  # pyroute2 makes the socket on first use: make it here, where a failure is named
            except OSError as err:
                raise AuditUnavailable(_reason(err, "create the audit netlink socket")) from err
            loop = sock.event_loop
            try:
                sock.grow_receive_buffer(self.rcvbuf)
                loop.run_until_complete(sock.bind())
            except OSError as err:
                raise AuditUnavailable(_reason(err, "join the audit multicast group")) from err
            self.receive_buffer, self.port = sock.receive_buffer, sock.port
            stopped = asyncio.Event()
            self._wake = lambda: loop.call_soon_threadsafe(stopped.set)
            if self._stop.is_set():
                stopped.set()
            ready.put(None)
            announced = True
            loop.run_until_complete(stopped.wait())
        except BaseException as err:  # noqa: BLE001 - raised in open(), or in the consumer as the stream's end
            if announced:
                self._put_blocking(err)
            else:
                ready.put(err)
        finally:
            self._wake = None
            if sock is not None:
                sock.close()
            if announced:
                self._put_blocking(None)  # end of stream

    def _put_blocking(self, item) -> None:
        """Queue a batch, waiting while the consumer catches up (the kernel buffer fills meanwhile)."""
        while True:
            try:
                self._batches.put(item, timeout=self.tick)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    # -- the consumer's side -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[int, str] | None]:
        self.open()
        get = self._batches.get
        tick = self.tick
        while not self._stop.is_set():
            try:
                batch = get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            if batch is None:
                break
            if isinstance(batch, BaseException):
                raise batch
            yield from batch
        self.close()

    def stop(self) -> None:
        """Ask the iterator to end; it does within one tick."""
        self._stop.set()
        wake = self._wake
        if wake is not None:
            try:
                wake()
            except RuntimeError:  # the loop closed meanwhile
                pass

    def close(self) -> None:
        self.stop()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(1.0, 4 * self.tick))
        while True:  # what the reader queued last is not kept alive
            try:
                self._batches.get_nowait()
            except queue.Empty:
                break

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()


def _reason(err: OSError, step: str) -> str:
    if err.errno in (errno.EPERM, errno.EACCES):
        return (f"cannot {step}: permission denied; reading audit records needs CAP_AUDIT_READ in the "
                "initial user namespace (and hostNetwork in a pod)")
    if err.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
        return f"cannot {step}: this kernel has no audit support (CONFIG_AUDIT)"
    if err.errno == errno.ECONNREFUSED:
        return f"cannot {step}: the kernel refused the connection (audit is not initialised)"
    return f"cannot {step}: {err.strerror or err}"
