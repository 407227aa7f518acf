"""Reference models for tables: is a neural network worth it here?

scikit-learn's ``HistGradientBoostingClassifier`` (missing values and categories natively) and a
standardized logistic regression, fitted on the search's own fit split and scored on its
validation split (every fold, averaged, with ``data.cv_folds``) by the study's metric, so they
read beside the best trial. ``retrain`` scores them once on the test split too, averaging the
fold models' probabilities as searcher averages its fold models.

Only scikit-learn: the launcher calls it before any worker starts, without TensorFlow.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from searcher.data import SearchData, Split

log = logging.getLogger(__name__)

NAMES = {"logistic_regression": "logistic regression", "boosted_trees": "boosted trees"}
# HistGradientBoosting bins a categorical column into at most 255 categories; rarer ones count as missing.
_MAX_CATEGORIES = 250


def applies(data: SearchData) -> bool:
    """Tables and 2-D arrays (rows, features): not images."""
    return data.preprocessing.kind == "table" or len(data.input_shape) == 1


def evaluate(data: SearchData, metric: str, *, test: Split | None = None, seed: int = 0) -> dict[str, Any]:
    """``{"metric": ..., name: {metric: validation value, "folds": [...], and with ``test``
    test_accuracy, test_loss, test_auc}}`` for both references."""
    from threadpoolctl import threadpool_limits

    # One thread: on a shared, busy machine OpenMP's spinning threads made these fits 40x slower
    # (breast cancer, 455 rows: 56 s for boosted trees with the default pool, 1.4 s with one thread).
    with threadpool_limits(1):
        return _evaluate(data, metric, test=test, seed=seed)


def _evaluate(data: SearchData, metric: str, *, test: Split | None, seed: int) -> dict[str, Any]:
    folds = [data, *data.folds]
    out: dict[str, Any] = {"metric": metric}
    for name in NAMES:
        values, test_probabilities = [], []
        for fold in folds:
            model, encode = _fit(name, fold, seed=seed)
            values.append(score(metric, fold.val.y, model.predict_proba(encode(fold.val.x)), data.n_classes))
            if test is not None:
                test_probabilities.append(_full_proba(model, encode(test.x), data.n_classes))
        entry: dict[str, Any] = {metric: round(statistics.fmean(values), 6)}
        if len(folds) > 1:
            entry["folds"] = [round(v, 6) for v in values]
        if test is not None:
            p = np.mean(test_probabilities, axis=0)
            entry.update(test_accuracy=score("val_accuracy", test.y, p, data.n_classes),
                         test_loss=score("val_loss", test.y, p, data.n_classes),
                         test_auc=score("val_auc", test.y, p, data.n_classes))
        out[name] = entry
    return out


def score(metric: str, y: np.ndarray, probabilities: np.ndarray, n_classes: int) -> float:
    """``metric`` (val_accuracy, val_loss or val_auc) as a trial computes it on the same rows."""
    from sklearn.metrics import roc_auc_score

    if probabilities.shape[1] != n_classes:
        raise ValueError(f"probabilities for {probabilities.shape[1]} classes, expected {n_classes}")
    if metric == "val_loss":  # cross-entropy clipped as Keras clips it
        return float(-np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0)).mean())
    if metric == "val_auc":
        if n_classes == 2:
            return float(roc_auc_score(y, probabilities[:, 1]))
        return float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=np.arange(n_classes)))
    return float((probabilities.argmax(axis=1) == y).mean())


def describe(references: dict[str, Any] | None) -> str:
    """One line, in the study's metric: ``logistic regression 0.9561, boosted trees 0.9649``."""
    if not references:
        return ""
    metric = references.get("metric", "")
    parts = [f"{label} {references[name][metric]:.4f}" for name, label in NAMES.items()
             if isinstance(references.get(name), dict) and metric in references[name]]
    return ", ".join(parts)


def _full_proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over every class, also when the fit split lacked one."""
    p = model.predict_proba(x)
    if p.shape[1] == n_classes:
        return p
    full = np.zeros((len(x), n_classes))
    full[:, model.classes_] = p
    return full


def _fit(name: str, fold: SearchData, *, seed: int):
    """The fitted reference and the function that turns a split's features into its inputs."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    p = fold.preprocessing
    vocabularies = {column: {v: i for i, v in enumerate(values[:_MAX_CATEGORIES])} for column, values in p.vocabularies}
    if name == "boosted_trees":
        def encode(x):
            return _codes(x, p.numeric, vocabularies)
        categorical = [False] * len(p.numeric) + [True] * len(vocabularies) if p.kind == "table" else None
        model = HistGradientBoostingClassifier(categorical_features=categorical if vocabularies else None,
                                               random_state=seed)
    else:
        def encode(x):
            return _one_hot(x, p.numeric, vocabularies)
        model = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(),
                              LogisticRegression(max_iter=2000))
    model.fit(encode(fold.train.x), fold.train.y)
    return model, encode


def _numeric(x: Any, numeric: tuple[str, ...]) -> np.ndarray:
    if not isinstance(x, dict):
        return np.asarray(x, dtype="float64").reshape(len(x), -1)
    rows = len(next(iter(x.values())))
    return np.stack([x[c].astype("float64") for c in numeric], axis=1) if numeric else np.zeros((rows, 0))


def _codes(x: Any, numeric: tuple[str, ...], vocabularies: dict[str, dict[str, int]]) -> np.ndarray:
    """Numbers as they are (NaN stays missing), categories as codes; an unseen value is missing."""
    columns = [_numeric(x, numeric)]
    for column, lookup in vocabularies.items():
        columns.append(np.asarray([lookup.get(v, math.nan) for v in x[column].astype(str)], dtype="float64")[:, None])
    return np.concatenate(columns, axis=1)


def _one_hot(x: Any, numeric: tuple[str, ...], vocabularies: dict[str, dict[str, int]]) -> np.ndarray:
    columns = [_numeric(x, numeric)]
    for column, lookup in vocabularies.items():
        codes = np.asarray([lookup.get(v, -1) for v in x[column].astype(str)])
        columns.append((codes[:, None] == np.arange(len(lookup))[None, :]).astype("float64"))
    return np.concatenate(columns, axis=1)
