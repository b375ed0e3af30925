"""One shim per state directory, for the life of the process.

Two instances on one state directory would each load the volume records, write them back over each other,
and bind the same CSI socket: gRPC removes whatever is at the path before it binds, so the second one takes the
live socket from the first. `InstanceLock.acquire` takes an exclusive flock(2) on `instance.lock` in the state
directory before anything reads the state or touches the socket, writes the holder's pid into it, and keeps the
descriptor open until `release()` or the process ends (the kernel drops the lock then, even after kill -9).
"""

from __future__ import annotations

import fcntl
import os

from agent.errors import AgentError, InvalidInput

LOCK_NAME = "instance.lock"


class InstanceRunning(AgentError):
    """Another process holds the state directory."""

    code = "FAILED_PRECONDITION"


def holder_text(content: bytes) -> str:
    """What the lock file says about its holder, for the error message."""
    text = content.decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "a process whose pid is not written yet"


class InstanceLock:
    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str) -> "InstanceLock":
        path = os.path.join(state_dir, LOCK_NAME)
        try:
            os.makedirs(state_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise InvalidInput(f"cannot lock the state directory: {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_text(os.pread(fd, 32, 0))
            os.close(fd)
            raise InstanceRunning(f"state directory {state_dir} is in use by {holder} ({path}); "
                                  "one instance per state directory") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Unlock by closing. The file stays: removing it could let two processes lock two different files
        of the same name (one opened the old one before the unlink, the other creates a new one)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __del__(self):
        self.release()
