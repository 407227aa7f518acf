"""Ranking trials: feasible ones only, the best, the Pareto front, the smallest within N points, picks by cost."""

from __future__ import annotations

import pytest

from made_trials import ROWS, cost_study
from searcher import ranking
from searcher.errors import UserError


def test_best_front_and_smallest_within_count_feasible_trials_only():
    study = cost_study(ROWS)
    ranked = ranking.ranked(study)
    assert [t.number for t in ranked] == [0, 2, 3, 5, 4], "trial 1 is over a constraint: never ranked"
    assert [t.number for t in ranking.front(ranked, cost="n_params", maximize=True)] == [4, 3, 2, 0]
    assert [t.number for t in ranking.front(ranked, cost="latency_ms", maximize=True)] == [4, 5, 2, 0]
    assert [t.number for t in ranking.within(ranked, 0.5, maximize=True)] == [0, 2, 3, 5]
    assert ranking.cheapest(ranking.within(ranked, 0.3, maximize=True), "n_params").number == 2

    trial, why = ranking.pick_by_cost(study, ranking.PickByCost(smallest_within=0.5))
    assert trial.number == 3
    assert why == "smallest (3,000 parameters) within 0.5 points of the best val_accuracy 0.9800 (trial 0)"
    trial, why = ranking.pick_by_cost(study, ranking.PickByCost(max_params=10_000))
    assert (trial.number, why) == (2, "best val_accuracy with n_params <= 10,000")
    trial, _ = ranking.pick_by_cost(study, ranking.PickByCost(max_latency_ms=0.3))
    assert trial.number == 2
    trial, _ = ranking.pick_by_cost(study, ranking.PickByCost(smallest_within=0.5, max_latency_ms=0.25))
    assert trial.number == 5, "the smallest within 0.5 points that is also fast enough"

    with pytest.raises(UserError, match=r"^--smallest-within: no feasible trial with latency_ms_b1 <= 0.2 is within "
                                        r"0.5 points of the best val_accuracy 0.9800 \(trial 0\); the best with "
                                        r"latency_ms_b1 <= 0.2 is trial 4 at 0.9600$"):
        ranking.pick_by_cost(study, ranking.PickByCost(smallest_within=0.5, max_latency_ms=0.2))
    with pytest.raises(UserError, match=r"^--max-params: no feasible complete trial with n_params <= 1,000; the "
                                        r"smallest has 2,000 parameters \(trial 4\)$"):
        ranking.pick_by_cost(study, ranking.PickByCost(max_params=1000))
    with pytest.raises(UserError, match=r"^--max-params: must be > 0, got 0$"):
        ranking.PickByCost(max_params=0)
