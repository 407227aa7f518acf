"""The report's text sections: summary cards and tables, each ``(ReportData) -> HTML``."""

from __future__ import annotations

import statistics
from typing import Any, Mapping

from searcher.formatting import format_count, format_seconds
from searcher.ranking import against_best, better_direction
from searcher.report import _tradeoff
from searcher.report._data import BaselineRow, ReportData
from searcher.report._text import esc, fmt
from searcher.tensorboard import hint


def summary(d: ReportData) -> str:
    """Cards (dataset, best value, trial counts, time, spec hash), then why trials failed."""
    c, m = d.counts, esc(d.metric)
    cards = (
        ("dataset / model", f"{esc(d.dataset)} / {esc(d.model_kind)}"),
        (f"best {m} ({'higher' if d.maximize else 'lower'} is better)",
         f"{d.best.value:.4f} <small>trial #{d.best.number}</small>"),
        ("trials" + (f" of {d.budget} budgeted" if d.budget else ""), f"{c['complete']} complete"),
        ("pruned / failed / running", f"{c['pruned']} / {c['fail']} / {c['running']}"
         + (f" <small>+{c['waiting']} waiting</small>" if c["waiting"] else "")),
        ("total training time", format_seconds(d.total_train_s)),
        ("spec hash", f"<code>{esc(d.spec_hash)}</code>"),
        *((("spec / seed / split seed", f"{esc(d.spec_name)} <small>seed {esc(d.seed)}, split {esc(d.split_seed)}"
            "</small>"),) if d.spec_name else ()),
    )
    out = ['<div class="cards">', *(f'<div class="card"><span>{k}</span><b>{v}</b></div>' for k, v in cards), "</div>"]
    if d.fail_reasons:
        reasons = ", ".join(f"{esc(k)} ×{n}" for k, n in sorted(d.fail_reasons.items(), key=lambda kv: -kv[1]))
        out.append(f'<p class="note">Failed trials: {reasons}.</p>')
    if d.tensorboard:
        out.append(f'<p class="note">{esc(hint(d.tensorboard))}</p>')
    return "".join(out)


def data(d: ReportData) -> str:
    """Rows per split, the features or image shape, classes with their counts, the preprocessing."""
    if not d.data:
        return ""
    rows, features = d.data["rows"], d.data["features"]
    if "shape" in features:
        shape = f"{esc(features['dtype'])} {'×'.join(map(str, features['shape']))} per example"
    else:
        shape = (f"{len(features['numeric'])} numeric and {len(features['categorical'])} categorical column(s)"
                 + (f" ({esc(', '.join(features['categorical']))})" if features["categorical"] else ""))
    classes = "".join(f"<tr><td>{esc(c['name'])}</td><td class=n>{c['fit']}</td><td class=n>{c['validation']}</td></tr>"
                      for c in d.data["classes"][:50])
    more = (f"<p class=note>… and {len(d.data['classes']) - 50} more classes.</p>"
            if len(d.data["classes"]) > 50 else "")
    split = f"{rows['fit']} fit, {rows['validation']} validation"
    if whole := d.data.get("whole_rows"):
        split = (f"a search sample of {rows['fit']} of {whole['fit']} fit and {rows['validation']} of "
                 f"{whole['validation']} validation rows (data.search_rows; retrain trains on all)")
    if d.data.get("cv_folds"):
        split = f"{rows['fit'] + rows['validation']} training rows in {d.data['cv_folds']} folds (fold 1: {split})"
    return (f"<h2>Data</h2><p>{esc(d.data['dataset'])}: {split} and "
            f"{rows['test']} held-out test rows (scored only by <code>searcher retrain</code>); {shape}.</p>"
            + (f"<p>Cross-validated: every trial trained on each of {d.data['cv_folds']} stratified folds of the "
               f"{rows['fit'] + rows['validation']} training rows, validated on the fold it did not see; its value is "
               "the mean over the folds at the one epoch where that mean is best (± the folds' standard deviation "
               "below). The learning curves and the class counts are fold 1's.</p>" if d.data.get("cv_folds") else "")
            + f"<p>Preprocessing, fitted on the fit split and inside the model: {esc(d.data['preprocessing'])}.</p>"
            f"<table><tr><th>class</th><th class=n>fit</th><th class=n>validation</th></tr>{classes}</table>{more}")


def baselines(d: ReportData) -> str:
    """The best trial against each hand-tuned baseline; nothing when the spec has none."""
    if not d.baselines:
        return ""
    rows = [f"<tr class=best><td>best</td><td class=n>#{d.best.number}</td><td class=n>{d.best.value:.4f}</td>"
            "<td class=n></td></tr>"]
    rows += [f"<tr><td>{esc(b.name)}</td><td class=n>#{b.number}</td>" + (
        f"<td class=n>{b.value:.4f}</td><td class=n>{_fmt_gain(d, b)}</td></tr>" if b.value is not None
        else f"<td class=n>–</td><td class=n>{b.state}</td></tr>") for b in d.baselines]
    return (f"<h2>Best against the hand-tuned baselines</h2><table><tr><th>trial</th><th class=n>number</th>"
            f"<th class=n>{esc(d.metric)}</th><th class=n>the best against it ({better_direction(d.maximize)})</th>"
            f"</tr>{''.join(rows)}</table>")


def references(d: ReportData) -> str:
    """The best trial beside boosted trees and a logistic regression fitted on the same split."""
    from searcher.reference import NAMES

    refs = d.references or {}
    metric = refs.get("metric")
    if metric != d.metric:
        return ""
    rows = [f"<tr class=best><td>searcher best (trial #{d.best.number})</td><td class=n>{d.best.value:.4f}</td>"
            "<td class=n></td></tr>"]
    for name, label in NAMES.items():
        if isinstance(refs.get(name), dict) and metric in refs[name]:
            value = refs[name][metric]
            rows.append(f"<tr><td>{esc(label)}</td><td class=n>{value:.4f}</td>"
                        f"<td class=n>{_reference_gain(d, value)}</td></tr>")
    folds = " (mean over the folds)" if d.data and d.data.get("cv_folds") else ""
    return (f"<h2>Against reference models</h2><p>scikit-learn's HistGradientBoostingClassifier and a standardized "
            f"logistic regression, fitted on the same fit split and scored on the same validation split{folds}.</p>"
            f"<table><tr><th>model</th><th class=n>{esc(metric)}</th><th class=n>best − reference</th></tr>"
            f"{''.join(rows)}</table>")


def best_config(d: ReportData) -> str:
    """The best trial's whole resolved configuration, fixed knobs too."""
    flat = _flatten(d.best.config) or list(d.best.params.items())
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd>" for k, v in flat)
    return f"<h2>Best trial #{d.best.number}: full configuration</h2><dl class=config>{items}</dl>"


def top_trials(d: ReportData) -> str:
    """The top complete trials with their searched params, epochs, size and time."""
    head = ("rank", "trial", esc(d.metric), "searched params", "epochs (best)", "params", "s / epoch", "time")
    cls = ("n", "n", "n", "", "n", "n", "n", "n")
    rows = []
    for i, r in enumerate(d.top, 1):
        chips = "".join(f'<span class="kv">{esc(k)}={esc(fmt(v, d.param_kinds.get(k, "")))}</span>'
                        for k, v in r.params.items())
        tag = f'<span class="tag">baseline: {esc(r.baseline)}</span> ' if r.baseline else ""
        spe = "–" if r.sec_per_epoch is None else f"{r.sec_per_epoch:.2f}"
        value = f"{r.value:.4f}" + (f" ± {statistics.pstdev(r.cv_values):.4f}" if len(r.cv_values) > 1 else "")
        cells = (i, f"#{r.number}", value, tag + chips, f"{fmt(r.epochs)} ({fmt(r.best_epoch)})",
                 format_count(r.n_params), spe, format_seconds(r.duration_s))
        rows.append(f'<tr{" class=best" if i == 1 else ""}>'
                    + "".join(f"<td class='{c}'>{v}</td>" for c, v in zip(cls, cells)) + "</tr>")
    ths = "".join(f"<th class='{c}'>{h}</th>" for c, h in zip(cls, head))
    top = f"Top {len(d.top)} trials" if len(d.top) > 1 else "The only complete trial"
    return f"<h2>{top}</h2><table><tr>{ths}</tr>{''.join(rows)}</table>"


def confirmed(d: ReportData) -> str:
    """`searcher confirm`'s ranking (mean over fresh seeds) next to the single-run ranking."""
    if not d.confirmed:
        return ('<p class="note">Not confirmed over several seeds yet: '
                f"<code>searcher confirm {esc(d.study_name)} --top 3 --seeds 3</code>.</p>")
    rows = "".join(
        f'<tr{" class=best" if i == 1 else ""}><td class=n>{i}</td><td class=n>#{c["trial"]}</td>'
        f'<td class=n>{c["mean"]:.4f} ± {c["spread"]:.4f}</td><td class=n>{c["runs"]}</td>'
        f'<td class=n>{c["single_run"]:.4f}</td><td class=n>{c.get("single_rank", "–")}</td></tr>'
        for i, c in enumerate(d.confirmed, 1))
    return (f"<h2>Confirmed over fresh seeds</h2><table><tr><th class=n>confirmed rank</th><th class=n>trial</th>"
            f"<th class=n>mean {esc(d.metric)} ± sd</th><th class=n>runs</th><th class=n>single run</th>"
            f"<th class=n>single-run rank</th></tr>{rows}</table>")


def _reference_gain(d: ReportData, value: float) -> str:
    gain = d.best.value - value
    cls = "" if gain == 0 else "good" if (gain > 0) == d.maximize else "bad"
    points = any(s in d.metric.lower() for s in ("acc", "auc", "precision", "recall", "f1"))  # fractions
    return f'<span class="{cls}">{against_best(d.best.value, value, maximize=d.maximize, points=points)}</span>'


def _fmt_gain(d: ReportData, b: BaselineRow) -> str:
    """``the best is 1.63 points higher``, green when the best is on the better side."""
    cls = "" if b.gain == 0 else "good" if (b.gain > 0) == d.maximize else "bad"
    points = any(s in d.metric.lower() for s in ("acc", "auc", "precision", "recall", "f1"))  # fractions
    return f'<span class="{cls}">{against_best(d.best.value, b.value, maximize=d.maximize, points=points)}</span>'


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", f"[{', '.join(map(str, v))}]" if isinstance(v, (list, tuple)) else v))
    return out


def tradeoff(d: ReportData) -> str:
    """Under the trade-off figure: which trials were infeasible, the front, the smallest and fastest near the best."""
    t = d.tradeoff
    if t is None:
        return ""
    over = sum(not p.feasible for p in t.points)
    rejected = sum(not r.feasible and r.state == "pruned" for r in d.trials)
    parts = ([f"{over} complete trial(s) measured over a limit after training, drawn as crosses"] if over else []) + (
        [f"{rejected} network(s) over <code>max_params</code>, rejected before training (not drawn)"] if rejected else [])
    note = f'<p class="note">Infeasible, never on the front: {"; ".join(parts)}.</p>' if parts else ""
    return note + _tradeoff.tables_html(t)
