"""Section 1, overhead: a one-worker ``searcher launch`` against a bare ``model.fit`` loop.

``overhead_ratio`` = wall time of ``python -m searcher launch digits-mlp --workers 1 --trials N``
on a fresh SQLite file, divided by the summed time of a plain Keras build + ``model.fit`` for
the very same trial configs and epoch counts (read back from the study) in one warm process.
The bare side is what a user writes (``bench._plain_model``: a ``keras.Sequential`` of the
config's layers on inputs preprocessed once in numpy, accuracy the only metric), so what
searcher adds to the model itself (preprocessing layers, the cross-entropy metric) counts as
searcher's. The bare loop runs with the worker's thread settings and validates every epoch,
as a search must.

The difference is broken down into parts measured on their own:

- TensorFlow import: a cold ``python -c "import tensorflow"``;
- data loading: ``load_search_data`` timed in the replay process;
- other start-up and shutdown: launch start to the first trial's start, plus the last trial's
  end to the launch's exit, less the two rows above (interpreters, imports, study creation,
  the summary);
- model build/compile and the training loop: searcher's own ``training.train`` replayed
  in process for the same configs (no storage, sampler or pruner) against the bare loop;
- the same epochs inside the worker against the replay: the trials' stored ``train_seconds``
  (epoch times) against the replay's epoch times;
- storage calls, pruning checks, the sampler: timed inside the worker during the trials by
  a probe (bench/_probe/sitecustomize.py) that wraps Optuna's storage, ``should_prune`` and
  the sampler; storage reads made by the pruner or the sampler count as theirs;
- other: what is left.

``overhead_ratio_same_loop`` divides by the replayed ``training.train`` instead: what the
search machinery (processes, storage, sampler, pruner) adds to searcher's own training loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from searcher.stored import COST_SECONDS

from bench._common import (
    FINISHED,
    LaunchRun,
    Plan,
    Section,
    cpu_placement_env,
    epochs_trained,
    launch,
    load_trials,
    median,
    pct,
    run_python,
    subprocess_env,
    table,
    trial_seconds,
)

TITLE = "1. Overhead: one-worker search vs a bare model.fit loop"
STUDY = "digits-mlp"


def tf_import_seconds(repeats: int) -> list[float]:
    """Wall time of a fresh interpreter importing TensorFlow (the page cache is warm after the first)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True,
                       env=subprocess_env(cpu_placement_env(1)))
        times.append(time.perf_counter() - t0)
    return times


def run(plan: Plan, workdir: Path) -> tuple[Section, LaunchRun]:
    import_times = tf_import_seconds(plan.tf_import_repeats)
    tf_import = median(import_times)
    repeats = [_measure(plan, workdir / f"overhead-{i}", tf_import) for i in range(plan.overhead_repeats)]
    m = {key: median(r[key] for r in repeats) for key in repeats[0] if isinstance(repeats[0][key], (int, float))}
    parts = {label: median(r["parts"][label] for r in repeats) for label in repeats[0]["parts"]}
    first = repeats[0]

    wall, bare, difference = m["wall_s"], m["bare_s"], m["wall_s"] - m["bare_s"]
    rows = [
        ["`searcher launch`, 1 worker, wall", wall, pct(wall, wall)],
        ["bare loop: Σ build + fit, same configs and epochs", bare, pct(bare, wall)],
        ["**difference**", difference, pct(difference, wall)],
        *[[f"  {label}", value, pct(value, wall)] for label, value in parts.items()],
        ["searcher's own `train` replayed in process, same configs (no storage, sampler, pruner)",
         m["replay_s"], pct(m["replay_s"], wall)],
    ]
    text = table(["part", "seconds", "share of searcher wall"], rows)
    biggest = max(parts.items(), key=lambda p: p[1])
    ratios = ", ".join(f"{r['wall_s'] / r['bare_s']:.2f}" for r in repeats)
    failed = f", {m['failed']:.0f} failed trial(s) not replayed" if m["failed"] else ""
    # The same trials repeated to the spec's budget: start-up paid once, the rest per trial.
    budget = _spec_budget()
    scale = budget / m["trials"]
    at_budget = (m["fixed_s"] + scale * (wall - m["fixed_s"])) / (scale * bare)
    at_budget_same_loop = (m["fixed_s"] + scale * (wall - m["fixed_s"])) / (scale * m["replay_s"])
    startup_share = m["fixed_s"] / wall
    text += (
        f"\n**overhead_ratio = {m['ratio']:.2f}** (goal ≤ 1.10; {len(repeats)} run(s): {ratios}) over "
        f"{m['trials']:.0f} trials, {m['epochs']:.0f} epochs{failed}, **{startup_share:.0%} of it start-up and "
        f"shutdown** ({m['fixed_s']:.1f} s of {wall:.1f} s, paid once per launch"
        + ("; a run this short measures mostly start-up" if startup_share > 0.25 else "") + "). "
        f"Against searcher's own training loop run bare in process: **{m['ratio_same_loop']:.2f}**. "
        f"*Projected, not measured*: with trials like these up to the spec's budget of {budget} trials (start-up "
        f"paid once) the ratios would be about **{at_budget:.2f}** and {at_budget_same_loop:.2f}. "
        f"Largest part of the difference: {biggest[0].split(' (')[0]} ({biggest[1]:.1f} s). "
        f"Paid by both and inside the bare time too: model build/compile + first-epoch tracing "
        f"{m['both_s']:.1f} s ({pct(m['both_s'], bare)} of the bare loop). "
        f"The launch parent spent {m['parent_storage_s']:.1f} s on storage polling and the worker's heartbeat "
        f"thread {m['heartbeat_s']:.1f} s, both beside the training. "
        f"Worker: {'; '.join(first['thread_lines']) or 'not logged'}; the bare loop ran with the same environment. "
        f"TensorFlow import: {', '.join(f'{t:.2f}' for t in import_times)} s. "
        f"Measuring the cost figures takes {m['median_cost_s']:.2f} s per trial (median), "
        f"**{m['median_cost_s'] / m['median_trial_s']:.1%} of a digits trial** ({m['median_trial_s']:.1f} s).\n"
    )
    figures = {
        "overhead_ratio": round(m["ratio"], 4),
        "overhead_ratio_same_loop": round(m["ratio_same_loop"], 4),
        "overhead_ratio_projected": round(at_budget, 4),  # at the spec's budget, start-up paid once; not measured
        "startup_share": round(startup_share, 4),
        "searcher_wall_s": round(wall, 3),
        "bare_loop_s": round(bare, 3),
        "tf_import_s": round(tf_import, 3),
        "data_loading_s": round(m["data_s"], 3),
        "cost_share_of_trial": round(m["median_cost_s"] / m["median_trial_s"], 4),
    }
    details: dict[str, Any] = {
        **{k: round(v, 4) for k, v in m.items()},
        "difference_s": round(difference, 3),
        "ratio_at_spec_budget": round(at_budget, 4),
        "ratio_same_loop_at_spec_budget": round(at_budget_same_loop, 4),
        "spec_budget_trials": budget,
        "parts_s": {label: round(value, 3) for label, value in parts.items()},
        "repeats": [{k: v for k, v in r.items() if k != "run"} for r in repeats],
        "tf_import_runs_s": [round(t, 3) for t in import_times],
        "thread_settings": first["thread_lines"],
    }
    return Section("overhead", TITLE, figures, text, details), first["run"]


def _spec_budget() -> int:
    from searcher.spec import load_spec

    return load_spec(STUDY).budget.n_trials


def _measure(plan: Plan, folder: Path, tf_import: float) -> dict[str, Any]:
    """One launch and its replay; the parts of the difference in seconds."""
    probes = folder / "probe"
    run_ = launch(STUDY, study=STUDY, workers=1, trials=plan.overhead_trials, cwd=folder, poll_first=True,
                  probe_dir=probes)
    trials = load_trials(run_.url, STUDY)
    done = [t for t in trials if t.state.name in FINISHED and "config" in t.user_attrs]

    job, out = folder / "replay-job.json", folder / "replay-out.json"
    job.write_text(json.dumps({
        "direction": "maximize",
        "trials": [{"number": t.number, "config": t.user_attrs["config"], "epochs": t.user_attrs["epochs"]}
                   for t in done],
    }))
    run_python("bench._replay", str(job), str(out), env=cpu_placement_env(1))
    replay = json.loads(out.read_text())
    by_trial = replay["trials"]

    wall = run_.wall_s
    bare = sum(r["bare_s"] for r in by_trial)
    first_start = min(t.datetime_start.timestamp() for t in trials)
    last_end = max(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
    worker, parent = _probe_seconds(probes, first_start, last_end)
    parts = {
        "TensorFlow import (cold interpreter, once per worker)": tf_import,
        "data loading (`load_search_data`, once per worker)": replay["data_s"],
        "other start-up and shutdown (interpreters, imports, study creation, summary)":
            (first_start - run_.started) + (run_.started + wall - last_end) - tf_import - replay["data_s"],
        "model build/compile (searcher's `train` − bare)":
            sum(r["searcher_build_s"] - r["bare_build_s"] for r in by_trial),
        "training loop incl. first-epoch tracing (searcher's `train` − bare `fit`: tf.data input, the "
        "preprocessing layers and cross-entropy metric in the model, callbacks, clear_session)":
            sum(r["searcher_s"] - r["searcher_build_s"] - r["bare_fit_s"] for r in by_trial),
        "the same epochs took longer in the worker than in the replay (CPU shared with the launch parent's "
        "polling, the heartbeat thread, other processes)":
            sum(t.user_attrs["train_seconds"] for t in done) - sum(r["searcher_epochs_s"] for r in by_trial),
        "storage calls (worker, during the trials: create, params, user attrs, reports, budget checks)":
            worker.get("storage", 0.0),
        "pruning checks (`should_prune` after each epoch, with its storage reads)": worker.get("pruning", 0.0),
        "cost figures (model file size, batch-1 and batch-256 latency: `searcher.cost`, timed by the worker)":
            sum(t.user_attrs.get(COST_SECONDS, 0.0) for t in done),
        "sampler (TPE, with its storage reads)": worker.get("sampler", 0.0),
    }
    parts["other (remainder: Optuna between calls, Python between trials, noise)"] = (
        wall - bare - sum(parts.values()))
    return {
        "run": run_,
        "wall_s": wall,
        "bare_s": bare,
        "replay_s": sum(r["searcher_s"] for r in by_trial),
        "ratio": wall / bare,
        "fixed_s": wall - (last_end - first_start),  # before the first trial and after the last
        "ratio_same_loop": wall / sum(r["searcher_s"] for r in by_trial),
        "data_s": replay["data_s"],
        "trials": len(done),
        "failed": len(trials) - len(done),
        "epochs": sum(epochs_trained(t) for t in done),
        "median_trial_s": median(trial_seconds(t) for t in done),
        "median_cost_s": median(t.user_attrs.get(COST_SECONDS, 0.0) for t in done),
        "median_trial_epochs": median(epochs_trained(t) for t in done),
        "both_s": sum(r["searcher_build_s"] + r["searcher_first_epoch_s"] - r["searcher_steady_epoch_s"]
                      for r in by_trial),
        "parent_storage_s": parent,
        "heartbeat_s": worker.get("heartbeat", 0.0),
        "parts": parts,
        "thread_lines": [line.split("; pid")[0] for line in run_.thread_lines()],
        "replayed_epochs_differ": [r["number"] for r in by_trial if r["searcher_epochs"] != r["epochs"]],
    }


def _probe_seconds(folder: Path, start: float, end: float) -> tuple[dict[str, float], float]:
    """The worker's main-thread seconds per category between ``start`` and ``end`` (its heartbeat
    thread's storage time as "heartbeat"), and the launch parent's storage seconds."""
    worker: dict[str, float] = {}
    parent = 0.0
    for path in folder.glob("probe-*.json"):
        probe = json.loads(path.read_text())
        if "worker" in probe["argv"]:
            for t0, seconds, category, thread in probe["events"]:
                if start <= t0 <= end:
                    key = category if thread == "main" else "heartbeat"
                    worker[key] = worker.get(key, 0.0) + seconds
        elif "launch" in probe["argv"]:
            parent += sum(probe["seconds"].get("main", {}).values())
    return worker, parent
