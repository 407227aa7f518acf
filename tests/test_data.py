"""Data: validation carved from train, test kept apart, offline downloads fail in one line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cli_process import HANG_GUARD
from searcher.data import describe_data, load_search_data, load_test_split
from searcher.errors import DataError
from searcher.spec import DataSpec


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


def test_digits_splits_are_disjoint_and_raw():
    spec = DataSpec(dataset="digits", validation_fraction=0.2)
    data = load_search_data(spec, split_seed=3)
    test = load_test_split(spec)
    assert data.input_shape == (8, 8, 1) and data.n_classes == 10
    assert len(data.train) + len(data.val) + len(test) == 1797
    assert abs(len(data.val) / (len(data.train) + len(data.val)) - 0.2) < 0.01
    # digits repeats a few images; every image that occurs once must land in exactly one split
    from sklearn.datasets import load_digits

    everything = load_digits().images.astype(np.float32)[..., None]
    rows, counts = np.unique(everything.reshape(len(everything), -1), axis=0, return_counts=True)
    unique = {r.tobytes() for r in rows[counts == 1]}
    train_rows, val_rows, test_rows = (_rows(s.x) & unique for s in (data.train, data.val, test))
    assert len(train_rows) + len(val_rows) + len(test_rows) == len(unique)
    assert not train_rows & val_rows and not train_rows & test_rows and not val_rows & test_rows
    for split in (data.train, data.val, test):  # raw pixel values 0..16: the model rescales them
        assert split.x.min() == 0.0 and split.x.max() == 16.0 and split.x.dtype == np.float32
    assert data.preprocessing.mode == "rescale" and data.preprocessing.scale == 16.0


def test_validation_split_is_stratified_and_seeded():
    spec = DataSpec(dataset="digits", validation_fraction=0.25)
    a, b, c = (load_search_data(spec, split_seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.val.y, b.val.y) and np.array_equal(a.val.x, b.val.x)
    assert not np.array_equal(a.val.x, c.val.x)
    counts = np.bincount(a.val.y, minlength=10)
    assert counts.min() >= 0.8 * counts.max()


def test_test_split_does_not_depend_on_the_study_seed():
    spec = DataSpec(dataset="digits")
    assert np.array_equal(load_test_split(spec).x, load_test_split(spec).x)


def test_search_rows_sample_the_fit_split_for_the_search_and_leave_the_rest_whole():
    whole_spec = DataSpec(dataset="digits", validation_fraction=0.5)
    spec = DataSpec(dataset="digits", validation_fraction=0.5, search_rows=300)
    whole = load_search_data(whole_spec, split_seed=1)
    a, b, c = (load_search_data(spec, split_seed=s) for s in (1, 1, 2))
    # digits: 1437 training rows, 718 fit / 719 validation; the search gets 300 fit rows, and the
    # validation split stays whole: shrunk in proportion it would fall below 1,000 rows.
    assert (len(whole.train), len(whole.val)) == (718, 719)
    assert (len(a.train), len(a.val)) == (300, 719) and np.array_equal(a.val.y, whole.val.y)
    assert _rows(a.train.x) <= _rows(whole.train.x)  # a sample of the fit split, nothing else
    assert np.array_equal(a.train.x, b.train.x) and not np.array_equal(a.train.x, c.train.x)  # seeded
    share = np.bincount(a.train.y, minlength=10) / 300
    assert np.abs(share - np.bincount(whole.train.y, minlength=10) / 718).max() < 1 / 300  # stratified
    assert a.summary()["rows"] == {"fit": 300, "validation": 719, "test": 360}
    assert a.summary()["whole_rows"] == {"fit": 718, "validation": 719}
    assert describe_data(a.summary()).startswith("search on 300 of 718 fit / 719 of 719 validation / 360 test rows;")
    # retrain's data: the whole fit split; the test split does not change
    full = load_search_data(spec, split_seed=1, whole=True)
    assert np.array_equal(full.train.x, whole.train.x) and "whole_rows" not in full.summary()
    assert np.array_equal(load_test_split(spec).x, load_test_split(whole_spec).x)


def test_search_validation_shrinks_in_proportion_down_to_its_floor():
    from searcher.data import search_sizes

    assert search_sizes(12_800, 3_200, 6_400) == (6_400, 1_600)
    assert search_sizes(12_800, 3_200, 1_200) == (1_200, 1_000)
    assert search_sizes(12_800, 800, 1_200) == (1_200, 800)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (718, r"^data\.search_rows: must be fewer than the fit split's 718 rows \(digits\), got 718; lower it, or "
              r"drop it to search on them all$"),
        (5, r"^data\.search_rows: 5 rows leave out class '8' \(70 of the fit split's 718 rows\); raise it to at "
            r"least 11$"),
    ],
)
def test_bad_search_rows_are_one_line(rows, message):
    with pytest.raises(DataError, match=message):
        load_search_data(DataSpec(dataset="digits", validation_fraction=0.5, search_rows=rows), split_seed=1)


def test_npz_splits_do_not_overlap(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(300, 6, 6), dtype=np.uint8)
    y = np.arange(300) % 3
    np.savez(tmp_path / "d.npz", x_train=x[:200], y_train=y[:200], x_test=x[200:], y_test=y[200:])
    spec = DataSpec(dataset="npz", path=str(tmp_path / "d.npz"), validation_fraction=0.3)
    data = load_search_data(spec, split_seed=0)
    test = load_test_split(spec)
    assert data.input_shape == (6, 6, 1) and data.n_classes == 3
    train_rows, val_rows, test_rows = _rows(data.train.x), _rows(data.val.x), _rows(test.x)
    assert len(train_rows) == 140 and len(val_rows) == 60
    assert not train_rows & val_rows and not (train_rows | val_rows) & test_rows


def test_missing_npz_names_the_field(tmp_path):
    with pytest.raises(DataError, match=r"data\.path: .*nope\.npz not found"):
        load_search_data(DataSpec(dataset="npz", path=str(tmp_path / "nope.npz")), split_seed=0)


def test_data_dir_reads_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
             y_train=np.arange(50) % 10, x_test=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
             y_test=np.arange(20) % 10)
    data = load_search_data(DataSpec(dataset="mnist"), split_seed=0, data_dir=tmp_path)
    assert data.input_shape == (28, 28, 1) and len(data.train) + len(data.val) == 50


def test_data_dir_reads_cifar10_from_the_archive_without_unpacking(tmp_path):
    import io
    import pickle
    import tarfile

    rng = np.random.default_rng(2)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(np.arange(20) % 10)}
            blob = pickle.dumps(batch)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tmp_path.chmod(0o555)  # a read-only data folder, as docker compose mounts it
    try:
        data = load_search_data(DataSpec(dataset="cifar10"), split_seed=0, data_dir=tmp_path)
        test = load_test_split(DataSpec(dataset="cifar10"), data_dir=tmp_path)
    finally:
        tmp_path.chmod(0o755)
    assert data.input_shape == (32, 32, 3) and len(data.train) + len(data.val) == 100 and len(test) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_data_dir_without_the_file_says_which_file(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz not found; --data-dir must hold"):
        load_search_data(DataSpec(dataset="cifar10"), split_seed=0, data_dir=tmp_path)


def test_offline_download_fails_with_one_line_naming_the_file(tmp_path):
    """No internet here: keras.datasets really fails, and the CLI-facing error says what to do."""
    code = (
        "from searcher.data import load_search_data; from searcher.spec import DataSpec\n"
        "from searcher.errors import DataError\n"
        "try:\n    load_search_data(DataSpec(dataset='mnist'), split_seed=0)\n"
        "except DataError as e:\n    print('DATAERROR', e)\n"
    )
    env = {"KERAS_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "TF_CPP_MIN_LOG_LEVEL": "3", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("DATAERROR"))
    assert "could not download mnist" in line
    assert "put mnist.npz in a folder and pass --data-dir FOLDER (or set SEARCHER_DATA_DIR)" in line
