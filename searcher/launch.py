"""``searcher launch``: create or continue a study, run worker processes, show progress.

The study and its schema are created here, once, before any worker starts; workers
only join. The parent runs no trials: it supervises workers, fails trials whose
heartbeat went stale (so retries happen even while every worker is busy), and draws
the live view.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console
from rich.live import Live
from rich.table import Table

from searcher import ranking, stored, warm_start
from searcher import study as studies
from searcher.devices import detect_gpus, plan_warning, plan_workers
from searcher.status import render, take_snapshot
from searcher.space import describe
from searcher.data import check_search_data, describe_data
from searcher.spec import FILE_DATASETS, StudySpec, directions
from searcher.outage import DatabaseUnavailable, Outage, is_unreachable
from searcher.storage import (DEFAULT_SQLITE, RECONNECT_SECONDS, BudgetLock, describe_db_error, mask_url, open_storage,
                              resolve_url)
from searcher.tensorboard import hint, study_log_dir
from searcher.supervisor import LaunchPlan, WorkerProcess, fail_orphaned_trials, start_worker, stop_workers, supervise
from searcher.worker import EXIT_DONE, EXIT_INTERRUPTED, EXIT_UNAVAILABLE, StopOnce

log = logging.getLogger(__name__)
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class LaunchRequest:
    study: str  # a shipped study name or a path to a spec
    storage: str | None = None
    workers: int | None = None
    trials: int | None = None
    timeout: float | None = None
    data_dir: str | None = None
    seed: int | None = None
    name: str | None = None  # the study's name in the storage; None: see study_name
    gpus: tuple[str, ...] | None = None
    workers_per_gpu: int = 1
    mixed_precision: bool | None = None  # None: as the spec says
    xla: bool | None = None
    tensorboard: str | None = None  # None: as the spec says
    log_dir: Path = Path("searcher-logs")
    warm_start: str | None = None  # an earlier study to start from (spec warm_start.study)
    from_storage: str | None = None  # where it is, if not in this study's storage


def create_study(spec: StudySpec, url: str, *, n_trials: int | None, name: str | None = None,
                 exact: bool = False, outage: Outage | None = None) -> tuple[optuna.Study, str | None]:
    """Create the study (or continue it) and enqueue its baselines once; return it with a line
    to show when its budget is not the one asked for.

    The budget ``n_trials`` (None: the spec's) only grows an existing study's, unless ``exact``
    (``launch --trials``), which sets it as ``searcher budget`` does: up or down, not below the
    trials finished. Under the study's budget lock: launches and ``searcher create`` running at
    once make one study and one set of baselines. ``name``: the study's name (default: the spec's).
    """
    name = name or spec.name
    # With an outage to follow (launch) a lost database is waited for in the watch loop, not in each connect.
    storage = studies.open_study_storage(spec, url, outage=outage, reconnect_seconds=0 if outage else RECONNECT_SECONDS)
    with BudgetLock(url, name, storage=storage):
        study = studies.create_or_continue(spec, storage, n_trials=n_trials, name=name)
        if exact and n_trials is not None:
            studies.set_budget(study, n_trials, storage=storage, flag="--trials")
            return study, None
        return study, studies.kept_budget_note(study, n_trials or spec.budget.n_trials)


def change_budget(url: str, name: str, n_trials: int) -> studies.BudgetChange:
    """``searcher budget``: set a stored study's budget, under its budget lock, for the workers
    that run it (on any host) to take up before their next trial."""
    storage = open_storage(url, create=False)
    study = studies.load(name, storage, url=url)
    with BudgetLock(url, name, storage=storage):
        return studies.set_budget(study, n_trials, storage=storage)


def launch(request: LaunchRequest, *, console: Console) -> int:
    """Run the search to its budget; return the process exit code (130 when interrupted)."""
    spec, spec_path = studies.load_launch_spec(request.study, request.seed, mixed_precision=request.mixed_precision,
                                       xla=request.xla, tensorboard=request.tensorboard)
    spec = warm_start.with_flags(spec, request.warm_start, request.from_storage)
    name = studies.study_name(spec.name, name=request.name, seed=request.seed)
    if request.name is None and name != spec.name:
        console.print(f"study {name}: spec {spec.name} with --seed {request.seed} (--name picks another name)",
                      highlight=False)
    url = resolve_url(request.storage)
    data_summary = None
    if spec.data.dataset in FILE_DATASETS:  # a user's own file: check it before anything is stored
        data_summary = check_search_data(spec, split_seed=spec.split_seed, data_dir=request.data_dir)
        console.print(f"data: {describe_data(data_summary)}", highlight=False)
    outage = Outage(minutes=spec.runtime.db_outage_minutes)
    study, note = create_study(spec, url, n_trials=request.trials, name=name, exact=request.trials is not None,
                               outage=outage)
    if note:
        console.print(note, highlight=False, markup=False)
    if record := study.user_attrs.get(stored.WARM_START):
        console.print(warm_start.describe(record), highlight=False, markup=False)
    n_trials = study.user_attrs[stored.BUDGET]
    if data_summary is not None:
        study.set_user_attr(stored.DATA, data_summary)
        if stored.references(study) is None:
            _store_references(study, spec, data_dir=request.data_dir, console=console)
    if studies.budget_left(study, n_trials) <= 0:
        console.print(f"{name}: the study already has {n_trials} finished trials; raise --trials (or "
                      f"`searcher budget {name} N`) to continue.", highlight=False, markup=False)
        print_summary(study, console=console, url=url, default_url=request.storage is None)
        return EXIT_DONE

    gpus = list(request.gpus) if request.gpus is not None else detect_gpus()
    placements = plan_workers(request.workers, gpus=gpus, workers_per_gpu=request.workers_per_gpu,
                              cpu_count=os.cpu_count() or 1)
    if warning := plan_warning(placements, gpus=gpus, workers_per_gpu=request.workers_per_gpu,
                               cpu_count=os.cpu_count() or 1):
        console.print(f"[yellow]{warning}[/]")
    timeout = request.timeout or spec.budget.timeout
    plan = LaunchPlan(spec_path=spec_path, url=url, log_dir=request.log_dir / name, seed=request.seed, study_name=name,
                      mixed_precision=spec.runtime.mixed_precision, xla=spec.runtime.xla,
                      tensorboard=spec.runtime.tensorboard,
                      deadline=time.time() + timeout if timeout else None, data_dir=request.data_dir)
    slots = [WorkerProcess(p) for p in placements]
    console.print(f"[bold]{name}[/]: {len(slots)} worker(s) on {mask_url(url)}, budget {n_trials} trials; "
                  f"logs in {plan.log_dir}/")
    for line in _goal_lines(spec):
        console.print(f"  {line}", highlight=False)
    if spec.runtime.tensorboard:
        console.print(f"  {hint(str(study_log_dir(spec.runtime.tensorboard, name)))}", highlight=False, markup=False)
    for slot in slots:
        console.print(f"  worker {slot.placement.index}: {slot.placement.describe()}")
        start_worker(slot, plan)

    # One-shot: a second Ctrl-C or SIGTERM must not cut short the stopping of the workers.
    previous = {signum: signal.signal(signum, stop) for stop in [StopOnce()] for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        _watch(study, slots, plan, console=console, outage=outage)
    except DatabaseUnavailable as e:
        console.print(f"[red]{e}: stopping workers; run the same launch again when the database is back[/]")
        stop_workers(slots)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping workers...[/]")
        stop_workers(slots)
        failed = fail_orphaned_trials(study, {pid for s in slots for pid in s.pids})
        console.print(f"stopped; {failed} running trial(s) of stopped workers marked failed, "
                      f"{studies.finished(studies.count_states(study))} finished trials kept. "
                      f"Run the same launch again to continue; interrupted trials run again first.")
        return EXIT_INTERRUPTED
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print_summary(study, console=console, url=url, default_url=request.storage is None)
    crashed = [s for s in slots if s.last_exit not in (EXIT_DONE, None)]
    for slot in crashed:
        console.print(f"[red]worker {slot.placement.index} ended with exit code {slot.last_exit}; "
                      f"see {plan.log_dir}/worker-{slot.placement.index}.log[/]")
    return 1 if len(crashed) == len(slots) else EXIT_DONE


def _store_references(study: optuna.Study, spec: StudySpec, *, data_dir: str | None, console: Console) -> None:
    """Fit the reference models once per study, before the workers start, on the search's splits."""
    from searcher import reference
    from searcher.data import load_search_data

    data = load_search_data(spec.data, split_seed=spec.split_seed, data_dir=data_dir)
    if not reference.applies(data):
        return
    started = time.monotonic()
    references = reference.evaluate(data, spec.training.metric, seed=spec.split_seed)
    study.set_user_attr(stored.REFERENCES, references)
    console.print(f"references: {reference.describe(references)}; fitted in {time.monotonic() - started:.1f}s",
                  highlight=False)


def _goal_lines(spec: StudySpec) -> list[str]:
    """What the search optimizes, under which constraints, and whether it prunes."""
    lines = []
    if spec.objectives and len(spec.objectives) > 1:
        lines.append("objectives: " + ", ".join(f"{n} ({d})" for n, d in zip(spec.objectives, directions(spec)))
                     + f"; sampler {spec.sampler.name}")
    if spec.constraints:
        limits = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v:g}"
                           for k, v in spec.constraints.limits().items())
        check = "; max_params checked before training" if spec.constraints.max_params else ""
        lines.append(f"constraints: {limits}{check}")
    if reason := studies.pruning_off_reason(spec):
        lines.append(reason)
    return lines


def _watch(study: optuna.Study, slots: list[WorkerProcess], plan: LaunchPlan, *, console: Console,
           outage: Outage) -> None:
    """Supervise until every worker is done; redraw the view (or log finished trials).

    A lost database is waited for (one log line when lost, one when back), up to
    ``runtime.db_outage_minutes``; then DatabaseUnavailable."""
    started = time.monotonic()
    initial = take_snapshot(study).finished
    reported: set[int] = set()
    with Live(console=console, auto_refresh=False, transient=False) if console.is_terminal else _NoLive() as live:
        while True:
            supervise(slots, plan)
            try:
                # Fail stale trials from here too: a worker only checks when it starts a trial.
                optuna.storages.fail_stale_trials(study)
                snap = take_snapshot(study)
                elapsed = time.monotonic() - started
                done_here = snap.finished - initial
                eta = None
                if done_here and snap.n_trials:
                    eta = max(0.0, (snap.n_trials - snap.finished) * elapsed / done_here)
                if console.is_terminal:
                    live.update(render(snap, elapsed_s=elapsed, eta_s=eta, workers=_workers_table(slots, snap)),
                                refresh=True)
                else:
                    _log_finished(study, reported, console)
            except Exception as e:
                if is_unreachable(e):  # the workers wait it out, and so does the view
                    outage.lost(e)
                    outage.check_deadline()
                elif isinstance(e, optuna.exceptions.StorageInternalError):
                    log.warning("storage error, retrying: %s", describe_db_error(e))
                else:
                    raise
            if all(s.finished for s in slots):
                return
            time.sleep(REFRESH_SECONDS)


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _log_finished(study: optuna.Study, reported: set[int], console: Console) -> None:
    for t in ranking.own_trials(study):
        if t.state.is_finished() and t.number not in reported:
            reported.add(t.number)
            value = "/".join(f"{v:.4g}" for v in t.values) if t.values else "-"
            if t.user_attrs.get(stored.INFEASIBLE):
                value += f" (infeasible: {t.user_attrs[stored.INFEASIBLE]})"
            console.print(f"trial {t.number} {t.state.name.lower()} {value} "
                          f"epochs={t.user_attrs.get(stored.EPOCHS, '?')} pid={t.user_attrs.get(stored.WORKER_PID, '?')}")


def _workers_table(slots: list[WorkerProcess], snap) -> Table:
    running = {r.worker_pid: r for r in snap.running}
    table = Table("worker", "placement", "pid", "state", "restarts", box=None, header_style="bold")
    for slot in slots:
        pid = slot.process.pid if slot.process else None
        if slot.alive:
            trial = running.get(pid)
            state = f"trial {trial.number}, {trial.epochs_reported} epochs, {trial.elapsed_s:.0f}s" if trial else "idle"
        else:
            state = f"exited {slot.last_exit}" if slot.finished else "restarting"
        table.add_row(str(slot.placement.index), slot.placement.describe(), str(pid), state,
                      f"{slot.restarts} (+{slot.recycles} recycled)" if slot.recycles else str(slot.restarts))
    return table


def print_summary(study: optuna.Study, *, console: Console, url: str, default_url: bool) -> None:
    """The best trial, the baselines against it, and the commands to run next."""
    snap = take_snapshot(study)
    console.print(render(snap))
    ranked = ranking.ranked(study)
    if ranked and (config := stored.config_of(ranked[0])) is not None:
        console.print(f"  best config: {describe(config)}", highlight=False)
    name = study.study_name
    flag = "" if default_url and url.endswith(DEFAULT_SQLITE) else f" --storage '{mask_url(url)}'"
    # A cross-validated study's final model averages fold models; averaging the top configs' too
    # is cheap on the small data sets that cross-validate, and steadier than one config.
    folds = (stored.config_of(ranked[0]) or {}).get("data", {}).get("cv_folds") if ranked else None
    ensemble = " --ensemble 3" if folds and len(ranked) >= 3 else ""
    # Without a best trial there is nothing to report, export or retrain; the summary said why.
    results = (f"searcher report {name}{flag} -o {name}-report.html",) if ranked else ()
    shipping = (f"searcher export {name}{flag}{ensemble} -o {name}-best.yaml",
                f"searcher retrain {name}-best.yaml -o {name}-best.keras") if ranked else ()
    if ranked and ranked[0].user_attrs.get(stored.MODEL_ARTIFACT):  # kept by the search: no training
        shipping = (f"searcher export {name}{flag} --model -o {name}-trained.keras", *shipping)
    console.print("\nNext:")
    for command in (f"searcher status {name}{flag}", *results, f"searcher dashboard{flag}", *shipping,
                    # The URL with its driver (postgresql+psycopg2://): Optuna's own tools cannot guess it.
                    f"optuna trials --study-name {name} --storage '{mask_url(url)}'"):
        console.print(f"  {command}", highlight=False, markup=False)
