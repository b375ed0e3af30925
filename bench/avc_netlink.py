"""Benchmark of the live audit reader: records per CPU second read from the kernel's audit multicast group.

Three readers take the same load, one at a time, each in a process of its own:

- `ours`: `agent.avc.netlink.AuditNetlinkSource`, pyroute2's `AsyncNetlinkSocket` with the audit protocol,
  a reader thread and batches handed to the consumer;
- `plain-socket`: a standard-library `AF_NETLINK` socket read one datagram per `recvfrom`, the way journald
  reads the group;
- `pyroute2-get`: pyroute2's stock `NetlinkSocket` bound to the group and read with `get()`, with a marshal
  that keeps the text payload.

The load is USER_AVC records sent to the kernel through a second audit socket (needs CAP_AUDIT_WRITE, not
SELinux); the kernel relays each one to the group, as it does the AVC records of an SELinux node. A reader
counts the records it received and the ENOBUFS it saw, and stops one second after the last record. CPU time
is the reader process's own, from the moment it was bound to its last record.

    sudo .venv/bin/python bench/avc_netlink.py [--records 200000] [--rounds 3] [--output docs/avc-netlink-benchmark.md]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import platform
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETLINK_AUDIT = 9
AUDIT_USER_AVC = 1107
READERS = ("ours", "plain-socket", "pyroute2-get")
IDLE_END = 1.0


# --- the readers (run in a child process) -----------------------------------------------------------------

class Tally:
    """What a reader has seen; a watchdog thread reports it once the stream has been idle for a second."""

    def __init__(self):
        self.records = 0
        self.drops = 0
        self.last = 0.0
        self.start_cpu = 0.0

    def ready(self) -> None:
        self.start_cpu = _cpu()
        print("ready", flush=True)
        threading.Thread(target=self._watch, daemon=True).start()

    def seen(self, count: int = 1) -> None:
        self.records += count

    def _watch(self) -> None:
        # Polls instead of timing each record, so that the readers pay nothing for being watched; the CPU
        # time taken when the count stopped moving includes at most one poll interval of idle reader.
        counted, cpu = 0, 0.0
        while True:
            time.sleep(0.1)
            if self.records != counted:
                counted, cpu, self.last = self.records, _cpu(), time.monotonic()
            elif counted and time.monotonic() - self.last > IDLE_END:
                print(json.dumps({"records": counted, "drops": self.drops, "cpu": cpu - self.start_cpu}),
                      flush=True)
                os._exit(0)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_ours(tally: Tally) -> None:
    from agent.avc.netlink import AuditNetlinkSource

    source = AuditNetlinkSource(tick=0.1).open()
    tally.ready()
    for item in source:
        if item is not None:
            tally.seen()
        tally.drops = source.drops


def read_plain_socket(tally: Tally) -> None:
    from agent.avc.netlink import split_datagram

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    try:  # the same buffer as ours: SO_RCVBUFFORCE passes net.core.rmem_max with CAP_NET_ADMIN
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 * 1024 * 1024)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind((0, 1))
    sock.settimeout(0.1)
    tally.ready()
    while True:
        try:
            data, address = sock.recvfrom(65536)
        except socket.timeout:
            continue
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                tally.drops += 1
                continue
            raise
        if address[0] == 0:
            for _item in split_datagram(data):
                tally.seen()


def read_pyroute2_get(tally: Tally) -> None:
    from pyroute2.netlink import nlmsg
    from pyroute2.netlink.nlsocket import Marshal, NetlinkSocket

    class TextMarshal(Marshal):
        def is_enough(self, _msg) -> bool:
            return False

        def parse(self, data, seq=None, callback=None, skip_alien_seq=False):
            offset = 0
            while offset + 16 <= len(data):
                length, mtype = struct.unpack_from("=LH", data, offset)
                msg = nlmsg(data, offset=offset)
                msg.decode()
                msg["header"]["type"] = mtype
                msg["text"] = data[offset + 16:offset + length].rstrip(b"\0").decode("utf-8", "replace")
                yield msg
                offset += (max(length, 16) + 3) & ~3

    sock = NetlinkSocket(family=NETLINK_AUDIT, rcvbuf=8 * 1024 * 1024)
    sock.set_marshal(TextMarshal())
    sock.bind(groups=1)
    tally.ready()
    while True:
        try:
            messages = sock.get()
        except OSError as err:
            tally.drops += 1
            if err.errno != errno.ENOBUFS:
                raise
            continue
        tally.seen(len(messages))


def run_reader(name: str) -> None:
    tally = Tally()
    {"ours": read_ours, "plain-socket": read_plain_socket, "pyroute2-get": read_pyroute2_get}[name](tally)


# --- the load and the table -----------------------------------------------------------------------------

def inject(count: int) -> float:
    """Send `count` USER_AVC records as fast as the kernel takes them; returns the seconds it took."""
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    sender.bind((0, 0))
    started = time.monotonic()
    for index in range(count):
        text = (f'avc:  denied  {{ read }} for pid=1 comm="bench{index % 1000}" '
                "scontext=system_u:system_r:container_t:s0:c1,c2 tcontext=system_u:object_r:etc_t:s0 "
                "tclass=file permissive=0")
        payload = text.encode() + b"\0"
        sender.sendto(struct.pack("=LHHLL", 16 + len(payload), AUDIT_USER_AVC, 1, index, 0) + payload, (0, 0))
    sender.close()
    return time.monotonic() - started


def one_round(name: str, count: int) -> dict:
    child = subprocess.Popen([sys.executable, __file__, "--reader", name], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline().strip()
        if line != "ready":
            child.wait(10)
            raise SystemExit(f"{name}: the reader did not start (needs CAP_AUDIT_READ): {line!r}")
        seconds = inject(count)
        result = json.loads(child.stdout.readline())
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    result["inject_seconds"] = seconds
    return result


def table(best: dict, count: int, rounds: int) -> str:
    ours = best["ours"]["rate"]
    rows = ["| reader | records received | ENOBUFS | CPU s | records per CPU second | ours / this |",
            "|---|---|---|---|---|---|"]
    for name in READERS:
        item = best[name]
        ratio = ours / item["rate"] if item["rate"] else float("inf")
        rows.append(f"| {name} | {item['records']:,} of {count:,} | {item['drops']} | {item['cpu']:.3f} | "
                    f"{item['rate']:,.0f} | {ratio:.2f}x |")
    head = (f"Best of {rounds} rounds per reader (highest records per CPU second), {count:,} records a round, "
            f"readers in turn. Machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average before: {os.getloadavg()[0]:.2f}.")
    return head + "\n\n" + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    parser.add_argument("--reader", choices=READERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reader:
        run_reader(args.reader)
        return 0
    if args.records <= 0 or args.rounds <= 0:
        parser.error("--records and --rounds must be positive")
    best: dict[str, dict] = {}
    lines: list[str] = []
    for round_number in range(args.rounds):
        for name in READERS:
            result = one_round(name, args.records)
            result["rate"] = result["records"] / result["cpu"] if result["cpu"] > 0 else 0.0
            line = (f"round {round_number + 1} {name:13} {result['records']:>9,} records  {result['drops']:>6} ENOBUFS  "
                    f"{result['cpu']:.3f} CPU s  {result['rate']:>10,.0f} records/CPU s  "
                    f"(sent in {result['inject_seconds']:.2f} s)")
            print(line, flush=True)
            lines.append(line)
            if name not in best or result["rate"] > best[name]["rate"]:
                best[name] = result
    text = table(best, args.records, args.rounds)
    print()
    print(text)
    if args.output:
        from notes import write_keeping_notes

        command = "sudo .venv/bin/python bench/avc_netlink.py" + "".join(
            f" {flag} {value}" for flag, value in (("--records", args.records), ("--rounds", args.rounds),
                                                   ("--output", args.output)))
        rounds = "\n## Every round\n\n```\n" + "\n".join(lines) + "\n```\n"
        write_keeping_notes(args.output,
                            "# Live audit reader benchmark\n\nCommand: `" + command + "`\n\n" + text + rounds)
    lost = [name for name in READERS if best[name]["records"] < args.records and best[name]["drops"] == 0]
    if lost:
        print(f"records missing without ENOBUFS for: {', '.join(lost)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
