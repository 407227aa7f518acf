"""The trade-off section: the Pareto front (two objectives) or accuracy against parameters
(one objective), with the smallest and fastest trials near the best (``searcher.tradeoff``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from searcher import tradeoff
from searcher.report._data import ReportData
from searcher.report._figures import Figure


def _draw(go: ModuleType, d: ReportData) -> Any:
    return tradeoff.draw(go, d.tradeoff)


def _why_not(d: ReportData) -> str | None:
    return None if d.tradeoff is not None else "needs 2 feasible complete trials that record their cost"


FIGURE = Figure("tradeoff", "The metric against the cost (parameters, or the second objective): the Pareto front "
                            "highlighted, baselines marked; hover for the config", _draw, _why_not)


def tables(d: ReportData) -> str:
    """Under the figure: which trials were infeasible, the front, the smallest and fastest near the best."""
    t = d.tradeoff
    if t is None:
        return ""
    over = sum(not p.feasible for p in t.points)
    rejected = sum(not r.feasible and r.state == "pruned" for r in d.trials)
    parts = ([f"{over} complete trial(s) measured over a limit after training, drawn as crosses"] if over else []) + (
        [f"{rejected} network(s) over <code>max_params</code>, rejected before training (not drawn)"] if rejected else [])
    note = f'<p class="note">Infeasible, never on the front: {"; ".join(parts)}.</p>' if parts else ""
    return note + tradeoff.tables_html(t)
