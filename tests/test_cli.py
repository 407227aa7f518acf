"""The command line: bad input gives one line and a non-zero exit; every command has an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from searcher.cli import app

runner = CliRunner()
COMMANDS = ["launch", "worker", "studies", "status", "report", "export", "retrain", "dashboard"]


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "Example: searcher " in result.output


def test_studies_lists_the_shipped_studies():
    result = runner.invoke(app, ["studies"], terminal_width=200)
    assert result.exit_code == 0
    for name in ("digits-mlp", "cifar-cnn", "mnist-mlp", "mnist-cnn", "fashion-mnist-cnn", "digits-cnn"):
        assert name in result.output


def _spec_with_typo(tmp_path: Path) -> Path:
    raw = yaml.safe_load(Path("studies/digits-mlp.yaml").read_text())
    raw["search"]["learning_rate"] = {"low": -0.1, "high": 0.1}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_launch_with_a_bad_spec_is_one_line_naming_the_field(tmp_path):
    line = _one_line_error(runner.invoke(app, ["launch", str(_spec_with_typo(tmp_path))]))
    assert line == f"Error: {tmp_path}/typo.yaml: search.learning_rate.low: must be > 0, got -0.1"


def test_launch_unknown_study(tmp_path):
    line = _one_line_error(runner.invoke(app, ["launch", "digits-mpl"]))
    assert line.startswith("Error: digits-mpl: no such study (shipped studies: cifar-cnn")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u:hunter2@h/db", "unsupported database 'mysql'"),
        ("not a url", "not a database URL"),
        ("sqlite://", "in-memory SQLite"),
    ],
)
def test_bad_storage_url_is_one_line_without_the_password(url, message):
    line = _one_line_error(runner.invoke(app, ["launch", "digits-mlp", "--storage", url]))
    assert message in line and "hunter2" not in line


def test_status_without_a_storage_file_does_not_create_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(runner.invoke(app, ["status", "digits-mlp"]))
    assert "no study storage at sqlite:///searcher.db" in line
    assert not (tmp_path / "searcher.db").exists()


def test_bad_gpu_list_names_the_flag():
    line = _one_line_error(runner.invoke(app, ["launch", "digits-mlp", "--gpus", "0,x"]))
    assert line.startswith("Error: --gpus:")


def test_retrain_of_a_missing_file(tmp_path):
    line = _one_line_error(runner.invoke(app, ["retrain", str(tmp_path / "best.yaml")]))
    assert "no such file" in line


def test_retrain_of_a_broken_export_names_the_field(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({"config": {"data": {"dataset": "digits"}, "model": {}, "training": {}, "seed": 1}}))
    line = _one_line_error(runner.invoke(app, ["retrain", str(path)]))
    assert f"{path}: config: model.kind: is required" in line


def test_debug_shows_the_traceback():
    result = runner.invoke(app, ["--debug", "launch", "digits-mpl"])
    assert result.exit_code != 0 and result.exception is not None


def test_the_installed_command_prints_one_line_and_exits_1(tmp_path):
    """The real console script, as a person runs it."""
    out = subprocess.run([sys.executable, "-m", "searcher", "launch", str(_spec_with_typo(tmp_path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"Error: {tmp_path}/typo.yaml: search.learning_rate.low: must be > 0, got -0.1"
    ]
