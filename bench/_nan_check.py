"""Child of section 7: what a NaN check costs per epoch, in a fresh process.

Usage: ``python -m bench._nan_check OUT.json --epochs E --repeats R --batch-sizes 32,128``

Trains the digits tutorial MLP (50-20, SGD) with ``model.fit`` on searcher's tf.data input,
as a trial does, three ways: no NaN check; a check in ``on_train_batch_end`` (which makes
Keras hand each batch's logs back to Python); searcher's check (``training._FailOnNaN``).
The variants alternate within each repeat, so load from other processes hits them alike.
Seconds per epoch are the median over the epochs after the first (the first one traces).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True)
    args = parser.parse_args()

    from searcher.devices import import_tensorflow

    import_tensorflow()
    import keras
    import optuna

    from searcher import training
    from searcher.data import load_search_data, to_tf_dataset
    from searcher.models import build_model
    from searcher.space import suggest_values, trial_config
    from searcher.spec import parse_spec

    class PerBatch(keras.callbacks.Callback):
        """The check searcher had before: a float() of every batch's loss."""

        def on_train_batch_end(self, batch, logs=None):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                raise RuntimeError("nan")

    variants = {"none": list, "per_batch": lambda: [PerBatch()], "searcher": lambda: [training._FailOnNaN()]}
    rows = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        spec = parse_spec({"name": "nan-check", "data": {"dataset": "digits"}, "model": {"kind": "mlp"},
                           "search": {"optimizer": "sgd", "learning_rate": 0.01, "depth": 2, "units": [50, 20],
                                      "batch_size": batch_size}}, source="nan-check")
        config = trial_config(spec, suggest_values(optuna.trial.FixedTrial({}), spec), seed=0)
        data = load_search_data(spec.data, split_seed=0)
        steps = math.ceil(len(data.train) / batch_size)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            names = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in names:
                keras.backend.clear_session()
                keras.utils.set_random_seed(0)
                model = build_model(config.model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                                    jit_compile=False)
                clock = training._EpochClock()  # searcher's own per-epoch timer
                model.fit(to_tf_dataset(data.train, batch_size=batch_size, shuffle_seed=0), epochs=args.epochs,
                          callbacks=[*variants[name](), clock], verbose=0, shuffle=False)
                seconds[name].append(statistics.median(clock.seconds[1:] or clock.seconds))
        rows.append({"batch_size": batch_size, "steps_per_epoch": steps,
                     **{f"{name}_s": statistics.median(v) for name, v in seconds.items()},
                     "runs_s": seconds})
    Path(args.out).write_text(json.dumps({"rows": rows, "epochs": args.epochs, "repeats": args.repeats}, indent=1))


if __name__ == "__main__":
    main()
