"""Reading a user's files: an image folder is decoded once and cached; an unreadable image is named."""

from __future__ import annotations

import numpy as np
import pytest

from own_files import digits_png_folder
from searcher.data import load_search_data
from searcher.errors import DataError
from searcher.spec import DataSpec


def test_image_folder_is_decoded_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=10)
    spec = DataSpec(dataset="images", path=str(root), color_mode="grayscale", test_fraction=0.2)
    data = load_search_data(spec, split_seed=0)
    assert data.input_shape == (8, 8, 1) and data.train.x.dtype == np.uint8
    assert data.class_names == tuple(f"digit-{i}" for i in range(10))
    assert len(list((tmp_path / "cache").glob("images-*.npz"))) == 1
    from searcher import sources

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(sources, "_decode_image", no_decoding)
    again = sources.read(spec)
    assert again.x_train.shape == (100, 8, 8, 1) and list(again.y_train[:2]) == ["digit-0", "digit-0"]


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=3)
    broken = root / "digit-4" / "001.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"^{broken}: not a readable image \(Unknown image file format") as error:
        load_search_data(DataSpec(dataset="images", path=str(root), test_fraction=0.2), split_seed=0)
    assert "{{" not in str(error.value) and "[Op:" not in str(error.value)
