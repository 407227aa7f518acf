"""The report's figures: each one a `Figure` (id, title, draw, why_not), drawn from ReportData.

A new figure is a draw function ``(plotly.graph_objects, ReportData) -> go.Figure``, an
optional ``why_not(ReportData) -> str | None`` (a one-line reason it cannot be drawn; the
page shows it in the figure's place), one ``Figure(...)`` line here, and its id in a
``Grid`` of ``_page.SECTIONS``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from searcher.report import _tradeoff
from searcher.report._data import ReportData, TrialRow, key, varying
from searcher.report._text import choice, esc, fmt

N_CURVES = 5  # top trials drawn in colour among the learning curves
# Past these, a plot shows no more than a sample does, and a 10,000-trial page took long to open.
MAX_GREY_CURVES = 300  # pruned learning curves drawn (evenly spaced by trial number)
MAX_POINTS = 2000  # per plot: more points are drawn with WebGL, and box plots show outliers only
# Parallel-coordinate lines: past a few hundred they are a solid band, and slow to draw (bench/README.md, section 8).
MAX_LINES = 500
Draw = Callable[[ModuleType, ReportData], Any]  # (plotly.graph_objects, data) -> go.Figure


def _drawable(d: ReportData) -> str | None:
    return None


@dataclass(frozen=True)
class Figure:
    """One plot of the page; why_not returns None when it can be drawn, else the reason shown instead."""

    id: str
    title: str
    draw: Draw
    why_not: Callable[[ReportData], str | None] = _drawable
    note: Callable[[ReportData], str | None] = _drawable  # said under the title (e.g. what was thinned out)


# ---------------------------------------------------------------- shared pieces


def _hover(r: TrialRow) -> str:
    tag = f" ({esc(r.baseline)})" if r.baseline else ""
    return f"trial #{r.number}{tag}: {r.value:.4f}" if r.value is not None else f"trial #{r.number}{tag}"


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks at powers of ten between lo and hi (both > 0), and at 2 and 5 times them over short spans."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in ((1, 2, 5) if e1 - e0 <= 2 else (1,))]
    ticks = [t for t in ticks if lo <= t <= hi] or [lo, hi]
    return ticks, [f"{t:g}" if 0.01 <= t < 1e5 else f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks]


def _scatter(go: ModuleType, rows: Any) -> Any:
    """Scatter, or its WebGL twin past MAX_POINTS points (same look; SVG markers by the thousand are slow)."""
    return go.Scattergl if len(rows) > MAX_POINTS else go.Scatter


# ---------------------------------------------------------------- history


def _draw_history(go: ModuleType, d: ReportData) -> Any:
    done, best, acc = d.complete, [], None
    for r in done:
        acc = r.value if acc is None else (max if d.maximize else min)(acc, r.value)
        best.append(acc)
    fig = go.Figure()
    for name, rows, marker in (("complete trial", [r for r in done if not r.baseline], dict(color="#4c78a8", size=7)),
                               ("baseline", [r for r in done if r.baseline],
                                dict(color="#e45756", size=11, symbol="diamond"))):
        fig.add_trace(_scatter(go, done)(x=[r.number for r in rows], y=[r.value for r in rows], mode="markers", name=name,
                                         marker=marker, text=[_hover(r) for r in rows], hoverinfo="text"))
    fig.add_scatter(x=[r.number for r in done], y=best, mode="lines", name="best so far", hoverinfo="skip",
                    line=dict(color="#f58518", shape="hv", width=2))
    if len(done) == 1:  # plotly would stretch one point over -1..1 and 0..2
        pad = max(abs(done[0].value) * 0.05, 0.01)
        fig.update_yaxes(range=[done[0].value - pad, done[0].value + pad])
        fig.update_xaxes(range=[done[0].number - 0.5, done[0].number + 0.5])
    fig.update_xaxes(dtick=1 if done[-1].number - done[0].number < 10 else None)
    return fig.update_layout(xaxis_title="trial number", yaxis_title=esc(d.metric), height=360, margin_t=36,
                             legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))


HISTORY = Figure("history", "Value of each complete trial, and the best so far", _draw_history)


# ---------------------------------------------------------------- what mattered


def _draw_importance(go: ModuleType, d: ReportData) -> Any:
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[esc(k) for k, _ in items], orientation="h",
                           marker_color="#4c78a8", text=[f"{v:.2f}" for _, v in items], textposition="outside"))
    return fig.update_layout(xaxis_title="importance (PED-ANOVA; the values sum to 1)", height=90 + 24 * len(items),
                             xaxis_range=[0, max(v for _, v in items) * 1.12], margin_l=110)


IMPORTANCE = Figure("importance", "Hyperparameter importance", _draw_importance, lambda d: d.importance_note)


def _parallel_rows(d: ReportData) -> tuple[TrialRow, ...]:
    """The complete trials drawn as lines: all, or the best MAX_LINES // 2 and as many evenly spaced others."""
    rows = d.complete
    if len(rows) <= MAX_LINES:
        return rows
    ranked = sorted(rows, key=lambda r: r.value, reverse=d.maximize)
    best, rest = ranked[: MAX_LINES // 2], ranked[MAX_LINES // 2:]
    step = len(rest) / (MAX_LINES // 2)
    return tuple(best + [rest[int(i * step)] for i in range(MAX_LINES // 2)])


def _parallel_note(d: ReportData) -> str | None:
    if len(d.complete) <= MAX_LINES:
        return None
    return (f"{MAX_LINES:,} of the {len(d.complete):,} complete trials are drawn: the best {MAX_LINES // 2:,} "
            "and an even sample of the rest")


def _draw_parallel(go: ModuleType, d: ReportData) -> Any:
    rows, dims = _parallel_rows(d), []
    for p in varying(rows, d.param_kinds):
        vals = [r.params[p] for r in rows]
        if d.param_kinds[p] in ("cat", "bool"):
            cats = sorted(set(vals), key=lambda v: (isinstance(v, str), v))
            dims.append(dict(label=esc(p), values=[cats.index(v) for v in vals], tickvals=list(range(len(cats))),
                             ticktext=[esc(choice(c)) for c in cats]))
        elif d.param_kinds[p] == "log":
            ticks, text = _log_ticks(min(vals), max(vals))
            dims.append(dict(label=esc(p), values=[math.log10(v) for v in vals],
                             tickvals=[math.log10(t) for t in ticks], ticktext=text))
        else:
            dims.append(dict(label=esc(p), values=vals))
    values = [r.value for r in rows]
    dims.append(dict(label=esc(d.metric), values=values))
    line = dict(color=values, colorscale="Viridis", reversescale=not d.maximize, showscale=True,
                colorbar=dict(thickness=12))
    return go.Figure(go.Parcoords(dimensions=dims, line=line, labelangle=0)).update_layout(height=420, margin_t=60)


def _parallel_why_not(d: ReportData) -> str | None:
    if len(d.complete) < 2:
        return f"needs at least 2 complete trials (have {len(d.complete)})"
    if not varying(d.complete, d.param_kinds):
        return "no searched parameter varies across the complete trials"
    return None


PARALLEL = Figure("parallel", "Parallel coordinates", _draw_parallel, _parallel_why_not, _parallel_note)


# ---------------------------------------------------------------- learning rate against regularization


def _lr_vs(fid: str, title: str, knob: str, label: str) -> Figure:
    def draw(go: ModuleType, d: ReportData) -> Any:
        rows = [r for r in d.complete if r.knob("learning_rate") is not None and r.knob(knob) is not None]
        ys, yaxis = [float(r.knob(knob)) for r in rows], dict(title=label)
        if knob == "l2":  # log axis; trials without L2 sit on their own "no L2" row below the rest
            on = [y for y in ys if y > 0] or [1e-5]
            off = 10.0 ** (math.floor(math.log10(min(on))) - 1)
            ticks, text = _log_ticks(min(on), max(on))
            ys = [y if y > 0 else off for y in ys]
            yaxis.update(type="log", tickvals=[off, *ticks], ticktext=["no L2", *text])
        marker = dict(color=[r.value for r in rows], colorscale="Viridis", reversescale=not d.maximize, size=9,
                      colorbar=dict(title=dict(text=esc(d.metric)), thickness=12), line=dict(width=0.5, color="#555"))
        fig = go.Figure(_scatter(go, rows)(x=[r.knob("learning_rate") for r in rows], y=ys, mode="markers", marker=marker,
                                   text=[_hover(r) for r in rows], hoverinfo="text"))
        return fig.update_layout(xaxis=dict(type="log", dtick=1, title="learning rate"), yaxis=yaxis, height=360)

    def why_not(d: ReportData) -> str | None:
        pts = [(key(r.knob("learning_rate")), key(r.knob(knob))) for r in d.complete]
        pts = [p for p in pts if None not in p]
        if len(pts) < 2:
            return f"needs 2 complete trials that record learning rate and {knob} (have {len(pts)})"
        if len(set(pts)) < 2:
            return f"every complete trial used learning_rate={fmt(pts[0][0])} and {knob}={fmt(pts[0][1])}"
        return None

    return Figure(fid, title, draw, why_not)


LR_L2 = _lr_vs("lr_l2", "Learning rate against L2", "l2", "L2 factor")
LR_DROPOUT = _lr_vs("lr_dropout", "Learning rate against dropout", "dropout", "dropout")


# ---------------------------------------------------------------- learning curves


def _pruned_curves(d: ReportData) -> tuple[list[TrialRow], int]:
    """The pruned trials whose curves are drawn (at most MAX_GREY_CURVES), and how many have one."""
    pruned = [r for r in d.trials if r.state == "pruned" and r.curve]
    if len(pruned) <= MAX_GREY_CURVES:
        return pruned, len(pruned)
    step = len(pruned) / MAX_GREY_CURVES
    return [pruned[int(i * step)] for i in range(MAX_GREY_CURVES)], len(pruned)


def _draw_curves(go: ModuleType, d: ReportData) -> Any:
    fig = go.Figure()
    shown, _ = _pruned_curves(d)
    if shown:  # one trace, curves separated by gaps: thousands of traces made the page slow
        xs: list[Any] = []
        ys: list[Any] = []
        for r in shown:
            xs += [s + 1 for s, _ in r.curve] + [None]
            ys += [v for _, v in r.curve] + [None]
        fig.add_scatter(x=xs, y=ys, mode="lines", name="pruned", legendrank=2000, opacity=0.7, connectgaps=False,
                        line=dict(color="#b0b7c0", width=1), hoverinfo="skip")
    for r in [r for r in d.top if r.curve][:N_CURVES]:
        fig.add_scatter(x=[s + 1 for s, _ in r.curve], y=[v for _, v in r.curve], mode="lines+markers",
                        name=f"#{r.number}: {r.value:.4f}", line=dict(width=2), marker=dict(size=4))
    return fig.update_layout(xaxis_title="epoch", yaxis_title=esc(d.metric), height=400,
                             legend=dict(title=dict(text="trial: best value")))


def _curves_note(d: ReportData) -> str | None:
    shown, total = _pruned_curves(d)
    if len(shown) == total:
        return None
    return (f"curves of {len(shown)} of the {total:,} pruned trials are drawn (evenly spaced by trial number); "
            "more would only fill the same grey band")


def _points_note(rows: int) -> str | None:
    if rows <= MAX_POINTS:
        return None
    return f"{rows:,} trials: box plots show the quartiles of all of them and only the outlying points"


def _curves_why_not(d: ReportData) -> str | None:
    if not any(r.curve for r in d.trials if r.state in ("complete", "pruned")):
        return "no complete or pruned trial reported per-epoch values"
    return None


CURVES = Figure("curves", "Top trials (colour) against pruned ones (grey)", _draw_curves, _curves_why_not,
                _curves_note)


# ---------------------------------------------------------------- per-choice comparisons


def _by(knob: str, title: str) -> Figure:
    """Box plots of the value per choice of a model knob, the best trial starred."""
    def draw(go: ModuleType, d: ReportData) -> Any:
        groups: dict[str, list[TrialRow]] = {}
        for r in d.complete:
            if r.knob(knob) is not None:
                groups.setdefault(choice(r.knob(knob)), []).append(r)
        label = {g: f"{esc(g)} ({len(rs)})" for g, rs in groups.items()}
        fig = go.Figure()
        for g in sorted(groups, key=lambda g: statistics.median(r.value for r in groups[g]), reverse=d.maximize):
            every = len(d.complete) <= MAX_POINTS
            fig.add_box(y=[r.value for r in groups[g]], name=label[g], jitter=0.4, pointpos=0,
                        boxpoints="all" if every else "outliers",
                        marker=dict(size=6, color="#4c78a8"), line_color="#355a80", fillcolor="rgba(76,120,168,0.15)",
                        text=[_hover(r) for r in groups[g]] if every else None, hoverinfo="text" if every else "y")
        if d.best.knob(knob) is not None:
            fig.add_scatter(x=[label[choice(d.best.knob(knob))]], y=[d.best.value], mode="markers",
                            marker=dict(symbol="star", size=15, color="#f58518", line=dict(width=1, color="#333")),
                            text=[_hover(d.best) + " (best)"], hoverinfo="text")
        return fig.update_layout(yaxis_title=esc(d.metric), showlegend=False, height=340)

    def why_not(d: ReportData) -> str | None:
        seen = {choice(r.knob(knob)) for r in d.complete if r.knob(knob) is not None}
        if len(seen) < 2:
            return f"every complete trial used {knob} = {seen.pop()}" if seen else f"no {knob} recorded"
        return None

    return Figure(f"by_{knob}", title, draw, why_not, lambda d: _points_note(len(d.complete)))


BY_ACTIVATION = _by("activation", "By activation")
BY_INITIALIZER = _by("initializer", "By initializer")
BY_OPTIMIZER = _by("optimizer", "By optimizer")
BY_BATCH_NORM = _by("batch_norm", "Batch norm off / on")


# ---------------------------------------------------------------- cost


def _cost(fid: str, title: str, attr: str, label: str, log_x: bool) -> Figure:
    def draw(go: ModuleType, d: ReportData) -> Any:
        rows = [r for r in d.complete if getattr(r, attr) is not None]
        fig = go.Figure(_scatter(go, rows)(x=[getattr(r, attr) for r in rows], y=[r.value for r in rows], mode="markers",
                                   name="trial", marker=dict(color="#4c78a8", size=8),
                                   text=[_hover(r) for r in rows], hoverinfo="text"))
        if getattr(d.best, attr) is not None:
            fig.add_scatter(x=[getattr(d.best, attr)], y=[d.best.value], mode="markers", name=f"best #{d.best.number}",
                            marker=dict(symbol="star", size=16, color="#f58518", line=dict(width=1, color="#333")))
        xaxis = dict(title=label, type="log", dtick=1) if log_x else dict(title=label)
        return fig.update_layout(xaxis=xaxis, yaxis_title=esc(d.metric), height=340, margin_t=36,
                                 legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))

    def why_not(d: ReportData) -> str | None:
        if (n := sum(getattr(r, attr) is not None for r in d.complete)) < 2:
            return f"needs 2 complete trials that record {attr} (have {n})"
        return None

    return Figure(fid, title, draw, why_not)


COST_TIME = _cost("cost_time", "Seconds per epoch", "sec_per_epoch", "seconds per epoch", False)
COST_PARAMS = _cost("cost_params", "Parameter count", "n_params", "parameters", True)


def _draw_tradeoff(go: ModuleType, d: ReportData) -> Any:
    return _tradeoff.draw(go, d.tradeoff)


def _tradeoff_why_not(d: ReportData) -> str | None:
    return None if d.tradeoff is not None else "needs 2 feasible complete trials that record their cost"


TRADEOFF = Figure("tradeoff", "The metric against the cost (parameters, or the second objective): the Pareto front "
                              "highlighted, baselines marked; hover for the config", _draw_tradeoff, _tradeoff_why_not)
