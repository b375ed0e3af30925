"""Benchmark of the AVC pipeline: records parsed, assembled, attributed and counted per CPU second, and
memory over a long stream. Target: >= 100,000 records/s through the full pipeline; memory flat over 10M
records.

Records are generated in the shapes a node produces: audit.log AVC lines (RAW and ENRICHED, some with
`node=`), each event about a third of the time followed by its SYSCALL and PROCTITLE records, kmsg lines
and a little garbage; every event has its own serial and time stamp. Pids come from a fake /proc tree
(cgroupfs and systemd layouts, CRI-O and containerd) built in a temporary directory, plus pids that are
gone, which fall back to the MCS level. The full pipeline is the watcher: parse → assemble → attribute →
Prometheus counters, with a callback that counts what it is handed.

Lines are made 10,000 at a time, between the pipeline's work, and never held beyond that; the CPU and wall
time spent making them is measured and taken out of the pipeline's figures (and also shown with it, as
earlier versions of this benchmark reported it). The source handing the lines on one by one (a generator,
as the file and netlink sources are) counts as pipeline.

    python bench/avc.py [--records 10000000] [--quick] [--output docs/avc-benchmark.md]

`--quick` scales down to 300,000 records for a fast check.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from agent.avc.assembler import EventAssembler  # noqa: E402
from agent.avc.attribution import Attributor  # noqa: E402
from agent.avc.counting import AvcCounts  # noqa: E402
from agent.avc.poddir import PodDirectory, PodRef  # noqa: E402
from agent.avc.watcher import AvcWatcher  # noqa: E402
from agent.metrics import AvcMetrics  # noqa: E402

PODS = 200
TARGETS = ("container_file_t", "etc_t", "user_home_t", "var_lib_t", "proc_t", "sysfs_t", "http_port_t",
           "tmp_t", "usr_t", "device_t")
CLASSES = ("file", "dir", "tcp_socket", "chr_file", "lnk_file")
PERMS = ("read", "write", "open", "getattr", "search", "name_bind", "ioctl", "map")
COMMS = ("nginx", "java", "python3", "cat", "node", "postgres")


def build_proc(root: Path, rng: random.Random) -> list[tuple[int, str, PodRef]]:
    """A fake /proc with one process per pod; returns (pid, level, pod)."""
    out = []
    for index in range(PODS):
        pid = 10000 + index
        uid = f"{index:08x}-0000-4000-8000-{index:012x}"
        cid = f"{rng.getrandbits(256):064x}"
        layout = index % 4
        if layout == 0:
            path = f"/kubepods/burstable/pod{uid}/crio-{cid}"
        elif layout == 1:
            path = f"/kubepods/besteffort/pod{uid}/{cid}"
        elif layout == 2:
            path = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid.replace('-', '_')}.slice/crio-{cid}.scope"
        else:
            path = (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid.replace('-', '_')}"
                    f".slice/cri-containerd-{cid}.scope")
        directory = root / str(pid)
        directory.mkdir(parents=True)
        (directory / "cgroup").write_text(f"0::{path}\n")
        (directory / "stat").write_text(f"{pid} (app) S " + " ".join(["0"] * 18 + [str(5000 + index)] + ["0"] * 30))
        level = f"s0:c{index},c{index + 300}"
        out.append((pid, level, PodRef(f"ns-{index % 20}", f"pod-{index}", uid, level, f"app-{index % 50}",
                                       ((cid, "main"),))))
    return out


def records(count: int, pods, seed: int):
    """Generate `count` records (lines) lazily, as (None, text) source items."""
    rng = random.Random(seed)
    choice, random_ = rng.choice, rng.random
    shapes = [[(choice(TARGETS), choice(CLASSES), " ".join(sorted({choice(PERMS) for _ in range(1 + n % 3)})))
               for n in range(4)] for _ in pods]
    serial = 1
    made = 0
    timestamp = 1_700_000_000.0
    while made < count:
        serial += 1
        timestamp += 0.0001
        index = rng.randrange(len(pods))
        pid, level, _pod = pods[index]
        if random_() < 0.2:
            pid += 100_000  # gone: attributed through the level
        # A misbehaving workload repeats a handful of denials; each pod has four shapes.
        target, tclass, perms = shapes[index][serial % 4]
        header = f"audit({timestamp:.3f}:{serial})"
        avc = (f'avc:  denied  {{ {perms} }} for  pid={pid} comm="{choice(COMMS)}" name="f{serial % 997}" '
               f'dev="overlay" ino={serial} scontext=system_u:system_r:container_t:{level} '
               f"tcontext=system_u:object_r:{target}:s0 tclass={tclass} permissive=0")
        form = serial % 10
        if form < 6:
            line = f"type=AVC msg={header}: {avc}"
        elif form < 8:
            line = f"node=worker-3 type=AVC msg={header}: {avc}\x1dARCH=x86_64 SYSCALL=openat UID=\"root\""
        elif form < 9:
            line = f"[{serial / 1000:.6f}] audit: type=1400 {header}: {avc}"
        else:
            line = f"garbage {serial}" if serial % 20 == 9 else f"type=AVC msg={header}: {avc}"
        yield None, line
        made += 1
        if made < count and serial % 3 == 0:
            yield None, (f"type=SYSCALL msg={header}: arch=c000003e syscall=257 success=no exit=-13 ppid=1 "
                         f'pid={pid} comm="app" exe="/usr/bin/app" key=(null)')
            made += 1
            if made < count:
                yield None, f"type=PROCTITLE msg={header}: proctitle=617070002D2D666C6167"
                made += 1


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Stream:
    """The generated records as a source, made `chunk` lines at a time before they are handed on, with the
    CPU and wall time spent making them kept apart (`generation_cpu`, `generation_wall`), so the pipeline's
    own time is the total less these. RSS is sampled about every `sample_every` items, at chunk edges."""

    def __init__(self, count: int, pods, seed: int, chunk: int = 10_000, sample_every: int = 0):
        self.count, self.pods, self.seed, self.chunk = count, pods, seed, chunk
        self.sample_every = sample_every
        self.generation_cpu = self.generation_wall = 0.0
        self.samples: list[tuple[int, float]] = []

    def __iter__(self):
        source = records(self.count, self.pods, self.seed)
        done, next_sample = 0, self.sample_every
        while True:
            cpu, wall = time.process_time(), time.perf_counter()
            block = list(islice(source, self.chunk))
            self.generation_cpu += time.process_time() - cpu
            self.generation_wall += time.perf_counter() - wall
            if not block:
                return
            yield from block
            done += len(block)
            if self.sample_every and done >= next_sample:
                self.samples.append((done, rss_mib()))
                next_sample += self.sample_every


def run_parse_only(count: int, pods, seed: int) -> tuple[float, float, Stream]:
    """Wall and CPU seconds of parsing and assembling the stream, generation included, and the stream."""
    assembler = EventAssembler()
    feed = assembler.feed_line
    stream = Stream(count, pods, seed)
    started, cpu = time.perf_counter(), time.process_time()
    for _type, line in stream:
        feed(line)
    assembler.finish()
    return time.perf_counter() - started, time.process_time() - cpu, stream


def run_full(count: int, pods, proc_root: str, seed: int):
    registry = CollectorRegistry()
    metrics = AvcCounts(AvcMetrics(registry))
    directory = PodDirectory(pod for _pid, _level, pod in pods)
    attributor = Attributor(proc_root=proc_root, pods=directory)
    seen = [0]

    def callback(_item):
        seen[0] += 1

    stream = Stream(count, pods, seed, sample_every=max(count // 20, 1))
    watcher = AvcWatcher(stream, attributor=attributor, metrics=metrics, callback=callback)
    started, cpu = time.perf_counter(), time.process_time()
    watcher.run()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    series = sum(len(f.samples) for f in registry.collect() if f.name == "selinux_avc_denials") // 2
    return elapsed, cpu, seen[0], attributor.stats, stream, series, watcher.assembler.stats


def cpu_baseline() -> float:
    """CPU seconds for a fixed loop, to compare machines."""
    started = time.process_time()
    sum(range(10**7))
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--quick", action="store_true", help="300,000 records instead")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    count = 300_000 if args.quick else args.records
    rng = random.Random(args.seed)
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="avc-bench-proc-") as proc_root:
        pods = build_proc(Path(proc_root), rng)
        load_before = os.getloadavg()[0]
        parse_time, parse_cpu, parse_stream = run_parse_only(count, pods, args.seed)
        elapsed, cpu, denials, stats, stream, series, parse_stats = run_full(count, pods, proc_root, args.seed)
        load_after = os.getloadavg()[0]
        baseline = cpu_baseline()
    samples = stream.samples
    first_rss = samples[0][1] if samples else 0.0
    peak_rss = max((rss for _, rss in samples), default=0.0)
    last_rss = samples[-1][1] if samples else 0.0
    parse_own_cpu = parse_cpu - parse_stream.generation_cpu
    parse_own_wall = parse_time - parse_stream.generation_wall
    own_cpu, own_wall = cpu - stream.generation_cpu, elapsed - stream.generation_wall
    full_rate = count / own_cpu
    generation = stream.generation_cpu
    rows = [
        ("records in stream", f"{count:,}"),
        ("AVC denials among them", f"{denials:,}"),
        ("unreadable lines (garbage, counted)", f"{parse_stats.bad_lines:,}"),
        ("generation of the records (not included below unless said)",
         f"{generation:.1f} s CPU, {generation / count * 1e6:.2f} µs a line, made 10,000 lines at a time "
         "between the pipeline's work"),
        ("parse + assemble only, per CPU second",
         f"{count / parse_own_cpu:,.0f} records/s ({parse_own_cpu:.1f} s CPU)"),
        ("parse + assemble only, wall clock", f"{count / parse_own_wall:,.0f} records/s ({parse_own_wall:.1f} s)"),
        ("full pipeline, per CPU second", f"{full_rate:,.0f} records/s ({own_cpu:.1f} s CPU)"),
        ("full pipeline, per CPU second, generation included", f"{count / cpu:,.0f} records/s ({cpu:.1f} s CPU)"),
        ("full pipeline, wall clock", f"{count / own_wall:,.0f} records/s ({own_wall:.1f} s)"),
        ("load average before / after", f"{load_before:.2f} / {load_after:.2f}"),
        ("CPU baseline: sum(range(10**7))", f"{baseline * 1000:.0f} ms"),
        ("attributed by cgroup / by MCS level", f"{stats.attributed['cgroup']:,} / {stats.attributed['mcs']:,}"),
        ("unattributed", f"{sum(stats.unattributed.values()):,}"),
        ("/proc reads", f"{stats.proc_reads:,}"),
        ("denial series in the registry", f"{series:,}"),
        ("RSS at 5% / peak / end", f"{first_rss:.1f} / {peak_rss:.1f} / {last_rss:.1f} MiB"),
        ("target >= 100,000 records/s (full pipeline, CPU)", "met" if full_rate >= 100_000 else "MISSED"),
        ("memory flat (end - 5% < 5 MiB)", "yes" if last_rss - first_rss < 5 else "NO"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.output:
        command = "python bench/avc.py " + (" ".join(sys.argv[1:]) if len(sys.argv) > 1 else "")
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        curve = "\n".join(f"| {n:,} | {rss:.1f} |" for n, rss in samples)
        Path(args.output).write_text(
            f"# AVC pipeline benchmark\n\nCommand: `{command.strip()}`\n\n"
            f"Machine: {os.cpu_count()} cores shared with other work, Python {platform.python_version()}, "
            f"{platform.machine()}.\n\n| measure | value |\n|---|---|\n{table}\n\n"
            f"## Memory along the stream\n\n| records processed | RSS MiB |\n|---|---|\n{curve}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
