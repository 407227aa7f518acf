"""What is happening in a study: a snapshot of its trials, drawn for the terminal or as JSON.

``launch`` redraws it live; ``searcher status`` prints it once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Group
from rich.table import Table
from rich.text import Text

from searcher.study import finished

STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
# Every other way a trial fails records its reason first; a trial without one lost its worker.
LOST_WORKER = "killed (stale heartbeat)"


@dataclass(frozen=True)
class RunningTrial:
    number: int
    worker_pid: int | None
    worker_host: str | None
    elapsed_s: float
    epochs_reported: int


@dataclass(frozen=True)
class Snapshot:
    study: str
    direction: str
    n_trials: int | None
    counts: dict[str, int]
    fail_reasons: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    running: list[RunningTrial] = field(default_factory=list)
    train_seconds: float = 0.0

    @property
    def finished(self) -> int:
        return finished(Counter(self.counts))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "finished": self.finished}


def fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a failed trial ended; a trial with no recorded reason lost its worker."""
    return trial.user_attrs.get("fail_reason") or LOST_WORKER


def take_snapshot(study: optuna.Study) -> Snapshot:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    reasons = Counter(fail_reason(t) for t in trials if t.state == TrialState.FAIL)
    now = dt.datetime.now()
    running = [
        RunningTrial(
            number=t.number,
            worker_pid=t.user_attrs.get("worker_pid"),
            worker_host=t.user_attrs.get("worker_host"),
            elapsed_s=round((now - t.datetime_start).total_seconds(), 1) if t.datetime_start else 0.0,
            epochs_reported=len(t.intermediate_values),
        )
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = None
    if complete:
        pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        best = pick(complete, key=lambda t: t.value)
    seconds = sum(t.duration.total_seconds() for t in trials if t.duration and t.state.is_finished())
    return Snapshot(
        study=study.study_name,
        direction=study.direction.name.lower(),
        n_trials=study.user_attrs.get("n_trials"),
        counts={s: counts.get(s, 0) for s in STATES},
        fail_reasons=dict(reasons),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        running=sorted(running, key=lambda r: r.number),
        train_seconds=round(seconds, 1),
    )


def format_params(params: dict[str, Any]) -> str:
    parts = []
    for key, value in params.items():
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def render(snapshot: Snapshot, *, elapsed_s: float | None = None, eta_s: float | None = None,
           workers: Table | None = None) -> Group:
    """The terminal view: counts, best so far, running trials, and optionally the workers."""
    c = snapshot.counts
    budget = f"{snapshot.finished}/{snapshot.n_trials}" if snapshot.n_trials else str(snapshot.finished)
    head = Text.assemble(
        (f"{snapshot.study}", "bold"), f"  finished {budget}  ",
        (f"complete {c['COMPLETE']}", "green"), "  ", (f"pruned {c['PRUNED']}", "yellow"), "  ",
        (f"failed {c['FAIL']}", "red"), "  ", (f"running {c['RUNNING']}", "cyan"),
        f"  waiting {c['WAITING']}",
    )
    if elapsed_s is not None:
        head.append(f"  elapsed {_duration(elapsed_s)}")
    if eta_s is not None:
        head.append(f"  remaining ~{_duration(eta_s)}")
    parts: list[Any] = [head]
    if snapshot.best_value is not None:
        parts.append(Text.assemble(("best ", "bold"), f"{snapshot.best_value:.4f} (trial {snapshot.best_trial}): ",
                                   (format_params(snapshot.best_params), "dim")))
    if snapshot.fail_reasons:
        parts.append(Text("failures: " + ", ".join(f"{k} {v}" for k, v in snapshot.fail_reasons.items()), "red"))
    if workers is not None:
        parts.append(workers)
    elif snapshot.running:
        table = Table("trial", "worker", "elapsed", "epochs", box=None, header_style="bold")
        for r in snapshot.running:
            table.add_row(str(r.number), f"{r.worker_host}:{r.worker_pid}", _duration(r.elapsed_s), str(r.epochs_reported))
        parts.append(table)
    return Group(*parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
