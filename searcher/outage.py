"""Database outages: a process that loses its database waits for it, and judges no heartbeat
until it has had the database back for a full grace period.

A PostgreSQL pod moved by a node drain is away for one to three minutes. Workers keep
training through it; every database call that must land (a trial's start, its final state
and value) waits with backoff until the database answers again or ``runtime.db_outage_minutes``
have passed since it was lost, and only then gives up (``DatabaseUnavailable``: a worker exits
69, EX_UNAVAILABLE, which launch, Kubernetes, compose and Slurm restart). Heartbeats stop during
an outage for every worker at once, so a trial's missing beats prove nothing until the
database has been back long enough for live workers to beat again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Callable, TypeVar

import sqlalchemy.exc

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_MINUTES = 30.0
MAX_BACKOFF_SECONDS = 15.0

# Substrings of driver messages that mean "the server is not there right now" (psycopg2,
# PgBouncer, SQLite's writer lock), as opposed to a wrong password or a missing database.
_TRANSIENT = (
    "connection refused", "timeout expired", "timed out", "could not connect", "the database system is",
    "server closed the connection", "closed the connection unexpectedly", "terminating connection",
    "connection not open", "connection already closed", "no route to host", "network is unreachable",
    "connection reset", "ssl syscall", "eof detected", "could not receive data", "could not send data",
    "server conn crashed", "server login has been failing", "database is locked", "connection is closed",
)


class DatabaseUnavailable(BaseException):
    """The database stayed unreachable past ``runtime.db_outage_minutes``.

    A BaseException, like KeyboardInterrupt: Optuna must not catch it inside ``study.optimize``
    and try to record the trial in the database that is gone; it ends the worker (exit 69).
    """


class TrialReaped(BaseException):
    """This worker's trial was failed as stale while it trained (an outage longer than it could
    bridge, a clock jump); its retry runs it again. A BaseException so that Optuna does not try
    to record a trial that is already finished; the worker logs the message and goes on."""


def is_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or one in its chain) says the database cannot be reached right now."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                             sqlalchemy.exc.DisconnectionError)) or type(seen).__name__ == "OperationalError":
            text = str(getattr(seen, "orig", None) or seen).lower()
            if any(marker in text for marker in _TRANSIENT):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class Outage:
    """One process's view of its database: unreachable since when, back since when.

    Storage engines report each failed and each successful connect (``lost``, ``back``); the
    worker loop and the objective wait through ``retry``. Thread-safe: the heartbeat thread
    reports too.
    """

    def __init__(self, *, minutes: float = DEFAULT_MINUTES, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.minutes, self._clock, self._sleep = minutes, clock, sleep
        self.lost_at: float | None = None
        self.back_at: float | None = None
        self._lock = threading.Lock()

    def lost(self, error: BaseException) -> None:
        with self._lock:
            if self.lost_at is not None:
                return
            self.lost_at = self._clock()
        log.warning("database unreachable (%s); running trials train on, waiting up to %g min for it",
                    _describe(error), self.minutes)

    def back(self) -> None:
        with self._lock:
            if self.lost_at is None:
                return
            away, self.lost_at = self._clock() - self.lost_at, None
            self.back_at = self._clock()
        log.warning("database back after %.0f s", away)

    def settled(self, grace_seconds: float) -> bool:
        """Whether heartbeats may be judged: the database is up and has been for ``grace_seconds``."""
        with self._lock:
            return self.lost_at is None and (self.back_at is None or self._clock() - self.back_at >= grace_seconds)

    def check_deadline(self) -> None:
        with self._lock:
            away = None if self.lost_at is None else self._clock() - self.lost_at
        if away is not None and away >= self.minutes * 60:
            raise DatabaseUnavailable(f"database unreachable for {away:.0f} s (runtime.db_outage_minutes {self.minutes:g})")

    def retry(self, call: Callable[[], T]) -> T:
        """``call()``, called again with backoff (1 s doubling to 15 s) while the database is unreachable.

        Other errors pass through. Raises DatabaseUnavailable once the database has been gone
        for ``minutes``. ``call`` must be safe to repeat (a write that sets a value, a query).
        """
        backoff = 1.0
        while True:
            try:
                result = call()
            except Exception as e:
                if not is_unreachable(e):
                    raise
                self.lost(e)
                self.check_deadline()
                left = self.minutes * 60 - (self._clock() - (self.lost_at or self._clock()))
                self._sleep(max(0.0, min(backoff * random.uniform(0.8, 1.0), left)))
                backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
                continue
            self.back()
            return result


def _describe(error: BaseException) -> str:
    from searcher.storage import describe_db_error

    return describe_db_error(error)

