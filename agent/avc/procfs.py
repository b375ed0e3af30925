"""The one reader of /proc for attribution: a process's start time and cgroup, below a proc root that tests
point at a fake tree. `parse_start_time` reads the text it returns (pure)."""

from __future__ import annotations


def parse_start_time(stat_text: str) -> int | None:
    """Field 22 (starttime, in clock ticks since boot) of /proc/<pid>/stat. comm may hold spaces and ')'."""
    close = stat_text.rfind(")")
    if close < 0:
        return None
    rest = stat_text[close + 2:].split()
    # After "pid (comm) " the fields start at 3 (state), so starttime (22) is index 19.
    if len(rest) < 20:
        return None
    try:
        return int(rest[19])
    except ValueError:
        return None


class ProcReader:
    """Reads /proc/<pid>/stat and /proc/<pid>/cgroup below a proc root."""

    def __init__(self, proc_root: str = "/proc"):
        self.proc_root = proc_root

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(f"{self.proc_root}/{pid}/{name}", "rb") as handle:
                return handle.read(65536).decode("utf-8", "replace")
        except OSError:
            return None

    def start_time(self, pid: int) -> int | None:
        text = self._read(pid, "stat")
        return parse_start_time(text) if text else None

    def cgroup(self, pid: int) -> str | None:
        return self._read(pid, "cgroup")
