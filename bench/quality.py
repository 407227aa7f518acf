"""Section 5, search quality at an equal epoch budget on ``digits-mlp``.

Methods, one run per seed (``launch --seed``: a different seed is a different study, and a
different validation split; the test split never changes):

- ``tpe_median``: searcher's default, TPE + median pruner, as in studies/digits-mlp.yaml;
- ``random_none``: a copy of that spec with ``sampler: {name: random}``, ``pruner: {name: none}``;
- ``keras_tuner_hyperband``: KerasTuner's Hyperband over the same space and network (one
  Hyperband iteration, ``max_epochs`` = the spec's, factor 3), when keras_tuner is importable.

Equal budget: every method gets the same number of epochs actually trained. Hyperband's
iteration spends what it spends; that is the seed's budget, and each searcher run is
continued (``launch`` again with more ``--trials``) until it has spent at least as much,
then cut: its trials count in the order they finished, up to the budget. Without KerasTuner
the budget is the plan's fixed number. Both searcher runs start with the spec's two
baseline trials, as every digits-mlp study does.

The winner of each run (best validation value within the budget) is exported with
``searcher.export.export_config`` (KerasTuner's as the same document), retrained with
``searcher retrain`` (early stopping on validation, as in the search) and scored once on
the test split.
"""

from __future__ import annotations

import importlib.util
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searcher.spec import load_spec

from bench._common import (
    FINISHED,
    Plan,
    Section,
    cpu_placement_env,
    epochs_trained,
    launch,
    load_trials,
    median,
    run_python,
    spread,
    table,
    write_spec,
)

TITLE = "5. Search quality at an equal epoch budget (digits-mlp)"
METHODS = {
    "tpe_median": "searcher TPE + median pruner (default)",
    "random_none": "searcher random sampler, no pruning",
    "keras_tuner_hyperband": "KerasTuner Hyperband",
}
# Epochs per digits-mlp trial seen in full runs, to size the first launch near the budget (a
# run that falls short is continued, one that goes past it is cut; both cost time).
_EPOCHS_PER_TRIAL_GUESS = {"tpe_median": 10.0, "random_none": 16.0}


@dataclass
class Run:
    method: str
    seed: int
    best_value: float
    epochs: int  # epochs counted against the budget
    epochs_total: int  # epochs the run trained (searcher runs may go past the budget, then are cut)
    trials: int
    export: Path
    test_accuracy: float | None = None


def run(plan: Plan, workdir: Path) -> Section:
    folder = workdir / "quality"
    specs = _write_specs(plan, folder / "specs")
    have_kt = importlib.util.find_spec("keras_tuner") is not None
    methods = [m for m in METHODS if have_kt or m != "keras_tuner_hyperband"]

    # Several runs at a time: quality depends on the trials, not on how fast they run. KerasTuner
    # runs are queued first, so a searcher run waiting for its seed's budget never blocks one.
    with ThreadPoolExecutor(max_workers=plan.quality_parallel) as pool:
        budgets = {s: (pool.submit(_keras_tuner, specs["tpe_median"], s, plan, folder) if have_kt else None)
                   for s in plan.quality_seeds}

        def budget_of(seed: int) -> int:
            return budgets[seed].result().epochs if budgets[seed] else plan.quality_budget

        arms = [pool.submit(lambda m=m, s=s: _searcher(m, specs[m], s, lambda: budget_of(s),
                                                       guess=plan.quality_budget,
                                                       max_epochs=plan.quality_max_epochs, folder=folder))
                for s in plan.quality_seeds for m in ("tpe_median", "random_none")]
        runs = [f.result() for f in arms] + [f.result() for f in budgets.values() if f]
        metrics = list(pool.map(lambda r: _retrain(r, folder), runs))
    for r, m in zip(runs, metrics):
        r.test_accuracy = m["test_accuracy"]

    figures: dict[str, Any] = {}
    details: dict[str, Any] = {"seeds": list(plan.quality_seeds), "max_epochs": plan.quality_max_epochs,
                               "runs": [], "keras_tuner": "used" if have_kt else "not installed"}
    rows = []
    for method in methods:
        mine = [r for r in runs if r.method == method]
        best = [r.best_value for r in mine]
        test = [r.test_accuracy for r in mine]
        figures[method] = {
            "best_val_accuracy": round(sum(best) / len(best), 5),
            "test_accuracy": round(sum(test) / len(test), 5),
            "epochs": round(sum(r.epochs for r in mine) / len(mine), 1),
            "trials": round(sum(r.trials for r in mine) / len(mine), 1),
        }
        details[method] = {"best_val_accuracy_spread": round(spread(best), 5),
                           "test_accuracy_spread": round(spread(test), 5)}
        rows.append([METHODS[method], f"{_mean(best):.4f} ± {spread(best):.4f}",
                     f"{_mean(test):.4f} ± {spread(test):.4f}", f"{_mean([r.epochs for r in mine]):.0f}",
                     f"{_mean([r.trials for r in mine]):.1f}"])
    for r in runs:
        details["runs"].append({"method": r.method, "seed": r.seed, "best_val_accuracy": r.best_value,
                                "test_accuracy": r.test_accuracy, "epochs": r.epochs,
                                "epochs_trained": r.epochs_total, "trials": r.trials})
    spec = load_spec(specs["tpe_median"])
    startup = {"baselines": len(spec.baselines), "tpe": spec.sampler.n_startup_trials}
    text = table(["method", "best val accuracy (mean ± sd)", "test accuracy of retrained best",
                  "epochs spent", "trials"], rows)
    text += (f"\n{len(plan.quality_seeds)} seed(s) ({', '.join(map(str, plan.quality_seeds))}); "
             f"max {plan.quality_max_epochs} epochs per trial; the budget per seed is "
             f"{'what one Hyperband iteration trained' if have_kt else f'{plan.quality_budget} epochs'}"
             f"{'' if have_kt else ' (KerasTuner not installed: `pip install -e .[bench]`)'}. "
             f"Searcher runs count trials in the order they finished up to the budget (the spec's "
             f"{startup['baselines']} baseline trials first; TPE samples at random for its first "
             f"{startup['tpe']} trials); test accuracy is the exported winner retrained once with "
             f"`searcher retrain`.\n")
    return Section("quality", TITLE, figures, text, details)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _write_specs(plan: Plan, folder: Path) -> dict[str, Path]:
    shipped = load_spec("digits-mlp").training.max_epochs
    training = {} if plan.quality_max_epochs == shipped else {"training": {"max_epochs": plan.quality_max_epochs}}
    return {
        "tpe_median": write_spec(folder, name="digits-mlp", changes=training),
        "random_none": write_spec(folder, name="digits-mlp-random",
                                  changes={**training, "sampler": {"name": "random"}, "pruner": {"name": "none"}}),
    }


def _keras_tuner(spec: Path, seed: int, plan: Plan, folder: Path) -> Run:
    out = folder / f"keras_tuner-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    run_python("bench._keras_tuner", str(spec), "--seed", str(seed), "--max-epochs", str(plan.quality_max_epochs),
               "--dir", str(out / "kt"), "--out", str(out / "result.json"), env=cpu_placement_env(1))
    result = json.loads((out / "result.json").read_text())
    export = out / "best.yaml"
    from searcher.export import FORMAT_VERSION, write_export

    source = {"study": f"keras-tuner-hyperband-seed-{seed}", "trial": result["best_trial"],
              "picked": "best validation value (KerasTuner)", "metric": result["config"]["training"]["metric"],
              "direction": "maximize", "value": result["best_value"]}
    write_export({"searcher_export": FORMAT_VERSION, "source": source, "config": result["config"]}, export,
                 fmt="yaml")
    return Run("keras_tuner_hyperband", seed, result["best_value"], result["epochs"], result["epochs"],
               result["trials"], export)


def _searcher(method: str, spec: Path, seed: int, get_budget, *, guess: int, max_epochs: int,
              folder: Path) -> Run:
    """Launch (and continue) one study until it has trained the budget's epochs; cut it there.

    The first launch is sized for ``guess`` epochs and starts before the budget is known
    (``get_budget`` waits for KerasTuner's run).
    """
    from searcher.export import export_config, ranked_trials, write_export

    study = spec.stem
    cwd = folder / f"{method}-{seed}"
    trials = math.ceil(guess / min(_EPOCHS_PER_TRIAL_GUESS[method], max_epochs)) + 1
    budget = None
    while True:
        result = launch(spec, study=study, workers=1, trials=trials, cwd=cwd, seed=seed)
        budget = budget or get_budget()
        all_trials = load_trials(result.url, study)
        ended = sorted((t for t in all_trials if t.state.is_finished()), key=lambda t: t.datetime_complete)
        spent = sum(epochs_trained(t) for t in ended)
        finished = sum(t.state.name in FINISHED for t in ended)
        if spent >= budget or finished < trials:  # finished < trials: the workers stopped (failures)
            break
        trials = finished + math.ceil((budget - spent) / max(1.0, spent / max(1, len(ended)))) + 1

    counted, used = [], 0
    for t in ended:
        if used + epochs_trained(t) > budget:
            break
        used += epochs_trained(t)
        counted.append(t)
    complete = [t for t in counted if t.state.name == "COMPLETE"]
    if not complete:
        raise RuntimeError(f"{method} seed {seed}: no complete trial within {budget} epochs")
    best = max(complete, key=lambda t: (t.value, -t.number))
    import optuna

    optuna_study = optuna.load_study(study_name=study, storage=result.url)
    rank = [t.number for t in ranked_trials(optuna_study)].index(best.number) + 1
    export = cwd / "best.yaml"
    write_export(export_config(optuna_study, rank=rank), export, fmt="yaml")
    return Run(method, seed, float(best.value), used, spent, len(counted), export)


def _retrain(run_: Run, folder: Path) -> dict[str, Any]:
    model = run_.export.with_suffix(".keras")
    run_python("searcher", "retrain", str(run_.export), "-o", str(model), env=cpu_placement_env(1))
    return json.loads(model.with_suffix(".metrics.json").read_text())
