"""Child of section 2: bare TensorFlow trials of the scaling config, to measure this machine's ceiling.

Usage: ``python -m bench._bare_trials SPEC.yaml OUT.json --trials N --barrier DIR``

Loads the data once, then N times builds the spec's fixed network and runs ``model.fit`` for
its ``training.max_epochs`` on the same tf.data input a trial uses: no storage, sampler or
worker. Writes each trial's wall-clock start and end, so runs in parallel processes can be
merged into one window: after loading, each process writes ``DIR/ready-<pid>`` and waits for
``DIR/go``, so processes run side by side, not staggered by their start-up. Thread settings
come from the environment, as a worker's do.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("out")
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--barrier", type=Path, required=True)
    args = parser.parse_args()

    from searcher.devices import RuntimeOptions, WorkerPlacement, configure_tensorflow

    import os

    line = configure_tensorflow(WorkerPlacement.from_env(0, os.environ), RuntimeOptions())  # as a worker does
    import keras
    import optuna

    from searcher.data import load_search_data, to_tf_dataset
    from searcher.models import build_model
    from searcher.space import suggest_values, trial_config
    from searcher.spec import load_spec

    spec = load_spec(args.spec)
    config = trial_config(spec, suggest_values(optuna.trial.FixedTrial({}), spec), seed=0)
    data = load_search_data(spec.data, split_seed=spec.split_seed)
    (args.barrier / f"ready-{os.getpid()}").touch()
    while not (args.barrier / "go").exists():
        time.sleep(0.01)
    trials = []
    for i in range(args.trials):
        start = time.time()
        keras.backend.clear_session()
        model = build_model(config.model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                            jit_compile=False)
        model.fit(to_tf_dataset(data.train, batch_size=config.training.batch_size, shuffle_seed=i),
                  validation_data=to_tf_dataset(data.val, batch_size=256), epochs=config.training.max_epochs,
                  verbose=0)
        trials.append([start, time.time()])
    Path(args.out).write_text(json.dumps({"trials": trials, "threads": line.rsplit(", ", 1)[-1]}))


if __name__ == "__main__":
    main()
