"""Starting and supervising worker processes: the launching parent's side.

``launch`` creates the study once, spawns one ``python -m searcher worker`` process per GPU
(or splits the CPU cores), pins each with ``CUDA_VISIBLE_DEVICES`` and thread counts in its
environment before TensorFlow is imported, restarts a worker that crashes (bounded) or asks
to be recycled, and on Ctrl-C or SIGTERM stops them all so no trial is left RUNNING.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from searcher import stored
from searcher.devices import WorkerPlacement
from searcher.storage import STORAGE_ENV
from searcher.worker import EXIT_DONE, EXIT_FAILURES, EXIT_RECYCLE, EXIT_UNAVAILABLE

log = logging.getLogger(__name__)

MAX_RESTARTS = 3


@dataclass
class WorkerProcess:
    """One worker slot: its placement and the process currently filling it."""

    placement: WorkerPlacement
    process: subprocess.Popen | None = None
    restarts: int = 0
    recycles: int = 0
    pids: list[int] = field(default_factory=list)
    last_exit: int | None = None
    finished: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(frozen=True)
class LaunchPlan:
    spec_path: Path
    url: str
    log_dir: Path
    seed: int | None = None
    study_name: str | None = None  # None: the spec's name
    deadline: float | None = None
    data_dir: str | None = None
    mixed_precision: bool = False
    xla: bool = False
    tensorboard: str | None = None  # an absolute folder


def start_worker(slot: WorkerProcess, plan: LaunchPlan) -> None:
    """Spawn a fresh interpreter for the slot; the storage URL travels in the environment,
    not on the command line, so the password does not show in ``ps``."""
    cmd = [sys.executable, "-m", "searcher", "worker", str(plan.spec_path),
           "--worker-index", str(slot.placement.index), "--parent-pid", str(os.getpid())]
    if plan.seed is not None:
        cmd += ["--seed", str(plan.seed)]
    if plan.study_name is not None:
        cmd += ["--name", plan.study_name]
    if plan.deadline is not None:
        cmd += ["--deadline", f"{plan.deadline:.3f}"]
    if plan.data_dir:
        cmd += ["--data-dir", plan.data_dir]
    cmd += ["--mixed-precision" if plan.mixed_precision else "--no-mixed-precision", "--xla" if plan.xla else "--no-xla"]
    if plan.tensorboard:
        cmd += ["--tensorboard", plan.tensorboard]
    env = {**os.environ, **slot.placement.env(), STORAGE_ENV: plan.url, "PYTHONUNBUFFERED": "1"}
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with open(plan.log_dir / f"worker-{slot.placement.index}.log", "ab") as out:
        # A new session: a Ctrl-C reaches only the parent, which stops workers in order.
        slot.process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
    slot.pids.append(slot.process.pid)


def supervise(slots: list[WorkerProcess], plan: LaunchPlan) -> None:
    """Restart slots whose worker crashed (at most MAX_RESTARTS) or asked to be recycled."""
    for slot in slots:
        if slot.finished or slot.alive or slot.process is None:
            continue
        code = slot.last_exit = slot.process.returncode
        if code == EXIT_RECYCLE:
            slot.recycles += 1
            start_worker(slot, plan)
        elif code == EXIT_UNAVAILABLE:
            # The database was away longer than runtime.db_outage_minutes: a fresh worker waits again;
            # launch itself gives up when it has waited as long (launch._watch).
            log.warning("worker %d exited %d (database unavailable); restarting", slot.placement.index, code)
            start_worker(slot, plan)
        elif code in (EXIT_DONE, EXIT_FAILURES, 1) or slot.restarts >= MAX_RESTARTS:
            # 1 is a user error (bad spec, storage): restarting would only repeat it.
            slot.finished = True
        else:
            slot.restarts += 1
            log.warning("worker %d exited with %s; restarting (%d/%d)", slot.placement.index, code,
                        slot.restarts, MAX_RESTARTS)
            start_worker(slot, plan)


def stop_workers(slots: list[WorkerProcess], *, grace_seconds: float = 20.0) -> None:
    """SIGTERM every live worker (each fails its running trial), then SIGKILL stragglers."""
    live = [s for s in slots if s.alive]
    for slot in live:
        slot.process.send_signal(signal.SIGTERM)
    end = time.monotonic() + grace_seconds
    for slot in live:
        try:
            slot.process.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            slot.process.kill()
            slot.process.wait()
        slot.finished = True


def fail_orphaned_trials(study: optuna.Study, pids: set[int]) -> int:
    """Fail RUNNING trials of our (now dead) workers; returns how many."""
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get(stored.WORKER_PID) in pids:
            try:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                failed += 1
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # it finished meanwhile: tell refuses a finished trial (ValueError), or the update lost the race
    return failed

