"""The page: SECTIONS in order, each ``(ReportData) -> HTML``; plotly.js embedded once.

Adding a section is a function ``(ReportData) -> str`` (see _tables.py) or a ``Grid`` of
figures (see _figures.py), and one line in SECTIONS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from searcher.report import _figures as F
from searcher.report import _tables
from searcher.report._data import ReportData
from searcher.report._figures import Figure
from searcher.report._text import esc


@dataclass(frozen=True)
class Grid:
    """A heading over figures laid out `cols` to a row; a figure that cannot be drawn shows why not."""

    heading: str
    cols: int
    figures: tuple[Figure, ...]
    after: Callable[[ReportData], str] | None = None  # HTML under the figures (tables), if any

    def __call__(self, d: ReportData) -> str:
        import plotly.graph_objects as go

        cells = "".join(
            f'<figure class="cell"><h3>{f.title}</h3>'
            + (f'<p class="note thinned">{esc(note)}.</p>' if f.id in d.figures and (note := f.note(d)) else "")
            + (_figure_div(f.draw(go, d), f.id) if f.id in d.figures
               else f'<p class="note nodraw">Not drawn: {esc(d.notes.get(f.id, "no data"))}.</p>')
            + "</figure>"
            for f in self.figures
        )
        after = self.after(d) if self.after else ""
        return f'<section><h2>{self.heading}</h2><div class="grid cols{self.cols}">{cells}</div>{after}</section>'


Section = Callable[[ReportData], str]
SECTIONS: tuple[Section, ...] = (
    _tables.summary,
    _tables.data,
    _tables.baselines,
    _tables.references,
    _tables.best_config,
    _tables.top_trials,
    _tables.confirmed,
    Grid("Accuracy against cost: the Pareto front", 1, (F.TRADEOFF,), after=_tables.tradeoff),
    Grid("Optimization history", 1, (F.HISTORY,)),
    Grid("What mattered", 1, (F.IMPORTANCE, F.PARALLEL)),
    Grid("Learning rate against regularization", 2, (F.LR_L2, F.LR_DROPOUT)),
    Grid("Learning curves", 1, (F.CURVES,)),
    Grid("Per-choice comparisons", 2, (F.BY_ACTIVATION, F.BY_INITIALIZER, F.BY_OPTIMIZER, F.BY_BATCH_NORM)),
    Grid("Cost", 2, (F.COST_TIME, F.COST_PARAMS)),
)


def plan(d: ReportData) -> tuple[tuple[str, ...], dict[str, str]]:
    """The ids of the figures that can be drawn, in page order, and for the others a short reason."""
    drawn, notes = [], {}
    for f in (f for s in SECTIONS if isinstance(s, Grid) for f in s.figures):
        if (why := f.why_not(d)) is None:
            drawn.append(f.id)
        else:
            notes[f.id] = why
    return tuple(drawn), notes


def render_html(data: ReportData) -> str:
    """One HTML page: every section of SECTIONS in order, figures as in data.figures; plotly.js once."""
    import plotly.offline

    title = esc(f"{data.study_name}: search report")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_CSS}</style>'
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>'
        f'<body><main><h1>{title}</h1>{"".join(section(data) for section in SECTIONS)}</main>'
        f'<script>{_DRAW_FIGURES_JS}</script></body></html>\n'
    )


# Figures are drawn after the page has painted, one per task in page order, not by inline
# scripts while it loads, so a large study's text and tables show at once (bench/README.md, section 8).
_DRAW_FIGURES_JS = """(function () {
  const pending = [...document.querySelectorAll('script[type="text/x-searcher-figure"]')];
  function next() {
    const script = pending.shift();
    if (!script) return;
    new Function(script.textContent)();
    requestAnimationFrame(() => setTimeout(next, 0));  // paint what is drawn before the next one
  }
  requestAnimationFrame(() => setTimeout(next, 0));
})();"""


def _figure_div(fig: Any, fid: str) -> str:
    height = fig.layout.height or 380
    margin = {k: getattr(fig.layout.margin, k) or v for k, v in dict(l=64, r=24, t=16, b=52).items()}
    fig.update_layout(template="plotly_white", height=height, margin=margin, font_size=12)
    html = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{fid}", default_height=f"{height}px",
                       config={"displaylogo": False, "responsive": True})
    return html.replace("<script>", '<script type="text/x-searcher-figure">', 1)  # drawn by _DRAW_FIGURES_JS


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
