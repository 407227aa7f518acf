"""``searcher worker`` whose trials stop after their third epoch until a gate file exists.

The outage test (test_distributed.py) needs trials that are running, by construction, when
it stops the database: each trial waits at the gate, the test stops the server, opens the
gate a little later (training goes on and ends during the outage), and starts the server
again. Usage: python gated_worker.py GATE_FILE worker ARGS...

With GATED_AT=end the gate is where the objective returns, after it has recorded everything
of its own: Optuna's tell comes next. Each trial then writes ``GATE_FILE.reached`` (its value,
as JSON) before it waits.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import searcher.objective as objective
from searcher.cli import app

GATE_EPOCH = 2  # 0-based: three epochs reported before the gate


def _gated_train(real_train):
    import keras

    gate = Path(sys.argv[1])

    class Gate(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            if epoch == GATE_EPOCH:
                while not gate.exists():
                    time.sleep(0.2)

    def train(*args, callbacks=(), **kwargs):
        return real_train(*args, callbacks=[*callbacks, Gate()], **kwargs)

    return train


def _gated_end(real_call):
    gate = Path(sys.argv[1])

    def call(self, trial):
        value = real_call(self, trial)
        gate.with_suffix(".reached").write_text(json.dumps(value))
        while not gate.exists():
            time.sleep(0.2)
        return value

    return call


if __name__ == "__main__":
    if os.environ.get("GATED_AT") == "end":
        objective.Objective.__call__ = _gated_end(objective.Objective.__call__)
    else:
        objective.train = _gated_train(objective.train)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    app()
