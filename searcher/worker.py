"""The worker loop: one process runs trials of a shared study until its budget is reached.

Each worker joins the study (or creates it, for compose workers), loads its data once, then
takes the budget lock, checks the budget, starts a trial and releases the lock, until the
budget, the deadline or a recycle point. It exits with a code the supervisor (and a
Kubernetes Job's pod failure policy) reads: EXIT_DONE, EXIT_FAILURES, EXIT_RECYCLE,
EXIT_INTERRUPTED, EXIT_UNAVAILABLE (the database stayed away past ``runtime.db_outage_minutes``;
restart it later). ``searcher worker`` on another host runs the same loop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
import sqlalchemy.exc

from searcher import stored
from searcher import study as studies
from searcher.devices import (
    LOCK_DIR_ENV,
    TrainingRuntime,
    WorkerPlacement,
    claim_gpu,
    configure_tensorflow,
    cpu_fallback_allowed,
    detect_gpus,
    worker_index_from_env,
)
from searcher.memory import rss_mb
from searcher.outage import DatabaseUnavailable, Outage, TrialReaped, is_unreachable
from searcher.spec import StudySpec
from searcher.storage import BudgetLock, describe_db_error, resolve_url

log = logging.getLogger(__name__)

ObjectiveFunc = Callable[[optuna.Trial], float]
EXIT_DONE, EXIT_FAILURES, EXIT_RECYCLE, EXIT_INTERRUPTED = 0, 3, 75, 130
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the database stayed unreachable; restart the worker later


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
    tensorboard: str | None = None  # None: as the spec says
    wait: float | None = None  # seconds to wait for the storage (and the study, unless creating it)
    index: int | None = None  # None: from the scheduler's environment (worker_index_from_env)
    parent_pid: int | None = None
    deadline: float | None = None


def serve(request: WorkerRequest) -> int:
    """``searcher worker``: log to the console, wait for the storage if asked, claim a GPU, then run
    trials (``run_worker``); return the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # a worker's log lists its trials
    for handler in logging.getLogger("optuna").handlers:  # its records do not propagate to the root logger
        handler.addFilter(InterruptedTrialFilter())
    spec, _ = studies.load_launch_spec(request.study, request.seed, mixed_precision=request.mixed_precision,
                                       xla=request.xla, tensorboard=request.tensorboard)
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
    # The worker's end is decided. Python restores the default handlers while it tears down
    # (seconds, with TensorFlow loaded), so a late scancel or a forwarded TERM would kill the
    # process there and replace its exit code with the signal's.
    StopOnce.ignore_further()
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
    A database lost on the way is waited for (see searcher/outage.py); past
    ``runtime.db_outage_minutes`` the worker returns EXIT_UNAVAILABLE.
    """
    stop = StopOnce()
    stop.install()
    outage = Outage(minutes=spec.runtime.db_outage_minutes)
    name = options.study_name or spec.name
    streak = _FailureStreak()
    lock: BudgetLock | None = None
    runner: _ReleaseFirst | None = None
    study: optuna.Study | None = None
    ran, settled_mb = 0, None
    try:
        # Reconnects are waited for here and in the objective, not inside each connect: an epoch's
        # report must fail at once during an outage so that training goes on.
        storage = outage.retry(lambda: studies.open_study_storage(spec, url, outage=outage, reconnect_seconds=0))
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

        def create() -> optuna.Study:
            with lock:  # several compose workers start at once: one creates the study and its baselines
                created = studies.create_or_continue(spec, storage, n_trials=None, name=name)
                if note := studies.kept_budget_note(created, spec.budget.n_trials):
                    log.info("%s", note)
            return join()

        # A joining worker is refused (no such study, another spec) before it loads anything; one that
        # creates the study loads the data first, so it never stores a study its data cannot run.
        study = None if options.create else outage.retry(join)
        objective = (make_objective or training_objective)(spec, options)
        if isinstance(getattr(objective, "outage", None), Outage):
            objective.outage = outage  # one view of the database per process: one line when lost, one when back
        study = study or outage.retry(create)
        n_trials = int(study.user_attrs.get(stored.BUDGET, spec.budget.n_trials))
        data = getattr(objective, "data", None)  # the stand-in of the tests has none
        if data is not None and stored.DATA not in study.user_attrs:
            outage.retry(lambda: study.set_user_attr(stored.DATA, data.summary()))
        runner = _ReleaseFirst(objective, lock)
        silent: list[int] = []  # trials this worker waits for at the end (see _silent_trials)
        while True:
            runner.trial = None
            if silent:  # outside the lock: the others go on starting and ending trials
                time.sleep(spec.runtime.heartbeat_interval)
            try:
                lock.acquire()
                try:
                    n_trials = _current_budget(storage, name, n_trials, options.index)
                    if reason := _stop_reason(options):
                        log.info("worker %d stops: %s", options.index, reason)
                        return EXIT_DONE
                    if studies.budget_left(study, n_trials, storage=storage) <= 0:
                        if silent := _silent_trials(study, spec, storage, silent, options.index):
                            continue
                        log.info("worker %d stops: study budget of %d trials reached", options.index, n_trials)
                        return EXIT_DONE
                    silent = []
                    if recycle := _recycle_reason(spec, ran, settled_mb, streak.out_of_memory):  # checked after the budget: no fresh process to stop
                        log.info("worker %d recycles: %s", options.index, recycle)
                        return EXIT_RECYCLE
                    study.optimize(runner, n_trials=1, catch=(Exception,), callbacks=[streak])
                finally:
                    lock.release()
            except TrialReaped as e:
                log.warning("worker %d: %s", options.index, e)
            except Exception as e:
                if _reaped(study, runner.trial, e):
                    log.warning("worker %d: trial %d was failed as stale while this worker ran it; its retry "
                                "runs it again, this run's result is dropped", options.index, runner.trial.number)
                elif is_unreachable(e):
                    # A trial cut short at its start stays RUNNING without heartbeats: the stale-trial
                    # check fails it and queues it again. One that trained is recorded once the database is back.
                    outage.lost(e)
                    outage.retry(lambda: studies.count_states_in_database(storage, name))
                    _record_cut_short(study, runner, outage, options.index)
                    continue
                elif (cause := _storage_trouble(e)) is not None:
                    # Errors in a row still stop the worker, as failed trials do.
                    streak.count += 1
                    log.warning("worker %d carries on after a storage error (%d in a row): %s", options.index,
                                streak.count, describe_db_error(cause))
                else:
                    raise
            ran += 1
            if ran == 1:
                settled_mb = rss_mb()  # after the first trial: TensorFlow, data and tracing are loaded
            if streak.count >= spec.runtime.max_failures_in_a_row:
                log.error("worker %d stops: %d trials failed in a row", options.index, streak.count)
                return EXIT_FAILURES
    except DatabaseUnavailable as e:
        log.error("worker %d stops: %s; exit %d (restart it when the database is back)", options.index, e,
                  EXIT_UNAVAILABLE)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        trial = runner.trial if runner is not None else None
        retried = trial is not None and study is not None and _requeue(study, trial, spec, options.index)
        how = signal.Signals(stop.signalled).name if stop.signalled else "KeyboardInterrupt"
        log.info("worker %d interrupted (%s); %s", options.index, how,
                 "its running trial was marked failed and queued to run again with the same params and seed"
                 if retried else "no running trial to queue again")
        return EXIT_INTERRUPTED
    finally:
        if lock is not None:
            _log_lock_waits(options.index, lock)


class InterruptedTrialFilter(logging.Filter):
    """Drops the traceback Optuna logs with a trial a signal interrupted: a stop, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        return True


def _reaped(study: optuna.Study | None, trial: optuna.Trial | None, error: Exception) -> bool:
    """Whether ``error`` says this worker's trial was failed by another process (stale heartbeat):
    Optuna then refuses to record it (``Cannot tell a FAIL trial``, UpdateFinishedTrialError)."""
    if study is None or trial is None:
        return False
    refused = isinstance(error, (ValueError, AssertionError)) or _storage_trouble(error) is not None
    try:
        return refused and _stored(study, trial.number).state == optuna.trial.TrialState.FAIL
    except Exception:
        return False


def _requeue(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, index: int) -> bool:
    """Fail the interrupted trial (if the interrupt landed where Optuna did not) and queue it once."""
    try:
        frozen = _stored(study, trial.number)
        if frozen.state == optuna.trial.TrialState.RUNNING:  # the signal landed where Optuna did not fail it
            trial.set_user_attr(stored.FAIL_REASON, "interrupted")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        elif frozen.user_attrs.get(stored.FAIL_REASON) != "interrupted":
            return False  # it ended on its own (complete, pruned, failed) before the signal
        return studies.retry_interrupted(study, trial.number, spec)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    except Exception as e:
        if not is_unreachable(e):
            raise
        log.warning("worker %d: trial %d not queued again here, the database is unreachable (%s); the "
                    "stale-trial check will", index, trial.number, describe_db_error(e))
        return False


def _record_cut_short(study: optuna.Study, runner: _ReleaseFirst, outage: Outage, index: int) -> None:
    """Record the end of a trial whose objective returned but whose final state the outage cut off.

    Optuna tells the trial after the objective returns, outside anything that waits for the
    database; left RUNNING, the trial would count against the budget until reaped, and the last
    workers of a search would stop with it unrecorded. Its result is known: record it, unless a
    reaper failed it meanwhile (its retry then runs it again).
    """
    trial, ended = runner.trial, runner.ended
    if trial is None or ended is None or _stored_state(study, trial, outage) != optuna.trial.TrialState.RUNNING:
        return
    state, values = ended
    try:
        outage.retry(lambda: study.tell(trial, values, state=state))
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    log.info("worker %d: trial %d recorded %s after the database came back", index, trial.number, state.name)


def _stored_state(study: optuna.Study, trial: optuna.Trial, outage: Outage) -> optuna.trial.TrialState:
    return outage.retry(lambda: study._storage.get_trial(trial._trial_id).state)


def _stored(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial as the database has it now (another process may have failed it)."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


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
    runtime = TrainingRuntime.from_spec(spec.runtime, placement)
    line = configure_tensorflow(placement, runtime, allow_cpu_fallback=cpu_fallback_allowed(os.environ))
    log.info("%s; pid %d on %s; study %s", line, os.getpid(), socket.gethostname(), options.study_name or spec.name)

    from searcher.data import check_model_kind, load_search_data
    from searcher.objective import Objective

    data = load_search_data(spec.data, split_seed=spec.split_seed, data_dir=options.data_dir)
    check_model_kind(data, spec.model.kind, source=spec.data.path or spec.data.dataset)
    log.info("data: %s", data.preprocessing.describe())
    import tensorflow as tf

    # TensorFlow's modules and the data live as long as the worker: frozen, they are left out of
    # the full garbage collection each trial's clear_session runs, which then scans what trials made.
    gc.collect()
    gc.freeze()
    return Objective(spec, data, runtime=runtime, n_visible_gpus=len(tf.config.list_physical_devices("GPU")))


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


class StopOnce:
    """The worker's handler of SIGTERM, SIGINT and SIGUSR1: the first one interrupts, the rest are noted only.

    Optuna fails the running trial on KeyboardInterrupt, so a signal leaves nothing RUNNING.
    scancel signals every process of the job and the batch shell forwards its TERM too; a
    second KeyboardInterrupt would land in the handling of the first (failing the trial,
    queuing it again) and cut it short. So however many arrive, in whatever order, the worker
    stops once and queues its trial once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signalled: int | None = None
        self.count = 0

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self)

    @classmethod
    def ignore_further(cls) -> None:
        """Ignore these signals from now on (Python's exit leaves ignored signals ignored)."""
        for signum in cls.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def __call__(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.signalled is not None:
            return
        self.signalled = signum
        raise KeyboardInterrupt


def _silent_trials(study: optuna.Study, spec: StudySpec, storage: optuna.storages.RDBStorage, before: list[int],
                   index: int) -> list[int]:
    """The RUNNING trials that have missed a heartbeat: a worker that finds the budget reached
    waits for them instead of stopping, since they still hold budget.

    A worker killed in one of the last trials (out of memory, a lost node) leaves its trial
    RUNNING, counted against the budget; if every other worker stopped, nobody would reap it
    or run its retry. The waiting worker reaps it once its grace period has passed (Optuna's
    own check, as before each trial) and runs the retry. A live trial that was only late (a
    busy machine) beats again, and the worker then stops: waiting costs an interval, reaping
    is judged as ever.
    """
    silent = studies.silent_running_trials(storage, study.study_name, spec.runtime.heartbeat_interval)
    if silent:
        optuna.storages.fail_stale_trials(study)
        if silent != before:
            log.info("worker %d waits: the budget is reached only with running trials %s, which have missed "
                     "a heartbeat; failed after runtime.grace_period, they are retried", index, silent)
    return silent


def _stop_reason(options: WorkerOptions) -> str | None:
    if options.parent_pid and os.getppid() != options.parent_pid:
        return "the launching process is gone"
    if options.deadline and time.time() >= options.deadline:
        return "timeout reached"
    return None


def _recycle_reason(spec: StudySpec, ran: int, settled_mb: float | None, out_of_memory: int | None = None) -> str | None:
    """Why this worker should hand over to a fresh process, if it should.

    Memory that TensorFlow does not give back between trials shows as growth over what
    the worker held after its first trial; a fresh process costs a few seconds of start-up.
    """
    runtime = spec.runtime
    if out_of_memory is not None:
        return f"trial {out_of_memory} ran out of memory (runtime.max_worker_memory_mb {runtime.max_worker_memory_mb})"
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
        # How the latest trial's objective ended (state, values), to record it if Optuna's tell could not.
        self.ended: tuple[optuna.trial.TrialState, Any] | None = None

    def __call__(self, trial: optuna.Trial) -> Any:
        self.trial, self.ended = trial, None
        self.lock.release()
        try:
            values = self.objective(trial)
        except KeyboardInterrupt:
            # Wherever the signal landed (also before or after training), the trial says why it ended.
            with contextlib.suppress(Exception):
                trial.set_user_attr(stored.FAIL_REASON, "interrupted")
            raise
        except optuna.TrialPruned:
            self.ended = optuna.trial.TrialState.PRUNED, None
            raise
        except Exception:
            self.ended = optuna.trial.TrialState.FAIL, None
            raise
        self.ended = optuna.trial.TrialState.COMPLETE, values
        return values


class _FailureStreak:
    """Counts this worker's failed trials in a row (a broken setup, not a bad config), and notes
    a trial that ran out of memory: the memory it took is not all given back."""

    def __init__(self) -> None:
        self.count = 0
        self.out_of_memory: int | None = None  # the number of a trial that ran out of memory

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == optuna.trial.TrialState.FAIL else 0
        if trial.user_attrs.get(stored.FAIL_REASON) == "out of memory":
            self.out_of_memory = trial.number
