"""Training: what a trial's value is when it is cross-validated."""

from __future__ import annotations

import numpy as np
import pytest


def test_a_cross_validated_value_is_the_best_epoch_of_the_folds_mean_curve():
    from searcher.training import TrainResult, cv_score

    def fold(*curve: float) -> TrainResult:
        return TrainResult(model=None, history={"val_loss": list(curve)}, metric="val_loss", direction="minimize")

    # Each fold's own best (0.10 at epoch 1, 0.12 at epoch 3) averages to 0.11, a curve no single
    # epoch reaches; the folds' mean curve is 0.25, 0.20, 0.26: epoch 2, value 0.20.
    folds = [fold(0.10, 0.20, 0.40), fold(0.40, 0.20, 0.12)]
    score = cv_score(folds, "minimize")
    assert (score.epoch, score.values) == (2, (0.20, 0.20)) and score.value == pytest.approx(0.20)
    assert score.value > np.mean([f.best_value for f in folds])  # less optimistic than per-fold bests
    longer = [fold(0.3, 0.2, 0.1), fold(0.3, 0.25)]  # a shorter curve bounds the epochs compared
    assert cv_score(longer, "minimize").epoch == 2
    accuracy = [TrainResult(None, {"val_accuracy": [0.8, 0.9]}, "val_accuracy", "maximize")]
    assert (cv_score(accuracy, "maximize").epoch, cv_score(accuracy, "maximize").value) == (2, 0.9)
