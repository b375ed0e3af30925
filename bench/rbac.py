"""Benchmark of `selinux-mount-agent rbac generate` over a generated API-server audit log.

Writes a log of N audit.k8s.io/v1 Events (default 1,000,000) as the API server's log backend writes them at the
Metadata level: a mix of service accounts, users and nodes doing list, watch, get, create, update and patch on
namespaced and cluster-scoped resources and subresources, discovery and health URLs, impersonated requests,
each request's RequestReceived and ResponseComplete stages (a watch's ResponseStarted too), a few denials.
Then runs `rbac generate` for one service account in a fresh process, as a user would, and reports the rate
(events per second, interpreter start-up included) and the process's peak RSS.
Targets: > 200,000 events/s and < 100 MB peak RSS over 1M events.

    python bench/rbac.py [--events 1000000] [--seed 1] [--runs 3] [--output docs/rbac-benchmark.md] [--log PATH]

Beside the timed runs it times a floor in a fresh process: reading the log's lines and doing nothing with them,
so the table says how much of the time is the decoding and the rules.
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from notes import write_keeping_notes  # noqa: E402

SUBJECT = "team-007:web"
TARGET_RATE = 200_000
TARGET_RSS_MB = 100
RESOURCES = [("", "pods", ""), ("", "pods", "log"), ("", "pods", "status"), ("", "configmaps", ""),
             ("", "secrets", ""), ("", "services", ""), ("", "endpoints", ""), ("", "events", ""),
             ("apps", "deployments", ""), ("apps", "deployments", "scale"), ("apps", "replicasets", ""),
             ("coordination.k8s.io", "leases", ""), ("batch", "jobs", "")]
CLUSTER_RESOURCES = [("", "nodes", ""), ("", "namespaces", ""), ("", "persistentvolumes", ""),
                     ("storage.k8s.io", "csidrivers", ""), ("storage.k8s.io", "storageclasses", "")]
URLS = ["/healthz", "/readyz", "/version", "/api", "/apis", "/apis/apps/v1", "/openapi/v2", "/metrics"]
VERBS = ["get", "get", "list", "watch", "create", "update", "patch", "delete"]


def _users(rng: random.Random) -> list[str]:
    accounts = [f"system:serviceaccount:team-{n:03d}:{name}" for n in range(40) for name in ("web", "worker", "default")]
    return accounts + [f"user-{n}@example.com" for n in range(20)] + [f"system:node:node-{n}" for n in range(30)]


def _request(rng: random.Random, users: list[str]) -> tuple[dict, str]:
    """One request's Event fields, and its verb."""
    user = rng.choice(users)
    event = {"user": {"username": user, "uid": str(uuid.UUID(int=rng.getrandbits(128))),
                      "groups": ["system:serviceaccounts", "system:authenticated"]},
             "sourceIPs": [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"],
             "userAgent": "kube-controller/v1.37.1 (linux/amd64) kubernetes/abcdef0"}
    if rng.random() < 0.01:
        event["impersonatedUser"] = {"username": rng.choice(users)}
    draw = rng.random()
    if draw < 0.08:
        url = rng.choice(URLS)
        event.update(verb="get", requestURI=url)
        return event, "get"
    cluster = draw < 0.25
    group, resource, sub = rng.choice(CLUSTER_RESOURCES if cluster else RESOURCES)
    verb = rng.choice(VERBS)
    namespace = "" if cluster else f"team-{rng.randrange(40):03d}"
    name = f"{resource[:-1]}-{rng.randrange(50)}" if verb in ("get", "update", "patch", "delete") or sub else ""
    if verb == "list" and rng.random() < 0.5:
        verb = "watch"
    base = "/api/v1" if not group else f"/apis/{group}/v1"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}" + (f"/{name}" if name else "")
    path += f"/{sub}" if sub else ""
    query = "?watch=true&resourceVersion=12345&timeoutSeconds=412" if verb == "watch" else "?limit=500" if verb == "list" else ""
    ref = {"resource": resource, "apiVersion": "v1"}
    for key, value in (("namespace", namespace), ("name", name), ("apiGroup", group), ("subresource", sub)):
        if value:
            ref[key] = value
    event.update(verb=verb, requestURI=path + query, objectRef=ref)
    return event, verb


def write_log(path: Path, events: int, seed: int) -> dict:
    rng = random.Random(seed)
    users = _users(rng)
    written = subject_events = 0
    subject_user = "system:serviceaccount:" + SUBJECT
    with open(path, "w", encoding="utf-8") as handle:
        while written < events:
            fields, verb = _request(rng, users)
            audit_id = str(uuid.UUID(int=rng.getrandbits(128)))
            stages = ["RequestReceived"] + (["ResponseStarted"] if verb == "watch" else []) + ["ResponseComplete"]
            code = 403 if rng.random() < 0.02 else 201 if verb == "create" else 200
            for stage in stages:
                if written >= events:
                    break
                event = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": audit_id,
                         "stage": stage, **fields}
                if stage != "RequestReceived":
                    event["responseStatus"] = {"metadata": {}, "code": code}
                event["requestReceivedTimestamp"] = "2026-11-30T10:00:00.000000Z"
                event["stageTimestamp"] = "2026-11-30T10:00:00.004000Z"
                event["annotations"] = {"authorization.k8s.io/decision": "forbid" if code == 403 else "allow",
                                        "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding"}
                handle.write(json.dumps(event, separators=(",", ":")) + "\n")
                written += 1
                subject_events += (fields.get("impersonatedUser") or fields["user"])["username"] == subject_user
    return {"events": written, "subject_events": subject_events, "bytes": path.stat().st_size}


def _timed(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds of one fresh process, its exit code and stderr."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.monotonic() - started, proc.returncode, proc.stderr.decode(errors="replace")


FLOOR = "import sys\nn = 0\nwith open(sys.argv[1], 'rb', buffering=1 << 20) as f:\n    for line in f:\n        n += 1\n"


def render_markdown(command: str, info: dict, times: list[float], rss: float, floor: float) -> str:
    best = min(times)
    rate = info["events"] / best
    median = sorted(times)[len(times) // 2]
    rows = [("events in log", f"{info['events']:,}"), ("events of the subject", f"{info['subject_events']:,}"),
            ("log size", f"{info['bytes'] / 2**20:,.0f} MiB"),
            ("generate wall time, best", f"{best:.2f} s"), ("generate wall time, median", f"{median:.2f} s"),
            ("events per second (best run)", f"{rate:,.0f}"),
            ("read-lines floor (fresh process)", f"{floor:.2f} s"), ("generate / floor", f"{best / floor:.1f}x"),
            ("peak RSS of generate", f"{rss:.0f} MiB"),
            (f"target: > {TARGET_RATE:,} events/s", "met" if rate > TARGET_RATE else "MISSED"),
            (f"target: < {TARGET_RSS_MB} MB peak RSS", "met" if rss * 2**20 < TARGET_RSS_MB * 10**6 else "MISSED")]
    width = max(len(k) for k, _ in rows)
    value_width = max(len(v) for _, v in rows)
    lines = ["# `rbac generate` benchmark", "", f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} cores; `selinux-mount-agent rbac generate -f LOG --serviceaccount {SUBJECT}` "
             "runs in a fresh process (the time includes interpreter start-up, reading, decoding, the rules and the "
             "output); peak RSS is that process's own.", "",
             f"| {'measure'.ljust(width)} | {'value'.ljust(value_width)} |",
             f"|{'-' * (width + 2)}|{'-' * (value_width + 2)}|"]
    lines += [f"| {k.ljust(width)} | {v.ljust(value_width)} |" for k, v in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "docs" / "rbac-benchmark.md"))
    parser.add_argument("--log", help="keep the generated log at this path")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(args.log) if args.log else Path(tmp) / "kube-audit.log"
        info = write_log(log, args.events, args.seed)
        times = []
        for _ in range(args.runs):
            elapsed, code, err = _timed(_generate_argv(log))
            if code != 0:
                sys.stderr.write(err)
                return 1
            times.append(elapsed)
        peak = _peak_rss(log)
        floor = min(_run_floor(log) for _ in range(args.runs))
    command = " ".join(["python bench/rbac.py", f"--events {args.events}", f"--seed {args.seed}", f"--runs {args.runs}",
                        f"--output {os.path.relpath(args.output, ROOT)}"])
    text = render_markdown(command, info, times, peak, floor)
    print(text)
    write_keeping_notes(args.output, text)
    return 0


def _generate_argv(log: Path) -> list[str]:
    return [sys.executable, "-m", "agent", "rbac", "generate", "-f", str(log), "--serviceaccount", SUBJECT]


def _peak_rss(log: Path) -> float:
    """Peak RSS of one generate run, measured in a child of its own (RUSAGE_CHILDREN keeps the largest child)."""
    script = ("import resource, subprocess, sys\nsubprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
              "stderr=subprocess.DEVNULL, check=True)\nprint(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script] + _generate_argv(log), cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip()) / 1024


def _run_floor(log: Path) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", FLOOR, str(log)], check=True)
    return time.monotonic() - started


if __name__ == "__main__":
    raise SystemExit(main())
