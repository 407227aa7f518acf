"""The memory guard's two paths, without TensorFlow: the check the training thread makes
before each batch, and the backstop for a step that never returns to Python."""

from __future__ import annotations

import time

import pytest

from searcher.memory import MemoryGuard, MemoryLimitExceeded, rss_mb


def test_the_check_between_batches_trips_past_the_limit():
    guard = MemoryGuard(rss_mb() - 1)
    with guard:
        assert guard.over_limit() and guard.tripped
    assert guard.peak_mb >= guard.limit_mb
    assert not MemoryGuard(rss_mb() + 4096).over_limit()
    assert not MemoryGuard(None).over_limit(), "no limit, no trip"


def test_the_backstop_ends_a_step_that_never_returns_with_its_own_exception():
    """Not KeyboardInterrupt: a worker takes that for a stop asked by the user (and, being
    one-shot, would then ignore the user's real SIGTERM)."""
    guard = MemoryGuard(rss_mb() - 1, interval_s=0.05, backstop_s=0.3)
    began = time.monotonic()
    with pytest.raises(MemoryLimitExceeded):
        with guard:
            while time.monotonic() - began < 30:  # a "batch" that does not call back
                time.sleep(0.01)
    assert guard.tripped and time.monotonic() - began < 10


def test_the_backstop_waits_while_batches_go_on():
    guard = MemoryGuard(rss_mb() - 1, interval_s=0.05, backstop_s=1.0)
    with guard:
        for _ in range(40):  # 2 s of batches, each one checking in
            guard.progressed(time.monotonic())
            time.sleep(0.05)
    assert not guard.tripped, "the check between batches is the one that fails the trial"
