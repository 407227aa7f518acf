"""searcher init: a spec written for a user's files, its budget sized to the minutes asked; mistakes are one
line and keep what was there."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_process import run_searcher
from own_files import digits_png_folder, pattern_png_folder, wine_csv
from searcher.cli import app

tf = pytest.importorskip("tensorflow")


def test_init_writes_a_cnn_spec_for_an_image_folder(tmp_path, monkeypatch):
    from searcher.init import init_spec
    from searcher.sizing import describe as describe_budget
    from searcher.spec import load_spec

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    root = digits_png_folder(tmp_path, per_class=12)
    made = init_spec(str(root), output=tmp_path / "pngs.yaml", workers=2, minutes=5)
    spec = load_spec(made.path)
    assert spec.model.kind == "cnn" and spec.data.dataset == "images"
    assert (spec.data.color_mode, spec.data.image_size, spec.data.test_fraction) == ("grayscale", (8, 8), 0.2)
    assert 8 <= spec.budget.n_trials <= 300 and spec.baselines[0].name == "plain-adam"
    text = made.path.read_text()
    assert "uint8 inputs 8x8x1, rescaled to [0, 1] (divided by 255)" in text
    sizing = made.sizing
    assert spec.budget.n_trials == sizing.n_trials
    # What the comment says is what the budget takes here: trials x seconds each / workers.
    assert sizing.seconds == pytest.approx(sizing.n_trials * sizing.trial_seconds / 2)
    assert f"# budget: {describe_budget(sizing)}, measured on a middle configuration." in text
    if sizing.note is None:  # the fewest trials worth running fit: the budget fits the minutes asked
        assert sizing.seconds <= 5 * 60 and spec.budget.n_trials >= 12


def small_png_folder(folder: Path) -> Path:
    """40 random 16x16 RGB PNGs in 4 class folders."""
    rng = np.random.default_rng(0)
    root = folder / "pngs"
    for label in range(4):
        (root / f"class-{label}").mkdir(parents=True)
        for i in range(10):
            png = tf.io.encode_png(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).numpy()
            (root / f"class-{label}" / f"{i}.png").write_bytes(png)
    return root


def _trials_take(monkeypatch, epoch_s: float) -> None:
    """A measured epoch of ``epoch_s`` seconds, whatever this machine's speed: the shaping is
    decided by these numbers alone."""
    from searcher import init
    from searcher.sizing import TrialCost

    monkeypatch.setattr(init, "_measure_trial", lambda raw, data: TrialCost(epoch_s=epoch_s, first_epoch_extra_s=0.0))


@pytest.mark.parametrize(
    ("epoch_s", "n_trials", "max_epochs", "searched", "note"),
    [
        # 12 trials of 40 epochs (~22 run) take 78 s; 21 epochs fit 48 s (80 % of the minute).
        (0.25, 12, 21, 13, "--minutes 1 cannot hold 12 trials of the full study here (about 1.3 min); shaped to fit: "
                           "21 epochs per trial (was 40)"),
        # 5 epochs of the full space do not fit 12 trials; 8 trials of 6 knobs at 9 epochs (5 run) do.
        (1.0, 8, 9, 6, "--minutes 1 cannot hold 12 trials of the full study here (about 4.6 min); shaped to fit: "
                       "9 epochs per trial (was 40); 6 of 13 knobs searched (learning_rate, dropout, batch_size, "
                       "depth, filters, dense_units)"),
        # Nothing fits: the most shaped study, its fewest trials, and the minutes it needs.
        (20.0, 8, 5, 6, "--minutes 1 is too short here: even shaped (5 epochs per trial (was 40); 6 of 13 knobs "
                        "searched (learning_rate, dropout, batch_size, depth, filters, dense_units)), the fewest "
                        "trials worth running (8) take about 11 min; pass --minutes 14, or --minutes 111 for the "
                        "full study"),
    ],
)
def test_init_shapes_the_study_when_the_minutes_cannot_hold_it(tmp_path, monkeypatch, epoch_s, n_trials, max_epochs,
                                                                searched, note):
    from searcher.init import init_spec
    from searcher.sizing import describe as describe_budget

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    _trials_take(monkeypatch, epoch_s)
    made = init_spec(str(small_png_folder(tmp_path)), output=tmp_path / "pngs.yaml", workers=1, minutes=1)
    spec = made.spec  # loaded back from the file: a valid spec
    assert (spec.budget.n_trials, spec.training.max_epochs, len(spec.search.searched())) == (n_trials, max_epochs,
                                                                                             searched)
    assert made.sizing.note == note
    text = made.path.read_text()
    assert f"# {note}." in text and f"# budget: {describe_budget(made.sizing)}," in text
    assert spec.pruner.n_warmup_steps < spec.training.max_epochs and spec.training.patience < spec.training.max_epochs
    if searched < 13:
        assert spec.sampler.n_startup_trials == 4 and "activation: relu" in text
        assert "# fixed so the budget fits (see the top)" in text


@pytest.mark.slow
def test_a_shaped_spec_launches(tmp_path, monkeypatch):
    """The most shaped spec init writes (fewest knobs, fewest epochs) runs as `searcher init` printed it."""
    from typer.testing import CliRunner

    from searcher.cli import app

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(tmp_path / "cache"))
    _trials_take(monkeypatch, 20.0)
    root = small_png_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", str(root), "-o", "pngs.yaml", "--minutes", "1", "--workers", "1"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("wrote pngs.yaml: cnn on ")
    assert lines[1].startswith("--minutes 1 is too short here: even shaped (5 epochs per trial (was 40); ")
    assert lines[2] == "budget 8 trials, about 11 min here with 1 worker(s) (a trial: ~81 s); next: searcher launch pngs.yaml"
    out = run_searcher("launch", "pngs.yaml", "--workers", "1", "--trials", "2", "--storage",
                       f"sqlite:///{tmp_path}/s.db", cwd=tmp_path, check=True)
    assert "pngs: 1 worker(s)" in out.stdout and "budget 2 trials" in out.stdout
    import optuna

    study = optuna.load_study(study_name="pngs", storage=f"sqlite:///{tmp_path}/s.db")
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "COMPLETE"]
    assert study.get_trials()[0].user_attrs["baseline"] == "plain-adam"
    assert all(t.user_attrs["epochs"] <= 5 for t in study.get_trials())


@pytest.fixture(scope="module")
def pattern_pngs(tmp_path_factory) -> Path:
    """4,000 16x16 PNGs of 4 learnable patterns: 2,560 fit, 640 validation and 800 test rows."""
    return pattern_png_folder(tmp_path_factory.mktemp("patterns"), per_class=1000, side=16)


def _rows_cost(monkeypatch, row_s: float) -> None:
    """An epoch costs ``row_s`` per training row and a third of it per validation row, whatever
    this machine's speed: fit rows and samples are priced by these numbers alone."""
    from searcher import init
    from searcher.sizing import TrialCost

    monkeypatch.setattr(init, "_measure_trial", lambda raw, data: TrialCost(
        epoch_s=row_s * (len(data.train) + len(data.val) / 3), first_epoch_extra_s=0.0, fit_rows=len(data.train),
        val_rows=len(data.val)))


_FULL_EPOCH_ROWS = 2560 + 640 / 3  # what one epoch on the whole fit and validation splits costs, in rows


@pytest.mark.parametrize(
    ("epoch_s", "n_trials", "max_epochs", "search_rows", "searched", "needs"),
    [
        # 12 trials of 25 epochs (~14 run) take 3.1 min; 21 epochs (~12 run) fit the 48 s.
        (0.25, 12, 21, None, 13, None),
        # 12 trials of 5 epochs (4 run) on all 2,560 fit rows take 1 min; on 1,400 (0.58 of an epoch) they fit.
        (1.0, 14, 5, 1400, 13, None),
        # The full space does not fit even on the smallest sample (1,200: 300 per class); 8 trials of 6 knobs,
        # at 5 epochs on 1,900 rows, do.
        (1.6, 8, 5, 1900, 6, None),
        # Nothing fits: the most shaped study (6 knobs, 5 epochs, 1,200 rows), its fewest trials, the minutes it needs.
        (20.0, 8, 5, 1200, 6, 7),
    ],
)
def test_init_shapes_epochs_then_a_search_sample_then_the_space(pattern_pngs, tmp_path, monkeypatch, epoch_s,
                                                                 n_trials, max_epochs, search_rows, searched, needs):
    from searcher.init import init_spec

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(pattern_pngs.parent / "cache"))
    _rows_cost(monkeypatch, epoch_s / _FULL_EPOCH_ROWS)
    made = init_spec(str(pattern_pngs), output=tmp_path / "pics.yaml", workers=1, minutes=1)
    spec = made.spec  # loaded back from the file: a valid spec
    assert (spec.budget.n_trials, spec.training.max_epochs, spec.data.search_rows, len(spec.search.searched())) == (
        n_trials, max_epochs, search_rows, searched)
    text = made.path.read_text()
    note = made.sizing.note
    assert f"# {note}." in text
    if search_rows:
        assert (f"the search trains on a sample of {search_rows} of the 2560 fit rows (stratified; retrain trains on "
                "all)") in note
        assert re.search(rf"\n  search_rows: {search_rows} +# a stratified sample of the 2560 fit rows for the search, "
                         r"so the budget fits \(see the top\); retrain trains on all\n", text)
    else:
        assert "search_rows" not in text
    if needs:
        assert note.startswith("--minutes 1 is too short here: even shaped (5 epochs per trial (was 25); the search "
                               "trains on a sample of 1200 of the 2560 fit rows")
        assert f"; pass --minutes {needs}, or --minutes " in note
    else:  # what the budget takes here fits the minute asked
        assert made.sizing.seconds <= 60 and note.startswith("--minutes 1 cannot hold 12 trials of the full study")


@pytest.mark.slow
def test_a_spec_shaped_to_a_sample_searches_on_it_and_retrains_on_all(pattern_pngs, tmp_path, monkeypatch):
    """init writes data.search_rows; the launched search trains on that sample (its recorded data
    says so), and retrain on the whole fit split."""
    import json

    import optuna

    from searcher import stored

    monkeypatch.setenv("SEARCHER_CACHE_DIR", str(pattern_pngs.parent / "cache"))
    _rows_cost(monkeypatch, 1.0 / _FULL_EPOCH_ROWS)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", str(pattern_pngs), "-o", "pics.yaml", "--minutes", "1", "--workers", "1"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("--minutes 1 cannot hold 12 trials of the full study here (about 3.0 min); shaped to "
                               "fit: 5 epochs per trial (was 25); the search trains on a sample of 1400 of the 2560 fit "
                               "rows (stratified; retrain trains on all)")
    assert lines[2] == "budget 14 trials, about 47 s here with 1 worker(s) (a trial: ~3 s); next: searcher launch pics.yaml"
    url = f"sqlite:///{tmp_path}/s.db"
    out = run_searcher("launch", "pics.yaml", "--workers", "1", "--trials", "2", "--storage", url, cwd=tmp_path,
                       check=True)
    assert "data: search on 1400 of 2560 fit / 640 of 640 validation / 800 test rows;" in out.stdout
    study = optuna.load_study(study_name="pics", storage=url)
    assert sorted(t.state.name for t in study.get_trials()) == ["COMPLETE", "COMPLETE"]
    data = study.user_attrs[stored.DATA]
    assert data["rows"] == {"fit": 1400, "validation": 640, "test": 800}
    assert data["whole_rows"] == {"fit": 2560, "validation": 640}
    assert sum(c["fit"] for c in data["classes"]) == 1400 and {c["fit"] for c in data["classes"]} == {350}
    from searcher.report import _tables, collect

    assert ("a search sample of 1400 of 2560 fit and 640 of 640 validation rows (data.search_rows; retrain trains on "
            "all)") in _tables.data(collect(study))
    run_searcher("export", "pics", "--storage", url, "-o", "best.yaml", cwd=tmp_path, check=True)
    run_searcher("retrain", "best.yaml", "-o", "model.keras", cwd=tmp_path, check=True)
    metrics = json.loads((tmp_path / "model.metrics.json").read_text())
    assert metrics["data"]["rows"] == {"fit": 2560, "validation": 640, "test": 800}
    assert "whole_rows" not in metrics["data"] and metrics["test_examples"] == 800


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
