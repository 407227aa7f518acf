"""CSV tables: missing tokens in every column type, numbers told from text, one-line errors,
and TensorFlow's CSV decoder reading cells exactly as the csv module does."""

from __future__ import annotations

import numpy as np
import pytest

from searcher import sources, table
from searcher.errors import DataError
from searcher.spec import DataSpec
from searcher.table import MISSING_TEXT

# Quoted commas, CRLF line ends, a blank line, every missing token in several spellings,
# padded cells, exponents and inf, and a text target.
TRICKY = (
    "id,colour,age,note,outcome\r\n"
    'a1,red,31,"hello, world",yes\r\n'
    "a2,NA,n/a,x,no\r\n"
    "\r\n"
    "a3, Blue ,1e3,?,yes\r\n"
    "a4,,  NaN ,NULL,no\r\n"
    "a5,None,-inf,none,yes\r\n"
    "a6,?,.5,N/A,no\r\n"
    "a7,red,+2,null,yes\r\n"
)


def test_missing_tokens_are_missing_in_text_and_numbers_alike(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(TRICKY)
    raw = sources.read(DataSpec(dataset="csv", path=str(path), target="outcome", test_fraction=0.2))
    assert raw.table.numeric == ("age",) and raw.table.categorical == ("id", "colour", "note")
    assert list(raw.x_train["colour"]) == ["red", MISSING_TEXT, "Blue", MISSING_TEXT, MISSING_TEXT, MISSING_TEXT, "red"]
    assert list(raw.x_train["note"]) == ["hello, world", "x"] + [MISSING_TEXT] * 5
    age = raw.x_train["age"]
    assert np.isnan(age[[1, 3]]).all() and list(age[[0, 2, 4, 5, 6]]) == [31, 1000, -np.inf, 0.5, 2]
    assert list(raw.y_train) == ["yes", "no", "yes", "no", "yes", "no", "yes"]


def test_tensorflow_decoder_reads_what_the_csv_module_reads(tmp_path, monkeypatch):
    path = tmp_path / "t.csv"
    path.write_text(TRICKY)
    by_module = table.scan(path, text_columns=("outcome",))
    monkeypatch.setattr(table, "_TF_ABOVE_BYTES", 0)
    by_tensorflow = table.scan(path, text_columns=("outcome",))
    assert list(by_tensorflow.lines) == list(by_module.lines) == [2, 3, 5, 6, 7, 8, 9]
    for name in by_module.header:
        a, b = by_module.columns[name], by_tensorflow.columns[name]
        assert np.array_equal(a.values, b.values, equal_nan=True), name
        assert list(a.missing) == list(b.missing) and list(a.text_rows) == list(b.text_rows), name
        assert list(a.strings(len(by_module))) == list(b.strings(len(by_module))), name


def test_a_file_the_decoder_refuses_is_read_by_the_csv_module_or_named_by_line(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "_TF_ABOVE_BYTES", 0)
    spanning = tmp_path / "spanning.csv"
    spanning.write_text('x,note,y\n1,"two\nlines",a\n2,plain,b\n')
    read = table.scan(spanning, text_columns=("y",))
    assert list(read.columns["note"].strings(2)) == ["two\nlines", "plain"] and list(read.lines) == [2, 4]
    short = tmp_path / "short.csv"
    short.write_text("x,y\n1,a\n2\n3,b\n")
    with pytest.raises(DataError, match=r"short\.csv: line 3 has 1 fields, the header 2$"):
        table.scan(short)


def test_a_column_is_mixed_only_when_its_filled_cells_mix_numbers_and_text(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("size,y\n" + "".join(f"{v},{i % 2}\n" for i, v in enumerate(["1", "NA", "2", "", "big", "3"])))
    with pytest.raises(DataError) as error:
        sources.read(DataSpec(dataset="csv", path=str(path), target="y", test_fraction=0.2))
    assert str(error.value) == (f"{path}: column 'size', line 6: 'big' is not a number (3 of its 4 filled values "
                                "are); fix the value, or list the column in data.categorical")


def test_a_missing_label_is_named_by_line(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("x,y\n1,a\n2,b\n3,NA\n")
    with pytest.raises(DataError, match=r"l\.csv: column 'y' \(the target\), line 4: missing label"):
        sources.read(DataSpec(dataset="csv", path=str(path), target="y", test_fraction=0.2))


def test_missing_variants_cover_every_spelling():
    variants = set(table.missing_variants())
    assert {"", "NA", "na", "Na", "N/A", "n/a", "NaN", "NAN", "null", "NULL", "None", "NONE", "?"} <= variants
    assert len(variants) == 50
