"""Numbers and strings as the page shows them; every string from a study goes through esc."""

from __future__ import annotations

import html
from typing import Any


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def choice(v: Any) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1e}" if kind == "log" or 0 < abs(v) < 1e-3 else f"{v:.4g}"
    return choice(v)
