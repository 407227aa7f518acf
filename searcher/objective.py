"""One trial: sample a config, check its size, train it, report and prune, record what it did.

The training itself is ``searcher.training``; this module is what makes it an Optuna trial:
the pruning and curve callbacks, the ``constraints.max_params`` check, and the user attrs a
trial stores. Imports TensorFlow: worker processes only.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import keras
import optuna

from searcher import stored
from searcher.cost import measure_cost
from searcher.data import SearchData
from searcher.memory import MemoryGuard
from searcher.ranking import CONSTRAINED_COST, cost_of, violations
from searcher.space import TrialConfig, suggest_values, trial_config
from searcher.spec import COST_OBJECTIVES, StudySpec, objective_names
from searcher.training import (
    TrialFailed,
    count_params,
    cross_validated,
    cv_score,
    train,
    train_other_folds,
    trial_seed,
)


class _ReportAndPrune(keras.callbacks.Callback):
    """Report the validation metric each epoch and stop training when the pruner says so.

    Like optuna-integration's ``KerasPruningCallback``, but it stops ``fit`` instead of
    raising inside it, so a pruned trial still records its epochs and timings.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch + 1
            self.model.stop_training = True


class _RecordCurve(keras.callbacks.Callback):
    """Store the validation curve as the ``curve`` user attr after each epoch.

    A multi-objective study has no ``Trial.report`` (Optuna raises NotImplementedError), so
    the learning curve that intermediate values would hold goes here instead.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        super().__init__()
        self.trial, self.metric, self.curve = trial, metric, []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        value = (logs or {}).get(self.metric)
        if value is not None:
            self.curve.append(float(value))
            self.trial.set_user_attr(stored.CURVE, self.curve)


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
        jit_compile: XLA on or off (``runtime.xla``).
    """

    def __init__(self, spec: StudySpec, data: SearchData, *, jit_compile: bool | str = "auto") -> None:
        self.spec, self.data, self.jit_compile = spec, data, jit_compile
        self._host = socket.gethostname()
        self._cost_every_trial = measures_cost_of_pruned(spec)

    def config_for(self, trial: optuna.Trial) -> TrialConfig:
        values = suggest_values(trial, self.spec)
        # A retry of a trial whose worker died carries the original's user attrs: same seed.
        seed = trial.user_attrs.get(stored.SEED, trial_seed(self.spec.seed, trial.number))
        return trial_config(self.spec, values, seed=seed)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr(stored.WORKER_PID, os.getpid())
        trial.set_user_attr(stored.WORKER_HOST, self._host)
        config = self.config_for(trial)
        trial.set_user_attr(stored.CONFIG, config.to_dict())
        trial.set_user_attr(stored.SEED, config.seed)
        trial.set_user_attr(stored.THREADS, os.environ.get("TF_NUM_INTRAOP_THREADS"))
        limits = self.spec.constraints.limits() if self.spec.constraints else {}
        if "max_params" in limits:
            self._reject_if_too_big(trial, config, limits["max_params"])
        objectives = objective_names(self.spec)
        pruning = _ReportAndPrune(trial, config.training.metric)
        # Optuna's pruners need Trial.report, which multi-objective studies lack: record the curve only.
        watch = _RecordCurve(trial, config.training.metric) if len(objectives) > 1 else pruning
        guard = MemoryGuard(self.spec.runtime.max_worker_memory_mb)
        try:
            with guard:
                result = train(
                    config,
                    self.data,
                    direction=self.spec.training.direction,
                    callbacks=[watch],
                    jit_compile=self.jit_compile,
                )
                # Fold 1 reports each epoch and may be pruned; the other folds run only for survivors.
                folds = [result]
                if pruning.pruned_at is None and self.data.folds:
                    folds += train_other_folds(config, self.data, direction=self.spec.training.direction,
                                               epochs=len(result.curve), jit_compile=self.jit_compile)
        except KeyboardInterrupt:
            if not guard.tripped:
                trial.set_user_attr(stored.FAIL_REASON, "interrupted")
                raise
            trial.set_user_attr(stored.FAIL_REASON, "out of memory")
            trial.set_user_attr(stored.FAIL_DETAIL, f"worker resident memory {guard.peak_mb:.0f} MB > "
                                               f"runtime.max_worker_memory_mb {self.spec.runtime.max_worker_memory_mb}")
            raise TrialFailed("out of memory", f"resident memory {guard.peak_mb:.0f} MB") from None
        except TrialFailed as e:
            trial.set_user_attr(stored.FAIL_REASON, e.reason)
            trial.set_user_attr(stored.FAIL_DETAIL, str(e)[:300])
            raise
        except Exception as e:
            trial.set_user_attr(stored.FAIL_REASON, "exception")
            trial.set_user_attr(stored.FAIL_DETAIL, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            raise
        finally:
            trial.set_user_attr(stored.PEAK_RSS_MB, round(guard.peak_mb))
        direction = self.spec.training.direction
        summary = result.summary() | (cross_validated(folds, direction) if len(folds) > 1 else {})
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        if pruning.pruned_at is None or self._cost_every_trial:
            for key, value in measure_cost(result.model, self.data.val).items():
                trial.set_user_attr(key, value)
        figures = {name: cost_of(trial, name) for name in COST_OBJECTIVES}
        for key, value in violations(limits, figures).items():
            trial.set_constraint(key, value)
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {pruning.pruned_at}")
        value = cv_score(folds, direction).value
        if len(objectives) > 1:
            return value, figures[objectives[1]]
        return value

    def _reject_if_too_big(self, trial: optuna.Trial, config: TrialConfig, max_params: int) -> None:
        """Build and count the network; over ``constraints.max_params`` it ends now, untrained.

        It ends PRUNED (no value to make up) with its constraint violation stored, so TPE and
        NSGA-II learn where the feasible region is; it counts against the budget like any
        finished trial, and is never "best".
        """
        n_params = count_params(config, self.data, jit_compile=self.jit_compile)
        trial.set_user_attr(stored.N_PARAMS, n_params)
        if n_params <= max_params:
            return
        for key, value in violations({"max_params": max_params}, {"n_params": n_params}).items():
            trial.set_constraint(key, value)
        reason = f"{n_params:,} parameters > constraints.max_params {max_params:,}; not trained"
        trial.set_user_attr(stored.INFEASIBLE, reason)
        trial.set_user_attr(stored.EPOCHS, 0)
        raise optuna.TrialPruned(reason)
