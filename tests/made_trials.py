"""Hand-made studies of complete trials with cost figures, for ranking, export and the trade-off view."""

from __future__ import annotations

import optuna
from optuna.trial import create_trial


def cost_study(rows, *, objectives=("val_accuracy",), constraints=None):
    """rows: (accuracy, n_params, latency_ms, over the limit?) per complete trial."""
    study = optuna.create_study(directions=["maximize"] + ["minimize"] * (len(objectives) - 1))
    study.set_metric_names(list(objectives))
    study.set_user_attr("spec", {"constraints": constraints or {}})
    for acc, n, ms, over in rows:
        values = [acc] + ([n] if len(objectives) > 1 else [])
        study.add_trial(create_trial(values=values, user_attrs={"n_params": n, "latency_ms_b1": ms, "config": {
            "training": {"metric": "val_accuracy"}}}, system_attrs={"constraints:max_params": 1.0 if over else -0.5}))
    return study


ROWS = [(0.980, 40_000, 0.5, False), (0.990, 90_000, 0.9, True), (0.977, 9_000, 0.3, False),
        (0.976, 3_000, 0.4, False), (0.960, 2_000, 0.2, False), (0.975, 12_000, 0.25, False)]
