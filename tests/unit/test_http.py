"""agent/http.py over real sockets: exact answers, keep-alive, timeouts, the connection cap with eviction,
running out of descriptors, and clients that vanish mid-answer."""

import contextlib
import logging
import os
import resource
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.http import BadRequest, MetricsServer, Response, connection_cap, parse_head
from tests.polling import wait_for
from tests.unit.test_http_flood import cpu_seconds, http_get

ROOT = Path(__file__).resolve().parents[2]


def answer(request):
    if request.path == "/healthz":
        return Response.text(200, "ok\n")
    if request.path == "/big":
        return Response(200, b"x" * (8 << 20))
    if request.path == "/boom":
        raise RuntimeError("handler bug")
    return Response.text(404, "not found\n")


@pytest.fixture
def serve():
    servers = []

    def start(**options):
        server = MetricsServer(("127.0.0.1", 0), answer, **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data`, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def closed_by_server(conn: socket.socket, timeout: float = 5.0) -> bool:
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except OSError:
        return False


def test_answers_carry_status_type_length_and_body(serve):
    port = serve().server_address[1]
    got = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n"
                   b"Connection: close\r\n\r\nok\n")
    head = exchange(port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
    assert head.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")
    assert exchange(port, b"GET /nothing HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 404 Not Found")
    refused = exchange(port, b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert refused.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in refused
    assert exchange(port, b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert exchange(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert exchange(port, b"GET /boom HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 500 ")
    assert http_get(port, "/healthz")[:2] == (200, "ok\n")


def test_keep_alive_and_pipelined_requests_are_answered_in_order(serve):
    port = serve().server_address[1]
    burst = b"GET /healthz HTTP/1.1\r\n\r\n" * 1000 + b"GET /nothing HTTP/1.1\r\nConnection: close\r\n\r\n"
    got = exchange(port, burst, timeout=30)
    assert got.count(b"HTTP/1.1 200 OK") == 1000
    assert got.rindex(b"HTTP/1.1 404") > got.rindex(b"HTTP/1.1 200")


def test_slow_and_idle_connections_are_closed(serve):
    port = serve(header_timeout=0.3, idle_timeout=0.6).server_address[1]
    with socket.create_connection(("127.0.0.1", port)) as silent, \
            socket.create_connection(("127.0.0.1", port)) as slow, \
            socket.create_connection(("127.0.0.1", port)) as kept:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # and never the rest
        kept.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        assert closed_by_server(silent) and closed_by_server(slow) and closed_by_server(kept)


def test_a_full_server_closes_the_longest_idle_connection_for_a_new_one(serve):
    server = serve(max_connections=4)
    port = server.server_address[1]
    idle = []
    for index in range(4):
        idle.append(socket.create_connection(("127.0.0.1", port)))
        assert wait_for(lambda: len(server.connections) == index + 1)
    idle[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")  # the oldest becomes the most recently active
    assert idle[0].recv(4096).startswith(b"HTTP/1.1 200")
    try:
        assert http_get(port, "/healthz")[:2] == (200, "ok\n")
        assert closed_by_server(idle[1]), "the connection idle the longest makes room"
        assert len(server.connections) <= 4
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert idle[0].recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for conn in idle:
            conn.close()


def test_clients_that_reset_mid_answer_are_no_error(serve, caplog):
    server = serve()
    port = server.server_address[1]
    caplog.set_level(logging.DEBUG, logger="agent.http")
    for _ in range(20):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    assert http_get(port, "/healthz")[:2] == (200, "ok\n")
    assert wait_for(lambda: len(server.connections) == 0)
    assert not [r for r in caplog.records if r.name == "agent.http"]


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(tmp_path):
    """A process whose descriptors are all taken: accept() fails with EMFILE while clients wait. The server
    must not spin on the readable listener, and must serve again once descriptors are free."""
    script = textwrap.dedent("""
        import os, resource, sys
        from agent.http import MetricsServer, Response
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        server = MetricsServer(("127.0.0.1", 0), lambda r: Response.text(200, "ok\\n")).start()
        hoard = []
        try:
            while True:
                hoard.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print(server.server_address[1], flush=True)
        sys.stdin.readline()
        for fd in hoard:
            os.close(fd)
        print("freed", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    clients = []
    try:
        port = int(child.stdout.readline())
        for _ in range(10):
            conn = socket.socket()
            conn.setblocking(False)
            conn.connect_ex(("127.0.0.1", port))
            clients.append(conn)
        before = cpu_seconds(child.pid)
        assert not wait_for(lambda: child.poll() is not None, timeout=2)
        spent = cpu_seconds(child.pid) - before
        print(f"\nCPU time over 2 s with accept() failing with EMFILE: {spent:.2f} s")
        assert spent < 0.5
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "freed"
        assert wait_for(lambda: http_get(port, "/healthz", 2)[0] == 200, timeout=10)
    finally:
        for conn in clients:
            conn.close()
        with contextlib.suppress(OSError):
            child.stdin.close()
        child.wait(10)
    stderr = child.stderr.read()
    assert "Traceback" not in stderr and stderr.count("cannot accept connections") == 1


def test_connection_cap_leaves_most_descriptors_to_the_rest_of_the_process():
    assert connection_cap(1024) == 128
    assert connection_cap(64) == 16
    assert connection_cap(1 << 20) == 512
    assert connection_cap(resource.RLIM_INFINITY) == 512


@pytest.mark.parametrize("head, keep_alive", [
    (b"GET /x HTTP/1.1\r\n\r\n", True),
    (b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET /x HTTP/1.0\r\n\r\n", False),
    (b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive_follows_the_http_version(head, keep_alive):
    assert parse_head(head).keep_alive is keep_alive


@pytest.mark.parametrize("head, status", [
    (b"GET /x\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET /x HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"DELETE /x HTTP/1.1\r\n\r\n", 405),
    (b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
])
def test_heads_that_are_refused(head, status):
    with pytest.raises(BadRequest) as refused:
        parse_head(head)
    assert refused.value.status == status


def test_query_is_split_from_the_path():
    request = parse_head(b"GET /metrics?name[]=a&name[]=b HTTP/1.1\r\nAccept: text/plain\r\n\r\n")
    assert (request.path, request.query, request.headers) == ("/metrics", {"name[]": ["a", "b"]},
                                                              {"accept": "text/plain"})


def test_the_endpoints_of_run_and_controller(serve):
    """One answer for both processes: /metrics (the text format, or negotiated as prometheus_client's server
    does), /healthz with its problems, /readyz, and 404 elsewhere."""
    import gzip

    from prometheus_client import CollectorRegistry, Gauge

    from agent.http import endpoints

    registry = CollectorRegistry()
    Gauge("selinux_mount_agent_selinux_enabled", "1 when SELinux is enabled.", registry=registry).set(1)
    problems, ready = [], [False]
    plain = endpoints(registry, lambda: problems, lambda: ready[0])
    negotiated = endpoints(registry, list, lambda: True, negotiate=True)
    for handler in (plain, negotiated):
        server = MetricsServer(("127.0.0.1", 0), handler).start()
        try:
            port = server.server_address[1]
            assert exchange(port, b"GET /nothing HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nnot found\n")
            assert exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n").endswith(b"\r\n\r\nok\n")
            assert b"selinux_mount_agent_selinux_enabled 1.0\n" in exchange(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            openmetrics = exchange(port, b"GET /metrics HTTP/1.0\r\nAccept: application/openmetrics-text; "
                                         b"version=1.0.0\r\nAccept-Encoding: gzip\r\n\r\n")
            head, body = openmetrics.split(b"\r\n\r\n", 1)
            if handler is negotiated:
                assert b"Content-Encoding: gzip" in head and gzip.decompress(body).endswith(b"# EOF\n")
            else:
                assert b"Content-Type: text/plain; version=" in head and not body.endswith(b"# EOF\n")
        finally:
            server.stop()
    server = MetricsServer(("127.0.0.1", 0), plain).start()
    try:
        port = server.server_address[1]
        assert exchange(port, b"GET /readyz HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        ready[0] = True
        got = exchange(port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"\r\n\r\nready\n")
        problems.append("csi: socket gone")
        got = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503 ") and got.endswith(b"\r\n\r\ncsi: socket gone\n")
    finally:
        server.stop()


def test_an_address_that_cannot_be_bound_is_one_line_naming_the_option(serve):
    from agent.errors import InvalidInput
    from agent.http import serve as serve_on

    taken = serve().server_address
    with pytest.raises(InvalidInput, match=r"^--metrics-address 127\.0\.0\.1:\d+: Address already in use$"):
        serve_on(taken, answer, f"--metrics-address 127.0.0.1:{taken[1]}")
