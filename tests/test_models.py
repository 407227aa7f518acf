"""The builder: tutorial networks have the tutorials' parameter counts; every knob trains."""

from __future__ import annotations

import math

import optuna
import pytest

from searcher.spec import ACTIVATIONS, INITIALIZERS, OPTIMIZERS, load_spec

keras = pytest.importorskip("keras")

from searcher.devices import TrainingRuntime  # noqa: E402
from searcher.data import Preprocessing, load_search_data  # noqa: E402
from searcher.models import build_model  # noqa: E402
from searcher.training import train  # noqa: E402
from searcher.space import baseline_params, suggest_values, trial_config  # noqa: E402


_FIXED_PARAMS = {"activation": "relu", "initializer": "he_normal", "optimizer": "adam", "lr": 0.01, "dropout": 0.0,
                 "use_l2": False, "batch_norm": False, "batch_size": 32}


def _baseline_config(study: str, name: str):
    spec = load_spec(study)
    baseline = next(b for b in spec.baselines if b.name == name)
    trial = optuna.trial.FixedTrial(baseline_params(spec, baseline.params))
    return trial_config(spec, suggest_values(trial, spec), seed=0)


def test_cifar_tutorial_cnn_has_356810_parameters():
    config = _baseline_config("cifar-cnn", "tutorial-base")
    model = build_model(config.model, preprocessing=Preprocessing.identity((32, 32, 3)), n_classes=10)
    assert model.count_params() == 356_810
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]


def test_mnist_tutorial_mlp_has_40480_parameters():
    config = _baseline_config("mnist-mlp", "tutorial-784-50-20-10")
    model = build_model(config.model, preprocessing=Preprocessing.identity((28, 28, 1)), n_classes=10)
    assert model.count_params() == 40_480
    assert [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)] == [50, 20, 10]


def test_batch_norm_and_l2_reach_every_block():
    config = _baseline_config("cifar-cnn", "tutorial-batchnorm")
    model = build_model(config.model, preprocessing=Preprocessing.identity((32, 32, 3)), n_classes=10)
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 4
    l2 = _baseline_config("cifar-cnn", "tutorial-l2")
    model = build_model(l2.model, preprocessing=Preprocessing.identity((32, 32, 3)), n_classes=10)
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    assert all(layer.kernel_regularizer is not None for layer in kernels)


def test_an_mlp_of_depth_0_is_logistic_regression():
    spec = load_spec("digits-mlp").model_copy(update={"search": load_spec("digits-mlp").search.model_copy(
        update={"depth": load_spec("digits-mlp").search.depth.model_copy(update={"low": 0})})})
    values = suggest_values(optuna.trial.FixedTrial({**_FIXED_PARAMS, "depth": 0}), spec)
    config = trial_config(spec, values, seed=0)
    model = build_model(config.model, preprocessing=Preprocessing.identity((8, 8, 1)), n_classes=10)
    assert config.model.hidden_units == () and model.count_params() == (64 + 1) * 10


def test_an_ensemble_is_one_model_averaging_its_members_and_survives_save_and_load(tmp_path):
    import keras
    import numpy as np

    from searcher.models import ensemble_model

    config = _baseline_config("digits-mlp", "tutorial-mlp-he")
    members = []
    for seed in (1, 2):  # each built in a fresh session, as train builds fold models
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        members.append(build_model(config.model, preprocessing=Preprocessing.identity((8, 8, 1)), n_classes=10))
    x = np.random.default_rng(0).uniform(0, 16, size=(5, 8, 8, 1)).astype("float32")
    expected = (members[0].predict(x, verbose=0) + members[1].predict(x, verbose=0)) / 2
    model = ensemble_model(members)
    assert model.count_params() == 2 * members[0].count_params()
    model.save(tmp_path / "e.keras")
    loaded = keras.models.load_model(tmp_path / "e.keras")
    assert np.allclose(loaded.predict(x, verbose=0), expected, atol=1e-6)
    assert not np.allclose(expected, members[0].predict(x, verbose=0), atol=1e-3)  # the members differ
    assert ensemble_model(members[:1]) is members[0]


def test_output_layer_stays_float32_for_mixed_precision():
    config = _baseline_config("digits-cnn", "small-cnn")
    model = build_model(config.model, preprocessing=Preprocessing.identity((8, 8, 1)), n_classes=10)
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"


@pytest.fixture(scope="module")
def digits():
    spec = load_spec("digits-mlp")
    return spec, load_search_data(spec.data, split_seed=0)


def _one_epoch(spec, digits_data, **knobs):
    values = {"activation": "relu", "initializer": "glorot_uniform", "optimizer": "adam", "learning_rate": 0.01,
              "dropout": 0.1, "l2": 1e-4, "batch_norm": True, "batch_size": 64, "depth": 1, "units": 16}
    values.update(knobs)
    trial = optuna.trial.FixedTrial(baseline_params(spec, values) | {"momentum": 0.9})
    config = trial_config(spec, suggest_values(trial, spec), seed=1)
    result = train(config, digits_data, direction="maximize", runtime=TrainingRuntime(), max_epochs=1)
    return result


@pytest.mark.slow  # one model per value
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_trains(digits, activation):
    spec, data = digits
    result = _one_epoch(spec, data, activation=activation)
    assert math.isfinite(result.history["loss"][0])
    assert 0.0 <= result.curve[0] <= 1.0


@pytest.mark.slow  # one model per value
@pytest.mark.parametrize("initializer", INITIALIZERS)
def test_every_initializer_trains(digits, initializer):
    spec, data = digits
    assert math.isfinite(_one_epoch(spec, data, initializer=initializer).history["loss"][0])


@pytest.mark.slow  # one model per value
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains(digits, optimizer):
    spec, data = digits
    result = _one_epoch(spec, data, optimizer=optimizer)
    assert math.isfinite(result.history["loss"][0])
    sgd = result.model.optimizer
    if optimizer in ("momentum", "nesterov"):
        assert float(sgd.momentum) == pytest.approx(0.9)
        assert bool(sgd.nesterov) is (optimizer == "nesterov")


def test_a_cnn_trains_on_digits():
    spec = load_spec("digits-cnn")
    data = load_search_data(spec.data, split_seed=0)
    config = _baseline_config("digits-cnn", "small-cnn")
    result = train(config, data, direction="maximize", runtime=TrainingRuntime(), max_epochs=2)
    assert len(result.curve) == 2 and result.curve[-1] > 0.5


def test_adam_knobs_are_sampled_only_for_adam_and_reach_the_optimizer():
    from searcher.spec import parse_spec

    spec = parse_spec({"name": "adam", "data": {"dataset": "digits"}, "model": {"kind": "mlp"}, "search": {
        "optimizer": {"choices": ["adamw", "sgd"]}, "beta_1": {"low": 0.8, "high": 0.95},
        "beta_2": {"low": 0.99, "high": 0.9999}, "epsilon": {"low": 1e-8, "high": 1e-5, "log": True}}},
        source="adam.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {}
    for _ in range(12):
        trial = study.ask()
        config = trial_config(spec, suggest_values(trial, spec), seed=0).model
        seen.setdefault(config.optimizer, (trial.params, config))
        study.tell(trial, 0.5)
    (adam_params, adam), (sgd_params, sgd) = seen["adamw"], seen["sgd"]
    assert {"beta_1", "beta_2", "epsilon"} <= set(adam_params)
    assert not {"beta_1", "beta_2", "epsilon"} & set(sgd_params)
    assert (sgd.beta_1, sgd.beta_2, sgd.epsilon) == (0.9, 0.999, 1e-7)  # Keras' defaults, unused by SGD
    optimizer = build_model(adam, preprocessing=Preprocessing.identity((64,)), n_classes=10).optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert (float(optimizer.beta_1), float(optimizer.beta_2), float(optimizer.epsilon)) == pytest.approx(
        (adam.beta_1, adam.beta_2, adam.epsilon))
    assert 0.8 <= adam.beta_1 <= 0.95 and 1e-8 <= adam.epsilon <= 1e-5


def test_a_trial_traces_its_train_step_once_and_trains_bit_for_bit_as_before(digits, monkeypatch):
    """Optimizer slots and compiled metrics are built before fit, so TensorFlow does not trace the
    train step a second time; without that build (Keras' lazy default) it does, with the same result."""
    import numpy as np
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    import searcher.training as training

    spec, data = digits
    traces = []
    step = TensorFlowTrainer.train_step
    monkeypatch.setattr(TensorFlowTrainer, "train_step", lambda self, batch: traces.append(1) or step(self, batch))
    trial = optuna.trial.FixedTrial({**_FIXED_PARAMS, "dropout": 0.2, "depth": 2, "units_0": 32, "units_1": 16})
    config = trial_config(spec, suggest_values(trial, spec), seed=3)

    def run():
        traces.clear()
        result = train(config, data, direction="maximize", runtime=TrainingRuntime(), max_epochs=2, early_stopping=False)
        return len(traces), result.history, np.concatenate([w.numpy().ravel() for w in result.model.weights])

    once, history, weights = run()
    monkeypatch.setattr(training, "_build_training_state", lambda model, examples: None)
    lazy, lazy_history, lazy_weights = run()
    assert (once, lazy) == (1, 2)
    assert history == lazy_history and np.array_equal(weights, lazy_weights)


def test_a_small_epoch_in_one_call_trains_the_same_numbers(digits, monkeypatch):
    from searcher import training

    spec, data = digits
    assert training.steps_per_call(len(data.train), 64) == math.ceil(len(data.train) / 64) > 1
    assert training.steps_per_call(60_000, 32) == 1  # a large epoch keeps one batch per call
    values = {"activation": "relu", "initializer": "glorot_uniform", "optimizer": "adam", "learning_rate": 0.01,
              "dropout": 0.1, "l2": 1e-4, "batch_norm": True, "batch_size": 64, "depth": 1, "units": 16}
    config = trial_config(spec, suggest_values(optuna.trial.FixedTrial(baseline_params(spec, values)), spec), seed=1)
    one_call = train(config, data, direction="maximize", runtime=TrainingRuntime(), max_epochs=2, early_stopping=False)
    assert one_call.model.steps_per_execution > 1
    monkeypatch.setattr(training, "steps_per_call", lambda rows, batch_size: 1)
    per_batch = train(config, data, direction="maximize", runtime=TrainingRuntime(), max_epochs=2, early_stopping=False)
    assert per_batch.model.steps_per_execution == 1
    for key in ("loss", "val_loss", "val_accuracy"):
        assert one_call.history[key] == pytest.approx(per_batch.history[key], rel=1e-4, abs=1e-6)
