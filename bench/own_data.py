"""Section 9, your own data against a standardized logistic regression (``own_data``).

What a new user does with their own files, measured: for each data set and split seed, the
rows are cut into train and test (``train_test_split``, 20 % test, stratified, that seed),
written as files (CSV with a target column; digits as PNG images in class folders), and
searcher runs on them as the README says: ``searcher init`` (its own spec, budget sized for
``--minutes``), ``launch --workers 2``, ``export`` (``--ensemble 3`` when init chose
cross-validation, as launch suggests), ``retrain``, which scores the model once on the test
files. The baseline is scikit-learn's ``StandardScaler`` + ``LogisticRegression`` fitted on the
same training rows and scored on the same test rows. Neither looks at the test rows to choose
anything. For the tables, the table also has the references searcher fits itself
(``searcher/reference.py``: boosted trees and a standardized logistic regression on the search's
own fit split, or each fold's, averaged), as ``retrain`` scored them on the same test rows.

Data sets (offline, from scikit-learn): ``breast_cancer`` (569 rows, 30 features on scales from
about 0.001 to 4,000, 2 classes), ``wine`` (178 rows, 13 features from about 0.1 to 1,700,
3 classes), ``digits`` (1,797 8x8 images, 10 classes) as PNG files.
"""

from __future__ import annotations

import csv
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searcher.spec import load_spec

from bench._common import Plan, Section, launch, run_python, table

TITLE = "9. Your own data against a standardized logistic regression"
DATASETS = ("breast_cancer", "wine", "digits_png")


@dataclass(frozen=True)
class Outcome:
    dataset: str
    split_seed: int
    train_rows: int
    test_rows: int
    searcher_accuracy: float
    searcher_wrong: int
    searcher_log_loss: float
    linear_accuracy: float
    linear_wrong: int
    linear_log_loss: float
    trees_accuracy: float | None  # searcher's boosted-trees reference on the test rows (tables only)
    reference_linear_accuracy: float | None  # searcher's own logistic-regression reference, likewise
    model: str  # what init chose and export picked, in a few words
    search_s: float


def run(plan: Plan, workdir: Path) -> Section:
    outcomes = [_one(name, seed, plan, workdir / "own_data" / f"{name}-{seed}")
                for name in plan.own_data_sets for seed in plan.own_data_splits]
    rows, figures = [], {}
    for name in plan.own_data_sets:
        mine = [o for o in outcomes if o.dataset == name]
        rows += [[o.dataset, o.split_seed, f"{o.train_rows} / {o.test_rows}", o.model,
                  f"{o.searcher_accuracy:.4f} ({o.searcher_wrong} wrong)",
                  f"{o.linear_accuracy:.4f} ({o.linear_wrong} wrong)",
                  _accuracy(o.reference_linear_accuracy), _accuracy(o.trees_accuracy),
                  f"{100 * (o.searcher_accuracy - o.linear_accuracy):+.1f}",
                  f"{o.searcher_log_loss:.3f} / {o.linear_log_loss:.3f}", f"{o.search_s:.0f}"] for o in mine]
        searcher, linear = _mean([o.searcher_accuracy for o in mine]), _mean([o.linear_accuracy for o in mine])
        figures[name] = {"searcher_test_accuracy": round(searcher, 4), "linear_test_accuracy": round(linear, 4)}
        for key, values in (("reference_linear_test_accuracy", [o.reference_linear_accuracy for o in mine]),
                            ("trees_test_accuracy", [o.trees_accuracy for o in mine])):
            if None not in values:  # images have no references
                figures[name][key] = round(_mean(values), 4)
        if len(mine) > 1:
            rows.append([name, "mean", "", "", f"{searcher:.4f}", f"{linear:.4f}",
                         _accuracy(figures[name].get("reference_linear_test_accuracy")),
                         _accuracy(figures[name].get("trees_test_accuracy")),
                         f"{100 * (searcher - linear):+.1f}", "", ""])
    text = table(["data", "split seed", "train / test rows", "searcher's model", "searcher test accuracy",
                  "logistic regression", "searcher's LR reference", "boosted trees", "difference (points)",
                  "test log loss (searcher / LR)", "search s"], rows)
    text += (f"\nEach row: `searcher init --minutes {plan.own_data_minutes:g}` on the training file, "
             "`launch --workers 2`, `export` (`--ensemble 3` for a cross-validated spec), `retrain`; "
             "the logistic regression is `StandardScaler` + `LogisticRegression(max_iter=5000)` on the "
             "same rows; searcher's LR reference and boosted trees are the references `launch` fits "
             "on the search's own fit split (each fold's, averaged, when cross-validating) and `retrain` "
             "scores on the test rows (`model.metrics.json`; none for images). One test example is "
             "worth 100/test rows points: differences of one or two examples are noise.\n")
    details = {"minutes": plan.own_data_minutes, "splits": list(plan.own_data_splits),
               "runs": [o.__dict__ for o in outcomes]}
    return Section("own_data", TITLE, figures, text, details)


def _one(name: str, seed: int, plan: Plan, folder: Path) -> Outcome:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, classes = _dataset(name)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    folder.mkdir(parents=True, exist_ok=True)
    if name == "digits_png":
        train = _write_images(folder, x_train, y_train, classes, split="train")
        test = _write_images(folder, x_test, y_test, classes, split="test")
        target = []
    else:
        train = _write_csv(folder / f"{name}.csv", x_train, y_train, classes)
        test = _write_csv(folder / f"{name}-test.csv", x_test, y_test, classes)
        target = ["--target", "target"]
    spec_path = folder / f"{name}.yaml"  # the study is named after it
    run_python("searcher", "init", str(train), *target, "--test", str(test), "-o", str(spec_path),
               "--minutes", str(plan.own_data_minutes), "--workers", "2", cwd=folder)
    spec = load_spec(spec_path)
    study = spec.name
    ran = launch(spec_path, study=study, workers=2, trials=spec.budget.n_trials, cwd=folder,
                 timeout=60 * (plan.own_data_minutes * 4 + 10))
    folds = spec.data.cv_folds
    ensemble = ["--ensemble", "3"] if folds else []
    run_python("searcher", "export", study, "--storage", ran.url, *ensemble, "-o", "best.yaml", cwd=folder)
    run_python("searcher", "retrain", "best.yaml", "-o", "best.keras", cwd=folder)
    metrics = json.loads((folder / "best.metrics.json").read_text())
    references = metrics.get("references") or {}

    linear = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train, y_train)
    linear_accuracy = float(linear.score(x_test, y_test))
    model = f"{spec.model.kind}, " + (f"{folds} folds, top 3 x {folds} averaged" if folds else "one split")
    return Outcome(
        dataset=name, split_seed=seed, train_rows=len(y_train), test_rows=len(y_test),
        searcher_accuracy=float(metrics["test_accuracy"]),
        searcher_wrong=round((1 - metrics["test_accuracy"]) * len(y_test)),
        searcher_log_loss=float(metrics["test_loss"]),
        linear_accuracy=linear_accuracy, linear_wrong=round((1 - linear_accuracy) * len(y_test)),
        linear_log_loss=float(log_loss(y_test, linear.predict_proba(x_test))),
        trees_accuracy=_reference_accuracy(references, "boosted_trees"),
        reference_linear_accuracy=_reference_accuracy(references, "logistic_regression"),
        model=model, search_s=ran.wall_s)


def _dataset(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn import datasets

    if name == "digits_png":
        digits = datasets.load_digits()
        # The PNG files hold 0..255; the baseline sees the same numbers the files do.
        images = np.round(digits.images * 255 / 16).astype(np.uint8)
        return images.reshape(len(images), -1).astype(float), digits.target, [f"digit-{i}" for i in range(10)]
    loaded = getattr(datasets, f"load_{name}")()
    return loaded.data, loaded.target, [str(c) for c in loaded.target_names]


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str]) -> Path:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([f"f{i}" for i in range(x.shape[1])] + ["target"])
        out.writerows([*(repr(float(v)) for v in row), classes[label]] for row, label in zip(x, y))
    return path


def _write_images(folder: Path, x: np.ndarray, y: np.ndarray, classes: list[str], *, split: str) -> Path:
    root = folder / f"digits-{split}"
    side = math.isqrt(x.shape[1])
    for i, (row, label) in enumerate(zip(x, y)):
        (root / classes[label]).mkdir(parents=True, exist_ok=True)
        (root / classes[label] / f"{i:04d}.png").write_bytes(_png(row.reshape(side, side).astype(np.uint8)))
    return root


def _png(gray: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG (the harness does not import TensorFlow or Pillow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    height, width = gray.shape
    raw = b"".join(b"\x00" + gray[r].tobytes() for r in range(height))  # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _reference_accuracy(references: dict, name: str) -> float | None:
    entry = references.get(name)
    return float(entry["test_accuracy"]) if isinstance(entry, dict) and "test_accuracy" in entry else None


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
