"""Benchmark of `selinux-mount-agent run`: idle footprint, and memory under 200 concurrent publishes.

1. Idle: the daemon (built-in driver, metrics server) runs for --idle seconds while /proc/<pid> is sampled
   every second: RSS (mean, peak) and CPU (user+system seconds over the window, as % of one core).
   Target: idle RSS < 60 MB.
2. Load: N volumes (default 200) are created, then staged and published at once (kubelet's context= flag
   included), unpublished, unstaged and deleted, all through the daemon's socket, while RSS is sampled every
   50 ms. Zero errors expected and nothing left mounted.

Usage (root: the built-in driver attaches loop devices):
    sudo .venv/bin/python bench/daemon.py [--idle 60] [--volumes 200] [--output docs/daemon-benchmark.md]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grpc  # noqa: E402

from tests.root.csi_helpers import LABEL_A, Client, cleanup, context_flag, mounts_under  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(tmp: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--csi-endpoint", f"unix://{tmp}/csi.sock", "--state-dir",
         f"{tmp}/state", "--kubelet-root", f"{tmp}/kubelet", "--metrics-address", f"127.0.0.1:{free_port()}",
         "--log-level", "error"], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    deadline = time.monotonic() + 30
    while not os.path.exists(f"{tmp}/csi.sock"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon did not start")
        time.sleep(0.05)
    return process


def idle(pid: int, seconds: int) -> dict:
    samples = []
    cpu_start, started = cpu_seconds(pid), time.monotonic()
    for _ in range(seconds):
        samples.append(rss_bytes(pid))
        time.sleep(1)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_start
    return {"rss_mean": sum(samples) / len(samples), "rss_peak": max(samples), "cpu_percent": 100 * cpu / elapsed,
            "seconds": elapsed}


def load(pid: int, tmp: str, volumes: int) -> dict:
    client = Client(f"{tmp}/csi.sock", f"{tmp}/kubelet")
    flags = [context_flag(LABEL_A)]
    peak, stop = [rss_bytes(pid)], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(rss_bytes(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors: list[str] = []
    ids: dict[int, str] = {}

    def each(index, step):
        if step == "create":
            ids[index] = client.create(f"bench-{index}").volume_id
            return
        volume = ids[index]
        staging = client.staging_path(volume)
        target = client.target_path(f"pod-{index}")
        if step == "publish":
            client.stage(volume, staging, flags)
            client.publish(volume, staging, target, flags, pod=("bench", f"pod-{index}"))
        elif step == "teardown":
            client.unpublish(volume, target)
            client.unstage(volume, staging)
            client.delete(volume)

    timings = {}
    try:
        with futures.ThreadPoolExecutor(max_workers=volumes) as pool:
            for step in ("create", "publish", "teardown"):
                started = time.perf_counter()
                for future in [pool.submit(each, i, step) for i in range(volumes)]:
                    try:
                        future.result()
                    except grpc.RpcError as err:
                        errors.append(f"{step}: {err.code().name}: {err.details()}")
                    except KeyError as err:
                        errors.append(f"{step}: volume {err} was never created")
                timings[step] = time.perf_counter() - started
    finally:
        stop.set()
        sampler.join()
        client.close()
    return {"rss_peak": max(peak), "errors": errors, "timings": timings,
            "left_mounted": len(mounts_under(f"{tmp}/kubelet"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=60, help="seconds of idle sampling (default 60)")
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--output", help="write the results as Markdown here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the built-in driver attaches loop devices")
    tmp = tempfile.mkdtemp(prefix="daemon-bench-")
    process = start(tmp)
    try:
        quiet = idle(process.pid, args.idle)
        busy = load(process.pid, tmp, args.volumes)
    finally:
        process.terminate()
        process.wait(30)
        cleanup(tmp)
    mib = 1024 * 1024
    rows = [
        (f"idle RSS, mean over {quiet['seconds']:.0f} s", f"{quiet['rss_mean'] / mib:.1f} MiB"),
        ("idle RSS, peak", f"{quiet['rss_peak'] / mib:.1f} MiB"),
        ("idle CPU", f"{quiet['cpu_percent']:.2f} % of one core"),
        (f"RSS peak during {args.volumes} concurrent publishes", f"{busy['rss_peak'] / mib:.1f} MiB"),
        ("create / stage+publish / teardown, wall", " / ".join(f"{busy['timings'].get(k, 0):.1f} s"
                                                             for k in ("create", "publish", "teardown"))),
        ("errors", str(len(busy["errors"]))),
        ("mounts left behind", str(busy["left_mounted"])),
        ("target idle RSS < 60 MB", "met" if quiet["rss_peak"] < 60e6 else "MISSED"),
    ]
    width = max(len(name) for name, _ in rows)
    table = "\n".join([f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"] +
                      [f"| {name:<{width}} | {value} |" for name, value in rows])
    print(table)
    for error in busy["errors"][:10]:
        print("error:", error)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write("# `run` benchmark\n\n"
                         f"Command: `sudo .venv/bin/python bench/daemon.py --idle {args.idle} --volumes "
                         f"{args.volumes} --output {args.output}`\n\n"
                         f"Machine: {os.cpu_count()} cores. The daemon runs the built-in driver (loop-backed ext4 "
                         "images) and its metrics server; RSS from /proc/PID/statm, CPU from /proc/PID/stat.\n\n"
                         f"{table}\n")
    return 1 if busy["errors"] or busy["left_mounted"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
