"""Study specs: every shipped spec validates, bad input names the field, round trips hold."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from searcher.errors import SpecError
from searcher.spec import SHIPPED_STUDIES, Choice, Fixed, Range, StudySpec, load_spec, parse_spec

SHIPPED = sorted(p.stem for p in SHIPPED_STUDIES.glob("*.yaml"))
MINIMAL = {
    "name": "t",
    "data": {"dataset": "digits"},
    "model": {"kind": "mlp"},
    "search": {"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}},
}


def test_the_shipped_studies_are_the_ones_the_readme_promises():
    assert set(SHIPPED) == {"cifar-cnn", "digits-cnn", "digits-mlp", "fashion-mnist-cnn", "mnist-cnn", "mnist-mlp"}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spec_validates_and_round_trips(name):
    spec = load_spec(name)
    assert spec.name == name
    again = StudySpec.model_validate(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.search_hash() == spec.search_hash()
    assert spec.baselines, "every shipped study starts from hand-tuned baselines"


def test_tutorial_baselines_are_inside_the_cifar_space():
    spec = load_spec("cifar-cnn")
    names = [b.name for b in spec.baselines]
    assert names == ["tutorial-base", "tutorial-dropout", "tutorial-l2", "tutorial-batchnorm"]
    assert spec.baselines[2].params["l2"] == 0.01


def test_knob_forms_parse_into_fixed_choice_and_range():
    spec = parse_spec(
        {**MINIMAL, "search": {"activation": "elu", "optimizer": {"choices": ["adam", "sgd"]},
                               "l2": {"low": 1e-5, "high": 1e-2, "log": True, "off": True}}},
        source="x.yaml",
    )
    assert spec.search.activation == Fixed(value="elu")
    assert spec.search.optimizer == Choice(choices=("adam", "sgd"))
    assert spec.search.l2 == Range(low=1e-5, high=1e-2, log=True, off=True)
    assert spec.search.searched() == ["optimizer", "l2"]


def test_search_hash_ignores_budget_but_not_the_space():
    base = parse_spec(MINIMAL, source="x")
    more_trials = parse_spec({**MINIMAL, "budget": {"n_trials": 99}}, source="x")
    other_space = parse_spec({**MINIMAL, "search": {"learning_rate": 0.01}}, source="x")
    assert base.search_hash() == more_trials.search_hash()
    assert base.search_hash() != other_space.search_hash()


def _with(path: str, value):
    raw = copy.deepcopy(MINIMAL)
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with("serch", {}), r"x\.yaml: serch: unknown field \(check the spelling\)"),
        (_with("training.max_epoch", 3), r"x\.yaml: training\.max_epoch: unknown field"),
        (_with("search.learning_rate", {"low": -0.1, "high": 0.1}), r"x\.yaml: search\.learning_rate\.low: must be > 0, got -0\.1"),
        (_with("search.learning_rate", {"low": 0.1, "high": 0.01}), r"search\.learning_rate\.low: must be <= high \(0\.01\), got 0\.1"),
        (_with("search.dropout", {"low": 0, "high": 0.5, "log": True}), r"search\.dropout\.low: must be > 0 with log: true, got 0"),
        (_with("search.activation", "relux"), r"search\.activation: must be one of relu, elu, .*; got 'relux'"),
        (_with("search.optimizer", {"choices": ["adam", "adamax"]}), r"search\.optimizer\.choices\[1\]: must be one of .*got 'adamax'"),
        (_with("search.batch_size", {"choices": [32, "64"]}), r"search\.batch_size\.choices\[1\]: must be a number, got '64'"),
        (_with("search.depth", 1.5), r"search\.depth: must be a whole number, got 1\.5"),
        (_with("search.dropout", {"low": 0, "high": 0.5, "off": True}), r"search\.dropout\.off: is only allowed for l2"),
        (_with("data.dataset", "imagenet"), r"x\.yaml: data\.dataset: input should be 'digits', .*got 'imagenet'"),
        (_with("training.max_epochs", "ten"), r"training\.max_epochs: input should be a valid integer.*got 'ten'"),
        (_with("training.direction", "minimize"), r"training\.direction: val_accuracy must be maximized, got minimize"),
        (_with("search.filters", 32), r"search\.filters: only applies to model kind cnn"),
        (_with("runtime.grace_period", 3), r"runtime\.grace_period: must be > heartbeat_interval \(5\), got 3"),
        (_with("baselines", [{"name": "b", "params": {"activaton": "relu"}}]), r"baselines\[0\]\.params\.activaton: unknown knob"),
        (_with("baselines", [{"name": "b", "params": {"learning_rate": 5.0}}]), r"baselines\[0\]\.params\.learning_rate: 5\.0 is outside search\.learning_rate"),
        (_with("baselines", [{"name": "b", "params": {"activation": "elu"}}]), r"baselines\[0\]\.params\.activation: search\.activation is fixed to 'relu'"),
        (_with("data.path", "x.npz"), r"data\.path: is only used with dataset npz, csv, images, not digits"),
        (_with("data", {"dataset": "csv", "path": "d.csv"}), r"x\.yaml: data\.target: is required for dataset csv"),
        (_with("data", {"dataset": "images"}), r"data\.path: is required for dataset images \(a folder with one "),
        (_with("data.target", "y"), r"data\.target: is only used with dataset csv, not digits"),
        (_with("data", {"dataset": "csv", "path": "d.csv", "target": "y", "test_path": "t.csv", "test_fraction": 0.1}),
         r"data\.test_fraction: cannot be combined with test_path"),
        (_with("data", {"dataset": "images", "path": "p", "image_size": [0, 32]}), r"data\.image_size: must be two sizes >= 1"),
        (_with("data", {"dataset": "csv", "path": "d.csv", "target": "y", "features": ["a"], "categorical": ["b"]}),
         r"data\.categorical: 'b' is not in data\.features"),
        (_with("data.preprocess", "normalise"), r"data\.preprocess: input should be 'auto', 'standardize', 'rescale' or 'none'"),
        (_with("data.missing", "mean"), r"data\.missing: mean imputation is for tables \(npz, csv\), not digits"),
        ({**_with("data", {"dataset": "csv", "path": "d.csv", "target": "y"}), "model": {"kind": "cnn"}},
         r"model\.kind: cnn needs images; dataset csv gives a table of features: use mlp"),
        ({**_with("search.depth", {"low": 0, "high": 2}), "model": {"kind": "cnn"}},
         r"search\.depth: a cnn needs at least 1 conv stage, got 0"),
        (_with("training.metric", "val_f1"), r"training\.metric: input should be 'val_accuracy', 'val_auc' or 'val_loss'"),
        (_with("training.class_weight", "auto"), r"training\.class_weight: input should be 'none' or 'balanced'"),
        (_with("search.beta_1", {"low": 0.0, "high": 0.9}), r"x\.yaml: search\.beta_1\.low: must be > 0, got 0\.0"),
        (_with("search.beta_2", 1.0), r"x\.yaml: search\.beta_2: must be < 1, got 1\.0"),
        (_with("search.epsilon", {"low": 0, "high": 1e-4, "log": True}), r"search\.epsilon\.low: must be > 0, got 0"),
        (_with("data.cv_folds", 1), r"x\.yaml: data\.cv_folds: input should be greater than or equal to 2, got 1"),
        (_with("data", {"dataset": "digits", "cv_folds": 5, "validation_fraction": 0.3}),
         r"data\.validation_fraction: is not used with cv_folds: each of the 5 folds validates on 1/5"),
        (_with("data.search_rows", 1), r"x\.yaml: data\.search_rows: input should be greater than or equal to 2, got 1"),
        (_with("data.search_rows", "half"), r"x\.yaml: data\.search_rows: input should be a valid integer"),
        (_with("data", {"dataset": "digits", "cv_folds": 5, "search_rows": 500}),
         r"x\.yaml: data\.search_rows: is not used with cv_folds: folds are for data too small to sample; drop one"),
    ],
)
def test_bad_input_names_file_and_field(raw, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_spec(raw, source="x.yaml")
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  dataset: digits\n model: [\n")
    with pytest.raises(SpecError, match=r"broken\.yaml: line \d+: not valid YAML"):
        load_spec(path)


def test_unknown_study_lists_the_shipped_ones():
    with pytest.raises(SpecError, match=r"digits-mpl: no such study \(shipped studies: cifar-cnn, digits-cnn, digits-mlp"):
        load_spec("digits-mpl")


def test_a_study_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.yaml").write_text(yaml.safe_dump(MINIMAL | {"name": "mine"}))
    monkeypatch.chdir(tmp_path)
    assert load_spec("mine").name == "mine"


def test_split_seed_defaults_to_the_study_seed_and_reaches_the_trial_config():
    from optuna.trial import FixedTrial

    from searcher.space import suggest_values, trial_config

    spec = parse_spec({**MINIMAL, "seed": 3}, source="t.yaml")
    assert spec.data.split_seed is None and spec.split_seed == 3
    fixed = parse_spec({**MINIMAL, "seed": 3, "data": {"dataset": "digits", "split_seed": 0}}, source="t.yaml")
    assert fixed.split_seed == 0
    config = trial_config(fixed, suggest_values(FixedTrial({"lr": 0.01}), fixed), seed=7)
    assert (config.seed, config.split_seed) == (7, 0)
    with pytest.raises(SpecError, match=r"^t.yaml: data.split_seed: input should be greater than or equal to 0, got -1$"):
        parse_spec({**MINIMAL, "data": {"dataset": "digits", "split_seed": -1}}, source="t.yaml")


def test_studies_stored_by_the_first_release_keep_their_hash():
    # Hashes of the shipped specs as the first release computed them (commit ba50b77): new spec
    # fields at their defaults must not change them, or stored studies would refuse their workers.
    assert {name: load_spec(name).search_hash() for name in ("digits-mlp", "digits-cnn", "cifar-cnn", "mnist-mlp")} == {
        "digits-mlp": "a792e1303f973b58", "digits-cnn": "0bcc9e662f914453",
        "cifar-cnn": "3bfa655488f444d5", "mnist-mlp": "b69887db1cd316c8"}
    changed = parse_spec({**MINIMAL, "data": {"dataset": "digits", "preprocess": "none"}}, source="x")
    assert changed.search_hash() != parse_spec(MINIMAL, source="x").search_hash()
