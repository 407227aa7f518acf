"""The trade-off section: the Pareto front (two objectives) or accuracy against parameters
(one objective), with the smallest and fastest trials near the best (``searcher.tradeoff``)."""

from __future__ import annotations

from searcher import tradeoff
from searcher.report._data import ReportData
from searcher.report._text import esc


def section(d: ReportData) -> str:
    import plotly.graph_objects as go

    from searcher.report._page import _figure_div

    t = d.tradeoff
    heading = "Pareto front" if t is not None and t.multi else "Accuracy against cost"
    if t is None:
        return (f'<section><h2>{heading}</h2><p class="note nodraw">Not drawn: needs 2 feasible complete trials '
                f"that record their cost.</p></section>")
    over = sum(not p.feasible for p in t.points)
    rejected = sum(not r.feasible and r.state == "pruned" for r in d.trials)
    parts = ([f"{over} complete trial(s) measured over a limit after training, drawn as crosses"] if over else []) + (
        [f"{rejected} network(s) over <code>max_params</code>, rejected before training (not drawn)"] if rejected else [])
    note = f'<p class="note">Infeasible, never on the front: {"; ".join(parts)}.</p>' if parts else ""
    against = esc(t.cost) if t.multi else "parameters"
    return (f"<section><h2>{heading}</h2><figure class=cell><h3>{esc(t.metric)} against {against}: the front "
            f"highlighted, baselines marked (hover for the config)</h3>{_figure_div(tradeoff.draw(go, t), 'tradeoff')}"
            f"</figure>{note}{tradeoff.tables_html(t)}</section>")
