"""The command line: bad input gives one line and a non-zero exit; every command has an example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli_process import STUDIES, run_searcher
from searcher.cli import app

runner = CliRunner()
COMMANDS = ["launch", "create", "worker", "init", "studies", "status", "report", "export", "retrain", "dashboard",
            "replay", "confirm", "budget"]


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
    raw = yaml.safe_load((STUDIES / "digits-mlp.yaml").read_text())
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
    out = run_searcher("launch", str(_spec_with_typo(tmp_path)), cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"Error: {tmp_path}/typo.yaml: search.learning_rate.low: must be > 0, got -0.1"
    ]


# ---------------------------------------------------------------- study names: --name, --seed, studies --storage


def _stored_studies(tmp_path: Path) -> str:
    """digits-mlp twice in one file, as `launch digits-mlp` and `launch digits-mlp --seed 1` leave it."""
    import optuna
    from optuna.distributions import FloatDistribution

    from searcher import study as studies
    from searcher.spec import load_spec
    from searcher.storage import open_storage

    url = f"sqlite:///{tmp_path}/s.db"
    storage = open_storage(url)
    spec = load_spec("digits-mlp")
    for seed, value in ((None, 0.91), (1, 0.93)):
        seeded = spec if seed is None else spec.model_copy(update={"seed": seed})
        name = "digits-mlp" if seed is None else "digits-mlp-seed1"
        study = studies.create_or_continue(seeded, storage, n_trials=3, name=name)
        study.add_trial(optuna.trial.create_trial(value=value, params={"lr": 0.01},
                                                  distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)}))
    return url


def test_read_commands_open_the_study_launch_named(tmp_path):
    import json

    url = _stored_studies(tmp_path)
    for args in (["digits-mlp", "--seed", "1"], ["digits-mlp", "--name", "digits-mlp-seed1"], ["digits-mlp-seed1"]):
        result = runner.invoke(app, ["status", *args, "--storage", url, "--json"])
        assert result.exit_code == 0, result.output
        snap = json.loads(result.output)
        assert (snap["study"], snap["best_value"]) == ("digits-mlp-seed1", 0.93)
    line = _one_line_error(runner.invoke(app, ["status", "digits-mlp", "--seed", "2", "--storage", url]))
    assert line == (f"Error: no study 'digits-mlp-seed2' in {url} (studies there: digits-mlp, digits-mlp-seed1); "
                    "start it with `searcher launch digits-mlp-seed2`")


def test_studies_with_a_storage_lists_what_is_stored(tmp_path):
    url = _stored_studies(tmp_path)
    result = runner.invoke(app, ["studies", "--storage", url], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "cifar-cnn" in result.output  # the shipped specs, as without --storage
    rows = result.output.split(f"2 studies in {url}:")[1].splitlines()[2:]
    assert [r.split()[:5] for r in rows] == [["digits-mlp", "digits-mlp", "0", "0", "1"],
                                             ["digits-mlp-seed1", "digits-mlp", "1", "1", "1"]]
    assert "0.9100 (max)" in rows[0] and "0.9300 (max)" in rows[1]


def test_budget_changes_a_stored_study_and_create_never_lowers_it(tmp_path):
    url = _stored_studies(tmp_path)  # budget 3, one trial finished in each
    result = runner.invoke(app, ["budget", "digits-mlp", "10", "--seed", "1", "--storage", url])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == ("digits-mlp-seed1: budget 3 -> 10 trials (1 finished, 0 running); no trial is "
                                     "running: `searcher launch` or `searcher worker` runs the other 9")
    created = runner.invoke(app, ["create", "digits-mlp", "--seed", "1", "--trials", "5", "--storage", url])
    assert created.exit_code == 0, created.output
    assert created.output.splitlines()[0] == ("digits-mlp-seed1: kept the budget of 10 trials (asked 5): creating "
                                              "never lowers a budget; lower it with `searcher budget digits-mlp-seed1 5`")
    assert "budget 10 trials, 1 finished" in created.output
    zero = runner.invoke(app, ["budget", "digits-mlp", "0", "--storage", url])
    assert zero.exit_code == 2 and "Invalid value for 'N'" in zero.output
    runner.invoke(app, ["budget", "digits-mlp", "1", "--storage", url])
    from searcher import study as studies
    from searcher.storage import open_storage

    study = studies.load("digits-mlp", open_storage(url), url=url)
    study.add_trial(__import__("optuna").trial.create_trial(value=0.95, params={}, distributions={}))
    line = _one_line_error(runner.invoke(app, ["budget", "digits-mlp", "1", "--storage", url]))
    assert line == "Error: N: digits-mlp has 2 finished trials; its budget cannot go below that (got 1)"
    line = _one_line_error(runner.invoke(app, ["launch", "digits-mlp", "--trials", "1", "--storage", url]))
    assert line == "Error: --trials: digits-mlp has 2 finished trials; its budget cannot go below that (got 1)"


def test_a_bad_study_name_names_the_flag():
    line = _one_line_error(runner.invoke(app, ["launch", "digits-mlp", "--name", "my study"]))
    assert line == "Error: --name: must start with a letter or digit and hold only letters, digits, '_', '.' and '-', got 'my study'"


def test_study_names_derive_from_the_seed_unless_named():
    from searcher.study import study_name

    assert study_name("my") == "my"
    assert study_name("my", seed=1) == "my-seed1"
    assert study_name("my", seed=1, name="mine") == "mine"


# ---------------------------------------------------------------- quiet TensorFlow

TF_STARTUP_LINES = ("absl::InitializeLog", "cudart_stub", "cuInit", "cpu_feature_guard", "oneDNN custom operations")


def _export_file(tmp_path: Path) -> Path:
    """What `searcher export` writes, for the tutorial MLP (every knob fixed) on digits."""
    from optuna.trial import FixedTrial

    from searcher.space import suggest_values, trial_config
    from searcher.spec import parse_spec

    spec = parse_spec({"name": "fixed", "data": {"dataset": "digits"}, "model": {"kind": "mlp"},
                       "search": {"units": [50, 20]}, "training": {"max_epochs": 1}}, source="fixed")
    config = trial_config(spec, suggest_values(FixedTrial({}), spec), seed=0).to_dict()
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump({"source": {"study": "fixed", "trial": 0}, "config": config}))
    return path


def test_retrain_prints_its_result_and_no_tensorflow_start_up_lines(tmp_path):
    """The real command in a fresh process: TensorFlow's C++ lines go to fd 2 before Python's logging."""
    from searcher.devices import DEBUG_ENV

    export = _export_file(tmp_path)
    env = {DEBUG_ENV: None, "TF_CPP_MIN_LOG_LEVEL": None}  # TensorFlow as chatty as it is by default
    out = run_searcher("retrain", str(export), "-o", str(tmp_path / "m.keras"), cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["test", "cost", "wrote"], lines
    assert lines[0].startswith("test accuracy ") and lines[1].startswith("cost here: ")
    # --debug shows them: proof that TensorFlow prints them here, so the check above means something.
    debug = run_searcher("--debug", "retrain", str(export), "-o", str(tmp_path / "m.keras"), cwd=tmp_path, env=env)
    assert debug.returncode == 0, debug.stdout + debug.stderr
    assert [s for s in TF_STARTUP_LINES if s in debug.stderr], debug.stderr
