"""Study storage: URLs, the embedded SQLite default, PostgreSQL, password masking.

Users write ``postgresql://user:pass@host/db``; SQLAlchemy 2 maps a bare
``postgresql://`` to psycopg 3, which we do not ship, so it becomes
``postgresql+psycopg2://``. Every URL searcher prints goes through ``mask_url``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.exc
import sqlalchemy.orm
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

from searcher.errors import StorageError
from searcher.outage import Outage, is_unreachable

log = logging.getLogger(__name__)

STORAGE_ENV = "SEARCHER_STORAGE"
DEFAULT_SQLITE = "searcher.db"
RECONNECT_SECONDS = 60.0
QUEUE_SLOTS = 4  # workers that wait for the budget lock inside PostgreSQL at once (BudgetLock)  # how long a connected process waits for a restarting PostgreSQL server
_SCHEMES = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "postgresql+psycopg2": "postgresql+psycopg2",
    "sqlite": "sqlite",
}


def resolve_url(url: str | None) -> str:
    """The storage URL to use: the flag, else ``$SEARCHER_STORAGE``, else ./searcher.db."""
    url = url or os.environ.get(STORAGE_ENV) or f"sqlite:///{DEFAULT_SQLITE}"
    return normalize_url(url)


def normalize_url(url: str) -> str:
    """Pick the psycopg2 driver for PostgreSQL; reject schemes we do not support."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"--storage: not a database URL: {_mask_text(url)!r} "
            "(expected sqlite:///file.db or postgresql+psycopg2://user:pass@host/db)"
        ) from None
    driver = _SCHEMES.get(parsed.drivername)
    if driver is None:
        raise StorageError(f"--storage: unsupported database {parsed.drivername!r}; use sqlite or postgresql")
    if driver == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageError("--storage: an in-memory SQLite database cannot be shared by workers; give a file")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for printing and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return _mask_text(url)


def _mask_text(text: str) -> str:
    return re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", text)


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Several local workers share one file: wait for the write lock instead of failing.
        return {"connect_args": {"timeout": 60}}
    return {
        "pool_pre_ping": True,  # survive a server restart between two trials
        "pool_size": 2,  # a worker needs one connection, plus one for its heartbeat thread
        "max_overflow": 4,
        "connect_args": {"connect_timeout": 5},
    }


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    create: bool = True,
    outage: Outage | None = None,
    reconnect_seconds: float = RECONNECT_SECONDS,
) -> optuna.storages.RDBStorage:
    """Connect (creating Optuna's tables on a new database); errors become one line.

    With ``create=False`` a missing SQLite file is an error instead of a new empty study file.
    ``outage`` follows this storage's connects (see ``OutageAwareStorage``); a connect that is
    refused is tried again for ``reconnect_seconds`` (workers pass 0: they wait in their own
    loop, and a trial's epochs must not stall on a report during an outage).
    """
    if url.startswith("sqlite"):
        path = Path(make_url(url).database)
        if not create and not path.is_file():
            raise StorageError(f"no study storage at {url} (run `searcher launch` here first, or pass --storage)")
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _creating_tables(url):
            storage = OutageAwareStorage(
                url,
                engine_kwargs=_engine_kwargs(url),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=stale_trial_callback,
                skip_compatibility_check=True,  # checked below, on one connection at a time
            )
            current, head = storage.get_current_version(), storage.get_head_version()
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as e:
        raise StorageError(f"cannot open storage {mask_url(url)}: {describe_db_error(e)}") from e
    if current != head:
        # Optuna's own check reads this inside an open transaction on a second connection:
        # through PgBouncer, 200 workers starting at once each held one server connection
        # and waited for another, and none got one (tests/test_scale.py).
        raise StorageError(f"storage {mask_url(url)}: its tables have Optuna schema {current}, Optuna "
                           f"{optuna.__version__} needs {head}; run `optuna storage upgrade --storage URL` "
                           "(or use the Optuna version that made them)")
    storage.outage = outage or Outage()
    if url.startswith("sqlite"):
        _use_write_ahead_log(storage.engine)
    else:
        wait_out_restarts(storage.engine, seconds=reconnect_seconds, outage=storage.outage)
    return storage


class OutageAwareStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, living through database outages of minutes (see searcher/outage.py).

    Heartbeats: Optuna's heartbeat thread ends at the first exception ``record_heartbeat``
    raises, so a trial whose worker trained on through an outage would never beat again and
    be reaped. Here a failed beat is noted and the thread beats again an interval later.
    """

    outage: Outage

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
            if is_unreachable(e):
                self.outage.lost(e)
            else:
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, describe_db_error(e))

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The one override of Optuna's private API: every reaper of stale trials asks here
        (``study.optimize`` before each trial, launch's watch loop, both through
        ``fail_stale_trials``), and Optuna has no public hook to say "not yet".

        During an outage every worker's heartbeats stop; after it, a live worker beats again
        within a heartbeat interval. So this process reaps nothing until it has itself had the
        database back for a full grace period: staleness is judged from then, not from the
        last beat the outage swallowed.
        """
        stale = super()._get_stale_trial_ids(study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        return stale if self.outage.settled(grace) else []


def _use_write_ahead_log(engine: Engine) -> None:
    """SQLite in WAL mode with ``synchronous=NORMAL``: a commit no longer waits for a disk sync.

    A trial makes dozens of small commits, and in the default mode each one syncs (its cost:
    bench/README.md, section 3). WAL also lets readers (the live view, status)
    work while a worker writes. A crash can lose the last commits, never corrupt the file.
    """

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # pooled connections predate the listener
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")  # stored in the file, once
    except sqlalchemy.exc.OperationalError as e:
        log.warning("SQLite stays in rollback-journal mode (%s)", describe_db_error(e))


@contextlib.contextmanager
def _creating_tables(url: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock while Optuna creates its tables in an empty database.

    Processes that create the tables of an empty database at the same moment collide
    (duplicate pg_type rows, for the enum types, then for alembic_version), so two
    ``launch`` commands or compose workers starting together take turns. Once the tables
    exist (every worker joining a launched study) no lock is taken: hundreds of workers
    starting at once through PgBouncer would otherwise queue on it holding its pool.
    """
    if url.startswith("sqlite"):
        yield
        return
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            exists = connection.execute(sqlalchemy.text("SELECT to_regclass('alembic_version')")).scalar() is not None
        if exists:
            yield
            return
        with engine.connect() as connection:
            # A transaction-level lock: it lasts while this transaction is open (also through
            # PgBouncer in transaction mode), and ends with it when the connection closes.
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key("searcher tables")})
            yield
    finally:
        engine.dispose()


def _lock_key(name: str) -> int:
    """A PostgreSQL advisory lock key (a signed 64-bit integer) for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def wait_out_restarts(engine: Engine, *, seconds: float = RECONNECT_SECONDS, outage: Outage | None = None) -> None:
    """Make the engine retry a refused connection for up to ``seconds`` instead of failing,
    and tell ``outage`` when the server is lost and when it is back.

    Call it once the engine has connected. With ``pool_pre_ping`` a connection that died
    in a PostgreSQL restart is replaced on its next use; this makes the replacement wait
    for the server, so trials, heartbeats and the budget lock carry on across the restart.
    """

    def connect(dialect: Any, connection_record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + seconds
        for attempt in itertools.count():
            try:
                connection = dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as e:
                if outage is not None:
                    outage.lost(e)
                if time.monotonic() >= deadline:
                    raise
                if attempt == 0 and outage is None:
                    log.warning("storage unreachable, retrying for up to %.0f s: %s", seconds, describe_db_error(e))
                time.sleep(1.0)
            else:
                if outage is not None:
                    outage.back()
                return connection

    sqlalchemy.event.listen(engine, "do_connect", connect)


def describe_db_error(error: BaseException) -> str:
    """The first meaningful line of a database error, without SQL or passwords."""
    if isinstance(error, optuna.exceptions.StorageInternalError) and error.__cause__ is not None:
        error = error.__cause__  # Optuna's wrapper only says "during the commit"; the cause says why
    cause = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    line = next((ln for ln in lines if not ln.startswith(("[SQL", "(Background"))), type(cause).__name__)
    return _mask_text(re.sub(r"^\(\S+\)\s*", "", line))[:300]


class BudgetLock:
    """Makes "is there budget left? then start a trial" one step across all workers.

    Held from the budget check until the new trial is RUNNING (and so counted), it keeps
    a study from overshooting its budget when workers finish at the same moment. SQLite
    workers share a host, so a file lock next to the database serves. PostgreSQL workers
    on many hosts take a transaction-level advisory lock (``pg_advisory_xact_lock``), which
    the server drops when the transaction ends or the worker dies, and which survives
    PgBouncer in transaction mode (a session lock would stay on a pooled server connection).

    Given the storage, the lock's transaction is also the one Optuna's calls in this thread
    run in (as savepoints) while it is held: one server connection, not two.

    At most ``QUEUE_SLOTS`` workers wait inside the server (each waiter holds a connection);
    the others back off outside it, so waiting workers never starve running trials of pooled
    connections (bench/README.md, section 8, has the measurements).

    Two ``launch`` commands of one study also hold it (``with lock:``) while they create
    the study and enqueue its baselines.
    """

    def __init__(self, url: str, name: str, *, storage: optuna.storages.RDBStorage | None = None) -> None:
        self._url, self._held = url, False
        self._key = _lock_key(name)
        self._rdb = storage  # its sessions join the lock's transaction (PostgreSQL)
        self._file = None
        self._engine = storage.engine if storage is not None else None
        self._connection = None
        self._transaction = None
        self.wait_seconds: list[float] = []  # how long each acquire waited, and each hold lasted (the bench)
        self.hold_seconds: list[float] = []
        self._slot_keys = {f"s{i}": _lock_key(f"{name} queue slot {i}") for i in range(QUEUE_SLOTS)}
        self._slot_query = sqlalchemy.text("SELECT CASE " + " ".join(
            f"WHEN pg_try_advisory_xact_lock(:s{i}) THEN {i}" for i in range(QUEUE_SLOTS)) + " ELSE -1 END")

    def __enter__(self) -> BudgetLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        began = time.perf_counter()
        if self._url.startswith("sqlite"):
            if self._file is None:
                self._file = open(f"{make_url(self._url).database}.lock", "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            if self._engine is None:
                # Made after open_storage reached the server, so it may wait out a restart.
                self._engine = sqlalchemy.create_engine(self._url, **_engine_kwargs(self._url))
                wait_out_restarts(self._engine)
            self._queue_in_server()
            try:
                self._connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._key})
            except BaseException:
                self._connection.close()
                self._connection = self._transaction = None
                raise
            if self._rdb is not None:
                self._rdb.scoped_session.registry.set(
                    sqlalchemy.orm.Session(bind=self._connection, join_transaction_mode="create_savepoint"))
        self.wait_seconds.append(time.perf_counter() - began)
        self._held, self._held_since = True, time.perf_counter()

    def _queue_in_server(self) -> None:
        """Open the lock's transaction holding one of the queue slots (see the class docstring)."""
        backoff = 0.01
        while True:
            connection = self._engine.connect()
            try:
                transaction = connection.begin()
                # CASE tries the slots in order and stops at the first it gets.
                slot = connection.execute(self._slot_query, self._slot_keys).scalar()
            except BaseException:
                connection.close()
                raise
            if slot >= 0:
                self._connection, self._transaction = connection, transaction
                return
            transaction.rollback()
            connection.close()
            time.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(1.0, backoff * 2)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        self.hold_seconds.append(time.perf_counter() - self._held_since)
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._connection is not None:
            if self._rdb is not None:
                self._rdb.scoped_session.remove()  # this thread's next session uses the pool again
            try:
                self._transaction.commit()  # publishes the new trial and drops the lock, at once
            except sqlalchemy.exc.SQLAlchemyError as e:
                # The connection is gone, and the server dropped the lock with it; what the
                # transaction held (a trial start) is lost too, so it never ran.
                log.warning("budget lock: the lock's transaction was lost: %s", describe_db_error(e))
            finally:
                self._connection.close()
                self._connection = self._transaction = None
