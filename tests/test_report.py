"""Tests for searcher.report: numbers in ReportData, then the page in a real browser.

`report_study` is the study the generic tests run on (they compare the report
with what Optuna says, so any study works). It is built here from realistic
trials (baselines, pruned, failed, running, waiting). To run them on a real
search, change its body (a fixture in this module shadows one of the same name
in conftest.py), or parametrize it over both. Tests that pin exact numbers use
`synthetic_study` directly.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import plotly.offline
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from browser import chromium_page, wait_for_plotly
from made_trials import ROWS, cost_study
from scale_harness import build_large_study
from searcher import ranking
from searcher.errors import UserError
from searcher.report import ReportData, collect, render_html, write_report

log = logging.getLogger(__name__)
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

DISTS = {
    "activation": CategoricalDistribution(["relu", "gelu", "tanh", "selu"]),
    "initializer": CategoricalDistribution(["glorot_uniform", "he_normal", "lecun_normal"]),
    "optimizer": CategoricalDistribution(["adam", "sgd", "momentum", "nesterov", "rmsprop"]),
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "momentum": FloatDistribution(0.5, 0.99),
    "beta_1": FloatDistribution(0.8, 0.95),  # Adam's knobs: only the test that sets them uses them
    "beta_2": FloatDistribution(0.99, 0.9999),
    "epsilon": FloatDistribution(1e-8, 1e-5, log=True),
    "dropout": FloatDistribution(0.0, 0.5),
    "use_l2": CategoricalDistribution([False, True]),
    "l2": FloatDistribution(1e-6, 1e-2, log=True),
    "batch_norm": CategoricalDistribution([False, True]),
    "batch_size": CategoricalDistribution([32, 64, 128, 256]),
    "depth": IntDistribution(1, 3),
    **{f"units_{i}": IntDistribution(32, 512, log=True) for i in range(3)},
}
BASELINES = {  # name -> (params, value)
    "keras-defaults": (dict(activation="relu", initializer="glorot_uniform", optimizer="adam", lr=1e-3,
                            dropout=0.0, use_l2=False, batch_norm=False, batch_size=32, depth=2,
                            units_0=128, units_1=64), 0.9300),
    "textbook-sgd": (dict(activation="relu", initializer="he_normal", optimizer="sgd", lr=1e-2, dropout=0.2,
                          use_l2=True, l2=1e-4, batch_norm=False, batch_size=64, depth=1, units_0=256), 0.9050),
}
STATE_CYCLE = "CCCPCCPCFC"  # states of the searched trials after the baselines
BEST_VALUE, BEST_INDEX = 0.9871, 17  # one searched trial is planted as the clear winner
FAIL_REASONS = ("nan", "out of memory", "exception: ValueError: bad shape")


def _spec(name: str, metric: str) -> dict:
    return {"name": name, "data": {"dataset": "digits", "val_fraction": 0.2},
            "model": {"kind": "mlp"}, "training": {"metric": metric, "max_epochs": 30, "patience": 5}}


def _config(p: dict, metric: str, seed: int) -> dict:
    units = [p[f"units_{i}"] for i in range(p["depth"])]
    model = {"kind": "mlp", "hidden_units": units, "conv_filters": [], "activation": p["activation"],
             "initializer": p["initializer"], "optimizer": p["optimizer"], "learning_rate": p["lr"],
             "momentum": p.get("momentum", 0.0), "dropout": p["dropout"], "l2": p.get("l2", 0.0),
             "batch_norm": p["batch_norm"]}
    training = {"batch_size": p["batch_size"], "max_epochs": 30, "patience": 5, "metric": metric}
    return {"model": model, "training": training, "data": {"dataset": "digits", "val_fraction": 0.2}, "seed": seed}


def _sample(rng: np.random.Generator) -> dict:
    p = {k: DISTS[k].choices[rng.integers(len(DISTS[k].choices))] for k in
         ("activation", "initializer", "optimizer", "use_l2", "batch_norm", "batch_size")}
    p["lr"] = float(10 ** rng.uniform(-4, -1))
    p["dropout"] = float(rng.uniform(0, 0.5))
    p["depth"] = int(rng.integers(1, 4))
    for i in range(p["depth"]):
        p[f"units_{i}"] = int(2 ** rng.uniform(5, 9))
    if p["optimizer"] in ("momentum", "nesterov"):
        p["momentum"] = float(rng.uniform(0.5, 0.99))
    if p["use_l2"]:
        p["l2"] = float(10 ** rng.uniform(-6, -2))
    return {k: (bool(v) if isinstance(v, np.bool_) else v.item() if isinstance(v, np.generic) else v)
            for k, v in p.items()}


def _trial(state: TrialState, p: dict, value: float, epochs: int, rng, *, seed: int, metric: str, **attrs):
    """A trial as the search core writes it: curve rising to `value`, timings, config."""
    units = [p[f"units_{i}"] for i in range(p["depth"])]
    sizes = [64, *units, 10]
    n_params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
    sec = round(0.15 * (64 / p["batch_size"]) ** 0.5 * (1 + sum(units) / 400), 3)
    shape = [1 - 0.55 * math.exp(-e / 2.5) - rng.uniform(0, 0.004) for e in range(epochs)]
    curve = {e: value * v / max(shape) for e, v in enumerate(shape)}  # peaks at `value`
    if state == TrialState.COMPLETE:
        attrs.update(best_epoch=max(curve, key=curve.get) + 1)
    finished = state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    t = create_trial(
        state=state, value=value if state == TrialState.COMPLETE else None, params=p,
        distributions={k: DISTS[k] for k in p},
        intermediate_values=curve if state != TrialState.WAITING else None,
        user_attrs={"config": _config(p, metric, seed), "n_params": n_params, "epochs": epochs,
                    "sec_per_epoch": sec, "worker_pid": 4000 + seed % 4, "worker_host": "node1", "seed": seed,
                    **attrs},
    )
    if finished:
        t.datetime_start = t.datetime_complete - dt.timedelta(seconds=round(epochs * sec + 2.0, 3))
    elif state == TrialState.RUNNING:
        t.datetime_start = dt.datetime.now() - dt.timedelta(seconds=5)
    return t


def build_study(storage: str, *, name: str = "digits-mlp", n_trials: int = 40, seed: int = 0,
                metric: str = "val_accuracy", direction: str = "maximize") -> optuna.Study:
    """2 baselines, then searched trials cycling through STATE_CYCLE, then 1 running and 1 waiting."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    study.set_user_attr("spec", _spec(name, metric))
    study.set_user_attr("spec_hash", "3f2a9c1e")
    study.set_user_attr("n_trials", n_trials)
    for number, (bname, (p, value)) in enumerate(BASELINES.items()):
        study.add_trial(_trial(TrialState.COMPLETE, p, value, 14, rng, seed=number, metric=metric, baseline=bname))
    n_searched = n_trials - len(BASELINES) - 2
    for i in range(n_searched):
        p, state = _sample(rng), {"C": TrialState.COMPLETE, "P": TrialState.PRUNED, "F": TrialState.FAIL}[
            STATE_CYCLE[i % len(STATE_CYCLE)]]
        lr_penalty = 0.04 * (math.log10(p["lr"]) + 2.5) ** 2
        value = round(min(0.98, 0.975 - lr_penalty - 0.02 * (p["activation"] == "tanh") + rng.normal(0, 0.01)), 4)
        value = BEST_VALUE if i == BEST_INDEX else max(value, 0.2)
        reason = FAIL_REASONS[i // len(STATE_CYCLE) % len(FAIL_REASONS)]
        attrs = {"fail_reason": reason} if state == TrialState.FAIL else {}
        epochs = int(rng.integers(3, 6)) if state != TrialState.COMPLETE else int(rng.integers(8, 31))
        value = value * 0.9 if state == TrialState.PRUNED else value
        study.add_trial(_trial(state, p, value, epochs, rng, seed=100 + i, metric=metric, **attrs))
    for state in (TrialState.RUNNING, TrialState.WAITING):
        study.add_trial(_trial(state, _sample(rng), 0.9, 2, rng, seed=900, metric=metric))
    return study


def _storage(tmp_path: Path, name: str = "study") -> str:
    return "sqlite:///" + str(tmp_path / f"{name}.db")


@pytest.fixture
def synthetic_study(tmp_path: Path) -> optuna.Study:
    return build_study(_storage(tmp_path))


@pytest.fixture(params=["synthetic", pytest.param("real-search", marks=pytest.mark.slow)])
def report_study(request, synthetic_study: optuna.Study) -> optuna.Study:
    """The study the generic tests run on: the planted one, and one from a real digits search (slow: it
    starts worker processes)."""
    if request.param == "synthetic":
        return synthetic_study
    run = request.getfixturevalue("digits_search")
    return optuna.load_study(study_name=run.name, storage=run.url)


def _one_trial_study(tmp_path: Path, **kw) -> optuna.Study:
    study = optuna.create_study(storage=_storage(tmp_path, "one"), study_name="one", **kw)
    p, value = BASELINES["keras-defaults"]
    study.add_trial(_trial(TrialState.COMPLETE, p, value, 10, np.random.default_rng(1), seed=1,
                           metric="val_accuracy", baseline="keras-defaults"))
    return study


# ---------------------------------------------------------------- numbers


def test_collect_pins_numbers_of_the_synthetic_study(synthetic_study: optuna.Study) -> None:
    data = collect(synthetic_study)
    assert dict(data.counts) == {"complete": 28, "pruned": 7, "fail": 3, "running": 1, "waiting": 1}
    assert data.best.value == BEST_VALUE
    assert data.best.number == len(BASELINES) + BEST_INDEX
    assert [(b.name, b.number, round(b.gain, 4)) for b in data.baselines] == [
        ("keras-defaults", 0, round(BEST_VALUE - 0.93, 4)), ("textbook-sgd", 1, round(BEST_VALUE - 0.905, 4))]
    assert dict(data.fail_reasons) == {"nan": 1, "out of memory": 1, "exception: ValueError: bad shape": 1}
    assert (data.study_name, data.dataset, data.model_kind) == ("digits-mlp", "digits", "mlp")
    assert data.metric == "val_accuracy"
    assert (data.spec_hash, data.budget, data.maximize) == ("3f2a9c1e", 40, True)
    assert data.param_kinds["lr"] == "log" and data.param_kinds["use_l2"] == "bool"
    assert data.param_kinds["optimizer"] == "cat" and data.param_kinds["depth"] == "int"
    assert len(data.figures) == 13 and not data.notes


def test_collect_agrees_with_optuna(report_study: optuna.Study) -> None:
    data = collect(report_study)
    trials = report_study.get_trials()
    states = Counter(t.state.name.lower() for t in trials)
    assert {k: v for k, v in data.counts.items() if v} == dict(states)
    assert data.best.value == report_study.best_value
    # Optuna's best_trial is the first of tied trials; searcher breaks ties by the lower validation loss
    best = ranking.ranked(report_study)[0]
    assert data.best.number == best.number
    assert data.best.config == best.user_attrs["config"]
    values = [r.value for r in data.top]
    assert values == sorted(values, reverse=data.maximize)
    assert len(data.top) == min(10, states["complete"])
    finished = [t.duration.total_seconds() for t in trials if t.duration is not None]
    assert data.total_train_s == pytest.approx(sum(finished))
    for b in data.baselines:
        if b.value is not None:
            assert b.gain == pytest.approx(report_study.best_value - b.value)


def test_collect_minimize_puts_lowest_first(tmp_path: Path) -> None:
    study = build_study(_storage(tmp_path), metric="val_loss", direction="minimize")
    data = collect(study)
    assert data.best.value == min(r.value for r in data.complete)
    assert data.baselines[0].gain < 0  # lower is better, so a winning best sits below the baseline
    assert "lower is better" in render_html(data)


@pytest.mark.parametrize("states", [(), (TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)])
def test_collect_without_complete_trials_raises(tmp_path: Path, states) -> None:
    study = optuna.create_study(storage=_storage(tmp_path), study_name="x", direction="maximize")
    for s in states:
        study.add_trial(create_trial(state=s, params={"lr": 0.01}, distributions={"lr": DISTS["lr"]}))
    with pytest.raises(UserError, match=r"^study 'x' has no complete trials yet \(.*\); run searcher launch x first$"):
        collect(study)


def test_one_trial_study_renders_with_notes(tmp_path: Path) -> None:
    data = collect(_one_trial_study(tmp_path, direction="maximize"))
    assert data.figures == ("history", "curves")  # one curve is still worth seeing
    assert data.notes["importance"] == "needs at least 2 complete trials (have 1)"
    assert data.notes["by_activation"] == "every complete trial used activation = relu"
    assert data.baselines[0].gain == 0
    page = render_html(data)
    assert page.count('class="plotly-graph-div"') == 2
    assert page.count('<p class="note nodraw">Not drawn:') == 11  # the trade-off figure too


def test_fixed_knobs_and_no_variation_give_notes(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_storage(tmp_path), study_name="flat", direction="maximize")
    p, _ = BASELINES["keras-defaults"]
    rng = np.random.default_rng(0)
    for i, v in enumerate((0.91, 0.92, 0.93)):  # same params, different seeds: nothing to attribute
        study.add_trial(_trial(TrialState.COMPLETE, p, v, 10, rng, seed=i, metric="val_accuracy"))
    data = collect(study)
    assert data.notes["importance"] == "no searched parameter varies across the complete trials"
    assert data.notes["parallel"] == "no searched parameter varies across the complete trials"
    assert data.notes["lr_l2"] == "every complete trial used learning_rate=0.001 and l2=0"
    assert set(data.figures) == {"history", "curves", "cost_time", "cost_params", "tradeoff"}


def test_study_without_spec_or_config_falls_back(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_storage(tmp_path), study_name="bare", direction="maximize")
    for lr, v in ((1e-3, 0.8), (1e-2, 0.9)):
        study.add_trial(create_trial(value=v, params={"lr": lr}, distributions={"lr": DISTS["lr"]}))
    data = collect(study)
    assert (data.study_name, data.dataset, data.model_kind) == ("bare", "?", "?")
    assert (data.metric, data.spec_hash, data.baselines, data.best.config) == ("value", "?", (), {})
    assert "parallel" in data.figures and "lr_l2" in data.notes
    render_html(data)


# ---------------------------------------------------------------- html


def _bundle_marker() -> str:
    """The first line naming the plotly.js version, e.g. '* plotly.js v4.1.1'."""
    return next(line for line in plotly.offline.get_plotlyjs().splitlines() if "plotly.js v" in line)


def test_html_embeds_plotlyjs_once_and_is_self_contained(report_study: optuna.Study, tmp_path: Path) -> None:
    path = write_report(report_study, tmp_path / "sub" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert page.count(_bundle_marker()) == 1
    bundle = plotly.offline.get_plotlyjs()
    assert page.count("Plotly.newPlot(") - bundle.count("Plotly.newPlot(") == len(collect(report_study).figures)
    assert not re.search(r"<script[^>]+src=", page)
    assert "<link" not in page  # no stylesheet, no font fetched
    assert page.count("https://") == bundle.count("https://")  # only the bundle's own (unused) URLs


def test_html_escapes_strings_from_the_study(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    study = build_study(_storage(tmp_path), name=f"x{evil}", n_trials=12)
    study.set_user_attr("spec_hash", evil)
    p, _ = BASELINES["keras-defaults"]
    rng = np.random.default_rng(2)
    config = _config(p, "val_accuracy", 7)
    config["model"]["activation"] = evil
    study.add_trial(_trial(TrialState.COMPLETE, p, 0.99, 5, rng, seed=7, metric="val_accuracy", baseline=evil,
                           config=config))
    study.add_trial(_trial(TrialState.FAIL, p, 0.0, 1, rng, seed=8, metric="val_accuracy", fail_reason=evil))
    page = render_html(collect(study))
    assert evil not in page and "alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_write_report_to_unwritable_path_is_a_user_error(report_study: optuna.Study, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match=r"report.html: cannot write the report"):
        write_report(report_study, blocker / "report.html")


@pytest.mark.browser
def test_report_renders_in_chromium(report_study: optuna.Study) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    data: ReportData = collect(report_study)
    path = ARTIFACTS / "report.html"
    path.write_text(render_html(data), encoding="utf-8")
    with chromium_page() as (page, errors):
        start = time.perf_counter()
        page.goto(path.as_uri())
        n_plots = wait_for_plotly(page)
        log.info("report: %.1f MB, %d figures drawn in %.2f s", path.stat().st_size / 1e6, n_plots,
                 time.perf_counter() - start)
        assert errors == []
        assert n_plots == len(data.figures)
        assert page.locator(".plotly-graph-div svg.main-svg").count() >= n_plots
        assert page.locator("p.nodraw").count() == len(data.notes)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)


def test_every_figure_of_the_page_is_drawn_or_says_why(tmp_path: Path) -> None:
    from searcher.report import SECTIONS
    from searcher.report._page import Grid

    ids = [f.id for s in SECTIONS if isinstance(s, Grid) for f in s.figures]
    assert len(ids) == len(set(ids)) == 13
    for study in (build_study(_storage(tmp_path)), _one_trial_study(tmp_path, direction="maximize")):
        data = collect(study)
        assert sorted((*data.figures, *data.notes)) == sorted(ids)
        assert not set(data.figures) & set(data.notes)


def test_adam_knobs_sampled_for_some_trials_only_are_shown_and_do_not_break_the_views(tmp_path: Path) -> None:
    """beta_1, beta_2 and epsilon exist only where the optimizer is Adam-like, as momentum does for SGD."""
    study = optuna.create_study(storage=_storage(tmp_path), study_name="betas", direction="maximize")
    rng = np.random.default_rng(3)
    for i in range(8):
        p, _ = BASELINES["keras-defaults"]
        p = {**p, "optimizer": ("adam", "sgd")[i % 2], "lr": float(10 ** rng.uniform(-4, -2))}
        betas = {"beta_1": 0.8 + 0.01 * i, "beta_2": 0.995, "epsilon": 10.0 ** -(5 + i % 3)} if i % 2 == 0 else {}
        study.add_trial(_trial(TrialState.COMPLETE, {**p, **betas}, 0.9 + 0.01 * i if betas else 0.85, 5, rng, seed=i,
                               metric="val_accuracy"))
    data = collect(study)
    assert (data.param_kinds["beta_1"], data.param_kinds["epsilon"]) == ("float", "log")
    assert {"by_optimizer", "parallel", "importance"} <= set(data.figures)
    assert data.best.params["optimizer"] == "adam" and data.best.params["beta_1"] == pytest.approx(0.86)
    page = render_html(data)
    assert "beta_1=0.86" in page and "epsilon=1.0e-07" in page


def test_tradeoff_marks_the_front_the_baselines_and_what_a_point_buys():
    import plotly.graph_objects as go

    from searcher.report import _tradeoff as tradeoff

    study = cost_study(ROWS + [(0.976, 3_000, 0.35, False)])  # trial 6 ties trial 3: the earlier one stays
    study.add_trial(create_trial(values=[0.95], user_attrs={"n_params": 4480, "latency_ms_b1": 0.3,
                                                            "baseline": "tutorial"}))
    d = tradeoff.collect(study)
    assert (d.cost, d.multi, d.best) == ("n_params", False, 0)
    assert d.front == (4, 3, 2, 0)
    assert [(p.points, p.by, p.trial.number) for p in d.picks] == [
        (0.5, "n_params", 3), (0.5, "latency_ms", 5), (1.0, "n_params", 3), (1.0, "latency_ms", 5)]
    fig = tradeoff.draw(go, d)
    assert [t.name for t in fig.data] == ["trial", "infeasible (over a constraint)", "Pareto front", "baseline"]
    assert list(fig.data[2].x) == [2_000, 3_000, 9_000, 40_000] and fig.layout.xaxis.type == "log"
    assert list(fig.data[1].x) == [90_000], "the trial over a constraint is drawn, never on the front"
    page = tradeoff.tables_html(d)
    assert "The Pareto front (val_accuracy against parameters): 4 trial(s)" in page
    assert page.count("<tr") == 1 + 4 + 1 + 4

    rows = [(0.98, 40_000, 0.5, False), (0.98, 9_000, 0.3, False), (0.97, 2_000, 0.2, False)]
    two = tradeoff.collect(cost_study(rows, objectives=("val_accuracy", "n_params")))
    assert (two.multi, two.front, two.best) == (True, (2, 1), 1), "a tie on the metric goes to the cheaper"


@pytest.mark.slow  # thousands of trials
def test_a_large_study_report_thins_its_curves_and_says_so(tmp_path):
    """3,000 finished trials (add_trials, in memory: the report reads them as from any storage):
    at most MAX_GREY_CURVES pruned curves, thousands of markers in WebGL, and the page says so."""
    import optuna

    from searcher.report import write_report
    from searcher.report._figures import MAX_GREY_CURVES, MAX_LINES, MAX_POINTS

    study = build_large_study(optuna.storages.InMemoryStorage(), "large", 3000)
    pruned = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED")
    complete = sum(1 for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE")
    assert pruned > MAX_GREY_CURVES and complete > MAX_POINTS
    page = write_report(study, tmp_path / "report.html").read_text()
    assert f"curves of {MAX_GREY_CURVES} of the {pruned:,} pruned trials are drawn" in page
    assert f"{complete:,} trials: box plots show the quartiles of all of them and only the outlying points" in page
    assert f"{MAX_LINES:,} of the {complete:,} complete trials are drawn: the best {MAX_LINES // 2:,}" in page
    assert '"scattergl"' in page  # thousands of markers drawn with WebGL


def test_the_best_against_a_baseline_reads_the_same_everywhere_for_a_loss(tmp_path: Path) -> None:
    """val_loss is minimized: the summary says the best is lower and that lower is better, in the
    launch summary, `searcher status` and the report alike (no bare sign to decode)."""
    from rich.console import Console
    from typer.testing import CliRunner

    from searcher.cli import app
    from searcher.launch import print_summary
    from searcher.status import baseline_lines, take_snapshot

    url = _storage(tmp_path)
    study = optuna.create_study(storage=url, study_name="loss", direction="minimize")
    study.set_metric_names(["val_loss"])
    study.set_user_attr("spec", _spec("loss", "val_loss"))
    lr = {"lr": DISTS["lr"]}
    study.add_trial(create_trial(value=0.2434, params={"lr": 1e-3}, distributions=lr,
                                 user_attrs={"baseline": "plain-adam"}))
    study.add_trial(create_trial(value=0.2271, params={"lr": 3e-3}, distributions=lr))
    line = "baseline plain-adam: 0.2434 (the best is 0.0163 lower; lower is better)"
    assert baseline_lines(take_snapshot(study)) == [line]
    console = Console(record=True, width=200)
    print_summary(study, console=console, url=url, default_url=False)
    assert f"  {line}" in console.export_text().splitlines()
    status = CliRunner().invoke(app, ["status", "loss", "--storage", url], terminal_width=200)
    assert status.exit_code == 0 and f"  {line}" in status.output.splitlines(), status.output
    page = render_html(collect(study))
    assert "the best against it (lower is better)" in page
    assert '<span class="good">the best is 0.0163 lower</span>' in page
