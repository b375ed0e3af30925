"""Writing generated files into a directory other users may write to (a shared work dir, /tmp).

A path-based write (`open(path, "w")`) follows a symbolic link planted under the output's name and writes
wherever it points, with our privileges. So every file is written under a fresh temporary name created with
O_CREAT | O_EXCL | O_NOFOLLOW relative to the directory's descriptor, then renamed over the final name:
rename(2) replaces a link at the destination, it never follows it. An existing file that this program did
not write (a hand-edited module, anything a link stands for) is left alone unless the caller forces it; a
link is only ever replaced, never written through, forced or not.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.errors import InvalidInput

HEAD_BYTES = 4096  # how much of an existing file `ours` gets to look at


@dataclass(frozen=True)
class Output:
    """One file to write: its name inside the directory, its bytes, and the file whose content says whether
    an existing copy is ours (itself by default; a compiled file is vouched for by its source beside it)."""

    name: str
    data: bytes = b""
    vouched_by: str | None = None


def _head(dir_fd: int, name: str) -> tuple[str, bytes]:
    """("absent" | "link" | "file" | "other", first bytes of a regular file), never following a link."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return "absent", b""
    if stat.S_ISLNK(st.st_mode):
        return "link", b""
    if not stat.S_ISREG(st.st_mode):
        return "other", b""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return "other", b""
    try:
        return "file", os.read(fd, HEAD_BYTES)
    finally:
        os.close(fd)


def _problem(dir_fd: int, output: Output, ours: Callable[[bytes], bool], force: bool) -> str | None:
    kind, head = _head(dir_fd, output.name)
    if kind == "absent":
        return None
    if kind == "link":
        return None if force else ("is a symbolic link; output files are never written through one (--force "
                                   "replaces the link itself)")
    if kind == "other":
        return "exists and is not a regular file"
    if force:
        return None
    if output.vouched_by:
        kind, head = _head(dir_fd, output.vouched_by)
    if kind == "file" and ours(head):
        return None
    return "exists and was not written by this command; --force overwrites it"


def _open_dir(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise InvalidInput(f"cannot open the output directory {directory}: {err.strerror}") from None


def refuse_existing(directory: Path, outputs: list[Output], ours: Callable[[bytes], bool], force: bool,
                    dir_fd: int | None = None) -> None:
    """Raise InvalidInput (one line, the first name that would be refused) when any output cannot be written;
    a directory that does not exist yet holds nothing to refuse."""
    own_fd = dir_fd is None
    if own_fd:
        if not os.path.isdir(directory):
            return
        dir_fd = _open_dir(directory)
    try:
        problems = [(o.name, why) for o in outputs if (why := _problem(dir_fd, o, ours, force))]
    finally:
        if own_fd:
            os.close(dir_fd)
    if problems:
        name, why = problems[0]
        more = f" (and {len(problems) - 1} more output file(s))" if len(problems) > 1 else ""
        raise InvalidInput(f"{directory / name} {why}{more}; nothing written")


def write_outputs(directory: Path, outputs: list[Output], ours: Callable[[bytes], bool], force: bool) -> list[Path]:
    """Write every output or none: all are checked, then written to temporary names, then renamed in place."""
    dir_fd = _open_dir(directory)
    temporary: list[tuple[str, str]] = []
    try:
        refuse_existing(directory, outputs, ours, force, dir_fd)
        for output in outputs:
            temp = f".{output.name}.{secrets.token_hex(8)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            temporary.append((temp, output.name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(output.data)
                handle.flush()
                os.fsync(handle.fileno())
        while temporary:
            temp, name = temporary[0]
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            temporary.pop(0)
    except OSError as err:
        raise InvalidInput(f"cannot write to {directory}: {err.strerror}") from None
    finally:
        for temp, _ in temporary:
            try:
                os.unlink(temp, dir_fd=dir_fd)
            except OSError:
                pass
        os.close(dir_fd)
    return [directory / output.name for output in outputs]
