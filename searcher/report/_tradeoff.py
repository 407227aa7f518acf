"""The report's accuracy-against-cost part: the Pareto front, and what a few points of the metric buy.

Numbers first, then the picture (as ``optuna.visualization._pareto_front`` does)::

    data = collect(study)        # Tradeoff: plain numbers, tested directly
    fig = draw(go, data)         # plotly scatter: front highlighted, baselines marked
    html = tables_html(data)     # the front, and the smallest / fastest within 0.5 and 1 point

A two-objective study is drawn against its second objective; a single-objective one against
parameters, and the smallest and fastest trials near the best say what accuracy a smaller
model costs. Only feasible trials are on the front or picked; infeasible ones are drawn apart.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from searcher import ranking, stored
from searcher.cost import LARGE_BATCH
from searcher.formatting import format_cost, format_number
from searcher.space import describe

WITHIN_POINTS = (0.5, 1.0)


@dataclass(frozen=True)
class Point:
    number: int
    value: float  # the metric
    cost: float  # the drawn cost (``Tradeoff.cost``)
    figures: dict[str, float | None]  # every cost figure (ranking.COSTS), plus latency at the large batch
    config: str  # one line (space.describe), for the hover
    baseline: str | None = None
    feasible: bool = True


@dataclass(frozen=True)
class CheapestWithin:
    """The cheapest trial (by `by`) within `points` of the best: what a few points of the metric buy."""

    points: float  # within this many points of the best
    by: str  # "n_params" (smallest) or "latency_ms" (fastest)
    trial: Point


@dataclass(frozen=True)
class Tradeoff:
    metric: str
    maximize: bool
    cost: str  # a ranking.COSTS name
    multi: bool  # the cost is the study's second objective (else: drawn from the user attrs)
    points: tuple[Point, ...]  # complete trials that recorded the cost, by number
    front: tuple[int, ...]  # trial numbers on the Pareto front, cheapest first
    picks: tuple[CheapestWithin, ...]
    best: int  # the best feasible trial

    def point(self, number: int) -> Point:
        return next(p for p in self.points if p.number == number)


def collect(study: optuna.Study) -> Tradeoff | None:
    """The study's trade-off, or None when fewer than 2 feasible complete trials record the cost."""
    goal = ranking.goal(study)
    cost = goal.cost or "n_params"
    ranked = ranking.ranked(study)
    complete = ranking.own_trials(study, states=(TrialState.COMPLETE,))
    points = tuple(_point(t, cost) for t in complete if ranking.cost_of(t, cost) is not None)
    if sum(p.feasible for p in points) < 2:
        return None
    by_number = {p.number: p for p in points}
    on_front = tuple(t.number for t in ranking.front(ranked, cost=cost, maximize=goal.maximize[0]))
    picks = []
    for points_ in WITHIN_POINTS:
        near = ranking.within(ranked, points_, maximize=goal.maximize[0])
        for by in ("n_params", "latency_ms"):
            if (t := ranking.cheapest(near, by)) is not None and t.number in by_number:
                picks.append(CheapestWithin(points_, by, by_number[t.number]))
    return Tradeoff(metric=goal.metric, maximize=goal.maximize[0], cost=cost, multi=goal.multi, points=points,
                    front=on_front, picks=tuple(picks), best=ranked[0].number)


def _point(t: FrozenTrial, cost: str) -> Point:
    config = stored.config_of(t)
    try:
        text = describe(config) if config is not None else ""
    except (KeyError, TypeError):
        text = ""
    return Point(number=t.number, value=ranking.metric_value(t), cost=ranking.cost_of(t, cost),
                 figures={**ranking.figures_of(t), stored.LATENCY_LARGE: t.user_attrs.get(stored.LATENCY_LARGE)}, config=text,
                 baseline=t.user_attrs.get(stored.BASELINE), feasible=ranking.is_feasible(t))


def _hover(p: Point, d: Tradeoff) -> str:
    tag = f" ({html.escape(p.baseline)})" if p.baseline else ""
    over = " INFEASIBLE" if not p.feasible else ""
    return (f"trial #{p.number}{tag}{over}: {d.metric} {p.value:.4f}<br>{format_cost(p.figures)}"
            f"<br>{html.escape(p.config)}")


def draw(go: ModuleType, d: Tradeoff) -> Any:
    """All complete trials by metric and cost; the front as a line; baselines and infeasible marked."""
    fig = go.Figure()
    layers = (
        ("trial", [p for p in d.points if p.feasible and not p.baseline and p.number not in d.front],
         dict(color="#9db4cf", size=7), "markers"),
        ("infeasible (over a constraint)", [p for p in d.points if not p.feasible],
         dict(color="#b0b7c0", size=8, symbol="x"), "markers"),
        ("Pareto front", [d.point(n) for n in d.front], dict(color="#f58518", size=10), "lines+markers"),
        ("baseline", [p for p in d.points if p.baseline],
         dict(color="#e45756", size=12, symbol="diamond", line=dict(width=1, color="#333")), "markers"),
    )
    for name, rows, marker, mode in layers:
        if rows:
            # WebGL past 2,000 points (the report's MAX_POINTS): SVG markers by the thousand open slowly.
            scatter = go.Scattergl if len(d.points) > 2000 else go.Scatter
            fig.add_trace(scatter(x=[p.cost for p in rows], y=[p.value for p in rows], mode=mode, name=name,
                                  marker=marker, line=dict(shape="hv", color="#f58518") if mode != "markers" else None,
                                  text=[_hover(p, d) for p in rows], hoverinfo="text"))
    log = d.cost == "n_params"
    return fig.update_layout(xaxis=dict(title=ranking.COST_LABELS[d.cost], type="log" if log else "linear"),
                             yaxis_title=html.escape(d.metric), height=420, margin_t=36,
                             legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))


def tables_html(d: Tradeoff) -> str:
    """The front (cheapest first) and, for each of 0.5 and 1 point, the smallest and fastest trial."""
    head = (f"<tr><th class=n>trial</th><th class=n>{html.escape(d.metric)}</th><th class=n>parameters</th>"
            f"<th class=n>file MB</th><th class=n>ms / example, batch 1</th><th class=n>batch {LARGE_BATCH}</th>"
            f"<th class=n>s / epoch</th><th>config</th></tr>")

    def row(p: Point, lead: str = "") -> str:
        f = p.figures
        cells = [f"#{p.number}" + (f" ({html.escape(p.baseline)})" if p.baseline else ""), f"{p.value:.4f}",
                 format_number(f.get("n_params"), "{:,.0f}"), format_number(f.get("model_mb"), "{:.3g}"),
                 format_number(f.get("latency_ms"), "{:.3g}"), format_number(f.get(stored.LATENCY_LARGE), "{:.3g}"),
                 format_number(f.get("sec_per_epoch"), "{:.3g}")]
        best = " class=best" if p.number == d.best else ""
        return (f"<tr{best}>{lead}" + "".join(f"<td class=n>{c}</td>" for c in cells)
                + f"<td>{html.escape(p.config)}</td></tr>")

    against = d.cost if d.multi else "parameters"
    out = [f"<h3>The Pareto front ({html.escape(d.metric)} against {html.escape(against)}): {len(d.front)} "
           f"trial(s), none both better and cheaper than another</h3>",
           f"<table>{head}{''.join(row(d.point(n)) for n in d.front)}</table>"]
    if d.picks:
        lead_head = "<th>within</th><th>pick</th>"
        rows = "".join(row(p.trial, f"<td>{p.points:g} point(s)</td><td>{'smallest' if p.by == 'n_params' else 'fastest'}"
                                    "</td>") for p in d.picks)
        out.append(f"<h3>What a point of {html.escape(d.metric)} buys: the smallest and the fastest trial within "
                   f"0.5 and 1 point of the best (#{d.best})</h3><table>{head.replace('<tr>', '<tr>' + lead_head)}"
                   f"{rows}</table><p class=note>Export one with <code>searcher export STUDY --smallest-within 0.5"
                   f"</code>. A point is 0.01 of the metric.</p>")
    return "".join(out)
