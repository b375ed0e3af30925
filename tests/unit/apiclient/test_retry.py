"""agent/apiclient/retry.py: the backoff schedule (a pure function, checked for every attempt) and the failure streak."""

import threading

import pytest

from agent.apiclient.retry import BASE_SECONDS, CAP_SECONDS, Backoff, FailureStreak

FRACTIONS = (0.0, 1e-9, 0.25, 0.5, 0.999999)


def test_ceilings_double_from_the_base_until_the_cap_then_stay():
    backoff = Backoff(base=0.5, cap=30.0)
    assert [backoff.ceiling(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_every_attempt_waits_within_its_window_and_grows_monotonically():
    """Every attempt from the first to the 2000th (far past the cap and past where 2**n overflows a float)."""
    backoff = Backoff()
    previous = 0.0
    for attempt in range(1, 2001):
        ceiling = backoff.ceiling(attempt)
        assert ceiling == min(CAP_SECONDS, BASE_SECONDS * 2 ** min(attempt - 1, 64)), attempt
        assert previous <= ceiling <= CAP_SECONDS, attempt
        delays = [backoff.delay(attempt, f) for f in FRACTIONS]
        assert delays == sorted(delays), attempt  # the fraction maps linearly onto the window
        assert delays[0] == 0.0 and all(0.0 <= d < ceiling for d in delays), attempt  # full jitter from 0
        assert backoff.delay(attempt, 0.5) == pytest.approx(ceiling / 2), attempt
        previous = ceiling


def test_a_long_outage_settles_at_the_cap():
    backoff = Backoff(base=0.8, cap=60.0)
    first_capped = next(n for n in range(1, 100) if backoff.ceiling(n) == 60.0)
    assert first_capped == 8  # 0.8 * 2**7 = 102.4 > 60, 0.8 * 2**6 = 51.2
    # The mean wait of a capped attempt is half the cap: a watch tries about once per 30 s, never in step.
    assert sum(backoff.delay(50, i / 1000) for i in range(1000)) / 1000 == pytest.approx(30.0, rel=0.01)


@pytest.mark.parametrize("attempt,fraction", [(0, 0.5), (-1, 0.5), (1, 1.0), (1, -0.1), (3, 2.0)])
def test_out_of_range_arguments_are_refused(attempt, fraction):
    with pytest.raises(ValueError):
        Backoff().delay(attempt, fraction)


@pytest.mark.parametrize("base,cap", [(0, 1), (-1, 1), (2, 1)])
def test_a_backoff_needs_a_positive_base_below_its_cap(base, cap):
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def test_a_streak_is_one_line_when_it_starts_and_one_when_every_watch_works_again():
    streak = FailureStreak("API server https://k")
    lines = [streak.failed("/pods", "refused"), streak.failed("/pvs", "refused"), streak.failed("/pods", "refused"),
             streak.succeeded("/pods"), streak.failed("/pvs", "refused"), streak.succeeded("/pvs")]
    assert lines[1:4] == [None, None, None] and lines[4] is None
    assert lines[0] == "API server https://k: refused; retrying with backoff (one line when it works again)"
    assert lines[5] == "API server https://k: working again after 4 failed attempts"
    assert streak.attempts == 0
    # A success outside a streak says nothing; the next streak counts from 1.
    assert streak.succeeded("/pods") is None
    assert streak.failed("/pods", "gone") is not None
    assert streak.succeeded("/pods") == "API server https://k: working again after 1 failed attempt"


def test_a_streak_counts_failures_from_many_threads():
    streak = FailureStreak()
    starts = []

    def fail(key):
        for _ in range(500):
            line = streak.failed(key, "x")
            if line:
                starts.append(line)

    threads = [threading.Thread(target=fail, args=(k,)) for k in ("a", "b", "c", "d")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 1 and streak.attempts == 2000
    assert [streak.succeeded(k) for k in "abc"] == [None, None, None]
    assert streak.succeeded("d").endswith("after 2000 failed attempts")
