"""Reading a user's files: an image folder is decoded once and cached; an unreadable image is named."""

from __future__ import annotations

import pytest

from own_files import digits_png_folder
from searcher.data import load_search_data
from searcher.errors import DataError
from searcher.spec import DataSpec


def test_unreadable_image_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=3)
    broken = root / "digit-4" / "001.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"^{broken}: not a readable image \(Unknown image file format") as error:
        load_search_data(DataSpec(dataset="images", path=str(root), test_fraction=0.2), split_seed=0)
    assert "{{" not in str(error.value) and "[Op:" not in str(error.value)
