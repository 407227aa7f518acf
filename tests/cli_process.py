"""``python -m searcher ...`` in a real process, as a user runs it: the one way the tests do.

    out = run_searcher("launch", "digits-mlp", "--trials", "2", "--storage", url, cwd=tmp_path, check=True)

    launch = start_searcher("launch", str(spec), "--workers", "2", cwd=tmp_path, env=held.env())
    wait_for(lambda: running_trials(...), what="a running trial", process=launch)
    launch.send_signal(signal.SIGINT)
    out = launch.finish()

Timeouts here guard against a hang and are never a claim about speed: the machine running
the suite may be busy with other work, so they are generous (HANG_GUARD).

A test that must catch trials while they run makes them wait with ``HeldTrials``, instead
of hoping that training is slower than the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"
HANG_GUARD = 1800.0  # seconds


def searcher_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with ``env`` applied (a value of None removes the variable)."""
    merged = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


def _command(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "searcher", *args]


def _assert_ok(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, f"{' '.join(map(str, out.args))}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"


def run_searcher(*args: str, cwd: Path, env: dict[str, str | None] | None = None, timeout: float = HANG_GUARD,
                 check: bool = False) -> subprocess.CompletedProcess:
    """Run ``searcher ARGS`` in ``cwd`` to its end; with ``check``, fail the test unless it exits 0."""
    out = subprocess.run(_command(args), cwd=cwd, env=searcher_env(env), capture_output=True, text=True,
                         timeout=timeout)
    if check:
        _assert_ok(out)
    return out


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SearcherProcess:
    """A ``searcher`` command still running. Its output goes to files, not pipes, so a
    command that prints a lot never blocks while the test waits for something else."""

    def __init__(self, args: tuple[str, ...], *, cwd: Path, env: dict[str, str | None] | None) -> None:
        self._out: IO[str] = tempfile.TemporaryFile("w+")
        self._err: IO[str] = tempfile.TemporaryFile("w+")
        # Ctrl-C as in a terminal, even when the suite itself was started with SIGINT ignored (in
        # the background of a script, under nohup): a child would inherit that and ignore it too.
        self.popen = subprocess.Popen(_command(args), cwd=cwd, env=searcher_env(env), stdout=self._out,
                                      stderr=self._err, stdin=subprocess.DEVNULL, text=True,
                                      preexec_fn=_default_sigint)
        self.pid = self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def send_signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def output(self) -> tuple[str, str]:
        """What it printed so far: stdout, stderr."""
        texts = []
        for f in (self._out, self._err):
            f.flush()
            f.seek(0)
            texts.append(f.read())
        return texts[0], texts[1]

    def finish(self, *, timeout: float = HANG_GUARD, check: bool = False) -> subprocess.CompletedProcess:
        """Wait for the end (killing it and failing the test after ``timeout`` s); what it printed."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            out, err = self.output()
            pytest.fail(f"{' '.join(self.popen.args)} still running after {timeout:.0f} s\nstdout:\n{out}\n"
                        f"stderr:\n{err}")
        out, err = self.output()
        result = subprocess.CompletedProcess(self.popen.args, self.popen.returncode, out, err)
        if check:
            _assert_ok(result)
        return result

    def stop(self) -> None:
        """Ctrl-C if it still runs (it stops its workers), then kill it if it does not end."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def start_searcher(*args: str, cwd: Path, env: dict[str, str | None] | None = None) -> SearcherProcess:
    """Start ``searcher ARGS`` in ``cwd`` and return at once."""
    return SearcherProcess(args, cwd=cwd, env=env)


def wait_for(condition: Callable[[], Any], *, what: str, process: SearcherProcess | None = None,
             timeout: float = HANG_GUARD) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails the test if ``process`` ends first, or after ``timeout`` s. A KeyError from the
    condition counts as "not yet" (Optuna raises it for a study not created yet).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            out, err = process.output()
            pytest.fail(f"{what}: the process ended first (exit {process.poll()})\nstdout:\n{out}\nstderr:\n{err}")
        try:
            result = condition()
        except KeyError:
            result = None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what}: not after {timeout:.0f} s")


class HeldTrials:
    """Trials that wait after each stored epoch until the test releases them.

    ``env()`` goes to the ``searcher`` processes a test starts (and so to the workers they
    spawn): tests/held_trials/sitecustomize.py then makes every ``Trial.report`` wait until
    ``release()``. A trial seen RUNNING with an epoch stored is therefore still running when
    the test acts on it, however fast or slow the machine is. After ``hold_new_workers()``,
    a worker process that starts (a restart) waits before its first trial until ``release()``.
    """

    FOLDER = Path(__file__).resolve().parent / "held_trials"

    def __init__(self, folder: Path) -> None:
        self.release_file = folder / "release-held-trials"
        self.hold_starts_file = folder / "hold-new-workers"

    def env(self) -> dict[str, str]:
        paths = [str(self.FOLDER), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {"PYTHONPATH": os.pathsep.join(paths), "SEARCHER_TEST_RELEASE_FILE": str(self.release_file),
                "SEARCHER_TEST_HOLD_STARTS_FILE": str(self.hold_starts_file)}

    def hold_new_workers(self) -> None:
        self.hold_starts_file.touch()

    def release(self) -> None:
        self.release_file.touch()
