"""searcher status: what it reports about a real search (the session's ``digits_search``)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cli_process import run_searcher
from searcher import ranking

pytestmark = pytest.mark.slow


def test_status_json_matches_the_study(digits_search):
    out = run_searcher("status", "digits-mlp", "--json", "--storage", digits_search.url, cwd=digits_search.folder,
                       check=True)
    status = json.loads(out.stdout)
    study = digits_search.study()
    counts = Counter(t.state.name for t in study.get_trials())
    assert status["counts"] == {s: counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    assert status["finished"] == 12 == counts["COMPLETE"] + counts["PRUNED"]
    best = ranking.ranked(study)[0]  # Optuna's best_trial, with ties broken by the lower validation loss
    assert best.value == study.best_value
    assert status["best_trial"] == best.number
    assert status["best_value"] == pytest.approx(study.best_value)
    assert status["best_params"] == best.params
