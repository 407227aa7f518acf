"""The study in its storage: the budget a restarted `worker --create` finds is the one set last."""

from __future__ import annotations

from searcher import stored, study as studies
from searcher.spec import load_spec
from searcher.storage import open_storage


def test_a_creating_worker_keeps_the_stored_budget(tmp_path):
    spec = load_spec("digits-mlp")
    storage = open_storage(f"sqlite:///{tmp_path}/s.db")
    fresh = studies.create_or_continue(spec, storage, n_trials=None, name="fresh")
    assert fresh.user_attrs[stored.BUDGET] == spec.budget.n_trials == 80
    studies.create_or_continue(spec, storage, n_trials=300, name="raised")  # `searcher create --trials 300`
    again = studies.create_or_continue(spec, storage, n_trials=None, name="raised")  # a restarted compose worker
    assert again.user_attrs[stored.BUDGET] == 300
    assert len(again.get_trials()) == len(spec.baselines), "baselines are enqueued once"
