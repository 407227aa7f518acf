"""Study report: what won and why, as one self-contained HTML page.

Numbers first, pictures second (as in ``optuna.visualization``)::

    data = collect(study)          # ReportData: plain numbers, tested directly
    page = render_html(data)       # str: plotly.js embedded once, opens offline
    write_report(study, "r.html")  # both, then write the file
"""

from __future__ import annotations

import html
import logging
import math
import os
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from searcher.errors import UserError
from searcher.export import CONFIRMED_ATTR
from searcher.monitor import LOST_WORKER

log = logging.getLogger(__name__)

TOP_K = 10  # rows in the top-trials table
N_CURVES = 5  # top trials drawn in colour among the learning curves
_STATES = ("complete", "pruned", "fail", "running", "waiting")
_SECTIONS = (  # heading, columns, ((figure id, title), ...): the page order
    ("Optimization history", 1, (("history", "Value of each complete trial, and the best so far"),)),
    ("What mattered", 1, (("importance", "Hyperparameter importance"), ("parallel", "Parallel coordinates"))),
    ("Learning rate against regularization", 2,
     (("lr_l2", "Learning rate against L2"), ("lr_dropout", "Learning rate against dropout"))),
    ("Learning curves", 1, (("curves", "Top trials (colour) against pruned ones (grey)"),)),
    ("Per-choice comparisons", 2, (("by_activation", "By activation"), ("by_initializer", "By initializer"),
                                   ("by_optimizer", "By optimizer"), ("by_batch_norm", "Batch norm off / on"))),
    ("Cost", 2, (("cost_time", "Seconds per epoch"), ("cost_params", "Parameter count"))),
)


@dataclass(frozen=True)
class TrialRow:
    """One trial, flattened from what the search core writes."""

    number: int
    state: str  # one of _STATES
    value: float | None  # objective value of a complete trial (finite), else None
    params: Mapping[str, Any]  # searched knobs only
    config: Mapping[str, Any]  # full resolved config, fixed knobs too; {} if absent
    baseline: str | None = None
    n_params: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    sec_per_epoch: float | None = None
    duration_s: float | None = None
    curve: tuple[tuple[int, float], ...] = ()  # (0-based epoch, validation metric)
    fail_reason: str | None = None

    def knob(self, key: str) -> Any:
        """A model knob from config["model"], else from the trial params (``learning_rate`` is ``lr``)."""
        model = self.config.get("model")
        if isinstance(model, Mapping) and model.get(key) is not None:
            return model[key]
        if key == "l2" and "l2" not in self.params and self.params.get("use_l2") is False:
            return 0.0
        return self.params.get("lr" if key == "learning_rate" else key)


@dataclass(frozen=True)
class BaselineRow:
    name: str
    number: int
    state: str
    value: float | None
    gain: float | None  # best.value - value in metric units; negative is better when minimizing


@dataclass(frozen=True)
class ReportData:
    study_name: str
    dataset: str
    model_kind: str
    metric: str
    maximize: bool
    spec_hash: str
    budget: int | None
    counts: Mapping[str, int]  # every name in _STATES -> number of trials
    total_train_s: float  # sum of the durations of finished trials
    best: TrialRow
    baselines: tuple[BaselineRow, ...]
    top: tuple[TrialRow, ...]  # complete trials, best first
    trials: tuple[TrialRow, ...]  # all trials, by number
    param_kinds: Mapping[str, str]  # searched param -> "log", "float", "int", "bool" or "cat"
    importances: Mapping[str, float]  # empty when they cannot be computed
    fail_reasons: Mapping[str, int]
    figures: tuple[str, ...]  # ids of the figures render_html draws, in page order
    notes: Mapping[str, str]  # figure id -> why it is not drawn
    confirmed: tuple[Mapping[str, Any], ...] = ()  # `searcher confirm`'s ranking, best first

    @property
    def complete(self) -> tuple[TrialRow, ...]:
        return tuple(t for t in self.trials if t.value is not None)


def collect(study: optuna.Study, *, top_k: int = TOP_K) -> ReportData:
    """Compute everything the report shows; raise UserError when no trial is complete."""
    name = study.study_name
    if len(study.directions) != 1:
        raise UserError(f"study '{name}' has {len(study.directions)} objectives; the report needs exactly 1")
    spec = study.user_attrs.get("spec") if isinstance(study.user_attrs.get("spec"), Mapping) else {}
    trials = study.get_trials(deepcopy=False)
    rows = tuple(_row(t) for t in trials)
    counts = Counter(r.state for r in rows)
    complete = [r for r in rows if r.value is not None]
    if not complete:
        seen = ", ".join(f"{counts[s]} {s}" for s in _STATES if counts[s]) or "no trials"
        raise UserError(f"study '{name}' has no complete trials yet ({seen}); run searcher launch {name} first")
    maximize = study.direction == StudyDirection.MAXIMIZE
    top = tuple(sorted(complete, key=lambda r: (-r.value if maximize else r.value, r.number))[:top_k])
    best, kinds, budget = top[0], _param_kinds(trials), study.user_attrs.get("n_trials")
    importances, importance_note = _importances(study, complete, kinds)
    figures, notes = _plan(rows, kinds, importance_note)
    return ReportData(
        study_name=str(spec.get("name") or name),
        dataset=str(_get(spec, "data", "dataset") or _get(best.config, "data", "dataset") or "?"),
        model_kind=str(_get(spec, "model", "kind") or best.knob("kind") or "?"),
        metric=str(_get(spec, "training", "metric") or _get(best.config, "training", "metric") or "value"),
        maximize=maximize,
        spec_hash=str(study.user_attrs.get("spec_hash", "?")),
        budget=budget if isinstance(budget, int) else None,
        counts={s: counts[s] for s in _STATES},
        total_train_s=sum(r.duration_s for r in rows if r.duration_s is not None),
        best=best,
        baselines=tuple(BaselineRow(r.baseline, r.number, r.state, r.value,
                                    None if r.value is None else best.value - r.value) for r in rows if r.baseline),
        top=top,
        trials=rows,
        param_kinds=kinds,
        importances=importances,
        fail_reasons=dict(Counter(r.fail_reason or LOST_WORKER for r in rows if r.state == "fail")),
        figures=figures,
        notes=notes,
        confirmed=tuple(study.user_attrs.get(CONFIRMED_ATTR) or ()),
    )


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, Mapping) else None
    return d


def _row(t: FrozenTrial) -> TrialRow:
    ua = t.user_attrs
    finite = t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
    num = lambda k, typ: typ(ua[k]) if isinstance(ua.get(k), (int, float)) else None  # noqa: E731
    return TrialRow(
        number=t.number, state=t.state.name.lower(), value=t.value if finite else None, params=dict(t.params),
        config=ua["config"] if isinstance(ua.get("config"), Mapping) else {},
        baseline=str(ua["baseline"]) if ua.get("baseline") else None,
        n_params=num("n_params", int), epochs=num("epochs", int), best_epoch=num("best_epoch", int),
        sec_per_epoch=num("sec_per_epoch", float),
        duration_s=t.duration.total_seconds() if t.duration is not None else None,
        curve=tuple(sorted((s, v) for s, v in t.intermediate_values.items() if math.isfinite(v))),
        fail_reason=str(ua["fail_reason"]) if ua.get("fail_reason") else None,
    )


def _param_kinds(trials: list[FrozenTrial]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                kind = "bool" if all(isinstance(c, bool) for c in dist.choices) else "cat"
            else:
                kind = "log" if dist.log else "float" if isinstance(dist, FloatDistribution) else "int"
            kinds.setdefault(name, kind)
    return kinds


def _importances(study: optuna.Study, complete: list[TrialRow], kinds: Mapping[str, str]) -> tuple[dict, str | None]:
    if len(complete) < 2:
        return {}, f"needs at least 2 complete trials (have {len(complete)})"
    if not _varying(complete, kinds, require_all=False):
        return {}, "no searched parameter varies across the complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PED-ANOVA warns on small samples; the note below says it
            imp = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as e:
        log.warning("parameter importance failed: %s", e)
        return {}, f"could not be computed: {e}"
    if not any(v > 0 for v in imp.values()):
        return {}, f"all zero: {len(complete)} complete trials are too few to tell the parameters apart"
    return dict(imp), None


def _key(v: Any) -> Any:
    return round(v, 12) if isinstance(v, float) else v


def _varying(rows: list[TrialRow], kinds: Mapping[str, str], *, require_all: bool = True) -> list[str]:
    """Searched params taking more than one value (and, with require_all, set in every row)."""
    return [p for p in kinds if (not require_all or all(p in r.params for r in rows))
            and len({_key(r.params.get(p)) for r in rows}) > 1]


def _choice(v: Any) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def _plan(rows: tuple[TrialRow, ...], kinds: Mapping[str, str], importance_note: str | None):
    """Which figures can be drawn, and for the others a short reason."""
    complete = [r for r in rows if r.value is not None]
    notes = {"importance": importance_note} if importance_note else {}
    if len(complete) < 2:
        notes["parallel"] = f"needs at least 2 complete trials (have {len(complete)})"
    elif not _varying(complete, kinds):
        notes["parallel"] = "no searched parameter varies across the complete trials"
    for fid, key in (("lr_l2", "l2"), ("lr_dropout", "dropout")):
        pts = [(_key(r.knob("learning_rate")), _key(r.knob(key))) for r in complete]
        pts = [p for p in pts if None not in p]
        if len(pts) < 2:
            notes[fid] = f"needs 2 complete trials that record learning rate and {key} (have {len(pts)})"
        elif len(set(pts)) < 2:
            notes[fid] = f"every complete trial used learning_rate={_fmt(pts[0][0])} and {key}={_fmt(pts[0][1])}"
    if not any(r.curve for r in rows if r.state in ("complete", "pruned")):
        notes["curves"] = "no complete or pruned trial reported per-epoch values"
    for knob in ("activation", "initializer", "optimizer", "batch_norm"):
        seen = {_choice(r.knob(knob)) for r in complete if r.knob(knob) is not None}
        if len(seen) < 2:
            notes[f"by_{knob}"] = f"every complete trial used {knob} = {seen.pop()}" if seen else f"no {knob} recorded"
    for fid, attr in (("cost_time", "sec_per_epoch"), ("cost_params", "n_params")):
        if (n := sum(getattr(r, attr) is not None for r in complete)) < 2:
            notes[fid] = f"needs 2 complete trials that record {attr} (have {n})"
    return tuple(f for _, _, figs in _SECTIONS for f, _ in figs if f not in notes), notes


# ---------------------------------------------------------------- page


def render_html(data: ReportData) -> str:
    """One HTML page: summary and tables, then every figure in data.figures; plotly.js once."""
    import plotly.graph_objects as go
    import plotly.offline

    body = [_summary_html(data)]
    for heading, cols, figs in _SECTIONS:
        cells = "".join(
            f'<figure class="cell"><h3>{title}</h3>'
            + (_figure_div(_DRAW[fid](go, data), fid) if fid in data.figures
               else f'<p class="note nodraw">Not drawn: {_esc(data.notes.get(fid, "no data"))}.</p>')
            + "</figure>"
            for fid, title in figs
        )
        body.append(f'<section><h2>{heading}</h2><div class="grid cols{cols}">{cells}</div></section>')
    title = _esc(f"{data.study_name}: search report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_CSS}</style>'
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>'
        f'<body><main><h1>{title}</h1>{"".join(body)}</main></body></html>\n'
    )


def write_report(study: optuna.Study, path: str | os.PathLike[str]) -> Path:
    """Collect, render and write the report (creating its folder); return the path written."""
    out = Path(path)
    data = collect(study)
    page = render_html(data)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"{out}: cannot write the report: {e.strerror or e}") from e
    log.info("wrote %s (%.1f MB, %d figures)", out, len(page.encode()) / 1e6, len(data.figures))
    return out


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1e}" if kind == "log" or 0 < abs(v) < 1e-3 else f"{v:.4g}"
    return _choice(v)


def _fmt_s(s: float | None) -> str:
    if s is None or s < 60:
        return "–" if s is None else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {sec:02d}s"


def _fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fmt_gain(d: ReportData, g: float) -> str:
    cls = "" if g == 0 else "good" if (g > 0) == d.maximize else "bad"
    points = any(s in d.metric.lower() for s in ("acc", "auc", "precision", "recall", "f1"))  # fractions
    return f'<span class="{cls}">{f"{g * 100:+.2f} pts" if points else f"{g:+.4g}"}</span>'


def _summary_html(d: ReportData) -> str:
    c, m = d.counts, _esc(d.metric)
    cards = (
        ("dataset / model", f"{_esc(d.dataset)} / {_esc(d.model_kind)}"),
        (f"best {m} ({'higher' if d.maximize else 'lower'} is better)",
         f"{d.best.value:.4f} <small>trial #{d.best.number}</small>"),
        ("trials" + (f" of {d.budget} budgeted" if d.budget else ""), f"{c['complete']} complete"),
        ("pruned / failed / running", f"{c['pruned']} / {c['fail']} / {c['running']}"
         + (f" <small>+{c['waiting']} waiting</small>" if c["waiting"] else "")),
        ("total training time", _fmt_s(d.total_train_s)),
        ("spec hash", f"<code>{_esc(d.spec_hash)}</code>"),
    )
    out = ['<div class="cards">', *(f'<div class="card"><span>{k}</span><b>{v}</b></div>' for k, v in cards), "</div>"]
    if d.fail_reasons:
        reasons = ", ".join(f"{_esc(k)} ×{n}" for k, n in sorted(d.fail_reasons.items(), key=lambda kv: -kv[1]))
        out.append(f'<p class="note">Failed trials: {reasons}.</p>')
    if d.baselines:
        rows = [f"<tr class=best><td>best</td><td class=n>#{d.best.number}</td><td class=n>{d.best.value:.4f}</td>"
                "<td class=n></td></tr>"]
        rows += [f"<tr><td>{_esc(b.name)}</td><td class=n>#{b.number}</td>" + (
            f"<td class=n>{b.value:.4f}</td><td class=n>{_fmt_gain(d, b.gain)}</td></tr>" if b.value is not None
            else f"<td class=n>–</td><td class=n>{b.state}</td></tr>") for b in d.baselines]
        out.append(f"<h2>Best against the hand-tuned baselines</h2><table><tr><th>trial</th><th class=n>number</th>"
                   f"<th class=n>{m}</th><th class=n>best − baseline</th></tr>{''.join(rows)}</table>")
    flat = _flatten(d.best.config) or list(d.best.params.items())
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(_fmt(v))}</dd>" for k, v in flat)
    out.append(f"<h2>Best trial #{d.best.number}: full configuration</h2><dl class=config>{items}</dl>")
    top = f"Top {len(d.top)} trials" if len(d.top) > 1 else "The only complete trial"
    return "".join(out) + f"<h2>{top}</h2>{_top_table(d)}" + _confirmed_table(d)


def _confirmed_table(d: ReportData) -> str:
    """`searcher confirm`'s ranking (mean over fresh seeds) next to the single-run ranking."""
    if not d.confirmed:
        return ('<p class="note">Not confirmed over several seeds yet: '
                f"<code>searcher confirm {_esc(d.study_name)} --top 3 --seeds 3</code>.</p>")
    rows = "".join(
        f'<tr{" class=best" if i == 1 else ""}><td class=n>{i}</td><td class=n>#{c["trial"]}</td>'
        f'<td class=n>{c["mean"]:.4f} ± {c["spread"]:.4f}</td><td class=n>{c["runs"]}</td>'
        f'<td class=n>{c["single_run"]:.4f}</td><td class=n>{c.get("single_rank", "–")}</td></tr>'
        for i, c in enumerate(d.confirmed, 1))
    return (f"<h2>Confirmed over fresh seeds</h2><table><tr><th class=n>confirmed rank</th><th class=n>trial</th>"
            f"<th class=n>mean {_esc(d.metric)} ± sd</th><th class=n>runs</th><th class=n>single run</th>"
            f"<th class=n>single-run rank</th></tr>{rows}</table>")


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else v))
    return out


def _top_table(d: ReportData) -> str:
    head = ("rank", "trial", _esc(d.metric), "searched params", "epochs (best)", "params", "s / epoch", "time")
    cls = ("n", "n", "n", "", "n", "n", "n", "n")
    rows = []
    for i, r in enumerate(d.top, 1):
        chips = "".join(f'<span class="kv">{_esc(k)}={_esc(_fmt(v, d.param_kinds.get(k, "")))}</span>'
                        for k, v in r.params.items())
        tag = f'<span class="tag">baseline: {_esc(r.baseline)}</span> ' if r.baseline else ""
        spe = "–" if r.sec_per_epoch is None else f"{r.sec_per_epoch:.2f}"
        cells = (i, f"#{r.number}", f"{r.value:.4f}", tag + chips, f"{_fmt(r.epochs)} ({_fmt(r.best_epoch)})",
                 _fmt_count(r.n_params), spe, _fmt_s(r.duration_s))
        rows.append(f'<tr{" class=best" if i == 1 else ""}>'
                    + "".join(f"<td class='{c}'>{v}</td>" for c, v in zip(cls, cells)) + "</tr>")
    ths = "".join(f"<th class='{c}'>{h}</th>" for c, h in zip(cls, head))
    return f"<table><tr>{ths}</tr>{''.join(rows)}</table>"


def _figure_div(fig: Any, fid: str) -> str:
    height = fig.layout.height or 380
    margin = {k: getattr(fig.layout.margin, k) or v for k, v in dict(l=64, r=24, t=16, b=52).items()}
    fig.update_layout(template="plotly_white", height=height, margin=margin, font_size=12)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fid}", default_height=f"{height}px",
                       config={"displaylogo": False, "responsive": True})


# ---------------------------------------------------------------- figures: (plotly.graph_objects, data) -> Figure


def _hover(r: TrialRow) -> str:
    tag = f" ({_esc(r.baseline)})" if r.baseline else ""
    return f"trial #{r.number}{tag}: {r.value:.4f}" if r.value is not None else f"trial #{r.number}{tag}"


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks at powers of ten between lo and hi (both > 0), and at 2 and 5 times them over short spans."""
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0**e for e in range(e0, e1 + 1) for m in ((1, 2, 5) if e1 - e0 <= 2 else (1,))]
    ticks = [t for t in ticks if lo <= t <= hi] or [lo, hi]
    return ticks, [f"{t:g}" if 0.01 <= t < 1e5 else f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks]


def _draw_history(go: ModuleType, d: ReportData) -> Any:
    done, best, acc = d.complete, [], None
    for r in done:
        acc = r.value if acc is None else (max if d.maximize else min)(acc, r.value)
        best.append(acc)
    fig = go.Figure()
    for name, rows, marker in (("complete trial", [r for r in done if not r.baseline], dict(color="#4c78a8", size=7)),
                               ("baseline", [r for r in done if r.baseline],
                                dict(color="#e45756", size=11, symbol="diamond"))):
        fig.add_scatter(x=[r.number for r in rows], y=[r.value for r in rows], mode="markers", name=name,
                        marker=marker, text=[_hover(r) for r in rows], hoverinfo="text")
    fig.add_scatter(x=[r.number for r in done], y=best, mode="lines", name="best so far", hoverinfo="skip",
                    line=dict(color="#f58518", shape="hv", width=2))
    if len(done) == 1:  # plotly would stretch one point over -1..1 and 0..2
        pad = max(abs(done[0].value) * 0.05, 0.01)
        fig.update_yaxes(range=[done[0].value - pad, done[0].value + pad])
        fig.update_xaxes(range=[done[0].number - 0.5, done[0].number + 0.5])
    fig.update_xaxes(dtick=1 if done[-1].number - done[0].number < 10 else None)
    return fig.update_layout(xaxis_title="trial number", yaxis_title=_esc(d.metric), height=360, margin_t=36,
                             legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))


def _draw_importance(go: ModuleType, d: ReportData) -> Any:
    items = sorted(d.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[_esc(k) for k, _ in items], orientation="h",
                           marker_color="#4c78a8", text=[f"{v:.2f}" for _, v in items], textposition="outside"))
    return fig.update_layout(xaxis_title="importance (PED-ANOVA; the values sum to 1)", height=90 + 24 * len(items),
                             xaxis_range=[0, max(v for _, v in items) * 1.12], margin_l=110)


def _draw_parallel(go: ModuleType, d: ReportData) -> Any:
    rows, dims = d.complete, []
    for p in _varying(list(rows), d.param_kinds):
        vals = [r.params[p] for r in rows]
        if d.param_kinds[p] in ("cat", "bool"):
            cats = sorted(set(vals), key=lambda v: (isinstance(v, str), v))
            dims.append(dict(label=_esc(p), values=[cats.index(v) for v in vals], tickvals=list(range(len(cats))),
                             ticktext=[_esc(_choice(c)) for c in cats]))
        elif d.param_kinds[p] == "log":
            ticks, text = _log_ticks(min(vals), max(vals))
            dims.append(dict(label=_esc(p), values=[math.log10(v) for v in vals],
                             tickvals=[math.log10(t) for t in ticks], ticktext=text))
        else:
            dims.append(dict(label=_esc(p), values=vals))
    values = [r.value for r in rows]
    dims.append(dict(label=_esc(d.metric), values=values))
    line = dict(color=values, colorscale="Viridis", reversescale=not d.maximize, showscale=True,
                colorbar=dict(thickness=12))
    return go.Figure(go.Parcoords(dimensions=dims, line=line, labelangle=0)).update_layout(height=420, margin_t=60)


def _draw_lr_vs(key: str, label: str) -> Callable[[ModuleType, ReportData], Any]:
    def draw(go: ModuleType, d: ReportData) -> Any:
        rows = [r for r in d.complete if r.knob("learning_rate") is not None and r.knob(key) is not None]
        ys, yaxis = [float(r.knob(key)) for r in rows], dict(title=label)
        if key == "l2":  # log axis; trials without L2 sit on their own "no L2" row below the rest
            on = [y for y in ys if y > 0] or [1e-5]
            off = 10.0 ** (math.floor(math.log10(min(on))) - 1)
            ticks, text = _log_ticks(min(on), max(on))
            ys = [y if y > 0 else off for y in ys]
            yaxis.update(type="log", tickvals=[off, *ticks], ticktext=["no L2", *text])
        marker = dict(color=[r.value for r in rows], colorscale="Viridis", reversescale=not d.maximize, size=9,
                      colorbar=dict(title=dict(text=_esc(d.metric)), thickness=12), line=dict(width=0.5, color="#555"))
        fig = go.Figure(go.Scatter(x=[r.knob("learning_rate") for r in rows], y=ys, mode="markers", marker=marker,
                                   text=[_hover(r) for r in rows], hoverinfo="text"))
        return fig.update_layout(xaxis=dict(type="log", dtick=1, title="learning rate"), yaxis=yaxis, height=360)
    return draw


def _draw_curves(go: ModuleType, d: ReportData) -> Any:
    fig = go.Figure()
    for i, r in enumerate(r for r in d.trials if r.state == "pruned" and r.curve):
        fig.add_scatter(x=[s + 1 for s, _ in r.curve], y=[v for _, v in r.curve], mode="lines", name="pruned",
                        legendgroup="pruned", legendrank=2000, showlegend=i == 0, opacity=0.7,
                        line=dict(color="#b0b7c0", width=1), hovertext=f"trial #{r.number} (pruned)", hoverinfo="text")
    for r in [r for r in d.top if r.curve][:N_CURVES]:
        fig.add_scatter(x=[s + 1 for s, _ in r.curve], y=[v for _, v in r.curve], mode="lines+markers",
                        name=f"#{r.number}: {r.value:.4f}", line=dict(width=2), marker=dict(size=4))
    return fig.update_layout(xaxis_title="epoch", yaxis_title=_esc(d.metric), height=400,
                             legend=dict(title=dict(text="trial: best value")))


def _draw_by(knob: str) -> Callable[[ModuleType, ReportData], Any]:
    def draw(go: ModuleType, d: ReportData) -> Any:
        groups: dict[str, list[TrialRow]] = {}
        for r in d.complete:
            if r.knob(knob) is not None:
                groups.setdefault(_choice(r.knob(knob)), []).append(r)
        label = {g: f"{_esc(g)} ({len(rs)})" for g, rs in groups.items()}
        fig = go.Figure()
        for g in sorted(groups, key=lambda g: statistics.median(r.value for r in groups[g]), reverse=d.maximize):
            fig.add_box(y=[r.value for r in groups[g]], name=label[g], boxpoints="all", jitter=0.4, pointpos=0,
                        marker=dict(size=6, color="#4c78a8"), line_color="#355a80", fillcolor="rgba(76,120,168,0.15)",
                        text=[_hover(r) for r in groups[g]], hoverinfo="text")
        if d.best.knob(knob) is not None:
            fig.add_scatter(x=[label[_choice(d.best.knob(knob))]], y=[d.best.value], mode="markers",
                            marker=dict(symbol="star", size=15, color="#f58518", line=dict(width=1, color="#333")),
                            text=[_hover(d.best) + " (best)"], hoverinfo="text")
        return fig.update_layout(yaxis_title=_esc(d.metric), showlegend=False, height=340)
    return draw


def _draw_cost(attr: str, label: str, log_x: bool) -> Callable[[ModuleType, ReportData], Any]:
    def draw(go: ModuleType, d: ReportData) -> Any:
        rows = [r for r in d.complete if getattr(r, attr) is not None]
        fig = go.Figure(go.Scatter(x=[getattr(r, attr) for r in rows], y=[r.value for r in rows], mode="markers",
                                   name="trial", marker=dict(color="#4c78a8", size=8),
                                   text=[_hover(r) for r in rows], hoverinfo="text"))
        if getattr(d.best, attr) is not None:
            fig.add_scatter(x=[getattr(d.best, attr)], y=[d.best.value], mode="markers", name=f"best #{d.best.number}",
                            marker=dict(symbol="star", size=16, color="#f58518", line=dict(width=1, color="#333")))
        xaxis = dict(title=label, type="log", dtick=1) if log_x else dict(title=label)
        return fig.update_layout(xaxis=xaxis, yaxis_title=_esc(d.metric), height=340, margin_t=36,
                                 legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return draw


_DRAW: dict[str, Callable[[ModuleType, ReportData], Any]] = {
    "history": _draw_history, "importance": _draw_importance, "parallel": _draw_parallel,
    "lr_l2": _draw_lr_vs("l2", "L2 factor"), "lr_dropout": _draw_lr_vs("dropout", "dropout"), "curves": _draw_curves,
    **{f"by_{k}": _draw_by(k) for k in ("activation", "initializer", "optimizer", "batch_norm")},
    "cost_time": _draw_cost("sec_per_epoch", "seconds per epoch", False),
    "cost_params": _draw_cost("n_params", "parameters", True),
}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933;background:#f4f5f7;margin:0}
main{max-width:1360px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:24px;margin:4px 0 16px}h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d9dde3;
padding:0 0 4px}
h3{font-size:14px;margin:0 0 6px;color:#3e4c59}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
.card,.cell{background:#fff;border:1px solid #e1e4e8;border-radius:6px;padding:10px 12px;margin:0;min-width:0}
.card b{display:block;font-size:18px}.card span,.card small{color:#616e7c;font-size:12px}
.grid{display:grid;gap:14px}.cols1{grid-template-columns:1fr}.cols2{grid-template-columns:1fr 1fr}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e1e4e8}
th,td{padding:5px 8px;border-bottom:1px solid #eef0f2;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#fff8e1}
.kv{display:inline-block;background:#eef2f7;border-radius:3px;padding:0 5px;margin:1px 2px;font-size:12px}
.tag{background:#e3f2e6;border-radius:3px;padding:0 5px;font-size:12px}
dl.config{display:grid;grid-template-columns:repeat(3,max-content minmax(0,1fr));gap:3px 12px;margin:0;background:#fff;
border:1px solid #e1e4e8;border-radius:6px;padding:10px 12px}dl.config dt{color:#616e7c}
dl.config dd{margin:0;font-family:ui-monospace,monospace;font-size:12.5px;overflow-wrap:anywhere}
.note{color:#616e7c;font-style:italic;margin:8px 0}.good{color:#1e7b34}.bad{color:#b42318}
"""
