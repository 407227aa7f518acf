"""The bench harness: ``python -m bench --quick`` runs every section, prints every table and
writes every figure as a positive number.

Timings are never asserted: other processes share the machine, and the quick plan's
budgets are too small for its figures to mean much. Only their presence and sign are.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_process import HANG_GUARD
from searcher.devices import detect_gpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
HEADINGS = {
    "overhead": "## 1. Overhead: one-worker search vs a bare model.fit loop",
    "scaling": "## 2. Scaling: CPU worker processes on this machine",
    "storage": "## 3. Storage: Optuna storage time per trial",
    "startup": "## 4. Start-up: cold launch to the first finished trial",
    "quality": "## 5. Search quality at an equal epoch budget (digits-mlp)",
    "gpu": "## 6. GPU: CIFAR-10 CNN seconds per epoch",
    "nan_check": "## 7. NaN check: seconds per epoch with and without it",
}
QUALITY = ("best_val_accuracy", "test_accuracy", "epochs", "trials")


def expected_figures(*, postgres: bool, keras_tuner: bool, gpu: bool) -> dict[str, list[str]]:
    backends = ["sqlite", "postgresql"] if postgres else ["sqlite"]
    methods = ["tpe_median", "random_none"] + (["keras_tuner_hyperband"] if keras_tuner else [])
    return {
        "overhead": ["overhead_ratio", "overhead_ratio_same_loop", "overhead_ratio_projected", "startup_share",
                     "searcher_wall_s", "bare_loop_s", "tf_import_s", "data_loading_s", "cost_share_of_trial"],
        "scaling": ["scaling_ratio", "scaling_ratio_wall", "ceiling_ratio", "scaling_vs_ceiling", "trials_per_min.1",
                    "trials_per_min.2"],
        "storage": [f"{figure}.{b}" for figure in ("storage_ms_per_trial", "storage_share_of_trial") for b in backends],
        "startup": ["first_trial_s", "first_trial_start_s"],
        "quality": [f"{m}.{figure}" for m in methods for figure in QUALITY],
        "gpu": [f"{variant}_{side}" for variant in ("float32", "mixed", "xla", "mixed_xla")
                for side in ("searcher", "bare")] if gpu else [],
        "nan_check": [f"s_per_epoch_{v}.{b}" for v in ("none", "per_batch", "searcher") for b in (32, 128)],
    }


def leaves(figures: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    result = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=2 * HANG_GUARD)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result, json.loads(out.read_text())


def test_quick_run_prints_every_table(quick_run):
    result, _ = quick_run
    for heading in HEADINGS.values():
        assert heading in result.stdout
    positions = [result.stdout.index(h) for h in HEADINGS.values()]
    assert positions == sorted(positions), "sections print in order"
    for text in ("overhead_ratio =", "of it start-up and shutdown", "*Projected, not measured*", "scaling_ratio =",
                 "ceiling_ratio =", "scaling_vs_ceiling =", "first_trial_s =", "| sqlite |",
                 "searcher TPE + median pruner (default)", "searcher random sampler, no pruning"):
        assert text in result.stdout


def test_quick_run_writes_every_figure_as_a_positive_number(quick_run):
    result, document = quick_run
    assert document["plan"] == "quick" and document["seconds"] > 0
    assert set(document["sections"]) == set(HEADINGS)
    storage = document["sections"]["storage"]
    postgres_missing = storage["details"].get("not_run", {}).get("postgresql")
    if os.environ.get("CI") == "true":
        assert postgres_missing is None, "PostgreSQL must be measured in CI"
    if postgres_missing:
        assert f"not run: {postgres_missing}" in result.stdout
    keras_tuner = importlib.util.find_spec("keras_tuner") is not None
    gpu = bool(detect_gpus())
    expected = expected_figures(postgres=not postgres_missing, keras_tuner=keras_tuner, gpu=gpu)
    for key, names in expected.items():
        section = document["sections"][key]
        assert section["title"] == HEADINGS[key].removeprefix("## ")
        figures = leaves(section["figures"])
        for name in names:
            assert name in figures, f"{key}: missing figure {name}"
        for name, value in figures.items():
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key}.{name}: {value!r}"
            assert math.isfinite(value) and value > 0, f"{key}.{name} must be a positive number, got {value!r}"
    if not gpu:
        assert document["sections"]["gpu"]["not_run"] == "no GPU visible"
        assert "not run: no GPU visible" in result.stdout


def test_own_data_files_hold_what_the_linear_baseline_sees(tmp_path, monkeypatch):
    """Section 9 compares searcher with a logistic regression on the same rows: the files the
    harness writes (CSV; PNG written without TensorFlow) must read back, through searcher's own
    loaders, as exactly the arrays the baseline is given."""
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO))  # `bench` is run from the repository, not installed
    from bench import own_data
    from searcher.data import load_test_split
    from searcher.spec import DataSpec

    x, y, classes = own_data._dataset("breast_cancer")
    path = own_data._write_csv(tmp_path / "bc.csv", x[:40], y[:40], classes)
    test = load_test_split(DataSpec(dataset="csv", path=str(path), test_path=str(path), target="target"))
    columns = np.stack([np.asarray(test.x[f"f{i}"], dtype=float).ravel() for i in range(x.shape[1])], axis=1)
    np.testing.assert_allclose(columns, x[:40], rtol=1e-6)  # float32 inside searcher
    names = sorted({classes[i] for i in y[:40]})  # searcher numbers string classes in sorted order
    assert [names[k] for k in test.y] == [classes[i] for i in y[:40]]

    x, y, classes = own_data._dataset("digits_png")
    picked = np.concatenate([np.flatnonzero(y == label)[:3] for label in range(10)])
    root = own_data._write_images(tmp_path, x[picked], y[picked], classes, split="test")
    test = load_test_split(DataSpec(dataset="images", path=str(root), test_path=str(root), color_mode="grayscale"))
    read = np.asarray(test.x).reshape(len(test.y), -1)
    assert sorted(map(tuple, read)) == sorted(map(tuple, x[picked])), "pixels as the baseline sees them"
    assert sorted(test.y.tolist()) == sorted(y[picked].tolist())


def test_own_data_table_puts_the_references_beside_searcher_for_tables_only(tmp_path, monkeypatch):
    """Section 9's table: per split and as a mean row per set, searcher, the bench's logistic
    regression and the references retrain scored; images have no references, so no figure."""
    import dataclasses

    monkeypatch.syspath_prepend(str(REPO))
    from bench import own_data
    from bench._common import Plan

    accuracy = {("breast_cancer", 0): 0.96, ("breast_cancer", 1): 0.98, ("digits_png", 0): 0.9, ("digits_png", 1): 0.92}

    def outcome(name, seed, plan, folder):
        table = name != "digits_png"
        return own_data.Outcome(
            dataset=name, split_seed=seed, train_rows=455, test_rows=114, searcher_accuracy=accuracy[name, seed],
            searcher_wrong=3, searcher_log_loss=0.1, linear_accuracy=0.97, linear_wrong=3, linear_log_loss=0.08,
            trees_accuracy=0.95 + seed / 100 if table else None,
            reference_linear_accuracy=0.99 - seed / 100 if table else None, model="mlp, one split", search_s=60.0)

    monkeypatch.setattr(own_data, "_one", outcome)
    plan = dataclasses.replace(Plan.quick(), own_data_splits=(0, 1), own_data_sets=("breast_cancer", "digits_png"))
    section = own_data.run(plan, tmp_path)

    assert section.figures == {
        "breast_cancer": {"searcher_test_accuracy": 0.97, "linear_test_accuracy": 0.97,
                          "reference_linear_test_accuracy": 0.985, "trees_test_accuracy": 0.955},
        "digits_png": {"searcher_test_accuracy": 0.91, "linear_test_accuracy": 0.97}}
    rows = [line for line in section.table.splitlines() if line.startswith("| breast_cancer") or line.startswith("| digits")]
    assert [row.split(" | ")[1] for row in rows] == ["0", "1", "mean", "0", "1", "mean"]
    assert "| 0.9900 | 0.9500 |" in rows[0] and "| 0.9850 | 0.9550 |" in rows[2]
    assert "| - | - |" in rows[3] and "| - | - |" in rows[5]
