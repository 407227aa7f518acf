"""Shared fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import pytest
from sqlalchemy.engine import make_url

from postgres_server import PostgresServer, PostgresServerError

# PostgreSQL (tests marked @pytest.mark.postgres). One server per session, started by
# tests/postgres_server.py, or the one SEARCHER_TEST_POSTGRES_URL points at.


def _no_postgres(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required when CI=true: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {reason}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; fails in CI, skips elsewhere, if there is none."""
    url = os.environ.get("SEARCHER_TEST_POSTGRES_URL")
    if url:
        server = PostgresServer.from_url(url)
        try:
            server.start()  # only checks that it accepts the login
            reason = None
        except PostgresServerError as e:
            reason = str(e)
        if reason is not None:  # set on purpose, so a failure even outside CI
            pytest.fail(f"SEARCHER_TEST_POSTGRES_URL: {reason}", pytrace=False)
        yield server
        return
    server = PostgresServer()
    try:
        server.start()
        reason = None
    except PostgresServerError as e:
        server.close()
        reason = str(e)
    if reason is not None:
        _no_postgres(reason)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def restartable_postgres_server(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, for tests that stop, restart or kill it; running again afterwards."""
    if not postgres_server.can_restart:
        pytest.skip("SEARCHER_TEST_POSTGRES_URL is set: the tests cannot restart a server they did not start")
    postgres_server.start()
    yield postgres_server
    postgres_server.start()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database, dropped afterwards: ``postgresql://searcher:<password>@127.0.0.1:<port>/<db>``.

    With SEARCHER_TEST_POSTGRES_URL: that URL's user, host and port, and the new database.
    """
    postgres_server.start()  # no-op unless an earlier test left it stopped
    url = postgres_server.create_database()
    yield url
    if postgres_server.is_running():
        postgres_server.drop_database(make_url(url).database)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real one-node Slurm with 2 fake GPUs (tests/slurm_cluster.py); fails in CI, skips elsewhere, if none."""
    from slurm_cluster import SlurmCluster, SlurmUnavailable, missing_reason

    cluster, reason = None, missing_reason()
    if reason is None:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
        try:
            cluster.start()
        except SlurmUnavailable as e:
            cluster.stop()
            reason = str(e)
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm is required when CI=true: {reason}", pytrace=False)
        pytest.skip(f"no Slurm: {reason}")
    yield cluster
    cluster.stop()
    print(f"\nslurm_cluster: started in {cluster.start_seconds:.2f} s, stopped in {cluster.stop_seconds:.2f} s")


# A real search, run once per session and shared by the results tests (report, export,
# retrain, status, replay, confirm). Tests that change the study work on a copy.


class SearchRun:
    def __init__(self, folder, name: str) -> None:
        self.folder, self.name = folder, name
        self.db = folder / "searcher.db"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"

    def study(self) -> "optuna.Study":
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.url)

    def copy(self, folder) -> "SearchRun":
        import sqlite3

        # The backup API, not a file copy: it includes commits still in the write-ahead log.
        with sqlite3.connect(self.db) as source, sqlite3.connect(folder / "searcher.db") as target:
            source.backup(target)
        return SearchRun(folder, self.name)


@pytest.fixture(scope="session")
def digits_search(tmp_path_factory: pytest.TempPathFactory) -> SearchRun:
    """`searcher launch digits-mlp --workers 2 --trials 12` on real data, real processes."""
    from cli_process import run_searcher

    folder = tmp_path_factory.mktemp("digits-search")
    run = SearchRun(folder, "digits-mlp")
    run_searcher("launch", "digits-mlp", "--workers", "2", "--trials", "12", "--storage", run.url, cwd=folder,
                 check=True)
    return run
