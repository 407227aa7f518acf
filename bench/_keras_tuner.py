"""Child process of the quality section: KerasTuner's Hyperband over a searcher spec's space.

The search space is the spec's own: ``searcher.space.suggest_values`` is called with an
adapter that turns each ``suggest_*`` into the matching KerasTuner hyperparameter (same
names, ranges, log scales), and the network is ``searcher.models.build_model`` of the
resulting ``ModelConfig``, trained on the same splits with the same input pipeline and
early stopping. Epochs are counted as they are trained.

Usage: ``python -m bench._keras_tuner SPEC.yaml --seed S --max-epochs M --dir DIR --out OUT.json``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


class HyperParameterTrial:
    """``searcher.space.Trial`` on KerasTuner's ``HyperParameters``: suggest_* -> hp.*."""

    def __init__(self, hp) -> None:
        self.hp = hp

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if sorted(choices, key=str) == [False, True]:
            return self.hp.Boolean(name)
        return self.hp.Choice(name, list(choices))

    def suggest_float(self, name: str, low: float, high: float, *, step: Any = None, log: bool = False) -> float:
        return self.hp.Float(name, low, high, step=step, sampling="log" if log else "linear")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        # With log sampling KerasTuner reads `step` as a factor, so a log range gets none.
        return self.hp.Int(name, low, high, step=None if log else step, sampling="log" if log else "linear")


class _EpochCounter:
    """Counts every epoch trained; KerasTuner deep-copies callbacks per trial, so copies are self."""

    def __init__(self) -> None:
        import keras

        class Counter(keras.callbacks.Callback):
            def __init__(inner) -> None:
                super().__init__()
                inner.epochs = 0

            def on_epoch_end(inner, epoch, logs=None) -> None:
                inner.epochs += 1

            def __deepcopy__(inner, memo):
                return inner

        self.callback = Counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max-epochs", type=int, required=True)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from searcher.devices import import_tensorflow

    import_tensorflow()  # before Keras: without TensorFlow's C++ start-up lines
    import keras
    import keras_tuner as kt

    from searcher.data import load_search_data, to_tf_dataset
    from searcher.models import build_model
    from searcher.space import suggest_values, trial_config
    from searcher.spec import load_spec

    spec = load_spec(args.spec).model_copy(update={"seed": args.seed})  # as `launch --seed` does
    data = load_search_data(spec.data, split_seed=spec.split_seed)

    def config_of(hp):
        return trial_config(spec, suggest_values(HyperParameterTrial(hp), spec), seed=args.seed)

    class SearcherHyperModel(kt.HyperModel):
        def build(self, hp):
            return build_model(config_of(hp).model, preprocessing=data.preprocessing, n_classes=data.n_classes,
                               jit_compile=False)

        def fit(self, hp, model, *fit_args, **kwargs):
            kwargs.pop("verbose", None)
            batch = config_of(hp).training.batch_size
            return model.fit(to_tf_dataset(data.train, batch_size=batch, shuffle_seed=args.seed),
                             validation_data=to_tf_dataset(data.val, batch_size=max(batch, 256)),
                             shuffle=False, verbose=0, **kwargs)

    counter = _EpochCounter().callback
    tuner = kt.Hyperband(
        SearcherHyperModel(),
        objective=kt.Objective(spec.training.metric, direction=spec.training.direction[:3]),
        max_epochs=args.max_epochs,
        factor=args.factor,
        hyperband_iterations=1,
        seed=args.seed,
        directory=args.dir,
        project_name="hyperband",
        overwrite=True,
    )
    started = time.perf_counter()
    callbacks = [counter]
    if spec.training.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=spec.training.metric, patience=spec.training.patience,
                                                       mode=spec.training.direction[:3]))
    tuner.search(callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - started
    best = tuner.oracle.get_best_trials(1)[0]
    Path(args.out).write_text(json.dumps({
        "epochs": counter.epochs,
        "trials": len(tuner.oracle.trials),
        "best_value": float(best.score),
        "best_trial": best.trial_id,
        "config": config_of(best.hyperparameters).to_dict(),
        "seconds": round(seconds, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
