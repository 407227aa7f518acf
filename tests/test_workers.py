"""Worker processes: signals stop a worker once and queue its trial once; a database that
stays away ends a worker with exit 69 (EX_UNAVAILABLE), which launch and clusters restart."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from postgres_server import free_port
from searches import digits_spec
from searcher.worker import EXIT_INTERRUPTED, EXIT_UNAVAILABLE

def test_a_database_that_stays_away_ends_the_worker_with_exit_69(tmp_path):
    """Nothing listens on the port (as during an outage): the worker waits its deadline
    (``runtime.db_outage_minutes``, here 3 s), says so in a line or two, and exits 69."""
    spec = digits_spec(tmp_path, "away", runtime={"db_outage_minutes": 0.05})
    url = f"postgresql+psycopg2://searcher:secret@127.0.0.1:{free_port()}/searcher"
    began = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "searcher", "worker", str(spec)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "SEARCHER_STORAGE": url})
    waited = time.monotonic() - began
    assert out.returncode == EXIT_UNAVAILABLE == 69, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text and "secret" not in text, text
    assert text.count("database unreachable (") == 1, text
    assert "worker 0 stops: database unreachable for 3 s (runtime.db_outage_minutes 0.05)" in text, text
    assert waited >= 3


@pytest.mark.slow
@pytest.mark.parametrize("signals, gaps", [
    (["SIGTERM", "SIGTERM"], [0.0]),
    (["SIGUSR1", "SIGINT", "SIGTERM", "SIGTERM", "SIGINT"], [0.0, 0.05, 0.3, 1.0]),
], ids=["term-twice", "mixed"])
def test_signals_stop_a_worker_once_and_queue_its_trial_once(tmp_path, signals, gaps):
    """The trial waits after its third epoch until a gate file exists (never, here), so it is
    running when the signals come, by construction; the later ones land while the first is
    handled (failing the trial, queuing it again, releasing the lock)."""
    spec = digits_spec(tmp_path, "signals", training={"max_epochs": 30, "patience": None}, pruner={"name": "none"},
                 baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    created = subprocess.run([sys.executable, "-m", "searcher", "create", str(spec), "--trials", "2", "--storage", url],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert created.returncode == 0, created.stdout + created.stderr
    worker = subprocess.Popen([sys.executable, str(Path(__file__).parent / "gated_worker.py"), str(tmp_path / "gate"),
                               "worker", str(spec), "--storage", url], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1200  # a limit, not a measure: slow when busy
        while True:
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "no trial reached the gate"
            trials = optuna.load_study(study_name="signals", storage=url).get_trials()
            if [t for t in trials if t.state.name == "RUNNING" and len(t.intermediate_values) >= 3]:
                break
            time.sleep(0.3)
        for name, gap in zip(signals, [*gaps, 0.0]):
            worker.send_signal(getattr(signal, name))
            time.sleep(gap)
        output = worker.communicate(timeout=600)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == EXIT_INTERRUPTED == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # Signals pending together are handled in signal-number order, so the one named is not always
    # the first sent; one of them, once.
    (named,) = re.findall(r"interrupted \((SIG[A-Z0-9]+)\)", output)
    assert named in signals, output[-3000:]
    trials = optuna.load_study(study_name="signals", storage=url).get_trials()
    (failed,) = [t for t in trials if t.state.name == "FAIL"]
    assert failed.user_attrs["fail_reason"] == "interrupted"
    waiting = [t for t in trials if t.state.name == "WAITING"]
    assert len(waiting) == 1, [(t.number, t.state.name) for t in trials]
    assert waiting[0].system_attrs.get("failed_trial") == failed.number, "queued again, once, with its params"
    assert waiting[0].params == failed.params
    assert not [t for t in trials if t.state.name == "RUNNING"]
    print(f"\n{' + '.join(signals)}: exit {worker.returncode}; trial {failed.number} FAIL (interrupted), "
          f"{len(waiting)} WAITING retry (trial {waiting[0].number})")


@pytest.mark.slow
def test_a_worker_whose_trial_was_reaped_anyway_says_so_and_goes_on(tmp_path):
    """Its trial is failed as stale (and queued again) while it trains, as after an outage longer
    than the grace period: one line, no traceback, and the retry runs to the budget."""
    spec = digits_spec(tmp_path, "reaped", training={"max_epochs": 6, "patience": None}, pruner={"name": "none"},
                 baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    created = subprocess.run([sys.executable, "-m", "searcher", "create", str(spec), "--trials", "1", "--storage", url],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert created.returncode == 0, created.stdout + created.stderr
    gate = tmp_path / "gate"
    worker = subprocess.Popen([sys.executable, str(Path(__file__).parent / "gated_worker.py"), str(gate),
                               "worker", str(spec), "--storage", url], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1200  # a limit, not a measure: slow when busy
        while True:
            assert worker.poll() is None, worker.communicate()[0]
            assert time.monotonic() < deadline, "no trial reached the gate"
            study = optuna.load_study(study_name="reaped", storage=url)
            running = [t for t in study.get_trials() if t.state.name == "RUNNING" and len(t.intermediate_values) >= 3]
            if running:
                break
            time.sleep(0.3)
        # What a reaper does to a stale trial: fail it, queue it again.
        from searcher.spec import load_spec
        from searcher.study import open_study_storage

        storage = open_study_storage(load_spec(str(spec)), url)
        storage.set_trial_state_values(running[0]._trial_id, optuna.trial.TrialState.FAIL)
        storage.get_heartbeat_stale_trial_callback()(study, storage.get_trial(running[0]._trial_id))
        gate.touch()
        output = worker.communicate(timeout=300)[0]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Cannot tell" not in output, output[-3000:]
    assert output.count(f"trial {running[0].number} was failed as stale while this worker trained it") == 1, output
    trials = optuna.load_study(study_name="reaped", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == running[0].number and trials[1].params == running[0].params


def test_launch_restarts_a_worker_that_exits_69(tmp_path):
    from searcher.devices import WorkerPlacement
    from searcher.supervisor import LaunchPlan, WorkerProcess, supervise

    slot = WorkerProcess(WorkerPlacement(0, None, 1, 1))
    slot.process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(69)"])
    slot.process.wait()
    plan = LaunchPlan(spec_path=tmp_path / "missing.yaml", url=f"sqlite:///{tmp_path}/s.db", log_dir=tmp_path)
    supervise([slot], plan)
    assert not slot.finished and slot.restarts == 0 and slot.last_exit == 69
    assert len(slot.pids) == 1 and slot.process.pid == slot.pids[0], "a fresh worker fills the slot"
    slot.process.wait(timeout=120)
