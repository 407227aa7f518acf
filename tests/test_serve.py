"""A model that loads anywhere: the .keras file and the SavedModel load, and score raw rows, in
a Python that has TensorFlow but not searcher; missing cells handled inside the model."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from own_files import write_csv
from searcher.data import load_search_data
from searcher.spec import DataSpec

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

# Runs with -I -S: no PYTHONPATH, no current folder, and site-packages added by hand without
# its .pth files, so the editable install's finder for searcher is never installed.
_WITHOUT_SEARCHER = """
import sys
sys.path.append({site!r})
import importlib.util
assert importlib.util.find_spec("searcher") is None, "searcher is importable"
try:
    import searcher
except ImportError:
    pass
else:
    raise AssertionError("import searcher worked")
import csv, json, math, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf, keras

def number(cell):
    try:
        return float(cell)
    except ValueError:
        return math.nan  # NA, n/a, empty, ...: a NaN the model imputes

def raw_inputs(rows, spec):
    # Each input as it comes in the CSV file: strings as they are, numbers as floats.
    return {{name: tf.constant([[r[name]] if dtype == "string" else [number(r[name])] for r in rows],
                              dtype=dtype) for name, dtype in spec.items()}}

rows = list(csv.DictReader(open({csv_path!r}, newline="")))
out = {{}}
model = keras.models.load_model({keras_path!r})
spec = {{name: t.dtype for name, t in model.input.items()}}
out["keras"] = model.predict(raw_inputs(rows, spec), verbose=0).tolist()
if {served!r}:
    served = tf.saved_model.load({served!r})
    out["saved_model"] = served.serve(raw_inputs(rows, spec)).numpy().tolist()
    tflite = os.path.join({served!r}, "model.tflite")
    if os.path.exists(tflite):
        runner = tf.lite.Interpreter(model_path=tflite).get_signature_runner()
        out["tflite"] = runner(**{{k: v.numpy() for k, v in raw_inputs(rows, spec).items()}})["output_0"].tolist()
print("SCORES" + json.dumps(out))
"""


def predict_without_searcher(keras_path: Path, csv_path: Path, *, served: Path | None = None,
                             cwd: Path) -> dict[str, np.ndarray]:
    """Class probabilities for every row of ``csv_path`` from the saved files, computed in a
    Python where ``import searcher`` fails (checked there)."""
    code = _WITHOUT_SEARCHER.format(site=sysconfig.get_paths()["purelib"], csv_path=str(csv_path),
                                    keras_path=str(keras_path), served=str(served) if served else "")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("SCORES"))
    return {k: np.asarray(v) for k, v in json.loads(line[len("SCORES"):]).items()}


def survey_rows(n: int, seed: int) -> list[list[str]]:
    """A survey-shaped table: text columns with NA, numbers with NA, a text target."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        colour, region = rng.choice(["red", "green", "blue", "yellow"]), rng.choice(["north", "south", "east"])
        age, visits = rng.normal(45, 12), int(rng.poisson(3))
        score = 0.05 * (age - 45) + 1.5 * (colour == "red") - (region == "south") + 0.4 * (visits - 3)
        outcome = "improved" if score + rng.normal(0, 0.5) > 0.3 else "same"
        row = [f"P{i:05d}", colour, region, f"{age:.1f}", str(visits), outcome]
        if i % 11 == 3:
            row[1] = ["NA", "n/a", "", "?"][i % 4]
        if i % 13 == 5:
            row[3] = ["NA", ""][i % 2]
        rows.append(row)
    return rows


SURVEY_HEADER = ["id", "colour", "region", "age", "visits", "outcome"]


def _small_model(preprocessing, n_classes: int):
    from searcher.models import build_model
    from searcher.space import ModelConfig

    config = ModelConfig(kind="mlp", hidden_units=(8,), activation="relu", initializer="he_normal", dropout=0.0,
                         l2=0.0, batch_norm=False, optimizer="adam", learning_rate=1e-3)
    return build_model(config, preprocessing=preprocessing, n_classes=n_classes)


@pytest.mark.parametrize("missing", ["mean", "most_frequent", "error"])
def test_a_table_model_loads_and_scores_raw_rows_without_searcher(tmp_path, missing):
    from searcher.serve import write_serving

    rows = survey_rows(120, seed=1)
    if missing == "error":  # no missing numbers allowed: fill them; missing text is still a category
        rows = [r[:3] + ["40" if r[3] in ("NA", "") else r[3]] + r[4:] for r in rows]
    train = write_csv(tmp_path / "train.csv", SURVEY_HEADER, rows[:100])
    test = write_csv(tmp_path / "test.csv", SURVEY_HEADER, rows[100:])
    spec = DataSpec(dataset="csv", path=str(train), test_path=str(test), target="outcome", missing=missing,
                    features=("colour", "region", "age", "visits"))
    data = load_search_data(spec, split_seed=0)
    model = _small_model(data.preprocessing, data.n_classes)
    model.save(tmp_path / "m.keras")
    figures = write_serving(model, tmp_path / "served", data.val)
    assert figures["tflite"] and figures["tflite_latency"]["latency_ms_b1"] > 0
    assert "FillMissing" not in (tmp_path / "m.keras").read_bytes().decode("latin-1")

    scored = predict_without_searcher(tmp_path / "m.keras", test, served=tmp_path / "served", cwd=tmp_path)
    reader = list(csv.DictReader(open(test)))
    here = model.predict({name: tf.constant([[r[name]] if t.dtype == "string" else [_number(r[name])] for r in reader],
                                            dtype=t.dtype) for name, t in model.input.items()}, verbose=0)
    assert np.isfinite(here).all()
    for form in ("keras", "saved_model", "tflite"):
        assert scored[form].shape == (20, 2) and np.allclose(scored[form], here, atol=1e-5), form


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def test_missing_text_is_its_own_slot_or_the_most_frequent_category(tmp_path):
    rows = survey_rows(100, seed=2)
    train = write_csv(tmp_path / "train.csv", SURVEY_HEADER, rows)
    slots = {}
    for missing in ("mean", "most_frequent"):
        spec = DataSpec(dataset="csv", path=str(train), target="outcome", missing=missing, test_fraction=0.2,
                        features=("colour", "age"))
        data = load_search_data(spec, split_seed=0)
        model = _small_model(data.preprocessing, data.n_classes)
        one_hot = keras.Model(model.input, model.get_layer("slots_colour").output)
        cells = ["blue", "green", "red", "yellow", "NA", "n/a", "", "None", "?", "purple"]
        slots[missing] = one_hot.predict({"colour": tf.constant([[c] for c in cells]),
                                          "age": tf.constant([[40.0]] * len(cells))}, verbose=0)
        assert dict(data.preprocessing.vocabularies)["colour"] == ("blue", "green", "red", "yellow")
    own = slots["mean"]  # slots: other, blue, green, red, yellow, missing
    assert own.shape == (10, 6) and (own.sum(axis=1) == 1).all()
    assert list(own[:4].argmax(axis=1)) == [1, 2, 3, 4] and set(own[4:9].argmax(axis=1)) == {5}
    assert own[9].argmax() == 0  # never seen in the fit split: "other"
    imputed = slots["most_frequent"]  # no missing slot: a missing cell is the most frequent colour
    fit = load_search_data(DataSpec(dataset="csv", path=str(train), target="outcome", missing="most_frequent",
                                    test_fraction=0.2, features=("colour", "age")), split_seed=0)
    values, counts = np.unique(fit.train.x["colour"][fit.train.x["colour"] != ""], return_counts=True)
    most = 1 + ["blue", "green", "red", "yellow"].index(values[np.argmax(counts)])
    assert imputed.shape == (10, 5) and set(imputed[4:9].argmax(axis=1)) == {most}


@pytest.mark.slow
def test_survey_shaped_table_init_launch_export_retrain_and_score_without_searcher(tmp_path):
    from test_own_data import searcher

    rows = survey_rows(345, seed=3)
    write_csv(tmp_path / "survey.csv", SURVEY_HEADER, rows[:275])
    test = write_csv(tmp_path / "survey-test.csv", SURVEY_HEADER, rows[275:])
    made = searcher("init", "survey.csv", "--target", "outcome", "--test", "survey-test.csv", "-o", "survey.yaml",
                    "--minutes", "1", cwd=tmp_path)
    assert "2 categorical column(s) one-hot: colour (4), region (3); a missing category is a category of its own" \
        in made.stdout
    text = (tmp_path / "survey.yaml").read_text()
    assert "# features: 'id' is left out: every value is different, like an ID" in text
    assert "missing: mean" in text
    url = f"sqlite:///{tmp_path}/s.db"
    searcher("launch", "survey.yaml", "--workers", "1", "--trials", "1", "--storage", url, cwd=tmp_path)
    searcher("export", "survey", "--storage", url, "-o", "best.yaml", cwd=tmp_path)
    retrained = searcher("retrain", "best.yaml", "-o", "best.keras", "--serve", "served", cwd=tmp_path)
    assert "(best.keras, loaded back)" in retrained.stdout and "SavedModel: " in retrained.stdout
    metrics = json.loads((tmp_path / "best.metrics.json").read_text())
    assert metrics["serving"]["saved_model"] == "served" and metrics["serving"]["tflite"] == "served/model.tflite"

    scored = predict_without_searcher(tmp_path / "best.keras", test, served=tmp_path / "served", cwd=tmp_path)
    truth = np.asarray([r[-1] for r in rows[275:]])
    for form, probabilities in scored.items():
        predicted = np.asarray(metrics["class_names"])[probabilities.argmax(axis=1)]
        assert (predicted == truth).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-6), form
