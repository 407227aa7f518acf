"""Training as a library: one loop (``train``), its callbacks, folds and cross-validated scores.

``train`` is the single training loop; the search, ``retrain``, ``replay``, ``confirm`` and
``init`` all call it, with one ``TrainingRuntime`` (XLA, precision, threads), so they train the
same way. With ``data.cv_folds`` a config trains fold 1
as any trial (reported each epoch, prunable, stopped early), then the other folds for as many
epochs; its value is the best epoch of the folds' mean curve (``cv_score``).
Imports TensorFlow: worker processes only.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from searcher import stored
from searcher.data import SearchData, Split, class_weights, to_tf_dataset
from searcher.devices import TrainingRuntime
from searcher.models import build_model
from searcher.space import TrialConfig

class TrialFailed(Exception):
    """The trial cannot produce a score (NaN loss, out of memory); the search goes on.

    ``reason`` is stored on the trial as ``fail_reason`` so ``status`` can count it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


_ONE_CALL_STEPS = 32  # epochs of at most this many batches run in one call (steps_per_call)


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
            stored.N_PARAMS: int(self.model.count_params()),
            stored.EPOCHS: len(self.curve),
            stored.BEST_EPOCH: self.best_epoch,
            stored.VAL_LOSS_AT_BEST: float(losses[self.best_epoch - 1]) if len(losses) >= self.best_epoch else None,
            stored.SEC_PER_EPOCH: round(statistics.median(self.epoch_seconds), 4),
            stored.TRAIN_SECONDS: round(sum(self.epoch_seconds), 3),
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
    runtime: TrainingRuntime,
    callbacks: list[keras.callbacks.Callback] = (),
    max_epochs: int | None = None,
    early_stopping: bool = True,
) -> TrainResult:
    """Train ``config`` on ``data.train``, score ``data.val`` every epoch, stop early on it.

    Weights are restored to the best validation epoch, so the returned model is the one
    the best value belongs to. Without ``early_stopping`` it trains exactly ``max_epochs``
    (default the config's) and keeps the last epoch's weights.
    """
    training = config.training
    model = _fresh_model(config, data, runtime=runtime, seed=config.seed)
    model.steps_per_execution = steps_per_call(len(data.train), training.batch_size)
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


def steps_per_call(rows: int, batch_size: int) -> int:
    """Batches per call of Keras's compiled train function: a small data set's whole epoch in one
    call, so Python returns once per epoch, not once per batch. The same batches in the same
    order, and every callback here works per epoch, so the numbers do not change."""
    steps = math.ceil(rows / batch_size)
    return steps if steps <= _ONE_CALL_STEPS else 1


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold`` (1-based) of a cross-validated config: fold 1 keeps the trial's."""
    return seed if fold == 1 else trial_seed(seed, fold)


def train_other_folds(config: TrialConfig, data: SearchData, *, direction: str, epochs: int,
                      runtime: TrainingRuntime,
                      callbacks: Callable[[int], list[keras.callbacks.Callback]] | None = None) -> list[TrainResult]:
    """``config`` on folds 2..K of ``data`` (``data.cv_folds``) for exactly ``epochs`` each, the
    epochs fold 1 ran: without early stopping, so every fold has a value at every epoch of
    fold 1's curve and ``cv_score`` can average them epoch by epoch. ``callbacks(k)``: fold k's."""
    return [train(config.model_copy(update={"seed": fold_seed(config.seed, k)}), fold, direction=direction,
                  runtime=runtime, max_epochs=epochs, early_stopping=False, callbacks=callbacks(k) if callbacks else ())
            for k, fold in enumerate(data.folds, 2)]


def train_every_fold(config: TrialConfig, data: SearchData, *, direction: str, runtime: TrainingRuntime,
                     max_epochs: int | None = None) -> list[TrainResult]:
    """``config`` trained on fold 1 and, with ``data.cv_folds``, on every other fold, as a trial trains."""
    first = train(config, data, direction=direction, runtime=runtime, max_epochs=max_epochs)
    if not data.folds:
        return [first]
    return [first, *train_other_folds(config, data, direction=direction, epochs=len(first.curve), runtime=runtime)]


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


def fold_models(config: TrialConfig, data: SearchData, *, epochs: int, direction: str,
                runtime: TrainingRuntime) -> list[keras.Model]:
    """``config`` trained on every fold for exactly ``epochs`` (its ``cv_score`` epoch): the models
    a cross-validated config's final model averages, each as the search scored it."""
    splits = [data, *data.folds]
    return [train(config.model_copy(update={"seed": fold_seed(config.seed, k)}), fold, direction=direction,
                  runtime=runtime, max_epochs=epochs, early_stopping=False).model
            for k, fold in enumerate(splits, 1)]


def cross_validated(results: list[TrainResult], direction: str) -> dict[str, Any]:
    """The figures a cross-validated trial stores over fold 1's: every fold's value and the epoch
    they belong to (``best_epoch``), and the folds' mean validation loss there (the tie-breaker,
    as ``val_loss_at_best``)."""
    score = cv_score(results, direction)
    losses = [r.history.get("val_loss") or [] for r in results]
    return {
        stored.CV_VALUES: [round(v, 6) for v in score.values],
        stored.BEST_EPOCH: score.epoch,
        stored.VAL_LOSS_AT_BEST: (statistics.fmean(float(loss[score.epoch - 1]) for loss in losses)
                             if all(len(loss) >= score.epoch for loss in losses) else None),
    }


def count_params(config: TrialConfig, data: SearchData, *, runtime: TrainingRuntime) -> int:
    """The parameter count of ``config``'s network, built as ``train`` builds it, untrained."""
    return int(_fresh_model(config, data, runtime=runtime).count_params())


def _fresh_model(config: TrialConfig, data: SearchData, *, runtime: TrainingRuntime,
                 seed: int | None = None) -> keras.Model:
    """``config``'s compiled network in a cleared Keras session; weights drawn from ``seed`` if given."""
    keras.backend.clear_session()
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return build_model(config.model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                       jit_compile=runtime.xla)
