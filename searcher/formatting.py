"""Numbers as people read them: durations, counts, costs and params, for the terminal and the report."""

from __future__ import annotations

from typing import Any


def format_cost(figures: dict[str, Any]) -> str:
    """``4,480 params, 0.049 MB, 0.36 ms/example (batch 1), 0.31 s/epoch`` from ``ranking.figures_of``."""
    parts = []
    for name, text in (("n_params", "{:,.0f} params"), ("model_mb", "{:.3g} MB"),
                       ("latency_ms", "{:.3g} ms/example (batch 1)"), ("sec_per_epoch", "{:.3g} s/epoch")):
        if figures.get(name) is not None:
            parts.append(text.format(figures[name]))
    return ", ".join(parts)


def format_cost_value(name: str, value: float) -> str:
    """One cost figure without its unit: a parameter count in thousands, else three digits."""
    return f"{value:,.0f}" if name == "n_params" else f"{value:.3g}"


def format_params(params: dict[str, Any]) -> str:
    """``lr=0.00123, optimizer=adam``: floats to three digits."""
    parts = []
    for key, value in params.items():
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


def format_elapsed(seconds: float) -> str:
    """A running clock, fixed width for the terminal: ``4m05s``, ``1h02m``."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def format_seconds(s: float | None) -> str:
    """A measured duration: ``4.2 s`` under a minute, then ``4m 05s``, ``1h 02m``; ``–`` for none."""
    if s is None or s < 60:
        return "–" if s is None else f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    return f"{m // 60}h {m % 60:02d}m" if m >= 60 else f"{m}m {sec:02d}s"


def format_count(n: int | None) -> str:
    """``4.5k``, ``1.23M``; ``–`` for none."""
    return "–" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def format_number(v: Any, template: str) -> str:
    """``template.format(v)``; ``–`` for none."""
    return "–" if v is None else template.format(v)
