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

Why the standard library socket and not pyroute2's `NetlinkSocket` (checked with pyroute2 0.9.7, and 0.7.2,
the python3-pyroute2 of the Debian guest that runs tests/enforcing):

- reading through it loses what an audit reader needs. In 0.9 `get()` runs on an asyncio core: a receive
  error such as ENOBUFS is stored as the socket's status, and every later `get()` raises it again, though
  new records are waiting; `get()` has no timeout, so `stop()` could not return within a tick; its queue
  drops the sender address, so records sent by a local process could not be told from the kernel's;
- using it only to make the socket gains nothing: it runs `socket(AF_NETLINK, SOCK_DGRAM, 9)`, and its
  `bind()` tries port after port and turns EPERM (no CAP_AUDIT_READ) into `KeyError('no free address
  available')`. Reading the socket under it means reaching into internals that differ between 0.7 and
  0.9 (`_sock`; a per-thread `asyncore.socket` that makes a new, unbound socket in the reader thread)
  while an idle event loop keeps a reader registered on the same descriptor;
- its message classes parse a header about nine times slower than `split_datagram` (4.5 µs against 0.5 µs
  per datagram), on the path that carries every record.

A plain `socket.socket(AF_NETLINK, SOCK_RAW, NETLINK_AUDIT)` keeps ENOBUFS countable, has a receive timeout
and gives the sender's port, in a few lines and without a thread or an event loop.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from typing import Iterator

from agent.errors import AuditUnavailable

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1  # enum audit_nlgrps { AUDIT_NLGRP_NONE, AUDIT_NLGRP_READLOG }
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
_HEADER = struct.Struct("=LHHLL")  # struct nlmsghdr: len, type, flags, seq, pid
# MAX_AUDIT_MESSAGE_LENGTH is 8970; a datagram holds one record, so 64 KiB leaves a wide margin.
RECV_SIZE = 65536
DEFAULT_RCVBUF = 8 * 1024 * 1024


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


class AuditNetlinkSource:
    """Iterates `(record type number, text)` pairs from the audit multicast group, and `None` on idle
    ticks (every `tick` seconds without data) so the consumer can close lingering events and check for a
    stop request.

    `open()` raises AuditUnavailable with the reason (no CAP_AUDIT_READ, kernel without audit).
    """

    def __init__(self, rcvbuf: int = DEFAULT_RCVBUF, tick: float = 0.25):
        self.rcvbuf = rcvbuf
        self.tick = tick
        self.drops = 0  # ENOBUFS seen: the kernel dropped records for this socket
        self.foreign = 0  # messages not sent by the kernel, ignored
        self.datagrams = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def open(self) -> "AuditNetlinkSource":
        if self._sock is not None:
            return self
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_AUDIT)
        except OSError as err:
            raise AuditUnavailable(_reason(err, "create the audit netlink socket")) from err
        try:
            self._grow_buffer(sock)
            sock.bind((0, AUDIT_NLGRP_READLOG))
            sock.settimeout(self.tick)
        except OSError as err:
            sock.close()
            raise AuditUnavailable(_reason(err, "join the audit multicast group")) from err
        self._sock = sock
        self._stop.clear()
        return self

    def _grow_buffer(self, sock: socket.socket) -> None:
        # SO_RCVBUFFORCE passes net.core.rmem_max when we hold CAP_NET_ADMIN; fall back to SO_RCVBUF.
        # journald asks for 128 MiB for the same reason: audit bursts are large and loss is silent.
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, self.rcvbuf)
                return
            except OSError:
                continue

    @property
    def receive_buffer(self) -> int:
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) if self._sock else 0

    def __iter__(self) -> Iterator[tuple[int, str] | None]:
        self.open()
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data, address = sock.recvfrom(RECV_SIZE)
            except socket.timeout:
                yield None
                continue
            except InterruptedError:
                continue
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.drops += 1
                    continue
                if self._stop.is_set() or err.errno == errno.EBADF:
                    break
                raise
            if address and address[0] != 0:
                self.foreign += 1
                continue
            self.datagrams += 1
            for item in split_datagram(data):
                yield item
        self.close()

    def stop(self) -> None:
        """Ask the iterator to end; it does within one tick."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

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
