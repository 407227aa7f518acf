"""Distributed search on a real PostgreSQL server with real worker processes.

Each test runs ``searcher launch`` (or ``worker``) as a subprocess against a fresh database
and then reads the study back with Optuna. Trials train tiny MLPs on digits; where a test
must catch a trial while it runs, its spec copy trains longer without early stopping or
pruning and beats its heartbeat every second, so a killed worker's trial is failed after 3 s.
The restart test keeps the default heartbeat (5 s, grace period 20 s).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from sqlalchemy.engine import make_url

from searcher import study as studies
from searcher.spec import load_spec
from searcher.storage import normalize_url, open_storage

from postgres_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

DIGITS = Path(__file__).parent.parent / "studies" / "digits-mlp.yaml"
FINISHED = ("COMPLETE", "PRUNED")


def write_spec(folder: Path, name: str, **changes: dict[str, Any]) -> Path:
    """A copy of digits-mlp named ``name``, with some sections updated (``training={...}``)."""
    raw = yaml.safe_load(DIGITS.read_text())
    raw["name"] = name
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def long_trials_spec(folder: Path, name: str) -> Path:
    """Trials of several seconds that run every epoch, with a 1 s heartbeat and a 3 s grace period."""
    return write_spec(folder, name, training={"max_epochs": 40, "patience": None}, pruner={"name": "none"},
                      runtime={"heartbeat_interval": 1, "grace_period": 3})


def searcher(*args: str, cwd: Path, url: str) -> subprocess.Popen:
    """Start ``python -m searcher ARGS`` with the storage URL in the environment."""
    return subprocess.Popen([sys.executable, "-m", "searcher", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "SEARCHER_STORAGE": url})


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"{process.args} still running after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return process.returncode, out, err


class Database:
    """Reads studies back from the test's database, through one connection pool that outlives restarts.

    Connects on first use, so a test can start ``launch`` on an empty database.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    @functools.cached_property
    def storage(self) -> optuna.storages.RDBStorage:
        return open_storage(normalize_url(self.url))

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage)

    def trials(self, name: str, *states: str) -> list[optuna.trial.FrozenTrial]:
        """The study's trials, or those in ``states`` (state names)."""
        return [t for t in self.study(name).get_trials() if not states or t.state.name in states]

    def running_trial(self, name: str) -> optuna.trial.FrozenTrial | None:
        """A RUNNING trial whose worker has reported at least one epoch."""
        return next((t for t in self.trials(name, "RUNNING") if "worker_pid" in t.user_attrs and t.intermediate_values),
                    None)

    def assert_budget_reached(self, name: str, budget: int) -> list[optuna.trial.FrozenTrial]:
        """Exactly ``budget`` finished trials and nothing RUNNING or WAITING; returns the finished ones."""
        states = [t.state.name for t in self.trials(name)]
        assert sum(s in FINISHED for s in states) == budget, states
        assert not [s for s in states if s in ("RUNNING", "WAITING")], states
        return self.trials(name, *FINISHED)


@pytest.fixture
def db(postgres_url: str) -> Database:
    return Database(postgres_url)


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, process: subprocess.Popen | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s or if ``process`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"{what}: the process ended first (exit {process.returncode})\n{out}\n{err}")
        try:
            result = condition()
        except KeyError:  # the study does not exist yet
            result = None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what}: not after {timeout} s")


def test_two_workers_reach_the_budget_exactly(db, tmp_path):
    launch = searcher("launch", "digits-mlp", "--workers", "2", "--trials", "5", cwd=tmp_path, url=db.url)
    code, out, err = finish(launch)
    assert code == 0, out + err
    done = db.assert_budget_reached("digits-mlp", 5)
    assert len({t.user_attrs["worker_pid"] for t in done}) == 2, "both workers ran trials"
    assert optuna.get_all_study_names(db.storage) == ["digits-mlp"]
    assert "searcher:***@" in out
    logs = sorted((tmp_path / "searcher-logs" / "digits-mlp").glob("worker-*.log"))
    assert [log.name for log in logs] == ["worker-0.log", "worker-1.log"]
    password = make_url(db.url).password
    for text in [out, err, *(log.read_text() for log in logs)]:
        assert password not in text


def test_a_killed_worker_trial_is_failed_and_retried(db, tmp_path):
    spec = long_trials_spec(tmp_path, "killed")
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "4", cwd=tmp_path, url=db.url)
    victim = wait_for(lambda: db.running_trial("killed"), timeout=120, what="a running trial", process=launch)
    killed_at = dt.datetime.now()
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)

    def retry() -> optuna.trial.FrozenTrial | None:
        return next((t for t in db.trials("killed", "RUNNING", *FINISHED)
                     if t.system_attrs.get("failed_trial") == victim.number), None)

    retried = wait_for(retry, timeout=120, what=f"a retry of trial {victim.number}", process=launch)
    seconds = (retried.datetime_start - killed_at).total_seconds()
    print(f"\nkill -9 to retry start: {seconds:.1f} s (heartbeat 1 s, grace period 3 s)")
    assert seconds < 120

    code, out, err = finish(launch)
    assert code == 0, out + err
    assert "restarting (1/3)" in err, "the killed worker's slot was restarted"
    db.assert_budget_reached("killed", 4)
    failed = db.study("killed").trials[victim.number]
    assert failed.state.name == "FAIL"
    retries = [t for t in db.trials("killed") if t.system_attrs.get("failed_trial") == victim.number]
    assert [t.state.name for t in retries] == ["COMPLETE"]
    assert retries[0].params == failed.params


def test_the_search_survives_a_postgres_restart(restartable_postgres_server, db, tmp_path):
    spec = write_spec(tmp_path, "restarted", training={"max_epochs": 12, "patience": None}, pruner={"name": "none"})
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "10", cwd=tmp_path, url=db.url)
    wait_for(lambda: db.trials("restarted", *FINISHED) and db.running_trial("restarted"), timeout=120,
             what="a finished trial and a running one", process=launch)
    before = {t.number: t.value for t in db.trials("restarted", *FINISHED)}
    restartable_postgres_server.restart(down_seconds=2)

    code, out, err = finish(launch)
    assert code == 0, out + err
    assert "restarting" not in err, "no worker crashed"
    done = db.assert_budget_reached("restarted", 10)
    assert before.items() <= {t.number: t.value for t in done}.items(), "trials finished before the restart are kept"
    password = make_url(db.url).password
    for log in (tmp_path / "searcher-logs" / "restarted").glob("worker-*.log"):
        assert "stops: study budget of 10 trials reached" in log.read_text(), log.read_text()[-3000:]
        assert password not in log.read_text()
    assert password not in out + err
    failed = db.trials("restarted", "FAIL")
    print(f"\nPostgreSQL restart: {len(before)} trials finished before it, all kept; "
          f"{len(failed)} failed across it {[t.user_attrs.get('fail_reason') for t in failed]}")


def test_sigint_stops_workers_and_a_second_launch_continues(db, tmp_path):
    spec = long_trials_spec(tmp_path, "interrupted")
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "3", cwd=tmp_path, url=db.url)
    wait_for(lambda: db.running_trial("interrupted"), timeout=120, what="a running trial", process=launch)
    launch.send_signal(signal.SIGINT)
    code, out, err = finish(launch, timeout=90)
    assert code == 130, out + err
    assert not db.trials("interrupted", "RUNNING")
    assert db.trials("interrupted", "FAIL"), "the interrupted trials are marked failed"

    code, out, err = finish(searcher("launch", str(spec), "--workers", "2", "--trials", "3", cwd=tmp_path, url=db.url))
    assert code == 0, out + err
    db.assert_budget_reached("interrupted", 3)


@pytest.mark.parametrize("broken", ["password", "host", "database"])
def test_a_bad_storage_url_is_one_line(postgres_server, postgres_url, tmp_path, broken):
    url = {
        "password": postgres_server.url_with(postgres_url, password="Wr0ng-pa55word-1a2b3c"),
        "host": postgres_server.url_with(postgres_url, host="127.0.0.1", port=free_port()),
        "database": postgres_server.url_with(postgres_url, database="no_such_database"),
    }[broken]
    began = time.monotonic()
    code, out, err = finish(searcher("launch", "digits-mlp", "--workers", "1", cwd=tmp_path, url=url), timeout=60)
    took = time.monotonic() - began
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot open storage postgresql+psycopg2://searcher:***@"), err
    assert {"password": "password authentication failed", "host": "Connection refused",
            "database": 'database "no_such_database" does not exist'}[broken] in lines[0]
    assert make_url(url).password not in out + err
    assert took < 10, f"took {took:.1f} s"


def test_two_launches_at_once_share_one_study(db, tmp_path):
    budget = 6
    folders = [tmp_path / "a", tmp_path / "b"]  # each launch writes its own worker-0.log
    for folder in folders:
        folder.mkdir()
    launches = [searcher("launch", "digits-mlp", "--workers", "1", "--trials", str(budget), cwd=folder, url=db.url)
                for folder in folders]
    for code, out, err in [finish(launch) for launch in launches]:
        assert code == 0, out + err
    assert optuna.get_all_study_names(db.storage) == ["digits-mlp"]
    finished = db.trials("digits-mlp", *FINISHED)
    per_worker = Counter(t.user_attrs["worker_pid"] for t in finished)
    print(f"\ntwo launches, budget {budget}: {len(finished)} finished, overshoot {len(finished) - budget}, "
          f"trials per worker {sorted(per_worker.values())}")
    baselines = [t.user_attrs["baseline"] for t in db.trials("digits-mlp") if "baseline" in t.user_attrs]
    assert sorted(baselines) == ["tutorial-mlp-he", "tutorial-mlp-sgd"], "baselines enqueued once"
    db.assert_budget_reached("digits-mlp", budget)


def test_a_worker_with_another_spec_is_refused(db, tmp_path):
    spec = write_spec(tmp_path, "refused")
    studies.create_or_continue(load_spec(spec), db.storage, n_trials=2)
    changed = write_spec(tmp_path, "refused", training={"max_epochs": 5})
    code, out, err = finish(searcher("worker", str(changed), cwd=tmp_path, url=db.url), timeout=120)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "'refused' was created from a different spec" in lines[0], err
    assert len(db.trials("refused")) == 2, "only the two enqueued baselines, none run"


def test_processes_opening_an_empty_database_at_once(postgres_url, tmp_path):
    # Creating Optuna's tables from several processes at once collides in PostgreSQL
    # (duplicate pg_type rows) unless they take turns.
    script = tmp_path / "open.py"
    script.write_text("import sys, time\n"
                      "from searcher.storage import normalize_url, open_storage\n"
                      "time.sleep(max(0.0, float(sys.argv[1]) - time.time()))\n"
                      "open_storage(normalize_url(sys.argv[2]))\n")
    at = time.time() + 4  # after every interpreter has started
    processes = [subprocess.Popen([sys.executable, str(script), str(at), postgres_url], stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(errors)
