"""Test-only: trials that run until the test lets them finish (see HeldTrials in tests/cli_process.py).

A test that must catch a trial while it runs (to kill its worker, or send Ctrl-C) cannot
count on training being slow: on an idle machine, or once a busy one calms down, the trial
may end first. Such a test puts this folder on the PYTHONPATH of the ``searcher`` processes
it starts, and names two files in the environment. Python imports this module when each of
those processes starts (the launcher, and the workers it spawns, which inherit the
environment). Then, until the file SEARCHER_TEST_RELEASE_FILE exists:

- every ``Trial.report`` (one epoch's validation value, stored first) waits;
- a process started while the file SEARCHER_TEST_HOLD_STARTS_FILE exists (a worker that
  the launcher restarts after the test killed one) waits before it runs any trial, and so
  before it fails any stale trial.

Nothing in the package knows about this.
"""

import os

_RELEASE_FILE = os.environ.get("SEARCHER_TEST_RELEASE_FILE")

if _RELEASE_FILE:
    import time

    import optuna

    def _wait_for_release():
        while not os.path.exists(_RELEASE_FILE):
            time.sleep(0.1)

    _report = optuna.trial.Trial.report

    def _report_then_wait(self, value, step):
        _report(self, value, step)
        _wait_for_release()

    optuna.trial.Trial.report = _report_then_wait

    if os.path.exists(os.environ.get("SEARCHER_TEST_HOLD_STARTS_FILE", "")):
        _optimize = optuna.Study.optimize

        def _wait_then_optimize(self, *args, **kwargs):
            _wait_for_release()
            return _optimize(self, *args, **kwargs)

        optuna.Study.optimize = _wait_then_optimize
