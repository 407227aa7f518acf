"""A study in its storage: opened with heartbeats, created once from a spec, joined by workers,
counted against a budget.

The study stores its spec (``spec``) and the spec's search hash (``spec_hash``); a worker
whose spec hashes differently refuses to join, so two search spaces never mix. The
study-wide budget (``n_trials``) counts finished trials, COMPLETE and PRUNED, of all
workers: a FAILED trial is a crash or a retry, not a result.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from searcher import stored, warm_start
from searcher.errors import StorageError, UserError
from searcher.space import baseline_params, grid_search_space
from searcher.outage import Outage
from searcher.spec import NAME_PATTERN, StudySpec, directions, load_spec, objective_names, resolve_spec_path
from searcher.storage import RECONNECT_SECONDS, mask_url, open_storage
from searcher.tensorboard import resolve_log_dir

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def load_launch_spec(source: str, seed: int | None, *, mixed_precision: bool | None = None,
                     xla: bool | None = None, tensorboard: str | None = None) -> tuple[StudySpec, Path]:
    """The spec with the command line's overrides: the seed (a different study), and the
    runtime options, which change how fast a trial runs, not what it computes. The TensorBoard
    folder (``--tensorboard``, else the spec's) is made absolute here."""
    spec, path = load_spec(source), resolve_spec_path(source)
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    runtime = {k: v for k, v in (("mixed_precision", mixed_precision), ("xla", xla)) if v is not None}
    if board := tensorboard or spec.runtime.tensorboard:
        runtime["tensorboard"] = resolve_log_dir(board, field="--tensorboard" if tensorboard else
                                                 f"{path}: runtime.tensorboard")
    if runtime:
        spec = spec.model_copy(update={"runtime": spec.runtime.model_copy(update=runtime)})
    return spec, path.resolve()


def study_name(base: str, *, name: str | None = None, seed: int | None = None) -> str:
    """The study's name in its storage: ``--name``, else ``base`` (the spec's name), with
    ``-seed<N>`` under ``--seed N``, so repeats over seeds sit side by side in one database."""
    if name is None:
        return base if seed is None else f"{base}-seed{seed}"
    if not re.fullmatch(NAME_PATTERN, name):
        raise UserError(f"--name: must start with a letter or digit and hold only letters, digits, '_', '.' "
                        f"and '-', got {name!r}")
    return name


def _stale_trial_callback(spec: StudySpec) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    return optuna.storages.RetryHeartbeatStaleTrialCallback(
        max_retry=spec.runtime.max_retries, inherit_intermediate_values=True
    )


def retry_interrupted(study: optuna.Study, number: int, spec: StudySpec) -> bool:
    """Queue a trial that a SIGTERM cut short to run again, as a stale trial is retried (same
    params and seed, up to ``runtime.max_retries``); return whether it was queued.

    A worker stopped on purpose (a Slurm time limit, a Kubernetes eviction, Ctrl-C) then loses
    no trial. One left RUNNING without being failed is the stale-trial check's to retry.
    """
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number == number]
    if not failed:
        return False
    frozen = copy.copy(failed[0])  # its user attrs are replaced below, not the study's copy

    def waiting() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    before = waiting()
    # The retry starts clean: it has not failed (yet).
    frozen.user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in (stored.FAIL_REASON, stored.FAIL_DETAIL)}
    _stale_trial_callback(spec)(study, frozen)
    return waiting() > before


def open_study_storage(spec: StudySpec, url: str, *, outage: Outage | None = None,
                       reconnect_seconds: float = RECONNECT_SECONDS) -> optuna.storages.RDBStorage:
    """The study's storage with heartbeats on, so a killed worker's trial is failed and retried;
    ``outage`` and ``reconnect_seconds`` as for ``open_storage``."""
    return open_storage(
        url,
        heartbeat_interval=spec.runtime.heartbeat_interval,
        grace_period=spec.runtime.grace_period,
        stale_trial_callback=_stale_trial_callback(spec),
        outage=outage or Outage(minutes=spec.runtime.db_outage_minutes),
        reconnect_seconds=reconnect_seconds,
    )


def make_sampler(spec: StudySpec, *, seed: int | None) -> optuna.samplers.BaseSampler:
    """The spec's sampler. TPE is multivariate with a constant liar, so parallel workers
    treat each other's running trials as bad results and do not sample the same point.

    Constraints reach TPE, NSGA-II and GP through each trial's ``trial.constraints``, which
    the objective sets (Optuna 5 deprecates ``constraints_func`` for ``Trial.set_constraint``).
    """
    s = spec.sampler
    match s.name:
        case "tpe":
            return optuna.samplers.TPESampler(
                n_startup_trials=s.n_startup_trials,
                multivariate=True,
                group=True,  # conditional knobs (momentum, units_i) get their own groups
                constant_liar=True,
                seed=seed,  # no warn_independent_sampling: deprecated since Optuna 4.9, and off
            )
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "cmaes":
            return optuna.samplers.CmaEsSampler(n_startup_trials=s.n_startup_trials, seed=seed, warn_independent_sampling=False)
        case "gp":
            return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, seed=seed)
        case "grid":
            return optuna.samplers.GridSampler(grid_search_space(spec), seed=seed)
        case "nsgaii":
            return optuna.samplers.NSGAIISampler(population_size=s.n_startup_trials, seed=seed)
    raise AssertionError(s.name)


def pruning_off_reason(spec: StudySpec) -> str | None:
    """Why the spec's pruner does not run, if it does not: Optuna's pruners need one objective."""
    if len(objective_names(spec)) > 1 and spec.pruner.name != "none":
        return (f"pruning off: {len(objective_names(spec))} objectives, and Optuna's pruners (and Trial.report) "
                f"need one; early stopping on {spec.training.metric} stays")
    return None


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``spec.pruner`` names; none when pruning is off (``pruning_off_reason``)."""
    p, max_epochs = spec.pruner, spec.training.max_epochs
    if pruning_off_reason(spec):
        return optuna.pruners.NopPruner()
    match p.name:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, p.n_warmup_steps))
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps), max_resource=max_epochs)
        case "none":
            return optuna.pruners.NopPruner()
    raise AssertionError(p.name)


def create_or_continue(spec: StudySpec, storage: optuna.storages.BaseStorage, *, n_trials: int | None,
                       name: str | None = None) -> optuna.Study:
    """Create the study ``name`` (default: the spec's name) or load it, before any worker
    starts; enqueue baselines once, and warm-start it (``spec.warm_start``) once.

    The budget becomes ``n_trials`` (None: the spec's) on a new study; on an existing one it
    only grows: a larger stored budget, raised by ``searcher budget`` or ``launch --trials``,
    is kept (``kept_budget_note`` says so), since a restarted ``worker --create`` or a re-run
    create Job must not undo it. Lowering is ``set_budget``'s.
    Raises StorageError when a study of that name exists with a different spec.
    """
    study = optuna.create_study(
        study_name=name or spec.name,
        storage=storage,
        directions=directions(spec),
        load_if_exists=True,
    )
    stored_hash = study.user_attrs.get(stored.SPEC_HASH)
    if stored_hash is None:
        study.set_metric_names(list(objective_names(spec)))  # shown by optuna-dashboard and plots
        study.set_user_attr(stored.SPEC, spec.to_dict())
        study.set_user_attr(stored.SPEC_HASH, spec.search_hash())
    else:
        check_same_spec(study, spec)
    asked = n_trials or spec.budget.n_trials
    before = stored.budget(study)
    if before is None or asked > before:
        study.set_user_attr(stored.BUDGET, asked)
    created = bool(study.user_attrs.get(stored.BASELINES_ENQUEUED))
    if not created:
        for baseline in spec.baselines:
            study.enqueue_trial(
                baseline_params(spec, baseline.params),
                user_attrs={stored.BASELINE: baseline.name, stored.BASELINE_NOTE: baseline.note},
                skip_if_exists=True,
            )
    warm_start.carry(study, spec, storage)  # after the baselines, before the study counts as created
    if not created:
        study.set_user_attr(stored.BASELINES_ENQUEUED, True)
    return study


def kept_budget_note(study: optuna.Study, asked: int) -> str | None:
    """One line when ``create_or_continue`` was asked for less than the stored budget and kept it."""
    kept = stored.budget(study)
    if kept is None or asked >= kept:
        return None
    return (f"{study.study_name}: kept the budget of {kept} trials (asked {asked}): creating never lowers a "
            f"budget; lower it with `searcher budget {study.study_name} {asked}`")


@dataclass(frozen=True)
class BudgetChange:
    """A budget set by ``set_budget``: before and after, and the trials finished and running then."""

    study: str
    before: int | None
    after: int
    finished: int
    running: int

    def describe(self) -> str:
        """``digits-mlp: budget 6 -> 10 trials (3 finished, 2 running); ...`` and what happens next."""
        change = f"{self.before} -> {self.after}" if self.before not in (None, self.after) else f"{self.after} (unchanged)"
        if self.after <= self.finished + self.running:
            then = "no new trial starts" + (" once the running ones finish" if self.running else "")
        elif self.running:
            then = "running workers take it up before their next trial"
        else:
            then = (f"no trial is running: `searcher launch` or `searcher worker` runs the other "
                    f"{self.after - self.finished}")
        return f"{self.study}: budget {change} trials ({self.finished} finished, {self.running} running); {then}"


def set_budget(study: optuna.Study, n_trials: int, *, storage: optuna.storages.RDBStorage | None = None,
               flag: str = "N") -> BudgetChange:
    """Set the study-wide budget to ``n_trials``, up or down, but not below the trials finished.

    Workers re-read it before each trial (``budget_in_database``), so a running study grows or
    shrinks without a restart. Call it under the study's budget lock. ``flag`` names the
    argument in the error (``--trials`` for launch).
    """
    states = count_states_in_database(storage, study.study_name) if storage is not None else count_states(study)
    done = finished(states)
    if n_trials < done:
        raise UserError(f"{flag}: {study.study_name} has {done} finished trials; its budget cannot go below that "
                        f"(got {n_trials})")
    before = stored.budget(study)
    if before != n_trials:
        study.set_user_attr(stored.BUDGET, n_trials)
    return BudgetChange(study.study_name, before, n_trials, done, states["RUNNING"])


def budget_in_database(storage: optuna.storages.RDBStorage, name: str) -> int | None:
    """The study's budget as the database holds it now: one attribute, read in this thread's
    Optuna session (inside the budget lock's transaction when held), never a cached copy."""
    session = storage.scoped_session()
    try:
        value = session.execute(sqlalchemy.text(
            "SELECT a.value_json FROM study_user_attributes a JOIN studies s ON s.study_id = a.study_id "
            "WHERE s.study_name = :name AND a.key = :key"), {"name": name, "key": stored.BUDGET}).scalar()
    finally:
        session.close()
    return None if value is None else int(json.loads(value))


def load(
    name: str,
    storage: optuna.storages.BaseStorage,
    *,
    url: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load an existing study by name; a one-line error lists the ones that exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
        known = f"studies there: {', '.join(names)}" if names else "it holds no studies"
        raise StorageError(f"no study {name!r} in {mask_url(url)} ({known}); start it with `searcher launch {name}`") from None


def wait_until_ready(url: str, *, seconds: float, name: str | None = None, poll_seconds: float = 5.0) -> None:
    """Wait up to ``seconds`` for the storage to accept connections and, given ``name``, for
    that study to be fully created (spec stored, baselines enqueued: the last step of
    ``create_or_continue``).

    For processes started together with the database and the job that creates the study
    (Kubernetes, Slurm): they wait instead of failing, and no worker reads a half-made study.
    Raises the last StorageError when the time is up.
    """
    deadline = time.monotonic() + seconds
    waiting_since = None
    while True:
        try:
            storage = open_storage(url)
            try:
                if name is not None and not load(name, storage, url=url).user_attrs.get(stored.BASELINES_ENQUEUED):
                    raise StorageError(f"study {name!r} in {mask_url(url)} is still being created")
            finally:
                storage.engine.dispose()
        except StorageError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(f"{e} (waited {seconds:.0f} s)") from None
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.warning("waiting up to %.0f s: %s", seconds, e)
            time.sleep(min(poll_seconds, left))
            continue
        if waiting_since is not None:
            log.warning("ready after %.0f s", time.monotonic() - waiting_since)
        return


def check_same_spec(study: optuna.Study, spec: StudySpec) -> None:
    """Refuse a worker whose spec searches otherwise than the one the study was created from."""
    stored_hash = study.user_attrs.get(stored.SPEC_HASH)
    if stored_hash is not None and stored_hash != spec.search_hash():
        raise StorageError(
            f"study {study.study_name!r} was created from a different spec (hash {stored_hash}, yours "
            f"{spec.search_hash()}); a worker must use the same spec, or launch under another name (--name)"
        )


def count_states(study: optuna.Study) -> Counter[str]:
    """The study's own trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING): not the
    history a warm start carried in, which never counts against the budget."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False) if not stored.is_carried(t))


def finished(states: Counter[str]) -> int:
    """Trials that count as results: COMPLETE and PRUNED (see the module docstring)."""
    return sum(states[state.name] for state in FINISHED)


def budget_left(study: optuna.Study, n_trials: int, *, storage: optuna.storages.RDBStorage | None = None) -> int:
    """How many more trials may start: finished and running ones count against the budget.

    Given the study's storage, one ``GROUP BY`` query counts them; reading the trials
    instead loads every RUNNING trial with its attributes, at each trial start, so the
    check grew with the number of workers.
    """
    states = count_states_in_database(storage, study.study_name) if storage is not None else count_states(study)
    return n_trials - finished(states) - states["RUNNING"]


def count_states_in_database(storage: optuna.storages.RDBStorage, name: str) -> Counter[str]:
    """The study's own trials by state name, counted by the database (Optuna's ``trials`` and
    ``trial_user_attributes`` tables, unchanged since 2.x); warm-start history is left out.

    Runs in this thread's Optuna session, so inside the budget lock's transaction when held.
    """
    session = storage.scoped_session()
    try:
        rows = session.execute(sqlalchemy.text(
            "SELECT t.state, count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = :name AND NOT EXISTS (SELECT 1 FROM trial_user_attributes a "
            "WHERE a.trial_id = t.trial_id AND a.key = :carried) GROUP BY t.state"),
            {"name": name, "carried": stored.CARRIED}).all()
    finally:
        session.close()
    return Counter({str(state): n for state, n in rows})


def silent_running_trials(storage: optuna.storages.RDBStorage, name: str, seconds: float) -> list[int]:
    """The numbers of the study's RUNNING trials whose last heartbeat is over ``seconds`` old,
    by the database's clock (as Optuna's stale-trial check judges): their worker may be gone."""
    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar().replace(tzinfo=None)
        rows = session.execute(sqlalchemy.text(
            "SELECT t.number, h.heartbeat FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
            "WHERE s.study_name = :name AND t.state = 'RUNNING'"
        ).columns(number=sqlalchemy.Integer, heartbeat=sqlalchemy.DateTime), {"name": name}).all()
    finally:
        session.close()
    return sorted(number for number, beat in rows if (now - beat.replace(tzinfo=None)).total_seconds() > seconds)
