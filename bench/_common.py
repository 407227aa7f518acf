"""What every section shares: the plan (quick or full), a section's result, launching
``searcher launch`` as a subprocess, reading a study back, and markdown tables.

The harness process itself never imports TensorFlow: everything that trains runs in a
child process, so a section's timings are not disturbed by a TensorFlow runtime idling here.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parents[1]
FINISHED = ("COMPLETE", "PRUNED")


@dataclass(frozen=True)
class Plan:
    """How much each section runs; ``quick`` (~3 min) checks the harness, ``full`` (~15 min) measures."""

    name: str
    tf_import_repeats: int
    overhead_trials: int
    overhead_repeats: int
    startup_repeats: int  # fresh launches besides the overhead run, which counts as one
    storage_trials: int
    storage_repeats: int
    scaling_workers: tuple[int, ...]
    scaling_repeats: int  # runs of 1 and 2 workers (3 and more run once)
    scaling_trials: int
    scaling_epochs: int
    quality_seeds: tuple[int, ...]
    quality_max_epochs: int  # training.max_epochs of every method (the spec's 20 in the full run)
    quality_budget: int  # epochs per run when KerasTuner is missing (else: what Hyperband spent)
    quality_parallel: int  # runs at a time (quality does not depend on speed)
    gpu_epochs: int
    nan_epochs: int  # epochs per NaN-check run
    nan_repeats: int
    scale_workers: tuple[int, ...] = (1, 8)
    scale_epoch_s: float = 0.5
    scale_study_sizes: tuple[int, ...] = (1000,)
    own_data_splits: tuple[int, ...] = (0,)
    own_data_minutes: float = 1.0  # the search time `searcher init --minutes` sizes each budget for
    own_data_sets: tuple[str, ...] = ("breast_cancer", "wine", "digits_png")
    profile_trials: int = 3  # trials per profile run (section 10)
    profile_rounds: int = 1  # rounds of every side, alternating order
    profile_epochs: int = 40  # epochs per side in the seconds-per-epoch comparison

    @classmethod
    def quick(cls) -> Plan:
        return cls(name="quick", tf_import_repeats=1, overhead_trials=2, overhead_repeats=1, startup_repeats=0,
                   storage_trials=10, storage_repeats=1, scaling_workers=(1, 2), scaling_repeats=1,
                   scaling_trials=4, scaling_epochs=3, quality_seeds=(0,), quality_max_epochs=3, quality_budget=12,
                   quality_parallel=3, gpu_epochs=2, nan_epochs=3, nan_repeats=1)

    @classmethod
    def full(cls) -> Plan:
        return cls(name="full", tf_import_repeats=3, overhead_trials=10, overhead_repeats=1, startup_repeats=2,
                   storage_trials=30, storage_repeats=3, scaling_workers=(1, 2, 3, 4), scaling_repeats=3,
                   scaling_trials=16, scaling_epochs=6, quality_seeds=(0, 1, 2), quality_max_epochs=20,
                   quality_budget=200, quality_parallel=2, gpu_epochs=3, nan_epochs=20, nan_repeats=5,
                   scale_workers=(1, 8, 32, 100, 200), scale_epoch_s=1.0, scale_study_sizes=(1000, 3000, 10000),
                   own_data_splits=(0, 1, 2), own_data_minutes=4.0, profile_trials=6, profile_rounds=2,
                   profile_epochs=680)


@dataclass
class Section:
    """One section's result: headline ``figures`` (all positive numbers), a markdown table,
    and ``details`` (rows, settings, signed differences) for the JSON file."""

    key: str
    title: str
    figures: dict[str, Any]
    table: str
    details: dict[str, Any] = field(default_factory=dict)
    not_run: str | None = None  # the reason, when the section could not run here

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.table.rstrip()}\n"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "figures": self.figures, "details": self.details}
        if self.not_run:
            out["not_run"] = self.not_run
        return out


def not_run_section(key: str, title: str, reason: str, *, figures: dict[str, Any] | None = None) -> Section:
    return Section(key, title, figures or {}, f"not run: {reason}\n", not_run=reason)


# --- numbers and tables ---------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation; 0 for a single value."""
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    rows = [[_cell(v) for v in row] for row in rows]
    align = ["---:" if rows and all(_numeric(r[i]) for r in rows if r[i]) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 and value else f"{value:,.2f}"
    return str(value).replace("|", "\\|")


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?( ?[%x×s])?", text))


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


# --- specs --------------------------------------------------------------------------------


def write_spec(folder: Path, *, base: str = "digits-mlp", name: str, changes: dict[str, Any]) -> Path:
    """A copy of a shipped spec with some top-level sections replaced or merged; returns its path."""
    from searcher.spec import load_spec, resolve_spec_path

    raw = yaml.safe_load(resolve_spec_path(base).read_text())
    raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
    raw["name"] = name
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    path = folder / f"{name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_spec(path)  # fail here, with the spec's own message, not inside a worker
    return path


# --- running searcher -----------------------------------------------------------------------


@dataclass
class LaunchRun:
    """One ``searcher launch`` subprocess: wall time and when the first trial finished."""

    study: str
    url: str
    cwd: Path
    started: float  # time.time() just before the process was started
    wall_s: float
    first_finished_s: float | None
    returncode: int

    @property
    def log_dir(self) -> Path:
        return self.cwd / "searcher-logs" / self.study

    def thread_lines(self) -> list[str]:
        """Each worker's start-up line (device, precision, threads), from its log."""
        lines = []
        for path in sorted(self.log_dir.glob("worker-*.log")):
            found = [ln for ln in path.read_text(errors="replace").splitlines() if "threads intra=" in ln]
            if found:
                lines.append(found[0].split(": ", 1)[-1].strip())
        return lines

    def worker_ready_s(self) -> float | None:
        """Seconds from the launch to the first worker's TensorFlow set-up line (its log time)."""
        stamps = []
        for path in self.log_dir.glob("worker-*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "threads intra=" in line:
                    stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                    stamps.append(stamp.timestamp() - self.started)
                    break
        return min(stamps) if stamps else None


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    # `python -m bench` runs from the repository; make `bench` importable in children too.
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def launch(
    spec: str | Path,
    *,
    study: str,
    workers: int,
    trials: int,
    cwd: Path,
    seed: int | None = None,
    timeout: float = 1800,
    poll_first: bool = False,
    probe_dir: Path | None = None,
) -> LaunchRun:
    """Run ``python -m searcher launch`` on a fresh (or continued) SQLite file in ``cwd``.

    With ``poll_first`` the storage is polled every 0.1 s for the first finished trial. With
    ``probe_dir`` every process of the launch times its storage, sampler and pruner calls
    (bench/_probe/sitecustomize.py) and writes them there at exit.
    """
    env = subprocess_env()
    if probe_dir is not None:
        probe_dir.mkdir(parents=True, exist_ok=True)
        env["BENCH_PROBE_DIR"] = str(probe_dir)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "bench" / "_probe"), env["PYTHONPATH"]])
    cwd.mkdir(parents=True, exist_ok=True)
    db = cwd / "study.db"
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "searcher", "launch", str(spec), "--workers", str(workers),
           "--trials", str(trials), "--storage", url, "--name", study]  # --seed alone would rename it
    if seed is not None:
        cmd += ["--seed", str(seed)]
    out_path = cwd / f"launch-{int(time.time() * 1000)}.out"
    with open(out_path, "wb") as out:
        started = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        first = None
        try:
            while proc.poll() is None:
                if poll_first and first is None and _has_finished_trial(db):
                    first = time.perf_counter() - t0
                if time.perf_counter() - t0 > timeout:
                    proc.terminate()
                    proc.wait(30)
                    raise RuntimeError(f"searcher launch {spec} ran over {timeout:.0f} s; see {out_path}")
                time.sleep(0.1 if poll_first and first is None else 0.25)
        except BaseException:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
            raise
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = out_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"searcher launch {spec} exited with {proc.returncode}:\n{tail}")
    return LaunchRun(study, url, cwd, started, wall, first, proc.returncode)


def _has_finished_trial(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()
        return bool(row and row[0])
    except sqlite3.Error:  # the schema does not exist yet, or the file is locked for a moment
        return False


def load_trials(url: str, study: str) -> list:
    """All trials of a study, in trial-number order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def epochs_trained(trial) -> int:
    """Epochs a trial actually trained: its stored count, else the epochs it reported."""
    return int(trial.user_attrs.get("epochs", len(trial.intermediate_values)))


def trial_seconds(trial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def run_python(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 1800,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` with the harness on the path; raises with the output tail on failure."""
    result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                            timeout=timeout, env=subprocess_env(env), cwd=cwd or REPO)
    if result.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} exited with {result.returncode}:\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return result


def cpu_placement_env(workers: int) -> dict[str, str]:
    """The environment ``searcher launch --workers N`` gives each CPU worker (threads per worker)."""
    from searcher.devices import plan_workers

    return plan_workers(workers, gpus=[], cpu_count=os.cpu_count() or 1)[0].env()
