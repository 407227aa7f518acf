"""Where data comes from: built-in data sets, ``.npz`` arrays, CSV files and image folders.

Each reader returns ``RawData``: features and labels exactly as stored (uint8 images stay
uint8, labels may be strings), with the test part either read from its own file or left
``None`` for ``data.py`` to carve. Nothing here scales, encodes or splits: that is fitted
on the fit split in ``data.py`` and done inside the model.

Downloads go through ``keras.datasets``. On an air-gapped machine, put the standard
files in a folder and pass ``--data-dir`` (or set ``SEARCHER_DATA_DIR``):

- mnist: ``mnist.npz``
- fashion_mnist: ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
  ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``
- cifar10: ``cifar-10-python.tar.gz`` or the ``cifar-10-batches-py/`` folder inside it
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from searcher import table as csv_table
from searcher.errors import DataError
from searcher.spec import DataSpec
from searcher.table import Table

DATA_DIR_ENV = "SEARCHER_DATA_DIR"
CACHE_DIR_ENV = "SEARCHER_CACHE_DIR"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# digits has no official test split; one fixed split keeps every study's test set the same.
_DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED = 0.2, 20260101
_DECODE_CHUNK = 256  # images per task of the decoding pool

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

Features = Union[np.ndarray, dict[str, np.ndarray]]  # an array, or a table's columns by name


@dataclass(frozen=True)
class RawData:
    """Features and labels as stored. ``x_test`` is None when the test part is to be carved."""

    x_train: Features
    y_train: np.ndarray
    x_test: Features | None
    y_test: np.ndarray | None
    table: Table | None = None
    train_source: str = ""  # named in error messages: a file, folder or data set
    test_source: str = ""


def read(spec: DataSpec, *, data_dir: str | Path | None = None) -> RawData:
    """Read the data set ``spec`` names, as stored."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    match spec.dataset:
        case "digits":
            return _read_digits()
        case "npz":
            return _read_npz(Path(spec.path))
        case "csv":
            return _read_csv_files(spec)
        case "images":
            return _read_image_folders(spec)
    if data_dir is not None:
        arrays = _read_from_dir(spec.dataset, Path(data_dir))
    else:
        arrays = _download(spec.dataset)
    return RawData(*arrays, train_source=spec.dataset, test_source=f"{spec.dataset} test split")


# --- arrays ------------------------------------------------------------------------------


def _read_digits() -> RawData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=_DIGITS_TEST_FRACTION, random_state=_DIGITS_TEST_SEED,
        stratify=digits.target,
    )
    return RawData(x_train, y_train, x_test, y_test, train_source="digits", test_source="digits test split")


def _read_npz(path: Path) -> RawData:
    if not path.is_file():
        raise DataError(f"data.path: {path} not found (a .npz with x_train, y_train and x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x_train", "y_train") if k not in arrays]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)}")
            has_test = "x_test" in arrays or "y_test" in arrays
            if has_test and not ("x_test" in arrays and "y_test" in arrays):
                raise DataError(f"{path}: has only one of x_test, y_test; give both, or neither and set "
                                "data.test_fraction")
            loaded = {k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test") if k in arrays}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    return RawData(loaded["x_train"], loaded["y_train"], loaded.get("x_test"), loaded.get("y_test"),
                   train_source=f"{path} x_train", test_source=f"{path} x_test")


# --- CSV -------------------------------------------------------------------------------


def _read_csv_files(spec: DataSpec) -> RawData:
    path = Path(spec.path)
    header = csv_table.read_header(path)
    for name in (spec.target, *spec.features, *spec.categorical):
        if name not in header:
            field = "data.target" if name == spec.target else ("data.features" if name in spec.features
                                                                 else "data.categorical")
            raise DataError(f"{field}: {path} has no column {name!r} (columns: {', '.join(header)})")
    names = spec.features or tuple(h for h in header if h != spec.target)
    if spec.target in names:
        raise DataError(f"data.features: lists the target column {spec.target!r}")
    train = csv_table.scan(path, text_columns=(*spec.categorical, spec.target))
    kinds = csv_table.column_kinds(train, names, declared=spec.categorical)
    x_train, y_train = csv_table.table_columns(train, kinds, spec.target)
    if not spec.test_path:
        return RawData(x_train, y_train, None, None, table=kinds, train_source=str(path))
    test_path = Path(spec.test_path)
    test_header = csv_table.read_header(test_path, field="data.test_path")
    missing = [c for c in (*kinds.columns, spec.target) if c not in test_header]
    if missing:
        raise DataError(f"data.test_path: {test_path} lacks column(s) {', '.join(missing)} that {path.name} has; "
                        "train and test files need the same feature columns")
    test = csv_table.scan(test_path, text_columns=(*kinds.categorical, spec.target), field="data.test_path")
    x_test, y_test = csv_table.table_columns(test, kinds, spec.target)
    return RawData(x_train, y_train, x_test, y_test, table=kinds, train_source=str(path), test_source=str(test_path))


# --- image folders -----------------------------------------------------------------------


def _read_image_folders(spec: DataSpec) -> RawData:
    x_train, y_train = _read_image_folder(Path(spec.path), spec, field="data.path", size=spec.image_size)
    if not spec.test_path:
        return RawData(x_train, y_train, None, None, train_source=spec.path)
    x_test, y_test = _read_image_folder(Path(spec.test_path), spec, field="data.test_path", size=x_train.shape[1:3])
    return RawData(x_train, y_train, x_test, y_test, train_source=spec.path, test_source=spec.test_path)


def list_images(folder: Path, *, field: str = "data.path") -> list[tuple[Path, str]]:
    """(file, class) for every image in ``folder``'s class subfolders, in a stable order."""
    if not folder.is_dir():
        raise DataError(f"{field}: {folder} is not a folder (expected one subfolder per class)")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{field}: {folder} has no class subfolders (expected {folder}/CLASS/image.png)")
    files = []
    for class_dir in classes:
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"{field}: {class_dir} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files.extend((p, class_dir.name) for p in images)
    return files


def _read_image_folder(folder: Path, spec: DataSpec, *, field: str,
                       size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """Every image resized to ``size`` (default: the first image's), as a read-only uint8 array
    memory-mapped from a ``.npy`` cache, so a folder larger than RAM trains, and workers on one
    host share its pages instead of each holding a copy. The cache is keyed by the files' names,
    sizes and times: a changed file makes a new one. Decoded in parallel threads (TensorFlow's
    decoders release the GIL); without a writable cache folder, into memory."""
    files = list_images(folder, field=field)
    channels = 1 if spec.color_mode == "grayscale" else 3
    key = hashlib.sha256(json.dumps([
        [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p, _ in files
    ] + [list(size) if size else "first image's size", channels]).encode()).hexdigest()[:24]
    cache = _cache_dir() / f"images-{key}.npy"
    labels = np.asarray([label for _, label in files], dtype=object)
    if cache.is_file():
        try:
            return np.load(cache, mmap_mode="r"), labels
        except (OSError, ValueError):
            pass  # unreadable: decode again
    height, width = size or _decode_image(files[0][0], height=None, width=None, channels=channels).shape[:2]
    shape = (len(files), height, width, channels)
    partial = cache.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        x = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
    except OSError:
        partial, x = None, np.empty(shape, dtype=np.uint8)  # a read-only home: every worker decodes for itself
    try:
        _decode_all([p for p, _ in files], x, height=height, width=width, channels=channels)
    except BaseException:
        if partial is not None:
            del x
            partial.unlink(missing_ok=True)
        raise
    if partial is None:
        return x, labels
    x.flush()
    del x
    os.replace(partial, cache)  # atomic: a reader sees the whole file or none
    return np.load(cache, mmap_mode="r"), labels


def _decode_all(paths: list[Path], out: np.ndarray, *, height: int, width: int, channels: int) -> None:
    """Decode ``paths`` into ``out``'s rows, in chunks on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    def decode(start: int) -> None:
        for i in range(start, min(start + _DECODE_CHUNK, len(paths))):
            out[i] = _decode_image(paths[i], height=height, width=width, channels=channels)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for done in pool.map(decode, range(0, len(paths), _DECODE_CHUNK)):
            pass  # map re-raises a chunk's error (a DataError naming the file) here


def peek_image(path: Path) -> tuple[int, int, int]:
    """(height, width, channels) of one image as stored."""
    return tuple(_decode_image(path, height=None, width=None, channels=0).shape)


def _decode_image(path: Path, *, height: int | None, width: int | None, channels: int) -> np.ndarray:
    from searcher.devices import import_tensorflow

    tf = import_tensorflow()  # the launcher decodes too: without TensorFlow's start-up lines

    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnknownError) as e:
        # TensorFlow adds the op's internal names: "{{function_node ...}}", " [Op:DecodeImage] name:".
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", str(getattr(e, "message", e)).splitlines()[0]).strip(" .")
        raise DataError(f"{path}: not a readable image ({reason})") from None
    if height and tuple(image.shape[:2]) != (height, width):
        image = tf.image.resize(image, (height, width), antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return image.numpy()


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "searcher")


# --- the downloadable data sets ------------------------------------------------------------


def _download(name: str) -> tuple[np.ndarray, ...]:
    from searcher.devices import import_tensorflow

    import_tensorflow()  # before Keras, which imports it: without TensorFlow's start-up lines
    import keras

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
              "cifar10": keras.datasets.cifar10}[name]
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


def _read_from_dir(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    if not folder.is_dir():
        raise DataError(f"--data-dir: {folder} is not a folder")
    try:
        if name == "mnist":
            raw = _read_npz(_need(folder, "mnist.npz"))
            return raw.x_train, raw.y_train, raw.x_test, raw.y_test
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

    def read_batch(filename: str) -> tuple[np.ndarray, np.ndarray]:
        with open_batch(filename) as f:
            batch = pickle.load(f, encoding="bytes")
        x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(batch[b"labels"], np.uint8)

    train = [read_batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read_batch("test_batch")
    return np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), x_test, y_test
