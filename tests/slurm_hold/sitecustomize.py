"""Test-only: a trial that lasts until its worker is signalled, for tests/test_slurm.py.

Python imports ``sitecustomize`` at start-up from the path. The Slurm tests put this folder
on a job's PYTHONPATH with SEARCHER_TEST_HOLD=1; then, in the job's first run only
(SLURM_RESTART_COUNT unset or 0), the first trial a worker starts trains one real epoch,
reports it and waits there until the process is stopped. A time-limit signal or a scancel
so always lands mid-trial, however fast or busy the machine. A requeued run trains normally.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time

HOLD_ENV = "SEARCHER_TEST_HOLD"


def _install() -> None:
    import optuna

    report = optuna.trial.Trial.report

    def report_then_hold(self, value, step):
        report(self, value, step)
        print(f"test hold: trial {self.number} holds after epoch {step}", file=sys.stderr, flush=True)
        while True:  # SIGTERM raises KeyboardInterrupt here, as it would inside fit()
            time.sleep(0.5)

    optuna.trial.Trial.report = report_then_hold


class _AfterOptuna(importlib.abc.MetaPathFinder):
    """Runs ``_install`` right after the ``optuna`` package has been executed."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "optuna":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            _install()

        spec.loader.exec_module = exec_then_install
        return spec


if os.environ.get(HOLD_ENV) == "1" and os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
    sys.meta_path.insert(0, _AfterOptuna())
