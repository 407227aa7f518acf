"""Section 2, scaling: finished trials per minute with 1, 2, ... CPU workers, same budget.

Every trial trains one fixed configuration (the digits-mlp tutorial baseline: 50-20 units,
SGD, batch 32) for exactly ``scaling_epochs`` epochs: no pruning, no early stopping, all
knobs fixed. A real search's trials differ in size and length, so with a dozen trials the
throughput would measure which configs were drawn, not the workers.

Trials per minute are taken over the search itself: from the first trial's start to the last
trial's end (from the storage). The same over the whole launch wall time (start-up included)
is shown beside it. 1 and 2 workers run ``scaling_repeats`` times, one after the other, and
``scaling_ratio`` is the median of those pairs' ratios. Each worker's thread settings come
from its log line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench._common import FINISHED, Plan, Section, epochs_trained, launch, load_trials, median, table, write_spec

TITLE = "2. Scaling: CPU worker processes on this machine"
STUDY = "scaling-fixed"
_FIXED = {"activation": "relu", "initializer": "glorot_uniform", "optimizer": "sgd", "learning_rate": 0.01,
          "dropout": 0.0, "l2": 0, "batch_norm": False, "batch_size": 32, "depth": 2, "units": [50, 20]}


def fixed_spec(folder: Path, epochs: int) -> Path:
    return write_spec(folder, name=STUDY, changes={
        "search": _FIXED,
        "training": {"max_epochs": epochs, "patience": None},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "baselines": [],
    })


def run(plan: Plan, workdir: Path, cpu_count: int) -> Section:
    folder = workdir / "scaling"
    spec = fixed_spec(folder, plan.scaling_epochs)
    # 1 and 2 workers alternate, repeated, so that load from other processes hits both alike.
    order = [*plan.scaling_workers] + [w for _ in range(plan.scaling_repeats - 1) for w in (1, 2)]
    runs: list[dict[str, Any]] = []
    for i, workers in enumerate(order):
        runs.append(_one(spec, workers, plan.scaling_trials, folder / f"run-{i}-workers-{workers}"))

    by_workers: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by_workers.setdefault(r["workers"], []).append(r)
    rows, medians = [], {}
    for workers, group in by_workers.items():
        m = {key: median(r[key] for r in group) for key in ("trials", "window_s", "wall_s", "trials_per_min",
                                                             "trials_per_min_wall", "s_per_trial_per_worker")}
        medians[workers] = m
        label = f"{workers}" + (" (more workers than cores)" if workers > cpu_count else "")
        threads = sorted({t for r in group for t in r["threads"]})
        rows.append([label, ", ".join(threads) or "not logged", len(group), f"{m['trials']:.0f}", m["window_s"],
                     m["s_per_trial_per_worker"], m["trials_per_min"],
                     f"{m['trials_per_min'] / medians[1]['trials_per_min']:.2f}x", m["wall_s"],
                     f"{m['trials_per_min_wall'] / medians[1]['trials_per_min_wall']:.2f}x"])
    figures: dict[str, Any] = {}
    pairs = list(zip(by_workers.get(1, []), by_workers.get(2, [])))
    if pairs:
        ratios = [two["trials_per_min"] / one["trials_per_min"] for one, two in pairs]
        ratios_wall = [two["trials_per_min_wall"] / one["trials_per_min_wall"] for one, two in pairs]
        figures["scaling_ratio"] = round(median(ratios), 4)
        figures["scaling_ratio_wall"] = round(median(ratios_wall), 4)
    figures["trials_per_min"] = {str(w): round(m["trials_per_min"], 3) for w, m in medians.items()}
    text = table(["workers", "threads per worker", "runs", "trials", "search s", "s per trial per worker",
                  "trials / min", "speed-up", "launch wall s", "speed-up incl. start-up"], rows)
    if pairs:
        text += (f"\n**scaling_ratio = {figures['scaling_ratio']:.2f}** (2 workers / 1 worker, trials per minute "
                 f"over the search, median of {len(pairs)} pair(s) run one after the other: "
                 f"{', '.join(f'{r:.2f}' for r in ratios)}; limit 2.0, goal ≥ 1.7); "
                 f"{figures['scaling_ratio_wall']:.2f} over the whole launch, start-up included. ")
    one_threads = ", ".join(sorted({t for r in by_workers.get(1, []) for t in r["threads"]}))
    if one_threads:
        text += (f"The 1-worker baseline runs with {one_threads}, so its intra-op threads already use part of "
                 f"the other core(s). ")
    text += (f"Budget {plan.scaling_trials} trials of one fixed config, {plan.scaling_epochs} epochs each, "
             f"{cpu_count} CPU cores; medians over runs. Thread settings are planned by searcher/devices.py and "
             f"read from searcher-logs/{STUDY}/worker-N.log.\n")
    return Section("scaling", TITLE, figures, text, {"runs": runs, "cpu_count": cpu_count,
                                                    "epochs_per_trial": plan.scaling_epochs})


def _one(spec: Path, workers: int, trials: int, cwd: Path) -> dict[str, Any]:
    run_ = launch(spec, study=STUDY, workers=workers, trials=trials, cwd=cwd)
    done = [t for t in load_trials(run_.url, STUDY) if t.state.name in FINISHED]
    window = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return {
        "workers": workers,
        "trials": len(done),
        "epochs": sum(epochs_trained(t) for t in done),
        "window_s": round(window, 3),
        "wall_s": round(run_.wall_s, 3),
        "trials_per_min": round(60 * len(done) / window, 3),
        "trials_per_min_wall": round(60 * len(done) / run_.wall_s, 3),
        "s_per_trial_per_worker": round(window * workers / len(done), 3),
        "threads": sorted({m.group(0) for line in run_.thread_lines()
                           for m in [re.search(r"threads intra=\d+ inter=\d+", line)] if m}),
        "thread_lines": [line.split("; pid")[0] for line in run_.thread_lines()],
    }
