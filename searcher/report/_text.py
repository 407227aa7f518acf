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


def fmt_s(s: float | None) -> str:
    if s is None or s < 60:
        return "–" if s is None else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {sec:02d}s"


def fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)
