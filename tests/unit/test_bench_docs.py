"""The benchmarks' report code: target checks, bounds and the Markdown that keeps hand-written notes."""

from __future__ import annotations

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
sys.path.insert(0, BENCH)

import notes  # noqa: E402
import relabel as relabel_bench  # noqa: E402


def test_notes_below_the_marker_survive_a_rewrite(tmp_path):
    path = str(tmp_path / "bench.md")
    notes.write_keeping_notes(path, "# table 1\n")
    assert open(path).read() == "# table 1\n"
    with open(path, "a") as handle:
        handle.write(f"\n{notes.MARKER}\n\n## Notes\nwritten by hand\n")
    notes.write_keeping_notes(path, "# table 2\n\n")
    text = open(path).read()
    assert text.startswith("# table 2\n\n" + notes.MARKER) and text.endswith("written by hand\n")
    assert "table 1" not in text and not os.path.exists(path + ".tmp")


def _rows(tree, times):
    return [dict(tree=tree, fs="ext4", shape="dirs", size=1000, entries=1000, runner=runner, relabel_s=r,
                 again_s=a, rss_mb=10.0) for runner, (r, a) in times.items()]


@pytest.fixture
def two_cpus(monkeypatch):
    monkeypatch.setattr(relabel_bench, "CPUS", 2)


def test_targets_and_bounds(two_cpus):
    # ours-2 2 s; chcon 9 s (4.5x: met); go 2.5 s (1.25x: missed; the compare floor 1.8 s gives a bound of
    # 1.39, so the target is out of reach); per core 0.5 (bound 0.8); already pass 2x faster.
    results = _rows("t", {"ours-1": (4.0, 2.0), "ours-2": (2.0, 1.0), "chcon -R": (9.0, 9.0),
                          "go-selinux": (2.5, 2.5), "floor-1": (2.0, 2.0), "floor-2": (1.2, 1.2),
                          "floor-1 compare": (2.5, 1.0), "floor-2 compare": (1.8, 0.6)})
    checks = {check: (value, met, bound) for _, check, value, _, met, bound in relabel_bench.summarise(results, [1000])}
    assert checks["ours-N vs chcon -R"] == pytest.approx((4.5, True, 5.0))
    value, met, bound = checks["ours-N vs go-selinux"]
    assert (round(value, 2), met, round(bound, 2)) == (1.25, False, 1.39)
    value, met, bound = checks["ours-1 vs floor-1 (per core)"]
    assert (value, met, bound) == (0.5, False, 0.8)
    assert checks["ours-N already-labelled vs relabel pass"][:2] == (2.0, True)
    text = relabel_bench.render_markdown(results, [("t", 1, 250.0), ("t", 2, 500.0)],
                                         relabel_bench.summarise(results, [1000]), "cmd", "go")
    assert "| t | ours-N vs go-selinux | 1.25 | >= 1.5x | **no** | 1.39 | no |" in text
    assert "| t | ours-N vs chcon -R | 4.50 | >= 3.0x | yes | 5.00 | yes |" in text
    assert "| t | 250 | 500 |" in text
