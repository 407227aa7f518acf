"""Outages: the backoff and deadline of a process waiting for its database, and when it may
judge heartbeats again (fast: a fake clock; the 3-minute outage with real workers is in
test_distributed.py)."""

from __future__ import annotations

import pytest
import sqlalchemy.exc

from searcher.outage import DatabaseUnavailable, Outage, is_unreachable


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _refused() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(
        'connection to server at "127.0.0.1", port 5999 failed: Connection refused'))


def test_a_retry_backs_off_and_returns_once_the_database_answers(caplog):
    clock = _Clock()
    outage = Outage(minutes=30, clock=clock, sleep=clock.sleep)
    answers = iter([_refused()] * 6 + ["ok"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert outage.retry(call) == "ok"
    assert len(clock.sleeps) == 6
    assert [round(s) for s in clock.sleeps] == pytest.approx([1, 2, 4, 8, 15, 15], abs=3)  # jittered 0.8-1.0
    assert caplog.text.count("database unreachable") == 1, "one line when lost"
    assert caplog.text.count("database back after") == 1, "one line when back"


def test_past_the_deadline_the_wait_ends_with_database_unavailable():
    clock = _Clock()
    outage = Outage(minutes=0.5, clock=clock, sleep=clock.sleep)

    def call() -> None:
        raise _refused()

    with pytest.raises(DatabaseUnavailable, match=r"^database unreachable for 30 s \(runtime\.db_outage_minutes 0\.5\)$"):
        outage.retry(call)
    assert 30 <= clock.now - 1000 <= 31, "it waited the deadline, no longer"


def test_other_errors_pass_through_at_once():
    clock = _Clock()
    outage = Outage(minutes=30, clock=clock, sleep=clock.sleep)

    def call() -> None:
        raise sqlalchemy.exc.OperationalError("x", {}, Exception('password authentication failed for user "s"'))

    with pytest.raises(sqlalchemy.exc.OperationalError):
        outage.retry(call)
    assert clock.sleeps == []


def test_heartbeats_are_judged_a_full_grace_period_after_the_database_came_back():
    clock = _Clock()
    outage = Outage(clock=clock, sleep=clock.sleep)
    assert outage.settled(20), "never lost: judge as usual"
    outage.lost(_refused())
    clock.now += 180
    assert not outage.settled(20), "while it is away"
    outage.back()
    clock.now += 19
    assert not outage.settled(20), "live workers have not all beaten again yet"
    clock.now += 1
    assert outage.settled(20)


@pytest.mark.parametrize("message, transient", [
    ("Connection refused", True),
    ("server closed the connection unexpectedly", True),
    ("FATAL:  the database system is starting up", True),
    ("terminating connection due to administrator command", True),
    ("timeout expired", True),
    ('password authentication failed for user "searcher"', False),
    ('database "nope" does not exist', False),
])
def test_what_counts_as_unreachable(message, transient):
    error = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))
    assert is_unreachable(error) is transient
    wrapped = RuntimeError("during the commit")
    wrapped.__cause__ = error
    assert is_unreachable(wrapped) is transient, "found through the exception chain"
