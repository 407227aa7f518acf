"""Distributed search on a real PostgreSQL server with real worker processes.

Each test runs ``searcher launch`` (or ``worker``) as a subprocess against a fresh database
and then reads the study back with Optuna. Trials train tiny MLPs on digits. Where a test
must catch trials while they run, it holds them (HeldTrials: each waits after its first
stored epoch until the test releases it), and their spec beats the heartbeat every second.
The restart test keeps the default heartbeat (5 s, grace period 20 s).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from cli_process import HANG_GUARD, HeldTrials, SearcherProcess, start_searcher, wait_for
from postgres_server import free_port
from searcher import study as studies
from searcher.spec import load_spec
from searches import FINISHED, Database, digits_spec, running

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def held_trials_spec(folder: Path, name: str) -> Path:
    """Trials of every epoch, beating the heartbeat every second; a killed worker's trial is
    stale after 20 s (generous, so that a busy machine never delays a live worker's beat that long)."""
    return digits_spec(folder, name, training={"max_epochs": 3, "patience": None}, pruner={"name": "none"},
                       runtime={"heartbeat_interval": 1, "grace_period": 20})


def searcher(*args: str, cwd: Path, url: str, env: dict[str, str] | None = None) -> SearcherProcess:
    """Start ``searcher ARGS`` with the storage URL in the environment, as a deployment passes it."""
    return start_searcher(*args, cwd=cwd, env={"SEARCHER_STORAGE": url, **(env or {})})


@pytest.fixture
def db(postgres_url: str) -> Database:
    return Database(postgres_url)


def test_two_workers_reach_the_budget_exactly(db, tmp_path):
    held = HeldTrials(tmp_path)  # until both workers are inside a trial: neither can run them all
    launch = searcher("launch", "digits-mlp", "--workers", "2", "--trials", "5", cwd=tmp_path, url=db.url,
                      env=held.env())
    wait_for(lambda: len({t.user_attrs["worker_pid"] for t in running(db.study("digits-mlp"))}) == 2,
             what="a trial in each worker", process=launch)
    held.release()
    out = launch.finish(check=True)
    done = db.assert_budget_reached("digits-mlp", 5)
    assert len({t.user_attrs["worker_pid"] for t in done}) == 2, "both workers ran trials"
    assert optuna.get_all_study_names(db.storage) == ["digits-mlp"]
    assert "searcher:***@" in out.stdout
    logs = sorted((tmp_path / "searcher-logs" / "digits-mlp").glob("worker-*.log"))
    assert [log.name for log in logs] == ["worker-0.log", "worker-1.log"]
    password = make_url(db.url).password
    for text in [out.stdout, out.stderr, *(log.read_text() for log in logs)]:
        assert password not in text


def test_a_killed_worker_trial_is_failed_and_retried(db, tmp_path):
    spec = held_trials_spec(tmp_path, "killed")
    held = HeldTrials(tmp_path)
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "4", cwd=tmp_path, url=db.url, env=held.env())
    try:
        victim = wait_for(lambda: db.running_trial("killed"), what="a running trial", process=launch)
        # The restarted worker waits too: if it started a trial before the victim's heartbeat went
        # stale (a quick restart on an idle machine), that trial would be held and nothing would
        # run the retry. So the launcher's timer fails the stale trial and queues its retry.
        held.hold_new_workers()
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)

        def retry() -> optuna.trial.FrozenTrial | None:
            return next((t for t in db.trials("killed", "WAITING", "RUNNING", *FINISHED)
                         if t.system_attrs.get("failed_trial") == victim.number), None)

        wait_for(retry, what=f"a retry of trial {victim.number}", process=launch)
        held.release()
        out = launch.finish(check=True)
    finally:
        launch.stop()
    assert "restarting (1/3)" in out.stderr, "the killed worker's slot was restarted"
    db.assert_budget_reached("killed", 4)
    failed = db.study("killed").trials[victim.number]
    assert failed.state.name == "FAIL"
    retries = [t for t in db.trials("killed") if t.system_attrs.get("failed_trial") == victim.number]
    assert [t.state.name for t in retries] == ["COMPLETE"]
    assert retries[0].params == failed.params


def test_a_worker_killed_in_the_last_trial_is_retried_by_one_still_running(db, tmp_path):
    """Two ``searcher worker`` processes (as on two hosts: no launcher restarts anything) share a
    budget of 2; one is killed inside the last trial. The other finds the budget reached only
    with that silent trial, waits, fails it after the grace period, and runs its retry."""
    spec = digits_spec(tmp_path, "last-killed", training={"max_epochs": 3, "patience": None}, pruner={"name": "none"},
                       runtime={"heartbeat_interval": 1, "grace_period": 10}, baselines=[])
    searcher("create", str(spec), "--trials", "2", cwd=tmp_path, url=db.url).finish(check=True)
    held = HeldTrials(tmp_path)  # both trials wait at their first epoch: each worker holds one
    workers = [searcher("worker", str(spec), "--worker-index", str(i), cwd=tmp_path, url=db.url, env=held.env())
               for i in range(2)]
    try:
        victim, _ = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(running(db.study("last-killed"))),
                             what="two running trials", process=workers[0])
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        time.sleep(2)  # past a heartbeat interval: the killed trial is silent by the time the other one ends
        held.release()
        survivor = next(w for w in workers if w.pid != victim.user_attrs["worker_pid"])
        out = survivor.finish(check=True)
    finally:
        for w in workers:
            w.stop()
    assert f"waits: the budget is reached only with running trials [{victim.number}]" in out.stderr, out.stderr[-3000:]
    db.assert_budget_reached("last-killed", 2)
    assert db.study("last-killed").trials[victim.number].state.name == "FAIL"
    (retry,) = [t for t in db.trials("last-killed") if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state.name == "COMPLETE" and retry.params == victim.params


def test_the_search_survives_a_postgres_restart(restartable_postgres_server, db, tmp_path):
    spec = digits_spec(tmp_path, "restarted", training={"max_epochs": 12, "patience": None}, pruner={"name": "none"})
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "10", cwd=tmp_path, url=db.url)
    try:
        wait_for(lambda: db.trials("restarted", *FINISHED) and db.running_trial("restarted"),
                 what="a finished trial and a running one", process=launch)
        before = {t.number: t.value for t in db.trials("restarted", *FINISHED)}
        restartable_postgres_server.restart(down_seconds=2)
        out = launch.finish(check=True)
    finally:
        launch.stop()
    assert "restarting" not in out.stderr, "no worker crashed"
    done = db.assert_budget_reached("restarted", 10)
    assert before.items() <= {t.number: t.value for t in done}.items(), "trials finished before the restart are kept"
    password = make_url(db.url).password
    for log in (tmp_path / "searcher-logs" / "restarted").glob("worker-*.log"):
        assert "stops: study budget of 10 trials reached" in log.read_text(), log.read_text()[-3000:]
        assert password not in log.read_text()
    assert password not in out.stdout + out.stderr
    failed = db.trials("restarted", "FAIL")
    print(f"\nPostgreSQL restart: {len(before)} trials finished before it, all kept; "
          f"{len(failed)} failed across it {[t.user_attrs.get('fail_reason') for t in failed]}")


def test_a_trial_that_ends_while_the_database_is_down_is_recorded_when_it_is_back(restartable_postgres_server, db,
                                                                                tmp_path):
    """The objective returns while the server is down, by construction (the trial waits where
    the objective returns until the server is stopped), so Optuna's tell fails: the worker keeps
    the result, records it once the server is back, and does not train the trial again."""
    spec = digits_spec(tmp_path, "told-late", training={"max_epochs": 3, "patience": None}, pruner={"name": "none"},
                       baselines=[])
    searcher("create", str(spec), "--trials", "1", cwd=tmp_path, url=db.url).finish(check=True)
    gate = tmp_path / "gate"
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, str(Path(__file__).parent / "gated_worker.py"), str(gate), "worker",
                                   str(spec)], cwd=tmp_path, text=True, stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "SEARCHER_STORAGE": db.url, "GATED_AT": "end"})
    try:
        reached = gate.with_suffix(".reached")
        wait_for(lambda: reached.exists() or worker.poll() is not None, what="the trial's objective to return")
        assert worker.poll() is None, log.read_text()[-3000:]
        value = json.loads(reached.read_text())
        db.storage.engine.dispose()
        restartable_postgres_server.stop()
        gate.touch()
        wait_for(lambda: "database unreachable" in log.read_text() or worker.poll() is not None,
                 what="the worker's tell to find the database gone")
        restartable_postgres_server.start()
        worker.wait(timeout=600)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    output = log.read_text()
    assert worker.returncode == 0, output[-3000:]
    assert "trial 0 recorded COMPLETE after the database came back" in output, output[-3000:]
    (trial,) = db.assert_budget_reached("told-late", 1)
    assert trial.state.name == "COMPLETE" and trial.value == value, (trial.state, trial.value, value)


def test_sigint_stops_workers_and_a_second_launch_continues(db, tmp_path):
    spec = held_trials_spec(tmp_path, "interrupted")
    held = HeldTrials(tmp_path)  # never released: the first launch's trials run until the Ctrl-C
    launch = searcher("launch", str(spec), "--workers", "2", "--trials", "3", cwd=tmp_path, url=db.url, env=held.env())
    try:
        wait_for(lambda: db.running_trial("interrupted"), what="a running trial", process=launch)
        launch.send_signal(signal.SIGINT)
        out = launch.finish()
    finally:
        launch.stop()
    assert out.returncode == 130, out.stdout + out.stderr
    assert not db.trials("interrupted", "RUNNING")
    assert db.trials("interrupted", "FAIL"), "the interrupted trials are marked failed"

    searcher("launch", str(spec), "--workers", "2", "--trials", "3", cwd=tmp_path, url=db.url).finish(check=True)
    db.assert_budget_reached("interrupted", 3)


@pytest.mark.parametrize("broken", ["password", "host", "database"])
def test_a_bad_storage_url_is_one_line(postgres_server, postgres_url, tmp_path, broken):
    url = {
        "password": postgres_server.url_with(postgres_url, password="Wr0ng-pa55word-1a2b3c"),
        "host": postgres_server.url_with(postgres_url, host="127.0.0.1", port=free_port()),
        "database": postgres_server.url_with(postgres_url, database="no_such_database"),
    }[broken]
    # Not waited out as an outage would be: that would log a retry, and end only after the
    # reconnect window (the guard here is far beyond start-up on a busy machine, far below the window).
    out = searcher("launch", "digits-mlp", "--workers", "1", cwd=tmp_path, url=url).finish(timeout=600)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot open storage postgresql+psycopg2://searcher:***@"), \
        out.stderr
    assert {"password": "password authentication failed", "host": "Connection refused",
            "database": 'database "no_such_database" does not exist'}[broken] in lines[0]
    assert "retrying" not in out.stdout + out.stderr
    assert make_url(url).password not in out.stdout + out.stderr


def test_two_launches_at_once_share_one_study(db, tmp_path):
    budget = 6
    folders = [tmp_path / "a", tmp_path / "b"]  # each launch writes its own worker-0.log
    for folder in folders:
        folder.mkdir()
    launches = [searcher("launch", "digits-mlp", "--workers", "1", "--trials", str(budget), cwd=folder, url=db.url)
                for folder in folders]
    for launch in launches:
        launch.finish(check=True)
    assert optuna.get_all_study_names(db.storage) == ["digits-mlp"]
    finished = db.trials("digits-mlp", *FINISHED)
    per_worker = Counter(t.user_attrs["worker_pid"] for t in finished)
    print(f"\ntwo launches, budget {budget}: {len(finished)} finished, overshoot {len(finished) - budget}, "
          f"trials per worker {sorted(per_worker.values())}")
    baselines = [t.user_attrs["baseline"] for t in db.trials("digits-mlp") if "baseline" in t.user_attrs]
    assert sorted(baselines) == ["tutorial-mlp-he", "tutorial-mlp-sgd"], "baselines enqueued once"
    db.assert_budget_reached("digits-mlp", budget)


def test_a_worker_with_another_spec_is_refused(db, tmp_path):
    spec = digits_spec(tmp_path, "refused")
    studies.create_or_continue(load_spec(spec), db.storage, n_trials=2)
    changed = digits_spec(tmp_path, "refused", training={"max_epochs": 5})
    out = searcher("worker", str(changed), cwd=tmp_path, url=db.url).finish()
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "'refused' was created from a different spec" in lines[0], out.stderr
    assert len(db.trials("refused")) == 2, "only the two enqueued baselines, none run"


def test_processes_opening_an_empty_database_at_once(postgres_url, tmp_path):
    # Creating Optuna's tables from several processes at once collides in PostgreSQL
    # (duplicate pg_type rows) unless they take turns. Each process, its imports done, waits
    # for the others: they open the storage together however slowly each one started.
    script = tmp_path / "open.py"
    script.write_text("import pathlib, sys, time\n"
                      "from searcher.storage import normalize_url, open_storage\n"
                      "folder = pathlib.Path(sys.argv[1])\n"
                      "(folder / f'ready-{sys.argv[2]}').touch()\n"
                      "while not (folder / 'go').exists():\n"
                      "    time.sleep(0.01)\n"
                      "open_storage(normalize_url(sys.argv[3]))\n")
    processes = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(i), postgres_url],
                                  stderr=subprocess.PIPE, text=True) for i in range(4)]
    try:
        wait_for(lambda: len(list(tmp_path.glob("ready-*"))) == 4 or any(p.poll() is not None for p in processes),
                 what="four processes ready to open the storage")
        (tmp_path / "go").touch()
        errors = [p.communicate(timeout=HANG_GUARD)[1] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [0] * 4, "\n".join(errors)


def test_a_three_minute_outage_loses_no_trial(restartable_postgres_server, db, tmp_path):
    """The server stopped for 3 minutes while two workers train: they train on, wait for it,
    record their trials, and nothing is reaped, lost or run twice.

    Each trial stops after its third epoch until a gate file exists (gated_worker.py), so both
    are running when the server stops, by construction; the gate opens 20 s into the outage and
    the trials finish training while the database is away. Heartbeats every 1 s, grace 3 s:
    without the outage handling the trials would be reaped the moment the server is back.
    """
    budget, down_seconds = 4, 180
    spec = digits_spec(tmp_path, "outage", training={"max_epochs": 30, "patience": None}, pruner={"name": "none"},
                       runtime={"heartbeat_interval": 1, "grace_period": 3}, baselines=[])
    gate = tmp_path / "gate"
    searcher("create", str(spec), "--trials", str(budget), cwd=tmp_path, url=db.url).finish(check=True)
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]  # files, not pipes: nobody reads them until the end
    workers = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            workers.append(subprocess.Popen([sys.executable, str(Path(__file__).parent / "gated_worker.py"), str(gate),
                                             "worker", str(spec), "--worker-index", str(i)], cwd=tmp_path, text=True,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            env={**os.environ, "SEARCHER_STORAGE": db.url}))
    try:
        at_gate = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(
            [t for t in db.trials("outage", "RUNNING") if len(t.intermediate_values) >= 3]),
            timeout=1200, what="two trials at the gate")  # a limit, not a measure: slow when busy
        timeline = [(t.datetime_start, f"trial {t.number} started") for t in at_gate]
        db.storage.engine.dispose()
        down = dt.datetime.now()
        restartable_postgres_server.stop()
        timeline.append((down, "server stopped"))
        time.sleep(20)
        gate.touch()
        timeline.append((dt.datetime.now(), "gate opened: the trials train on"))
        time.sleep(down_seconds - 20)
        assert all(w.poll() is None for w in workers), "no worker exits during the outage"
        restartable_postgres_server.start()
        up = dt.datetime.now()
        timeline.append((up, "server started"))
        for w in workers:
            w.wait(timeout=600)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    outputs = [log.read_text() for log in logs]
    for w, output in zip(workers, outputs):
        assert w.returncode == 0, output[-4000:]
        assert "Traceback" not in output, output[-4000:]
        assert "database unreachable" in output and "database back after" in output, output[-4000:]
    trials = db.trials("outage")
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] + states["PRUNED"] == budget, states
    assert states["RUNNING"] == states["WAITING"] == states["FAIL"] == 0, states
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params), "no trial ran twice"
    recorded = {t.number: t for t in trials}
    for t in at_gate:
        done = recorded[t.number]
        assert done.state.name == "COMPLETE" and done.datetime_complete > up, done
        assert sorted(done.intermediate_values) == list(range(30)), "the epochs of the outage were reported after it"
        timeline.append((done.datetime_complete, f"trial {t.number} recorded COMPLETE ({done.value:.4f})"))
    print("\n3-minute outage timeline:")
    for when, what in sorted(timeline):
        print(f"  {when:%H:%M:%S} (+{(when - down).total_seconds():6.1f} s) {what}")
    print(f"  final: {dict(states)}; worker log lines:")
    for output in outputs:
        for line in output.splitlines():
            if "database" in line:
                print(f"    {line[:160]}")
