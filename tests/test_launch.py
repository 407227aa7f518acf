"""End to end: `searcher launch` in a subprocess, real worker processes, real training on digits."""

from __future__ import annotations

import optuna
import pytest

from cli_process import STUDIES, HeldTrials, run_searcher, start_searcher, wait_for
from searches import digits_spec, finished, running

pytestmark = pytest.mark.slow


def test_launch_two_workers_then_continue(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    held = HeldTrials(tmp_path)  # until both workers are inside a trial: neither can run them all
    launch = start_searcher("launch", "digits-mlp", "--workers", "2", "--trials", "6", "--storage", url, cwd=tmp_path,
                            env=held.env())
    wait_for(lambda: len({t.user_attrs["worker_pid"] for t in running(optuna.load_study(
        study_name="digits-mlp", storage=url))}) == 2, what="a trial in each worker", process=launch)
    held.release()
    first = launch.finish(check=True)
    study = optuna.load_study(study_name="digits-mlp", storage=url)
    done = finished(study)
    assert len(done) == 6
    assert not [t for t in study.get_trials() if t.state.name in ("RUNNING", "WAITING")]
    baselines = [t for t in study.get_trials() if "baseline" in t.user_attrs]
    assert sorted(t.user_attrs["baseline"] for t in baselines) == ["tutorial-mlp-he", "tutorial-mlp-sgd"]
    assert all(t.state.name == "COMPLETE" for t in baselines)
    assert len({t.user_attrs["worker_pid"] for t in done}) == 2, "both worker processes ran trials"
    # The baselines are seeded, so their scores are fixed; the 4 sampled trials are random start-up
    # draws and may all be weak, so the search's best is only required to be a real score.
    sgd = next(t for t in baselines if t.user_attrs["baseline"] == "tutorial-mlp-sgd")
    assert 0.8 < sgd.value < 0.9, sgd.value  # 0.8368 on this split: SGD at lr 0.01 underfits 1,149 digits
    assert sgd.value <= study.best_value <= 1.0
    for t in done:
        assert {"config", "n_params", "epochs", "sec_per_epoch", "best_epoch", "worker_pid", "worker_host", "seed"} <= set(t.user_attrs)
    assert "Next:" in first.stdout and "searcher report digits-mlp" in first.stdout
    logs = sorted(p.name for p in (tmp_path / "searcher-logs" / "digits-mlp").iterdir())
    assert logs == ["worker-0.log", "worker-1.log"]
    assert "threads" in (tmp_path / "searcher-logs" / "digits-mlp" / "worker-0.log").read_text()

    second = run_searcher("launch", "digits-mlp", "--workers", "2", "--trials", "8", "--storage", url, cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    study = optuna.load_study(study_name="digits-mlp", storage=url)
    assert len(finished(study)) == 8
    assert len([t for t in study.get_trials() if "baseline" in t.user_attrs]) == 2, "baselines enqueued once"

    again = run_searcher("launch", "digits-mlp", "--trials", "8", "--storage", url, cwd=tmp_path)
    assert again.returncode == 0 and "already has 8 finished trials" in again.stdout


def test_a_changed_spec_cannot_join_the_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    spec = tmp_path / "digits-mlp.yaml"
    spec.write_text((STUDIES / "digits-mlp.yaml").read_text())
    assert run_searcher("launch", str(spec), "--workers", "1", "--trials", "1", "--storage", url, cwd=tmp_path).returncode == 0
    spec.write_text(spec.read_text().replace("max_epochs: 20", "max_epochs: 5"))
    out = run_searcher("worker", str(spec), "--storage", url, cwd=tmp_path)
    assert out.returncode == 1
    assert "was created from a different spec" in out.stderr and "Traceback" not in out.stderr


def test_runtime_flags_reach_the_worker_and_its_log_says_what_it_did(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    out = run_searcher("launch", "digits-mlp", "--workers", "1", "--trials", "1", "--mixed-precision", "--xla",
                       "--storage", url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    log = (tmp_path / "searcher-logs" / "digits-mlp" / "worker-0.log").read_text()
    assert "precision float32 (mixed precision off: no GPU), XLA on" in log
    study = optuna.load_study(study_name="digits-mlp", storage=url)
    assert study.metric_names == ["val_accuracy"]


def test_a_running_study_grows_from_6_to_10_trials_and_both_workers_go_on(tmp_path):
    """`searcher budget` raises a running two-worker study's budget: both workers take it up before
    their next trial, and no trial is interrupted and no worker restarted."""
    import datetime as dt

    # Both first trials are held after their first epoch until the raise has landed, so the
    # workers are mid-trial when it lands, however fast or slow the machine is.
    spec = digits_spec(tmp_path, "grow", training={"max_epochs": 4, "patience": None}, pruner={"name": "none"},
                       budget={"n_trials": 6})
    url = f"sqlite:///{tmp_path}/s.db"
    held = HeldTrials(tmp_path)
    started = dt.datetime.now()
    launch = start_searcher("launch", str(spec), "--workers", "2", "--storage", url, cwd=tmp_path, env=held.env())
    try:
        wait_for(lambda: len([t for t in optuna.load_study(study_name="grow", storage=url).get_trials(
                     states=(optuna.trial.TrialState.RUNNING,)) if t.intermediate_values]) >= 2,
                 what="both workers in their first trial", process=launch)
        asked = dt.datetime.now()
        budget = run_searcher("budget", "grow", "10", "--storage", url, cwd=tmp_path)
        answered = dt.datetime.now()
        assert budget.returncode == 0, budget.stdout + budget.stderr
        assert budget.stdout.startswith("grow: budget 6 -> 10 trials ("), budget.stdout
        assert budget.stdout.rstrip().endswith("running workers take it up before their next trial"), budget.stdout
        held.release()
        output = launch.finish().stdout
    finally:
        launch.stop()
    ended = dt.datetime.now()
    assert launch.poll() == 0, output
    study = optuna.load_study(study_name="grow", storage=url)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10, "10 finished, none failed or interrupted"
    assert study.user_attrs["n_trials"] == 10
    pids = sorted({t.user_attrs["worker_pid"] for t in trials})
    assert len(pids) == 2
    assert {t.user_attrs["worker_pid"] for t in trials if t.datetime_start > answered} == set(pids), \
        "both workers started trials after the raise"
    logs = tmp_path / "searcher-logs" / "grow"
    for index in (0, 1):
        log = (logs / f"worker-{index}.log").read_text()
        assert log.count("; pid ") == 1, "one process per worker: none restarted or recycled"
        assert f"worker {index}: the study's budget is now 10 trials (was 6)" in log
        assert f"worker {index} stops: study budget of 10 trials reached" in log
    assert "restarting" not in output and "ended with exit code" not in output

    def at(moment: dt.datetime) -> str:
        return f"{(moment - started).total_seconds():.1f}"

    # The timeline, for the record (pytest -s shows it), in seconds after `launch` started.
    print(f"\nbudget asked {at(asked)} s, answered {at(answered)} s: {budget.stdout.strip()}; launch ended {at(ended)} s")
    for t in trials:
        print(f"trial {t.number}: worker {pids.index(t.user_attrs['worker_pid'])}, {at(t.datetime_start)}-"
              f"{at(t.datetime_complete)} s, {t.state.name}, {t.user_attrs['epochs']} epochs")
