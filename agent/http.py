"""The metrics and health HTTP server of `run` and `controller`: one thread, one selector, bounded.

Why not http.server or prometheus_client's server: they spend a thread and a file descriptor on every
connection for as long as the client keeps it open, with no timeout and a listen backlog of 5. A thousand idle
connections then take every descriptor the process has, and the CSI socket served by the same process fails
with EMFILE. This server:
- holds at most `max_connections` (by default an eighth of RLIMIT_NOFILE, see `connection_cap`), and when full
  closes the connection idle the longest to make room, so a probe still gets in while idle ones are held;
- closes a connection that takes longer than `header_timeout` to send a request head, stays idle longer than
  `idle_timeout` between requests, or takes longer than `write_timeout` to read an answer;
- stops accepting for a moment when accept() fails with EMFILE or ENFILE instead of retrying at once;
- treats a client that goes away (reset, broken pipe) as the end of its connection, not as an error.

`endpoints` answers /metrics, /healthz and /readyz for both `run` and `controller` (paths, codes and bodies are
a contract); the server itself serves any `handler(Request) -> Response` and knows HTTP, not metrics.
"""

from __future__ import annotations

import collections
import errno
import gzip
import logging
import resource
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.exposition import choose_encoder

from agent.errors import InvalidInput

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0  # seconds from a request's first byte (or the connection's start) to the end of its head
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
WRITE_TIMEOUT = 30.0  # seconds the client has to read a whole answer
BACKLOG = 128
MAX_HEAD = 8192  # bytes of request line and headers
ACCEPT_PAUSE = (0.05, 1.0)  # first and longest pause of accepting after EMFILE/ENFILE
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
TEXT = "text/plain; charset=utf-8"


def connection_cap(soft_limit: int) -> int:
    """How many connections the server holds at once: an eighth of the soft file-descriptor limit, between 16
    and 512, so that the rest of the process (CSI calls, mounts, mkfs) keeps most of its descriptors."""
    if soft_limit == resource.RLIM_INFINITY or soft_limit <= 0:
        return 512
    return max(16, min(512, soft_limit // 8))


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case names
    keep_alive: bool


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple = ()

    @classmethod
    def text(cls, status: int, text: str) -> "Response":
        return cls(status, text.encode())


class BadRequest(Exception):
    """A request head this server will not read; `status` is the answer, after which the connection closes."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


def head_end(buffer: bytes | bytearray) -> int:
    """The length of the request head at the start of `buffer` (through its blank line), or -1 if incomplete."""
    ends = [i + n for i, n in ((buffer.find(b"\r\n\r\n"), 4), (buffer.find(b"\n\n"), 2)) if i >= 0]
    return min(ends) if ends else -1


def parse_head(head: bytes) -> Request:
    """A request head (RFC 9112: request line, header fields) -> Request, or BadRequest."""
    lines = head.decode("latin-1").replace("\r\n", "\n").rstrip("\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(400, "malformed header field")
        headers[name.lower()] = value.strip()
    if method not in ("GET", "HEAD"):
        raise BadRequest(405, f"method {method} is not served")
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise BadRequest(400, "a request body is not accepted")
    path, _, query = target.partition("?")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return Request(method, path, parse_qs(query), headers, keep_alive)


def render(response: Response, head_only: bool, keep_alive: bool) -> bytes:
    """The bytes of an HTTP/1.1 answer."""
    reason = HTTPStatus(response.status).phrase
    lines = [f"HTTP/1.1 {response.status} {reason}", f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def metrics_response(registry, request: Request, negotiate: bool = False) -> Response:
    """/metrics: the Prometheus text format. With `negotiate`, what prometheus_client's own server answers:
    OpenMetrics when the Accept header asks for it, `name[]` filtering, gzip when accepted."""
    if not negotiate:
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)
    encoder, content_type = choose_encoder(request.headers.get("accept"))
    if "name[]" in request.query:
        registry = registry.restricted_registry(request.query["name[]"])
    body, headers = encoder(registry), ()
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        body, headers = gzip.compress(body), (("Content-Encoding", "gzip"),)
    return Response(200, body, content_type, headers)


def health_response(problems: list[str]) -> Response:
    """/healthz: 200 "ok" or 503 with one problem per line."""
    if not problems:
        return Response.text(200, "ok\n")
    return Response.text(503, "\n".join(problems) + "\n")


def endpoints(registry, problems: Callable[[], list[str]], ready: Callable[[], bool], negotiate: bool = False):
    """The handler of a process's /metrics (`metrics_response`), /healthz (`problems()`, one per line) and
    /readyz (`ready()`); any other path is 404."""

    def answer(request: Request) -> Response:
        if request.path == "/metrics":
            return metrics_response(registry, request, negotiate)
        if request.path == "/healthz":
            return health_response(problems())
        if request.path == "/readyz":
            return Response.text(200, "ready\n") if ready() else Response.text(503, "not ready\n")
        return Response.text(404, "not found\n")

    return answer


def serve(address: tuple[str, int], handler, name: str) -> "MetricsServer":
    """Start serving `handler` on `address`; an address that cannot be bound is bad input, named by `name`."""
    try:
        return MetricsServer(address, handler).start()
    except OSError as err:
        raise InvalidInput(f"{name}: {err.strerror or err}") from None


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytes = b""
    close_after_write: bool = False
    events: int = selectors.EVENT_READ


class MetricsServer:
    """Serves `handler` on `address` (HOST, PORT) from one thread; `start()`, `server_address`, `stop()`."""

    def __init__(self, address: tuple[str, int], handler, max_connections: int | None = None,
                 header_timeout: float = HEADER_TIMEOUT, idle_timeout: float = IDLE_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, backlog: int = BACKLOG):
        self.handler = handler
        if max_connections is None:
            max_connections = connection_cap(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self.max_connections = max_connections
        self.header_timeout, self.idle_timeout, self.write_timeout = header_timeout, idle_timeout, write_timeout
        self.listener = _listen(address, backlog)
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Least recently active first: the one to close when the server is full.
        self.connections: collections.OrderedDict[socket.socket, _Connection] = collections.OrderedDict()
        self._due = float("inf")  # no connection's deadline is earlier than this
        self._paused_until = 0.0
        self._pause = 0.0
        self._warned = float("-inf")
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        return self.listener.getsockname()[:2]

    def start(self) -> "MetricsServer":
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        self.selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is None:
            self._close_all()
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout)

    # The loop ---------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                wake = min(self._due, self._paused_until or float("inf"))
                timeout = min(60.0, max(0.0, wake - time.monotonic()))
                for key, events in self.selector.select(timeout):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    elif key.fileobj in self.connections:
                        try:
                            self._ready(key.data, events)
                        except Exception:  # noqa: BLE001 - a bug costs that connection, not the server
                            log.exception("metrics server: connection failed")
                            self._close(key.data)
                now = time.monotonic()
                if now >= self._due:
                    self._expire(now)
                if self._paused_until and now >= self._paused_until:
                    self._paused_until = 0.0
                    self.selector.register(self.listener, selectors.EVENT_READ, "listener")
        finally:
            self._close_all()

    def _expire(self, now: float) -> None:
        for conn in [c for c in self.connections.values() if c.deadline <= now]:
            self._close(conn)
        self._due = min((c.deadline for c in self.connections.values()), default=float("inf"))

    def _set_deadline(self, conn: _Connection, seconds: float) -> None:
        conn.deadline = time.monotonic() + seconds
        self._due = min(self._due, conn.deadline)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    # Connections ------------------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):  # a bounded batch, so that a flood does not starve the connections already held
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno in RESOURCE_ERRORS:
                    self._pause_accepting(err)
                    return
                continue  # ECONNABORTED and the like: that client is gone, the next one may not be
            self._pause = 0.0
            if len(self.connections) >= self.max_connections:
                self._close(next(iter(self.connections.values())))  # the one idle the longest
            sock.setblocking(False)
            conn = _Connection(sock, 0.0)
            self._set_deadline(conn, self.header_timeout)
            self.connections[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _pause_accepting(self, err: OSError) -> None:
        """Out of descriptors: leave the pending connections in the backlog for a moment (accept() would fail
        again at once, and a readable listener would spin the loop), longer each time in a row."""
        low, high = ACCEPT_PAUSE
        self._pause = min(high, self._pause * 2 or low)
        self._paused_until = time.monotonic() + self._pause
        self.selector.unregister(self.listener)
        if self._paused_until - self._warned > 60:
            self._warned = self._paused_until
            log.warning("metrics server: cannot accept connections: %s; pausing (holding %d connections)",
                        err.strerror, len(self.connections))

    def _ready(self, conn: _Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE:
            if self._write(conn) and conn.inbuf:
                self._answer(conn)  # a pipelined request that arrived with the last one
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if not conn.inbuf and conn.deadline > time.monotonic() + self.header_timeout:
            self._set_deadline(conn, self.header_timeout)  # an idle connection starts a request
        conn.inbuf += data
        self.connections.move_to_end(conn.sock)
        self._answer(conn)

    def _answer(self, conn: _Connection) -> None:
        """Answer the complete requests in the input buffer, in order, while the answers can be written."""
        while True:
            end = head_end(conn.inbuf)
            if end < 0 and len(conn.inbuf) <= MAX_HEAD:
                return
            if end < 0 or end > MAX_HEAD:
                self._queue(conn, Response.text(431, "request head too large\n"), False, False)
                return
            head, conn.inbuf = bytes(conn.inbuf[:end]), conn.inbuf[end:]
            try:
                request = parse_head(head)
            except BadRequest as err:
                headers = (("Allow", "GET, HEAD"),) if err.status == 405 else ()
                self._queue(conn, Response(err.status, f"{err}\n".encode(), TEXT, headers), False, False)
                return
            try:
                response = self.handler(request)
            except Exception as err:  # noqa: BLE001 - one failed answer must not stop the server
                log.error("metrics server: %s %s failed: %s", request.method, request.path, err)
                response = Response.text(500, "internal error\n")
            if not self._queue(conn, response, request.method == "HEAD", request.keep_alive) or not conn.inbuf:
                return

    def _queue(self, conn: _Connection, response: Response, head_only: bool, keep_alive: bool) -> bool:
        conn.outbuf = render(response, head_only, keep_alive)
        conn.close_after_write = not keep_alive
        self._set_deadline(conn, self.write_timeout)
        return self._write(conn)

    def _write(self, conn: _Connection) -> bool:
        """Send what is pending; True when all of it went and the connection stays open for another request."""
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client went away: that ends the connection, it is no error of ours
            self._close(conn)
            return False
        conn.outbuf = conn.outbuf[sent:]
        if sent:
            self.connections.move_to_end(conn.sock)
        if conn.outbuf:
            self._want(conn, selectors.EVENT_WRITE)
            return False
        if conn.close_after_write:
            self._close(conn)
            return False
        self._set_deadline(conn, self.header_timeout if conn.inbuf else self.idle_timeout)
        self._want(conn, selectors.EVENT_READ)
        return True

    def _want(self, conn: _Connection, events: int) -> None:
        if conn.events != events:
            conn.events = events
            self.selector.modify(conn.sock, events, conn)

    def _close(self, conn: _Connection) -> None:
        if self.connections.pop(conn.sock, None) is None:
            return
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _close_all(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()
        self.selector.close()


def _listen(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listening, non-blocking TCP socket on HOST, PORT (IPv4 or IPv6, whichever HOST is)."""
    host, port = address
    family, kind, proto, _, sockaddr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
