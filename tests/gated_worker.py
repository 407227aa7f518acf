"""``searcher worker`` whose trials stop after their third epoch until a gate file exists.

The outage test (test_distributed.py) needs trials that are running, by construction, when
it stops the database: each trial waits at the gate, the test stops the server, opens the
gate a little later (training goes on and ends during the outage), and starts the server
again. Usage: python gated_worker.py GATE_FILE worker ARGS...
"""

from __future__ import annotations

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


if __name__ == "__main__":
    objective.train = _gated_train(objective.train)
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    app()
