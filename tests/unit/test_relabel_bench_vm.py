"""The relabel benchmark on the enforcing kernel (bench/relabel.py --vm): its arguments, the guest command it
builds, the setfiles spec, the ratio table, the docs section it rewrites; and the guest's test module that
labels the init init_exec_t. No guest is booted here; the figures themselves come from `make vm-bench`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "vm"))

import relabel as relabel_bench  # noqa: E402
import relabel_guest  # noqa: E402
import relabel_vm  # noqa: E402


def _exit_code(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        relabel_bench.parse_args(argv)
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_vm_mode_defaults_to_the_guest_volume_images():
    args = relabel_bench.parse_args(["--vm"])
    assert args.vm and args.size_list == [100_000] and args.fs_list == ["ext4", "xfs"] and args.policy
    host = relabel_bench.parse_args([])
    assert host.size_list == [100_000, 1_000_000] and host.fs_list == ["tmpfs", "ext4"]


@pytest.mark.parametrize("argv, message", [
    (["--vm", "--sizes", "100000,1000000"], "one size"),
    (["--vm", "--fs", "tmpfs"], "not tmpfs"),
    (["--sizes", "10k"], "comma-separated integers"),
    (["--repeat", "0"], "at least 1"),
    (["--guest-run", "--volume-dir", "/x"], "needs --volume-dir and --out"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    code, line = _exit_code(argv, capsys)
    assert code == 2 and message in line


def test_the_guest_command_runs_the_bench_step_with_the_go_binary(monkeypatch):
    args = relabel_bench.parse_args(["--vm", "--policy", "f40", "--fs", "ext4", "--repeat", "2"])
    argv = relabel_vm.guest_command(args, "/keep", "/tmp/relabel-go", "go-selinux 1.10.0")
    cut = argv.index("--")
    assert argv[0].endswith("vm/run-enforcing-tests")
    assert argv[1:cut] == ["--policy", "f40", "--step", "relabel-bench", "--keep", "/keep",
                           "--guest-file", "relabel-go=/tmp/relabel-go"]
    guest = relabel_bench.parse_args(["--guest-run", "--volume-dir", "/v", "--out", "/o", *argv[cut + 1:]])
    assert guest.fs_list == ["ext4"] and guest.size_list == [100_000] and guest.repeat == 2
    assert guest.go_note == "go-selinux 1.10.0"
    # Another size needs volume images of that size: the runner is told to build them.
    big = relabel_vm.guest_command(relabel_bench.parse_args(["--vm", "--sizes", "1000000"]), "/k", None, "")
    assert big[big.index("--large-files") + 1] == "1000000" and "--guest-file" not in big
    assert big[big.index("--memory") + 1] == str(relabel_vm.GUEST_MEMORY_LARGE_MB)
    assert "--memory" not in argv


def test_volume_images_keep_one_size_for_the_tests_and_grow_only_for_larger_trees():
    sys.path.insert(0, str(ROOT))
    from tests.enforcing.volume_images import IMAGE_MB, file_counts, image_mb

    assert {image_mb(count) for count in file_counts().values()} == {IMAGE_MB}
    assert image_mb(200_000) == IMAGE_MB
    # A million files: xfs's 512-byte inodes alone take 488 MiB, more than IMAGE_MB leaves beside the log.
    assert image_mb(1_000_000) * 2**20 >= 1_000_000 * 1024 + IMAGE_MB * 2**20


def test_the_setfiles_spec_matches_the_tree_and_nothing_beside_it():
    spec = relabel_guest.setfiles_spec("/tmp/relabel-x/mnt-ext4", relabel_bench.LABEL_B)
    pattern, label = spec.rstrip("\n").split("\t")
    assert label == relabel_bench.LABEL_B
    for path in ("/tmp/relabel-x/mnt-ext4", "/tmp/relabel-x/mnt-ext4/d000/f000001"):
        assert re.fullmatch(pattern, path)
    for path in ("/tmp/relabel-x/mnt-ext4x", "/tmp/relabel-xXmnt-ext4"):
        assert not re.fullmatch(pattern, path)


def _report(times, cpus=2):
    rows = [dict(tree="ext4 100k", entries=100_102, runner=runner, relabel_s=r, again_s=a)
            for runner, (r, a) in times.items()]
    env = dict(kernel="6.1.0", cpus=cpus, selinux="Enforcing", policy="targeted",
               domain="system_u:system_r:unconfined_service_t:s0", chcon="chcon 9.1", setfiles="3.4", go="1.10.0")
    return dict(where="guest", environment=env, count=100_000, repeat=1, rows=rows, skipped=["xfs: no image"])


def test_checks_give_the_issue_ratios_and_the_get_to_set_cost():
    report = _report({"ours-2": (4.0, 1.0), "ours-2 no-compare": (3.0, 3.1), "chcon -R": (12.0, 12.0),
                      "go-selinux": (5.0, 5.0), "setfiles -F": (20.0, 8.0)})
    found = {check: (value, met) for _, check, value, _, met in relabel_guest.checks(report)}
    assert found["chcon -R / ours-N, relabel pass"] == (3.0, True)
    assert found["go-selinux / ours-N, relabel pass"] == (1.25, False)
    assert found["setfiles -F / ours-N, relabel pass"] == (5.0, None)
    assert found["ours-N relabel pass / already-labelled pass"] == (4.0, True)
    value, met = found["ours-N gets-only pass / sets-only pass (cost of a get vs a set)"]
    assert value == pytest.approx(1 / 3) and met is None
    text = relabel_guest.render(report, "python bench/relabel.py --vm")
    assert "| go-selinux / ours-N, relabel pass | 1.25 | >= 1.5x | **no** |" in text
    assert "| chcon -R | 12.000 | 8,342 | 3.00x | 12.000 | 8,342 |" in text
    assert "Command: `python bench/relabel.py --vm` (as root" in text and "Not measured: xfs: no image." in text


def test_the_guest_section_is_appended_once_then_replaced_in_place():
    document = "# Relabel benchmark\n\nhost table\n\n<!-- marker -->\nnotes\n"
    first = relabel_guest.replace_section(document, "guest table 1")
    assert first.startswith(document.rstrip("\n")) and first.count(relabel_guest.SECTION_BEGIN) == 1
    second = relabel_guest.replace_section(first + "\nmore notes\n", "guest table 2\n")
    assert "guest table 1" not in second and "guest table 2" in second
    assert second.endswith("more notes\n") and second.count(relabel_guest.SECTION_END) == 1


@pytest.mark.skipif(not (shutil.which("checkmodule") and shutil.which("semodule_package")),
                    reason="checkmodule and semodule_package (apt: checkpolicy, semodule-utils) are not installed")
def test_the_guest_test_module_carries_the_init_exec_t_label_of_the_init(tmp_path):
    import image

    package = image._test_module(tmp_path, "smatest", "smatest.te")
    data = package.read_bytes()
    assert b"/usr/sbin/sma-init" in data and b"init_exec_t" in data
    # A module without an .fc file is packaged without one.
    bare = image._test_module(tmp_path, "debianshims", "debian-shims.te")
    assert b"sma-init" not in bare.read_bytes()


def test_the_guest_step_is_one_of_the_runner_choices():
    proc = subprocess.run([sys.executable, str(ROOT / "vm" / "run-enforcing-tests"), "--help"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0 and "--step {pytest,relabel-bench}" in proc.stdout and "--guest-file" in proc.stdout


def test_cpu_columns_show_where_the_relabel_pass_spends_its_time():
    # Where no profiler runs (the guest), user and system CPU of each runner's best relabel pass say whether the
    # time goes to our own code or to the kernel's syscalls.
    report = _report({"ours-2": (4.0, 1.0), "chcon -R": (12.0, 12.0)})
    report["rows"][0]["relabel_cpu"] = [0.25, 7.5]
    report["rows"][1]["relabel_cpu"] = [0.01, 11.9]
    text = relabel_guest.render(report, "")
    assert "| ours-2 | 4.000 | 25,026 | 1.00x | 1.000 | 100,102 | 0.250 | 7.500 |" in text
    assert "relabel CPU user s | relabel CPU sys s |" in text
    assert relabel_bench.cpu_seconds("cpu 0.5 1.25\n3.0\n") == (0.5, 1.25)


def test_the_floor_travels_to_the_guest_as_a_module_the_guest_step_passes_on():
    args = relabel_bench.parse_args(["--vm", "--fs", "xfs"])
    argv = relabel_vm.guest_command(args, "/keep", None, "", "/b/_floor.cpython-311-x86_64-linux-gnu.so")
    cut = argv.index("--")
    assert argv[argv.index("--guest-file") + 1] == "_floor.so=/b/_floor.cpython-311-x86_64-linux-gnu.so"
    # The guest step finds it in .vm-run and hands its directory to the guest run.
    step = (ROOT / "vm" / "guest" / "run-tests").read_text()
    assert "[ -f .vm-run/_floor.so ]" in step and "--floor-dir /mnt/project/.vm-run" in step
    guest = relabel_bench.parse_args(["--guest-run", "--volume-dir", "/v", "--out", "/o", "--floor-dir", "/f",
                                      *argv[cut + 1:]])
    assert guest.floor_dir == "/f"
    table = relabel_guest.guest_runners(None, "/spec", 2, "/f")
    assert {"floor-2", "floor-2 compare"} <= set(table) and "floor-1" not in table
    assert "floor-2" not in relabel_guest.guest_runners(None, "/spec", 2)


def test_the_compare_floor_shows_what_a_get_and_set_loop_scores_against_the_baselines():
    report = _report({"ours-2": (2.5, 0.5), "chcon -R": (5.5, 5.5), "go-selinux": (3.6, 3.6),
                      "floor-2 compare": (2.4, 0.45)})
    found = {check: (value, met) for _, check, value, _, met in relabel_guest.checks(report)}
    assert found["chcon -R / floor-N compare (the same ratio for a loop with no walk)"] == (pytest.approx(5.5 / 2.4), None)
    assert found["go-selinux / floor-N compare (the same ratio for a loop with no walk)"] == (1.5, None)
    assert found["floor-N compare / ours-N, relabel pass (how close ours is to the floor)"] == (
        pytest.approx(2.4 / 2.5), None)
    # Without the floor rows there is no bound to state.
    plain = _report({"ours-2": (2.5, 0.5), "chcon -R": (5.5, 5.5)})
    assert not any("floor" in check for _, check, _, _, _ in relabel_guest.checks(plain))
