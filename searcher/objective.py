"""One trial: sample a config, check its size, train it, report and prune, record what it did.

The training itself is ``searcher.training``; this module is what makes it an Optuna trial:
the pruning and curve callbacks, the ``constraints.max_params`` check, and the user attrs a
trial stores. Imports TensorFlow: worker processes only.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import keras
import optuna

from searcher import stored
from searcher.artifacts import ModelKeeper
from searcher.cost import measure_cost
from searcher.data import SearchData
from searcher.devices import TrainingRuntime
from searcher.memory import MemoryGuard, MemoryLimitExceeded
from searcher.outage import Outage, TrialReaped, is_unreachable
from searcher.ranking import CONSTRAINED_COST, cost_of, violations
from searcher.space import TrialConfig, suggest_values, trial_config
from searcher.spec import COST_OBJECTIVES, StudySpec, objective_names
from searcher.tensorboard import NO_BOARD, StudyBoard
from searcher.training import (
    TrialFailed,
    count_params,
    cross_validated,
    cv_score,
    train,
    train_other_folds,
    trial_seed,
)


class _TrialWriter:
    """Writes a trial's epochs to the database without stalling training during an outage.

    A write that finds the database unreachable is kept and written with the next one that
    gets through (intermediate values), or simply superseded (the curve); the training goes
    on meanwhile. A trial failed as stale by another process ends here (``TrialReaped``).
    """

    def __init__(self, trial: optuna.Trial, outage: Outage) -> None:
        self.trial, self.outage = trial, outage

    def attempt(self, write: Any) -> bool:
        try:
            write()
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TrialReaped(f"trial {self.trial.number} was failed as stale while this worker trained it; "
                              "its retry runs it again, this run stops") from None
        except Exception as e:
            if not is_unreachable(e):
                raise
            self.outage.lost(e)
            return False
        self.outage.back()
        return True


class _ReportAndPrune(keras.callbacks.Callback):
    """Report the validation metric each epoch and stop training when the pruner says so.

    Like optuna-integration's ``KerasPruningCallback``, but it stops ``fit`` instead of
    raising inside it, so a pruned trial still records its epochs and timings. Epochs that
    end while the database is unreachable are reported once it is back; the pruner is asked
    only then.
    """

    def __init__(self, trial: optuna.Trial, metric: str, outage: Outage) -> None:
        super().__init__()
        self.trial, self.metric = trial, metric
        self.writer = _TrialWriter(trial, outage)
        self.pending: list[tuple[int, float]] = []
        self.prune = False
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None:
            return
        self.pending.append((epoch, float(value)))
        if self.writer.attempt(self._report_pending) and self.writer.attempt(self._ask_pruner) and self.prune:
            self.pruned_at = epoch + 1
            self.model.stop_training = True

    def _ask_pruner(self) -> None:
        self.prune = self.trial.should_prune()

    def _report_pending(self) -> None:
        while self.pending:
            step, value = self.pending[0]
            self.trial.report(value, step=step)
            self.pending.pop(0)


class _RecordCurve(keras.callbacks.Callback):
    """Store the validation curve as the ``curve`` user attr after each epoch.

    A multi-objective study has no ``Trial.report`` (Optuna raises NotImplementedError), so
    the learning curve that intermediate values would hold goes here instead.
    """

    def __init__(self, trial: optuna.Trial, metric: str, outage: Outage) -> None:
        super().__init__()
        self.trial, self.metric, self.curve = trial, metric, []
        self.writer = _TrialWriter(trial, outage)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is not None:
            self.curve.append(float(value))
            self.writer.attempt(lambda: self.trial.set_user_attr(stored.CURVE, self.curve))


class _MemoryLimit(keras.callbacks.Callback):
    """Fails the trial between two batches once the worker's resident memory passes the limit.

    The check runs in the training thread, so it cannot be lost the way an interrupt sent from
    another thread can be inside TensorFlow. It reads resident memory at most every
    ``interval_s`` (a clock read per batch otherwise), at the start of a batch: a batch-begin
    hook gets no logs, so Keras does not wait for the previous batch's results.
    """

    def __init__(self, guard: MemoryGuard, *, interval_s: float = 0.05) -> None:
        super().__init__()
        self.guard, self.interval_s, self._next = guard, interval_s, 0.0

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        now = time.monotonic()
        self.guard.progressed(now)
        if now < self._next:
            return
        self._next = now + self.interval_s
        if self.guard.over_limit():
            raise TrialFailed("out of memory", f"resident memory {self.guard.peak_mb:.0f} MB")


def measures_cost_of_pruned(spec: StudySpec) -> bool:
    """Whether a pruned trial needs its latency and file size measured too.

    Only complete trials are ranked, exported, drawn in the trade-off or shown as best, so
    a pruned trial's cost figures are read only as constraint values the sampler learns
    from (``max_latency_ms``, ``max_model_mb``) or as a second objective (which turns
    pruning off anyway). Measuring costs a save and two traced predict calls per trial.
    """
    limits = spec.constraints.limits() if spec.constraints else {}
    costs = {CONSTRAINED_COST[name] for name in limits} | set(objective_names(spec)[1:])
    return bool(costs & {"latency_ms", "model_mb"})


class Objective:
    """The Optuna objective of a study: one call is one trial.

    Args:
        spec: the study spec (search space, training settings, seed).
        data: training and validation splits, loaded once per worker process.
        runtime: XLA, precision and threads (``TrainingRuntime``), recorded on each trial.
        n_visible_gpus: GPUs this process trains on, for the precision the trial records.
    """

    def __init__(self, spec: StudySpec, data: SearchData, *, runtime: TrainingRuntime, n_visible_gpus: int = 0) -> None:
        self.spec, self.data, self.runtime = spec, data, runtime
        self._runtime_attr = runtime.to_dict(n_visible_gpus=n_visible_gpus)
        self._host = socket.gethostname()
        self.outage = Outage(minutes=spec.runtime.db_outage_minutes)
        self._cost_every_trial = measures_cost_of_pruned(spec)
        self.board = StudyBoard(spec) if spec.runtime.tensorboard else None
        self.keeper = ModelKeeper(spec.runtime, patience=spec.training.patience, cross_validated=bool(data.folds))

    def config_for(self, trial: optuna.Trial) -> TrialConfig:
        values = suggest_values(trial, self.spec)
        # A retry of a trial whose worker died carries the original's user attrs: same seed.
        seed = trial.user_attrs.get(stored.SEED, trial_seed(self.spec.seed, trial.number))
        return trial_config(self.spec, values, seed=seed)

    def _record(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        """Store ``attrs`` on the trial; they must land, so an unreachable database is waited for
        (``runtime.db_outage_minutes``); a trial failed as stale meanwhile ends the run."""
        try:
            self.outage.retry(lambda: [trial.set_user_attr(k, v) for k, v in attrs.items()])
        except optuna.exceptions.UpdateFinishedTrialError:
            raise TrialReaped(f"trial {trial.number} was failed as stale while this worker trained it; its "
                              "retry runs it again, this run's result is dropped") from None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        config = self.config_for(trial)
        self._record(trial, {stored.WORKER_PID: os.getpid(), stored.WORKER_HOST: self._host,
                             stored.CONFIG: config.to_dict(), stored.SEED: config.seed,
                             stored.THREADS: os.environ.get("TF_NUM_INTRAOP_THREADS"), stored.RUNTIME: self._runtime_attr})
        limits = self.spec.constraints.limits() if self.spec.constraints else {}
        if "max_params" in limits:
            self._reject_if_too_big(trial, config, limits["max_params"])
        objectives = objective_names(self.spec)
        pruning = _ReportAndPrune(trial, config.training.metric, self.outage)
        # Optuna's pruners need Trial.report, which multi-objective studies lack: record the curve only.
        watch = _RecordCurve(trial, config.training.metric, self.outage) if len(objectives) > 1 else pruning
        guard = MemoryGuard(self.spec.runtime.max_worker_memory_mb)
        callbacks = [watch] + ([_MemoryLimit(guard)] if guard.limit_mb else [])
        board = self.board.trial(trial) if self.board else NO_BOARD
        callbacks += board.callbacks(1)
        direction = self.spec.training.direction
        try:
            with guard:
                result = train(config, self.data, direction=direction, runtime=self.runtime, callbacks=callbacks)
                # Fold 1 reports each epoch and may be pruned; the other folds run only for survivors.
                folds = [result]
                if pruning.pruned_at is None and self.data.folds:
                    folds += train_other_folds(config, self.data, direction=direction, epochs=len(result.curve),
                                               runtime=self.runtime, callbacks=board.callbacks)
        except MemoryLimitExceeded:  # the backstop, for a step that did not return to Python
            raise self._fail(trial, guard, TrialFailed("out of memory", f"resident memory {guard.peak_mb:.0f} MB"))
        except TrialFailed as e:
            raise self._fail(trial, guard, e)
        except Exception as e:
            self._record(trial, {stored.FAIL_REASON: "exception", stored.PEAK_RSS_MB: round(guard.peak_mb),
                                 stored.FAIL_DETAIL: f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]})
            raise
        summary = result.summary() | (cross_validated(folds, direction) if len(folds) > 1 else {})
        if pruning.pruned_at is None or self._cost_every_trial:
            summary |= measure_cost(result.model, self.data.val)
        self._record(trial, summary | {stored.PEAK_RSS_MB: round(guard.peak_mb)})
        if pruning.pending:  # epochs that ended during an outage: reported now that the database is back
            self.outage.retry(pruning._report_pending)
        figures = {name: cost_of(trial, name) for name in COST_OBJECTIVES}
        self.outage.retry(lambda: [trial.set_constraint(k, v) for k, v in violations(limits, figures).items()])
        if pruning.pruned_at is not None:
            board.finish(result.curve[-1], step=len(result.curve))  # Optuna's value of a pruned trial: its last report
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        value = cv_score(folds, direction).value
        board.finish(value, step=len(result.curve))
        values = (value, figures[objectives[1]]) if len(objectives) > 1 else (value,)
        self.keeper.keep(trial, result, values)
        return values if len(values) > 1 else value

    def _fail(self, trial: optuna.Trial, guard: MemoryGuard, error: TrialFailed) -> TrialFailed:
        """Record why the trial failed; out of memory says by how much (it is not retried)."""
        detail = str(error)[:300]
        if error.reason == "out of memory":
            detail = (f"worker resident memory {guard.peak_mb:.0f} MB > runtime.max_worker_memory_mb "
                      f"{self.spec.runtime.max_worker_memory_mb}")
        self._record(trial, {stored.FAIL_REASON: error.reason, stored.FAIL_DETAIL: detail,
                             stored.PEAK_RSS_MB: round(guard.peak_mb)})
        return error

    def _reject_if_too_big(self, trial: optuna.Trial, config: TrialConfig, max_params: int) -> None:
        """Build and count the network; over ``constraints.max_params`` it ends now, untrained.

        It ends PRUNED (no value to make up) with its constraint violation stored, so TPE and
        NSGA-II learn where the feasible region is; it counts against the budget like any
        finished trial, and is never "best".
        """
        n_params = count_params(config, self.data, runtime=self.runtime)
        trial.set_user_attr(stored.N_PARAMS, n_params)
        if n_params <= max_params:
            return
        for key, value in violations({"max_params": max_params}, {"n_params": n_params}).items():
            trial.set_constraint(key, value)
        reason = f"{n_params:,} parameters > constraints.max_params {max_params:,}; not trained"
        trial.set_user_attr(stored.INFEASIBLE, reason)
        trial.set_user_attr(stored.EPOCHS, 0)
        raise optuna.TrialPruned(reason)
