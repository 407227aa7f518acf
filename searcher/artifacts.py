"""Keep the trained models of a study's best trials as Optuna artifacts, and hand one back.

A trial that finishes COMPLETE inside the study's top K (``runtime.keep_models``) saves its
model as a ``.keras`` file on raw inputs, as ``retrain`` writes one (the preprocessing is
inside the model), with the weights of its best epoch (early stopping restores them), and
uploads it with ``optuna.artifacts.upload_artifact`` to the trial: optuna-dashboard lists it
on the trial's page. Its artifact id is the ``model_artifact`` user attr.

The top K is ``ranking.ranked``'s order; in a two-objective study it is the Pareto front,
best metric first, up to K (the trials ``confirm`` and ``export`` choose from). A trial that
joins the top K removes the files of finished trials that are no longer in it, so the store
holds about K files. Workers finishing at the same moment may each think they are in the top K,
and a trial still running is never removed: briefly, and at the end of a study, the store may hold
up to K plus one per worker; the next trial to join tidies up. Optuna cannot change a finished
trial, so a removed model's entry stays in the trial's metadata (and in optuna-dashboard's list,
where its download then fails): the artifact store is what says whether a model is kept.

Where: ``runtime.artifacts`` (a folder every worker can reach, or ``s3://bucket/prefix`` with
boto3), else ``<db stem>-artifacts/`` beside a SQLite file. A server database without
``runtime.artifacts`` keeps no models (one log line says how to turn it on).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Sequence

import optuna
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from searcher import ranking, stored
from searcher.errors import UserError

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from searcher.spec import RuntimeSpec
    from searcher.training import TrainResult

log = logging.getLogger(__name__)

S3_SCHEME = "s3://"


def default_folder(url: str) -> Path | None:
    """``<db stem>-artifacts/`` beside a SQLite database file; None for a server database."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = Path(make_url(url).database or "")
    return database.with_name(f"{database.stem}-artifacts")


def open_store(location: str | None, url: str, *, create: bool = False) -> ArtifactStore | None:
    """The artifact store at ``location`` (``runtime.artifacts`` or ``--artifacts``), else beside
    a SQLite ``url``; None when there is none (a server database without a location, or with
    ``create=False`` a folder that does not exist)."""
    if location and location.startswith(S3_SCHEME):
        return _s3_store(location)
    folder = Path(location) if location else default_folder(url)
    if folder is None:
        return None
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    elif not folder.is_dir():
        return None
    return optuna.artifacts.FileSystemArtifactStore(folder)


def _s3_store(location: str) -> ArtifactStore:
    """``s3://bucket/prefix`` as a ``Boto3ArtifactStore`` (credentials and endpoint from boto3's
    usual environment, e.g. ``AWS_ENDPOINT_URL`` for an S3-compatible store)."""
    bucket, _, prefix = location[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise UserError(f"runtime.artifacts: an S3 location needs a bucket (s3://bucket/prefix), got {location!r}")
    try:
        import boto3  # noqa: F401  (optional: only S3 stores need it)
    except ImportError:
        raise UserError(f"runtime.artifacts: {location} needs boto3 (pip install boto3)") from None
    store = optuna.artifacts.Boto3ArtifactStore(bucket)
    return _Prefixed(store, prefix.strip("/")) if prefix.strip("/") else store


class _Prefixed:
    """An artifact store whose ids live under ``prefix/`` of another (a folder of an S3 bucket)."""

    def __init__(self, store: ArtifactStore, prefix: str) -> None:
        self.store, self.prefix = store, prefix

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(f"{self.prefix}/{artifact_id}")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(f"{self.prefix}/{artifact_id}", content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(f"{self.prefix}/{artifact_id}")


def top_trials(trials: Sequence[FrozenTrial], goal: ranking.StudyGoal, k: int) -> list[FrozenTrial]:
    """The trials whose models are kept: the best ``k`` by ``ranking.rank``, or in a two-objective
    study the first ``k`` of the Pareto front, best metric first."""
    ranked = ranking.rank(trials, maximize=goal.maximize)
    if goal.multi:
        return ranking.front(ranked, cost=goal.cost, maximize=goal.maximize[0])[::-1][:k]
    return ranked[:k]


def is_kept(store: ArtifactStore, artifact_id: str) -> bool:
    """Whether the store still holds the artifact (a removed one's id stays on its trial)."""
    try:
        store.open_reader(artifact_id).close()
    except ArtifactNotFound:
        return False
    return True


def kept_trials(study: optuna.Study, store: ArtifactStore | None) -> list[FrozenTrial]:
    """The study's trials whose model the store holds, by trial number."""
    if store is None:
        return []
    return [t for t in study.get_trials(deepcopy=False)
            if isinstance(t.user_attrs.get(stored.MODEL_ARTIFACT), str) and is_kept(store, t.user_attrs[stored.MODEL_ARTIFACT])]


class ModelKeeper:
    """The objective's part: keep a finished trial's model while it is in the top K.

    Args:
        runtime: the spec's runtime (``keep_models``, ``artifacts``).
        patience: the spec's early-stopping patience; without it the model holds the last
            epoch's weights, kept only when that epoch was the best.
        cross_validated: a cross-validated trial's value belongs to k fold models, none of which
            scores it alone: nothing is kept (``retrain`` trains their average).
    """

    def __init__(self, runtime: RuntimeSpec, *, patience: int | None, cross_validated: bool) -> None:
        self.k, self.location, self.patience = runtime.keep_models, runtime.artifacts, patience
        self._store: ArtifactStore | None = None
        self._opened = False
        if self.k and cross_validated:
            log.info("runtime.keep_models: off for a cross-validated study (a trial is one model per fold); "
                     "`searcher retrain` trains the final model")
            self.k = 0

    def keep(self, trial: optuna.Trial, result: TrainResult, values: Sequence[float]) -> None:
        """Called with the trial's values just before it returns them (it is still RUNNING)."""
        if not self.k or not (self.patience or result.best_epoch == len(result.curve)):
            return
        store = self._store_for(trial)
        if store is None:
            return
        study = trial.study
        others = [t for t in ranking.own_trials(study) if t.number != trial.number]  # not warm-start history
        top = {t.number for t in top_trials(others + [_as_complete(trial, values)], ranking.goal(study), self.k)}
        if trial.number not in top:
            return
        try:
            artifact_id = _upload_model(store, trial, result.model)
        except OSError as e:  # a full disk or an unreachable store costs the model, not the trial
            log.warning("trial %d: its model was not kept (%s)", trial.number, e)
            return
        trial.set_user_attr(stored.MODEL_ARTIFACT, artifact_id)
        _remove_dropped(store, others, top)

    def _store_for(self, trial: optuna.Trial) -> ArtifactStore | None:
        if not self._opened:
            self._opened = True
            url = _url_of(trial.storage)
            self._store = open_store(self.location, url, create=True)
            if self._store is None:
                log.info("runtime.keep_models: off: a server database has no folder beside it; set "
                         "runtime.artifacts to a folder every worker can reach, or s3://bucket/prefix")
        return self._store


def _as_complete(trial: optuna.Trial, values: Sequence[float]) -> FrozenTrial:
    """The running trial as it will be stored once it returns ``values`` (attrs and constraints as now)."""
    now = trial.storage.get_trial(trial._trial_id)
    complete = optuna.trial.create_trial(state=TrialState.COMPLETE, values=list(values),
                                         user_attrs=now.user_attrs, system_attrs=now.system_attrs)
    complete.number = trial.number
    return complete


def _upload_model(store: ArtifactStore, trial: optuna.Trial, model: Any) -> str:
    with tempfile.TemporaryDirectory(prefix="searcher-model-") as folder:
        path = Path(folder) / f"trial-{trial.number}.keras"
        model.save(path)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


def _remove_dropped(store: ArtifactStore, trials: Sequence[FrozenTrial], top: set[int]) -> None:
    """Remove the models of finished trials outside ``top``; one already removed (by another
    worker, or earlier) is fine. A running trial's model is left to the next trial that joins."""
    for t in trials:
        artifact_id = t.user_attrs.get(stored.MODEL_ARTIFACT)
        if t.state.is_finished() and t.number not in top and isinstance(artifact_id, str):
            try:
                store.remove(artifact_id)
                log.info("trial %d's model removed: no longer in the top %d", t.number, len(top))
            except ArtifactNotFound:
                pass


def _url_of(storage: Any) -> str:
    """The database URL of an Optuna storage (its cache layer unwrapped)."""
    while not hasattr(storage, "url") and hasattr(storage, "_backend"):
        storage = storage._backend
    return str(getattr(storage, "url", ""))


def export_model(study: optuna.Study, trial: FrozenTrial, store: ArtifactStore | None, output: Path) -> None:
    """Write ``trial``'s kept model to ``output`` (a ``.keras`` file); a ``UserError`` naming the
    trials that have one when it has none."""
    if output.suffix != ".keras":
        raise UserError(f"-o: the model file must end in .keras, got {output.name}")
    artifact_id = trial.user_attrs.get(stored.MODEL_ARTIFACT)
    if store is None or not isinstance(artifact_id, str) or not is_kept(store, artifact_id):
        kept = [t.number for t in kept_trials(study, store)]
        have = (f"trials with a kept model: {', '.join(map(str, kept))}" if kept else
                "no trial has one (runtime.keep_models, runtime.artifacts)" if store is not None else
                "no artifact store found for it (runtime.artifacts, or --artifacts DIR)")
        raise UserError(f"--model: trial {trial.number} of {study.study_name!r} has no kept model; {have}; "
                        f"`searcher export {study.study_name} --trial {trial.number} -o t.yaml` and "
                        "`searcher retrain t.yaml` train one")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.{os.getpid()}.part")
    partial.unlink(missing_ok=True)
    optuna.artifacts.download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(partial))
    os.replace(partial, output)


def write_kept_model(study: optuna.Study, url: str, output: Path | None, *, location: str | None = None,
                     number: int | None = None, rank: int | None = None,
                     pick: ranking.PickByCost = ranking.PickByCost()) -> tuple[FrozenTrial, str]:
    """``export --model``: the picked trial's kept model written to ``output``, without training.

    The store is ``location`` (``--artifacts``), else the study's ``runtime.artifacts``, else the
    folder beside a SQLite database. Returns the trial and a line saying what the file is.
    """
    from searcher.export import pick_trial

    if output is None:
        raise UserError("--model: needs -o FILE.keras")
    trial, why = pick_trial(study, rank=rank, pick=pick, number=number)
    spec = stored.spec_dict(study)
    store = open_store(location or (spec.get("runtime") or {}).get("artifacts"), url)
    export_model(study, trial, store, output)
    metric = (stored.config_of(trial) or {}).get("training", {}).get("metric", ranking.goal(study).metric)
    picked = "" if number is not None else f"{why}; "
    return trial, (f"trial {trial.number}'s trained model ({picked}{metric} {ranking.metric_value(trial):.4f}), "
                   "not scored on test: `searcher retrain` trains a final model scored once on the test split")
