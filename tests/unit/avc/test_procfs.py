"""agent/avc/procfs.py: the /proc reader over a fake tree, and the start time read from /proc/<pid>/stat."""

from agent.avc.procfs import ProcReader, parse_start_time


def test_start_time_survives_odd_comm():
    fields = " ".join(["S"] + [str(n) for n in range(4, 22)] + ["987654"] + ["0"] * 30)
    assert parse_start_time(f"123 (we ird) )name) {fields}") == 987654
    assert parse_start_time("garbage") is None
    assert parse_start_time("1 (x) S 1 2") is None


def write_proc(root, pid, cgroup, start=1000):
    directory = root / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
    (directory / "stat").write_text(f"{pid} (cat) {' '.join(fields)}\n")
    (directory / "cgroup").write_text(cgroup + "\n")


def test_reader_reads_stat_and_cgroup_below_its_root(tmp_path):
    write_proc(tmp_path, 4242, "0::/kubepods/pod", start=777)
    reader = ProcReader(str(tmp_path))
    assert reader.start_time(4242) == 777 and reader.cgroup(4242) == "0::/kubepods/pod\n"
    assert reader.start_time(4243) is None and reader.cgroup(4243) is None
    (tmp_path / "4242" / "stat").write_text("garbage")
    assert reader.start_time(4242) is None
