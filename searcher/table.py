"""CSV tables: read the cells, tell numbers from text and missing cells, refuse mixed columns.

A cell is *missing* when, stripped and lower-cased, it is one of ``MISSING_TOKENS`` (empty,
NA, N/A, NaN, null, None, ?), in any column. A column whose filled cells are all numbers is
numeric (missing cells are NaN); one whose filled cells are all text, or that the spec lists
in ``data.categorical``, is categorical (missing cells are ``MISSING_TEXT``); a column whose
filled cells mix the two is an error naming the file, the column and the line.

Large files are tokenized by TensorFlow's CSV decoder (``tf.io.decode_csv``, in C++, in
parallel); small ones, and any file the decoder refuses (e.g. a quoted field spanning lines),
by the ``csv`` module, which also finds the line of a malformed row. Both scan into the same
``Scanned`` columns, so both paths classify cells by one rule.
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searcher.errors import DataError

MISSING_TOKENS = ("", "na", "n/a", "nan", "null", "none", "?")
MISSING_TEXT = ""  # what a missing cell of a categorical column holds once read
_MISSING_PATTERN = "|".join(re.escape(token) for token in MISSING_TOKENS)
# A number as Python's float() reads one, less "nan" (a missing token) and digit separators.
_NUMBER_PATTERN = r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity))"
_TF_ABOVE_BYTES = 8 * 2**20  # below this the csv module is about as fast, without importing TensorFlow
_BATCH_LINES = 1 << 16


@dataclass(frozen=True)
class Table:
    """A table's feature columns: which are numbers and which are categories (strings)."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


@dataclass(frozen=True)
class Scanned:
    """One column as read: numbers (NaN where missing or text), and the text cells.

    ``text_rows`` are the rows whose cell is text (for a column read as text: every filled
    cell), ``text`` their stripped values as indices into ``words``.
    """

    values: np.ndarray  # float64, one per row
    missing: np.ndarray  # bool, one per row
    text_rows: np.ndarray  # int64 row indices
    text: np.ndarray  # int32 indices into words, one per text row
    words: np.ndarray  # object array of distinct str

    def strings(self, rows: int) -> np.ndarray:
        """The column as text: each filled cell's stripped value, ``MISSING_TEXT`` where missing."""
        column = np.full(rows, MISSING_TEXT, dtype=object)
        column[self.text_rows] = self.words[self.text]
        return column


@dataclass(frozen=True)
class CsvFile:
    path: Path
    header: list[str]
    lines: np.ndarray  # the line each row starts on, as an editor numbers them
    columns: dict[str, Scanned]

    def __len__(self) -> int:
        return len(self.lines)


def missing_variants() -> list[str]:
    """Every spelling of the missing tokens a raw cell may hold (each letter in either case)."""
    variants = []
    for token in MISSING_TOKENS:
        variants += ["".join(chars) for chars in itertools.product(*({c.lower(), c.upper()} for c in token))]
    return sorted(set(variants))


def read_header(path: Path, *, field: str = "data.path") -> list[str]:
    if not path.is_file():
        raise DataError(f"{field}: {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if not header:
        raise DataError(f"{path}: is empty (expected a header row, then one row per example)")
    if len(set(header)) != len(header):
        repeated = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, repeated))} appear more than once in the header")
    return header


def scan(path: Path, *, text_columns: tuple[str, ...] = (), field: str = "data.path") -> CsvFile:
    """Read every cell of ``path``; the ``text_columns`` keep every filled cell as text."""
    header = read_header(path, field=field)
    table = None
    if path.stat().st_size >= _TF_ABOVE_BYTES:
        table = _scan_with_tensorflow(path, header, text_columns)
    if table is None:
        table = _scan_with_csv_module(path, header, text_columns)
    if not len(table):
        raise DataError(f"{path}: has a header but no rows")
    return table


def column_kinds(table: CsvFile, names: tuple[str, ...], *, declared: tuple[str, ...]) -> Table:
    """Numbers where every filled cell is a number, categories where none is or the spec says
    so; a column that mixes them is an error (a typo in a numeric column must not silently
    make it categorical)."""
    numeric, categorical = [], []
    for name in names:
        column = table.columns[name]
        filled = int((~column.missing).sum())
        if name in declared or (len(column.text_rows) and len(column.text_rows) == filled):
            categorical.append(name)
        elif not len(column.text_rows):
            numeric.append(name)
        else:
            row = int(column.text_rows[0])
            raise DataError(f"{table.path}: column {name!r}, line {table.lines[row]}: "
                            f"{column.words[column.text[0]]!r} is not a number ({filled - len(column.text_rows)} of "
                            f"its {filled} filled values are); fix the value, or list the column in data.categorical")
    return Table(tuple(numeric), tuple(categorical))


def table_columns(table: CsvFile, kinds: Table, target: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Numeric columns as float32 (NaN where missing), categorical ones as str, and the labels."""
    columns: dict[str, np.ndarray] = {}
    for name in kinds.numeric:
        column = table.columns[name]
        if len(column.text_rows):
            raise DataError(f"{table.path}: column {name!r}, line {table.lines[column.text_rows[0]]}: "
                            f"{column.words[column.text[0]]!r} is not a number")
        columns[name] = column.values.astype(np.float32)
    for name in kinds.categorical:
        columns[name] = table.columns[name].strings(len(table))
    labels = table.columns[target]
    if labels.missing.any():
        row = int(np.argmax(labels.missing))
        raise DataError(f"{table.path}: column {target!r} (the target), line {table.lines[row]}: missing label; "
                        "drop the row or fill in its class")
    return columns, labels.strings(len(table))


# --- the two tokenizers --------------------------------------------------------------------


def _scan_with_csv_module(path: Path, header: list[str], text_columns: tuple[str, ...]) -> CsvFile:
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            next(reader, None)
            start = reader.line_num + 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    if len(row) != len(header):
                        raise DataError(f"{path}: line {start} has {len(row)} fields, the header {len(header)}")
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    number, missing = re.compile(_NUMBER_PATTERN), re.compile(_MISSING_PATTERN)
    columns = {}
    for j, name in enumerate(header):
        words: dict[str, int] = {}
        codes = np.fromiter((words.setdefault(row[j].strip(), len(words)) for row in rows), np.int32, len(rows))
        distinct = list(words)
        # Classify each distinct cell once: a column of a million rows holds a few thousand at most.
        is_missing = np.array([missing.fullmatch(w.lower()) is not None for w in distinct], bool)
        is_number = np.array([number.fullmatch(w) is not None for w in distinct], bool) & ~is_missing
        values = np.array([float(w) if n else np.nan for w, n in zip(distinct, is_number)], np.float64)
        is_text = ~is_missing if name in text_columns else ~is_missing & ~is_number
        text_rows = np.flatnonzero(is_text[codes]) if len(distinct) else np.zeros(0, np.int64)
        kept = np.flatnonzero(is_text)  # renumber the text words 0..k-1
        renumber = np.full(len(distinct), -1, np.int32)
        renumber[kept] = np.arange(len(kept), dtype=np.int32)
        columns[name] = Scanned(values=values[codes] if len(distinct) else np.zeros(0),
                                missing=is_missing[codes] if len(distinct) else np.zeros(0, bool),
                                text_rows=text_rows.astype(np.int64), text=renumber[codes[text_rows]],
                                words=np.array([distinct[k] for k in kept] + [None], dtype=object)[:-1])
    return CsvFile(path, header, np.asarray(lines, np.int64), columns)


def _scan_with_tensorflow(path: Path, header: list[str], text_columns: tuple[str, ...]) -> CsvFile | None:
    """Scan with ``tf.io.decode_csv`` in batches; None when it refuses the file (the csv module
    then reads it, and names the line if it is malformed)."""
    from searcher.devices import import_tensorflow

    tf = import_tensorflow()
    as_text = [name in text_columns for name in header]

    def scan_batch(batch, lines):
        # Line numbers and blank lines per batch: per line, tf.data's own steps cost more than the parsing.
        line_numbers = batch * _BATCH_LINES + 2 + tf.range(tf.size(lines, out_type=tf.int64))
        filled = tf.strings.length(tf.strings.strip(lines)) > 0
        lines = tf.strings.regex_replace(tf.boolean_mask(lines, filled), "\r$", "")
        line_numbers = tf.boolean_mask(line_numbers, filled)
        cells = tf.io.decode_csv(lines, record_defaults=[[""]] * len(header))
        out = []
        for j, cell in enumerate(cells):
            stripped = tf.strings.strip(cell)
            missing = tf.strings.regex_full_match(tf.strings.lower(stripped), _MISSING_PATTERN)
            number = tf.strings.regex_full_match(stripped, _NUMBER_PATTERN) & ~missing
            values = tf.strings.to_number(tf.where(number, stripped, "nan"), tf.float64)
            is_text = ~missing if as_text[j] else ~missing & ~number
            words, codes = tf.unique(tf.boolean_mask(stripped, is_text), out_idx=tf.int32)
            out.append((values, missing, tf.cast(tf.where(is_text)[:, 0], tf.int32), words, codes))
        return line_numbers, tuple(out)  # tf.data takes tuples, not lists

    lines = (tf.data.TextLineDataset(str(path)).skip(1).batch(_BATCH_LINES).enumerate()
             .map(scan_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
    numbers, parts = [], [[] for _ in header]
    try:
        for line_numbers, batch in lines:
            numbers.append(line_numbers.numpy())
            for part, column in zip(parts, batch):
                part.append([t.numpy() for t in column])
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return None
    offsets = np.cumsum([0] + [len(n) for n in numbers])
    columns = {}
    for name, part in zip(header, parts):
        vocabulary: dict[bytes, int] = {}
        text_rows, text = [], []
        for (values, missing, rows, words, codes), offset in zip(part, offsets):
            mapping = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), np.int32, len(words))
            text_rows.append(rows.astype(np.int64) + offset)
            text.append(mapping[codes])
        try:
            words = np.array([w.decode("utf-8") for w in vocabulary] + [None], dtype=object)[:-1]
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a readable CSV file (column {name!r}: {e})") from None
        columns[name] = Scanned(values=_join([p[0] for p in part], np.float64), missing=_join([p[1] for p in part], bool),
                                text_rows=_join(text_rows, np.int64), text=_join(text, np.int32), words=words)
    return CsvFile(path, header, _join(numbers, np.int64), columns)


def _join(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
