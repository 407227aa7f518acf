"""deploy/slurm/searcher-worker.sbatch: read as Slurm reads it, and run for real.

Slurm cannot run here, so the script runs under bash with the environment Slurm gives an
array task (SLURM_* variables, the GPU it assigned or none) and a `scontrol` first on PATH
that records its arguments. It starts a real worker on the test PostgreSQL that trains
digits MLPs; then the signal Slurm sends before the time limit stops it mid-trial, it
requeues itself, and its second run resumes the study to the exact budget.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from cli_process import wait_for
from deploy_checks import assert_cli_accepts, env_names_searcher_reads
from searches import FINISHED, Database, digits_spec

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "searcher-worker.sbatch"
SLURM_DOC = ROOT / "docs" / "slurm.md"
VENV_BIN = Path(sys.executable).parent  # where `searcher` of this interpreter lives


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


# --- run for real ------------------------------------------------------------------


class ArrayTask:
    """Runs the script as Slurm would run array task 3 of job 777, with a recording `scontrol`."""

    def __init__(self, folder: Path, *, storage: str, pgpass: Path, study: Path) -> None:
        self.folder, self.log = folder, folder / "searcher-777_3.log"
        self.calls = folder / "scontrol.calls"
        bin_dir = folder / "bin"
        bin_dir.mkdir()
        scontrol = bin_dir / "scontrol"
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(self.calls))}\n')
        scontrol.chmod(0o755)
        self.env = {
            "PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(folder)),
            "STUDY": str(study), "SEARCHER_STORAGE": storage, "PGPASSFILE": str(pgpass),
            "SLURM_JOB_ID": "780", "SLURM_ARRAY_JOB_ID": "777", "SLURM_ARRAY_TASK_ID": "3",
            "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_NAME": "searcher", "SLURM_RESTART_COUNT": "0",
        }

    def start(self, **env: str | None) -> subprocess.Popen:
        merged = {k: v for k, v in {**self.env, **env}.items() if v is not None}
        with open(self.log, "ab") as out:  # --output with --open-mode=append
            return subprocess.Popen(["bash", str(SBATCH)], cwd=self.folder, env=merged, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def requeues(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


def _exit_code(process: subprocess.Popen, log: Path, timeout: float = 240) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"the sbatch script still runs after {timeout} s:\n{log.read_text()[-3000:]}")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


@pytest.mark.postgres
@pytest.mark.slow
def test_an_array_task_runs_trials_and_a_requeue_loses_nothing(postgres_url, tmp_path):
    db = Database(postgres_url)
    url = make_url(postgres_url)
    pgpass = tmp_path / "pgpass"  # the password stays in a file, as ~/.pgpass on a cluster
    pgpass.write_text(f"{url.host}:{url.port}:{url.database}:{url.username}:{url.password}\n")
    pgpass.chmod(0o600)
    storage = url.set(password=None).render_as_string(hide_password=False)
    spec = digits_spec(tmp_path, "slurm-digits", training={"max_epochs": 12, "patience": None},
                       pruner={"name": "none"}, search={"batch_size": 32})
    task = ArrayTask(tmp_path, storage=storage, pgpass=pgpass, study=spec)

    # First run: a CPU-only task that starts before the study exists, so its worker waits.
    first = task.start(CUDA_VISIBLE_DEVICES="")
    wait_for(lambda: "waiting up to 300 s" in task.log.read_text(), timeout=60, what="a waiting worker")
    created = subprocess.run(["searcher", "create", str(spec), "--trials", "3"], cwd=tmp_path, env=task.env,
                             capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    assert "budget 3 trials, 0 finished, 2 waiting to run" in created.stdout, created.stdout

    def finished_and_running():
        running = db.running_trial("slurm-digits")
        return running if running and db.trials("slurm-digits", *FINISHED) else None

    victim = wait_for(finished_and_running, timeout=180, what="a finished trial and a running one")
    worker_env = _environ(victim.user_attrs["worker_pid"])
    assert worker_env["CUDA_VISIBLE_DEVICES"] == "" and "TF_FORCE_GPU_ALLOW_GROWTH" not in worker_env, worker_env
    assert (worker_env["TF_NUM_INTRAOP_THREADS"], worker_env["OMP_NUM_THREADS"]) == ("1", "1"), worker_env
    kept = {t.number: (t.value, t.params) for t in db.trials("slurm-digits", *FINISHED)}
    signalled = time.monotonic()
    os.kill(first.pid, signal.SIGUSR1)  # what --signal=B:USR1@120 sends
    assert _exit_code(first, task.log) == 0, task.log.read_text()[-3000:]
    print(f"\nUSR1 to the sbatch script -> worker stopped and script exited: {time.monotonic() - signalled:.1f} s")
    assert task.requeues() == ["requeue 777_3"]

    trials = {t.number: t for t in db.trials("slurm-digits")}
    failed = trials[victim.number]
    assert failed.state.name == "FAIL" and failed.user_attrs["fail_reason"] == "interrupted", failed
    queued = [t for t in trials.values() if t.state.name == "WAITING" and t.system_attrs.get("failed_trial") is not None]
    assert [t.system_attrs["failed_trial"] for t in queued] == [victim.number], trials
    assert not [t for t in trials.values() if t.state.name == "RUNNING"], trials

    # A cancel (scancel sends TERM) stops the task without a requeue, whenever it comes.
    cancelled = task.start(SLURM_RESTART_COUNT="1")
    time.sleep(1)
    os.kill(cancelled.pid, signal.SIGTERM)
    assert _exit_code(cancelled, task.log) != 0
    assert task.requeues() == ["requeue 777_3"], "a cancelled task must not requeue itself"

    # The requeued run: CUDA_VISIBLE_DEVICES unset, the GPU named only by SLURM_JOB_GPUS.
    second = task.start(SLURM_RESTART_COUNT="2", SLURM_JOB_GPUS="0")
    assert _exit_code(second, task.log) == 0, task.log.read_text()[-3000:]
    assert task.requeues() == ["requeue 777_3"], "the budget was reached: no requeue"
    done = db.assert_budget_reached("slurm-digits", 3)
    assert kept.items() <= {t.number: (t.value, t.params) for t in done}.items(), "finished trials are kept"
    retry = next(t for t in done if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.params == victim.params
    assert retry.user_attrs["seed"] == victim.user_attrs["seed"] == retry.user_attrs["config"]["seed"]
    assert "fail_reason" not in retry.user_attrs
    log = task.log.read_text()
    assert "GPU 0 assigned but TensorFlow sees no GPU" in log, "the worker read the GPU from SLURM_JOB_GPUS"
    assert "threads intra=1 inter=1" in log and "stops: study budget of 3 trials reached" in log
    assert url.password not in log
