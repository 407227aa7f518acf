"""After a search: status, export -> retrain (test split scored once), replay and confirm.

All on one real digits search (the session's `digits_search`); tests that change the
study work on a copy of its storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml

from searcher import ranking

pytestmark = pytest.mark.slow


def searcher(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "searcher", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def load(run) -> optuna.Study:
    return optuna.load_study(study_name=run.name, storage=run.url)


def test_status_json_matches_the_study(digits_search):
    out = searcher("status", "digits-mlp", "--json", "--storage", digits_search.url, cwd=digits_search.folder)
    status = json.loads(out.stdout)
    study = load(digits_search)
    counts = Counter(t.state.name for t in study.get_trials())
    assert status["counts"] == {s: counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    assert status["finished"] == 12 == counts["COMPLETE"] + counts["PRUNED"]
    best = ranking.ranked(study)[0]  # Optuna's best_trial, with ties broken by the lower validation loss
    assert best.value == study.best_value
    assert status["best_trial"] == best.number
    assert status["best_value"] == pytest.approx(study.best_value)
    assert status["best_params"] == best.params
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)):
        measured = t.state == optuna.trial.TrialState.COMPLETE  # only complete trials are ranked, exported, drawn
        assert ("latency_ms_b1" in t.user_attrs, "model_bytes" in t.user_attrs) == (measured, measured), t.number


def test_export_then_retrain_round_trip(digits_search, tmp_path):
    study = load(digits_search)
    best = ranking.ranked(study)[0]
    searcher("export", "digits-mlp", "--storage", digits_search.url, "-o", str(tmp_path / "best.yaml"), cwd=tmp_path)
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["source"]["trial"] == best.number
    assert exported["source"]["value"] == pytest.approx(best.value)
    assert exported["config"] == best.user_attrs["config"], "the export is exactly the trial's config"
    assert (tmp_path / "best.yaml").read_text().startswith("# searcher export: study digits-mlp, trial")

    out = searcher("retrain", str(tmp_path / "best.yaml"), "-o", str(tmp_path / "model.keras"), cwd=tmp_path)
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


def test_export_rank_and_json(digits_search, tmp_path):
    study = load(digits_search)
    # Ties in accuracy (common on 288 validation rows) break by the lower validation loss.
    complete = sorted((t for t in study.get_trials() if t.state.name == "COMPLETE"),
                      key=lambda t: (-t.value, t.user_attrs["val_loss_at_best"], t.number))
    out = searcher("export", "digits-mlp", "--rank", "2", "--format", "json", "--storage", digits_search.url,
                   cwd=tmp_path)
    document = json.loads(out.stdout)
    assert document["source"]["trial"] == complete[1].number
    assert document["source"]["picked"] == "rank 2 by validation value"


def test_replay_reproduces_the_validation_curve(digits_search):
    study = load(digits_search)
    best = study.best_trial
    out = searcher("replay", "digits-mlp", str(best.number), "--storage", digits_search.url,
                   cwd=digits_search.folder)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"trial {best.number}: largest difference")
    difference = float(last.split("largest difference ")[1].split()[0])
    # Same config, seed and thread count on the CPU: measured bit-identical here; one
    # validation example is 1/288 = 0.0035, so this allows no example to flip.
    assert difference <= 0.001, out.stdout


def test_confirm_adds_runs_once_and_export_takes_the_winner(digits_search, tmp_path):
    run = digits_search.copy(tmp_path)
    out = searcher("confirm", "digits-mlp", "--top", "3", "--seeds", "2", "--workers", "2", "--storage", run.url,
                   cwd=tmp_path)
    assert "6 new run(s)" in out.stdout
    runs = optuna.load_study(study_name="digits-mlp--confirm", storage=run.url).get_trials()
    assert len(runs) == 6
    assert Counter(t.user_attrs["of_trial"] for t in runs).most_common()[0][1] == 2
    ranking = load(run).user_attrs["confirmed_ranking"]
    assert [r["runs"] for r in ranking] == [2, 2, 2]
    means = [r["mean"] for r in ranking]
    assert means == sorted(means, reverse=True)

    again = searcher("confirm", "digits-mlp", "--top", "3", "--seeds", "2", "--storage", run.url, cwd=tmp_path)
    assert "0 new run(s)" in again.stdout
    assert len(optuna.load_study(study_name="digits-mlp--confirm", storage=run.url).get_trials()) == 6

    exported = yaml.safe_load(searcher("export", "digits-mlp", "--storage", run.url, cwd=tmp_path).stdout)
    assert exported["source"]["trial"] == ranking[0]["trial"]
    assert exported["source"]["picked"] == "confirmed best over 2 seeded runs"

    from searcher.report import collect, render_html

    data = collect(load(run))
    assert [c["trial"] for c in data.confirmed] == [r["trial"] for r in ranking]
    page = render_html(data)
    assert "Confirmed over fresh seeds" in page and f"#{ranking[0]['trial']}" in page
