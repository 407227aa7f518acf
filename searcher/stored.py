"""What a study stores: every study and trial user-attr key, and small readers of them.

The key strings are stored data: a study written by an older searcher is read with the same
names, so renaming one is a migration. Readers take anything with ``user_attrs`` (a study, a
``FrozenStudy``, a trial, a ``FrozenTrial``) and return ``None`` (or an empty mapping) where
nothing usable was stored, so a study made by hand or by an older version still reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from searcher.errors import StorageError
from searcher.spec import StudySpec, parse_spec

# --- study attrs
SPEC = "spec"  # the spec the study was created from (StudySpec.to_dict)
SPEC_HASH = "spec_hash"  # StudySpec.search_hash: what a joining worker must share
BUDGET = "n_trials"  # finished trials the study runs to; --trials changes it
BASELINES_ENQUEUED = "baselines_enqueued"
DATA = "data"  # the data summary (rows, features, classes, preprocessing): data.SearchData.summary
CONFIRMED = "confirmed_ranking"  # `searcher confirm`'s ranking, best first
REFERENCES = "references"  # boosted trees and logistic regression on the same split (reference.evaluate)
WARM_START = "warm_start"  # what a warm start carried and left out, once (warm_start.carry)
TENSORBOARD = "tensorboard"  # the folder of the study's TensorBoard logs (tensorboard.study_log_dir)

# --- trial attrs: what the trial ran
CONFIG = "config"  # TrialConfig.to_dict: everything needed to train it again
SEED = "seed"
WORKER_PID, WORKER_HOST, THREADS = "worker_pid", "worker_host", "threads"
RUNTIME = "runtime"  # devices.TrainingRuntime.to_dict: XLA, precision, threads; retrain and replay train so
BASELINE, BASELINE_NOTE = "baseline", "baseline_note"  # the name and why of a queued baseline trial
# --- trial attrs: how it went
CURVE = "curve"  # the validation curve of a multi-objective trial (it has no intermediate values)
FAIL_REASON, FAIL_DETAIL = "fail_reason", "fail_detail"
INFEASIBLE = "infeasible"  # why the network was rejected untrained (over constraints.max_params)
PEAK_RSS_MB = "peak_rss_mb"
N_PARAMS, EPOCHS, BEST_EPOCH = "n_params", "epochs", "best_epoch"
VAL_LOSS_AT_BEST = "val_loss_at_best"  # the tie-breaker between trials of equal value
SEC_PER_EPOCH, TRAIN_SECONDS = "sec_per_epoch", "train_seconds"
CV_VALUES = "cv_values"  # every fold's value at best_epoch, with data.cv_folds
# --- trial attrs: what the model costs (cost.measure_cost)
MODEL_BYTES, LATENCY_B1, LATENCY_LARGE = "model_bytes", "latency_ms_b1", "latency_ms_b256"  # cost.LARGE_BATCH
COST_SECONDS = "cost_seconds"  # what measuring took
# --- trial attrs of a warm start (warm_start.carry)
CARRIED = "warm_start_from"  # {study, trial}: an old study's trial added as history, never a result here
WARM_TOP = "warm_start_top"  # {study, trial}: an old study's top configuration, enqueued to run here
# --- trial attrs: the trained model kept as an Optuna artifact (searcher.artifacts)
MODEL_ARTIFACT = "model_artifact"  # its artifact id; the file is removed when the trial leaves the top K
# --- trial attrs of a `searcher confirm` run
OF_TRIAL, RUN = "of_trial", "run"

LOST_WORKER = "killed (stale heartbeat)"  # the reason of a failed trial that stored none: its worker died


class _HasAttrs(Protocol):
    @property
    def user_attrs(self) -> dict[str, Any]: ...


def spec_dict(study: _HasAttrs) -> Mapping[str, Any]:
    """The stored spec as stored (a plain mapping), empty when there is none."""
    raw = study.user_attrs.get(SPEC)
    return raw if isinstance(raw, Mapping) else {}


def stored_spec(study: Any) -> StudySpec:
    """The spec the study was created from, validated; a ``StorageError`` when it has none."""
    raw: dict[str, Any] | None = study.user_attrs.get(SPEC)
    if raw is None:
        raise StorageError(f"study {study.study_name!r} was not created by searcher (no stored spec)")
    return parse_spec(raw, source=f"study {study.study_name}")


def budget(study: _HasAttrs) -> int | None:
    """The study's budget of finished trials, if stored."""
    value = study.user_attrs.get(BUDGET)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def references(study: _HasAttrs) -> dict[str, Any] | None:
    """The reference models' validation scores (``reference.evaluate``), if stored."""
    raw = study.user_attrs.get(REFERENCES)
    return dict(raw) if isinstance(raw, Mapping) else None


def tensorboard_dir(study: _HasAttrs) -> str | None:
    """The folder of the study's TensorBoard logs, if a worker wrote any."""
    raw = study.user_attrs.get(TENSORBOARD)
    return raw if isinstance(raw, str) else None


def config_of(trial: _HasAttrs) -> dict[str, Any] | None:
    """The trial's config (``TrialConfig.to_dict``), or None when it stored none (yet)."""
    raw = trial.user_attrs.get(CONFIG)
    return raw if isinstance(raw, Mapping) else None


def is_carried(trial: _HasAttrs) -> bool:
    """Whether a warm start carried the trial in from another study as history (not a result here)."""
    return CARRIED in trial.user_attrs


def fail_reason(trial: _HasAttrs) -> str:
    """Why a failed trial failed; one that stored no reason lost its worker."""
    return trial.user_attrs.get(FAIL_REASON) or LOST_WORKER
