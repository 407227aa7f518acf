"""The worker loop: one process runs trials of a shared study until its budget is reached.

Each worker joins the study (or creates it, for compose workers), loads its data once, then
takes the budget lock, checks the budget, starts a trial and releases the lock, until the
budget, the deadline or a recycle point. It exits with a code the supervisor (and a
Kubernetes Job's pod failure policy) reads: EXIT_DONE, EXIT_FAILURES, EXIT_RECYCLE,
EXIT_INTERRUPTED. ``searcher worker`` on another host runs the same loop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable

import optuna
import sqlalchemy.exc

from searcher import stored
from searcher import study as studies
from searcher.devices import (
    LOCK_DIR_ENV,
    RuntimeOptions,
    WorkerPlacement,
    claim_gpu,
    configure_tensorflow,
    cpu_fallback_allowed,
    detect_gpus,
    worker_index_from_env,
)
from searcher.memory import rss_mb
from searcher.spec import StudySpec
from searcher.storage import BudgetLock, describe_db_error, resolve_url

log = logging.getLogger(__name__)

ObjectiveFunc = Callable[[optuna.Trial], float]
EXIT_DONE, EXIT_FAILURES, EXIT_RECYCLE, EXIT_INTERRUPTED = 0, 3, 75, 130


@dataclass(frozen=True)
class WorkerRequest:
    """What ``searcher worker`` was asked: the spec and its overrides, the study, and this process's place."""

    study: str  # a spec name in studies/ or a path
    storage: str | None = None
    data_dir: str | None = None
    seed: int | None = None
    name: str | None = None
    create: bool = False
    timeout: float | None = None
    gpu: str | None = None  # "auto" or an index: claim that GPU before TensorFlow starts
    mixed_precision: bool | None = None
    xla: bool | None = None
    wait: float | None = None  # seconds to wait for the storage (and the study, unless creating it)
    index: int | None = None  # None: from the scheduler's environment (worker_index_from_env)
    parent_pid: int | None = None
    deadline: float | None = None


def serve(request: WorkerRequest) -> int:
    """``searcher worker``: log to the console, wait for the storage if asked, claim a GPU, then run
    trials (``run_worker``); return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # a worker's log lists its trials
    spec, _ = studies.load_launch_spec(request.study, request.seed, mixed_precision=request.mixed_precision,
                                       xla=request.xla)
    joins = studies.study_name(spec.name, name=request.name, seed=request.seed)
    if request.wait:
        studies.wait_until_ready(resolve_url(request.storage), seconds=request.wait,
                                 name=None if request.create else joins)
    gpu_lock = _claim_gpu(request.gpu) if request.gpu is not None else None
    deadline = request.deadline
    if request.timeout:
        deadline = min(deadline or float("inf"), time.time() + request.timeout)
    # A job array task or an Indexed Job pod: the scheduler numbers the copies.
    index = request.index if request.index is not None else worker_index_from_env(os.environ)
    options = WorkerOptions(index=index, deadline=deadline, parent_pid=request.parent_pid,
                            data_dir=request.data_dir, create=request.create, study_name=joins)
    code = run_worker(spec, resolve_url(request.storage), options)
    if gpu_lock is not None:
        gpu_lock.close()
    return code


def _claim_gpu(gpu: str):
    """Lock a GPU for this process and make it the only one visible; the lock, to close when done.

    Before TensorFlow is imported: the visible devices are fixed when its runtime starts.
    """
    lock_dir = os.environ.get(LOCK_DIR_ENV, "/tmp/searcher-gpu-locks")
    claimed, lock = claim_gpu(gpu, gpus=detect_gpus(), lock_dir=lock_dir)
    os.environ.update(CUDA_VISIBLE_DEVICES=claimed, TF_FORCE_GPU_ALLOW_GROWTH="true", CUDA_DEVICE_ORDER="PCI_BUS_ID")
    return lock


@dataclass(frozen=True)
class WorkerOptions:
    index: int = 0
    deadline: float | None = None  # epoch seconds; no trial starts after it
    parent_pid: int | None = None  # stop when the launching parent is gone
    data_dir: str | None = None
    create: bool = False  # create the study if missing (docker compose workers)
    study_name: str | None = None  # the study to join; None: the spec's name


def run_worker(spec: StudySpec, url: str, options: WorkerOptions,
               make_objective: Callable[[StudySpec, WorkerOptions], ObjectiveFunc] | None = None) -> int:
    """Run trials until the study budget, the deadline, or a recycle point; return the exit code.

    ``make_objective`` builds the function that runs one trial, once per process; the
    default trains the spec's Keras model (tests pass a stand-in without TensorFlow).
    """
    storage = studies.open_study_storage(spec, url)
    name = options.study_name or spec.name
    lock = BudgetLock(url, name, storage=storage)

    def join() -> optuna.Study:
        # Replicas of one container image (Kubernetes pods, compose services) share pid and index,
        # and equal seeds would sample the same random start-up trials. The host name differs, and
        # as a str its hash is salted per process.
        sampler_seed = abs(hash((spec.seed, options.index, socket.gethostname(), os.getpid()))) % (2**31)
        joined = studies.load(name, storage, url=url, sampler=studies.make_sampler(spec, seed=sampler_seed),
                              pruner=studies.make_pruner(spec))
        studies.check_same_spec(joined, spec)
        return joined

    # A joining worker is refused (no such study, another spec) before it loads anything; one that
    # creates the study loads the data first, so it never stores a study its data cannot run.
    study = None if options.create else join()
    objective = (make_objective or training_objective)(spec, options)
    if study is None:
        with lock:  # several compose workers start at once: one creates the study and its baselines
            created = studies.create_or_continue(spec, storage, n_trials=None, name=name)
            if note := studies.kept_budget_note(created, spec.budget.n_trials):
                log.info("%s", note)
        study = join()
    n_trials = int(study.user_attrs.get(stored.BUDGET, spec.budget.n_trials))
    data = getattr(objective, "data", None)  # the stand-in of the tests has none
    if data is not None and stored.DATA not in study.user_attrs:
        study.set_user_attr(stored.DATA, data.summary())
    streak = _FailureStreak()
    runner = _ReleaseFirst(objective, lock)
    ran, settled_mb = 0, None
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        while True:
            lock.acquire()
            try:
                n_trials = _current_budget(storage, name, n_trials, options.index)
                if reason := _stop_reason(study, n_trials, options, storage):
                    log.info("worker %d stops: %s", options.index, reason)
                    return EXIT_DONE
                if recycle := _recycle_reason(spec, ran, settled_mb):  # checked after the budget: no fresh process to stop
                    log.info("worker %d recycles: %s", options.index, recycle)
                    return EXIT_RECYCLE
                study.optimize(runner, n_trials=1, catch=(Exception,), callbacks=[streak])
            except Exception as e:
                if (cause := _storage_trouble(e)) is None:
                    raise
                # A trial cut short stays RUNNING without heartbeats, or was failed already: either
                # way the stale-trial check fails it and enqueues a retry. Errors in a row still
                # stop the worker, as failed trials do.
                streak.count += 1
                log.warning("worker %d carries on after a storage error (%d in a row): %s", options.index,
                            streak.count, describe_db_error(cause))
            finally:
                lock.release()
            ran += 1
            if ran == 1:
                settled_mb = rss_mb()  # after the first trial: TensorFlow, data and tracing are loaded
            if streak.count >= spec.runtime.max_failures_in_a_row:
                log.error("worker %d stops: %d trials failed in a row", options.index, streak.count)
                return EXIT_FAILURES
    except KeyboardInterrupt:
        retried = runner.trial is not None and studies.retry_interrupted(study, runner.trial.number, spec)
        log.info("worker %d interrupted; its running trial was marked failed%s", options.index,
                 " and queued to run again with the same params and seed" if retried else "")
        return EXIT_INTERRUPTED
    finally:
        _log_lock_waits(options.index, lock)


def _current_budget(storage: optuna.storages.RDBStorage, name: str, known: int, index: int) -> int:
    """The study's budget as stored now: `searcher budget` (from any host) may have changed it
    since this worker's last trial."""
    now = studies.budget_in_database(storage, name)
    if now is None or now == known:
        return known
    log.info("worker %d: the study's budget is now %d trials (was %d)", index, now, known)
    return now


def _log_lock_waits(index: int, lock: BudgetLock) -> None:
    """One line on how long this worker queued for the budget lock and held it (the bench reads
    every figure from the record's ``lock_waits`` and ``lock_holds``)."""
    if waits := sorted(lock.wait_seconds):
        holds = sorted(lock.hold_seconds) or [0.0]
        log.info("worker %d: waited for the budget lock %d times, median %.1f ms, longest %.1f ms; held it "
                 "median %.1f ms", index, len(waits), 1000 * waits[len(waits) // 2], 1000 * waits[-1],
                 1000 * holds[len(holds) // 2], extra={"lock_waits": lock.wait_seconds, "lock_holds": lock.hold_seconds})


def training_objective(spec: StudySpec, options: WorkerOptions) -> ObjectiveFunc:
    """The real objective: TensorFlow placed and configured first, then the data loaded once."""
    placement = WorkerPlacement.from_env(options.index, os.environ)
    # Before TensorFlow starts: what the scheduler gave this worker, whatever TF then finds.
    log.info("worker %d: assigned %s", options.index, placement.describe())
    runtime = RuntimeOptions(mixed_precision=spec.runtime.mixed_precision, xla=spec.runtime.xla)
    line = configure_tensorflow(placement, runtime, allow_cpu_fallback=cpu_fallback_allowed(os.environ))
    log.info("%s; pid %d on %s; study %s", line, os.getpid(), socket.gethostname(), options.study_name or spec.name)

    from searcher.data import check_model_kind, load_search_data
    from searcher.objective import Objective

    data = load_search_data(spec.data, split_seed=spec.split_seed, data_dir=options.data_dir)
    check_model_kind(data, spec.model.kind, source=spec.data.path or spec.data.dataset)
    log.info("data: %s", data.preprocessing.describe())
    return Objective(spec, data, jit_compile=spec.runtime.xla)


def _storage_trouble(error: BaseException) -> BaseException | None:
    """The storage error behind ``error``, if any: the server went away (longer than the
    reconnect wait), or the running trial was failed elsewhere (stale heartbeat).

    Optuna can turn it into another exception on the way out (telling a trial that was
    failed meanwhile raises ValueError), so the whole chain is searched.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (optuna.exceptions.StorageInternalError, optuna.exceptions.UpdateFinishedTrialError,
                             sqlalchemy.exc.OperationalError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def raise_keyboard_interrupt(signum: int, frame: object) -> None:
    # Optuna fails the running trial on KeyboardInterrupt, so SIGTERM leaves nothing RUNNING.
    # One is enough: scancel signals every process of the job and the batch shell forwards its
    # TERM too; a second interrupt would cut short the failing and re-queueing of the trial.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_reason(study: optuna.Study, n_trials: int, options: WorkerOptions,
                 storage: optuna.storages.RDBStorage) -> str | None:
    if options.parent_pid and os.getppid() != options.parent_pid:
        return "the launching process is gone"
    if options.deadline and time.time() >= options.deadline:
        return "timeout reached"
    if studies.budget_left(study, n_trials, storage=storage) <= 0:
        return f"study budget of {n_trials} trials reached"
    return None


def _recycle_reason(spec: StudySpec, ran: int, settled_mb: float | None) -> str | None:
    """Why this worker should hand over to a fresh process, if it should.

    Memory that TensorFlow does not give back between trials shows as growth over what
    the worker held after its first trial; a fresh process costs a few seconds of start-up.
    """
    runtime = spec.runtime
    if ran >= runtime.recycle_after_trials:
        return f"ran {ran} trials (runtime.recycle_after_trials)"
    now = rss_mb()
    if runtime.max_worker_memory_mb and now > runtime.max_worker_memory_mb:
        return f"resident memory {now:.0f} MB > runtime.max_worker_memory_mb {runtime.max_worker_memory_mb}"
    if runtime.recycle_memory_growth_mb and settled_mb is not None and now - settled_mb > runtime.recycle_memory_growth_mb:
        return (f"resident memory grew {now - settled_mb:.0f} MB since the first trial "
                f"(runtime.recycle_memory_growth_mb {runtime.recycle_memory_growth_mb})")
    return None


class _ReleaseFirst:
    """Call the objective after releasing the budget lock: the trial is RUNNING by then."""

    def __init__(self, objective, lock: BudgetLock) -> None:
        self.objective, self.lock = objective, lock
        self.trial: optuna.Trial | None = None  # the latest trial, for a retry when interrupted

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial = trial
        self.lock.release()
        return self.objective(trial)


class _FailureStreak:
    """Counts this worker's failed trials in a row (a broken setup, not a bad config)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
