"""Section 3, storage: milliseconds of Optuna storage work per trial, SQLite and PostgreSQL.

A trivial objective does what a real digits trial does to the storage, without training:
the worker's loop (budget lock and check, heartbeat, create trial), the real search space sampled
(random sampler, so no sampler maths is timed), the same user attributes, 10 reported
intermediate values each followed by a pruning check (the spec's median pruner), and the
result. The storage is opened as a worker opens it (heartbeats on). PostgreSQL is a real
server started with tests/postgres_server.py.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import REPO, Plan, Section, median, pct, table

TITLE = "3. Storage: Optuna storage time per trial"
STEPS = 10  # intermediate values a trivial trial reports, like a 10-epoch trial
_SUMMARY_ATTRS = ("n_params", "epochs", "best_epoch", "sec_per_epoch", "train_seconds")


class TrivialObjective:
    """A trial's storage traffic without the training; times each kind of call."""

    def __init__(self, spec, *, release) -> None:
        self.spec, self.release = spec, release
        self.ms: Counter[str] = Counter()
        self._host = socket.gethostname()

    def __call__(self, trial) -> float:
        from searcher.space import suggest_values, trial_config

        self.release()  # the budget lock, as the worker releases it once the trial is RUNNING

        with self._timed("attrs"):
            trial.set_user_attr("worker_pid", os.getpid())
            trial.set_user_attr("worker_host", self._host)
        with self._timed("params"):
            values = suggest_values(trial, self.spec)
        # (searcher.training.trial_seed would import TensorFlow here; any seed stores the same way)
        config = trial_config(self.spec, values, seed=trial.number)
        with self._timed("attrs"):
            trial.set_user_attr("config", config.to_dict())
            trial.set_user_attr("seed", config.seed)
        value = 0.0
        for step in range(STEPS):
            # A rising curve, different per trial, so the median pruner has something to compare.
            value = 0.5 + 0.4 * (1 - 0.7**(step + 1)) * (0.5 + 0.5 * ((trial.number * 7919) % 97) / 97)
            with self._timed("report"):
                trial.report(value, step=step)
            with self._timed("prune"):
                trial.should_prune()  # a real trial stops here when pruned; this one reports all 10
        with self._timed("attrs"):
            for key in _SUMMARY_ATTRS:
                trial.set_user_attr(key, 1)
        return value

    def _timed(self, part: str):
        return _Timer(self.ms, part)


class _Timer:
    def __init__(self, into: Counter, part: str) -> None:
        self.into, self.part = into, part

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.into[self.part] += 1000 * (time.perf_counter() - self.t0)


def run_trivial_study(spec, storage, *, url: str, n_trials: int, sampler) -> dict[str, float]:
    """The worker's loop over a trivial objective; milliseconds per trial, total and by part."""
    import optuna

    from searcher import study as studies
    from searcher.storage import BudgetLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies.create_or_continue(spec, storage, n_trials=n_trials)
    study = studies.load(spec.name, storage, url=url, sampler=sampler, pruner=studies.make_pruner(spec))
    lock = BudgetLock(url, spec.name)
    objective = TrivialObjective(spec, release=lock.release)
    t0 = time.perf_counter()
    n = 0
    while True:  # as worker.run_worker: lock, check the budget, start a trial, release
        lock.acquire()
        try:
            if studies.budget_left(study, n_trials) <= 0:
                break
            study.optimize(objective, n_trials=1, catch=(Exception,))
        finally:
            lock.release()
        n += 1
    total_ms = 1000 * (time.perf_counter() - t0)
    per_trial = {part: ms / n for part, ms in objective.ms.items()}
    per_trial["total"] = total_ms / n
    per_trial["other"] = per_trial["total"] - sum(objective.ms.values()) / n
    return per_trial


@dataclass
class StorageCosts:
    """Per backend: ms per trial (median of repeats) and its parts; or why it did not run."""

    runs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)
    trials: int = 0

    def per_trial(self, backend: str) -> dict[str, float]:
        runs = self.runs[backend]
        return {part: median(r[part] for r in runs) for part in runs[0]}


def digits_spec(name: str):
    from searcher.spec import load_spec

    return load_spec("digits-mlp").model_copy(update={"name": name})


def measure(plan: Plan, workdir: Path) -> StorageCosts:
    """Run the trivial study on fresh SQLite files and fresh PostgreSQL databases."""
    import optuna

    from searcher.storage import normalize_url
    from searcher.study import open_study_storage

    costs = StorageCosts(trials=plan.storage_trials)
    folder = workdir / "storage"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(plan.storage_repeats):
        spec = digits_spec(f"storage-bench-{i}")
        url = f"sqlite:///{folder}/trivial-{i}.db"
        costs.runs.setdefault("sqlite", []).append(run_trivial_study(
            spec, open_study_storage(spec, url), url=url, n_trials=plan.storage_trials,
            sampler=optuna.samplers.RandomSampler(seed=i)))

    server, reason = _postgres_server()
    if server is None:
        costs.not_run["postgresql"] = reason
        return costs
    try:
        for i in range(plan.storage_repeats):
            spec = digits_spec(f"storage-bench-{i}")
            url = normalize_url(server.create_database())
            storage = open_study_storage(spec, url)
            costs.runs.setdefault("postgresql", []).append(run_trivial_study(
                spec, storage, url=url, n_trials=plan.storage_trials,
                sampler=optuna.samplers.RandomSampler(seed=i)))
            storage.engine.dispose()
    finally:
        server.close()
    return costs


def _postgres_server():
    """A started PostgresServer (or the one SEARCHER_TEST_POSTGRES_URL names) and no reason,
    or None and why not. With CI=true a missing server is an error."""
    path = REPO / "tests" / "postgres_server.py"
    try:
        module_spec = importlib.util.spec_from_file_location("bench_postgres_server", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        url = os.environ.get("SEARCHER_TEST_POSTGRES_URL")
        server = module.PostgresServer.from_url(url) if url else module.PostgresServer()
        server.start()
        return server, ""
    except Exception as e:  # PostgresServerError, a missing tests/ folder, psycopg2 errors: report, go on
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"PostgreSQL is required when CI=true: {reason}") from e
        return None, reason


def section(costs: StorageCosts, *, real_trial_s: float, real_epochs: float) -> Section:
    """The table; ``real_trial_s`` is the median digits trial (overhead run) the share is taken of."""
    figures: dict[str, Any] = {"storage_ms_per_trial": {}}
    details: dict[str, Any] = {"trials_per_run": costs.trials, "repeats": {}, "steps_per_trial": STEPS,
                               "real_trial_s": real_trial_s, "real_trial_epochs": real_epochs, "parts_ms": {}}
    rows = []
    for backend in ("sqlite", "postgresql"):
        if backend in costs.not_run:
            rows.append([backend, f"not run: {costs.not_run[backend]}", "", "", "", "", "", ""])
            details.setdefault("not_run", {})[backend] = costs.not_run[backend]
            continue
        p = costs.per_trial(backend)
        figures["storage_ms_per_trial"][backend] = round(p["total"], 2)
        details["repeats"][backend] = len(costs.runs[backend])
        details["parts_ms"][backend] = {k: round(v, 3) for k, v in p.items()}
        rows.append([backend, p["total"], 1000 / p["total"], p["params"], p["attrs"], p["report"] + p["prune"],
                     p["other"], pct(p["total"] / 1000, real_trial_s)])
    figures["storage_share_of_trial"] = {
        b: round(ms / 1000 / real_trial_s, 5) for b, ms in figures["storage_ms_per_trial"].items()}
    headers = ["backend", "ms / trial", "trials / s", "params ms", "user attrs ms",
               f"{STEPS} reports + pruning checks ms", "create, finish, budget lock and check, heartbeat ms",
               "share of a real digits trial"]
    text = table(headers, rows)
    text += (f"\nTrivial objective, {costs.trials} trials per run, median of {max(details['repeats'].values() or [0])} "
             f"run(s); the share is of the median real `digits-mlp` trial in section 1 "
             f"({real_trial_s:.2f} s, {real_epochs:.0f} epochs).\n")
    return Section("storage", TITLE, figures, text, details)
