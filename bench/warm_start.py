"""Section 11, warm starts: trials a warm-started study needs to reach a cold study's best.

On the cheap digits MLP space (bench/spaces/digits-mlp-cheap.yaml, one validation split for
every seed), one worker, per seed S:

- ``cold``: ``launch --seed S --trials 80`` (the issue's 80-trial study); its target is its
  best validation accuracy, and its count the trials it took to first reach it;
- ``old``: a 40-trial study of the same space with another seed: the first 40 trials of the
  next seed's cold study, copied with ``add_trials`` (user attrs, curves, the stored spec).
  With one worker that is exactly a 40-trial run: TPE and the median pruner never look
  ahead, and the budget only says when to stop. With a single seed (``--quick``) the old
  study is launched on its own, with seed 1000 + S;
- ``warm``: the same space with ``warm_start: {study: old}``, ``launch --seed S``: the old
  study's top configurations run first, its finished trials are history. It is launched
  with a growing budget (10, 20, 40, 80 trials) until one of its own trials reaches the
  cold study's best, so a seed that gets there early costs no more.

"Trials to reach" counts a study's own finished trials in trial-number order (one worker, so
also the order they ran); carried history trials are not counted, the enqueued top
configurations are. The old study's 40 trials are the warm start's up-front cost: the table
says so beside the counts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench._common import REPO, Plan, Section, launch, load_trials, table

TITLE = "11. Warm starts: trials to reach the cold study's best (digits MLP)"
SPACE = REPO / "bench" / "spaces" / "digits-mlp-cheap.yaml"
CARRIED = "warm_start_from"  # searcher.stored.CARRIED: a history trial, not one of the study's own
WARM_STEPS = (10, 20, 40, 80)  # warm budgets tried in turn, capped at the cold budget


@dataclass(frozen=True)
class SeedRun:
    seed: int
    target: float  # the cold study's best after its budget
    cold_reach: int  # own trials the cold study took to first reach it
    warm_reach: int | None  # None: not within the warm budget
    warm_trials: int  # own trials the warm study ran
    warm_best: float
    old_best: float
    history: int  # trials the warm study carried as history
    enqueued: int  # the old study's top configurations it ran first


def run(plan: Plan, workdir: Path) -> Section:
    seeds = plan.warm_seeds
    folders = {seed: workdir / "warm_start" / f"seed{seed}" for seed in seeds}
    for seed in seeds:
        launch(SPACE, study="cold", workers=1, trials=plan.warm_cold_trials, cwd=folders[seed], seed=seed, timeout=7200)
    for i, seed in enumerate(seeds):
        if len(seeds) > 1:
            _copy_first(_url(folders[seeds[(i + 1) % len(seeds)]]), _url(folders[seed]), plan.warm_old_trials)
        else:
            launch(SPACE, study="old", workers=1, trials=plan.warm_old_trials, cwd=folders[seed], seed=1000 + seed,
                   timeout=7200)
    runs = [_one_seed(seed, plan, folders[seed]) for seed in seeds]
    rows = [[r.seed, f"{r.target:.4f}", r.cold_reach, _reach(r), f"{r.warm_best:.4f} ({r.warm_trials})",
             f"{r.old_best:.4f}", f"{r.history} / {r.enqueued}"] for r in runs]
    reached = [r.warm_reach for r in runs if r.warm_reach is not None]
    cold_mean = statistics.mean(r.cold_reach for r in runs)
    warm_mean = statistics.mean(reached) if len(reached) == len(runs) else None
    rows.append(["mean", f"{statistics.mean(r.target for r in runs):.4f}", f"{cold_mean:.1f}",
                 f"{warm_mean:.1f}" if warm_mean is not None else f"{len(runs) - len(reached)} not reached",
                 "", "", ""])
    text = table(["seed", "cold best (80 trials)", "cold: trials to reach it", "warm: trials to reach it",
                  "warm best (own trials)", "old study's best (40 trials)", "carried: history / enqueued"], rows)
    old = "the next seed's cold study's first" if len(runs) > 1 else "a study with seed 1000+S:"
    text += (f"\nCold: {plan.warm_cold_trials} trials; old: {old} {plan.warm_old_trials} trials; warm: "
             f"warm-started from the old study, budgets {', '.join(map(str, _steps(plan)))} until it reaches the "
             f"cold best. Trials are the study's own (history not counted); the warm start also paid for the old "
             f"study's {plan.warm_old_trials}. One worker, `{SPACE.relative_to(REPO)}`.\n")
    figures = {"cold_trials_to_best_mean": round(cold_mean, 1)}
    if warm_mean is not None:
        figures["warm_trials_to_cold_best_mean"] = round(warm_mean, 1)
    details = {"space": str(SPACE.relative_to(REPO)), "cold_trials": plan.warm_cold_trials,
               "old_trials": plan.warm_old_trials, "runs": [r.__dict__ for r in runs]}
    return Section("warm_start", TITLE, figures, text, details)


def _reach(r: SeedRun) -> str:
    return str(r.warm_reach) if r.warm_reach is not None else f"> {r.warm_trials}"


def _steps(plan: Plan) -> list[int]:
    return [n for n in WARM_STEPS if n < plan.warm_cold_trials] + [plan.warm_cold_trials]


def _url(folder: Path) -> str:
    return f"sqlite:///{folder / 'study.db'}"


def _copy_first(source_url: str, url: str, n: int) -> None:
    """Study ``old`` in ``url``: the first ``n`` finished trials of ``cold`` in ``source_url``, as stored."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "old" in optuna.get_all_study_names(url):
        return
    source = optuna.load_study(study_name="cold", storage=source_url)
    first = [t for t in source.get_trials(deepcopy=False) if t.state.name in ("COMPLETE", "PRUNED")][:n]
    old = optuna.create_study(study_name="old", storage=url, directions=source.directions)
    for key, value in source.user_attrs.items():  # the spec, its hash, the data summary
        old.set_user_attr(key, value)
    old.set_user_attr("n_trials", n)
    old.set_metric_names(source.metric_names)
    old.add_trials(first)


def _one_seed(seed: int, plan: Plan, folder: Path) -> SeedRun:
    url = _url(folder)
    target = max(_own_values(url, "cold"))
    raw = yaml.safe_load(SPACE.read_text())
    raw.update(name="warm", warm_start={"study": "old"})
    warm_spec = folder / "warm.yaml"
    warm_spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    for budget in _steps(plan):
        launch(warm_spec, study="warm", workers=1, trials=budget, cwd=folder, seed=seed, timeout=7200)
        if max(_own_values(url, "warm")) >= target:
            break
    return outcome(seed, url)


def outcome(seed: int, url: str) -> SeedRun:
    """What the seed's cold, old and warm studies in ``url`` show."""
    cold, warm = _own_values(url, "cold"), _own_values(url, "warm")
    target = max(cold)
    trials = load_trials(url, "warm")
    return SeedRun(seed=seed, target=target, cold_reach=_first_reaching(cold, target),
                   warm_reach=_first_reaching(warm, target) if max(warm) >= target else None,
                   warm_trials=len(warm), warm_best=max(warm), old_best=max(_own_values(url, "old")),
                   history=sum(CARRIED in t.user_attrs for t in trials),
                   enqueued=sum("warm_start_top" in t.user_attrs for t in trials))


def _own_values(url: str, study: str) -> list[float]:
    """The study's own finished trials' values in trial-number order (a pruned trial scores -inf)."""
    return [t.value if t.state.name == "COMPLETE" else float("-inf") for t in load_trials(url, study)
            if t.state.name in ("COMPLETE", "PRUNED") and CARRIED not in t.user_attrs]


def _first_reaching(values: list[float], target: float) -> int:
    return next(i for i, v in enumerate(values, start=1) if v >= target)
