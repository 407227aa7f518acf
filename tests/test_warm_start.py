"""Warm starts: an old study's top configurations run first, its finished trials that fit the new
space are history the sampler sees, and none of that history counts against the new budget or
shows as the new study's results.

The old studies here are built directly (``ask``/``tell`` on the real space, values made up),
which is enough for the carrying logic; one test runs real searches end to end.
"""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

from cli_process import run_searcher
from searches import Database, digits_spec
from searcher import ranking, stored, warm_start
from searcher import study as studies
from searcher.errors import UserError
from searcher.export import pick_trial
from searcher.report._data import gather
from searcher.space import suggest_values
from searcher.spec import load_spec
from searcher.status import list_stored, take_snapshot
from searcher.storage import open_storage, resolve_url

OLD_TRIALS = 30


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return resolve_url(request.getfixturevalue("postgres_url"))


def _old_study(storage, spec, *, name="old", n=OLD_TRIALS, seed=0) -> optuna.Study:
    """A study made as searcher makes one, whose trials sample the real space (random sampler) and
    finish with made-up curves: every third one pruned after 2 epochs."""
    study = studies.create_or_continue(spec, storage, n_trials=40, name=name)
    study.sampler = optuna.samplers.RandomSampler(seed=seed)
    rng = random.Random(seed)
    for i in range(n):
        trial = study.ask()
        suggest_values(trial, spec)
        curve = [rng.uniform(0.5, 0.99) for _ in range(3)]
        for step, value in enumerate(curve[: 2 if i % 3 == 2 else 3], start=1):
            trial.report(value, step)
        if i % 3 == 2:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, max(curve))
    return study


def _spec(tmp_path, name, **sections):
    return load_spec(digits_spec(tmp_path, name, **sections))


def _with_warm_start(spec, old="old", **fields):
    return spec.model_copy(update={"warm_start": warm_start.WarmStartSpec(study=old, **fields)})


def test_history_is_carried_marked_and_never_counted_or_shown(tmp_path, url):
    storage = open_storage(url)
    old_spec = _spec(tmp_path, "old", baselines=[])
    old = _old_study(storage, old_spec)
    finished = [t for t in old.get_trials() if t.state.is_finished()]
    # The new space takes learning rates up to 0.01 only: the rest of the old trials do not fit.
    new_spec = _with_warm_start(_spec(tmp_path, "new", baselines=[],
                                      search={"learning_rate": {"low": 1e-4, "high": 0.01, "log": True}}))
    fits = [t for t in finished if t.params["lr"] <= 0.01]
    assert 0 < len(fits) < len(finished)

    new = studies.create_or_continue(new_spec, storage, n_trials=20, name="new")

    record = new.user_attrs[stored.WARM_START]
    assert record["history"] == len(fits)
    assert record["left_out"] == {"lr outside the new space [0.0001, 0.01]": len(finished) - len(fits)}
    assert record["curves"] is True
    carried = [t for t in new.get_trials() if stored.is_carried(t)]
    assert sorted(t.user_attrs[stored.CARRIED]["trial"] for t in carried) == sorted(t.number for t in fits)
    by_number = {t.number: t for t in old.get_trials()}
    for t in carried:
        source = by_number[t.user_attrs[stored.CARRIED]["trial"]]
        assert (t.state, t.params, t.values, t.intermediate_values) == (
            source.state, source.params, source.values if source.state == TrialState.COMPLETE else None,
            source.intermediate_values)
        assert t.distributions["lr"].high == 0.01  # the new space's distributions
    # The top min(5, 20 / 4) fitting configurations, best first, wait to run before anything is sampled.
    best = sorted((t for t in fits if t.state == TrialState.COMPLETE), key=lambda t: -t.value)[:5]
    waiting = new.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[stored.WARM_TOP]["trial"] for t in waiting] == [t.number for t in best]
    assert record["enqueued"] == 5
    # Not counted, not shown.
    assert studies.budget_left(new, 20) == 20
    assert studies.budget_left(new, 20, storage=storage) == 20
    assert studies.finished(studies.count_states(new)) == 0
    assert ranking.ranked(new) == []
    snap = take_snapshot(new)
    assert (snap.finished, snap.best_trial, snap.counts["WAITING"]) == (0, None, 5)
    listed = next(r for r in list_stored(storage) if r.name == "new")  # `searcher studies`
    assert (listed.counts["COMPLETE"], listed.counts["PRUNED"], listed.best_value) == (0, 0, None)
    with pytest.raises(UserError, match="has no complete trials yet"):
        gather(new)
    with pytest.raises(UserError, match="has no complete trials yet"):
        pick_trial(new)

    # The first real trial runs the old best configuration and is the only result.
    trial = new.ask()
    suggest_values(trial, new_spec)
    assert trial.params == best[0].params
    new.tell(trial, 0.5)
    assert [t.number for t in ranking.ranked(new)] == [trial.number]
    assert studies.budget_left(new, 20, storage=storage) == 19
    assert [r.number for r in gather(new).trials] == [t.number for t in new.get_trials()
                                                      if not stored.is_carried(t)]
    # The sampler sees the history: TPE's start-up phase is over before any trial of its own.
    assert len(new.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) > len(ranking.ranked(new))


def test_a_second_create_does_nothing_more_and_a_started_study_is_refused(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    old_spec = _spec(tmp_path, "old", baselines=[])
    _old_study(storage, old_spec, n=9)
    new_spec = _with_warm_start(old_spec.model_copy(update={"name": "new"}))
    first = studies.create_or_continue(new_spec, storage, n_trials=20, name="new")
    n = len(first.get_trials())
    again = studies.create_or_continue(new_spec, storage, n_trials=20, name="new")  # a re-run launch or create Job
    assert len(again.get_trials()) == n
    with pytest.raises(UserError, match=r"^warm_start.study: study 'new' was warm-started from 'old' already; "
                                        r"it cannot also start from 'other'$"):
        studies.create_or_continue(_with_warm_start(new_spec, "other"), storage, n_trials=20, name="new")

    cold_spec = old_spec.model_copy(update={"name": "cold"})
    cold = studies.create_or_continue(cold_spec, storage, n_trials=5, name="cold")
    cold.tell(cold.ask(), 0.5)
    with pytest.raises(UserError, match=r"^warm_start.study: study 'cold' has run 1 trial\(s\) already; a warm "
                                        r"start is for a study that has run none \(launch under another --name\)$"):
        studies.create_or_continue(_with_warm_start(cold_spec), storage, n_trials=5, name="cold")


def test_refused_when_the_old_study_is_missing_or_optimizes_something_else(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    old_spec = _spec(tmp_path, "old", baselines=[])
    _old_study(storage, old_spec, n=3)
    with pytest.raises(UserError, match=r"^warm_start.study: no study 'nope' \(studies there: a, old\)$"):
        studies.create_or_continue(_with_warm_start(old_spec, "nope"), storage, n_trials=5, name="a")
    loss = _with_warm_start(_spec(tmp_path, "loss", baselines=[], training={"metric": "val_loss"}))
    with pytest.raises(UserError, match=r"^warm_start.study: 'old' optimizes val_accuracy \(maximize\), this study "
                                        r"val_loss \(minimize\); a warm start needs the same metric and direction$"):
        studies.create_or_continue(loss, storage, n_trials=5, name="b")
    two = _with_warm_start(_spec(tmp_path, "two", baselines=[], objectives=["val_accuracy", "n_params"]))
    with pytest.raises(UserError, match="this study val_accuracy \\(maximize\\), n_params \\(minimize\\)"):
        studies.create_or_continue(two, storage, n_trials=5, name="c")
    with pytest.raises(UserError, match="cannot warm-start from itself"):
        studies.create_or_continue(_with_warm_start(old_spec), storage, n_trials=40, name="old")


def test_a_wider_space_takes_the_old_fixed_values_and_a_narrower_one_says_what_it_left_out(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    # The old space fixed the batch size at 64 and searched the optimizer.
    old_spec = _spec(tmp_path, "old", baselines=[], search={"batch_size": 64})
    old = _old_study(storage, old_spec)
    finished = [t for t in old.get_trials() if t.state.is_finished()]
    # The new one searches the batch size and fixes the optimizer at adam.
    new_spec = _with_warm_start(_spec(tmp_path, "new", baselines=[], search={"optimizer": "adam"}))
    new = studies.create_or_continue(new_spec, storage, n_trials=20, name="new")
    adam = [t for t in finished if t.params["optimizer"] == "adam"]
    assert 0 < len(adam) < len(finished)
    record = new.user_attrs[stored.WARM_START]
    assert record["history"] == len(adam)
    assert record["left_out"] == {"optimizer fixed at adam in the new space": len(finished) - len(adam)}
    carried = [t for t in new.get_trials() if stored.is_carried(t)]
    assert {t.params["batch_size"] for t in carried} == {64}
    assert all("optimizer" not in t.params for t in carried)
    line = warm_start.describe(record)
    assert line.startswith(f"warm start from 'old': {len(adam)} finished trial(s) carried as history (with their "
                           f"curves: same data; not counted in the budget or results), ")
    assert f"{len(finished) - len(adam)} left out: {len(finished) - len(adam)} optimizer fixed at adam in the new " \
           f"space (e.g. " in line


def test_curves_are_carried_only_on_the_same_data(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    old_spec = _spec(tmp_path, "old", baselines=[])
    _old_study(storage, old_spec, n=6)
    other_split = _with_warm_start(_spec(tmp_path, "new", baselines=[], data={"split_seed": 7}))
    new = studies.create_or_continue(other_split, storage, n_trials=8, name="new")
    carried = [t for t in new.get_trials() if stored.is_carried(t)]
    assert len(carried) == 6 and all(not t.intermediate_values for t in carried)
    assert new.user_attrs[stored.WARM_START]["curves"] is False
    assert {t.state for t in carried} == {TrialState.COMPLETE, TrialState.PRUNED}


def test_the_spec_keeps_no_password_and_the_hash_ignores_the_warm_start(tmp_path):
    spec = _spec(tmp_path, "s", baselines=[])
    warm = _with_warm_start(spec, storage="postgresql+psycopg2://u:secret@db/x")
    assert warm.search_hash() == spec.search_hash()
    assert warm.to_dict()["warm_start"] == {"study": "old", "storage": "postgresql+psycopg2://u:***@db/x",
                                            "top": None}
    assert "warm_start" not in spec.to_dict()


def test_cli_from_storage_needs_warm_start(tmp_path):
    out = run_searcher("launch", "digits-mlp", "--from-storage", f"sqlite:///{tmp_path}/o.db",
                       "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == ("Error: --from-storage: names where the --warm-start study is; "
                                  "give --warm-start OLD too")


def test_a_real_search_warm_started_from_another_storage(tmp_path):
    """Two real digits searches: the old one in its own file, the new one warm-started from it."""
    spec = digits_spec(tmp_path, "tiny", baselines=[], training={"max_epochs": 2, "patience": 1},
                       pruner={"name": "none"}, search={"batch_size": 64})
    old_url, new_url = f"sqlite:///{tmp_path}/old.db", f"sqlite:///{tmp_path}/new.db"
    run_searcher("launch", str(spec), "--workers", "1", "--trials", "4", "--storage", old_url, "--name", "first",
                 cwd=tmp_path, check=True)
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "3", "--storage", new_url,
                       "--name", "second", "--warm-start", "first", "--from-storage", old_url, cwd=tmp_path,
                       check=True)
    assert ("warm start from 'first' in sqlite:///" in out.stdout
            and ": 4 finished trial(s) carried as history (with their curves: same data; not counted in the "
                "budget or results), 0 of its best configuration(s) enqueued first" in out.stdout), out.stdout
    db = Database(new_url)
    trials = db.trials("second")
    carried = [t for t in trials if stored.is_carried(t)]
    own = [t for t in trials if not stored.is_carried(t)]
    assert len(carried) == 4
    assert len(own) == 3 and all(t.state == TrialState.COMPLETE and stored.CONFIG in t.user_attrs for t in own)
    status = run_searcher("status", "second", "--storage", new_url, cwd=tmp_path, check=True).stdout
    assert "finished 3/3" in status, status
    # budget 3 // 4 = 0 top configurations; with --trials 8 the best two of the old study would have run first.
    assert out.returncode == 0
