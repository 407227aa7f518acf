"""Boosted trees and a logistic regression beside the search, on the same splits, scored the same way."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from searcher import reference
from searcher.data import load_search_data, load_test_split
from searcher.spec import DataSpec


def breast_cancer_csv(folder: Path) -> Path:
    """scikit-learn's breast cancer table (30 numeric columns on scales up to ~4,000), a text
    column, and a text target, as a CSV file."""
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    clinic = np.array(["north", "south", "east"])[np.arange(len(bc.target)) % 3]
    path = folder / "cancer.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([n.replace(" ", "_") for n in bc.feature_names] + ["clinic", "diagnosis"])
        writer.writerows([f"{v:g}" for v in x] + [c, bc.target_names[t]] for x, t, c in zip(bc.data, bc.target, clinic))
    return path


def test_references_score_the_searchs_folds_and_the_test_split(tmp_path):
    spec = DataSpec(dataset="csv", path=str(breast_cancer_csv(tmp_path)), target="diagnosis", categorical=("clinic",),
                    cv_folds=3)
    data = load_search_data(spec, split_seed=0)
    out = reference.evaluate(data, "val_accuracy", test=load_test_split(spec))
    for name in ("logistic_regression", "boosted_trees"):
        ref = out[name]
        assert len(ref["folds"]) == 3 and ref["val_accuracy"] == pytest.approx(np.mean(ref["folds"]), abs=1e-6)
        assert 0.85 < ref["val_accuracy"] <= 1 and 0.85 < ref["test_accuracy"] <= 1  # real models, not chance (0.63)
        assert 0 < ref["test_loss"] < 0.5 and 0.9 < ref["test_auc"] <= 1
    # Scored exactly as a trial: fold 1's validation rows, the study's metric.
    from sklearn.ensemble import HistGradientBoostingClassifier

    x = reference._codes(data.train.x, data.preprocessing.numeric, {"clinic": {"east": 0, "north": 1, "south": 2}})
    trees = HistGradientBoostingClassifier(categorical_features=[False] * 30 + [True], random_state=0)
    trees.fit(x, data.train.y)
    x_val = reference._codes(data.val.x, data.preprocessing.numeric, {"clinic": {"east": 0, "north": 1, "south": 2}})
    assert out["boosted_trees"]["folds"][0] == pytest.approx((trees.predict(x_val) == data.val.y).mean(), abs=1e-6)
    auc = reference.evaluate(data, "val_auc")
    assert "test_accuracy" not in auc["logistic_regression"] and 0.9 < auc["boosted_trees"]["val_auc"] <= 1


def test_images_have_no_references(tmp_path):
    np.savez(tmp_path / "img.npz", x_train=np.zeros((40, 4, 4), "uint8"), y_train=[0, 1] * 20)
    data = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "img.npz"), test_fraction=0.2), split_seed=0)
    assert not reference.applies(data)


def searcher(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "searcher", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_launch_status_report_and_retrain_show_the_references(tmp_path):
    breast_cancer_csv(tmp_path)
    (tmp_path / "cancer.yaml").write_text(
        "name: cancer\ndata: {dataset: csv, path: cancer.csv, target: diagnosis, categorical: [clinic]}\n"
        "model: {kind: mlp}\ntraining: {max_epochs: 3}\nbudget: {n_trials: 2}\n")
    url = f"sqlite:///{tmp_path}/s.db"
    launched = searcher("launch", "cancer.yaml", "--workers", "1", "--storage", url, cwd=tmp_path)
    assert "references: logistic regression 0." in launched.stdout and "boosted trees 0." in launched.stdout
    import optuna

    stored = optuna.load_study(study_name="cancer", storage=url).user_attrs["references"]
    assert stored["metric"] == "val_accuracy"
    line = (f"references: logistic regression {stored['logistic_regression']['val_accuracy']:.4f}, "
            f"boosted trees {stored['boosted_trees']['val_accuracy']:.4f}")
    assert line in launched.stdout  # the summary, under the best trial
    status = searcher("status", "cancer", "--storage", url, cwd=tmp_path)
    assert line in status.stdout
    searcher("report", "cancer", "--storage", url, "-o", "report.html", cwd=tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Against reference models" in page and f"{stored['boosted_trees']['val_accuracy']:.4f}" in page

    searcher("export", "cancer", "--storage", url, "-o", "best.yaml", cwd=tmp_path)
    retrained = searcher("retrain", "best.yaml", "-o", "best.keras", cwd=tmp_path)
    assert "boosted trees: test accuracy 0." in retrained.stdout
    metrics = json.loads((tmp_path / "best.metrics.json").read_text())
    for name in ("logistic_regression", "boosted_trees"):
        ref = metrics["references"][name]
        assert ref["val_accuracy"] == stored[name]["val_accuracy"]  # the same fit split, refitted the same
        assert 0.85 < ref["test_accuracy"] <= 1 and ref["test_loss"] > 0 and 0.9 < ref["test_auc"] <= 1
