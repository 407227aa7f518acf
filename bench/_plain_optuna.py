"""Child of the profile section: the plain Optuna loop a Keras user writes, on the digits MLP space.

Usage: ``python bench/_plain_optuna.py OUT.json --epochs N --seed S``

No searcher: scikit-learn's digits split as searcher splits it (20 % test, then 20 % of the
rest for validation, stratified), divided by 16 once in numpy; an in-memory study with
Optuna's default TPE sampler (seeded), no pruner; per trial a ``keras.Sequential`` MLP
(``bench._plain_model``) sampled from the space of bench/spaces/digits-mlp-epoch.yaml
(7 activations, 4 initializers, 4 optimizers, log learning rate, dropout, L2, depth 1-3,
units 16-128, batch 32) and ``model.fit(epochs=1)`` 20 times, reporting validation accuracy
after each. Stops after the trial that reaches N epochs. Writes each trial's start and end
(``time.time()``) and epochs, so the parent divides the wall time from its own start.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

EPOCHS_PER_TRIAL = 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np
    import optuna
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from _plain_model import plain_model

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    digits = load_digits()
    x = (digits.images.reshape(len(digits.images), -1) / 16.0).astype("float32")
    x_rest, _, y_rest, _ = train_test_split(x, digits.target, test_size=0.2, random_state=20260101,
                                            stratify=digits.target)
    x_fit, x_val, y_fit, y_val = train_test_split(x_rest, y_rest, test_size=0.2, random_state=args.seed,
                                                  stratify=y_rest)

    def objective(trial: optuna.Trial) -> float:
        optimizer_name = trial.suggest_categorical("optimizer", ["sgd", "momentum", "rmsprop", "adam"])
        lr = trial.suggest_float("lr", 1e-4, 0.3, log=True)
        optimizer = {"sgd": lambda: keras.optimizers.SGD(lr), "momentum": lambda: keras.optimizers.SGD(lr, momentum=0.9),
                     "rmsprop": lambda: keras.optimizers.RMSprop(lr), "adam": lambda: keras.optimizers.Adam(lr)}[optimizer_name]()
        depth = trial.suggest_int("depth", 1, 3)
        model = plain_model(
            input_shape=(64,),
            hidden_units=tuple(trial.suggest_int(f"units_{i}", 16, 128, log=True) for i in range(depth)),
            activation=trial.suggest_categorical("activation", ["relu", "elu", "selu", "gelu", "swish", "tanh", "sigmoid"]),
            initializer=trial.suggest_categorical("initializer", ["glorot_uniform", "glorot_normal", "he_normal", "he_uniform"]),
            dropout=trial.suggest_float("dropout", 0.0, 0.5),
            l2=trial.suggest_float("l2", 1e-6, 1e-2, log=True),
            batch_norm=False, optimizer=optimizer, n_classes=10)
        best = -math.inf
        for epoch in range(EPOCHS_PER_TRIAL):
            history = model.fit(x_fit, y_fit, batch_size=32, epochs=1, validation_data=(x_val, y_val), verbose=0)
            accuracy = float(history.history["val_accuracy"][-1])
            trial.report(accuracy, epoch)
            best = max(best, accuracy)
        return best

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed))
    trials, epochs = [], 0
    while epochs < args.epochs:
        start = time.time()
        study.optimize(objective, n_trials=1)
        epochs += EPOCHS_PER_TRIAL
        trials.append({"start": start, "end": time.time(), "epochs": EPOCHS_PER_TRIAL, "value": study.trials[-1].value})
    Path(args.out).write_text(json.dumps({"trials": trials, "best": study.best_value,
                                          "x_fit": list(np.shape(x_fit))}))


if __name__ == "__main__":
    main()
