"""Benchmark of the CSI shim in proxy mode (needs root: the lifecycle part mounts tmpfs).

1. Added latency: the same Node calls sent straight to a backend node plugin and through the shim, p50/p99
   per method. The backend answers without mounting (mode `none`), so what is measured is the shim: one more
   gRPC hop over a unix socket, the argument and label checks, the state journal append and, for calls that
   carry context=, the look-up of the mount in /proc/self/mountinfo.
   NodePublishVolume with context= cannot be verified without a mount, so it is timed against a backend that
   mounts (tmpfs at stage, a bind mount at publish) and drops context= as libmount does: the shim then runs
   its costliest path, the verifier (which reports the context dropped) and the relabel fallback on the
   published path. Each timed publish gets a freshly staged volume of its own, direct and proxied alike, and
   is unpublished and unstaged (untimed) right after, so the mount table stays the size of a quiet node's.
2. Concurrency: N volume lifecycles (stage, publish, unpublish, unstage, with kubelet's context= flag) at
   once through the shim to a backend that mounts tmpfs and drops context= (what libmount does without
   SELinux), so every publish also runs the verifier and the relabel fallback. Zero errors expected, and no
   mount left behind.

Usage: sudo .venv/bin/python bench/csi.py [--calls 1000] [--volumes 200] [--state-dir DIR]
The shim and the backend run as separate processes, as on a node. The exit code is 0 only when every added
p99 of forwarding and verification is below the target (2 ms) and the lifecycles had no error and left no
mount; otherwise 1, with each missed condition printed. The publish whose label the backend dropped is timed
and printed too, but not held to the target: its extra time is the relabel that the runtime would otherwise
have made, not the shim's overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grpc  # noqa: E402

from csi_shim.proto import csi_pb2 as pb  # noqa: E402
from csi_shim.proto import csi_pb2_grpc as rpc  # noqa: E402
from tests.root.csi_helpers import (LABEL_A, Client, capability, cleanup, context_flag,  # noqa: E402
                                    mounts_under)


def wait_socket(path: str, proc) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{path} did not appear")
        time.sleep(0.02)


def start(tmp: str, mode: str, state_dir: str):
    backend = subprocess.Popen([sys.executable, "-m", "tests.root.csi_backend", f"{tmp}/backend.sock", mode],
                               cwd=REPO)
    wait_socket(f"{tmp}/backend.sock", backend)
    shim = subprocess.Popen([sys.executable, "-c", "from agent.cli.main import main; raise SystemExit(main())",
                             "csi", "--csi-endpoint", f"unix://{tmp}/csi.sock", "--backend-endpoint",
                             f"unix://{tmp}/backend.sock", "--state-dir", state_dir, "--kubelet-root",
                             f"{tmp}/kubelet", "--log-level", "error"], cwd=REPO)
    wait_socket(f"{tmp}/csi.sock", shim)
    return backend, shim


def stop(*procs) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


def percentile(samples, q):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def requests(client: Client, index: int, flags, prefix: str = ""):
    volume_id = f"vol-{prefix}{index}"
    staging = client.staging_path(volume_id)
    target = client.target_path(f"pod-{prefix}{index}")
    cap = capability(flags)
    return {
        "NodeGetCapabilities": pb.NodeGetCapabilitiesRequest(),
        "NodeStageVolume": pb.NodeStageVolumeRequest(volume_id=volume_id, staging_target_path=staging,
                                                     volume_capability=cap),
        "NodePublishVolume": pb.NodePublishVolumeRequest(volume_id=volume_id, staging_target_path=staging,
                                                         target_path=target, volume_capability=cap),
        "NodeUnpublishVolume": pb.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target),
        "NodeUnstageVolume": pb.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging),
    }


TARGET_MS = 2.0


def timed(stub, method, request) -> float:
    started = time.perf_counter()
    getattr(stub, method)(request, timeout=30)
    return (time.perf_counter() - started) * 1e3


def latency(tmp: str, calls: int, state_dir: str, with_context: bool) -> dict:
    backend, shim = start(tmp, "none", state_dir)
    try:
        client = Client(f"{tmp}/csi.sock", f"{tmp}/kubelet")
        direct = rpc.NodeStub(grpc.insecure_channel(f"unix://{tmp}/backend.sock"))
        flags = [context_flag(LABEL_A)] if with_context else []
        results = {}
        # A backend that mounts nothing cannot satisfy a verified publish with context=: with context= only
        # NodeStageVolume is timed (its verification is deferred to publish when nothing is mounted).
        methods = ["NodeStageVolume"] if with_context else list(requests(client, 0, flags))
        for method in methods:
            samples = {"direct": [], "proxy": []}
            for index in range(calls + 50):
                # A new volume per call, so every stage/publish adds a record and every unpublish/unstage
                # removes one: each timed call pays for one state change, none is a cheap repeat.
                request = requests(client, index, flags)[method]
                for name, stub in (("direct", direct), ("proxy", client.node)):
                    value = timed(stub, method, request)
                    if index >= 50:  # warm-up
                        samples[name].append(value)
            results[method] = samples
        client.close()
        return results
    finally:
        stop(shim, backend)


def publish_latency(tmp: str, calls: int, state_dir: str) -> dict:
    """NodePublishVolume with context= against a backend that mounts and drops the flag (see the docstring)."""
    backend, shim = start(tmp, "drop", state_dir)
    try:
        client = Client(f"{tmp}/csi.sock", f"{tmp}/kubelet")
        direct = rpc.NodeStub(grpc.insecure_channel(f"unix://{tmp}/backend.sock"))
        flags = [context_flag(LABEL_A)]
        samples = {"direct": [], "proxy": []}
        for index in range(calls + 50):
            for name, stub in (("direct", direct), ("proxy", client.node)):
                request = requests(client, index, flags, prefix=f"{name}-")
                stub.NodeStageVolume(request["NodeStageVolume"], timeout=30)
                value = timed(stub, "NodePublishVolume", request["NodePublishVolume"])
                stub.NodeUnpublishVolume(request["NodeUnpublishVolume"], timeout=30)
                stub.NodeUnstageVolume(request["NodeUnstageVolume"], timeout=30)
                if index >= 50:  # warm-up
                    samples[name].append(value)
        client.close()
        return {"NodePublishVolume": samples}
    finally:
        stop(shim, backend)


def lifecycles(tmp: str, volumes: int, state_dir: str) -> tuple[int, float, list]:
    backend, shim = start(tmp, "drop", state_dir)
    errors = []
    try:
        client = Client(f"{tmp}/csi.sock", f"{tmp}/kubelet")
        flags = ["nosuid", context_flag(LABEL_A)]

        def one(index):
            volume_id = f"vol-c{index}"
            staging = client.staging_path(volume_id)
            target = client.target_path(f"pod-c{index}")
            client.stage(volume_id, staging, flags)
            client.publish(volume_id, staging, target, flags, pod=("bench", f"pod-{index}"))
            client.unpublish(volume_id, target)
            client.unstage(volume_id, staging)

        started = time.perf_counter()
        with futures.ThreadPoolExecutor(max_workers=volumes) as pool:
            for future in [pool.submit(one, i) for i in range(volumes)]:
                try:
                    future.result()
                except grpc.RpcError as err:
                    errors.append(f"{err.code().name}: {err.details()}")
        elapsed = time.perf_counter() - started
        client.close()
        return volumes, elapsed, errors
    finally:
        stop(shim, backend)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--volumes", type=int, default=200)
    parser.add_argument("--state-dir", help="state dir (default: under the temporary directory)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="csi-bench-")
    state_dir = args.state_dir or f"{tmp}/state"
    os.makedirs(f"{tmp}/kubelet")
    try:
        print(f"added latency of the shim (proxy) over calling the backend directly; {args.calls} calls each; "
              f"state dir {state_dir}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'method':<22}{'context=':<10}{'direct p50':>11}{'p99':>8}{'proxy p50':>11}{'p99':>8}"
              f"{'added p50':>11}{'p99':>8}  (ms)")
        missed = []
        runs = [("no", lambda: latency(tmp, args.calls, state_dir, False)),
                ("yes", lambda: latency(tmp, args.calls, state_dir, True)),
                ("yes*", lambda: publish_latency(tmp, args.calls, state_dir))]
        worst = 0.0
        fallback = None
        for context_column, run in runs:
            for method, samples in run().items():
                d50, d99 = percentile(samples["direct"], 0.5), percentile(samples["direct"], 0.99)
                p50, p99 = percentile(samples["proxy"], 0.5), percentile(samples["proxy"], 0.99)
                added = [p - d for p, d in zip(samples["proxy"], samples["direct"])]
                a50, a99 = statistics.median(added), percentile(added, 0.99)
                if context_column == "yes*":
                    # Not the shim's forwarding cost: the relabel the runtime would otherwise make, done here
                    # because the backend failed to apply the label. Reported, not held to the target.
                    fallback = (a50, a99)
                    print(f"{method:<22}{context_column:<10}{d50:>11.3f}{d99:>8.3f}{p50:>11.3f}"
                          f"{p99:>8.3f}{a50:>11.3f}{a99:>8.3f}")
                    continue
                worst = max(worst, a99)
                if a99 >= TARGET_MS:
                    missed.append(f"{method} (context= {context_column}): added p99 {a99:.3f} ms is not below "
                                  f"the {TARGET_MS:g} ms target")
                print(f"{method:<22}{context_column:<10}{d50:>11.3f}{d99:>8.3f}{p50:>11.3f}"
                      f"{p99:>8.3f}{a50:>11.3f}{a99:>8.3f}")
        print("* against a backend that mounts and drops context=: verification (dropped) and relabel fallback;"
              " this row is the fallback's cost and is not held to the target")
        if fallback:
            print(f"fallback (verify, find the label dropped, relabel an empty volume): added p50 {fallback[0]:.3f} "
                  f"ms, p99 {fallback[1]:.3f} ms")
        print(f"worst added p99 (forwarding and verification): {worst:.3f} ms (target < {TARGET_MS:g} ms): "
              f"{'met' if worst < TARGET_MS else 'NOT met'}; load average {os.getloadavg()[0]:.2f}")
        count, elapsed, errors = lifecycles(tmp, args.volumes, state_dir)
        left = mounts_under(f"{tmp}/kubelet")
        print(f"{count} concurrent lifecycles (stage, publish with context= dropped by the backend -> relabel "
              f"fallback, unpublish, unstage): {elapsed:.2f} s, {len(errors)} errors, {len(left)} mounts left")
        for error in errors[:5]:
            print("  error:", error)
        if errors:
            missed.append(f"concurrent lifecycles: {len(errors)} errors (zero expected)")
        if left:
            missed.append(f"concurrent lifecycles: {len(left)} mounts left behind (none expected)")
        for line in missed:
            print("NOT MET:", line)
        print("result:", "all conditions met" if not missed else f"{len(missed)} condition(s) missed")
        return 1 if missed else 0
    finally:
        cleanup(tmp)


if __name__ == "__main__":
    raise SystemExit(main())
