"""Child process of the overhead section: train the trials of a finished study again, twice.

1. the bare loop: what a Keras user writes for the same config (``bench._plain_model``: a
   ``keras.Sequential`` of the same layers on inputs preprocessed once in numpy, compiled with
   accuracy alone) + ``model.fit`` on those arrays for exactly the trial's stored epoch count,
   validation data given, no callbacks, no storage;
2. searcher's own ``training.train`` (the code a worker runs for a trial) for the same
   config and epoch cap, in process, without storage, sampler or pruner.

The two alternate trial by trial so that load from other processes hits both alike.
Usage: ``python -m bench._replay JOB.json OUT.json`` (the job lists number, config, epochs).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from searcher.devices import TrainingRuntime


def main(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    t0 = time.perf_counter()
    from searcher.devices import import_tensorflow

    import_tensorflow()  # TensorFlow is imported here, before anything is timed, without its start-up lines

    import searcher.training as training
    from bench._plain_model import plain_inputs
    from searcher.data import load_search_data
    from searcher.space import TrialConfig

    import_s = time.perf_counter() - t0
    configs = [TrialConfig.model_validate(t["config"]) for t in job["trials"]]
    t0 = time.perf_counter()
    data = load_search_data(configs[0].data, split_seed=configs[0].split_seed)
    data_s = time.perf_counter() - t0
    arrays = (plain_inputs(data.train.x, data.preprocessing), plain_inputs(data.val.x, data.preprocessing))

    build_clock = _BuildClock(training.build_model)
    training.build_model = build_clock  # time the build inside training.train, nothing else changes

    rows = []
    for i, (trial, config) in enumerate(zip(job["trials"], configs)):
        epochs = int(trial["epochs"])
        order = ("bare", "searcher") if i % 2 == 0 else ("searcher", "bare")
        row = {"number": trial["number"], "epochs": epochs}
        for which in order:
            if which == "bare":
                row.update(_bare(config, data, epochs, arrays))
            else:
                row.update(_searcher(config, data, epochs, training, build_clock, job["direction"]))
        rows.append(row)
    Path(out_path).write_text(json.dumps({"import_s": import_s, "data_s": data_s, "trials": rows}, indent=1))


def _bare(config, data, epochs: int, arrays) -> dict:
    from bench._plain_model import plain_model_of

    x_fit, x_val = arrays
    t0 = time.perf_counter()
    model = plain_model_of(config.model, input_shape=data.input_shape, n_classes=data.n_classes)
    t1 = time.perf_counter()
    model.fit(x_fit, data.train.y, batch_size=config.training.batch_size, epochs=epochs,
              validation_data=(x_val, data.val.y), verbose=0)
    t2 = time.perf_counter()
    return {"bare_build_s": t1 - t0, "bare_fit_s": t2 - t1, "bare_s": t2 - t0}


def _searcher(config, data, epochs: int, training, build_clock, direction: str) -> dict:
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._t)

    clock = EpochClock()
    build_clock.seconds = 0.0
    t0 = time.perf_counter()
    result = training.train(config, data, direction=direction, callbacks=[clock], runtime=TrainingRuntime(),
                             max_epochs=epochs)
    total = time.perf_counter() - t0
    later = clock.seconds[1:] or clock.seconds
    steady = statistics.median(later)
    return {
        "searcher_s": total,
        "searcher_build_s": build_clock.seconds,
        "searcher_epochs": len(result.curve),
        "searcher_epochs_s": sum(clock.seconds),
        "searcher_first_epoch_s": clock.seconds[0],
        "searcher_steady_epoch_s": steady,
    }


class _BuildClock:
    def __init__(self, build) -> None:
        self.build, self.seconds = build, 0.0

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.build(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


if __name__ == "__main__":
    main(*sys.argv[1:3])
