"""Clean workers: recycled after N trials; a trial past the memory limit fails, is not retried."""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from cli_process import HeldTrials, run_searcher, start_searcher, wait_for
from searches import digits_spec, finished, running

pytestmark = pytest.mark.slow


def test_a_worker_is_recycled_after_n_trials(tmp_path):
    spec = digits_spec(tmp_path, "recycle", runtime={"recycle_after_trials": 2}, training={"max_epochs": 3})
    url = f"sqlite:///{tmp_path}/s.db"
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "6", "--storage", url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="recycle", storage=url)
    assert len(finished(study)) == 6
    # Every trial a process ran counts, failed ones too: a sampled config may end on a NaN loss,
    # and the budget then takes one more trial.
    pids = [t.user_attrs["worker_pid"] for t in sorted(study.get_trials(), key=lambda t: t.number)]
    # one worker slot, a fresh process every 2 trials
    assert pids == [pid for pid in dict.fromkeys(pids) for _ in range(2)][: len(pids)], pids
    assert len(set(pids)) >= 3, pids
    log = (tmp_path / "searcher-logs" / "recycle" / "worker-0.log").read_text()
    assert log.count("recycles: ran 2 trials") == len(set(pids)) - 1


def test_a_trial_past_the_memory_limit_fails_and_is_not_retried(tmp_path):
    """The limit sits 300 MB above what a worker holds after a small trial, and the wide trial
    grows about 1.2 GB past that by construction (a 64 x 1M dense layer and Adam's two slots:
    4 copies of 74M floats), whatever the machine's RAM or load."""
    url = f"sqlite:///{tmp_path}/s.db"
    small = {"name": "small", "params": {"units": [32], "depth": 1}}
    # What a worker holds after one small trial: TensorFlow, the data, a traced model.
    settle = digits_spec(tmp_path, "settle", search={"units": {"choices": [32]}, "depth": 1},
                   training={"max_epochs": 2}, baselines=[small])
    out = run_searcher("launch", str(settle), "--workers", "1", "--trials", "1", "--storage", url, cwd=tmp_path,
                       timeout=1800)  # a limit, not a measure: a busy machine is slow
    assert out.returncode == 0, out.stdout + out.stderr
    settled = optuna.load_study(study_name="settle", storage=url).trials[0].user_attrs["peak_rss_mb"]
    limit = int(settled) + 300
    wide = 1_000_000
    spec = digits_spec(
        tmp_path, "oom",
        search={"units": {"choices": [32, 64, wide]}, "depth": 1},
        training={"max_epochs": 2},
        runtime={"max_worker_memory_mb": limit},
        baselines=[{"name": "too-wide", "params": {"units": [wide], "depth": 1}}, small],
    )
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "3", "--storage", url, cwd=tmp_path,
                       timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="oom", storage=url)
    too_wide = next(t for t in study.get_trials() if t.user_attrs.get("baseline") == "too-wide")
    print(f"\nmemory limit {limit} MB (settled worker {settled} MB + 300); the wide trial's peak "
          f"{too_wide.user_attrs.get('peak_rss_mb')} MB, {too_wide.state.name}, "
          f"{too_wide.user_attrs.get('fail_reason')}")
    assert too_wide.state.name == "FAIL"
    assert too_wide.user_attrs["fail_reason"] == "out of memory"
    assert too_wide.user_attrs["peak_rss_mb"] >= limit  # rounded; it tripped past the limit
    assert f"max_worker_memory_mb {limit}" in too_wide.user_attrs["fail_detail"]
    assert not [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == too_wide.number], "not retried"
    assert len(finished(study)) == 3, "the search goes on"
    log = (tmp_path / "searcher-logs" / "oom" / "worker-0.log").read_text()
    assert f"recycles: trial {too_wide.number} ran out of memory" in log, "a fresh process runs the next trial"
    others = {t.user_attrs["worker_pid"] for t in study.get_trials() if t.number != too_wide.number}
    assert too_wide.user_attrs["worker_pid"] not in others, "the next trials ran in fresh processes"
    status = run_searcher("status", "oom", "--json", "--storage", url, cwd=tmp_path, timeout=600)
    assert '"out of memory"' in status.stdout


def test_the_launcher_fails_a_killed_workers_trial_while_the_others_are_busy(tmp_path):
    """No worker starts a trial (and so checks heartbeats) while this happens: the launcher's timer must.

    Both trials are held after their first epoch, and the worker that replaces the killed one
    waits before its first trial, until the stale trial has failed.
    """
    spec = digits_spec(tmp_path, "stale", training={"max_epochs": 3, "patience": None}, pruner={"name": "none"},
                       runtime={"heartbeat_interval": 1, "grace_period": 20}, baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    held = HeldTrials(tmp_path)
    launch = start_searcher("launch", str(spec), "--workers", "2", "--trials", "2", "--storage", url, cwd=tmp_path,
                            env=held.env())

    def trials() -> list[optuna.trial.FrozenTrial]:
        return optuna.load_study(study_name="stale", storage=url).get_trials()

    def two_running() -> list[optuna.trial.FrozenTrial] | None:
        both = running(optuna.load_study(study_name="stale", storage=url))
        return both if len(both) == 2 else None

    try:
        victim, busy = wait_for(two_running, what="two trials running at once", process=launch)
        held.hold_new_workers()
        os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
        wait_for(lambda: trials()[victim.number].state.name == "FAIL", what="the killed worker's trial failed",
                 process=launch)
        assert trials()[busy.number].state.name == "RUNNING", "the other worker is still inside its trial"
        held.release()
        launch.finish(check=True)
    finally:
        launch.stop()
    study = optuna.load_study(study_name="stale", storage=url)
    retries = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == victim.number]
    assert [t.state.name for t in retries] == ["COMPLETE"]
    assert retries[0].params == victim.params
    assert retries[0].user_attrs["seed"] == victim.user_attrs["seed"], "a retry trains with the original seed"
    assert len(finished(study)) == 2
    status = run_searcher("status", "stale", "--json", "--storage", url, cwd=tmp_path)
    assert '"killed (stale heartbeat)": 1' in status.stdout
