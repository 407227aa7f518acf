"""What ``retrain`` ships, and its latency measured on the shipped files themselves.

The ``.keras`` file is built from Keras's own layers and ops only, so it loads with
``keras.models.load_model`` where searcher is not installed. ``retrain --serve DIR`` also
writes a TensorFlow SavedModel (``model.export``) whose ``serve`` function takes the raw
inputs (a table: one tensor per column, strings for categorical columns), and, where
TensorFlow Lite converts it with its built-in ops, ``DIR/model.tflite``.

Latency is timed on the files loaded back, not on the model in memory: that is what a
server runs.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from searcher.cost import measure_latency

log = logging.getLogger(__name__)
TFLITE_NAME = "model.tflite"


def keras_latency(model_path: Path, examples: Any) -> dict[str, Any]:
    """Latency of the saved ``.keras`` file, loaded back as a user would load it."""
    import keras

    loaded = keras.models.load_model(model_path, compile=False)
    return {**measure_latency(loaded.predict_on_batch, examples), "latency_of": f"{model_path.name}, loaded back"}


def write_serving(model: Any, folder: Path, examples: Any) -> dict[str, Any]:
    """Write the SavedModel (and ``model.tflite`` if it converts) into ``folder``; their latency."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    model.export(str(folder), verbose=False)
    served = tf.saved_model.load(str(folder))
    figures: dict[str, Any] = {"saved_model": str(folder),
                               "saved_model_latency": measure_latency(lambda b: served.serve(b).numpy(), examples)}
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    try:
        flat = converter.convert()
    except Exception as e:  # the converter raises ConverterError, ValueError and others for ops it lacks
        reason = re.sub(r"\s+", " ", str(e))[:200]
        log.info("no TensorFlow Lite file: %s", reason)
        figures["tflite"] = None
        figures["tflite_skipped"] = reason
        return figures
    path = folder / TFLITE_NAME
    path.write_bytes(flat)
    runner = _tflite_runner(flat)
    figures["tflite"] = str(path)
    figures["tflite_bytes"] = len(flat)
    figures["tflite_latency"] = measure_latency(lambda b: runner(**_named(b)), examples, as_numpy=True)
    return figures


def _tflite_runner(flat: bytes):
    import warnings

    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter announces its move to another package
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=flat)
    return interpreter.get_signature_runner()


def _named(batch: Any) -> dict[str, Any]:
    return batch if isinstance(batch, dict) else {"inputs": batch}
