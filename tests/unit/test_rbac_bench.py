"""bench/rbac.py: the log it writes is one `rbac generate` reads whole, and its table says met or missed."""

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench")
sys.path.insert(0, BENCH)

import rbac as rbac_bench  # noqa: E402

from agent.rbac.recorder import Recorder  # noqa: E402


def test_the_generated_log_is_all_usable_events(tmp_path):
    log = tmp_path / "audit.log"
    info = rbac_bench.write_log(log, 3000, seed=1)
    assert info["events"] == 3000 and len(log.read_bytes().splitlines()) == 3000
    with open(log, "rb") as handle:
        recorder = Recorder("system:serviceaccount:" + rbac_bench.SUBJECT).feed_all([("log", handle)])
    requests = recorder.finish()
    assert (recorder.events, recorder.bad) == (3000, 0)
    assert 0 < sum(requests.values()) <= info["subject_events"]


def test_targets_in_the_table():
    info = {"events": 1_000_000, "subject_events": 6000, "bytes": 800 * 2**20}
    met = rbac_bench.render_markdown("cmd", info, [4.0, 4.5, 5.0], 30.0, 1.0)
    assert "| events per second (best run)     | 250,000   |" in met
    assert "| target: > 200,000 events/s       | met       |" in met
    assert "| target: < 100 MB peak RSS        | met       |" in met
    missed = rbac_bench.render_markdown("cmd", info, [6.0], 120.0, 1.0)
    assert "| target: > 200,000 events/s       | MISSED    |" in missed
    assert "| target: < 100 MB peak RSS        | MISSED    |" in missed
