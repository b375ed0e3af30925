"""Waiting in tests for something another thread or process does, without fixed sleeps."""

import subprocess
import time


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (its last answer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def terminate(proc: subprocess.Popen, grace: float = 30.0) -> int | None:
    """Stop a child the way kubelet or systemd would: SIGTERM, then SIGKILL once `grace` seconds pass."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode
