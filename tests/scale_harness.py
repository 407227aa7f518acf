"""Hundreds of real worker processes on one PostgreSQL, without TensorFlow.

``run_scale`` forks ``workers`` processes from this (already imported) interpreter, so
optuna, SQLAlchemy and searcher are loaded once and shared copy-on-write; each runs
``searcher.worker.run_worker``, the loop ``searcher worker`` runs, with ``StandIn`` in
place of training. The stand-in goes through the storage as a real trial does: the real
search space sampled, the user attributes a real trial writes, one ``trial.report`` and
pruning check per epoch (the spec's pruner), heartbeats (a trial outlasts the grace
period, so only heartbeats keep it alive), and ``kill`` workers killed with SIGKILL in
the middle of a trial, whose trials the others fail and retry. Meanwhile the parent samples
``pg_stat_activity`` (server connections) and the workers' memory.

A worker sends SIGKILL to itself, right after its trial's first epoch is stored: a parent
that reads RUNNING trials and kills their workers races the trials' ends (with 200 workers
on a busy CI machine, one such kill landed after its trial had completed).

``build_large_study`` makes a study of thousands of finished trials at once, as workers
would have left it. Used by tests/test_scale.py (what must hold) and bench/scale.py (how fast).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import psutil
import psycopg2
import yaml
from sqlalchemy.engine import make_url

from searcher import study as studies
from searcher.spec import StudySpec, parse_spec
from searcher.worker import WorkerOptions, run_worker

DIGITS = Path(__file__).resolve().parents[1] / "studies" / "digits-mlp.yaml"
FINISHED = ("COMPLETE", "PRUNED")


def scale_spec(name: str, *, n_trials: int, epochs: int = 4, sampler: str = "random") -> StudySpec:
    """digits-mlp's search space with a 1 s heartbeat and a 2 s grace period; no baselines.

    Random sampling by default: what the sampler computes is not what this measures.
    """
    raw = yaml.safe_load(DIGITS.read_text())
    raw.update(name=name, baselines=[], budget={"n_trials": n_trials})
    raw["sampler"] = {"name": sampler}
    raw["training"] = {**raw["training"], "max_epochs": epochs}
    raw["pruner"] = {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 1}
    raw["runtime"] = {"heartbeat_interval": 1, "grace_period": 2, "max_retries": 3}
    return parse_spec(raw, source=f"scale spec {name}")


class StandIn:
    """One trial's storage traffic, as searcher.objective.Objective makes it, with a sleep for training."""

    def __init__(self, spec: StudySpec, epoch_seconds: float, kills_left: Any = None) -> None:
        self.spec, self.epoch_seconds = spec, epoch_seconds
        self.kills_left = kills_left  # a multiprocessing.Value shared by all workers, or None
        self._host = socket.gethostname()

    def _maybe_die(self) -> None:
        if self.kills_left is None:
            return
        with self.kills_left.get_lock():
            if self.kills_left.value <= 0:
                return
            self.kills_left.value -= 1
        os.kill(os.getpid(), signal.SIGKILL)

    def __call__(self, trial: optuna.Trial) -> float:
        from searcher.space import suggest_values, trial_config

        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", self._host)
        values = suggest_values(trial, self.spec)
        config = trial_config(self.spec, values, seed=trial.user_attrs.get("seed", trial.number))
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("seed", config.seed)
        trial.set_user_attr("threads", "1")
        # A curve that depends on the sampled learning rate, so the median pruner prunes some.
        quality = 1.0 / (1.0 + abs(float(values["learning_rate"]) - 0.01) * 20)
        value, epochs = 0.0, 0
        for epoch in range(self.spec.training.max_epochs):
            time.sleep(self.epoch_seconds)
            value = quality * (1 - 0.5 ** (epoch + 1))
            epochs = epoch + 1
            trial.report(value, step=epoch)
            if epoch == 0:
                self._maybe_die()
            if trial.should_prune():
                break
        for key, figure in (("n_params", 1000 + trial.number), ("epochs", epochs), ("best_epoch", epochs),
                            ("sec_per_epoch", self.epoch_seconds), ("train_seconds", self.epoch_seconds * epochs),
                            ("peak_rss_mb", round(psutil.Process().memory_info().rss / 2**20))):
            trial.set_user_attr(key, figure)
        if epochs < self.spec.training.max_epochs:
            raise optuna.TrialPruned(f"pruned after epoch {epochs}")
        return value


@dataclass
class ScaleRun:
    """What one run did: exit codes, connection and memory peaks, lock waits, the trials."""

    workers: int
    seconds: float
    exit_codes: dict[int, int]  # pid -> exit code (-9: killed on purpose)
    killed: list[int]  # pids of the workers that died of SIGKILL inside a trial
    peak_connections: int
    peak_pss_mb: float
    lock_waits: list[float]
    lock_holds: list[float]
    trial_starts: int
    trials: list[optuna.trial.FrozenTrial] = field(repr=False, default_factory=list)

    def states(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out


def _child(spec: StudySpec, url: str, index: int, epoch_seconds: float, waits_file: Path, kills_left: Any) -> None:
    class Waits(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "lock_waits"):
                waits_file.write_text(json.dumps({"waits": record.lock_waits, "holds": record.lock_holds}))

    logging.getLogger("searcher.worker").addHandler(Waits())
    logging.getLogger("searcher.worker").setLevel(logging.INFO)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    code = run_worker(spec, url, WorkerOptions(index=index),
                      make_objective=lambda spec, options: StandIn(spec, epoch_seconds, kills_left))
    os._exit(code)


def _admin_connection(admin_url: str):
    parsed = make_url(admin_url)
    connection = psycopg2.connect(host=parsed.host, port=parsed.port, user=parsed.username,
                                  password=parsed.password, dbname=parsed.database)
    connection.autocommit = True
    return connection


def run_scale(spec: StudySpec, url: str, *, admin_url: str, workers: int, folder: Path,
              epoch_seconds: float = 0.5, kill: int = 0, timeout: float = 600) -> ScaleRun:
    """Create the study at ``url``, run ``workers`` forked workers to its budget, read it back.

    ``admin_url`` is a superuser login to the server itself (not through PgBouncer), for
    ``pg_stat_activity``. ``kill`` workers get SIGKILL once they are inside a trial.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("waits-*.json"):
        stale.unlink()
    storage = studies.open_study_storage(spec, url)
    studies.create_or_continue(spec, storage, n_trials=spec.budget.n_trials)
    storage.engine.dispose()  # no pooled connection is inherited by the children
    context = multiprocessing.get_context("fork")
    kills_left = context.Value("i", kill) if kill else None
    began = time.perf_counter()
    processes = []
    for index in range(workers):
        process = context.Process(target=_child, daemon=True,
                                  args=(spec, url, index, epoch_seconds, folder / f"waits-{index}.json", kills_left))
        process.start()
        processes.append(process)

    peaks = {"connections": 0, "pss_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        admin = _admin_connection(admin_url)
        last_memory = 0.0
        try:
            with admin.cursor() as cursor:
                while not stop.is_set():
                    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
                    peaks["connections"] = max(peaks["connections"], cursor.fetchone()[0])
                    if time.monotonic() - last_memory > 2:
                        peaks["pss_mb"] = max(peaks["pss_mb"], _pss_mb(processes))
                        last_memory = time.monotonic()
                    stop.wait(0.05)
        finally:
            admin.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.1, deadline - time.monotonic()))
    seconds = time.perf_counter() - began
    stop.set()
    sampler.join()
    killed = [p.pid for p in processes if p.exitcode == -signal.SIGKILL]  # before stragglers are killed
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    waits: list[float] = []
    holds: list[float] = []
    for index in range(workers):
        if (path := folder / f"waits-{index}.json").is_file():
            figures = json.loads(path.read_text())
            waits += figures["waits"]
            holds += figures["holds"]
    reader = optuna.storages.RDBStorage(url)
    trials = optuna.load_study(study_name=spec.name, storage=reader).get_trials(deepcopy=False)
    reader.engine.dispose()
    return ScaleRun(workers=workers, seconds=seconds, exit_codes={p.pid: p.exitcode for p in processes},
                    killed=killed, peak_connections=peaks["connections"], peak_pss_mb=peaks["pss_mb"],
                    lock_waits=waits, lock_holds=holds, trial_starts=len(trials), trials=trials)


def _pss_mb(processes: list[Any]) -> float:
    """Proportional set size of the live workers: shared (forked) pages counted once in total."""
    total = 0
    for process in processes:
        try:
            total += psutil.Process(process.pid).memory_full_info().pss
        except (psutil.Error, ValueError):
            pass
    return total / 2**20


def build_large_study(storage: optuna.storages.BaseStorage, name: str, n: int, *, seed: int = 0) -> optuna.Study:
    """A finished study of ``n`` trials as searcher workers leave one: params of the digits
    space, the worker's user attributes, one validation value per epoch (pruned trials stop early)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from searcher import study as studies
    from searcher.space import suggest_values, trial_config
    from searcher.spec import load_spec

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("digits-mlp").model_copy(update={"name": name})
    study = studies.create_or_continue(spec, storage, n_trials=n)
    drafts = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    trials = []
    for number in range(n):
        draft = drafts.ask()
        values = suggest_values(draft, spec)
        config = trial_config(spec, values, seed=number)
        quality = 0.6 + 0.35 * rng.random()
        epochs = rng.randint(4, 20)
        curve = {e: round(quality * (1 - 0.6 ** (e + 1)), 4) for e in range(epochs)}
        pruned = epochs < 8 and rng.random() < 0.7
        trials.append(create_trial(
            state=TrialState.PRUNED if pruned else TrialState.COMPLETE, value=None if pruned else max(curve.values()),
            params=draft.params, distributions=draft.distributions, intermediate_values=curve,
            user_attrs={"worker_pid": 1000 + number % 8, "worker_host": "bench", "config": config.to_dict(),
                        "seed": number, "threads": "1", "n_params": rng.randint(2_000, 300_000), "epochs": epochs,
                        "best_epoch": max(curve, key=curve.get) + 1, "sec_per_epoch": round(rng.uniform(0.2, 0.6), 3),
                        "train_seconds": round(epochs * 0.4, 2), "peak_rss_mb": 1000}))
        drafts.tell(draft, 0.0)
    study.add_trials(trials)
    return study
