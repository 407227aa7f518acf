"""Deployable models: cost figures, constraints, a second objective, the Pareto front, picks.

The spec tests and the no-feasible-trial messages use real Optuna studies with hand-made
trials (picking itself is in test_ranking.py); the searches are real `searcher launch` runs on
digits (2 epochs), shared per module.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState, create_trial

from cli_process import run_searcher
from made_trials import cost_study
from searcher import ranking
from searcher.errors import SpecError, UserError
from searcher.export import export_config
from searcher.spec import directions, load_spec, objective_names, parse_spec

DIGITS = load_spec("digits-mlp").to_dict()
SHORT = {"max_epochs": 2, "patience": None, "metric": "val_accuracy"}


def with_(**sections):
    return {**DIGITS, **sections}


# --- spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    ({"constraints": {"max_flops": 1}}, r"^x\.yaml: constraints\.max_flops: unknown constraint; constraints are "
                                        r"max_params, max_latency_ms, max_model_mb$"),
    ({"constraints": {}}, r"^x\.yaml: constraints: set at least one of max_params"),
    ({"constraints": {"max_latency_ms": 0}}, r"^x\.yaml: constraints\.max_latency_ms: input should be greater than 0"),
    ({"objectives": ["val_accuracy", "flops"]}, r"^x\.yaml: objectives\[1\]: unknown objective; the second objective "
                                                r"is one of n_params, latency_ms, sec_per_epoch, model_mb, got 'flops'$"),
    ({"objectives": ["val_loss", "n_params"]}, r"^x\.yaml: objectives\[0\]: must be training\.metric \(val_accuracy\)"),
    ({"objectives": ["val_accuracy", "n_params", "latency_ms"]}, r"^x\.yaml: objectives: must list the metric and at "
                                                                 r"most one cost"),
    ({"objectives": ["val_accuracy", "n_params"], "sampler": {"name": "grid"}},
     r"^x\.yaml: sampler\.name: grid cannot search two objectives"),
    ({"objectives": ["val_accuracy", "n_params"], "sampler": {"name": "cmaes"}},
     r"^x\.yaml: sampler\.name: cmaes cannot search two objectives"),
    ({"constraints": {"max_params": 10}, "sampler": {"name": "cmaes"}},
     r"^x\.yaml: sampler\.name: cmaes would ignore constraints \(max_params\)"),
    ({"sampler": {"name": "nsgaii", "n_startup_trials": 1}},
     r"^x\.yaml: sampler\.n_startup_trials: is nsgaii's population size and must be >= 2, got 1$"),
])
def test_bad_objectives_and_constraints_name_the_field(extra, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(with_(**extra), source="x.yaml")


def test_new_sections_round_trip_and_leave_older_specs_alone():
    plain = parse_spec(DIGITS, source="x")
    assert "constraints" not in plain.to_dict() and "objectives" not in plain.to_dict(), \
        "unset sections stay out of the stored spec, so studies created before them keep their hash"
    assert objective_names(plain) == ("val_accuracy",) and directions(plain) == ["maximize"]
    spec = parse_spec(with_(constraints={"max_params": 5000}, objectives=["val_accuracy", "latency_ms"]), source="x")
    assert spec.to_dict()["constraints"] == {"max_params": 5000}
    assert parse_spec(spec.to_dict(), source="again") == spec
    assert spec.search_hash() != plain.search_hash()
    assert directions(spec) == ["maximize", "minimize"]


# --- no feasible trial, on hand-made trials ----------------------------------------------------


def test_no_feasible_trial_is_said_everywhere():
    study = cost_study([(0.99, 90_000, 0.9, True)], constraints={"max_params": 5000})
    message = (r"has no feasible trial: 1 finished trial\(s\) over a constraint \(max_params 5,000\), all 1 "
               r"complete one\(s\) among them; loosen the constraint, narrow the search space, or give it more "
               r"trials \(searcher launch no-name-.* --trials N\)$")
    with pytest.raises(UserError, match=message):
        export_config(study)
    from searcher.status import take_snapshot

    snap = take_snapshot(study)
    assert snap.best_trial is None and snap.infeasible == 1
    assert "has no feasible trial" in snap.no_feasible


def _rejected_before_training(study: optuna.Study, n_params: int) -> None:
    """A trial as the objective's size check leaves it: PRUNED, no epoch, its violation stored."""
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={
        "n_params": n_params, "epochs": 0, "infeasible": f"{n_params:,} parameters > constraints.max_params 1,500"},
        system_attrs={"constraints:max_params": n_params / 1500 - 1}))


def test_a_study_whose_every_trial_was_rejected_by_size_says_so_not_launch_again(tmp_path):
    """Every trial over max_params ends untrained (20 of 20 in one real search): none is COMPLETE, yet it ran."""
    study = cost_study([], constraints={"max_params": 1500})
    for n_params in (4480, 1834, 2860):
        _rejected_before_training(study, n_params)
    message = (r"^study '.*' has no feasible trial: 3 finished trial\(s\) over a constraint \(max_params 1,500\), "
               r"none completed; 3 rejected before training \(the smallest had 1,834 parameters, trial 1\); "
               r"loosen the constraint")
    with pytest.raises(UserError, match=message):
        export_config(study)
    from searcher.status import render, take_snapshot
    from searcher.report import collect

    with pytest.raises(UserError, match=message):
        collect(study)
    snap = take_snapshot(study)
    assert snap.best_trial is None and snap.infeasible == 3 and re.match(message, snap.no_feasible)
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(render(snap))
    assert "no best trial: study" in console.export_text()
    from searcher.launch import print_summary

    console = Console(width=400, record=True)
    print_summary(study, console=console, url="sqlite:///searcher.db", default_url=True)
    summary = console.export_text()
    assert "no best trial: study" in summary and "searcher status" in summary
    assert "searcher export" not in summary and "searcher retrain" not in summary and "searcher report" not in summary


# --- real searches ----------------------------------------------------------------------


def _launch(folder: Path, name: str, trials: int, **sections) -> tuple[optuna.Study, str, str]:
    spec = with_(training=SHORT, budget={"n_trials": trials}, **sections)
    spec.pop("name", None)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{folder}/{name}.db"
    out = run_searcher("launch", f"{name}.yaml", "--workers", "2", "--storage", url, cwd=folder, check=True)
    return optuna.load_study(study_name=name, storage=url), url, out.stdout


@pytest.fixture(scope="module")
def constrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("constrained")
    # The tutorial baselines (4,480 parameters) are over the limit: rejected before training.
    # A narrower space than the spec's, so that most sampled networks fit.
    search = {**DIGITS["search"], "depth": {"low": 1, "high": 2}, "units": {"low": 16, "high": 64, "log": True}}
    return folder, *_launch(folder, "small", 8, search=search, constraints={"max_params": 4000, "max_model_mb": 10.0})


@pytest.fixture(scope="module")
def pareto(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pareto")
    return folder, *_launch(folder, "pareto", 6, objectives=["val_accuracy", "n_params"])


@pytest.mark.slow
def test_a_network_over_max_params_ends_before_training(constrained):
    folder, study, url, stdout = constrained
    assert "constraints: max_params 4,000, max_model_mb 10; max_params checked before training" in stdout
    trials = study.get_trials()
    baselines = [t for t in trials if "baseline" in t.user_attrs]
    assert len(baselines) == 2
    for t in baselines:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["n_params"] == 4480 and t.user_attrs["epochs"] == 0
        assert t.user_attrs["infeasible"] == "4,480 parameters > constraints.max_params 4,000; not trained"
        assert t.constraints == {"max_params": pytest.approx(4480 / 4000 - 1)}
        assert not t.intermediate_values and "train_seconds" not in t.user_attrs, "it never trained an epoch"
    assert f"baseline tutorial-mlp-sgd: infeasible (4,480 parameters" in stdout
    trained = [t for t in trials if t.user_attrs.get("epochs")]
    for t in trained:
        assert set(t.constraints) == {"max_params", "max_model_mb"}
        assert t.constraints["max_params"] == pytest.approx(t.user_attrs["n_params"] / 4000 - 1)
        assert t.constraints["max_model_mb"] == pytest.approx(t.user_attrs["model_bytes"] / 1e6 / 10 - 1)
        assert t.user_attrs["model_bytes"] > 4 * t.user_attrs["n_params"], "the file holds float32 weights"
        assert 0 < t.user_attrs["latency_ms_b256"] and 0 < t.user_attrs["latency_ms_b1"]
        assert t.user_attrs["n_params"] <= 4000

    from searcher.report import collect

    if ranking.ranked(study):
        data = collect(study)
        assert data.best.number == ranking.ranked(study)[0].number and data.best.feasible
        assert all(r.feasible for r in data.complete)
    status = json.loads(run_searcher("status", "small", "--json", "--storage", url, cwd=folder, check=True).stdout)
    assert status["infeasible"] == len(ranking.infeasible(trials)) >= 2
    if ranking.ranked(study):
        best = ranking.ranked(study)[0]
        assert status["best_trial"] == best.number and ranking.is_feasible(best)
        assert status["best_cost"]["n_params"] == best.user_attrs["n_params"]
        exported = yaml.safe_load(run_searcher("export", "small", "--storage", url, cwd=folder, check=True).stdout)
        assert exported["source"]["trial"] == best.number
        assert exported["source"]["picked"] == "best feasible validation value"
    else:
        assert status["best_trial"] is None and "no feasible trial" in status["no_feasible"]


@pytest.mark.slow
def test_two_objectives_make_a_pareto_front_without_pruning(pareto):
    folder, study, url, stdout = pareto
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "n_params"]
    assert ("pruning off: 2 objectives, and Optuna's pruners (and Trial.report) need one; early stopping on "
            "val_accuracy stays") in stdout
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6, "nothing is pruned"
    for t in complete:
        assert t.values[1] == t.user_attrs["n_params"]
        assert not t.intermediate_values and len(t.user_attrs["curve"]) == t.user_attrs["epochs"] == 2
        assert t.values[0] == pytest.approx(max(t.user_attrs["curve"]))
    on_front = ranking.front(complete, cost="n_params", maximize=True)
    assert {t.number for t in on_front} == {t.number for t in study.best_trials}, "the same front as Optuna's"

    status = json.loads(run_searcher("status", "pareto", "--json", "--storage", url, cwd=folder, check=True).stdout)
    assert [p["trial"] for p in status["front"]] == [t.number for t in on_front]
    out = run_searcher("export", "pareto", "--smallest-within", "100", "--storage", url, cwd=folder, check=True).stdout
    assert yaml.safe_load(out)["source"]["n_params"] == min(t.user_attrs["n_params"] for t in complete)
    assert out.splitlines()[1].startswith("# cost: ") and "ms/example (batch 1)" in out.splitlines()[1]

    from searcher.report import collect, render_html

    data = collect(study)
    assert data.objectives == ("val_accuracy", "n_params") and data.tradeoff.multi
    assert data.tradeoff.front == tuple(t.number for t in on_front)
    assert "curves" in data.figures and all(len(r.curve) == 2 for r in data.complete), "curves from the user attr"
    assert "tradeoff" in data.figures and "The Pareto front (val_accuracy against n_params)" in render_html(data)

    run = run_searcher("confirm", "pareto", "--top", "2", "--seeds", "1", "--workers", "2", "--storage", url,
                       cwd=folder, check=True)
    members = on_front[::-1][:2]  # the front's two best by accuracy (it may have only one)
    assert f"{len(members)} new run(s)" in run.stdout
    confirmed = optuna.load_study(study_name="pareto", storage=url).user_attrs["confirmed_ranking"]
    assert {r["trial"] for r in confirmed} == {t.number for t in members}
