"""A user's own data: CSV files and image folders, preprocessing fitted on the fit split
inside the model, labels of any kind, and bad data refused in one line."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_process import run_searcher
from own_files import digits_png_folder, wine_csv, write_csv
from searcher import ranking, sources
from searcher.data import Rows, class_weights, load_search_data, load_test_split, to_tf_dataset
from searcher.errors import DataError
from searcher.spec import DataSpec

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


# --- preprocessing, fitted on the fit split and inside the model -----------------------------


def test_standardization_is_fitted_on_the_fit_split_only(tmp_path):
    rng = np.random.default_rng(0)
    scales = np.array([0.001, 1.0, 4000.0])
    x = rng.normal(size=(300, 3)) * scales
    y = (x[:, 2] > 0).astype(int)
    # A test split far off the training distribution: its statistics must not reach the model.
    np.savez(tmp_path / "d.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:] + 1e6, y_test=y[200:])
    data = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "d.npz")), split_seed=0)
    pre = data.preprocessing
    assert pre.mode == "standardize"
    assert np.allclose(pre.mean, data.train.x.mean(axis=0), rtol=1e-5)
    assert np.allclose(pre.variance, data.train.x.var(axis=0), rtol=1e-4)
    everything = np.concatenate([data.train.x, data.val.x])
    assert not np.allclose(pre.mean, everything.mean(axis=0), rtol=1e-6), "validation rows leaked into the mean"
    assert abs(pre.mean[2]) < 1e5


def test_cross_validation_folds_partition_the_training_rows_each_with_its_own_preprocessing(tmp_path):
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    np.savez(tmp_path / "c.npz", x_train=x[:455], y_train=y[:455], x_test=x[455:], y_test=y[455:])
    data = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "c.npz"), cv_folds=5), split_seed=3)
    folds = [data, *data.folds]
    assert len(folds) == 5 and data.summary()["cv_folds"] == 5
    held = np.concatenate([f.val.x for f in folds])
    assert len(held) == 455 and len(np.unique(held, axis=0)) == len(np.unique(x[:455], axis=0))  # each row once
    for fold in folds:
        assert len(fold.train) + len(fold.val) == 455
        assert abs(fold.val.y.mean() - y[:455].mean()) < 0.02  # stratified
        # Fitted on this fold's fit rows only: never on the rows it is validated on.
        assert np.allclose(fold.preprocessing.mean, fold.train.x.mean(axis=0), rtol=1e-5)
    assert len({f.preprocessing.mean for f in folds}) == 5
    assert load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "c.npz"), cv_folds=5),
                            split_seed=3).val.y.tolist() == data.val.y.tolist()  # seeded


def test_cross_validation_needs_k_examples_of_every_class(tmp_path):
    path = _npz(tmp_path, x_train=np.ones((23, 3)), y_train=[0, 1] * 10 + [2] * 3, x_test=np.ones((3, 3)),
                y_test=[0, 1, 2])
    with pytest.raises(DataError, match=r"class '2' has 3 example\(s\); 5-fold cross-validation needs at least 5 "
                                        r"of every class \(lower data\.cv_folds"):
        load_search_data(DataSpec(dataset="npz", path=path, cv_folds=5), split_seed=0)


def test_auto_rescales_images_and_standardizes_features(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(60, 5, 5), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x_train=images, y_train=np.arange(60) % 3)
    data = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "img.npz"), test_fraction=0.2), split_seed=0)
    assert data.train.x.dtype == np.uint8 and data.input_shape == (5, 5, 1)
    assert (data.preprocessing.mode, data.preprocessing.scale) == ("rescale", 255.0)
    none = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "img.npz"), test_fraction=0.2,
                                     preprocess="none"), split_seed=0)
    assert none.preprocessing.mode == "none"


def test_missing_mean_imputes_inside_the_model(tmp_path):
    from searcher.models import build_model
    from searcher.space import ModelConfig

    x = np.arange(200, dtype="float64").reshape(100, 2)
    x[::7, 0] = np.nan
    np.savez(tmp_path / "gaps.npz", x_train=x, y_train=np.arange(100) % 2)
    spec = DataSpec(dataset="npz", path=str(tmp_path / "gaps.npz"), test_fraction=0.2, missing="mean")
    data = load_search_data(spec, split_seed=0)
    assert data.preprocessing.fill[0] == pytest.approx(np.nanmean(data.train.x[:, 0]), rel=1e-6)
    config = ModelConfig(kind="mlp", hidden_units=(4,), activation="relu", initializer="he_normal", dropout=0.0,
                         l2=0.0, batch_norm=False, optimizer="adam", learning_rate=1e-3)
    model = build_model(config, preprocessing=data.preprocessing, n_classes=2)
    assert np.isfinite(model.predict(np.array([[np.nan, 3.0]], "float32"), verbose=0)).all()


# --- labels -----------------------------------------------------------------------------------


def test_string_labels_map_to_classes_in_a_stable_order(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "label"], [[i, ["yes", "no"][i % 2]] for i in range(40)])
    spec = DataSpec(dataset="csv", path=str(path), target="label")
    data = load_search_data(spec, split_seed=0)
    assert data.class_names == ("no", "yes")
    test = load_test_split(spec)
    assert len(test) == 8 and set(test.y) == {0, 1}


def test_a_hundred_classes_split_stratified(tmp_path):
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(100) * 3 + 7, 10)  # integer labels 7, 10, ..., 304: not 0..K-1
    np.savez(tmp_path / "many.npz", x_train=rng.normal(size=(1000, 4)), y_train=y)
    data = load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "many.npz"), test_fraction=0.2), split_seed=0)
    assert data.n_classes == 100 and data.class_names[:2] == ("7", "10")
    assert np.bincount(data.val.y, minlength=100).min() >= 1


def test_balanced_class_weights_make_each_class_weigh_the_same(tmp_path):
    from searcher.data import Split

    split = Split(np.zeros((100, 1)), np.array([0] * 90 + [1] * 10))
    weights = class_weights(split, 2)
    assert weights[split.y].sum() == pytest.approx(100)
    assert weights[0] * 90 == pytest.approx(weights[1] * 10)


# --- image folders ------------------------------------------------------------------------------


def test_image_folder_is_decoded_once_into_a_shared_memory_map(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=10)
    spec = DataSpec(dataset="images", path=str(root), color_mode="grayscale", test_fraction=0.2)
    data = load_search_data(spec, split_seed=0)
    assert data.input_shape == (8, 8, 1) and data.train.x.dtype == np.uint8
    assert data.class_names == tuple(f"digit-{i}" for i in range(10))
    caches = list((tmp_path / "cache").glob("images-*.npy"))
    assert len(caches) == 1 and not list((tmp_path / "cache").glob("*.tmp*"))
    # The splits are rows of the one read-only map, not copies; streamed batches hold the right images.
    assert isinstance(data.train.x, Rows) and isinstance(data.train.x.base, np.memmap)
    assert not data.train.x.base.flags.writeable
    decoded = tf.io.decode_png((root / "digit-3" / "004.png").read_bytes()).numpy()
    row = sources.list_images(root).index((root / "digit-3" / "004.png", "digit-3"))
    assert np.array_equal(data.train.x.base[row], decoded)
    batches = list(to_tf_dataset(data.train, batch_size=7, shuffle_seed=1))
    streamed = np.concatenate([x.numpy() for x, _ in batches])
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert streamed.shape == (len(data.train), 8, 8, 1) and sorted(labels) == sorted(data.train.y)
    by_row = {bytes(np.asarray(data.train.x)[i]): data.train.y[i] for i in range(len(data.train))}
    assert all(by_row[bytes(x)] == y for x, y in zip(streamed, labels))  # every image with its own label

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    with monkeypatch.context() as m:
        m.setattr(sources, "_decode_image", no_decoding)
        again = sources.read(spec)
        assert isinstance(again.x_train, np.memmap) and again.x_train.shape == (100, 8, 8, 1)
        assert list(again.y_train[:2]) == ["digit-0", "digit-0"]
    # A changed file is a new cache, decoded again: the image read is the new one.
    changed = root / "digit-3" / "004.png"
    changed.write_bytes(tf.io.encode_png(np.full((8, 8, 1), 200, "uint8")).numpy())
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    fresh = sources.read(spec)
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 2
    assert (fresh.x_train[row] == 200).all() and not np.array_equal(fresh.x_train[row], decoded)


@pytest.mark.slow
def test_an_image_folder_trains_end_to_end_from_the_memory_map(tmp_path):
    digits_png_folder(tmp_path, per_class=12)
    (tmp_path / "pngs.yaml").write_text(
        "name: pngs\ndata: {dataset: images, path: digits-png, color_mode: grayscale, test_fraction: 0.2}\n"
        "model: {kind: cnn}\ntraining: {max_epochs: 2}\nbudget: {n_trials: 1}\n")
    url = f"sqlite:///{tmp_path}/s.db"
    env = {"SEARCHER_CACHE_DIR": str(tmp_path / "cache")}
    launched = searcher("launch", "pngs.yaml", "--workers", "1", "--storage", url, cwd=tmp_path, env=env)
    assert "data: 76 fit / 20 validation / 24 test rows" in launched.stdout
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 1
    import optuna

    trials = optuna.load_study(study_name="pngs", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] and trials[0].user_attrs["epochs"] == 2
    searcher("export", "pngs", "--storage", url, "-o", "best.yaml", cwd=tmp_path)
    retrained = searcher("retrain", "best.yaml", "-o", "best.keras", cwd=tmp_path, env=env)
    assert "on 24 held-out examples" in retrained.stdout


# --- bad data: one line naming the file, column or array --------------------------------------


def _npz(tmp_path: Path, **arrays) -> str:
    np.savez(tmp_path / "bad.npz", **arrays)
    return str(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.array([[1.0, np.nan]] * 20), y_train=[0, 1] * 10),
                            test_fraction=0.2),
         r"bad\.npz x_train: 20 missing \(NaN\) value\(s\), the first in row 0, feature 1; set data\.missing: mean"),
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.array([[1.0, np.inf]] * 20), y_train=[0, 1] * 10),
                            test_fraction=0.2),
         r"bad\.npz x_train: 20 infinite value\(s\)"),
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.ones((20, 3)), y_train=[0, 1] * 10,
                                                     x_test=np.ones((4, 2)), y_test=[0, 1] * 2)),
         r"bad\.npz x_test: examples have shape \(2,\), but .*bad\.npz x_train has \(3,\)"),
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.ones((20, 3)), y_train=[0, 1] * 10,
                                                     x_test=np.ones((4, 3)), y_test=[0, 1, 2, 2])),
         r"bad\.npz x_test: class '2' \(2 example\(s\)\) never occurs in .*bad\.npz x_train"),
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.ones((21, 3)), y_train=[0, 1] * 10 + [2]),
                            test_fraction=0.2),
         r"bad\.npz x_train: class '2' has 1 example\(s\); a stratified test split needs at least 2 of every class"),
        (lambda p: DataSpec(dataset="npz", path=_npz(p, x_train=np.ones((20, 3)), y_train=[4] * 20), test_fraction=0.2),
         r"all labels are '4'; a classifier needs at least 2 classes"),
        (lambda p: DataSpec(dataset="csv", path=str(write_csv(p / "b.csv", ["age", "y"],
                                                              [[str(i), i % 2] for i in range(9)] + [["4O", 1]])),
                            target="y"),
         r"b\.csv: column 'age', line 11: '4O' is not a number \(9 of its 10 filled values are\)"),
        (lambda p: DataSpec(dataset="csv", path=str(write_csv(p / "b.csv", ["age", "y"],
                                                              [[i, i % 2] for i in range(9)] + [["", 1]])),
                            target="y"),
         r"b\.csv: column 'age': 1 missing \(NaN\) value\(s\), the first in line 11; set data\.missing: mean"),
        (lambda p: DataSpec(dataset="csv", path=str(write_csv(p / "b.csv", ["age", "y"], [[1, 0]])), target="label"),
         r"data\.target: .*b\.csv has no column 'label' \(columns: age, y\)"),
        (lambda p: DataSpec(dataset="images", path=str((p / "empty").mkdir() or p / "empty")),
         r"data\.path: .*empty has no class subfolders"),
    ],
    ids=["nan", "inf", "test-shape", "unseen-test-class", "tiny-class", "one-class", "non-numeric", "csv-gap",
         "no-target", "empty-folder"],
)
def test_bad_data_is_one_line_naming_the_place(tmp_path, make, message):
    with pytest.raises(DataError, match=message) as error:
        load_search_data(make(tmp_path), split_seed=0)
    assert "\n" not in str(error.value)


# --- end to end: init -> launch -> export -> retrain -> predict on the raw CSV rows ----------------


def searcher(*args: str, cwd: Path, ok: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "searcher", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_csv_with_a_categorical_column_and_string_target_end_to_end(tmp_path):
    data, test_file = wine_csv(tmp_path)
    made = run_searcher("init", data.name, "--target", "cultivar", "--test", test_file.name, "-o", "wine.yaml",
                        cwd=tmp_path, check=True)
    # 142 training rows: init cross-validates (one validation split would hold 29 rows).
    assert "wrote wine.yaml: mlp on 142 training rows in 5 cross-validation folds / 36 test rows" in made.stdout
    assert "cellar (3)" in made.stdout
    spec_text = (tmp_path / "wine.yaml").read_text()
    assert "test_path: wine-test.csv" in spec_text and "standardized" in spec_text and "cv_folds: 5" in spec_text
    url = f"sqlite:///{tmp_path}/s.db"
    launched = run_searcher("launch", "wine.yaml", "--workers", "1", "--trials", "3", "--storage", url, cwd=tmp_path,
                            check=True)
    assert "data: 142 training rows in 5 cross-validation folds / 36 test rows" in launched.stdout
    assert "searcher export wine --storage" in launched.stdout and "--ensemble 3" in launched.stdout
    import optuna

    study = optuna.load_study(study_name="wine", storage=url)
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(complete) >= 2
    for t in complete:  # a trial's value is the mean over its 5 folds
        assert len(t.user_attrs["cv_values"]) == 5 and len(set(t.user_attrs["cv_values"])) > 1
        assert t.value == pytest.approx(np.mean(t.user_attrs["cv_values"]), abs=1e-5)
        assert 1 <= t.user_attrs["best_epoch"] <= t.user_attrs["epochs"]

    run_searcher("report", "wine", "--storage", url, "-o", "report.html", cwd=tmp_path, check=True)
    page = (tmp_path / "report.html").read_text()
    assert "Cross-validated: every trial trained on each of 5 stratified folds of the 142 training rows" in page
    assert re.search(r"<td class='n'>\d\.\d{4} ± \d\.\d{4}</td>", page)  # the top trials' fold spread

    exported = run_searcher("export", "wine", "--storage", url, "--ensemble", "2", "-o", "best.yaml", cwd=tmp_path,
                            check=True)
    assert "wrote best.yaml" in exported.stdout
    assert "# final model: average of 10 models (2 configs x 5 folds): trials" in (tmp_path / "best.yaml").read_text()
    retrained = run_searcher("retrain", "best.yaml", "-o", "best.keras", cwd=tmp_path, check=True)
    assert "test accuracy" in retrained.stdout and "average of 10 models (2 configs x 5 folds)" in retrained.stdout
    metrics = json.loads((tmp_path / "best.metrics.json").read_text())
    assert len(metrics["members"]) == 10 and {m["fold"] for m in metrics["members"]} == {1, 2, 3, 4, 5}
    ranked = ranking.ranked(study)[:2]
    assert {m["trial"] for m in metrics["members"]} == {t.number for t in ranked}
    for trial in ranked:  # all folds of a config trained for the one epoch count its score belongs to
        assert len({m["best_epoch"] for m in metrics["members"] if m["trial"] == trial.number}) == 1
    assert metrics["n_params"] == sum(t.user_attrs["n_params"] for t in ranked) * 5
    assert metrics["class_names"] == ["barbera", "barolo", "grignolino"]
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["test_examples"] == 36
    assert set(metrics["per_class"]) == set(metrics["class_names"])
    assert metrics["inputs"]["cellar"] == "string" and metrics["inputs"]["od280_od315_of_diluted_wines"] == "float32"

    # The saved model (one file, the average of the ten) on the raw test rows, read with nothing
    # but the csv module: it standardizes and one-hot encodes by itself.
    model = keras.models.load_model(tmp_path / "best.keras")
    rows = list(csv.DictReader(open(test_file)))
    columns = {name.replace("/", "_"): name for name in rows[0]}
    inputs = {name: tf.constant([[r[columns[name]]] if tensor.dtype == "string" else [float(r[columns[name]])]
                                 for r in rows])
              for name, tensor in model.input.items()}
    predicted = np.asarray(metrics["class_names"])[model.predict(inputs, verbose=0).argmax(axis=1)]
    truth = np.asarray([r["cultivar"] for r in rows])
    assert (predicted == truth).mean() == pytest.approx(metrics["test_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_bad_data_stores_nothing(tmp_path):
    write_csv(tmp_path / "broken.csv", ["x", "y"], [[i, i % 2] for i in range(10)] + [["oops", 1]])
    (tmp_path / "broken.yaml").write_text(
        "data: {dataset: csv, path: broken.csv, target: y}\nmodel: {kind: mlp}\nbudget: {n_trials: 2}\n")
    out = run_searcher("launch", "broken.yaml", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: broken.csv: column 'x', line 12: 'oops' is not a number (10 of its 11 filled values are); "
        "fix the value, or list the column in data.categorical"]
    assert not (tmp_path / "s.db").exists()
