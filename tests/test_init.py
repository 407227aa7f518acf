"""searcher init: a spec written for a user's files; mistakes are one line and keep what was there."""

from __future__ import annotations

import re

import pytest

from cli_process import run_searcher
from own_files import digits_png_folder, wine_csv


def test_init_writes_a_cnn_spec_for_an_image_folder(tmp_path, monkeypatch):
    from searcher.init import init_spec
    from searcher.spec import load_spec

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=12)
    made = init_spec(str(root), output=tmp_path / "pngs.yaml", workers=2, minutes=5)
    spec = load_spec(made.path)
    assert spec.model.kind == "cnn" and spec.data.dataset == "images"
    assert (spec.data.color_mode, spec.data.image_size, spec.data.test_fraction) == ("grayscale", (8, 8), 0.2)
    assert 12 <= spec.budget.n_trials <= 300 and spec.baselines[0].name == "plain-adam"
    text = made.path.read_text()
    assert "uint8 inputs 8x8x1, rescaled to [0, 1] (divided by 255)" in text
    assert "about 5 minutes with 2 worker(s)" in text


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
    out = run_searcher("init", *args, cwd=tmp_path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert re.search(message, out.stderr)
    assert (tmp_path / "wine.yaml").read_text() == "keep me\n"
