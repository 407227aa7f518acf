"""deploy/slurm/searcher-worker.sbatch: read as Slurm reads it, and submitted to a real Slurm.

The ``slurm_cluster`` fixture (tests/slurm_cluster.py) runs a one-node Slurm with two fake GPUs
as generic resources. The tests submit the script with ``sbatch`` from a study folder, as users
do, the worker's venv activated by the script's site block (SEARCHER_VENV), against the test
PostgreSQL; trials train digits MLPs of a few epochs. Where a signal must land mid-trial,
tests/slurm_hold/sitecustomize.py holds the first trial of a job's first run after one real
epoch until its worker is stopped. Each test prints its timeline in seconds since the submit.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from deploy_checks import assert_cli_accepts, env_names_searcher_reads
from searches import FINISHED, Database, digits_spec
from slurm_cluster import SlurmCluster

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "searcher-worker.sbatch"
SLURM_DOC = ROOT / "docs" / "slurm.md"
VENV_BIN = Path(sys.executable).parent  # where `searcher` of this interpreter lives
HOLD_DIR = Path(__file__).parent / "slurm_hold"


def directives() -> dict[str, str]:
    """`#SBATCH --key=value` lines as {--key: value} (value "" for flags)."""
    result = {}
    for line in SBATCH.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.split(None, 1)[1].partition("=")
            result[key] = value
    return result


# --- read as Slurm reads it -------------------------------------------------------


def test_an_array_of_one_gpu_tasks_that_stops_before_the_time_limit_and_requeues():
    d = directives()
    assert "--array" in d and re.fullmatch(r"\d+-\d+(%\d+)?", d["--array"]), d
    assert d.get("--gres") == "gpu:1", f"one GPU per array task, got --gres={d.get('--gres')}"
    assert d.get("--cpus-per-task", "").isdecimal(), d
    signal_spec = re.fullmatch(r"B:(?P<name>[A-Z0-9]+)@(?P<seconds>\d+)", d.get("--signal", ""))
    assert signal_spec, f"--signal must go to the batch shell (B:SIG@SECONDS), got {d.get('--signal')!r}"
    text = SBATCH.read_text()
    trapped = re.findall(r"^trap '(\w+) (\w+)' ([A-Z0-9 ]+)$", text, flags=re.M)
    by_signal = {sig: reason for _, reason, sigs in trapped for sig in sigs.split()}
    assert by_signal.get(signal_spec["name"]) == "timelimit", (
        f"the --signal {signal_spec['name']} must be trapped as the time-limit signal, traps: {by_signal}"
    )
    assert by_signal.get("TERM") != "timelimit", "scancel sends TERM: a cancelled job must not requeue itself"
    # The worker stops within a batch step and a few writes; 120 s also covers the storage
    # reconnect wait (searcher.storage.RECONNECT_SECONDS) if the database is restarting.
    from searcher.storage import RECONNECT_SECONDS

    assert int(signal_spec["seconds"]) >= RECONNECT_SECONDS + 30, signal_spec[0]
    assert "--requeue" in d and d.get("--open-mode") == "append", "requeued runs append to one log"
    assert "%A" in d.get("--output", "") and "%a" in d.get("--output", ""), "one log per array task"


def _script_commands() -> list[list[str]]:
    """The `searcher ...` command lines of the script, shell variables given sample values."""
    values = {"STUDY": "cifar-cnn"}
    result = []
    for line in SBATCH.read_text().splitlines():
        line = line.strip()
        if not line.startswith("searcher "):
            continue
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m[1]], line.rstrip("&"))
        result.append(shlex.split(line)[1:])
    return result


def _doc_commands() -> list[list[str]]:
    from deploy_checks import markdown_commands, searcher_args

    return [args for words in markdown_commands(SLURM_DOC) if (args := searcher_args(words))]


def test_the_script_and_its_doc_use_commands_and_flags_the_cli_has():
    commands = _script_commands()
    assert [args[0] for args in commands] == ["worker"], commands
    assert "--wait" in commands[0], "a task that starts before `searcher create` finished waits for the study"
    for args in commands:
        assert_cli_accepts(args, where=str(SBATCH.relative_to(ROOT)))
    documented = _doc_commands()
    assert {"create", "status", "report"} <= {args[0] for args in documented}, documented
    for args in documented:
        assert_cli_accepts(args, where="docs/slurm.md")


def test_the_script_sets_only_variables_searcher_reads_and_no_password():
    text = SBATCH.read_text()
    exported = {name for line in re.findall(r"^\s*export (.+)$", text, flags=re.M)
                for name in re.findall(r"(\w+)=", line)}
    unknown = exported - env_names_searcher_reads()
    assert exported and not unknown, f"exports variables searcher does not read: {sorted(unknown)}"
    assert "--storage" not in text, "the storage URL comes from SEARCHER_STORAGE, never the command line"
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", text), "a URL with a password in the script"
    assert not re.search(r"(?i)^\s*[^#]*password\s*=", text, flags=re.M)


# --- submitted to a real Slurm -----------------------------------------------------------

# The log lines that mark a phase: the script's own, the worker's placement and stop, the hold.
_MARKERS = re.compile(r"^searcher: |^Error: |test hold: |worker \d+: assigned |worker \d+ (stops|interrupted)")


class Timeline:
    """Seconds since the submit of each phase: job state changes and marker lines of the task logs."""

    def __init__(self, cluster: SlurmCluster) -> None:
        self.cluster, self.t0 = cluster, time.monotonic()
        self.events: list[tuple[float, str]] = []
        self.jobs: list[str] = []
        self.logs: list[Path] = []
        self._states: dict[str, tuple[str, int]] = {}
        self._lines: Counter[Path] = Counter()

    def submitted(self, job: str, *logs: Path, what: str) -> None:
        """Follow ``job`` and its task logs from now on."""
        self.jobs.append(job)
        self.logs.extend(logs)
        self.mark(f"submitted {what}")

    def mark(self, what: str) -> None:
        self.events.append((time.monotonic() - self.t0, what))

    def poll(self) -> None:
        for job in self.jobs:
            for info in self.cluster.jobs(job):
                task = f"{info.fields.get('ArrayJobId', info.job_id)}_{info.fields.get('ArrayTaskId', '')}".rstrip("_")
                state = (info.state, info.restarts)
                if self._states.get(task) != state:
                    self._states[task] = state
                    self.mark(f"{task} {info.state} (Reason={info.reason}, Restarts={info.restarts})")
        for log in self.logs:
            if not log.exists():
                continue
            lines = log.read_text(errors="replace").splitlines()
            for line in lines[self._lines[log]:]:
                if _MARKERS.search(line):
                    self.mark(f"{log.name}: {line.strip()[:160]}")
            self._lines[log] = len(lines)

    def wait(self, condition: Callable[[], Any], *, what: str, timeout: float = 300) -> Any:
        """Poll until ``condition()`` is truthy. A hang guard, not a speed check: the machine is busy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if result := condition():
                self.mark(what)
                return result
            time.sleep(0.5)
        tails = "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs
                          if log.exists())
        pytest.fail(f"{what}: not after {timeout} s\n{self}\n{tails}\n{self.cluster.log_tail()}")

    def __str__(self) -> str:
        return "\n".join(f"  +{t:6.1f} s  {what}" for t, what in self.events)


class SlurmStudy:
    """A digits study on the test PostgreSQL and the environment its jobs are submitted with.

    The password stays in a pgpass file, as ~/.pgpass on a cluster; the URL in the job's
    environment has none. The script activates this interpreter's venv (its site block), and
    the fake GPUs are allowed to fall back to the CPU (SEARCHER_ALLOW_CPU_FALLBACK).
    """

    def __init__(self, cluster: SlurmCluster, postgres_url: str, folder: Path, name: str, *, epochs: int = 3) -> None:
        self.cluster, self.folder, self.name = cluster, folder, name
        self.db = Database(postgres_url)
        url = make_url(postgres_url)
        self.password = url.password
        pgpass = folder / "pgpass"
        pgpass.write_text(f"{url.host}:{url.port}:{url.database}:{url.username}:{url.password}\n")
        pgpass.chmod(0o600)
        self.spec = digits_spec(folder, name, training={"max_epochs": epochs, "patience": None},
                                pruner={"name": "none"}, search={"batch_size": 32})
        self.env = {**os.environ, "STUDY": str(self.spec), "PGPASSFILE": str(pgpass), "PYTHONUNBUFFERED": "1",
                    "SEARCHER_STORAGE": url.set(password=None).render_as_string(hide_password=False),
                    "SEARCHER_VENV": str(VENV_BIN.parent), "SEARCHER_ALLOW_CPU_FALLBACK": "1"}

    def create(self, budget: int) -> None:
        created = subprocess.run([str(VENV_BIN / "searcher"), "create", str(self.spec), "--trials", str(budget)],
                                 cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=180)
        assert created.returncode == 0, created.stdout + created.stderr
        assert f"budget {budget} trials, 0 finished" in created.stdout, created.stdout

    def submit(self, *options: str, hold: bool = False, cpu_fallback: bool = True, venv: Path | None = None) -> str:
        """``sbatch OPTIONS deploy/slurm/searcher-worker.sbatch`` in the study folder; the job id.

        One CPU and a small memory request instead of the script's 8 CPUs and 32G (two tasks fit
        the node); the script's --gres=gpu:1, --signal, --requeue, --output are kept.
        """
        env = dict(self.env)
        if hold:
            env.update(SEARCHER_TEST_HOLD="1", PYTHONPATH=os.pathsep.join(filter(None, [str(HOLD_DIR),
                                                                                         env.get("PYTHONPATH")])))
        if not cpu_fallback:
            env.pop("SEARCHER_ALLOW_CPU_FALLBACK")
        if venv is not None:
            env["SEARCHER_VENV"] = str(venv)
        return self.cluster.sbatch("--cpus-per-task=1", "--mem=1G", *options, str(SBATCH), env=env, cwd=self.folder)

    def log(self, job: str, task: int) -> Path:
        return self.folder / f"searcher-{job}_{task}.log"

    def states(self) -> Counter[str]:
        return Counter(t.state.name for t in self.db.trials(self.name))


def _task(cluster: SlurmCluster, job: str, task: int):
    found = cluster.jobs(f"{job}_{task}")
    return found[0] if found else None


def _ended(cluster: SlurmCluster, job: str, task: int, state: str = "COMPLETED", restarts: int | None = None):
    info = _task(cluster, job, task)
    return info is not None and info.state == state and (restarts is None or info.restarts == restarts)


def _seconds(runtime: str) -> int:
    """``scontrol``'s RunTime ([D-]HH:MM:SS) in seconds."""
    days, _, clock = runtime.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


@pytest.mark.postgres
@pytest.mark.slow
def test_an_array_of_workers_reaches_the_budget_each_with_its_index_and_gpu(slurm_cluster, postgres_url, tmp_path):
    study = SlurmStudy(slurm_cluster, postgres_url, tmp_path, "slurm-array")
    timeline = Timeline(slurm_cluster)
    # Submitted before the study exists: the tasks wait for it (--wait 300), as after a quick sbatch.
    job = study.submit("--array=0-1", "--time=10")
    logs = [study.log(job, 0), study.log(job, 1)]
    timeline.submitted(job, *logs, what=f"array {job}_[0-1]")
    timeline.wait(lambda: all(log.exists() and "waiting up to 300 s" in log.read_text() for log in logs),
                  what="both tasks running, waiting for the study")
    # Slurm's own record of the GPU it gave each task (shown while the task runs).
    gres = {i: _task(slurm_cluster, job, i).fields.get("GRES", "") for i in (0, 1)}
    gpus = {i: re.fullmatch(r"gpu:1\(IDX:(\d)\)", gres[i])[1] for i in (0, 1)}
    assert gpus[0] != gpus[1], f"two tasks running at once got one GPU each: {gres}"
    study.create(budget=4)
    timeline.mark("study created (budget 4)")
    timeline.wait(lambda: all(_ended(slurm_cluster, job, i) for i in (0, 1)), what="both tasks COMPLETED")
    print(f"\narray test timeline:\n{timeline}\nstates: {dict(study.states())}")

    done = study.db.assert_budget_reached("slurm-array", 4)
    pids = {}
    for i in (0, 1):
        text = study.log(job, i).read_text()
        # The worker's placement, logged before TensorFlow starts, is the GPU Slurm gave the task.
        assert f"worker {i}: assigned GPU {gpus[i]}, 1 intra-op thread" in text, text[-3000:]
        assert f"GPU '{gpus[i]}', 1 CPUs" in text, "the script's line: CUDA_VISIBLE_DEVICES as Slurm set it"
        assert f"worker {i}: CPU (GPU {gpus[i]} assigned but TensorFlow sees no GPU" in text
        assert "threads intra=1 inter=1" in text and "stops: study budget of 4 trials reached" in text
        assert f"worker {1 - i}:" not in text and "worker exited 0" in text
        assert study.password not in text
        pids[i] = int(re.search(rf"worker {i}: .*; pid (\d+) on ", text)[1])
    assert {t.user_attrs["worker_pid"] for t in done} <= set(pids.values()), (pids, [t.user_attrs for t in done])


def _venv_whose_worker_exits(folder: Path, code: int) -> Path:
    """A venv for the script's site block whose ``searcher`` only says the database is away."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    fake = bin_dir / "searcher"
    fake.write_text(f'#!/bin/sh\necho "Error: the database stayed unreachable (stand-in)"\nexit {code}\n')
    fake.chmod(0o755)
    return folder


@pytest.mark.postgres
@pytest.mark.slow
def test_a_task_requeues_itself_near_its_time_limit_and_while_the_database_is_away(slurm_cluster, postgres_url,
                                                                                    tmp_path):
    study = SlurmStudy(slurm_cluster, postgres_url, tmp_path, "slurm-requeue")
    study.create(budget=2)
    timeline = Timeline(slurm_cluster)
    # The script's own --signal=B:USR1@120; the first trial of the first run holds after one epoch.
    job = study.submit("--array=3-3", "--time=10", hold=True)
    task, log = f"{job}_3", study.log(job, 3)
    timeline.submitted(job, log, what=task)
    # On the node's other CPU meanwhile: a worker that exits 69 (database unavailable) every time.
    away = study.submit("--array=0-0", "--time=10", venv=_venv_whose_worker_exits(tmp_path / "fake-venv", 69))
    timeline.submitted(away, away_log := study.log(away, 0), what=f"{away}_0 (exits 69)")
    timeline.wait(lambda: log.exists() and "test hold: trial" in log.read_text(), what="first trial held mid-training")
    victim = study.db.trials("slurm-requeue", "RUNNING")
    assert len(victim) == 1 and victim[0].intermediate_values, victim
    victim = victim[0]
    # Bring the time limit near, as `scontrol update` does on a cluster: USR1 is then due at once,
    # and slurmctld sends it at its next time-limit check (every 30 s); the limit itself is >= 60 s off.
    ran = _seconds(_task(slurm_cluster, job, 3).fields["RunTime"])
    minutes = (ran + 120) // 60
    slurm_cluster.run("scontrol", "update", f"JobId={task}", f"TimeLimit={minutes}")
    timeline.mark(f"time limit set to {minutes} min at {ran} s of run time: USR1 due")
    timeline.wait(lambda: "stopping the worker (timelimit)" in log.read_text(), what="USR1 reached the batch shell")
    timeline.wait(lambda: "time limit near; requeueing" in log.read_text(), what="worker stopped, scontrol requeue")

    trials = {t.number: t for t in study.db.trials("slurm-requeue")}
    failed = trials[victim.number]
    assert failed.state.name == "FAIL" and failed.user_attrs["fail_reason"] == "interrupted", failed
    queued = [t for t in trials.values() if t.state.name == "WAITING" and "failed_trial" in t.system_attrs]
    assert [(t.system_attrs["failed_trial"], t.params) for t in queued] == [(victim.number, victim.params)], trials
    assert not [t for t in trials.values() if t.state.name == "RUNNING"], trials
    at_requeue = dict(study.states())

    requeued = timeline.wait(lambda: (info := _task(slurm_cluster, job, 3)) and info.restarts == 1
                             and info.state in ("PENDING", "REQUEUED") and info, what="requeued (PENDING, Restarts=1)")
    # The rerun gets room again; at 2 minutes the signal would be due as soon as it started.
    slurm_cluster.run("scontrol", "update", f"JobId={task}", "TimeLimit=10")
    timeline.wait(lambda: "(restart 1)" in log.read_text(), what="rerun started")
    timeline.wait(lambda: _ended(slurm_cluster, job, 3, restarts=1), what="rerun COMPLETED")
    timeline.wait(lambda: _ended(slurm_cluster, away, 0, "FAILED"), what=f"{away}_0 FAILED after its requeues")
    print(f"\nrequeue test timeline:\n{timeline}\nstates at the requeue: {at_requeue}; "
          f"final: {dict(study.states())}")

    gave_up = _task(slurm_cluster, away, 0)
    assert (gave_up.restarts, gave_up.fields["ExitCode"]) == (3, "69:0"), gave_up.fields
    away_text = away_log.read_text()
    assert away_text.count("database unavailable (exit 69); requeueing") == 3, away_text
    assert [f"(restart {n})" in away_text for n in range(4)] == [True] * 4, away_text
    assert "database still unavailable after 3 requeues; giving up" in away_text

    # Held for cred_expire, then run under the same id; caught in the instant before slurmctld sets
    # BeginTime, the reason still reads None.
    assert requeued.reason in ("BeginTime", "None"), requeued.fields
    done = study.db.assert_budget_reached("slurm-requeue", 2)
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.params == victim.params and retry.user_attrs["seed"] == victim.user_attrs["seed"]
    text = log.read_text()
    assert text.count("(restart 0)") == 1, text[-3000:]
    assert text.count("(restart 1)") == 1 and text.count("requeueing") == 1
    assert re.search(r"worker 3 interrupted \(SIG\w+\); its running trial was marked failed and queued to run again",
                     text), text[-3000:]
    assert text.count("worker 3: assigned GPU") == 2 and "stops: study budget of 2 trials reached" in text
    assert study.password not in text


@pytest.mark.postgres
@pytest.mark.slow
def test_scancel_stops_without_requeue_and_a_gpu_tensorflow_cannot_see_stops_the_worker(slurm_cluster, postgres_url,
                                                                                       tmp_path):
    study = SlurmStudy(slurm_cluster, postgres_url, tmp_path, "slurm-cancel")
    study.create(budget=2)
    timeline = Timeline(slurm_cluster)
    # Two tasks at once: one without the CPU fallback (the fake GPU is invisible to TensorFlow),
    # one whose first trial holds until scancel.
    no_gpu = study.submit("--array=0-0", "--time=10", cpu_fallback=False)
    timeline.submitted(no_gpu, no_gpu_log := study.log(no_gpu, 0), what=f"{no_gpu}_0 (no CPU fallback)")
    held = study.submit("--array=1-1", "--time=10", hold=True)
    timeline.submitted(held, held_log := study.log(held, 1), what=f"{held}_1 (held)")
    timeline.wait(lambda: _ended(slurm_cluster, no_gpu, 0, "FAILED"), what=f"{no_gpu}_0 FAILED")
    timeline.wait(lambda: held_log.exists() and "test hold: trial" in held_log.read_text(),
                  what=f"{held}_1 trial held mid-training")
    slurm_cluster.scancel(f"{held}_1")
    timeline.mark(f"scancel {held}_1")
    timeline.wait(lambda: _ended(slurm_cluster, held, 1, "CANCELLED") and not slurm_cluster.run(
        "squeue", "-h", "-j", held).stdout.strip(), what="cancelled and gone from the queue")
    print(f"\nscancel test timeline:\n{timeline}\nfinal: {dict(study.states())}")

    failed = _task(slurm_cluster, no_gpu, 0)
    assert failed.fields["ExitCode"] == "1:0" and failed.restarts == 0, failed.fields
    errors = [line for line in no_gpu_log.read_text().splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and re.fullmatch(
        r"Error: GPU \d assigned but TensorFlow sees no GPU: .*pip install 'searcher\[gpu\]'.*"
        r"SEARCHER_ALLOW_CPU_FALLBACK=1", errors[0]), no_gpu_log.read_text()[-3000:]
    assert "Traceback" not in no_gpu_log.read_text() and "requeueing" not in no_gpu_log.read_text()

    cancelled = _task(slurm_cluster, held, 1)
    assert cancelled.restarts == 0, cancelled.fields
    text = held_log.read_text()
    assert "stopping the worker (cancel)" in text and "requeueing" not in text, text[-3000:]
    states = study.states()
    assert states["RUNNING"] == 0 and states["FAIL"] == 1 and states["WAITING"] >= 1, states
    failed_trial = study.db.trials("slurm-cancel", "FAIL")[0]
    assert failed_trial.user_attrs["fail_reason"] == "interrupted", failed_trial.user_attrs
    retry = [t for t in study.db.trials("slurm-cancel", "WAITING")
             if t.system_attrs.get("failed_trial") == failed_trial.number]
    assert len(retry) == 1 and retry[0].params == failed_trial.params
