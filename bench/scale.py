"""Section 7, scale: many workers on one PostgreSQL, and 10,000-trial studies.

Part one runs tests/scale_harness.py (real ``run_worker`` processes forked from here, a
stand-in for training, the server started with ``max_connections=100``, PgBouncer in
transaction mode in front) at each worker count, and prints trial starts per second, the
wait for the budget lock (median, p99), how long it was held, and the peak of server
connections sampled from ``pg_stat_activity``. Part two builds studies of 1,000 to 10,000
realistic trials (``add_trials``: the user attributes and per-epoch values a real worker
writes; cached in the bench's work folder) and times what a user runs on them: status,
the live view, report (build, and load in Chromium), export, optuna-dashboard's API, and
the sampler's time per trial (the spec's TPE, one ``ask`` and the digits space sampled).
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import REPO, Plan, Section, table

TITLE = "8. Scale: hundreds of workers on one PostgreSQL, 10,000-trial studies"
MAX_CONNECTIONS = 100


def _tests_module(name: str):
    """A helper module of the test suite (the PostgreSQL harness, the stand-in worker)."""
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    return importlib.import_module(name)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def measure_workers(plan: Plan, workdir: Path) -> list[dict[str, Any]]:
    """One run per worker count; each on a fresh database of one server behind PgBouncer."""
    servers, harness = _tests_module("postgres_server"), _tests_module("scale_harness")
    from searcher.storage import normalize_url

    rows = []
    with servers.PostgresServer(max_connections=MAX_CONNECTIONS) as server, \
            servers.PgBouncer(server, pool_size=20) as bouncer:
        for workers in plan.scale_workers:
            n_trials = max(2 * workers, 24)
            spec = harness.scale_spec(f"scale-{workers}", n_trials=n_trials, epochs=3)
            url = normalize_url(bouncer.url(server.create_database()))
            run = harness.run_scale(spec, url, admin_url=server.admin_url, workers=workers,
                                    folder=workdir / "scale" / str(workers), epoch_seconds=plan.scale_epoch_s)
            finished = sum(1 for t in run.trials if t.state.name in harness.FINISHED)
            starts = [t.datetime_start.timestamp() for t in run.trials if t.datetime_start]
            span = max(starts) - min(starts) if len(starts) > 1 else float("nan")
            rows.append({"workers": workers, "trials": finished, "budget_exact": finished == n_trials,
                         "trial_starts_per_s": round((len(starts) - 1) / span, 2) if span else None,
                         "lock_wait_median_ms": round(1000 * statistics.median(run.lock_waits), 1),
                         "lock_wait_p99_ms": round(1000 * _pct(run.lock_waits, 0.99), 1),
                         "lock_hold_median_ms": round(1000 * statistics.median(run.lock_holds), 1),
                         "peak_connections": run.peak_connections, "workers_pss_mb": round(run.peak_pss_mb),
                         "seconds": round(run.seconds, 1)})
    return rows


# --- 10,000-trial studies ----------------------------------------------------------------


def large_study_url(workdir: Path, n: int) -> tuple[str, str]:
    """A SQLite file holding a study of ``n`` trials, built once and kept in ``workdir/large``."""
    folder = workdir / "large"
    folder.mkdir(parents=True, exist_ok=True)
    path, name = folder / f"trials-{n}.db", f"large-{n}"
    if not (folder / f"trials-{n}.done").is_file():
        path.unlink(missing_ok=True)
        from searcher.study import open_study_storage
        from searcher.spec import load_spec

        storage = open_study_storage(load_spec("digits-mlp"), f"sqlite:///{path}")
        _tests_module("scale_harness").build_large_study(storage, name, n)
        storage.engine.dispose()
        (folder / f"trials-{n}.done").write_text("built\n")
    return f"sqlite:///{path}", name


def _seconds(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def measure_large(n: int, workdir: Path) -> dict[str, Any]:
    """Seconds for each command on a study of ``n`` trials (each opens the storage as the CLI does)."""
    import optuna
    from rich.console import Console

    from searcher import study as studies
    from searcher.export import export_config
    from searcher.status import render, take_snapshot
    from searcher.report import write_report
    from searcher.storage import open_storage

    build_s, (url, name) = _seconds(lambda: large_study_url(workdir, n))
    load = lambda: studies.load(name, open_storage(url, create=False), url=url)  # noqa: E731
    out: dict[str, Any] = {"trials": n, "build_s": round(build_s, 1)}
    console = Console(file=open(os.devnull, "w"), width=160)
    out["status_s"], _ = _seconds(lambda: console.print(render(take_snapshot(load()))))
    study = load()
    take_snapshot(study)  # the live view redraws on a study object it keeps: later snapshots are incremental
    out["live_view_s"], _ = _seconds(lambda: console.print(render(take_snapshot(study))))
    report = workdir / "large" / f"report-{n}.html"
    out["report_s"], _ = _seconds(lambda: write_report(load(), report))
    out["report_mb"] = round(report.stat().st_size / 1e6, 1)
    out["chromium_open_s"], out["chromium_all_figures_s"] = _open_in_chromium(report)
    out["export_s"], _ = _seconds(lambda: export_config(load()))
    out["dashboard_api_s"] = _dashboard_api(url, name)
    out["sampler_ms_per_trial"] = _sampler_ms(url, name)
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def _open_in_chromium(report: Path) -> tuple[float, float] | tuple[None, None]:
    """Seconds from navigation to the page shown with its first figure drawn, and to every figure
    drawn (the page draws them one by one after it has painted); None: no Chromium here."""
    chromium = shutil.which("chromium")
    if chromium is None or importlib.util.find_spec("playwright") is None:
        return None, None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        t0 = time.perf_counter()
        page.goto(report.as_uri(), wait_until="load", timeout=120_000)
        page.wait_for_function("document.querySelector('.plotly-graph-div svg.main-svg') !== null", timeout=120_000)
        first = time.perf_counter() - t0
        page.wait_for_function("[...document.querySelectorAll('.plotly-graph-div')]"
                               ".every(d => d.querySelector('svg.main-svg'))", timeout=120_000)
        every = time.perf_counter() - t0
        browser.close()
    return first, every


def _dashboard_api(url: str, name: str) -> float:
    """Seconds for optuna-dashboard's study API call (what its page fetches first, then polls)."""
    import json
    import threading
    import urllib.request

    from searcher.dashboard import make_dashboard_server

    server = make_dashboard_server(url, host="127.0.0.1", port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        studies_json = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=300))
        study_id = next(s["study_id"] for s in studies_json["study_summaries"] if s["study_name"] == name)
        t0 = time.perf_counter()
        urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=300).read()
        return time.perf_counter() - t0
    finally:
        server.shutdown()
        server.server_close()


def _sampler_ms(url: str, name: str, asks: int = 3) -> float:
    """Milliseconds per trial the spec's sampler (multivariate TPE, constant liar) spends, median of ``asks``."""
    import optuna

    from searcher import stored, study as studies
    from searcher.space import suggest_values
    from searcher.storage import open_storage

    storage = open_storage(url, create=False)
    study = studies.load(name, storage, url=url)
    spec = stored.stored_spec(study)
    study = studies.load(name, storage, url=url, sampler=studies.make_sampler(spec, seed=0))
    while study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # enqueued baselines are not sampled
    times = []
    for _ in range(asks):
        t0 = time.perf_counter()
        trial = study.ask()
        suggest_values(trial, spec)
        times.append(1000 * (time.perf_counter() - t0))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # FAILED trials are not read by TPE
    return statistics.median(times)


def run(plan: Plan, workdir: Path) -> Section:
    rows = measure_workers(plan, workdir)
    large = [measure_large(n, workdir) for n in plan.scale_study_sizes]
    worker_table = table(
        ["workers", "finished / budget", "trial starts/s", "lock wait median ms", "lock wait p99 ms",
         "lock held median ms", f"peak server connections (max {MAX_CONNECTIONS})", "workers' memory MB (PSS)"],
        [[r["workers"], f"{r['trials']} {'exact' if r['budget_exact'] else 'WRONG'}", r["trial_starts_per_s"],
          r["lock_wait_median_ms"], r["lock_wait_p99_ms"], r["lock_hold_median_ms"], r["peak_connections"],
          r["workers_pss_mb"]] for r in rows])
    size_table = table(
        ["trials", "status s", "live view s", "report s", "report MB", "Chromium open s (all figures)", "export s",
         "dashboard API s", "sampler ms/trial"],
        [[r["trials"], r["status_s"], r["live_view_s"], r["report_s"], r["report_mb"],
          "no Chromium" if r["chromium_open_s"] is None else f"{r['chromium_open_s']:.2f} ({r['chromium_all_figures_s']:.2f})",
          r["export_s"],
          r["dashboard_api_s"], r["sampler_ms_per_trial"]] for r in large])
    figures = {"peak_connections": {str(r["workers"]): r["peak_connections"] for r in rows},
               "trial_starts_per_s": {str(r["workers"]): r["trial_starts_per_s"] for r in rows},
               "report_s": {str(r["trials"]): r["report_s"] for r in large},
               "sampler_ms_per_trial": {str(r["trials"]): r["sampler_ms_per_trial"] for r in large}}
    text = (f"Workers through PgBouncer (transaction mode, pool 20) to PostgreSQL with max_connections="
            f"{MAX_CONNECTIONS}; trials of 3 epochs of {plan.scale_epoch_s} s (stand-in, no TensorFlow), "
            "random sampler.\n\n" + worker_table
            + "\nStudies of realistic finished trials in SQLite (digits-mlp space, 4-20 epochs each):\n\n" + size_table)
    return Section("scale", TITLE, figures, text, details={"workers": rows, "large_studies": large})
