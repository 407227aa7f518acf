"""The PostgreSQL harness (tests/postgres_server.py) gives real, restartable, password-checked servers."""

from __future__ import annotations

from collections.abc import Iterator

import optuna
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url

from postgres_server import (
    PostgresServer,
    PostgresServerError,
    free_port,
    pgserver_bin_dir,
    psycopg2_url,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_url: str) -> Iterator[sqlalchemy.Engine]:
    engine = sqlalchemy.create_engine(psycopg2_url(postgres_url), pool_pre_ping=True)
    yield engine
    engine.dispose()


def _scalar(url: str, query: str) -> object:
    engine = sqlalchemy.create_engine(psycopg2_url(url), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as connection:
            return connection.execute(text(query)).scalar()
    finally:
        engine.dispose()


def _storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(psycopg2_url(url), engine_kwargs={"pool_pre_ping": True})


def test_url_logs_in_as_searcher_with_a_password(postgres_server: PostgresServer, postgres_url: str) -> None:
    url = make_url(postgres_url)
    assert url.drivername == "postgresql"
    assert url.host == postgres_server.host and url.port == postgres_server.port
    if postgres_server.managed:
        assert url.username == "searcher" and url.password.startswith("s3cret-")
        assert url.host == "127.0.0.1"
    assert _scalar(postgres_url, "SELECT current_database()") == url.database


def test_each_call_creates_a_fresh_database(postgres_server: PostgresServer, postgres_url: str) -> None:
    other = postgres_server.create_database()
    try:
        assert make_url(other).database != make_url(postgres_url).database
        assert _scalar(other, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
    finally:
        postgres_server.drop_database(make_url(other).database)


def test_optuna_study_lives_in_the_database(postgres_url: str) -> None:
    study = optuna.create_study(study_name="harness", storage=_storage(postgres_url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)

    loaded = optuna.load_study(study_name="harness", storage=_storage(postgres_url))
    assert len(loaded.trials) == 3


def test_restart_keeps_port_and_data_and_pre_ping_reconnects(
    restartable_postgres_server: PostgresServer, postgres_url: str, engine: sqlalchemy.Engine
) -> None:
    server = restartable_postgres_server
    storage = _storage(postgres_url)
    study = optuna.create_study(study_name="survives", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    with engine.connect() as connection:  # leaves a pooled connection behind
        connection.execute(text("SELECT 1"))
    session = psycopg2.connect(**_psycopg2_kwargs(postgres_url))
    port = server.port

    server.restart(down_seconds=0.5)

    assert server.port == port and server.is_running()
    with pytest.raises(psycopg2.OperationalError):  # the restart really cut the old sessions
        session.cursor().execute("SELECT 1")
    session.close()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar() == 1
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)  # same storage object
    assert len(optuna.load_study(study_name="survives", storage=_storage(postgres_url)).trials) == 3


def test_stopped_server_refuses_connections_until_started(
    restartable_postgres_server: PostgresServer, postgres_url: str
) -> None:
    server = restartable_postgres_server
    server.stop()
    assert not server.is_running()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        _scalar(postgres_url, "SELECT 1")
    server.start()
    assert _scalar(postgres_url, "SELECT 1") == 1


def test_kill_then_start_recovers_committed_data(
    restartable_postgres_server: PostgresServer, postgres_url: str
) -> None:
    server = restartable_postgres_server
    optuna.create_study(study_name="crash", storage=_storage(postgres_url))

    server.kill()
    assert not server.is_running()
    server.start()

    assert optuna.load_study(study_name="crash", storage=_storage(postgres_url)).study_name == "crash"


def test_wrong_password_fails_authentication(postgres_server: PostgresServer, postgres_url: str) -> None:
    user = make_url(postgres_url).username
    broken = postgres_server.url_with(postgres_url, password="wrong")
    with pytest.raises(
        sqlalchemy.exc.OperationalError, match=f'password authentication failed for user "{user}"'
    ):
        _scalar(broken, "SELECT 1")


def test_unknown_database_fails(postgres_server: PostgresServer) -> None:
    broken = postgres_server.url_with(database="no_such_database")
    with pytest.raises(sqlalchemy.exc.OperationalError, match='database "no_such_database" does not exist'):
        _scalar(broken, "SELECT 1")


def test_unreachable_port_is_refused(postgres_server: PostgresServer, postgres_url: str) -> None:
    broken = postgres_server.url_with(postgres_url, port=free_port())
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        _scalar(broken, "SELECT 1")


def test_url_with_replaces_only_the_given_parts(postgres_server: PostgresServer, postgres_url: str) -> None:
    url = make_url(postgres_server.url_with(postgres_url, password="p@ss/word", port=1))
    original = make_url(postgres_url)
    assert (url.password, url.port) == ("p@ss/word", 1)
    assert (url.username, url.host, url.database) == (original.username, original.host, original.database)


def test_wrapped_server_creates_databases_but_cannot_restart(postgres_server: PostgresServer) -> None:
    wrapped = PostgresServer.from_url(postgres_server.admin_url)
    wrapped.start()  # only checks the connection
    url = wrapped.create_database()
    try:
        assert _scalar(url, "SELECT 1") == 1
        assert not wrapped.can_restart
        with pytest.raises(PostgresServerError, match="cannot restart .*the tests did not start that server"):
            wrapped.restart()
        assert "***" in repr(wrapped) and make_url(postgres_server.admin_url).password not in repr(wrapped)
    finally:
        wrapped.drop_database(make_url(url).database)


def test_close_stops_the_server_and_deletes_its_directory(restartable_postgres_server: PostgresServer) -> None:
    with PostgresServer(bin_dir=restartable_postgres_server.bin_dir) as server:
        base_dir = server.base_dir
        url = server.create_database()
        assert _scalar(url, "SELECT 1") == 1
    assert not server.is_running() and not base_dir.exists()
    with pytest.raises(sqlalchemy.exc.OperationalError, match="Connection refused"):
        _scalar(url, "SELECT 1")


@pytest.mark.skipif(pgserver_bin_dir() is None, reason="the pgserver package is not installed")
def test_pgserver_binaries_are_a_working_fallback() -> None:
    with PostgresServer(bin_dir=pgserver_bin_dir()) as server:
        url = server.create_database()
        assert "PostgreSQL 16" in str(_scalar(url, "SELECT version()"))
        with pytest.raises(sqlalchemy.exc.OperationalError, match="password authentication failed"):
            _scalar(server.url_with(url, password="wrong"), "SELECT 1")
        server.restart()
        assert _scalar(url, "SELECT 1") == 1


def _psycopg2_kwargs(url: str) -> dict[str, object]:
    parsed = make_url(url)
    return {
        "host": parsed.host, "port": parsed.port, "user": parsed.username,
        "password": parsed.password, "dbname": parsed.database, "connect_timeout": 5,
    }
