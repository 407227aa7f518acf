"""The study in its storage: its budget grows and shrinks while it runs, never below what has
finished, and creating it again (a restarted `worker --create`, a re-run create Job) never
lowers a budget someone raised."""

from __future__ import annotations

import time

import optuna
import pytest

from searcher import stored
from searcher import study as studies
from searcher.errors import UserError
from searcher.spec import load_spec
from searcher.storage import open_storage, resolve_url
from searcher.worker import WorkerOptions, run_worker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return resolve_url(request.getfixturevalue("postgres_url"))


def _finish(study: optuna.Study, n: int) -> None:
    for i in range(n):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.5 + i / 100))


def test_a_creating_worker_keeps_the_stored_budget(tmp_path):
    spec = load_spec("digits-mlp")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    fresh = studies.create_or_continue(spec, storage, n_trials=None, name="fresh")
    assert fresh.user_attrs[stored.BUDGET] == spec.budget.n_trials == 80
    studies.create_or_continue(spec, storage, n_trials=300, name="raised")  # `searcher create --trials 300`
    again = studies.create_or_continue(spec, storage, n_trials=None, name="raised")  # a restarted compose worker
    assert again.user_attrs[stored.BUDGET] == 300
    assert len(again.get_trials()) == len(spec.baselines), "baselines are enqueued once"


def test_creating_again_raises_a_budget_but_never_lowers_it(tmp_path):
    spec = load_spec("digits-mlp")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    study = studies.create_or_continue(spec, storage, n_trials=6, name="s")
    assert study.user_attrs[stored.BUDGET] == 6, "a new study takes the budget asked, even below the spec's"
    studies.set_budget(study, 10, storage=storage)  # `searcher budget s 10`
    again = studies.create_or_continue(spec, storage, n_trials=6, name="s")  # the create Job run again
    assert again.user_attrs[stored.BUDGET] == 10
    assert studies.kept_budget_note(again, 6) == (
        "s: kept the budget of 10 trials (asked 6): creating never lowers a budget; lower it with "
        "`searcher budget s 6`")
    raised = studies.create_or_continue(spec, storage, n_trials=None, name="s")  # the spec asks 80
    assert raised.user_attrs[stored.BUDGET] == 80 and studies.kept_budget_note(raised, 80) is None


def test_a_budget_shrinks_to_what_has_finished_and_no_further(url):
    spec = load_spec("digits-mlp")
    storage = open_storage(url)
    study = studies.create_or_continue(spec, storage, n_trials=20, name="shrink")
    _finish(study, 5)
    with pytest.raises(UserError, match=r"^N: shrink has 5 finished trials; its budget cannot go below that \(got 4\)$"):
        studies.set_budget(study, 4, storage=storage)
    assert study.user_attrs[stored.BUDGET] == 20, "a refused change changes nothing"
    change = studies.set_budget(study, 5, storage=storage)
    assert (change.before, change.after, change.finished) == (20, 5, 5)
    assert change.describe() == "shrink: budget 20 -> 5 trials (5 finished, 0 running); no new trial starts"
    grown = studies.set_budget(study, 9, storage=storage)
    assert grown.describe() == ("shrink: budget 5 -> 9 trials (5 finished, 0 running); no trial is running: "
                                "`searcher launch` or `searcher worker` runs the other 4")


def test_the_budget_is_read_from_the_database_not_from_a_study_loaded_before(url):
    spec = load_spec("digits-mlp")
    storage = open_storage(url)
    held = studies.create_or_continue(spec, storage, n_trials=6, name="fresh")
    assert studies.budget_in_database(storage, "fresh") == 6
    elsewhere = open_storage(url)  # another host's connection
    studies.set_budget(studies.load("fresh", elsewhere, url=url), 10, storage=elsewhere)
    assert studies.budget_in_database(storage, "fresh") == 10
    assert held.user_attrs[stored.BUDGET] == 10
    assert studies.budget_in_database(storage, "no-such-study") is None


class _RaisesTheBudget:
    """A stand-in trial (no TensorFlow) that, in the study's third trial, raises the budget from
    another connection, as `searcher budget` on another host would."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name, self.calls = url, name, 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.calls += 1
        if self.calls == 3:
            storage = open_storage(self.url)
            studies.set_budget(studies.load(self.name, storage, url=self.url), 10, storage=storage)
        trial.suggest_float("x", 0, 1)
        return 0.5


def test_a_running_worker_takes_up_a_raised_budget_before_its_next_trial(url, caplog):
    spec = load_spec("digits-mlp").model_copy(update={"baselines": ()})
    storage = open_storage(url)
    studies.create_or_continue(spec, storage, n_trials=6, name="grows")
    objective = _RaisesTheBudget(url, "grows")
    caplog.set_level("INFO", logger="searcher.worker")
    code = run_worker(spec, url, WorkerOptions(study_name="grows"), make_objective=lambda spec, options: objective)
    assert code == 0
    study = studies.load("grows", storage, url=url)
    assert studies.count_states(study) == {"COMPLETE": 10}
    assert "worker 0: the study's budget is now 10 trials (was 6)" in caplog.text
    assert "study budget of 10 trials reached" in caplog.text


def test_a_running_trial_is_silent_once_its_heartbeat_is_older_than_asked(url):
    """By the database's clock, as Optuna's stale-trial check judges; a trial that never beat
    (and so can never be reaped) and finished trials are left out."""
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="beats", storage=storage)
    beating, never_beat, done = study.ask(), study.ask(), study.ask()
    for trial in (beating, done):
        storage.record_heartbeat(trial._trial_id)
    study.tell(done, 1.0)
    assert studies.silent_running_trials(storage, "beats", seconds=30) == []
    time.sleep(2.2)  # SQLite's clock counts whole seconds: at least 2 of them
    assert studies.silent_running_trials(storage, "beats", seconds=1) == [beating.number]
    storage.record_heartbeat(beating._trial_id)
    assert studies.silent_running_trials(storage, "beats", seconds=10) == []
    assert never_beat.number not in studies.silent_running_trials(storage, "beats", seconds=0)
