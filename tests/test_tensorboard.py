"""TensorBoard logs of real searches, read back with TensorBoard's own reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from cli_process import run_searcher
from searcher import stored
from searcher.cli import app
from searches import digits_spec, finished

runner = CliRunner()
SHORT = {"max_epochs": 3}


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _experiment(folder: Path):
    """The HParams experiment written into the study's folder."""
    from tensorboard.plugins.hparams import metadata

    content = _accumulator(folder).SummaryMetadata(metadata.EXPERIMENT_TAG).plugin_data.content
    return metadata.parse_experiment_plugin_data(content)


def _hparams_row(folder: Path, metric: str) -> tuple[str, dict[str, Any], float]:
    """One trial's row of the HParams table: its trial id, hparams and metric, as TensorBoard reads them."""
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    acc = _accumulator(folder)
    info = metadata.parse_session_start_info_plugin_data(
        acc.SummaryMetadata(metadata.SESSION_START_INFO_TAG).plugin_data.content)
    params = {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}
    (value,) = [tensor_util.make_ndarray(e.tensor_proto).item() for e in acc.Tensors(metric)]
    return info.group_name, params, value


def _event_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if "tfevents" in p.name)


@pytest.mark.slow
def test_each_trial_logs_curves_and_its_hparams_row_equals_the_study(tmp_path):
    spec = digits_spec(tmp_path, "tb-digits", training=SHORT)
    url = f"sqlite:///{tmp_path}/s.db"
    run_searcher("launch", str(spec), "--workers", "1", "--trials", "3", "--storage", url, "--tensorboard", "tb",
                 cwd=tmp_path, check=True)
    study = optuna.load_study(study_name="tb-digits", storage=url)
    folder = tmp_path / "tb" / "tb-digits"
    assert study.user_attrs[stored.TENSORBOARD] == str(folder)

    experiment = _experiment(folder)
    assert {h.name for h in experiment.hparam_infos} >= {"activation", "lr", "dropout", "use_l2", "l2", "depth",
                                                         "units_0", "units_1", "units_2", "batch_size"}
    assert ("", "val_accuracy") in {(m.name.group, m.name.tag) for m in experiment.metric_infos}

    trials = finished(study)
    assert len(trials) == 3
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"trial-{t.number}" for t in trials]
    for t in trials:
        trial_dir = folder / f"trial-{t.number}"
        for run in ("train", "validation"):
            curve = _accumulator(trial_dir / run).Tensors("epoch_loss")
            assert len(curve) == t.user_attrs["epochs"], (trial_dir, run)
        trial_id, params, value = _hparams_row(trial_dir, "val_accuracy")
        assert trial_id == f"trial-{t.number}"
        # TensorBoard keeps numbers as doubles: 32 comes back 32.0, which compares equal.
        assert params == t.params
        assert value == pytest.approx(t.value, rel=1e-6)

    status = run_searcher("status", "tb-digits", "--storage", url, cwd=tmp_path, check=True)
    assert f"TensorBoard logs: {folder} — tensorboard --logdir {folder}" in " ".join(status.stdout.split())
    from searcher.report import _tables
    from searcher.report._data import gather

    assert f"TensorBoard logs: {folder}" in _tables.summary(gather(study))


@pytest.mark.slow
def test_cross_validated_trials_log_each_fold_from_the_spec_field(tmp_path):
    spec = digits_spec(tmp_path, "tb-cv", training=SHORT, data={"cv_folds": 2}, runtime={"tensorboard": "logs"},
                       baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    run_searcher("launch", str(spec), "--workers", "1", "--trials", "1", "--storage", url, cwd=tmp_path, check=True)
    (trial,) = finished(optuna.load_study(study_name="tb-cv", storage=url))
    trial_dir = tmp_path / "logs" / "tb-cv" / f"trial-{trial.number}"  # relative to where launch ran
    for fold in ("fold-1", "fold-2"):
        assert _accumulator(trial_dir / fold / "validation").Tensors("epoch_loss"), fold
    _, params, value = _hparams_row(trial_dir, "val_accuracy")
    assert params == trial.params
    assert value == pytest.approx(trial.value, rel=1e-6)  # the mean over the folds, not fold 1's


@pytest.mark.slow
def test_without_tensorboard_nothing_is_written(tmp_path):
    spec = digits_spec(tmp_path, "tb-off", training=SHORT, baselines=[])
    url = f"sqlite:///{tmp_path}/s.db"
    run_searcher("launch", str(spec), "--workers", "1", "--trials", "1", "--storage", url, cwd=tmp_path, check=True)
    study = optuna.load_study(study_name="tb-off", storage=url)
    assert len(finished(study)) == 1
    assert stored.TENSORBOARD not in study.user_attrs
    assert _event_files(tmp_path) == []
    status = run_searcher("status", "tb-off", "--storage", url, cwd=tmp_path, check=True)
    assert "TensorBoard" not in status.stdout


def _one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_bad_tensorboard_value_is_one_line_naming_the_field(tmp_path):
    spec = digits_spec(tmp_path, "tb-bad", runtime={"tensorboard": 3})
    assert _one_line_error(["launch", str(spec)]) == \
        f"Error: {spec}: runtime.tensorboard: input should be a valid string, got 3"
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    spec = digits_spec(tmp_path, "tb-file", runtime={"tensorboard": str(a_file)})
    assert _one_line_error(["launch", str(spec)]) == \
        f"Error: {spec}: runtime.tensorboard: {a_file} is a file; TensorBoard logs need a folder"
    for command in ("launch", "worker"):
        assert _one_line_error([command, "digits-mlp", "--tensorboard", str(a_file)]) == \
            f"Error: --tensorboard: {a_file} is a file; TensorBoard logs need a folder"


def test_workers_starting_together_leave_one_hparams_experiment(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from searcher.spec import load_spec
    from searcher.tensorboard import CONFIG_FILE, write_experiment

    spec = load_spec("digits-mlp")
    folder = tmp_path / "digits-mlp"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: write_experiment(folder, spec), range(8)))
    assert [p.name for p in folder.iterdir()] == [CONFIG_FILE]  # no scratch folders left behind
    experiment = _experiment(folder)
    assert [h.name for h in experiment.hparam_infos][:3] == ["activation", "initializer", "optimizer"]
    lr = next(h for h in experiment.hparam_infos if h.name == "lr")
    assert (lr.domain_interval.min_value, lr.domain_interval.max_value) == (1e-4, 0.3)
    assert len(_event_files(folder)) == 1
