"""What the tests that run real searches share: specs derived from digits-mlp, and reading trials back."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import optuna
import yaml

from cli_process import STUDIES
from searcher.storage import normalize_url, open_storage

DIGITS = STUDIES / "digits-mlp.yaml"
FINISHED = ("COMPLETE", "PRUNED")


def digits_spec(folder: Path, name: str, **sections: Any) -> Path:
    """A copy of digits-mlp named ``name`` in ``folder``: a dict updates that section
    (``training={"max_epochs": 3}``), anything else replaces it (``baselines=[]``)."""
    raw = yaml.safe_load(DIGITS.read_text())
    raw["name"] = name
    for section, value in sections.items():
        raw[section] = {**raw.get(section, {}), **value} if isinstance(value, dict) else value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE and PRUNED trials."""
    return [t for t in study.get_trials() if t.state.name in FINISHED]


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials whose worker has stored at least one epoch (held there by HeldTrials, if the test holds them)."""
    return [t for t in study.get_trials() if t.state.name == "RUNNING" and "worker_pid" in t.user_attrs
            and t.intermediate_values]


class Database:
    """Reads studies back from a test's database, through one connection pool that outlives restarts.

    Connects on first use, so a test can start ``launch`` on an empty database.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    @functools.cached_property
    def storage(self) -> optuna.storages.RDBStorage:
        return open_storage(normalize_url(self.url))

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=self.storage)

    def trials(self, name: str, *states: str) -> list[optuna.trial.FrozenTrial]:
        """The study's trials, or those in ``states`` (state names)."""
        return [t for t in self.study(name).get_trials() if not states or t.state.name in states]

    def running_trial(self, name: str) -> optuna.trial.FrozenTrial | None:
        """A RUNNING trial whose worker has stored at least one epoch."""
        return next(iter(running(self.study(name))), None)

    def assert_budget_reached(self, name: str, budget: int) -> list[optuna.trial.FrozenTrial]:
        """Exactly ``budget`` finished trials and nothing RUNNING or WAITING; returns the finished ones."""
        states = [t.state.name for t in self.trials(name)]
        assert sum(s in FINISHED for s in states) == budget, states
        assert not [s for s in states if s in ("RUNNING", "WAITING")], states
        return self.trials(name, *FINISHED)
