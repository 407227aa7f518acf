"""Study report: what won and why, as one self-contained HTML page.

Numbers first, pictures second (as in ``optuna.visualization``)::

    data = collect(study)          # ReportData: plain numbers, tested directly
    page = render_html(data)       # str: plotly.js embedded once, opens offline
    write_report(study, "r.html")  # both, then write the file

Where things live: _data.py turns a study into ReportData (no plotly); _figures.py holds
each figure (draw + why it cannot be drawn); _tables.py the text sections; _page.py the
page order (SECTIONS) and the HTML around them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import optuna

from searcher.errors import UserError
from searcher.report._data import TOP_K, BaselineRow, ReportData, TrialRow, gather
from searcher.report._page import SECTIONS, plan, render_html

__all__ = ["TOP_K", "SECTIONS", "BaselineRow", "ReportData", "TrialRow", "collect", "render_html", "write_report"]
log = logging.getLogger(__name__)


def collect(study: optuna.Study, *, top_k: int = TOP_K) -> ReportData:
    """Compute everything the report shows; raise UserError when no trial is complete."""
    data = gather(study, top_k=top_k)
    figures, notes = plan(data)
    return dataclasses.replace(data, figures=figures, notes=notes)


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
