"""``searcher init`` on a table: column roles from the command line, and what it notices."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from searcher.cli import app


def survey(folder: Path) -> Path:
    """An ID, a constant, a date-like text column, a few-valued integer, text with NA, numbers with NA."""
    path = folder / "survey.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "source", "date", "visits", "colour", "age", "outcome"])
        for i in range(120):
            writer.writerow([1000 + i, "web", f"2024-01-{1 + i % 28:02d}", i % 5, ["red", "blue", "NA"][i % 3],
                             "NA" if i % 17 == 0 else 30 + i % 40, ["yes", "no"][(i // 3) % 2]])
    return path


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--categorical", "colour,shade"],
         "Error: --categorical: survey.csv has no column 'shade' (columns: id, source, date, visits, colour, age, "
         "outcome)"),
        (["--ignore", "outcome"], "Error: --ignore: 'outcome' is the target (--target)"),
        (["--numeric", "age", "--categorical", "age"],
         "Error: --numeric: 'age' is also given to --categorical; give a column one role"),
        (["--numeric", "colour"], "Error: --numeric: column 'colour' holds text ('red' in line 2 of "),
        (["--missing", "median"], "Error: --missing: must be error, mean or most_frequent, got 'median'"),
    ],
    ids=["unknown-column", "target-ignored", "two-roles", "text-as-number", "bad-missing"],
)
def test_role_mistakes_are_one_line(tmp_path, monkeypatch, flags, message):
    survey(tmp_path)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["init", "survey.csv", "--target", "outcome", *flags])
    assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1, out.output
    assert out.output.startswith(message), out.output
    assert not (tmp_path / "survey.yaml").exists()


def test_init_takes_roles_and_says_what_it_left_out(tmp_path):
    from searcher.init import Roles, init_spec

    made = init_spec(str(survey(tmp_path)), output=tmp_path / "s.yaml", target="outcome", workers=1, minutes=1,
                     roles=Roles(ignore=("date",), missing="most_frequent"))
    spec, text = made.spec, made.path.read_text()
    assert spec.data.features == ("visits", "colour", "age") and spec.data.missing == "most_frequent"
    assert "# features: 'id' is left out: every value is different, like an ID (pass --numeric id" in text
    assert "# features: 'source' is left out: it holds one value in every row" in text
    assert "# categorical?: 'visits' holds 5 distinct whole numbers; if they are codes rather than amounts, add " \
           "it to data.categorical (init --categorical visits)" in text
    kept = init_spec(str(tmp_path / "survey.csv"), output=tmp_path / "k.yaml", target="outcome", workers=1,
                     minutes=1, roles=Roles(numeric=("id",), categorical=("visits",), ignore=("date", "source")))
    assert kept.spec.data.features == ("id", "visits", "colour", "age")
    assert kept.spec.data.categorical == ("visits",) and kept.spec.data.missing == "mean"
    assert "visits (5)" in kept.path.read_text() and "left out" not in kept.path.read_text()
