"""Section 10, profile: where a digits MLP trial's time goes, and seconds per epoch against a
plain Optuna loop, for this tree and any other searcher trees given with ``--tree LABEL=PATH``.

Two parts, each run in rounds that alternate the sides (A B C, then C B A, ...) so that load
from other processes hits every side alike; figures are medians over rounds with min-max:

1. ``bench/_profile_trial.py`` per tree (PYTHONPATH set to that tree): the same N configs of
   bench/spaces/digits-mlp-epoch.yaml as real trials in a worker-like process, each part's
   exclusive time per epoch and per trial, the traces Keras made, the user attrs written.
2. ``searcher launch`` of that space, 1 worker, per tree, stopped once its finished trials have
   trained ``epochs`` epochs, beside ``bench/_plain_optuna.py`` (TPE, a Keras model per trial,
   ``fit(epochs=1)`` per epoch, no pruning) for the same number of epochs. Seconds per epoch =
   wall time from starting the command to the end of the trial that reached the count,
   divided by the epochs trained until then (start-up included on every side); searcher's
   trial time alone (sum of its trials' durations per epoch) beside it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, Plan, Section, cpu_placement_env, median, table

TITLE = "10. Profile: a digits MLP trial's parts, and seconds per epoch against a plain Optuna loop"
SPEC = REPO / "bench" / "spaces" / "digits-mlp-epoch.yaml"
PLAIN = "plain Optuna loop"
ORDER = ["fit: training steps", "tracing: train function", "fit: rest (epoch loop, iterators, metric results)",
         "validation: test steps", "tracing: test function", "validation: evaluate, rest"]


def run(plan: Plan, workdir: Path, trees: dict[str, Path], *, epochs: int | None = None) -> Section:
    trees = trees or {"this tree": REPO}
    epochs = epochs or plan.profile_epochs
    profiles: dict[str, list[dict]] = {label: [] for label in trees}
    loads = [round(os.getloadavg()[0], 1)]
    for r in range(plan.profile_rounds):
        for label in _rotated(list(trees), r):
            profiles[label].append(_profile(trees[label], workdir / f"profile-{r}-{_slug(label)}", plan.profile_trials))
            loads.append(round(os.getloadavg()[0], 1))
    per_epoch: dict[str, list[dict]] = {label: [] for label in [*trees, PLAIN]}
    for r in range(plan.profile_rounds):
        for label in _rotated([*trees, PLAIN], r):
            folder = workdir / f"epochs-{r}-{_slug(label)}"
            per_epoch[label].append(_plain(folder, epochs, seed=r) if label == PLAIN
                                    else _searcher(trees[label], folder, epochs, seed=r))
            loads.append(round(os.getloadavg()[0], 1))

    text, figures, details = _profile_table(profiles)
    more_text, more_figures, more_details = _epoch_table(per_epoch, epochs)
    text += "\n" + more_text + (f"\nLoad average (1 min) over the runs: {min(loads)}-{max(loads)} on "
                                f"{os.cpu_count()} cores.\n")
    details.update(more_details, loads=loads, trees={k: str(v) for k, v in trees.items()})
    return Section("profile", TITLE, {**figures, **more_figures}, text, details)


def _rotated(labels: list[str], r: int) -> list[str]:
    return labels if r % 2 == 0 else labels[::-1]


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def _tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, **cpu_placement_env(1), "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}


def _profile(tree: Path, folder: Path, trials: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "profile.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "_profile_trial.py"), str(SPEC), str(out),
                             "--trials", str(trials), "--db", str(folder / "study.db")],
                            capture_output=True, text=True, env=_tree_env(tree), cwd=folder, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"_profile_trial.py on {tree} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(out.read_text())


def _spec_with_seed(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"digits-mlp-epoch-s{seed}.yaml"
    path.write_text(SPEC.read_text().replace("\nseed: 0\n", f"\nseed: {seed}\n"))
    return path


def _searcher(tree: Path, folder: Path, epochs: int, *, seed: int) -> dict:
    """``searcher launch`` (1 worker) stopped with Ctrl-C once its finished trials reach ``epochs``."""
    spec = _spec_with_seed(folder, seed)
    db = folder / "study.db"
    cmd = [sys.executable, "-m", "searcher", "launch", str(spec), "--workers", "1", "--trials", "1000",
           "--storage", f"sqlite:///{db}"]
    with open(folder / "launch.out", "wb") as out:
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_tree_env(tree))
        try:
            while proc.poll() is None and _epochs_finished(db) < epochs:
                time.sleep(0.5)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    rows = _finished_trials(db)
    return _cut(rows, started, epochs)


def _plain(folder: Path, epochs: int, *, seed: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "plain.json"
    started = time.time()
    result = subprocess.run([sys.executable, str(REPO / "bench" / "_plain_optuna.py"), str(out), "--epochs",
                             str(epochs), "--seed", str(seed)], capture_output=True, text=True,
                            env={**os.environ, **cpu_placement_env(1)}, cwd=folder, timeout=7200)
    if result.returncode != 0:
        raise RuntimeError(f"_plain_optuna.py exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return _cut(json.loads(out.read_text())["trials"], started, epochs)


def _cut(rows: list[dict], started: float, epochs: int) -> dict:
    """Wall time and trial time per epoch up to the first trial whose end reaches ``epochs``."""
    rows = sorted(rows, key=lambda r: r["end"])
    done, trial_s, kept = 0, 0.0, 0
    for row in rows:
        done += row["epochs"]
        trial_s += row["end"] - row["start"]
        kept += 1
        if done >= epochs:
            break
    if done < epochs:
        raise RuntimeError(f"only {done} of {epochs} epochs were trained")
    wall = rows[kept - 1]["end"] - started
    return {"wall_s": wall, "epochs": done, "trials": kept, "s_per_epoch": wall / done,
            "trial_s_per_epoch": trial_s / done}


def _epochs_finished(db: Path) -> int:
    return sum(r["epochs"] for r in _finished_trials(db))


def _finished_trials(db: Path) -> list[dict]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute(
                "SELECT t.datetime_start, t.datetime_complete, a.value_json FROM trials t "
                "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'epochs' "
                "WHERE t.state IN ('COMPLETE', 'PRUNED') AND t.datetime_complete IS NOT NULL").fetchall()
    except sqlite3.Error:  # no schema yet, or locked for a moment
        return []
    return [{"start": _stamp(a), "end": _stamp(b), "epochs": int(json.loads(e))} for a, b, e in rows]


def _stamp(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()  # Optuna stores local time without a zone


def _profile_table(profiles: dict[str, list[dict]]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    labels = list(profiles)
    parts = sorted({p for runs in profiles.values() for run in runs for t in run["trials"] for p in t["parts"]},
                   key=lambda p: (ORDER.index(p) if p in ORDER else len(ORDER), p))

    def per_round(label: str, value) -> list[float]:
        return [value(run["trials"]) for run in profiles[label]]

    def epochs(trials) -> int:
        return sum(t["epochs"] for t in trials) or 1

    headers = ["part", *[f"{label}: ms/epoch" for label in labels], *[f"{label}: ms/trial" for label in labels]]
    rows = []
    for part in parts:
        cells_e = [median(per_round(l, lambda ts: 1000 * sum(t["parts"].get(part, 0.0) for t in ts) / epochs(ts)))
                   for l in labels]
        cells_t = [median(per_round(l, lambda ts: 1000 * sum(t["parts"].get(part, 0.0) for t in ts) / len(ts)))
                   for l in labels]
        rows.append([part, *cells_e, *cells_t])
    walls = {l: per_round(l, lambda ts: 1000 * sum(t["wall_s"] for t in ts) / epochs(ts)) for l in labels}
    rows.append(["**whole trial (wall)**", *[f"**{median(walls[l]):,.1f}** ({min(walls[l]):,.0f}-{max(walls[l]):,.0f})"
                                             for l in labels],
                 *[median(per_round(l, lambda ts: 1000 * sum(t["wall_s"] for t in ts) / len(ts))) for l in labels]])
    for kind in ("train", "test", "predict"):
        rows.append([f"traces of the {kind} step per trial", *[""] * len(labels),
                     *[median(per_round(l, lambda ts: sum(t["traces"][kind] for t in ts) / len(ts))) for l in labels]])
    rows.append(["user attrs written per trial", *[""] * len(labels),
                 *[median(per_round(l, lambda ts: sum(t["user_attr_writes"] for t in ts) / len(ts))) for l in labels]])
    first = profiles[labels[0]][0]["trials"]
    text = table(headers, rows) + (
        f"\n{len(first)} trials per run ({sum(t['epochs'] for t in first)} epochs, "
        f"{sum(t['state'] == 'PRUNED' for t in first)} pruned in the first run), {len(profiles[labels[0]])} run(s) "
        "per tree; parts are exclusive (a part inside another is counted once), ms per epoch = the part's total over "
        "the trials' epochs. Whole trial: median (min-max) over runs.\n")
    figures = {f"profile_ms_per_epoch.{_slug(l)}": round(median(walls[l]), 2) for l in labels}
    details = {"profile_runs": {l: [{k: v for k, v in run.items() if k != "trials"} | {"trials": run["trials"]}
                                    for run in profiles[l]] for l in labels}}
    return text, figures, details


def _epoch_table(per_epoch: dict[str, list[dict]], epochs: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    plain = median(r["s_per_epoch"] for r in per_epoch[PLAIN])
    rows = []
    figures: dict[str, Any] = {}
    for label, runs in per_epoch.items():
        values = [r["s_per_epoch"] for r in runs]
        trial_only = [r["trial_s_per_epoch"] for r in runs]
        rows.append([label, f"**{median(values):.3f}** ({min(values):.3f}-{max(values):.3f})",
                     f"{median(trial_only):.3f}", f"{median(values) / plain:.2f}",
                     ", ".join(str(r["epochs"]) for r in runs), ", ".join(str(r["trials"]) for r in runs)])
        figures[f"s_per_epoch.{_slug(label)}"] = round(median(values), 4)
    text = (f"Seconds per epoch, cut at {epochs} epochs, 1 process each (searcher: `launch --workers 1`, TPE + median "
            "pruning; the plain loop: TPE, no pruning), seeds 0, 1, ... per round, the same seed for every side "
            "within a round:\n\n" + table(
                ["side", "s/epoch, wall (median, min-max)", "s/epoch, trial time alone", "× plain loop",
                 "epochs counted", "trials"], rows))
    return text, figures, {"per_epoch_runs": per_epoch}
