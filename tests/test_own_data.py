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

from searcher import ranking, sources
from searcher.data import Rows, class_weights, load_search_data, load_test_split, to_tf_dataset
from searcher.errors import DataError
from searcher.spec import DataSpec

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def wine_csv(folder: Path) -> tuple[Path, Path]:
    """scikit-learn's wine (features from 0.1 to 1,680) with a categorical column and a string
    target, as a training and a test file."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    names = np.array(["barolo", "grignolino", "barbera"])
    cellar = np.array(["north", "south", "east"])[np.arange(len(wine.target)) % 3]
    header = list(wine.feature_names) + ["cellar", "cultivar"]  # one name holds a "/"
    rows = [[f"{v:g}" for v in x] + [c, names[t]] for x, t, c in zip(wine.data, wine.target, cellar)]
    train, test = train_test_split(rows, test_size=36, random_state=0, stratify=wine.target)
    return write_csv(folder / "wine.csv", header, train), write_csv(folder / "wine-test.csv", header, test)


def digits_png_folder(folder: Path, *, per_class: int = 30) -> Path:
    """scikit-learn's digits as 8x8 grayscale PNG files, one subfolder per class."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = folder / "digits-png"
    for label in range(10):
        (root / f"digit-{label}").mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:per_class]):
            png = tf.io.encode_png((image * 255 / 16).astype("uint8")[..., None]).numpy()
            (root / f"digit-{label}" / f"{i:03d}.png").write_bytes(png)
    return root


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


def test_a_cross_validated_value_is_the_best_epoch_of_the_folds_mean_curve():
    from searcher.training import TrainResult, cv_score

    def fold(*curve: float) -> TrainResult:
        return TrainResult(model=None, history={"val_loss": list(curve)}, metric="val_loss", direction="minimize")

    # Each fold's own best (0.10 at epoch 1, 0.12 at epoch 3) averages to 0.11, a curve no single
    # epoch reaches; the folds' mean curve is 0.25, 0.20, 0.26: epoch 2, value 0.20.
    folds = [fold(0.10, 0.20, 0.40), fold(0.40, 0.20, 0.12)]
    score = cv_score(folds, "minimize")
    assert (score.epoch, score.values) == (2, (0.20, 0.20)) and score.value == pytest.approx(0.20)
    assert score.value > np.mean([f.best_value for f in folds])  # less optimistic than per-fold bests
    longer = [fold(0.3, 0.2, 0.1), fold(0.3, 0.25)]  # a shorter curve bounds the epochs compared
    assert cv_score(longer, "minimize").epoch == 2
    accuracy = [TrainResult(None, {"val_accuracy": [0.8, 0.9]}, "val_accuracy", "maximize")]
    assert (cv_score(accuracy, "maximize").epoch, cv_score(accuracy, "maximize").value) == (2, 0.9)


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
         r"b\.csv: column 'age', line 11: '4O' is not a number \(9 of its 10 values are\)"),
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


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=3)
    broken = root / "digit-4" / "001.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"^{broken}: not a readable image \(Unknown image file format") as error:
        load_search_data(DataSpec(dataset="images", path=str(root), test_fraction=0.2), split_seed=0)
    assert "{{" not in str(error.value) and "[Op:" not in str(error.value)


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
    made = searcher("init", data.name, "--target", "cultivar", "--test", test_file.name, "-o", "wine.yaml",
                    cwd=tmp_path)
    # 142 training rows: init cross-validates (one validation split would hold 29 rows).
    assert "wrote wine.yaml: mlp on 142 training rows in 5 cross-validation folds / 36 test rows" in made.stdout
    assert "cellar (3)" in made.stdout
    spec_text = (tmp_path / "wine.yaml").read_text()
    assert "test_path: wine-test.csv" in spec_text and "standardized" in spec_text and "cv_folds: 5" in spec_text
    url = f"sqlite:///{tmp_path}/s.db"
    launched = searcher("launch", "wine.yaml", "--workers", "1", "--trials", "3", "--storage", url, cwd=tmp_path)
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

    searcher("report", "wine", "--storage", url, "-o", "report.html", cwd=tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "Cross-validated: every trial trained on each of 5 stratified folds of the 142 training rows" in page
    assert re.search(r"<td class='n'>\d\.\d{4} ± \d\.\d{4}</td>", page)  # the top trials' fold spread

    exported = searcher("export", "wine", "--storage", url, "--ensemble", "2", "-o", "best.yaml", cwd=tmp_path)
    assert "wrote best.yaml" in exported.stdout
    assert "# final model: average of 10 models (2 configs x 5 folds): trials" in (tmp_path / "best.yaml").read_text()
    retrained = searcher("retrain", "best.yaml", "-o", "best.keras", cwd=tmp_path)
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
    out = searcher("launch", "broken.yaml", "--storage", f"sqlite:///{tmp_path}/s.db", cwd=tmp_path, ok=False)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: broken.csv: column 'x', line 12: 'oops' is not a number (10 of its 11 values are); "
        "fix the value, or list the column in data.categorical"]
    assert not (tmp_path / "s.db").exists()


def test_init_writes_a_cnn_spec_for_an_image_folder(tmp_path, monkeypatch):
    from searcher.init import init_spec
    from searcher.sizing import describe as describe_budget
    from searcher.spec import load_spec

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=12)
    made = init_spec(str(root), output=tmp_path / "pngs.yaml", workers=2, minutes=5)
    spec = load_spec(made.path)
    assert spec.model.kind == "cnn" and spec.data.dataset == "images"
    assert (spec.data.color_mode, spec.data.image_size, spec.data.test_fraction) == ("grayscale", (8, 8), 0.2)
    assert 8 <= spec.budget.n_trials <= 300 and spec.baselines[0].name == "plain-adam"
    text = made.path.read_text()
    assert "uint8 inputs 8x8x1, rescaled to [0, 1] (divided by 255)" in text
    sizing = made.sizing
    assert spec.budget.n_trials == sizing.n_trials
    # What the comment says is what the budget takes here: trials x seconds each / workers.
    assert sizing.seconds == pytest.approx(sizing.n_trials * sizing.trial_seconds / 2)
    assert f"# budget: {describe_budget(sizing)}, measured on a middle configuration." in text
    if sizing.note is None:  # the fewest trials worth running fit: the budget fits the minutes asked
        assert sizing.seconds <= 5 * 60 and spec.budget.n_trials >= 12


def small_png_folder(folder: Path) -> Path:
    """40 random 16x16 RGB PNGs in 4 class folders."""
    rng = np.random.default_rng(0)
    root = folder / "pngs"
    for label in range(4):
        (root / f"class-{label}").mkdir(parents=True)
        for i in range(10):
            png = tf.io.encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).numpy()
            (root / f"class-{label}" / f"{i}.png").write_bytes(png)
    return root


def _trials_take(monkeypatch, epoch_s: float) -> None:
    """A measured epoch of ``epoch_s`` seconds, whatever this machine's speed: the shaping is
    decided by these numbers alone."""
    from searcher import init
    from searcher.sizing import TrialCost

    monkeypatch.setattr(init, "_measure_trial", lambda raw, data: TrialCost(epoch_s=epoch_s, first_epoch_extra_s=0.0))


@pytest.mark.parametrize(
    ("epoch_s", "n_trials", "max_epochs", "searched", "note"),
    [
        # 12 trials of 40 epochs (~22 run) take 78 s; 21 epochs fit 48 s (80 % of the minute).
        (0.25, 12, 21, 13, "--minutes 1 cannot hold 12 trials of the full study here (about 1.3 min); shaped to fit: "
                           "21 epochs per trial (was 40)"),
        # 5 epochs of the full space do not fit 12 trials; 8 trials of 6 knobs at 9 epochs (5 run) do.
        (1.0, 8, 9, 6, "--minutes 1 cannot hold 12 trials of the full study here (about 4.6 min); shaped to fit: "
                       "9 epochs per trial (was 40); 6 of 13 knobs searched (learning_rate, dropout, batch_size, "
                       "depth, filters, dense_units)"),
        # Nothing fits: the most shaped study, its fewest trials, and the minutes it needs.
        (20.0, 8, 5, 6, "--minutes 1 is too short here: even shaped (5 epochs per trial (was 40); 6 of 13 knobs "
                        "searched (learning_rate, dropout, batch_size, depth, filters, dense_units)), the fewest "
                        "trials worth running (8) take about 11 min; pass --minutes 14, or --minutes 111 for the "
                        "full study"),
    ],
)
def test_init_shapes_the_study_when_the_minutes_cannot_hold_it(tmp_path, monkeypatch, epoch_s, n_trials, max_epochs,
                                                                searched, note):
    from searcher.init import init_spec
    from searcher.sizing import describe as describe_budget

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    _trials_take(monkeypatch, epoch_s)
    made = init_spec(str(small_png_folder(tmp_path)), output=tmp_path / "pngs.yaml", workers=1, minutes=1)
    spec = made.spec  # loaded back from the file: a valid spec
    assert (spec.budget.n_trials, spec.training.max_epochs, len(spec.search.searched())) == (n_trials, max_epochs,
                                                                                             searched)
    assert made.sizing.note == note
    text = made.path.read_text()
    assert f"# {note}." in text and f"# budget: {describe_budget(made.sizing)}," in text
    assert spec.pruner.n_warmup_steps < spec.training.max_epochs and spec.training.patience < spec.training.max_epochs
    if searched < 13:
        assert spec.sampler.n_startup_trials == 4 and "activation: relu" in text
        assert "# fixed so the budget fits (see the top)" in text


@pytest.mark.slow
def test_a_shaped_spec_launches(tmp_path, monkeypatch):
    """The most shaped spec init writes (fewest knobs, fewest epochs) runs as `searcher init` printed it."""
    from typer.testing import CliRunner

    from searcher.cli import app

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    _trials_take(monkeypatch, 20.0)
    root = small_png_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", str(root), "-o", "pngs.yaml", "--minutes", "1", "--workers", "1"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("wrote pngs.yaml: cnn on ")
    assert lines[1].startswith("--minutes 1 is too short here: even shaped (5 epochs per trial (was 40); ")
    assert lines[2] == "budget 8 trials, about 11 min here with 1 worker(s) (a trial: ~81 s); next: searcher launch pngs.yaml"
    out = searcher("launch", "pngs.yaml", "--workers", "1", "--trials", "2", "--storage", f"sqlite:///{tmp_path}/s.db",
                   cwd=tmp_path)
    assert "pngs: 1 worker(s)" in out.stdout and "budget 2 trials" in out.stdout
    import optuna

    study = optuna.load_study(study_name="pngs", storage=f"sqlite:///{tmp_path}/s.db")
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "COMPLETE"]
    assert study.get_trials()[0].user_attrs["baseline"] == "plain-adam"
    assert all(t.user_attrs["epochs"] <= 5 for t in study.get_trials())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wine.csv"], r"Error: --target: which column holds the class\? wine\.csv has columns alcohol, malic_acid"),
        (["wine.csv", "--target", "kind"], r"Error: --target: wine\.csv has no column 'kind'"),
        (["nothing.csv"], r"Error: nothing\.csv: no such file or folder"),
        (["wine.csv", "--target", "cultivar", "-o", "wine.yaml"], r"Error: -o: wine\.yaml exists; pass --force"),
    ],
)
def test_init_mistakes_are_one_line(tmp_path, args, message):
    wine_csv(tmp_path)
    (tmp_path / "wine.yaml").write_text("keep me\n")
    out = searcher("init", *args, cwd=tmp_path, ok=False)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert re.search(message, out.stderr)
    assert (tmp_path / "wine.yaml").read_text() == "keep me\n"

