"""Benchmark of `selinux-mount-agent audit` on a generated cluster dump.

Generates a `kubectl get pods,pvc,pv,csidrivers -A -o json`-shaped List with N pods (default 100,000) in a
realistic shape: namespaces of Deployments, StatefulSets and CronJobs; most volumes used by one pod, some RWX
volumes shared by several workloads, a few with conflicting labels or change policies. Then runs the audit
command in a fresh process, as a user would, and reports wall time and peak RSS. Target: < 5 s for 100k pods.

    python bench/audit.py [--pods 100000] [--seed 1] [--runs 3] [--format json|yaml|both]
                          [--output docs/audit-benchmark.md] [--dump PATH]

The same dump is written as JSON and as YAML (`kubectl get ... -o json|yaml`); the table has a column for each
format with the times and each audit process's peak RSS. Targets: JSON < 5 s, YAML within 2x of JSON.

Besides the timed runs it makes one run that times the phases in a fresh process (parse, index, analysis, JSON
text), to say where the time goes. `--dump PATH` keeps the generated dump, for comparing outputs or profiling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from notes import write_keeping_notes  # noqa: E402
DRIVERS = ("ebs.csi.aws.com", "local.selinux-mount-agent.io", "nfs.csi.example.com")


def generate(pods: int, seed: int) -> dict:
    rng = random.Random(seed)
    items = [
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVERS[0]},
         "spec": {"seLinuxMount": True}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVERS[1]},
         "spec": {"seLinuxMount": True}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": DRIVERS[2]}, "spec": {}},
    ]
    made = 0
    namespace_index = 0
    while made < pods:
        namespace = f"team-{namespace_index:05d}"
        namespace_index += 1
        shared_claims = []
        for shared in range(2):
            name = f"shared-{shared}"
            driver = DRIVERS[rng.randrange(3)]
            pv_name = f"pv-{namespace}-{name}"
            items.append(_pv(pv_name, driver, ["ReadWriteMany"]))
            items.append(_pvc(namespace, name, pv_name, ["ReadWriteMany"]))
            shared_claims.append(name)
        level = f"s0:c{namespace_index % 1000},c{(namespace_index % 1000) + 1}"
        for workload in range(rng.randint(3, 12)):
            kind = rng.choice(("Deployment", "Deployment", "StatefulSet", "CronJob"))
            name = f"app-{workload}"
            replicas = rng.randint(1, 4)
            conflicting = rng.random() < 0.03
            policy = "Recursive" if (kind == "CronJob" and rng.random() < 0.5) else None
            pod_level = f"s0:c{rng.randrange(1000)}" if conflicting else level
            uses_shared = rng.random() < 0.4
            for replica in range(replicas):
                if made >= pods:
                    break
                pod_name, owner = _names(kind, name, replica)
                volumes = []
                mounts = []
                own = f"{name}-data-{replica}"
                pv_name = f"pv-{namespace}-{own}"
                items.append(_pv(pv_name, DRIVERS[rng.randrange(2)], ["ReadWriteOnce"]))
                items.append(_pvc(namespace, own, pv_name, ["ReadWriteOnce"]))
                volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": own}})
                mounts.append({"name": "data", "mountPath": "/data"})
                volumes.append({"name": "config", "configMap": {"name": name}})
                mounts.append({"name": "config", "mountPath": "/etc/app"})
                if uses_shared:
                    claim = shared_claims[workload % 2]
                    volumes.append({"name": "shared", "persistentVolumeClaim": {"claimName": claim}})
                    mounts.append({"name": "shared", "mountPath": "/shared"})
                security = {"seLinuxOptions": {"level": pod_level}}
                if policy:
                    security["seLinuxChangePolicy"] = policy
                items.append({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod_name, "namespace": namespace, "uid": f"uid-{made}",
                                 "labels": owner[2], "ownerReferences": [
                                     {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                      "controller": True}]},
                    "spec": {"nodeName": f"node-{rng.randrange(200)}", "securityContext": security,
                             "containers": [{"name": "main", "image": "registry.example/app:1",
                                             "volumeMounts": mounts}],
                             "volumes": volumes},
                    "status": {"phase": "Running"},
                })
                made += 1
    return {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}


def _names(kind, name, replica):
    if kind == "Deployment":
        return f"{name}-7c9f-{replica:05d}", ("ReplicaSet", f"{name}-7c9f", {"pod-template-hash": "7c9f"})
    if kind == "StatefulSet":
        return f"{name}-{replica}", ("StatefulSet", name, {})
    return f"{name}-29000000-{replica:05d}", ("Job", f"{name}-29000000", {})


def _pv(name, driver, modes):
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"accessModes": modes, "capacity": {"storage": "1Gi"},
                     "csi": {"driver": driver, "volumeHandle": name}}}


def _pvc(namespace, name, volume, modes):
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": modes, "volumeName": volume}}


# Runs `python -m agent ARGS` and, at exit, writes its peak RSS (VmHWM, KiB) to stderr. The kernel's ru_maxrss
# of a child cannot be used: exec carries the peak of the forked copy of this process (which holds the generated
# dump) into the child's figure.
PEAK_OF_AGENT = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        sys.stderr.write("".join(line for line in status if line.startswith("VmHWM:")))
atexit.register(peak)
sys.argv[0] = "agent"
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def run_child(command: list[str]) -> tuple[float, int, int, str]:
    """Run `python -m agent ARGS` (command: ARGS) in a child process: wall seconds, its peak RSS in KiB, exit
    code, stdout."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_OF_AGENT, *command], capture_output=True, text=True,
                            env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 1):
        raise SystemExit(f"agent {' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    peak = [line for line in result.stderr.splitlines() if line.startswith("VmHWM:")]
    return elapsed, int(peak[-1].split()[1]), result.returncode, result.stdout


def parse_floor(path: str) -> float:
    """Wall time of a fresh process that only parses the dump into dicts and lists (collector paused): for JSON
    `json.load`, for YAML the compiled reader the audit uses (agent/parsing/_yaml.c: the objects
    `yaml.safe_load_all` gives, built from libyaml's events), every item kept as built. PyYAML's own
    `yaml.CSafeLoader` builds the same objects 15-17x slower (docs/audit-benchmark.md)."""
    if path.endswith(".json"):
        code = "import gc, json, sys; gc.disable(); json.load(open(sys.argv[1]))"
    else:
        code = ("import gc, sys; gc.disable(); from agent.parsing import compiled_yaml; "
                "compiled_yaml.load_all(open(sys.argv[1], 'rb'))")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, path], check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return time.perf_counter() - start


def run_audit(path: str) -> tuple[float, int, int, dict]:
    """Run the CLI in a child process; wall seconds, peak RSS in KiB, exit code, summary."""
    elapsed, peak, code, out = run_child(["audit", "-f", path, "-o", "json"])
    return elapsed, peak, code, json.loads(out)["summary"]


# The audit's phases, timed in a fresh process as the command runs them (collector paused), built-in node defaults.
PHASES = """
import gc, json, sys, time
gc.disable()
start = time.perf_counter()
from agent.kubelet import gates
from agent.audit.findings import audit
from agent.k8s.resolve import Cluster
from agent.kubelet.container_defaults import BUILTIN_DEFAULTS
from agent.cli.main import build_parser
from agent.k8s.manifests import load_files
build_parser()  # what the command imports before it runs: every subcommand's module
marks = [("imports", time.perf_counter())]
objects = load_files([sys.argv[1]])
marks.append(("parse", time.perf_counter()))
cluster = Cluster(objects)
marks.append(("index", time.perf_counter()))
report = audit(cluster, gates.resolve("1.37"), BUILTIN_DEFAULTS)
marks.append(("analysis", time.perf_counter()))
text = "".join(report.json_chunks())
marks.append(("JSON text", time.perf_counter()))
times, last = {}, start
for name, at in marks:
    times[name], last = at - last, at
print(json.dumps(times))
"""


def phases(path: str) -> dict[str, float]:
    """Seconds per phase of one in-process audit (no interpreter start-up, output not written)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", PHASES, path], capture_output=True, text=True, env=env,
                            cwd=ROOT, check=True)
    return json.loads(result.stdout)


def write_dump(document: dict, path: str) -> None:
    """The dump as `kubectl get ... -o json` or `-o yaml` writes it (one List)."""
    with open(path, "w") as handle:
        if path.endswith(".json"):
            json.dump(document, handle)
        else:
            import yaml

            yaml.dump(document, handle, Dumper=yaml.CSafeDumper, sort_keys=False, default_flow_style=False)


def measure(path: str, runs: int) -> dict:
    """Timed audit runs, the parse floor and the phase split of one dump."""
    results = [run_audit(path) for _ in range(runs)]
    times = sorted(r[0] for r in results)
    return {"size": os.path.getsize(path), "times": times, "median": times[len(times) // 2],
            "peak_mib": max(r[1] for r in results) / 1024, "summary": results[0][3],
            "floor": min(parse_floor(path) for _ in range(runs)), "phases": phases(path)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="timed runs; the table shows the best and the median")
    parser.add_argument("--format", choices=("json", "yaml", "both"), default="both",
                        help="dump format(s) to audit: `kubectl get -o json`, `-o yaml`, or both (default)")
    parser.add_argument("--output", help="write the results as Markdown to this file")
    parser.add_argument("--dump", metavar="PATH", help="write the generated dump here and keep it (PATH.json, "
                                                       "PATH.yaml)")
    args = parser.parse_args()
    formats = ("json", "yaml") if args.format == "both" else (args.format,)

    results = {}
    print("load average at the start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        document = generate(args.pods, args.seed)
        objects = len(document["items"])
        paths = {form: f"{args.dump or os.path.join(tmp, 'dump')}.{form}" for form in formats}
        for path in paths.values():
            write_dump(document, path)
        print(f"generated {args.pods} pods, {objects} objects in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        del document
        for form, path in paths.items():
            results[form] = measure(path, args.runs)

    print("load average at the end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), file=sys.stderr)
    summary = results[formats[0]]["summary"]
    for form in formats[1:]:
        if results[form]["summary"] != summary:
            raise SystemExit(f"the {form} dump gave another report: {results[form]['summary']} vs {summary}")
    rows = [
        ("pods in dump", [f"{args.pods:,}"] * len(formats)),
        ("objects in dump", [f"{objects:,}"] * len(formats)),
        ("shared volumes", [f"{summary['sharedVolumes']:,}"] * len(formats)),
        ("conflicts (directions)", [f"{summary['conflicts']:,}"] * len(formats)),
        ("workloads breaking on 1.37", [f"{summary['workloadsBreaking']:,}"] * len(formats)),
        ("dump size", [f"{r['size'] / 2**20:.0f} MiB" for r in results.values()]),
        ("audit wall time, best", [f"{r['times'][0]:.2f} s" for r in results.values()]),
        ("audit wall time, median", [f"{r['median']:.2f} s" for r in results.values()]),
        ("parse-only floor (fresh process)", [f"{r['floor']:.2f} s" for r in results.values()]),
        ("audit / parse floor", [f"{r['median'] / r['floor']:.1f}x" for r in results.values()]),
        ("peak RSS of the audit", [f"{r['peak_mib']:.0f} MiB" for r in results.values()]),
    ]
    for name in results[formats[0]]["phases"]:
        rows.append((f"phase, in process: {name}", [f"{r['phases'][name]:.2f} s" for r in results.values()]))
    if "json" in results:
        rows.append(("target: JSON < 5 s", ["met" if results["json"]["median"] < 5 else "MISSED"] +
                     ["" for _ in formats[1:]]))
    if len(formats) == 2:
        ratio = results["yaml"]["median"] / results["json"]["median"]
        rows.append(("target: YAML within 2x of JSON", ["", f"{ratio:.1f}x: " + ("met" if ratio <= 2 else "MISSED")]))
    width = max(len(r[0]) for r in rows)
    widths = [max(len(form) + 5, *(len(r[1][i]) for r in rows)) for i, form in enumerate(formats)]
    header = f"| {'measure':<{width}} | " + " | ".join(f"{f + ' dump':<{w}}" for f, w in zip(formats, widths)) + " |"
    rule = f"|{'-' * (width + 2)}|" + "|".join("-" * (w + 2) for w in widths) + "|"
    table = "\n".join(f"| {name:<{width}} | " + " | ".join(f"{v:<{w}}" for v, w in zip(values, widths)) + " |"
                      for name, values in rows)
    print(header)
    print(rule)
    print(table)
    if args.output:
        command = (f"python bench/audit.py --pods {args.pods} --seed {args.seed} --runs {args.runs} "
                   f"--format {args.format}")
        write_keeping_notes(
            args.output,
            "# `audit` benchmark\n\n"
            f"Command: `{command} --output {args.output}`\n\n"
            f"Machine: {os.cpu_count()} cores; the audit runs as `selinux-mount-agent audit -f dump.json -o json` "
            "(and `-f dump.yaml`, the same List as `kubectl get ... -o yaml` writes it) in a fresh process (time "
            "includes interpreter start-up, parsing, the analysis and the output); peak RSS is each audit "
            "process's own.\n\n"
            f"{header}\n{rule}\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
