"""Benchmark of the relabel walker against chcon -R, go-selinux Chcon, a pure-Python walk and the syscall floor.

Every runner relabels the same tree in the same run, in its own process (so peak RSS is its own):
  ours-1 / ours-N   agent.relabel.volume.relabel(path, label, threads=1 / all CPUs)
  chcon -R          coreutils, with the full context (writes every entry, never reads first)
  go-selinux        selinux.Chcon(path, label, true) from Debian's golang-github-opencontainers-selinux-dev,
                    built from bench/go (the code CRI-O, containerd and podman run)
  python            os.walk + os.setxattr(follow_symlinks=False)
  floor-1 / floor-N one setxattrat per pre-listed (directory, name), no walk (bench/_floor.c, built on demand)
  floor-N compare   one getxattrat per pre-listed name and a setxattrat where the label differs, no walk:
                    the least any compare-before-set walker has to do, so each target's best reachable value
Two passes per runner: a relabel pass (every entry carries another label first) and an already-labelled pass.

Usage: python bench/relabel.py [--sizes 100000,1000000] [--fs tmpfs,ext4] [--repeat N] [--quick] [--no-docs]
       python bench/relabel.py --vm [--policy c9s] [--sizes 100000] [--fs ext4,xfs]   (make vm-bench)
Needs root (tmpfs and loop mounts, security.* xattrs). Writes docs/relabel-benchmark.md and
docs/relabel-threads.png unless --no-docs; --vm (an SELinux-enforcing kernel: bench/relabel_vm.py) writes its
section of docs/relabel-benchmark.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import relabel_floor  # noqa: E402
from notes import write_keeping_notes  # noqa: E402

LABEL_A = "system_u:object_r:container_file_t:s0:c10,c20"
LABEL_B = "system_u:object_r:container_file_t:s0:c30,c40"
PY = sys.executable
CPUS = len(os.sched_getaffinity(0))
FLOOR_SET, FLOOR_COMPARE = relabel_floor.FLOOR_SET, relabel_floor.FLOOR_COMPARE

TARGETS = {
    "vs_chcon": 3.0,  # ours-N relabel pass at the largest size vs chcon -R
    "vs_go": 1.5,  # ours-N vs go-selinux
    "vs_floor_per_core": 0.8,  # ours-1 vs floor-1
    "already_vs_relabel": 2.0,  # already-labelled pass vs relabel pass, ours-N
    "rss_mb": 64,
}


# --- trees --------------------------------------------------------------------------------------------------


def make_tree(root: str, entries: int, shape: str) -> int:
    """`dirs`: directories of 40 files and up to 8 subdirectories, breadth first (a realistic volume);
    `flat`: one directory. Returns the number of entries including the root."""
    os.mkdir(root)
    made = 1
    if shape == "flat":
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(entries - 1):
            os.close(os.open(f"file-{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.close(fd)
        return entries
    queue = [root]
    head = 0
    while made < entries:
        directory = queue[head]
        head += 1
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(40):
            if made >= entries:
                break
            os.close(os.open(f"file-{i:02d}.dat", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
            made += 1
        for i in range(8):
            if made >= entries:
                break
            os.mkdir(f"dir-{i}", dir_fd=fd)
            queue.append(os.path.join(directory, f"dir-{i}"))
            made += 1
        os.close(fd)
    return made


class Filesystem:
    def __init__(self, kind: str, entries: int, workdir: str):
        self.kind = kind
        self.mnt = os.path.join(workdir, f"mnt-{kind}")
        os.makedirs(self.mnt, exist_ok=True)
        if kind == "tmpfs":
            run(["mount", "-t", "tmpfs", "-o", f"size=8g,nr_inodes={entries * 3 + 1000}", "tmpfs", self.mnt])
        else:
            self.image = os.path.join(workdir, "ext4.img")
            with open(self.image, "wb") as handle:
                handle.truncate(max(2 << 30, entries * 4096))
            run(["mkfs.ext4", "-q", "-F", "-I", "256", "-N", str(int(entries * 1.3) + 10000), self.image])
            run(["mount", "-o", "loop", self.image, self.mnt])

    def close(self):
        run(["umount", self.mnt])
        if self.kind == "ext4":
            os.unlink(self.image)


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, **kw)


# --- runners ------------------------------------------------------------------------------------------------


RSS_HELPER = r"""
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    pid_t pid = fork();
    if (pid == 0) { execvp(argv[1], argv + 1); _exit(127); }
    int status; struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return 126;
    fprintf(stderr, "\nmaxrss_kb=%ld\n", ru.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 125;
}
"""
_rss_helper = None
_last_cpu = (float("nan"), float("nan"))


def rss_helper() -> str:
    """A tiny fork/exec/wait4 wrapper. A child spawned straight from this (large) process would report
    this process's peak RSS: the kernel carries the pre-exec memory's high-water mark into ru_maxrss."""
    global _rss_helper
    if _rss_helper is None:
        build = tempfile.mkdtemp(prefix="relabel-rss-")
        src = os.path.join(build, "rss.c")
        with open(src, "w") as handle:
            handle.write(RSS_HELPER)
        run(["gcc", "-O2", "-o", os.path.join(build, "rss"), src])
        _rss_helper = os.path.join(build, "rss")
    return _rss_helper


def timed_rss(argv) -> tuple[float, float, str]:
    """Run argv; (wall seconds, the child's own peak RSS in MB, stdout). Where there is no C compiler for the
    wrapper (the enforcing guest) the RSS is not measured: NaN."""
    global _last_cpu
    measured = shutil.which("gcc") is not None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([rss_helper(), *argv] if measured else argv, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _last_cpu = (after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
    err = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {err[-500:]}")
    rss_kb = int(err.rsplit("maxrss_kb=", 1)[1].split()[0]) if measured else float("nan")
    return 0.0, rss_kb / 1024.0, proc.stdout.decode()


def cpu_seconds(text: str) -> tuple[float, float]:
    """(user, system) CPU seconds of the last runner: what it printed for its walk alone (`cpu USER SYS`, ours:
    interpreter start-up left out), else its whole process's (chcon, go-selinux, setfiles: start-up is ~1 ms)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            user, system = line.split()[1:3]
            return float(user), float(system)
    return _last_cpu


def wall(argv) -> tuple[float, float, str]:
    """For runners timed from outside (chcon -R: its start-up is about a millisecond)."""
    start = time.perf_counter()
    _, rss, text = timed_rss(argv)
    return time.perf_counter() - start, rss, text


def internal(argv) -> tuple[float, float, str]:
    """For runners that time their own walk (Python start-up and imports excluded, as for chcon)."""
    _, rss, text = timed_rss(argv)
    return float(text.split()[-1]), rss, text


OURS = ("import resource, sys; sys.path.insert(0, {repo!r}); from agent.relabel.volume import relabel; "
        "r = resource.getrusage(resource.RUSAGE_SELF); "
        "s = relabel({path!r}, {label!r}, threads={threads}, compare={compare}); "
        "q = resource.getrusage(resource.RUSAGE_SELF); "
        "assert s.errors == 0, s.error_samples; print('cpu', q.ru_utime - r.ru_utime, q.ru_stime - r.ru_stime); "
        "print(s.elapsed)")

PYTHON_WALK = """
import os, sys, time
root, label = sys.argv[1].encode(), sys.argv[2].encode() + b"\\0"
start = time.perf_counter()
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        os.setxattr(os.path.join(dirpath, name), "security.selinux", label, follow_symlinks=False)
os.setxattr(root, "security.selinux", label, follow_symlinks=False)
print(time.perf_counter() - start)
"""

FLOOR = """
import os, resource, sys
sys.path.insert(0, {floor_dir!r})
import _floor
# Names in inode order within each directory: the order in which the filesystem writes fastest (ext4's inode
# tables and journal), so the floor is the least the syscalls can cost, whatever order a walker lists in.
dirs, names, pending = [], [], [{path!r}.encode()]
while pending:
    directory = pending.pop()
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.inode())
    dirs.append(directory)
    names.append([e.name for e in entries])
    pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
# The root too, by its name in its parent (as a walker labels it), so the floor labels every entry it does.
root = os.path.abspath({path!r}).encode()
dirs.append(os.path.dirname(root))
names.append([os.path.basename(root)])
before = resource.getrusage(resource.RUSAGE_SELF)
done, errors, seconds = _floor.floor(dirs, names, {label!r}.encode(), {threads}, {mode})
after = resource.getrusage(resource.RUSAGE_SELF)
assert errors == 0
print("cpu", after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
print(seconds)
"""


def runners(go_binary: str | None):
    out = {
        "ours-1": lambda p, l: internal([PY, "-c", OURS.format(repo=REPO, path=p, label=l, threads=1, compare=True)]),
        f"ours-{CPUS}": lambda p, l: internal([PY, "-c", OURS.format(repo=REPO, path=p, label=l, threads=CPUS,
                                                                      compare=True)]),
        f"ours-{CPUS} no-compare": lambda p, l: internal([PY, "-c", OURS.format(repo=REPO, path=p, label=l,
                                                                                 threads=CPUS, compare=False)]),
        "chcon -R": lambda p, l: wall(["chcon", "-R", l, p]),
    }
    if go_binary:
        out["go-selinux"] = lambda p, l: internal([go_binary, p, l])
    out["python os.walk"] = lambda p, l: internal([PY, "-c", PYTHON_WALK, p, l])
    try:
        floor_dir = relabel_floor.build()
    except relabel_floor.FloorUnavailable as err:
        print(f"floor runners skipped: {err}")
        return out
    out.update(floor_runners(floor_dir, sorted({1, CPUS})))
    return out


def floor_runners(floor_dir: str, thread_counts) -> dict:
    """floor-N (a blind set per pre-listed name) and floor-N compare (a get, and a set where the label differs)
    for each N in `thread_counts`, from the built _floor module in `floor_dir`."""
    out = {}
    for mode, suffix in ((FLOOR_SET, ""), (FLOOR_COMPARE, " compare")):
        for threads in thread_counts:
            def floor(p, l, threads=threads, mode=mode):
                # The floor is the C-timed syscall loop only; listing the tree first is not part of it.
                _, rss, out_text = timed_rss([PY, "-c", FLOOR.format(floor_dir=floor_dir, path=p, label=l,
                                                                      threads=threads, mode=mode)])
                return float(out_text.strip().split()[-1]), rss, out_text

            out[f"floor-{threads}{suffix}"] = floor
    return out


def build_go(static: bool = False) -> tuple[str | None, str]:
    """Build bench/go against Debian's go-selinux (GOPATH mode, offline); (binary or None, reason). `static`:
    CGO_ENABLED=0, a binary that runs in the enforcing guest, which has no Go."""
    src = "/usr/share/gocode/src/github.com/opencontainers/selinux/go-selinux"
    if not shutil.which("go") or not os.path.isdir(src):
        if os.geteuid() == 0 and shutil.which("apt-get"):
            subprocess.run(["apt-get", "install", "-y", "-q", "golang-go", "golang-github-opencontainers-selinux-dev"],
                           capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not shutil.which("go") or not os.path.isdir(src):
        return None, "go or golang-github-opencontainers-selinux-dev is not installed"
    build = tempfile.mkdtemp(prefix="relabel-go-")
    binary = os.path.join(build, "relabel-go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{build}:/usr/share/gocode",
           "GOCACHE": os.path.join(build, "cache"), "GOFLAGS": "", **({"CGO_ENABLED": "0"} if static else {})}
    proc = subprocess.run(["go", "build", "-o", binary, os.path.join(REPO, "bench", "go", "main.go")],
                          capture_output=True, env=env)
    if proc.returncode != 0:
        return None, "go build failed: " + proc.stderr.decode(errors="replace").strip()[-300:]
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "golang-github-opencontainers-selinux-dev"],
                             capture_output=True, text=True).stdout
    go_version = subprocess.run(['go', 'version'], capture_output=True, text=True).stdout.strip()
    return binary, f"go-selinux {version} (Debian), {go_version}{', static' if static else ''}"


def reset(path: str) -> None:
    """Give every entry LABEL_A (untimed), so the next pass with LABEL_B rewrites everything."""
    from agent.relabel.volume import relabel

    relabel(path, LABEL_A, threads=CPUS, compare=False)


# --- main ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=None,
                        help="entries per tree, comma separated (default 100000,1000000; with --vm 100000)")
    parser.add_argument("--fs", default=None, help="filesystems: tmpfs, ext4 (loop image); default tmpfs,ext4 "
                                                   "(with --vm: ext4,xfs, the enforcing tests' volume images)")
    parser.add_argument("--shapes", default="dirs,flat")
    parser.add_argument("--threads", default=None, help="thread counts for the scaling plot (default 1,2,4,8)")
    parser.add_argument("--quick", action="store_true", help="20k and 100k entries, tmpfs and ext4")
    parser.add_argument("--no-docs", action="store_true", help="print only; do not write docs/")
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per runner and tree; the best round of each pass is kept (default 1)")
    enforcing = parser.add_argument_group(
        "enforcing kernel", "--vm boots the enforcing guest of `make vm-test` and benchmarks there (and on the host, "
        "same trees and runners): ours, chcon -R, setfiles -F, go-selinux (bench/relabel_guest.py)")
    enforcing.add_argument("--vm", action="store_true", help="run in the enforcing guest; one size (default 100000)")
    enforcing.add_argument("--policy", default=os.environ.get("SMA_VM_POLICY", "c9s"),
                           help="the guest's policy flavour (default c9s)")
    enforcing.add_argument("--vm-keep", metavar="DIR", help="keep the guest's console log and results in DIR")
    enforcing.add_argument("--no-host", action="store_true", help="with --vm: skip the host run on the same trees")
    enforcing.add_argument("--guest-run", action="store_true", help=argparse.SUPPRESS)  # the guest's own step
    enforcing.add_argument("--volume-dir", default=os.environ.get("SMA_VOLUME_DIR"), help=argparse.SUPPRESS)
    enforcing.add_argument("--out", help=argparse.SUPPRESS)
    enforcing.add_argument("--go-binary", help=argparse.SUPPRESS)
    enforcing.add_argument("--go-note", default="", help=argparse.SUPPRESS)
    enforcing.add_argument("--floor-dir", help=argparse.SUPPRESS)  # where the host-built _floor module is
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Arguments, checked: bad ones exit 2 with one line (argparse's error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = args.sizes or ("100000" if args.vm or args.guest_run else "100000,1000000")
    try:
        args.size_list = [20_000, 100_000] if args.quick else [int(s) for s in sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes comma-separated integers, not {sizes!r}")
    if args.vm or args.guest_run:
        if len(args.size_list) != 1:
            parser.error("--vm takes one size (the file count of the guest's volume images)")
        args.fs_list = (args.fs or "ext4,xfs").split(",")
        unknown = sorted(set(args.fs_list) - {"ext4", "xfs"})
        if unknown:
            parser.error(f"--vm measures the enforcing tests' ext4 and xfs images, not {','.join(unknown)}")
        if args.guest_run and not (args.volume_dir and args.out):
            parser.error("--guest-run needs --volume-dir and --out")
    else:
        args.fs_list = (args.fs or "tmpfs,ext4").split(",")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/relabel.py needs root (mounts, security.* xattrs)", file=sys.stderr)
        return 2
    if args.guest_run:
        import relabel_guest

        report = relabel_guest.run(args.volume_dir, args.out, args.fs_list, args.size_list[0], args.repeat,
                                   args.go_binary, args.go_note, floor_dir=args.floor_dir)
        return 0 if report["rows"] else 1
    if args.vm:
        import relabel_vm

        return relabel_vm.main(args)
    sizes = args.size_list
    kinds = args.fs_list
    shapes = args.shapes.split(",")
    scaling_threads = [int(t) for t in (args.threads or "1,2,4,8").split(",")]
    command = "python bench/relabel.py " + " ".join(argv if argv is not None else sys.argv[1:])

    go_binary, go_note = build_go()
    print(f"go-selinux baseline: {go_note if go_binary else 'skipped: ' + go_note}")
    table = runners(go_binary)
    results = []  # dicts
    scaling = []  # (tree name, threads, files/s)
    workdir = tempfile.mkdtemp(prefix="relabel-bench-", dir=args.workdir)
    try:
        for kind in kinds:
            for size in sizes:
                for shape in shapes:
                    fs = Filesystem(kind, size, workdir)
                    try:
                        tree = os.path.join(fs.mnt, "tree")
                        start = time.perf_counter()
                        entries = make_tree(tree, size, shape)
                        name = f"{kind} {shape} {size // 1000}k"
                        print(f"\n== {name}: {entries:,} entries (built in {time.perf_counter() - start:.1f}s)",
                              flush=True)
                        for runner, func in table.items():
                            relabel_s = again_s = float("inf")
                            rss = 0.0
                            for _ in range(args.repeat):
                                reset(tree)
                                seconds, rss1, _ = func(tree, LABEL_B)
                                relabel_s = min(relabel_s, seconds)
                                seconds, rss2, _ = func(tree, LABEL_B)
                                again_s = min(again_s, seconds)
                                rss = max(rss, rss1, rss2)
                            row = dict(tree=name, fs=kind, shape=shape, size=size, entries=entries, runner=runner,
                                       relabel_s=relabel_s, again_s=again_s, rss_mb=rss)
                            results.append(row)
                            print(f"  {runner:<22} relabel {relabel_s:7.3f}s {entries / relabel_s:>11,.0f}/s   "
                                  f"already {again_s:7.3f}s {entries / again_s:>11,.0f}/s   rss {row['rss_mb']:.0f} MB",
                                  flush=True)
                        for threads in scaling_threads:
                            best = float("inf")
                            for _ in range(args.repeat):
                                reset(tree)
                                seconds, _, _ = internal([PY, "-c", OURS.format(
                                    repo=REPO, path=tree, label=LABEL_B, threads=threads, compare=True)])
                                best = min(best, seconds)
                            scaling.append((name, threads, entries / best))
                    finally:
                        fs.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(results, sizes)
    print()
    print(render_markdown(results, scaling, summary, command, go_note if go_binary else "skipped: " + go_note))
    if not args.no_docs:
        docs = os.path.join(REPO, "docs")
        os.makedirs(docs, exist_ok=True)
        write_keeping_notes(os.path.join(docs, "relabel-benchmark.md"),
                            render_markdown(results, scaling, summary, command,
                                            go_note if go_binary else "skipped: " + go_note))
        plot(scaling, os.path.join(docs, "relabel-threads.png"))
    return 0


def _get(results, tree, runner, key="relabel_s"):
    for row in results:
        if row["tree"] == tree and row["runner"] == runner:
            return row[key]
    return None


def summarise(results, sizes):
    """Target checks per tree at the largest size: list of (tree, check, value, target, met, bound).

    `bound` is the value the check would have if our walk cost nothing beyond the compare floor (a get per
    entry, a set where the label differs): no compare-before-set walker can do better on this machine, so a
    bound below the target means the target cannot be met while correct entries keep their ctime."""
    largest = max(sizes)
    ours_n, ours_1 = f"ours-{CPUS}", "ours-1"
    checks = []
    for tree in sorted({r["tree"] for r in results if r["size"] == largest}):
        n = _get(results, tree, ours_n)
        best_n = _get(results, tree, f"floor-{CPUS} compare")
        best_1 = _get(results, tree, "floor-1 compare")
        for label, runner, target in (("ours-N vs chcon -R", "chcon -R", TARGETS["vs_chcon"]),
                                      ("ours-N vs go-selinux", "go-selinux", TARGETS["vs_go"])):
            other = _get(results, tree, runner)
            if other is not None:
                checks.append((tree, label, other / n, f">= {target}x", other / n >= target,
                               other / best_n if best_n else None))
        one, floor1 = _get(results, tree, ours_1), _get(results, tree, "floor-1")
        if floor1 is not None:  # None: the floor extension could not be built here
            checks.append((tree, "ours-1 vs floor-1 (per core)", floor1 / one, f">= {TARGETS['vs_floor_per_core']}x",
                           floor1 / one >= TARGETS["vs_floor_per_core"], floor1 / best_1 if best_1 else None))
        again = _get(results, tree, ours_n, "again_s")
        best_again = _get(results, tree, f"floor-{CPUS} compare", "again_s")
        checks.append((tree, "ours-N already-labelled vs relabel pass", n / again,
                       f">= {TARGETS['already_vs_relabel']}x", n / again >= TARGETS["already_vs_relabel"],
                       best_n / best_again if best_n else None))
        if best_n:
            checks.append((tree, "ours-N vs floor-N compare (how close to the bound)", best_n / n, "", None, 1.0))
        rss = max(r["rss_mb"] for r in results if r["tree"] == tree and r["runner"].startswith("ours"))
        checks.append((tree, "ours peak RSS (MB)", rss, f"< {TARGETS['rss_mb']}", rss < TARGETS["rss_mb"], None))
    return checks


def render_markdown(results, scaling, summary, command, go_note) -> str:
    lines = [
        "# Relabel benchmark",
        "",
        "Generated by `bench/relabel.py`; numbers are from one run on this machine, every runner on the same "
        "trees in the same run (with `--repeat N`, the best of N rounds of each pass). Ratios are what to read: the machine is shared and absolute rates are noisy.",
        "",
        f"Command: `{command}` (as root, from the repository root)",
        "",
        f"Machine: {platform.node() and 'this host'}, {CPUS} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; SELinux not enabled (the kernel stores labels as given, so no "
        "policy lookups or AVC checks are in these numbers).",
        f"Baselines: coreutils `chcon -R` ({_chcon_version()}); go-selinux: {go_note}.",
        "",
        "Passes: *relabel* = every entry carries another label first, *already* = run again with the same "
        "label. `ours` reads each label and writes only when it differs (no ctime change for correct "
        "entries); `ours no-compare`, chcon -R and go-selinux write every entry blindly. `floor-N` is one "
        "setxattrat per pre-listed name, no walk, timed inside C; `floor-N compare` is a getxattrat per "
        "pre-listed name and a setxattrat where the label differs (its already pass: gets only). Each runner runs in its own process; "
        "times are the walk as the runner itself measures it (Python start-up and imports excluded; "
        "chcon -R is timed from outside, its start-up is about 1 ms); peak RSS is the process's own.",
        "",
    ]
    for tree in dict.fromkeys(r["tree"] for r in results):
        rows = [r for r in results if r["tree"] == tree]
        entries = rows[0]["entries"]
        base = _get(results, tree, f"ours-{CPUS}")
        lines += [f"## {tree} ({entries:,} entries)", "",
                  "| runner | relabel s | entries/s | time vs ours-N | already s | entries/s | peak RSS MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['runner']} | {r['relabel_s']:.3f} | {entries / r['relabel_s']:,.0f} | "
                         f"{r['relabel_s'] / base:.2f}x | {r['again_s']:.3f} | {entries / r['again_s']:,.0f} | "
                         f"{r['rss_mb']:.0f} |")
        lines.append("")
    if summary:
        lines += ["## Targets (largest size)", "",
                  "*bound*: the value if the walk cost nothing beyond `floor-N compare` (a get per entry and a set "
                  "where the label differs, measured in this run): about the best a walker that leaves correct "
                  "entries unwritten can score. It is an estimate, not a proof: the floor reads its names from a "
                  "pre-built list of 100+ MB, and on tmpfs a walk that labels names straight from the directory "
                  "it just read can beat it by about 10%.", "",
                  "| tree | check | measured | target | met | bound | target reachable |",
                  "|---|---|---:|---|---|---:|---|"]
        for tree, check, value, target, met, bound in summary:
            met_text = "" if met is None else "yes" if met else "**no**"
            bound_text = "" if bound is None else f"{bound:.2f}"
            reachable = ""
            if bound is not None and target.startswith(">="):
                reachable = "yes" if bound >= float(target.split()[1].rstrip("x")) else "no"
            lines.append(f"| {tree} | {check} | {value:.2f} | {target} | {met_text} | {bound_text} | {reachable} |")
        lines.append("")
    if scaling:
        lines += ["## Thread scaling (ours, relabel pass)", "", "![files/s vs threads](relabel-threads.png)", "",
                  "| tree | " + " | ".join(f"{t} threads" for t in sorted({s[1] for s in scaling})) + " |",
                  "|---|" + "---:|" * len({s[1] for s in scaling})]
        for tree in dict.fromkeys(s[0] for s in scaling):
            rates = {t: r for name, t, r in scaling if name == tree}
            lines.append(f"| {tree} | " + " | ".join(f"{rates[t]:,.0f}" for t in sorted(rates)) + " |")
        lines.append("")
    return "\n".join(lines)


def _chcon_version() -> str:
    out = subprocess.run(["chcon", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def plot(scaling, path) -> None:
    try:
        import matplotlib
    except ImportError:
        subprocess.run([PY, "-m", "pip", "install", "-q", "matplotlib"], check=False)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for tree in dict.fromkeys(s[0] for s in scaling):
        points = sorted((t, r) for name, t, r in scaling if name == tree)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=tree)
    ax.set_xlabel("threads")
    ax.set_ylabel("entries/s (relabel pass)")
    ax.set_xscale("log", base=2)
    ax.set_title(f"agent.relabel.volume: entries/s vs threads ({CPUS} CPUs)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
