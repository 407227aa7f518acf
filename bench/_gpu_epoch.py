"""Child process of the GPU section: a bare Keras loop over one spec's tutorial network.

``build_model`` + ``model.fit`` on the ``load_search_data`` arrays for the spec's fixed
knob values, with the spec's
``runtime.mixed_precision`` (global mixed_float16 policy) and ``runtime.xla``
(``jit_compile=True``); prints nothing, writes the median epoch time.

Usage: ``python -m bench._gpu_epoch SPEC.yaml OUT.json``
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def main(spec_path: str, out_path: str) -> None:
    from searcher.devices import import_tensorflow

    import_tensorflow()  # before Keras: without TensorFlow's C++ start-up lines
    import keras
    import optuna

    from searcher.data import load_search_data
    from searcher.models import build_model
    from searcher.space import suggest_values, trial_config
    from searcher.spec import load_spec

    spec = load_spec(spec_path)
    if spec.runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    data = load_search_data(spec.data, split_seed=spec.split_seed)
    # Every knob is fixed in the bench's spec: the values a searcher trial of it would train.
    config = trial_config(spec, suggest_values(optuna.trial.FixedTrial({}), spec), seed=0)
    model = build_model(config.model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                        jit_compile=bool(spec.runtime.xla))

    class Clock(keras.callbacks.Callback):
        seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    clock = Clock()
    model.fit(data.train.x, data.train.y, batch_size=config.training.batch_size, epochs=spec.training.max_epochs,
              validation_data=(data.val.x, data.val.y), callbacks=[clock], verbose=0)
    Path(out_path).write_text(json.dumps({
        "sec_per_epoch": statistics.median(clock.seconds),
        "epoch_seconds": clock.seconds,
        "precision": keras.mixed_precision.global_policy().name,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
