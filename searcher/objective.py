"""One trial: sample, build, fit on train, score on validation each epoch, prune, record.

``train`` is the single training loop; the search, ``retrain``, ``replay`` and ``confirm``
all call it, so they train the same way. With ``data.cv_folds`` a trial trains fold 1 as
any trial (reported each epoch, prunable, stopped early), then the other folds for as many
epochs; its value is the best epoch of the folds' mean curve (``cv_score``).
Imports TensorFlow: worker processes only.
"""

from __future__ import annotations

import math
import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import optuna

from searcher.cost import measure_cost
from searcher.data import SearchData, Split, class_weights, to_tf_dataset
from searcher.front import CONSTRAINED_COST, cost_of, violations
from searcher.memory import MemoryGuard
from searcher.models import build_model
from searcher.space import TrialConfig, suggest_values, trial_config
from searcher.spec import COST_OBJECTIVES, StudySpec, objective_names


class TrialFailed(Exception):
    """The trial cannot produce a score (NaN loss, out of memory); the search goes on.

    ``reason`` is stored on the trial as ``fail_reason`` so ``status`` can count it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def trial_seed(study_seed: int, trial_number: int) -> int:
    """A seed for one trial, derived from the study seed and the trial number."""
    return int(np.random.SeedSequence([study_seed, trial_number]).generate_state(1)[0] % (2**31 - 1))


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]
    metric: str
    direction: str
    epoch_seconds: list[float] = field(default_factory=list)

    @property
    def curve(self) -> list[float]:
        """The validation metric after each epoch."""
        return [float(v) for v in self.history.get(self.metric, [])]

    @property
    def best_epoch(self) -> int:
        """1-based epoch with the best validation metric."""
        pick = max if self.direction == "maximize" else min
        return self.curve.index(pick(self.curve)) + 1

    @property
    def best_value(self) -> float:
        return self.curve[self.best_epoch - 1]

    def summary(self) -> dict[str, Any]:
        """The figures stored on every trial and written by ``retrain``.

        ``val_loss_at_best`` breaks ties between trials of equal accuracy: on a small
        validation split many trials reach the same accuracy, and the lower loss is the
        surer one.
        """
        losses = self.history.get("val_loss") or []
        return {
            "n_params": int(self.model.count_params()),
            "epochs": len(self.curve),
            "best_epoch": self.best_epoch,
            "val_loss_at_best": float(losses[self.best_epoch - 1]) if len(losses) >= self.best_epoch else None,
            "sec_per_epoch": round(statistics.median(self.epoch_seconds), 4),
            "train_seconds": round(sum(self.epoch_seconds), 3),
        }


class _EpochClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class _FailOnNaN(keras.callbacks.Callback):
    """Raise ``TrialFailed`` after an epoch whose loss is not finite.

    At the epoch's end, not per batch: a batch hook makes Keras hand every batch's logs back
    to Python, a host sync per step on a GPU (bench section 7 measures the cost on CPU). The
    epoch's loss is the mean over its batches, so a single NaN or inf batch shows in it; the
    price is finishing that epoch.
    """

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrialFailed("nan", f"loss became {float(loss)} in epoch {epoch + 1}")


def roc_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """ROC AUC: of the positive class for 2 classes, else the macro one-vs-rest mean; NaN when
    the network produced NaN (the NaN check fails the trial)."""
    from sklearn.metrics import roc_auc_score

    if not np.isfinite(probabilities).all():
        return math.nan
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(y, probabilities[:, 1]))
    return float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro",
                               labels=np.arange(probabilities.shape[1])))


class _DataLoss(keras.callbacks.Callback):
    """Makes ``val_loss`` the validation cross-entropy alone.

    Keras' ``val_loss`` adds the L2 penalty, so comparing trials by it would rank a strongly
    regularized model lower for its penalty rather than its predictions.
    """

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is not None and "val_crossentropy" in logs:
            logs["val_loss"] = logs["val_crossentropy"]


class _ValidationAUC(keras.callbacks.Callback):
    """Adds ``val_auc`` to each epoch's logs, before early stopping and pruning read them.

    Computed with scikit-learn on the whole validation split (a batch-wise Keras AUC
    approximates it with thresholds), and kept out of the compiled model, so a saved model
    needs no custom metric to load.
    """

    def __init__(self, val: Split, *, batch_size: int) -> None:
        super().__init__()
        self.val, self.dataset = val, to_tf_dataset(val, batch_size=batch_size)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if logs is not None:
            logs["val_auc"] = roc_auc(self.val.y, self.model.predict(self.dataset, verbose=0))


def train(
    config: TrialConfig,
    data: SearchData,
    *,
    direction: str,
    callbacks: list[keras.callbacks.Callback] = (),
    jit_compile: bool | str = "auto",
    max_epochs: int | None = None,
    early_stopping: bool = True,
) -> TrainResult:
    """Train ``config`` on ``data.train``, score ``data.val`` every epoch, stop early on it.

    Weights are restored to the best validation epoch, so the returned model is the one
    the best value belongs to. Without ``early_stopping`` it trains exactly ``max_epochs``
    (default the config's) and keeps the last epoch's weights.
    """
    training = config.training
    model = _fresh_model(config, data, jit_compile=jit_compile, seed=config.seed)
    clock = _EpochClock()
    val_batch = max(training.batch_size, 256)
    cbs: list[keras.callbacks.Callback] = [_DataLoss(), _FailOnNaN(), clock]
    if training.metric == "val_auc":
        cbs.insert(0, _ValidationAUC(data.val, batch_size=val_batch))
    if training.patience and early_stopping:
        cbs.append(
            keras.callbacks.EarlyStopping(
                monitor=training.metric,
                patience=training.patience,
                mode="max" if direction == "maximize" else "min",
                restore_best_weights=True,
            )
        )
    cbs.extend(callbacks)
    weights = class_weights(data.train, data.n_classes) if training.class_weight == "balanced" else None
    validation = to_tf_dataset(data.val, batch_size=val_batch)
    _build_training_state(model, validation)
    try:
        history = model.fit(
            to_tf_dataset(data.train, batch_size=training.batch_size, shuffle_seed=config.seed, weights=weights),
            validation_data=validation,
            epochs=max_epochs or training.max_epochs,
            callbacks=cbs,
            shuffle=False,  # tf.data already shuffles, seeded
            verbose=0,
        )
    except MemoryError as e:
        raise TrialFailed("out of memory", f"host memory: {e}") from e
    except Exception as e:
        if type(e).__name__ == "ResourceExhaustedError":
            raise TrialFailed("out of memory", str(e).splitlines()[0][:200]) from e
        raise
    return TrainResult(model, history.history, training.metric, direction, clock.seconds)


def _build_training_state(model: keras.Model, examples) -> None:
    """Create the optimizer's slots and the compiled metrics' variables before ``fit``.

    Keras (without a distribution strategy) creates them inside the first trace of the train
    step, and TensorFlow then traces that step a second time: a whole trace per trial for
    nothing. Built here eagerly on one batch of ``examples`` (the validation split, unshuffled:
    an extra iterator of the shuffled training set would change its epoch order), the step is
    traced once. The variables start at zero either way, so training is the same to the bit.
    """
    x, y = next(iter(examples))[:2]
    model.optimizer.build(model.trainable_variables)
    model.compute_metrics(x, y, model(x, training=False), sample_weight=None)
    model.reset_metrics()


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold`` (1-based) of a cross-validated config: fold 1 keeps the trial's."""
    return seed if fold == 1 else trial_seed(seed, fold)


def train_other_folds(config: TrialConfig, data: SearchData, *, direction: str, epochs: int,
                      jit_compile: bool | str = "auto") -> list[TrainResult]:
    """``config`` on folds 2..K of ``data`` (``data.cv_folds``) for exactly ``epochs`` each, the
    epochs fold 1 ran: without early stopping, so every fold has a value at every epoch of
    fold 1's curve and ``cv_score`` can average them epoch by epoch."""
    return [train(config.model_copy(update={"seed": fold_seed(config.seed, k)}), fold, direction=direction,
                  jit_compile=jit_compile, max_epochs=epochs, early_stopping=False)
            for k, fold in enumerate(data.folds, 2)]


def train_every_fold(config: TrialConfig, data: SearchData, *, direction: str,
                     max_epochs: int | None = None) -> list[TrainResult]:
    """``config`` trained on fold 1 and, with ``data.cv_folds``, on every other fold, as a trial trains."""
    first = train(config, data, direction=direction, max_epochs=max_epochs)
    if not data.folds:
        return [first]
    return [first, *train_other_folds(config, data, direction=direction, epochs=len(first.curve))]


@dataclass(frozen=True)
class FoldScore:
    """A config's value over its folds: ``epoch`` (1-based), the folds' ``values`` there, their mean."""

    epoch: int
    values: tuple[float, ...]

    @property
    def value(self) -> float:
        return statistics.fmean(self.values)


def cv_score(results: list[TrainResult], direction: str) -> FoldScore:
    """The epoch where the folds' mean validation curve is best, as xgboost.cv and LightGBM's cv
    pick their number of rounds. Not each fold at its own best epoch: on folds of a hundred rows
    that picks each fold's luckiest epoch, and the search then favours the noisiest curves. One
    result (no folds) is scored at its best epoch."""
    if len(results) == 1:
        return FoldScore(results[0].best_epoch, (results[0].best_value,))
    horizon = min(len(r.curve) for r in results)
    means = [statistics.fmean(r.curve[e] for r in results) for e in range(horizon)]
    best = means.index((max if direction == "maximize" else min)(means))
    return FoldScore(best + 1, tuple(r.curve[best] for r in results))


def fold_models(config: TrialConfig, data: SearchData, *, epochs: int, direction: str) -> list[keras.Model]:
    """``config`` trained on every fold for exactly ``epochs`` (its ``cv_score`` epoch): the models
    a cross-validated config's final model averages, each as the search scored it."""
    splits = [data, *data.folds]
    return [train(config.model_copy(update={"seed": fold_seed(config.seed, k)}), fold, direction=direction,
                  max_epochs=epochs, early_stopping=False).model
            for k, fold in enumerate(splits, 1)]


def cross_validated(results: list[TrainResult], direction: str) -> dict[str, Any]:
    """The figures a cross-validated trial stores over fold 1's: every fold's value and the epoch
    they belong to (``best_epoch``), and the folds' mean validation loss there (the tie-breaker,
    as ``val_loss_at_best``)."""
    score = cv_score(results, direction)
    losses = [r.history.get("val_loss") or [] for r in results]
    return {
        "cv_values": [round(v, 6) for v in score.values],
        "best_epoch": score.epoch,
        "val_loss_at_best": (statistics.fmean(float(loss[score.epoch - 1]) for loss in losses)
                             if all(len(loss) >= score.epoch for loss in losses) else None),
    }


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
            self.trial.set_user_attr("curve", self.curve)


def count_params(config: TrialConfig, data: SearchData, *, jit_compile: bool | str = "auto") -> int:
    """The parameter count of ``config``'s network, built as ``train`` builds it, untrained."""
    return int(_fresh_model(config, data, jit_compile=jit_compile).count_params())


def _fresh_model(config: TrialConfig, data: SearchData, *, jit_compile: bool | str,
                 seed: int | None = None) -> keras.Model:
    """``config``'s compiled network in a cleared Keras session; weights drawn from ``seed`` if given."""
    keras.backend.clear_session()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return build_model(config.model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                       jit_compile=jit_compile)


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
        seed = trial.user_attrs.get("seed", trial_seed(self.spec.seed, trial.number))
        return trial_config(self.spec, values, seed=seed)

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", self._host)
        config = self.config_for(trial)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("seed", config.seed)
        trial.set_user_attr("threads", os.environ.get("TF_NUM_INTRAOP_THREADS"))
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
                trial.set_user_attr("fail_reason", "interrupted")
                raise
            trial.set_user_attr("fail_reason", "out of memory")
            trial.set_user_attr("fail_detail", f"worker resident memory {guard.peak_mb:.0f} MB > "
                                               f"runtime.max_worker_memory_mb {self.spec.runtime.max_worker_memory_mb}")
            raise TrialFailed("out of memory", f"resident memory {guard.peak_mb:.0f} MB") from None
        except TrialFailed as e:
            trial.set_user_attr("fail_reason", e.reason)
            trial.set_user_attr("fail_detail", str(e)[:300])
            raise
        except Exception as e:
            trial.set_user_attr("fail_reason", "exception")
            trial.set_user_attr("fail_detail", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            raise
        finally:
            trial.set_user_attr("peak_rss_mb", round(guard.peak_mb))
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
        trial.set_user_attr("n_params", n_params)
        if n_params <= max_params:
            return
        for key, value in violations({"max_params": max_params}, {"n_params": n_params}).items():
            trial.set_constraint(key, value)
        reason = f"{n_params:,} parameters > constraints.max_params {max_params:,}; not trained"
        trial.set_user_attr("infeasible", reason)
        trial.set_user_attr("epochs", 0)
        raise optuna.TrialPruned(reason)
