"""One Optuna trial: a trial whose loss turns NaN fails with that reason, and the search goes on."""

from __future__ import annotations

import optuna

from searcher.data import load_search_data


def test_a_nan_loss_fails_the_trial_with_reason_nan_and_the_search_goes_on(tmp_path):
    """A learning rate of 1e12 blows SGD up in the first epoch; the next trial still completes."""
    from searcher.devices import TrainingRuntime
    from searcher.objective import Objective
    from searcher.training import TrialFailed
    from searcher.spec import parse_spec

    spec = parse_spec({"name": "nan", "data": {"dataset": "digits"}, "model": {"kind": "mlp"},
                       "search": {"optimizer": "sgd", "learning_rate": {"low": 1e-3, "high": 1e13, "log": True},
                                  "depth": 1, "units": [16]},
                       "training": {"max_epochs": 2, "patience": None}}, source="nan.yaml")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/nan.db", direction="maximize")
    for lr in (1e12, 0.01):
        study.enqueue_trial({"lr": lr})
    study.optimize(Objective(spec, load_search_data(spec.data, split_seed=0), runtime=TrainingRuntime()), n_trials=2, catch=(TrialFailed,))
    blown, fine = study.trials
    assert blown.state.name == "FAIL" and blown.user_attrs["fail_reason"] == "nan"
    assert blown.user_attrs["fail_detail"].startswith("nan: loss became ") and "in epoch 1" in blown.user_attrs["fail_detail"]
    assert fine.state.name == "COMPLETE" and fine.value > 0.1
