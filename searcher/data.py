"""Data sets: load once per process, carve a validation split, keep the test split apart.

A search sees only ``load_search_data`` (train and validation). The test split is
returned by ``load_test_split`` alone, which only ``retrain`` calls: searcher selects
on validation and scores the test set once, at the end.

Downloads go through ``keras.datasets``. On an air-gapped machine, put the standard
files in a folder and pass ``--data-dir`` (or set ``SEARCHER_DATA_DIR``):

- mnist: ``mnist.npz``
- fashion_mnist: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``
- cifar10: ``cifar-10-python.tar.gz`` or the ``cifar-10-batches-py/`` folder inside it
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searcher.errors import DataError
from searcher.spec import DataSpec

DATA_DIR_ENV = "SEARCHER_DATA_DIR"
# digits has no official test split; one fixed split keeps every study's test set the same.
_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 20260101

_FILES = {
    "mnist": ["mnist.npz"],
    "fashion_mnist": [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ],
    "cifar10": ["cifar-10-python.tar.gz (or its cifar-10-batches-py/ folder)"],
}


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class SearchData:
    """What a search may see: training and validation splits, never the test split."""

    name: str
    train: Split
    val: Split
    input_shape: tuple[int, ...]
    n_classes: int


def load_search_data(spec: DataSpec, *, split_seed: int, data_dir: str | Path | None = None) -> SearchData:
    """Load the training data and carve a stratified, seeded validation split from it."""
    train, _ = _load_scaled(spec, data_dir)
    fit, val = split_validation(train, fraction=spec.validation_fraction, seed=split_seed)
    return SearchData(
        name=spec.dataset,
        train=fit,
        val=val,
        input_shape=tuple(train.x.shape[1:]),
        n_classes=int(train.y.max()) + 1,
    )


def load_test_split(spec: DataSpec, *, data_dir: str | Path | None = None) -> Split:
    """The held-out test split, for the final evaluation only."""
    return _load_scaled(spec, data_dir)[1]


def split_validation(train: Split, *, fraction: float, seed: int) -> tuple[Split, Split]:
    """Split ``train`` into (fit, validation), stratified by class and seeded."""
    from sklearn.model_selection import train_test_split

    x_fit, x_val, y_fit, y_val = train_test_split(
        train.x, train.y, test_size=fraction, random_state=seed, stratify=train.y
    )
    return Split(x_fit, y_fit), Split(x_val, y_val)


def to_tf_dataset(split: Split, *, batch_size: int, shuffle_seed: int | None = None):
    """A batched, prefetched ``tf.data.Dataset``; shuffled when a seed is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((split.x, split.y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _load_scaled(spec: DataSpec, data_dir: str | Path | None) -> tuple[Split, Split]:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    x_train, y_train, x_test, y_test = _load_raw(spec, Path(data_dir) if data_dir else None)
    # Scale by the training maximum so inputs are in [0, 1] (uint8 images: 255, digits: 16).
    scale = float(x_train.max()) if x_train.max() > 1 else 1.0
    return (
        Split(_as_images(x_train) / np.float32(scale), y_train.reshape(-1).astype("int32")),
        Split(_as_images(x_test) / np.float32(scale), y_test.reshape(-1).astype("int32")),
    )


def _as_images(x: np.ndarray) -> np.ndarray:
    x = x.astype("float32")
    return x[..., None] if x.ndim == 3 else x


def _load_raw(spec: DataSpec, data_dir: Path | None) -> tuple[np.ndarray, ...]:
    if spec.dataset == "digits":
        return _load_digits()
    if spec.dataset == "npz":
        return _load_npz(Path(spec.path))
    if data_dir is not None:
        return _load_from_dir(spec.dataset, data_dir)
    return _download(spec.dataset)


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    return tuple(
        train_test_split(
            digits.images,
            digits.target,
            test_size=_DIGITS_TEST_FRACTION,
            random_state=_DIGITS_TEST_SEED,
            stratify=digits.target,
        )[i]
        for i in (0, 2, 1, 3)
    )


def _load_npz(path: Path) -> tuple[np.ndarray, ...]:
    if not path.is_file():
        raise DataError(f"data.path: {path} not found (a .npz with x_train, y_train, x_test, y_test)")
    with np.load(path) as arrays:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}")
        return tuple(arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))


def _download(name: str) -> tuple[np.ndarray, ...]:
    import keras

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist, "cifar10": keras.datasets.cifar10}[name]
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as e:  # keras raises a bare Exception on "URL fetch failure"
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"could not download {name} ({reason}); on a machine without internet, put "
            f"{', '.join(_FILES[name])} in a folder and pass --data-dir FOLDER "
            f"(or set {DATA_DIR_ENV})"
        ) from e
    return x_train, y_train, x_test, y_test


def _load_from_dir(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    if not folder.is_dir():
        raise DataError(f"--data-dir: {folder} is not a folder")
    try:
        if name == "mnist":
            return _load_npz(_need(folder, "mnist.npz"))
        if name == "fashion_mnist":
            images = [_read_idx(_need(folder, f), offset=16) for f in _FILES[name][0::2]]
            labels = [_read_idx(_need(folder, f), offset=8) for f in _FILES[name][1::2]]
            return images[0].reshape(-1, 28, 28), labels[0], images[1].reshape(-1, 28, 28), labels[1]
        return _read_cifar10(folder)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, tarfile.TarError) as e:
        raise DataError(f"{folder}: cannot read {name} files ({e})") from e


def _need(folder: Path, filename: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise DataError(f"{path} not found; --data-dir must hold {filename}")
    return path


def _read_idx(path: Path, *, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _read_cifar10(folder: Path) -> tuple[np.ndarray, ...]:
    # Read the batches straight from the archive: the data folder may be read-only and
    # shared by several workers, so nothing is unpacked into it.
    batches = folder / "cifar-10-batches-py"
    archive = folder / "cifar-10-python.tar.gz"
    if batches.is_dir():
        def open_batch(filename: str):
            return open(batches / filename, "rb")
    elif archive.is_file():
        tar = tarfile.open(archive)

        def open_batch(filename: str):
            return tar.extractfile(f"cifar-10-batches-py/{filename}")
    else:
        raise DataError(f"{archive} not found; --data-dir must hold cifar-10-python.tar.gz or cifar-10-batches-py/")

    def read(filename: str) -> tuple[np.ndarray, np.ndarray]:
        with open_batch(filename) as f:
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(batch[b"labels"], np.uint8)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), x_test, y_test
