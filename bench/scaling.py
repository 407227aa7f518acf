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

The machine's own ceiling is measured in the same run: bare TensorFlow processes
(``bench._bare_trials``: build + ``fit``, no searcher) training the same config with the same
thread settings, one process against two side by side, ``scaling_repeats`` pairs. Two cores
that share caches, memory bandwidth or a hypervisor do not give 2.0; searcher's ratio is
printed against that ceiling (``scaling_vs_ceiling``).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    FINISHED,
    REPO,
    Plan,
    Section,
    cpu_placement_env,
    epochs_trained,
    launch,
    load_trials,
    median,
    subprocess_env,
    table,
    write_spec,
)

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
    ceiling = [_ceiling_pair(spec, plan.scaling_trials, folder / f"bare-{i}") for i in range(plan.scaling_repeats)]
    figures["ceiling_ratio"] = round(median(c["ratio"] for c in ceiling), 4)
    if pairs:
        figures["scaling_vs_ceiling"] = round(figures["scaling_ratio"] / figures["ceiling_ratio"], 4)
    figures["trials_per_min"] = {str(w): round(m["trials_per_min"], 3) for w, m in medians.items()}
    text = table(["workers", "threads per worker", "runs", "trials", "search s", "s per trial per worker",
                  "trials / min", "speed-up", "launch wall s", "speed-up incl. start-up"], rows)
    c1, c2 = median(c["tpm_1"] for c in ceiling), median(c["tpm_2"] for c in ceiling)
    ceiling_ratios = ", ".join(f"{c['ratio']:.2f}" for c in ceiling)
    text += "\n" + table(["ceiling: bare TensorFlow processes", "threads per process", "pairs", "trials / min",
                          "speed-up"],
                         [["1", ", ".join(sorted({c["threads_1"] for c in ceiling})), len(ceiling), c1, "1.00x"],
                          ["2 side by side", ", ".join(sorted({c["threads_2"] for c in ceiling})), len(ceiling), c2,
                           f"{figures['ceiling_ratio']:.2f}x"]])
    if pairs:
        text += (f"\n**scaling_ratio = {figures['scaling_ratio']:.2f}** (2 workers / 1 worker, trials per minute "
                 f"over the search, median of {len(pairs)} pair(s) run one after the other: "
                 f"{', '.join(f'{r:.2f}' for r in ratios)}); {figures['scaling_ratio_wall']:.2f} over the whole "
                 f"launch, start-up included. ")
    text += (f"\n**ceiling_ratio = {figures['ceiling_ratio']:.2f}**: two bare TensorFlow processes over one on "
             f"the same config and threads (pairs: {ceiling_ratios}), this machine's limit for 2 workers")
    text += (f"; searcher reaches **{figures['scaling_vs_ceiling']:.0%}** of it "
             f"(scaling_vs_ceiling = {figures['scaling_vs_ceiling']:.2f}). " if pairs else ". ")
    one_threads = ", ".join(sorted({t for r in by_workers.get(1, []) for t in r["threads"]}))
    if one_threads:
        text += (f"The 1-worker baseline runs with {one_threads}, so its intra-op threads already use part of "
                 f"the other core(s). ")
    text += (f"Budget {plan.scaling_trials} trials of one fixed config, {plan.scaling_epochs} epochs each, "
             f"{cpu_count} CPU cores; medians over runs. Thread settings are planned by searcher/devices.py and "
             f"read from searcher-logs/{STUDY}/worker-N.log.\n")
    return Section("scaling", TITLE, figures, text, {"runs": runs, "ceiling": ceiling, "cpu_count": cpu_count,
                                                    "epochs_per_trial": plan.scaling_epochs})


def _ceiling_pair(spec: Path, trials: int, folder: Path) -> dict[str, Any]:
    """Trials per minute of one bare process doing ``trials``, then of two side by side sharing them."""
    folder.mkdir(parents=True, exist_ok=True)
    one = _bare(spec, folder / "one", [trials], workers=1)
    two = _bare(spec, folder / "two", [math.ceil(trials / 2), trials // 2], workers=2)
    return {"tpm_1": one["trials_per_min"], "tpm_2": two["trials_per_min"],
            "ratio": round(two["trials_per_min"] / one["trials_per_min"], 4),
            "threads_1": one["threads"], "threads_2": two["threads"]}


def _bare(spec: Path, stem: Path, shares: list[int], *, workers: int) -> dict[str, Any]:
    """Run one ``bench._bare_trials`` per share at once; trials per minute over their merged window."""
    env = subprocess_env(cpu_placement_env(workers))
    outs = [stem.with_name(f"{stem.name}-{i}.json") for i in range(len(shares))]
    barrier = stem.with_name(f"{stem.name}-barrier")
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "bench._bare_trials", str(spec), str(out), "--trials", str(n),
                               "--barrier", str(barrier)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for n, out in zip(shares, outs)]
    deadline = time.monotonic() + 600
    while len(list(barrier.glob("ready-*"))) < len(procs):  # all loaded: start them together
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            break  # the loop below reports the failure
        time.sleep(0.05)
    (barrier / "go").touch()
    for proc in procs:
        output, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"bench._bare_trials exited with {proc.returncode}:\n{output[-3000:]}")
    results = [json.loads(out.read_text()) for out in outs]
    spans = [span for r in results for span in r["trials"]]
    window = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"trials_per_min": round(60 * len(spans) / window, 3), "threads": results[0]["threads"]}


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
