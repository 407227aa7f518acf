"""searcher export: which trial, said in the header; export -> retrain on a real search (the session's
``digits_search``, slow), the test split scored once."""

from __future__ import annotations

import json

import pytest
import yaml

from cli_process import run_searcher
from made_trials import ROWS, cost_study
from searcher import ranking
from searcher.errors import UserError
from searcher.export import export_config, write_export


@pytest.mark.slow
def test_export_then_retrain_round_trip(digits_search, tmp_path):
    study = digits_search.study()
    best = ranking.ranked(study)[0]
    run_searcher("export", "digits-mlp", "--storage", digits_search.url, "-o", str(tmp_path / "best.yaml"),
                 cwd=tmp_path, check=True)
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["source"]["trial"] == best.number
    assert exported["source"]["value"] == pytest.approx(best.value)
    assert exported["config"] == best.user_attrs["config"], "the export is exactly the trial's config"
    assert (tmp_path / "best.yaml").read_text().startswith("# searcher export: study digits-mlp, trial")

    out = run_searcher("retrain", str(tmp_path / "best.yaml"), "-o", str(tmp_path / "model.keras"), cwd=tmp_path,
                       check=True)
    assert "test accuracy" in out.stdout
    metrics = json.loads((tmp_path / "model.metrics.json").read_text())
    assert 0.85 < metrics["test_accuracy"] <= 1.0
    assert metrics["test_examples"] == 360
    assert metrics["n_params"] == best.user_attrs["n_params"]
    assert metrics["source"]["trial"] == best.number
    assert "cost here: " in out.stdout
    assert metrics["model_bytes"] > 4 * metrics["n_params"] and metrics["latency_ms_b256"] > 0
    assert exported["source"]["cost"]["n_params"] == best.user_attrs["n_params"]
    assert exported["source"]["cost"]["latency_ms"] == best.user_attrs["latency_ms_b1"]

    import keras

    from searcher.data import load_search_data, load_test_split
    from searcher.models import build_model
    from searcher.space import TrialConfig

    model = keras.models.load_model(tmp_path / "model.keras")
    config = TrialConfig.model_validate(best.user_attrs["config"])
    preprocessing = load_search_data(config.data, split_seed=config.split_seed).preprocessing
    fresh = build_model(config.model, preprocessing=preprocessing, n_classes=10)
    assert [type(layer).__name__ for layer in model.layers] == [type(layer).__name__ for layer in fresh.layers]
    assert model.count_params() == fresh.count_params() == best.user_attrs["n_params"]
    test = load_test_split(config.data)
    assert test.x.max() == 16.0, "the test split is raw: the model rescales it itself"
    predictions = model.predict(test.x, verbose=0)
    assert predictions.shape == (360, 10)
    accuracy = float((predictions.argmax(axis=1) == test.y).mean())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_export_rank_and_json(digits_search, tmp_path):
    study = digits_search.study()
    # Ties in accuracy (common on 288 validation rows) break by the lower validation loss.
    complete = sorted((t for t in study.get_trials() if t.state.name == "COMPLETE"),
                      key=lambda t: (-t.value, t.user_attrs["val_loss_at_best"], t.number))
    out = run_searcher("export", "digits-mlp", "--rank", "2", "--format", "json", "--storage", digits_search.url,
                       cwd=tmp_path, check=True)
    document = json.loads(out.stdout)
    assert document["source"]["trial"] == complete[1].number
    assert document["source"]["picked"] == "rank 2 by validation value"


def test_export_header_says_how_the_trial_was_picked(tmp_path):
    document = export_config(cost_study(ROWS), pick=ranking.PickByCost(smallest_within=0.5))
    assert document["source"]["trial"] == 3
    text = write_export(document, tmp_path / "small.yaml", fmt="yaml")
    assert text.startswith("# searcher export: study no-name-")
    assert "(smallest (3,000 parameters) within 0.5 points of the best val_accuracy 0.9800 (trial 0))" in \
        text.splitlines()[0]
    plain = export_config(cost_study(ROWS))
    assert (plain["source"]["trial"], plain["source"]["picked"]) == (0, "best feasible validation value")
    two = export_config(cost_study(ROWS, objectives=("val_accuracy", "n_params")))
    assert two["source"]["picked"] == ("best feasible val_accuracy on the Pareto front "
                                       "(val_accuracy (maximize), n_params (minimize))")
    with pytest.raises(UserError, match=r"^--rank cannot be combined with --smallest-within"):
        export_config(cost_study(ROWS), rank=1, pick=ranking.PickByCost(max_params=5))
