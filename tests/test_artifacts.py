"""Kept models: a real digits study keeps its top trials' models as Optuna artifacts, removes the
others', and `export --model` hands one back that scores on validation what the trial stored."""

from __future__ import annotations

import json
import threading
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from cli_process import run_searcher
from made_trials import ROWS, cost_study
from searcher import ranking, stored
from searcher.artifacts import default_folder, is_kept, open_store, top_trials
from searcher.errors import UserError
from searcher.export import export_config
from searches import digits_spec

KEEP = 2


@pytest.fixture(scope="module")
def kept_search(tmp_path_factory):
    """A 6-trial digits study (1 worker, short training, no pruning) keeping the best 2 models."""
    folder = tmp_path_factory.mktemp("kept")
    spec = digits_spec(folder, "kept", training={"max_epochs": 4, "patience": 2}, pruner={"name": "none"},
                       runtime={"keep_models": KEEP}, baselines=[], sampler={"name": "random"})
    url = f"sqlite:///{folder / 'searcher.db'}"
    out = run_searcher("launch", str(spec), "--workers", "1", "--trials", "6", "--storage", url, cwd=folder, check=True)
    assert f"searcher export kept --storage '{url}' --model -o kept-trained.keras" in out.stdout
    return folder, url, optuna.load_study(study_name="kept", storage=url)


@pytest.mark.slow
def test_exactly_the_top_trials_keep_a_model(kept_search):
    folder, url, study = kept_search
    store_folder = folder / "searcher-artifacts"
    assert default_folder(url) == store_folder
    best = [t.number for t in ranking.ranked(study)[:KEEP]]
    store = open_store(None, url)
    kept = sorted(t.number for t in study.trials
                  if t.user_attrs.get(stored.MODEL_ARTIFACT) and is_kept(store, t.user_attrs[stored.MODEL_ARTIFACT]))
    assert kept == sorted(best)
    files = sorted(p.name for p in store_folder.iterdir())
    assert files == sorted(study.trials[n].user_attrs[stored.MODEL_ARTIFACT] for n in best)
    # Optuna's own listing: each kept trial's model is an artifact of that trial.
    for n in best:
        metas = optuna.artifacts.get_all_artifact_meta(study.trials[n], storage=study._storage)
        assert [m.filename for m in metas] == [f"trial-{n}.keras"]


@pytest.mark.slow
def test_export_model_scores_the_trials_value_on_validation(kept_search, tmp_path):
    folder, url, study = kept_search
    best = ranking.ranked(study)[0]
    out = run_searcher("export", "kept", "--model", "-o", str(tmp_path / "best.keras"), "--storage", url,
                       cwd=folder, check=True)
    assert f"trial {best.number}'s trained model" in out.stdout
    assert "not scored on test: `searcher retrain` trains a final model scored once on the test split" in out.stdout

    import keras

    from searcher.data import load_search_data
    from searcher.space import TrialConfig

    model = keras.models.load_model(tmp_path / "best.keras")
    config = TrialConfig.model_validate(best.user_attrs[stored.CONFIG])
    val = load_search_data(config.data, split_seed=config.split_seed).val
    assert val.x.max() == 16.0, "raw inputs: the model rescales them itself"
    accuracy = float((model.predict(val.x, verbose=0).argmax(axis=1) == val.y).mean())
    assert accuracy == pytest.approx(best.value, abs=1e-6)


@pytest.mark.slow
def test_export_model_of_a_trial_without_one_is_one_line(kept_search, tmp_path):
    folder, url, study = kept_search
    dropped = ranking.ranked(study)[KEEP].number
    out = run_searcher("export", "kept", "--model", "--trial", str(dropped), "-o", str(tmp_path / "m.keras"),
                       "--storage", url, cwd=folder)
    assert out.returncode == 1
    kept = ", ".join(str(n) for n in sorted(t.number for t in ranking.ranked(study)[:KEEP]))
    assert out.stderr.strip() == (
        f"Error: --model: trial {dropped} of 'kept' has no kept model; trials with a kept model: {kept}; "
        f"`searcher export kept --trial {dropped} -o t.yaml` and `searcher retrain t.yaml` train one")
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_export_trial_by_number(kept_search, tmp_path):
    folder, url, study = kept_search
    number = ranking.ranked(study)[-1].number
    out = run_searcher("export", "kept", "--trial", str(number), "--format", "json", "--storage", url, cwd=folder,
                       check=True)
    document = json.loads(out.stdout)
    assert document["source"]["trial"] == number
    assert document["source"]["picked"] == f"trial {number} by number"
    assert document["config"] == study.trials[number].user_attrs[stored.CONFIG]


@pytest.mark.slow
def test_dashboard_lists_the_kept_models(kept_search):
    from searcher.dashboard import make_dashboard_server

    folder, url, study = kept_search
    server = make_dashboard_server(url, host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{study._study_id}?after=0", timeout=60))
        listed = {t["number"]: [a["filename"] for a in t["artifacts"]] for t in detail["trials"] if t["artifacts"]}
        best = ranking.ranked(study)[0]
        assert listed[best.number] == [f"trial-{best.number}.keras"]
        artifact_id = best.user_attrs[stored.MODEL_ARTIFACT]
        body = urllib.request.urlopen(f"{base}/artifacts/{study._study_id}/{best._trial_id}/{artifact_id}",
                                      timeout=60).read()
        assert body == (folder / "searcher-artifacts" / artifact_id).read_bytes()
    finally:
        server.shutdown()
        server.server_close()


def _study_with_states() -> optuna.Study:
    study = cost_study(ROWS)
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"config": {}}))
    return study


@pytest.mark.parametrize("kwargs, message", [
    ({"number": 99}, r"^--trial: study 'no-name-.*' has no trial 99 \(it has trials 0\.\.6\)$"),
    ({"number": 6}, r"^--trial: trial 6 of 'no-name-.*' is PRUNED, not COMPLETE$"),
    ({"number": 2, "rank": 1}, r"^--trial cannot be combined with --rank, --smallest-within, --max-params or "
                               r"--max-latency-ms$"),
    ({"number": 2, "pick": ranking.PickByCost(max_params=10)}, r"^--trial cannot be combined with"),
])
def test_export_trial_errors_name_what_it_is(kwargs, message):
    with pytest.raises(UserError, match=message):
        export_config(_study_with_states(), **kwargs)


def test_export_trial_takes_any_complete_trial_even_an_infeasible_one():
    document = export_config(cost_study(ROWS), number=1)  # over max_params
    assert document["source"]["trial"] == 1 and document["source"]["picked"] == "trial 1 by number"


def test_top_trials_single_objective_by_value():
    study = cost_study(ROWS)
    assert [t.number for t in top_trials(study.trials, ranking.goal(study), 3)] == [0, 2, 3]  # trial 1 is infeasible


def test_top_trials_two_objectives_keep_the_pareto_front_best_metric_first():
    study = cost_study(ROWS, objectives=("val_accuracy", "n_params"))
    # Front by (accuracy, parameters) among the feasible: 0 (0.980), 2 (0.977, 9k), 3 (0.976, 3k), 4 (0.960, 2k);
    # 5 (0.975, 12k) is dominated by 2.
    assert [t.number for t in top_trials(study.trials, ranking.goal(study), 3)] == [0, 2, 3]
    assert [t.number for t in top_trials(study.trials, ranking.goal(study), 10)] == [0, 2, 3, 4]


def test_a_server_database_has_no_default_store_and_s3_needs_boto3(tmp_path):
    assert open_store(None, "postgresql+psycopg2://u@h/db") is None
    assert open_store(None, f"sqlite:///{tmp_path / 'x.db'}") is None, "not created by a reader"
    assert open_store(None, f"sqlite:///{tmp_path / 'x.db'}", create=True) is not None
    assert (tmp_path / "x-artifacts").is_dir()
    try:
        import boto3  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"^runtime\.artifacts: s3://bucket/models needs boto3 \(pip install boto3\)$"):
            open_store("s3://bucket/models", "sqlite:///x.db")
    with pytest.raises(UserError, match=r"^runtime\.artifacts: an S3 location needs a bucket"):
        open_store("s3:///models", "sqlite:///x.db")


def test_keeper_removes_dropped_models_and_tolerates_one_already_gone(tmp_path):
    import keras

    from searcher.artifacts import ModelKeeper
    from searcher.spec import RuntimeSpec
    from searcher.training import TrainResult

    url = f"sqlite:///{tmp_path / 'k.db'}"
    study = optuna.create_study(storage=url, direction="maximize", study_name="k")
    keeper = ModelKeeper(RuntimeSpec(keep_models=2), patience=2, cross_validated=False)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    values = [0.1, 0.5, 0.3, 0.9, 0.2]

    def objective(trial: optuna.Trial) -> float:
        value = values[trial.number]
        if trial.number == 2:  # another worker removed trial 0's model meanwhile: nothing to remove is fine
            (tmp_path / "k-artifacts" / study.trials[0].user_attrs[stored.MODEL_ARTIFACT]).unlink()
        keeper.keep(trial, TrainResult(model, {"val_accuracy": [value]}, "val_accuracy", "maximize"), (value,))
        return value

    study.optimize(objective, n_trials=len(values))
    uploaded = {t.number: t.user_attrs[stored.MODEL_ARTIFACT] for t in study.trials if stored.MODEL_ARTIFACT in t.user_attrs}
    assert sorted(uploaded) == [0, 1, 2, 3], "each was in the top 2 when it finished; trial 4 never was"
    assert sorted(p.name for p in (tmp_path / "k-artifacts").iterdir()) == sorted([uploaded[1], uploaded[3]])
