"""agent/avc/netlink.py (a real NETLINK_AUDIT socket), filesource.py (rotation, truncation) and watcher.py
(with the metrics it counts into)."""

import asyncio
import errno
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.avc.attribution import Attributor
from agent.avc.counting import AvcCounts
from agent.avc.filesource import AuditLogFollower, read_lines
from agent.avc.netlink import (AUDIT_NLGRP_READLOG, BATCH_DATAGRAMS, HAND_OVER_DELAY, NETLINK_AUDIT,
                               AuditNetlinkSource, AuditProtocol, ReaderCounters, split_datagram)
from agent.avc.poddir import PodDirectory, PodRef
from agent.avc.watcher import AvcWatcher
from agent.errors import AuditUnavailable
from agent.metrics import AvcMetrics

AUDIT_USER_AVC = 1107
SCON = "system_u:system_r:container_t:s0:c1,c2"


def avc_text(comm="probe", perms="read", target="system_u:object_r:etc_t:s0", permissive=0):
    return (f'avc:  denied  {{ {perms} }} for pid=1 comm="{comm}" scontext={SCON} tcontext={target} '
            f"tclass=file permissive={permissive}")


# --- netlink: pure datagram splitting ----------------------------------------------------------------

def nlmsg(mtype, text, seq=0, pid=0):
    payload = text.encode() + b"\0"
    header = struct.pack("=LHHLL", 16 + len(payload), mtype, 0, seq, pid)
    raw = header + payload
    return raw + b"\0" * ((4 - len(raw) % 4) % 4)


def test_split_datagram_walks_aligned_messages():
    data = nlmsg(1400, "audit(1.0:1): " + avc_text()) + nlmsg(1, "") + nlmsg(1300, "audit(1.0:1): arch=c000003e")
    items = split_datagram(data)
    assert [t for t, _ in items] == [1400, 1300]
    assert items[0][1].startswith("audit(1.0:1): avc:")


def test_split_datagram_survives_truncation_and_bad_lengths():
    good = nlmsg(1400, "audit(1.0:1): x")
    assert split_datagram(good[:10]) == []
    assert split_datagram(struct.pack("=LHHLL", 3, 1400, 0, 0, 0) + b"junk") == []
    assert split_datagram(good[:-4])[0][0] == 1400  # a short tail still gives its text


# --- netlink: the real socket ------------------------------------------------------------------------

def open_or_skip(**kwargs):
    source = AuditNetlinkSource(**kwargs)
    try:
        return source.open()
    except AuditUnavailable as err:
        cause = err.__cause__
        if isinstance(cause, OSError) and cause.errno in (errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT,
                                                           errno.EAFNOSUPPORT, errno.ECONNREFUSED):
            pytest.skip(f"audit multicast group not readable here: {err}")
        raise


def inject_user_avc(text):
    """Send a USER_AVC the way a user-space object manager does; the kernel relays it to the group."""
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    try:
        sender.bind((0, 0))
        payload = text.encode() + b"\0"
        flags = 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
        sender.sendto(struct.pack("=LHHLL", 16 + len(payload), AUDIT_USER_AVC, flags, 1, 0) + payload, (0, 0))
        sender.settimeout(1)
        try:
            ack = sender.recv(4096)
        except socket.timeout:
            return
        # NLMSG_ERROR with a negative errno means the kernel refused (no CAP_AUDIT_WRITE).
        if len(ack) >= 20 and struct.unpack_from("=H", ack, 4)[0] == 2:
            code = struct.unpack_from("=i", ack, 16)[0]
            if code < 0:
                pytest.skip(f"cannot inject USER_AVC records: {os.strerror(-code)}")
    finally:
        sender.close()


def test_netlink_socket_binds_and_stops_cleanly():
    source = open_or_skip(tick=0.05)
    assert source.receive_buffer > 0
    watcher = AvcWatcher(source).start()
    time.sleep(0.2)
    started = time.monotonic()
    watcher.stop(timeout=2)
    assert time.monotonic() - started < 1.5
    assert not watcher.running and watcher.error is None


def test_netlink_delivers_a_user_avc_record():
    source = open_or_skip(tick=0.05)
    seen = queue.Queue()
    marker = f"probe{os.getpid()}"
    watcher = AvcWatcher(source, callback=lambda item: seen.put(item) if item.denial.comm == marker else None)
    watcher.assembler.linger = 0.0
    watcher.start()
    try:
        inject_user_avc(avc_text(comm=marker))
        item = seen.get(timeout=5)
    finally:
        watcher.stop()
    assert item.denial.record_type == "USER_AVC"
    assert item.denial.permissions == ("read",) and item.denial.source_type == "container_t"
    assert source.foreign == 0


def test_netlink_ignores_messages_not_from_the_kernel():
    # A process may send to our port directly; only port 0 (the kernel) is trusted.
    source = open_or_skip(tick=0.05)
    port = source.port
    marker = f"direct{os.getpid()}"
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    try:
        sender.bind((0, 0))
        try:
            sender.sendto(nlmsg(1400, "audit(1.0:1): " + avc_text(comm=marker)), (port, 0))
        except OSError as err:
            pytest.skip(f"cannot send between netlink audit sockets: {err}")
        # The multicast group is the machine's: other processes' records may arrive too, so the check is that
        # ours, which did not come from the kernel, is not among them. The first idle tick comes after it.
        got = []
        for item in source:
            if item is None:
                break
            got.append(item)
        assert not [item for item in got if marker in item[1]]
        assert source.foreign == 1
    finally:
        sender.close()
        source.close()


def test_netlink_overflow_reaches_the_enobufs_metric():
    source = open_or_skip(rcvbuf=1, tick=0.05, max_batches=1)
    registry = CollectorRegistry()
    watcher = AvcWatcher(source, metrics=AvcCounts(AvcMetrics(registry)))
    for _ in range(300):
        inject_user_avc(avc_text(comm=f"flood{os.getpid()}"))
    watcher.start()
    # The kernel's audit thread may deliver late on a loaded machine, and the watcher may keep up with a late
    # trickle: inject more until the tiny receive buffer overflows once (bounded, so a kernel that never
    # reports ENOBUFS fails the test instead of hanging it).
    give_up = time.monotonic() + 120
    while source.drops == 0:
        assert time.monotonic() < give_up, "no ENOBUFS on a 1-byte receive buffer in 120 s"
        for _ in range(50):
            inject_user_avc(avc_text(comm=f"flood{os.getpid()}"))
        time.sleep(0.05)
    watcher.stop(timeout=None)  # the watcher moves the source's counters into the metrics as it ends
    assert source.drops >= 1
    assert registry.get_sample_value("selinux_audit_netlink_enobufs_total") == source.drops


def netlink_socket_drops(port: int) -> int:
    """The kernel's own count of datagrams it could not queue for the audit netlink socket bound to `port`
    (sk_drops, the Drops column of /proc/net/netlink)."""
    with open("/proc/net/netlink", encoding="ascii") as handle:
        for line in handle:
            fields = line.split()
            if fields[1] == str(NETLINK_AUDIT) and fields[2] == str(port):
                return int(fields[8])
    raise AssertionError(f"no audit netlink socket with port {port} in /proc/net/netlink")


def test_netlink_overflow_is_counted_and_reading_goes_on():
    # A consumer that does not read: the reader holds at most `max_batches` queued batches and one it cannot hand
    # over, then stops reading, so the kernel buffer overflows instead of this process's memory growing. The
    # kernel reports the overflow (ENOBUFS) on the next read, once the consumer reads again; new records still
    # arrive after it.
    # Nothing here depends on timing or on being the only audit producer: the multicast group is the machine's,
    # and on a loaded machine other processes' records fill the reader's batches (so none of ours need be held)
    # and the kernel's audit queue delays delivery (so a fixed pause may end before the overflow). The test waits
    # for the kernel's word that it dropped a datagram for this socket, and injects a late record until one comes.
    source = open_or_skip(rcvbuf=1, tick=0.05, max_batches=1)
    # A batch is handed over once it holds BATCH_DATAGRAMS records, and up to BATCH_DATAGRAMS - 1 more join it
    # in the read that fills it.
    most_held = (source.max_batches + 1) * (2 * BATCH_DATAGRAMS - 1)
    marker = f"held{os.getpid()}"
    sent = 0
    try:
        # Enough to exceed what the reader may hold, and on until the kernel has dropped one for us.
        while sent < most_held + BATCH_DATAGRAMS or netlink_socket_drops(source.port) == 0:
            inject_user_avc(avc_text(comm=marker))
            sent += 1
            assert sent < 100 * most_held, "the kernel never dropped a record for a reader that stopped reading"
        assert source.datagrams <= most_held  # the reader stopped: the kernel buffer took the rest
        late = f"late{os.getpid()}"
        seen_late = injected_late = since_injection = 0
        for item in source:
            if item is not None and f'comm="{late}"' in item[1]:
                seen_late += 1
                break
            since_injection += 1
            # Once the held records are read, a late one; again now and then (other processes' records may keep
            # the stream busy, and a late record sent while the buffer was still full may itself be dropped).
            if item is None or since_injection >= BATCH_DATAGRAMS:
                assert injected_late < 1000, "no late record came through after the overflow"
                inject_user_avc(avc_text(comm=late))
                injected_late += 1
                since_injection = 0
        assert seen_late and source.drops >= 1
    finally:
        source.close()


def test_audit_protocol_counts_errors_and_batches_records():
    # The protocol alone, on an idle non-blocking socket: what it is handed goes into one batch after the
    # hand-over delay; a foreign sender is dropped; receive errors are counted and never end the stream.
    delivered = []
    idle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    idle.setblocking(False)
    counters = ReaderCounters()
    protocol = AuditProtocol(idle, counters, delivered.append)

    async def feed():
        protocol.datagram_received(nlmsg(1400, "audit(1.0:1): " + avc_text()), (0, 0))
        protocol.datagram_received(nlmsg(1400, "audit(1.0:2): " + avc_text()), (4242, 0))
        protocol.datagram_received(nlmsg(1300, "audit(1.0:1): arch=c000003e syscall=257"), (0, 0))
        assert delivered == []  # waiting for more
        await asyncio.sleep(HAND_OVER_DELAY * 4)

    try:
        asyncio.run(feed())
        protocol.error_received(OSError(errno.ENOBUFS, "No buffer space available"))
        protocol.error_received(OSError(errno.EIO, "I/O error"))
        protocol.error_received(OSError(errno.EIO, "I/O error"))
    finally:
        idle.close()
    assert [[t for t, _ in batch] for batch in delivered] == [[1400, 1300]]
    assert (counters.datagrams, counters.foreign, counters.drops, counters.errors) == (2, 1, 1, 2)


def test_netlink_open_and_close_leave_no_thread_or_descriptor():
    def descriptors():
        return len(os.listdir("/proc/self/fd"))

    open_or_skip(tick=0.05).close()  # first use imports and sets up pyroute2
    before = descriptors()
    for _ in range(5):
        source = open_or_skip(tick=0.05)
        assert any(t.name == "audit-netlink" for t in threading.enumerate())
        source.close()
    assert not any(t.name == "audit-netlink" for t in threading.enumerate())
    assert descriptors() == before


@pytest.mark.root
def test_netlink_without_cap_audit_read_names_the_capability():
    # As `nobody` the bind to the group is refused with EPERM; the error must say what is missing.
    code = ("import os, sys; os.setgid(65534); os.setuid(65534)\n"
            "from agent.avc.netlink import AuditNetlinkSource\n"
            "from agent.errors import AuditUnavailable\n"
            "try:\n    AuditNetlinkSource().open()\n"
            "except AuditUnavailable as err:\n    print(type(err.__cause__).__name__, err); sys.exit(0)\n"
            "sys.exit(1)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[3])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PermissionError cannot join the audit multicast group")
    assert "CAP_AUDIT_READ" in result.stdout


class DroppingSource:
    """A source whose `drops` grows between items, as the netlink source's does on ENOBUFS."""

    def __init__(self, steps):
        self.steps = steps
        self.drops = 0

    def __iter__(self):
        for added, item in self.steps:
            self.drops += added
            yield item


def test_enobufs_metric_gets_each_drop_once():
    registry = CollectorRegistry()
    value = registry.get_sample_value
    seen = []
    source = DroppingSource([(2, (None, LOG[0])), (0, None), (3, None), (0, (None, LOG[2])), (1, None)])
    watcher = AvcWatcher(source, metrics=AvcCounts(AvcMetrics(registry)),
                         callback=lambda item: seen.append(value("selinux_audit_netlink_enobufs_total")))
    watcher.run()
    # Each denial is handed on at an idle tick, before that tick moves the drops: the first sees none, the
    # second the 2 + 3 of the ticks before it. The counter adds differences, so it ends at 6, not at a sum of
    # the running totals (2 + 5 + 6).
    assert seen == [0.0, 5.0]
    assert value("selinux_audit_netlink_enobufs_total") == 6


def test_constants():
    assert NETLINK_AUDIT == 9 and AUDIT_NLGRP_READLOG == 1


# --- file source -------------------------------------------------------------------------------------

def follow(path, **kwargs):
    follower = AuditLogFollower(str(path), tick=0.02, **kwargs)
    lines = queue.Queue()

    def run():
        for item in follower:
            if item is not None:
                lines.put(item[1])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return follower, lines, thread


def take(lines, count, timeout=5):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        try:
            out.append(lines.get(timeout=0.1))
        except queue.Empty:
            pass
    return out


def test_follower_starts_at_end_and_survives_rotation_and_truncation(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("old-1\nold-2\n")
    follower, lines, thread = follow(log)
    time.sleep(0.1)
    with open(log, "a") as handle:
        handle.write("new-1\npart")
        handle.flush()
        time.sleep(0.1)
        handle.write("ial\n")
    assert take(lines, 2) == ["new-1", "partial"]
    # auditd-style rotation: rename, then a new file (with a last line written to the old one first).
    with open(log, "a") as handle:
        handle.write("before-rotate\n")
    os.rename(log, tmp_path / "audit.log.1")
    log.write_text("rotated-1\n")
    assert take(lines, 2) == ["before-rotate", "rotated-1"]
    assert follower.rotations == 1
    # copytruncate-style: the same inode emptied in place.
    with open(log, "r+") as handle:
        handle.truncate(0)
    time.sleep(0.1)
    log.write_text("after-truncate\n")
    assert take(lines, 1) == ["after-truncate"]
    assert follower.truncations == 1
    follower.stop()
    thread.join(2)
    assert not thread.is_alive()


def test_follower_from_beginning_and_late_file(tmp_path):
    log = tmp_path / "audit.log"
    follower, lines, thread = follow(log, from_beginning=True)
    time.sleep(0.1)
    log.write_text("first\nsecond\n")
    assert take(lines, 2) == ["first", "second"]
    follower.stop()
    thread.join(2)


def test_read_lines_once(tmp_path):
    log = tmp_path / "audit.log"
    log.write_bytes(b"a\r\nb\xff\n")
    assert list(read_lines(str(log))) == ["a", "b\ufffd"]
    with pytest.raises(AuditUnavailable):
        list(read_lines(str(tmp_path / "missing")))


# --- watcher and metrics -----------------------------------------------------------------------------

LOG = [
    f"type=AVC msg=audit(1.000:1): {avc_text(comm='a', perms='read open')}",
    "type=SYSCALL msg=audit(1.000:1): arch=c000003e syscall=257 success=no exit=-13 pid=1 comm=\"a\"",
    f"type=AVC msg=audit(1.000:2): {avc_text(comm='b', permissive=1)}",
    "not an audit line",
    f"type=AVC msg=audit(1.000:3): {avc_text(comm='c').replace('denied', 'granted')}",
]


def test_watcher_feeds_metrics_and_callback(tmp_path):
    registry = CollectorRegistry()
    metrics = AvcCounts(AvcMetrics(registry))
    pods = PodDirectory([PodRef("shop", "web-1", "uid-1", "s0:c1,c2", "web")])
    seen = []
    watcher = AvcWatcher([(None, line) for line in LOG], attributor=Attributor(str(tmp_path), pods=pods),
                         metrics=metrics, callback=seen.append)
    watcher.run()
    assert [item.denial.comm for item in seen] == ["a", "b", "c"]
    assert all(item.attribution.pod == "web-1" for item in seen)
    labels = dict(namespace="shop", pod="web-1", container="", source_type="container_t", target_type="etc_t",
                  tclass="file", permission="read", permissive="0")
    value = registry.get_sample_value
    assert value("selinux_avc_denials_total", labels) == 1
    assert value("selinux_avc_denials_total", {**labels, "permission": "open"}) == 1
    assert value("selinux_avc_denials_total", {**labels, "permissive": "1"}) == 1
    assert value("selinux_avc_records_total", {"type": "AVC"}) == 3
    assert value("selinux_avc_records_total", {"type": "SYSCALL"}) == 1
    assert value("selinux_avc_parse_errors_total") == 1
    text = generate_latest(registry).decode()
    assert "s0:c1" not in text  # categories never become label values


def test_unattributed_reasons_are_counted(tmp_path):
    registry = CollectorRegistry()
    watcher = AvcWatcher([(None, LOG[0])], attributor=Attributor(str(tmp_path)),
                         metrics=AvcCounts(AvcMetrics(registry)))
    watcher.run()
    assert registry.get_sample_value("selinux_avc_unattributed_total", {"reason": "pid_gone"}) == 1


def test_callback_errors_do_not_stop_the_watcher():
    def broken(item):
        raise RuntimeError("consumer bug")

    watcher = AvcWatcher([(None, line) for line in LOG], callback=broken)
    watcher.run()
    assert watcher.callback_errors == 3


def test_watcher_thread_over_a_file(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text("")
    seen = queue.Queue()
    source = AuditLogFollower(str(log), tick=0.02)
    watcher = AvcWatcher(source, callback=seen.put)
    watcher.assembler.linger = 0.0
    watcher.start()
    time.sleep(0.1)
    with open(log, "a") as handle:
        handle.write(LOG[0] + "\n")
    item = seen.get(timeout=5)
    watcher.stop()
    assert item.denial.permissions == ("read", "open") and not watcher.running


def test_a_callback_stopping_the_watcher_ends_it_after_the_record():
    seen = []

    def first_two(item):
        seen.append(item)
        if len(seen) == 2:
            raise StopIteration

    lines = [f"type=AVC msg=audit(1.000:{n}): {avc_text()}" for n in range(100)]
    watcher = AvcWatcher([(None, line) for line in lines], callback=first_two)
    watcher.assembler.max_pending = 1
    watcher.run()
    # The record that completed the second denial is the last one read; finish() still hands on what it
    # closes, as before.
    assert len(seen) == 3 and watcher.assembler.stats.lines == 3
