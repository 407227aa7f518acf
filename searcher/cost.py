"""What a trained model costs to ship: size on disk and inference latency, measured where it ran.

``measure_cost`` is the one measurement; the search stores its figures on every trial and
``retrain`` writes them next to the test score. Latency is the median of several timed
``predict_on_batch`` calls after a warm-up, per example, at batch 1 and at ``LARGE_BATCH``,
on the device the model lives on (the worker's GPU, else its CPU threads).

The figures' names are stored data (user attrs): ``searcher.stored`` holds them.
This module imports no TensorFlow at import time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from searcher.stored import COST_SECONDS, LATENCY_B1, LATENCY_LARGE, MODEL_BYTES

if TYPE_CHECKING:
    from searcher.data import Split

LARGE_BATCH = 256  # stored.LATENCY_LARGE is named after it
LATENCY_REPEATS = 15  # timed calls per batch size, the median kept: a shared CPU stalls some calls
MIN_REPEATS, TIMING_BUDGET_S = 5, 0.5  # a slow model stops after 5 calls once 0.5 s went into timing
WARMUP_CALLS = 2  # the first call traces the predict function: never timed



def measure_cost(model: Any, examples: Split) -> dict[str, float | int]:
    """Model file size and per-example latency of ``model`` on batches of real ``examples``
    (the validation split): arrays as one tensor, a table's columns through ``to_tf_dataset``.

    Returns ``model_bytes`` (the saved ``.keras`` file, optimizer state included, as
    ``retrain`` writes it), ``latency_ms_b1`` and ``latency_ms_b256`` (milliseconds per
    example), and ``cost_seconds`` (the time this measurement took).
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="searcher-cost-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        size = path.stat().st_size
    figures: dict[str, float | int] = {MODEL_BYTES: int(size), **measure_latency(model.predict_on_batch, examples)}
    figures[COST_SECONDS] = round(time.perf_counter() - started, 3)
    return figures


def measure_latency(predict: Callable[[Any], Any], examples: Split, *,
                    as_numpy: bool = False) -> dict[str, float]:
    """``latency_ms_b1`` and ``latency_ms_b256`` of ``predict`` (any callable on a batch of model
    inputs that returns the result on the host): a Keras model's ``predict_on_batch``, a
    SavedModel's ``serve`` or a TFLite signature runner (``as_numpy``: inputs as numpy arrays)."""
    figures = {}
    for name, size in ((LATENCY_B1, 1), (LATENCY_LARGE, LARGE_BATCH)):
        batch = _batch(examples, size)
        if as_numpy:
            batch = {k: v.numpy() for k, v in batch.items()} if isinstance(batch, dict) else batch.numpy()
        figures[name] = float(f"{_latency_ms(predict, batch) / size:.4g}")
    return figures


def _batch(examples: Split, size: int) -> Any:
    """``size`` real examples (repeated when there are fewer) as model inputs."""
    from searcher.data import to_tf_dataset

    rows = examples.take(np.resize(np.arange(len(examples)), size))
    if not isinstance(rows.x, dict):
        import tensorflow as tf

        # One tensor, converted once: the timed calls measure the model, not numpy -> tensor copies
        # (and a tf.data pipeline, as tables need, costs more to build than all the timed calls).
        return tf.convert_to_tensor(np.asarray(rows.x))
    return next(iter(to_tf_dataset(rows, batch_size=size)))[0]


def _latency_ms(predict: Callable[[Any], Any], batch: Any) -> float:
    for _ in range(WARMUP_CALLS):
        predict(batch)
    times: list[float] = []
    while len(times) < LATENCY_REPEATS and (len(times) < MIN_REPEATS or sum(times) < TIMING_BUDGET_S):
        t0 = time.perf_counter()
        predict(batch)  # returns host values: the work is done
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0
