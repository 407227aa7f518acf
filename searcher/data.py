"""Data for a search: labels encoded, bad data refused, a validation split carved, the
preprocessing fitted on the fit split, and the test split kept apart.

A search sees only ``load_search_data`` (the fit and validation splits, or with
``data.cv_folds`` one such pair per fold). The test split
is returned by ``load_test_split`` alone, which only ``retrain`` calls: searcher selects on
validation and scores the test set once, at the end.

Inputs stay raw (uint8 images stay uint8). What turns them into network inputs —
rescaling, per-feature standardization, imputation, one-hot categories — is fitted here on
the fit split only and described by ``Preprocessing``; ``models.build_model`` makes it the
model's first layers, so a saved model takes the same raw inputs a user has.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from searcher import sources
from searcher.errors import DataError
from searcher.sources import DATA_DIR_ENV, Features, RawData, Table  # noqa: F401  (DATA_DIR_ENV: CLI help)
from searcher.spec import DataSpec
from searcher.table import MISSING_TEXT

DEFAULT_TEST_FRACTION = 0.2
# One fixed seed for carving a test split: every study on the same file scores the same test set.
_TEST_SEED = 20260101
# data.search_rows: the search's validation split keeps at least this many rows; below it,
# accuracy moves in steps of 0.1 point or more and trials tie or swap by luck.
SEARCH_VALIDATION_FLOOR = 1_000


class Rows:
    """Some rows of a memory-mapped array (an image folder's cache), read only when used:
    splitting a folder larger than RAM into fit, validation and test copies nothing.
    ``np.asarray`` reads the rows into memory; ``to_tf_dataset`` streams them in batches."""

    def __init__(self, base: np.ndarray, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            return self.base[self.index[index]]
        return Rows(self.base, self.index[index])

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at ``positions`` (of this selection), read in file order and returned in the asked order."""
        rows = self.index[positions]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.base.shape[1:]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(np.arange(len(self.index)))
        return out if dtype is None else out.astype(dtype)


@dataclass(frozen=True)
class Split:
    x: Features
    y: np.ndarray  # class indices 0..K-1

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Split:
        if isinstance(self.x, dict):
            return Split({name: column[index] for name, column in self.x.items()}, self.y[index])
        if isinstance(self.x, np.memmap):
            return Split(Rows(self.x, index), self.y[index])
        return Split(self.x[index], self.y[index])


@dataclass(frozen=True)
class Preprocessing:
    """The model's first layers, fitted on the fit split.

    ``mode`` applies to the array, or to a table's numeric columns: ``rescale`` divides by
    ``scale`` (arrays) or maps each column's fit-split range to [0, 1] (tables, through
    ``mean``/``variance``), ``standardize`` subtracts ``mean`` and divides by the standard
    deviation per feature (per channel for images). ``fill`` replaces NaN per feature
    (``data.missing``: the fit split's mean or most frequent value). A table's categorical
    columns are one-hot encoded over the values of the fit split; a value never seen there
    gets its own "other" slot, and a missing cell its own "missing" slot, or with
    ``category_fill`` (``data.missing: most_frequent``) the slot of that column's value.
    """

    kind: Literal["array", "table"]
    shape: tuple[int, ...]  # one example's shape; a table: (number of numeric columns,)
    dtype: str
    mode: Literal["rescale", "standardize", "none"]
    scale: float = 1.0
    mean: tuple[float, ...] = ()
    variance: tuple[float, ...] = ()
    fill: tuple[float, ...] = ()
    numeric: tuple[str, ...] = ()
    vocabularies: tuple[tuple[str, tuple[str, ...]], ...] = ()
    category_fill: tuple[str, ...] = ()  # one value per categorical column; empty: "missing" is a slot
    fill_with: Literal["mean", "most_frequent"] = "mean"

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> Preprocessing:
        """Inputs of ``shape`` fed to the network as they are (for models built without data)."""
        return cls(kind="array", shape=tuple(shape), dtype="float32", mode="none")

    def describe(self) -> str:
        """One line for logs, the report and ``init``'s comments."""
        if self.kind == "table":
            parts = []
            if self.numeric:
                how = {"standardize": "standardized (fit-split mean and variance)",
                       "rescale": "rescaled to [0, 1] (fit-split min and max)", "none": "as they are"}[self.mode]
                parts.append(f"{len(self.numeric)} numeric column(s) {how}")
            if self.vocabularies:
                sizes = ", ".join(f"{name} ({len(values)})" for name, values in self.vocabularies)
                parts.append(f"{len(self.vocabularies)} categorical column(s) one-hot: {sizes}")
                parts.append("missing categories imputed with the fit split's most frequent" if self.category_fill
                             else "a missing category is a category of its own")
            if self.fill:
                parts.append(f"missing numbers imputed with fit-split {self._fill_name}")
            return "; ".join(parts)
        shape = "x".join(map(str, self.shape))
        how = {"rescale": f"rescaled to [0, 1] (divided by {self.scale:g})",
               "standardize": f"standardized per {'channel' if len(self.shape) == 3 else 'feature'} "
                              "(fit-split mean and variance)",
               "none": "fed as they are"}[self.mode]
        fill = f"; missing values imputed with fit-split {self._fill_name}" if self.fill else ""
        return f"{self.dtype} inputs {shape}, {how}{fill}"

    @property
    def _fill_name(self) -> str:
        return "means" if self.fill_with == "mean" else "most frequent values"


@dataclass(frozen=True)
class SearchData:
    """What a search may see: the fit and validation splits, never the test split."""

    name: str
    train: Split  # the fit split
    val: Split
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    test_rows: int = 0
    # data.cv_folds: folds 2..K, each with its own fit split, validation fold and preprocessing;
    # this object is fold 1.
    folds: tuple[SearchData, ...] = ()
    # data.search_rows: the (fit, validation) rows the search's sample was drawn from.
    whole_rows: tuple[int, int] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.preprocessing.shape

    def summary(self) -> dict[str, Any]:
        """Rows, features, classes with their counts and the preprocessing: for the report."""
        p = self.preprocessing
        fit, val = np.bincount(self.train.y, minlength=self.n_classes), np.bincount(self.val.y, minlength=self.n_classes)
        features: dict[str, Any] = {"shape": list(p.shape), "dtype": p.dtype}
        if p.kind == "table":
            features = {"numeric": list(p.numeric), "categorical": [name for name, _ in p.vocabularies]}
        return {
            "dataset": self.name,
            "rows": {"fit": len(self.train), "validation": len(self.val), "test": self.test_rows},
            "features": features,
            "classes": [{"name": n, "fit": int(a), "validation": int(b)}
                        for n, a, b in zip(self.class_names, fit, val)],
            "preprocessing": p.describe(),
            **({"cv_folds": len(self.folds) + 1} if self.folds else {}),  # rows and classes above: fold 1's
            **({"whole_rows": {"fit": self.whole_rows[0], "validation": self.whole_rows[1]}}
               if self.whole_rows else {}),  # rows above: the search's sample of these
        }


def load_search_data(spec: DataSpec, *, split_seed: int, data_dir: str | Path | None = None,
                     whole: bool = False) -> SearchData:
    """Load the training data, carve a stratified, seeded validation split, fit the preprocessing.

    With ``data.search_rows``, the fit and validation splits are the search's stratified
    sample of them (``search_sample``), unless ``whole``: what ``retrain`` trains on.
    """
    train, test, class_names, table = _load_splits(spec, data_dir)
    whole_rows = None
    if spec.cv_folds:
        splits = cross_validation_folds(train, k=spec.cv_folds, seed=split_seed, class_names=class_names,
                                        source=_train_source(spec))
    else:
        splits = [split_validation(train, fraction=spec.validation_fraction, seed=split_seed,
                                   class_names=class_names, source=_train_source(spec))]
        if spec.search_rows and not whole:
            whole_rows = (len(splits[0][0]), len(splits[0][1]))
            splits = [search_sample(*splits[0], rows=spec.search_rows, seed=split_seed, class_names=class_names,
                                    source=_train_source(spec))]
    first, *others = [SearchData(name=spec.dataset, train=fit, val=val, preprocessing=fit_preprocessing(spec, fit, table),
                                 class_names=class_names, test_rows=len(test), whole_rows=whole_rows)
                      for fit, val in splits]
    return dataclasses.replace(first, folds=tuple(others))


def load_test_split(spec: DataSpec, *, data_dir: str | Path | None = None) -> Split:
    """The held-out test split, labels encoded as in training, for the final evaluation only."""
    return _load_splits(spec, data_dir)[1]


def split_validation(train: Split, *, fraction: float, seed: int, class_names: tuple[str, ...] = (),
                     source: str = "training data") -> tuple[Split, Split]:
    """Split ``train`` into (fit, validation), stratified by class and seeded."""
    return _stratified(train, fraction=fraction, seed=seed, what="validation", class_names=class_names,
                       source=source, fix="raise data.validation_fraction, or add examples")


def search_sizes(fit_rows: int, val_rows: int, rows: int) -> tuple[int, int]:
    """The (fit, validation) rows a search samples with ``data.search_rows: rows``: validation
    shrinks in proportion but keeps SEARCH_VALIDATION_FLOOR rows, or all it has."""
    val = max(SEARCH_VALIDATION_FLOOR, round(val_rows * rows / max(1, fit_rows)))
    return min(rows, fit_rows), min(val_rows, val)


def search_sample(fit: Split, val: Split, *, rows: int, seed: int, class_names: tuple[str, ...] = (),
                  source: str = "training data") -> tuple[Split, Split]:
    """The search's stratified, seeded sample of ``rows`` fit rows and its validation rows
    (``search_sizes``); the rows keep their file order."""
    if rows >= len(fit):
        raise DataError(f"data.search_rows: must be fewer than the fit split's {len(fit)} rows ({source}), got "
                        f"{rows}; lower it, or drop it to search on them all")
    n_fit, n_val = search_sizes(len(fit), len(val), rows)
    counts = np.bincount(fit.y, minlength=len(class_names) or None)
    take = _stratified_counts(counts, n_fit)
    left_out = np.flatnonzero((take == 0) & (counts > 0))
    if len(left_out):
        k = int(left_out[np.argmin(counts[left_out])])
        name = class_names[k] if class_names else str(k)
        raise DataError(f"data.search_rows: {rows} rows leave out class {name!r} ({counts[k]} of the fit split's "
                        f"{len(fit)} rows); raise it to at least {math.ceil(len(fit) / counts[k])}")
    sampled_val = val if n_val == len(val) else val.take(_sample(val.y, n_val, seed))
    return fit.take(_sample(fit.y, n_fit, seed)), sampled_val


def _stratified_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """``n`` split over classes in proportion to ``counts`` (largest remainders round up)."""
    share = counts * n / counts.sum()
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[: n - int(take.sum())]] += 1
    return take


def _sample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Positions of a stratified, seeded sample of ``n`` of the labels ``y``, in ascending order."""
    rng = np.random.default_rng(seed)
    take = _stratified_counts(np.bincount(y), n)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == k))[:t] for k, t in enumerate(take)]))


def cross_validation_folds(train: Split, *, k: int, seed: int, class_names: tuple[str, ...] = (),
                           source: str = "training data") -> list[tuple[Split, Split]]:
    """``k`` stratified, seeded (fit, validation) pairs; each row is in exactly one validation fold."""
    from sklearn.model_selection import StratifiedKFold

    name, count = _rarest_class(train, class_names)
    if count < k:
        raise DataError(f"{source}: class {name!r} has {count} example(s); {k}-fold cross-validation "
                        f"needs at least {k} of every class (lower data.cv_folds, or add examples)")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(train)), train.y)
    return [(train.take(fit), train.take(val)) for fit, val in folds]


def class_weights(split: Split, n_classes: int) -> np.ndarray:
    """Per-class loss weights that make every class count as much ("balanced", as in scikit-learn)."""
    counts = np.bincount(split.y, minlength=n_classes).astype("float64")
    return np.where(counts > 0, len(split) / (n_classes * np.maximum(counts, 1)), 0.0).astype("float32")


def to_tf_dataset(split: Split, *, batch_size: int, shuffle_seed: int | None = None,
                  weights: np.ndarray | None = None):
    """A batched, prefetched ``tf.data.Dataset``; shuffled when a seed is given; with
    per-example weights (``weights[class]``) when given."""
    import tensorflow as tf

    if isinstance(split.x, np.memmap):
        split = Split(Rows(split.x, np.arange(len(split.x))), split.y)
    if isinstance(split.x, Rows):
        return _streamed(split, batch_size=batch_size, shuffle_seed=shuffle_seed, weights=weights)
    if isinstance(split.x, dict):
        return _table_dataset(split, batch_size=batch_size, shuffle_seed=shuffle_seed, weights=weights)
    parts = (split.x, split.y) if weights is None else (split.x, split.y, weights[split.y])
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _streamed(split: Split, *, batch_size: int, shuffle_seed: int | None, weights: np.ndarray | None):
    """``to_tf_dataset`` for rows of a memory-mapped array: positions are shuffled and batched,
    and each batch's rows are read from the file in parallel map calls, ``prefetch`` keeping the
    next batches ready, so only a few batches are in memory at a time."""
    import tensorflow as tf

    rows: Rows = split.x
    parts = (np.arange(len(split)), split.y) if weights is None else (np.arange(len(split)), split.y, weights[split.y])
    ds = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    shape = (None, *rows.shape[1:])

    def read(positions, *rest):
        x = tf.numpy_function(rows.read, [positions], tf.as_dtype(rows.dtype), stateful=False)
        x.set_shape(shape)
        return (x, *rest)

    return ds.batch(batch_size).map(read, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _table_dataset(split: Split, *, batch_size: int, shuffle_seed: int | None, weights: np.ndarray | None):
    """A table's batches gathered from whole-column tensors by (shuffled) row indices: shuffling
    rows of many columns one element at a time cost minutes per epoch and gigabytes of
    buffer at a million rows; shuffling the indices costs neither."""
    import tensorflow as tf

    columns = {input_name(name): tf.constant(_column_input(column)) for name, column in split.x.items()}
    parts = (columns, tf.constant(split.y)) + ((tf.constant(weights[split.y]),) if weights is not None else ())
    rows = tf.data.Dataset.range(len(split))
    if shuffle_seed is not None:
        rows = rows.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    gather = lambda index: tf.nest.map_structure(lambda part: tf.gather(part, index), parts)  # noqa: E731
    return rows.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def check_search_data(spec: Any, *, split_seed: int, data_dir: str | Path | None = None) -> dict[str, Any]:
    """Load and check a study's data as its workers will (``spec``: a StudySpec); its summary.

    The launcher calls it before it stores anything, so bad data fails in one line with
    an empty storage.
    """
    data = load_search_data(spec.data, split_seed=split_seed, data_dir=data_dir)
    check_model_kind(data, spec.model.kind, source=_train_source(spec.data))
    return data.summary()


def describe_data(summary: dict[str, Any]) -> str:
    """A ``SearchData.summary`` in one line, e.g. for the launch log."""
    rows = summary["rows"]
    classes = summary["classes"]
    counts = ", ".join(f"{c['name']} {c['fit'] + c['validation']}" for c in classes[:6])
    more = f", ... ({len(classes) - 6} more)" if len(classes) > 6 else ""
    split = f"{rows['fit']} fit / {rows['validation']} validation"
    if whole := summary.get("whole_rows"):
        split = (f"search on {rows['fit']} of {whole['fit']} fit / {rows['validation']} of {whole['validation']} "
                 "validation")
    if summary.get("cv_folds"):
        split = f"{rows['fit'] + rows['validation']} training rows in {summary['cv_folds']} cross-validation folds"
    return (f"{split} / {rows['test']} test rows; "
            f"{summary['preprocessing']}; {len(classes)} classes ({counts}{more})")


def check_model_kind(data: SearchData, kind: str, *, source: str) -> None:
    """A CNN needs images: (rows, height, width[, channels]) arrays."""
    if kind == "cnn" and (data.preprocessing.kind == "table" or len(data.input_shape) != 3):
        what = "a table" if data.preprocessing.kind == "table" else f"examples of shape {data.input_shape}"
        raise DataError(f"model.kind: cnn needs images (rows, height, width[, channels]); {source} has {what}: use mlp")


def input_name(column: str) -> str:
    """The model input a table column feeds: its name, where Keras allows it (no "/")."""
    return column.replace("/", "_")


def _column_input(column: np.ndarray) -> np.ndarray:
    """One table column as a model input: (rows, 1), strings as str (tf.string)."""
    return (column.astype(str) if column.dtype == object else column).reshape(-1, 1)


# --- reading, checking, encoding -----------------------------------------------------------


def _train_source(spec: DataSpec) -> str:
    return spec.path or spec.dataset


def _load_splits(spec: DataSpec, data_dir: str | Path | None) -> tuple[Split, Split, tuple[str, ...], Table | None]:
    """The checked, encoded search and test splits of ``spec``'s data, read once per process."""
    return _load_splits_cached(spec, str(data_dir) if data_dir else None)


@functools.lru_cache(maxsize=4)
def _load_splits_cached(spec: DataSpec, data_dir: str | None) -> tuple[Split, Split, tuple[str, ...], Table | None]:
    # Once per process: retrain reads the search split and then the test split of one file.
    return _check_and_split(spec, sources.read(spec, data_dir=data_dir))


def _check_and_split(spec: DataSpec, raw: RawData) -> tuple[Split, Split, tuple[str, ...], Table | None]:
    """Check ``raw``'s features and labels, encode the labels, and hold the test split apart."""
    x_train = _check_features(raw.x_train, raw.train_source, missing=spec.missing, table=raw.table)
    y_train = _labels(raw.y_train, len_x=_rows(x_train), source=raw.train_source)
    if raw.x_test is None:
        class_names, codes = _encode(y_train, source=raw.train_source)
        fraction = spec.test_fraction or DEFAULT_TEST_FRACTION
        rest, test = _stratified(Split(x_train, codes), fraction=fraction, seed=_TEST_SEED, what="test",
                                 class_names=class_names, source=raw.train_source,
                                 fix="lower data.test_fraction, give data.test_path, or add examples")
        return rest, test, class_names, raw.table
    if spec.test_fraction:
        raise DataError(f"data.test_fraction: {raw.test_source} already holds a test split; drop test_fraction")
    x_test = _check_features(raw.x_test, raw.test_source, missing=spec.missing, table=raw.table)
    if raw.table is None and x_test.shape[1:] != x_train.shape[1:]:
        raise DataError(f"{raw.test_source}: examples have shape {x_test.shape[1:]}, but {raw.train_source} "
                        f"has {x_train.shape[1:]}; train and test need the same features")
    y_test = _labels(raw.y_test, len_x=_rows(x_test), source=raw.test_source)
    class_names, codes = _encode(y_train, source=raw.train_source)
    unseen = Counter(str(v) for v in _names(y_test) if str(v) not in set(class_names))
    if unseen:
        name, count = unseen.most_common(1)[0]
        more = f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""
        raise DataError(f"{raw.test_source}: class {name!r} ({count} example(s)){more} never occurs in "
                        f"{raw.train_source}; a model cannot predict a class it was not trained on")
    lookup = {name: i for i, name in enumerate(class_names)}
    test_codes = np.asarray([lookup[str(v)] for v in _names(y_test)], dtype="int32")
    return Split(x_train, codes), Split(x_test, test_codes), class_names, raw.table


def _rows(x: Features) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _check_features(x: Features, source: str, *, missing: str, table: Table | None) -> Features:
    """Refuse what would silently train on garbage; images get a channel axis; float64 -> float32."""
    if isinstance(x, dict):
        for name in table.numeric:
            _check_finite(x[name], f"{source}: column {name!r}", missing=missing, rows_are_lines=True)
        if not _rows(x):
            raise DataError(f"{source}: has no rows")
        return x
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        kind = getattr(x, "dtype", type(x).__name__)
        raise DataError(f"{source}: features must be numbers (an integer or float array), got {kind}")
    if x.ndim < 2 or len(x) == 0:
        raise DataError(f"{source}: expected an array of examples (rows, features...), got shape {x.shape}")
    if x.dtype.kind == "f":
        _check_finite(x, source, missing=missing, rows_are_lines=False)
    if x.ndim == 3:  # (rows, height, width): grayscale images get their channel axis
        x = x[..., None]
    if x.dtype == np.uint8:
        return x  # images stay compact (a memory map stays one); the model rescales them
    return x.astype("float32")


def _check_finite(x: np.ndarray, where: str, *, missing: str, rows_are_lines: bool) -> None:
    infinite = np.isinf(x)
    if infinite.any():
        row = int(np.argwhere(infinite)[0][0])
        raise DataError(f"{where}: {int(infinite.sum())} infinite value(s), the first in {_row_name(row, rows_are_lines)}; "
                        "replace them (data.missing imputes only missing values)")
    nan = np.isnan(x)
    if nan.any() and missing == "error":
        first = np.argwhere(nan)[0]
        feature = f", feature {int(first[1])}" if x.ndim > 1 else ""
        raise DataError(f"{where}: {int(nan.sum())} missing (NaN) value(s), the first in "
                        f"{_row_name(int(first[0]), rows_are_lines)}{feature}; set data.missing: mean (or most_frequent) to "
                        "impute them from the fit split, or fill them in")


def _row_name(row: int, rows_are_lines: bool) -> str:
    return f"line {row + 2}" if rows_are_lines else f"row {row}"  # a CSV's data starts on line 2


def _labels(y: np.ndarray, *, len_x: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be one class per example (shape (rows,)), got shape {y.shape}")
    if len(y) != len_x:
        raise DataError(f"{source}: {len_x} examples but {len(y)} labels")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            bad = y[~np.isfinite(y) | (y != np.round(y))][0]
            raise DataError(f"{source}: labels must be classes (integers or strings), got {bad}")
        y = y.astype("int64")
    return y


def _names(y: np.ndarray) -> list[str]:
    return [str(v) for v in y]


def _encode(y: np.ndarray, *, source: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names in a stable order (numbers numerically) and each label's index 0..K-1."""
    names = _names(y)
    distinct = set(names)
    try:
        ordered = sorted(distinct, key=lambda v: (0, float(v)))
    except ValueError:
        ordered = sorted(distinct)
    if len(ordered) < 2:
        raise DataError(f"{source}: all labels are {ordered[0]!r}; a classifier needs at least 2 classes")
    lookup = {name: i for i, name in enumerate(ordered)}
    return tuple(ordered), np.asarray([lookup[v] for v in names], dtype="int32")


def _rarest_class(split: Split, class_names: tuple[str, ...]) -> tuple[str, int]:
    """The class with the fewest examples in ``split`` (a class of ``class_names`` absent from it: 0)."""
    counts = np.bincount(split.y, minlength=len(class_names) or None)
    k = int(np.argmin(counts))
    return (class_names[k] if class_names else str(k)), int(counts[k])


def _stratified(split: Split, *, fraction: float, seed: int, what: str, class_names: tuple[str, ...], source: str,
                fix: str) -> tuple[Split, Split]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(split.y, minlength=len(class_names) or None)
    name, count = _rarest_class(split, class_names)
    if count < 2:
        raise DataError(f"{source}: class {name!r} has {count} example(s); a stratified {what} split "
                        f"needs at least 2 of every class ({fix})")
    n_small = math.ceil(fraction * len(split))
    if n_small < len(counts) or len(split) - n_small < len(counts):
        raise DataError(f"{source}: a {what} split of {fraction:g} of {len(split)} examples cannot hold one "
                        f"example of each of the {len(counts)} classes ({fix})")
    keep, held = train_test_split(np.arange(len(split)), test_size=fraction, random_state=seed, stratify=split.y)
    return split.take(keep), split.take(held)


# --- preprocessing, fitted on the fit split -------------------------------------------------


def fit_preprocessing(spec: DataSpec, fit: Split, table: Table | None) -> Preprocessing:
    """The first layers' settings, from the fit split alone (never validation or test)."""
    if table is not None:
        return _fit_table(spec, fit, table)
    x = fit.x
    mode = spec.preprocess
    if mode == "auto":
        mode = "rescale" if x.ndim >= 4 or x.dtype == np.uint8 else "standardize"
    # Fitted whenever imputation is asked for: a NaN may first appear in validation, test or at prediction.
    fill = tuple(_per_feature(_FILLS[spec.missing], x)) if spec.missing != "error" else ()
    common = {"kind": "array", "shape": tuple(x.shape[1:]), "dtype": str(x.dtype), "mode": mode, "fill": fill,
              "fill_with": spec.missing if fill else "mean"}
    if mode == "rescale":
        largest = 255.0 if x.dtype == np.uint8 else float(np.nanmax(np.abs(x)))
        return Preprocessing(**common, scale=largest if largest > 0 else 1.0)
    if mode == "standardize":
        return Preprocessing(**common, mean=tuple(_per_feature(np.nanmean, x)),
                             variance=tuple(_per_feature(np.nanvar, x)))
    return Preprocessing(**common)


def _per_feature(stat, x: np.ndarray) -> list[float]:
    """``stat`` over every axis but the last: per feature, or per channel of images."""
    x = np.asarray(x)  # rows of an image cache: read (only a non-default preprocess of images needs this)
    values = stat(x.reshape(-1, x.shape[-1]).astype("float64"), axis=0)
    return [float(v) if np.isfinite(v) else 0.0 for v in values]


def _nan_most_frequent(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per column, the most frequent value that is not NaN (the smallest of a tie); NaN for none."""
    out = np.full(x.shape[1], np.nan)
    for j in range(x.shape[1]):
        values, counts = np.unique(x[:, j][~np.isnan(x[:, j])], return_counts=True)
        if len(values):
            out[j] = values[np.argmax(counts)]
    return out


_FILLS = {"mean": np.nanmean, "most_frequent": _nan_most_frequent}


def _most_frequent_category(column: np.ndarray) -> str:
    values, counts = np.unique(column[column != MISSING_TEXT].astype(str), return_counts=True)
    return str(values[np.argmax(counts)]) if len(values) else MISSING_TEXT


def _fit_table(spec: DataSpec, fit: Split, table: Table) -> Preprocessing:
    numeric = np.stack([fit.x[name] for name in table.numeric], axis=1) if table.numeric else np.zeros((len(fit), 0))
    mode = "standardize" if spec.preprocess == "auto" else spec.preprocess
    fill = tuple(_per_feature(_FILLS[spec.missing], numeric)) if table.numeric and spec.missing != "error" else ()
    mean, variance = (), ()
    if table.numeric and mode == "standardize":
        mean, variance = tuple(_per_feature(np.nanmean, numeric)), tuple(_per_feature(np.nanvar, numeric))
    elif table.numeric and mode == "rescale":
        low, high = _per_feature(np.nanmin, numeric), _per_feature(np.nanmax, numeric)
        mean, variance = tuple(low), tuple((h - lo) ** 2 for lo, h in zip(low, high))
    vocabularies = tuple((name, tuple(sorted(set(fit.x[name].astype(str)) - {MISSING_TEXT})))
                         for name in table.categorical)
    category_fill = (tuple(_most_frequent_category(fit.x[name]) for name in table.categorical)
                     if spec.missing == "most_frequent" else ())
    names = [input_name(c) for c in table.columns]
    if len(set(names)) < len(names):
        clash = next(c for c in table.columns if names.count(input_name(c)) > 1)
        raise DataError(f"data.features: columns {clash!r} and another both become model input {input_name(clash)!r} "
                        "(Keras input names cannot hold '/'); rename one")
    return Preprocessing(kind="table", shape=(len(table.numeric),), dtype="float32", mode=mode, mean=mean,
                         variance=variance, fill=fill, numeric=table.numeric, vocabularies=vocabularies,
                         category_fill=category_fill, fill_with=spec.missing if fill else "mean")
