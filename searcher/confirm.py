"""Trust the winner: replay a stored trial, and confirm the top trials over fresh seeds.

A single run's validation score carries the luck of its seed. ``confirm`` retrains the
top K configs S times each with new seeds (validation split only, never the test split),
stores every run in a companion study ``<study>--confirm`` so a second call continues,
and ranks the configs by mean score. ``export`` then takes the confirmed winner.
"""

from __future__ import annotations

import logging
import os
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import multiprocessing
import optuna
from optuna.trial import TrialState

from searcher import ranking
from searcher.errors import UserError
from searcher.devices import TrainingRuntime
from searcher.export import ranked_trials, trial_by_number
from searcher.stored import CONFIG, CONFIRMED, CURVE, N_PARAMS, OF_TRIAL, RUN, RUNTIME, SEED, THREADS
from searcher.space import TrialConfig

log = logging.getLogger(__name__)
CONFIRM_SUFFIX = "--confirm"


@dataclass(frozen=True)
class Replay:
    trial: int
    stored: list[float]
    replayed: list[float]

    @property
    def max_abs_diff(self) -> float:
        pairs = zip(self.stored, self.replayed)
        return max((abs(a - b) for a, b in pairs), default=0.0)


def stored_config(trial: optuna.trial.FrozenTrial) -> TrialConfig:
    if CONFIG not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no stored config (it never started training)")
    return TrialConfig.model_validate(trial.user_attrs[CONFIG])


def use_trial_threads(study: optuna.Study, number: int) -> None:
    """Give this process the thread count the trial's worker had (before TensorFlow is imported):
    float sums depend on how the work is split, so a replay on other threads drifts."""
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is not None and trial.user_attrs.get(RUNTIME):
        os.environ.update(stored_runtime(trial).thread_env())
    elif trial is not None and trial.user_attrs.get(THREADS):  # stored before the runtime was
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(trial.user_attrs[THREADS])
        os.environ["TF_NUM_INTEROP_THREADS"] = "1"


def stored_runtime(trial: optuna.trial.FrozenTrial) -> TrainingRuntime:
    """How the trial trained (XLA, precision, threads), to train its config again the same way."""
    return TrainingRuntime.from_dict(trial.user_attrs.get(RUNTIME))


def replay_trial(study: optuna.Study, number: int, *, data_dir: str | None = None) -> Replay:
    """Re-run a trial's exact config and seed for as many epochs as it ran; compare curves."""
    from searcher.data import load_search_data
    from searcher.devices import apply_runtime
    from searcher.training import train

    trials = {t.number: t for t in ranking.own_trials(study)}
    if number not in trials:
        raise UserError(f"TRIAL: study {study.study_name!r} has no trial {number} (it has 0..{len(trials) - 1})")
    trial = trials[number]
    # A two-objective study cannot report intermediate values: its curve is a user attr.
    stored = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)] or \
        list(trial.user_attrs.get(CURVE, ()))
    if not stored:
        raise UserError(f"trial {number} ({trial.state.name.lower()}) reported no epochs; nothing to compare")
    config = stored_config(trial)
    runtime = stored_runtime(trial)
    apply_runtime(runtime)
    data = load_search_data(config.data, split_seed=config.split_seed, data_dir=data_dir)
    result = train(config, data, direction=_metric_direction(study), runtime=runtime, max_epochs=len(stored))
    return Replay(trial=number, stored=stored, replayed=result.curve[: len(stored)])


# --- confirm -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfirmedConfig:
    trial: int
    single_run: float
    single_rank: int  # its rank by the one search run
    values: tuple[float, ...]
    n_params: int | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "single_run": self.single_run, "single_rank": self.single_rank, "mean": self.mean, "spread": self.spread,
                "n_params": self.n_params,
                "runs": len(self.values), "values": list(self.values)}


def confirm_seed(config_seed: int, run: int) -> int:
    """A fresh seed per confirmation run, different from the search run's seed."""
    from searcher.training import trial_seed

    return trial_seed(config_seed, 1000 + run)


def _run_one(config_json: dict[str, Any], seed: int, direction: str, data_dir: str | None,
             runtime_json: dict[str, Any]) -> float:
    from searcher.devices import apply_runtime, import_tensorflow

    runtime = TrainingRuntime.from_dict(runtime_json)
    os.environ.update(runtime.thread_env())
    import_tensorflow()  # a spawned process: quiet like the parent
    apply_runtime(runtime)
    from searcher.data import load_search_data
    from searcher.training import cv_score, train_every_fold

    config = TrialConfig.model_validate(config_json).model_copy(update={"seed": seed})
    data = load_search_data(config.data, split_seed=config.split_seed, data_dir=data_dir)
    # As the search trained and scored it.
    return cv_score(train_every_fold(config, data, direction=direction, runtime=runtime), direction).value


def _confirm_runtime(trial: optuna.trial.FrozenTrial, threads: int) -> dict[str, Any]:
    """The trial's runtime; a trial stored without thread counts gets this machine's share."""
    runtime = stored_runtime(trial)
    if runtime.intra_op_threads is None:
        runtime = TrainingRuntime(xla=runtime.xla, mixed_precision=runtime.mixed_precision,
                                  intra_op_threads=threads, inter_op_threads=1)
    return runtime.to_dict()


def _metric_direction(study: optuna.Study) -> str:
    return "maximize" if ranking.goal(study).maximize[0] else "minimize"


def candidates(study: optuna.Study, top: int | None,
               numbers: Sequence[int] = ()) -> list[optuna.trial.FrozenTrial]:
    """What to confirm: the complete trials ``numbers`` if given; else in a two-objective study
    the Pareto front (best metric first), else the top trials; ``top`` caps either (default:
    the whole front, or 3). Feasible trials only, except those asked for by number."""
    if numbers:
        if top is not None:
            raise UserError("--trial cannot be combined with --top")
        order = {t.number: k for k, t in enumerate(ranked_trials(study))}  # best first, infeasible last
        return sorted((trial_by_number(study, n) for n in dict.fromkeys(numbers)),
                      key=lambda t: (order.get(t.number, len(order)), t.number))
    goal, ranked = ranking.goal(study), ranked_trials(study)
    if goal.multi:
        on_front = ranking.front(ranked, cost=goal.cost, maximize=goal.maximize[0])[::-1]  # best metric first
        return on_front[:top] if top else on_front
    return ranked[:top or 3]


def confirm(
    study: optuna.Study,
    *,
    storage: optuna.storages.BaseStorage,
    top: int | None,
    seeds: int,
    workers: int = 1,
    data_dir: str | None = None,
    numbers: Sequence[int] = (),
) -> tuple[list[ConfirmedConfig], int]:
    """Run the missing (trial, seed) pairs for the candidates (``candidates``); return the ranking and runs added.

    The runs are a study of their own beside ``study``, in ``storage`` (the one ``study`` was loaded from)."""
    ranked = candidates(study, top, numbers)
    if not ranked:
        raise UserError(ranking.no_feasible_message(study))
    direction = _metric_direction(study)
    runs_study = optuna.create_study(study_name=study.study_name + CONFIRM_SUFFIX, storage=storage,
                                     direction=direction, load_if_exists=True)
    done = {(t.user_attrs[OF_TRIAL], t.user_attrs[RUN]): t.value
            for t in runs_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    todo = [(t, run) for t in ranked for run in range(seeds) if (t.number, run) not in done]
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if todo:
        # spawn, not fork: TensorFlow must not be inherited half-initialised.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_one, t.user_attrs[CONFIG], confirm_seed(t.user_attrs[SEED], run), direction,
                            data_dir, _confirm_runtime(t, threads)): (t, run)
                for t, run in todo
            }
            for future, (t, run) in futures.items():
                value = future.result()
                runs_study.add_trial(optuna.trial.create_trial(
                    value=value, user_attrs={OF_TRIAL: t.number, RUN: run,
                                             SEED: confirm_seed(t.user_attrs[SEED], run)}))
                done[(t.number, run)] = value
                log.info("trial %d run %d: %.4f", t.number, run, value)
    confirmed = [ConfirmedConfig(trial=t.number, single_run=ranking.metric_value(t), single_rank=rank,
                                 n_params=t.user_attrs.get(N_PARAMS),
                                 values=tuple(done[(t.number, run)] for run in range(seeds)))
                 for rank, t in enumerate(ranked, start=1)]
    confirmed.sort(key=lambda c: c.mean, reverse=direction == "maximize")
    study.set_user_attr(CONFIRMED, [c.to_json() for c in confirmed])
    return confirmed, len(todo)
