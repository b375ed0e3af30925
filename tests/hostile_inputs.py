"""Input files built to cost more than they are worth, and a run of the real CLI on one of them.

Each must be refused early: exit 2, one line on stderr, no traceback. The subprocess timeout is generous (the
refusals take well under a second); before the bounds existed, the alias bomb ran for about a minute and took
gigabytes, which this timeout and the address-space limit turn into a failure instead of a stuck test run.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30  # seconds; every refusal below takes well under one
MEMORY = 2 << 30  # bytes of address space for the child: far more than any refusal needs

POD_HEAD = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: d}\nspec:\n  containers: [{name: c}]\n"


def alias_bomb() -> str:
    """'Billion laughs': nine levels of nine aliases, 9**9 strings once expanded, from 400 bytes of text."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias-bomb.yaml": alias_bomb(),
    "alias-cycle.yaml": "&list {kind: List, apiVersion: v1, items: [*list]}\n",
    "deep.json": "[" * 20_000 + "]" * 20_000,
    "deep-flow.yaml": "items: " + "[" * 20_000 + "]" * 20_000 + "\n",
    "deeper-flow.yaml": "items: " + "[" * 200_000 + "]" * 200_000 + "\n",
    # Block nesting needs indentation that grows with depth: 1,200 levels are already 1.4 MB of text.
    "deep-block.yaml": "".join("  " * level + "a:\n" for level in range(1_200)),
    "long-integer.json": '{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d"},"spec":{'
                         '"containers":[{"name":"c"}],"securityContext":{"runAsUser":' + "9" * 5000 + "}}}",
    "long-integer.yaml": POD_HEAD + "  securityContext:\n    runAsUser: " + "9" * 5000 + "\n",
    "volume-without-name.yaml": POD_HEAD.replace("[{name: c}]", "[{name: c, volumeMounts: [{name: x, mountPath: "
                                                 "/x}]}]") + "  volumes:\n  - emptyDir: {}\n",
    "claim-volume-without-name.yaml": POD_HEAD + "  volumes:\n  - persistentVolumeClaim: {claimName: c}\n"
                                      "---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: c, "
                                      "namespace: d}\nspec: {volumeName: v, accessModes: [ReadWriteOnce]}\n---\n"
                                      "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: v}\nspec: "
                                      "{accessModes: [ReadWriteOnce], csi: {driver: d, volumeHandle: v}}\n",
}

# What the one line on stderr says for each.
REFUSED = {
    "alias-bomb.yaml": "expands its aliases",
    "alias-cycle.yaml": "refers to a node that contains it",
    "deep.json": "nested more than 1,000 levels",
    "deep-flow.yaml": "nested more than 1,000 levels",
    "deeper-flow.yaml": "nested more than 1,000 levels",
    "deep-block.yaml": "nested more than 1,000 levels",
    "long-integer.json": "more than 4,300 digits",
    "long-integer.yaml": "more than 4,300 digits",
    "volume-without-name.yaml": "Pod d/p: spec.volumes[0].name is missing",
    "claim-volume-without-name.yaml": "Pod d/p: spec.volumes[0].name is missing",
}


def assert_refused(result: subprocess.CompletedProcess, words: str) -> None:
    """Exit 2, nothing on stdout, one line on stderr that says `words`, no traceback."""
    assert (result.returncode, result.stdout) == (2, ""), result.stderr[-500:]
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr, result.stderr[:500]


def run_cli(tmp_path, name: str, *argv: str) -> subprocess.CompletedProcess:
    """`python -m agent ARGV -f FILE` on the hostile file `name`, in a child with bounded time and memory."""
    path = tmp_path / name
    path.write_text(HOSTILE[name])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        # The memory cap is set by prlimit(1), not a preexec_fn: the test process may run gRPC threads, and
        # Python code between fork and exec in a threaded process can hang or abort (gRPC's fork handlers
        # wrote "epoll_wait error: Bad file descriptor" into the child's stderr).
        return subprocess.run(["prlimit", f"--as={MEMORY}", "--", sys.executable, "-m", "agent", *argv, "-f",
                               str(path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{argv[0]} -f {name} still ran after {TIMEOUT} s") from None
