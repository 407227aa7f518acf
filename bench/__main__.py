"""``python -m bench [--quick] [--json PATH]``: measure searcher on this machine.

Prints one markdown table per section and writes the same figures as JSON (default
bench/results/latest.json). Run it from the repository root. A section that fails is
reported as failed, the others still run, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench import gpu, nan_check, overhead, own_data, profile, quality, scale, scaling, startup, storage
from bench._common import REPO, Plan, Section, not_run_section

log = logging.getLogger("bench")
SECTIONS = ("overhead", "scaling", "storage", "startup", "quality", "gpu", "nan_check", "scale", "own_data", "profile")
# scale (minutes, hundreds of processes), own_data (nine searches, ~40 min) and profile (~1 h) run with --only
DEFAULT_SECTIONS = SECTIONS[:-3]
TITLES = {"overhead": overhead.TITLE, "scaling": scaling.TITLE, "storage": storage.TITLE,
          "startup": startup.TITLE, "quality": quality.TITLE, "gpu": gpu.TITLE, "nan_check": nan_check.TITLE,
          "scale": scale.TITLE, "own_data": own_data.TITLE, "profile": profile.TITLE}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (~3 min): checks the harness, "
                                                             "figures are rough")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "latest.json",
                        help="where to write the figures (default: bench/results/latest.json)")
    parser.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                        help=f"comma-separated sections to run (default: {','.join(DEFAULT_SECTIONS)}; also: scale, own_data); "
                             "storage and startup need the overhead run and start it too")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (studies, logs, models)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="profile: another searcher checkout to measure beside this one (repeatable), "
                             "e.g. --tree old=/tmp/old-checkout")
    parser.add_argument("--epochs", type=int, help="profile: epochs per side of the seconds-per-epoch comparison "
                                                   "(default 680; 40 with --quick)")
    parser.add_argument("--profile-trials", type=int, help="profile: trials per profile run (default 6; 3 with --quick)")
    parser.add_argument("--rounds", type=int, help="profile: rounds of every side, alternating order (default 2; 1 with --quick)")
    parser.add_argument("--sets", help="own_data: comma-separated data sets (default: all of "
                                       f"{','.join(own_data.DATASETS)})")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; sections are {', '.join(SECTIONS)}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", stream=sys.stderr)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.profile_trials:
        plan = dataclasses.replace(plan, profile_trials=args.profile_trials)
    if args.rounds:
        plan = dataclasses.replace(plan, profile_rounds=args.rounds)
    if args.sets:
        sets = tuple(s.strip() for s in args.sets.split(",") if s.strip())
        if unknown := sorted(set(sets) - set(own_data.DATASETS)):
            parser.error(f"--sets: unknown data set(s) {', '.join(unknown)}; sets are {', '.join(own_data.DATASETS)}")
        plan = dataclasses.replace(plan, own_data_sets=sets)
    workdir = Path(tempfile.mkdtemp(prefix="searcher-bench-"))
    started = time.perf_counter()
    load_at_start = round(os.getloadavg()[0], 2)
    trees = {**{label: Path(path).resolve() for label, path in (item.split("=", 1) for item in args.tree)},
             "this tree": REPO}
    results = _run_sections(plan, workdir, only, trees=trees, epochs=args.epochs)
    seconds = time.perf_counter() - started

    machine = _machine()
    machine["load_average_1min_at_start"] = load_at_start
    header = (f"# searcher bench ({plan.name} run, {seconds / 60:.1f} min)\n\n"
              f"{machine['cpu_count']} CPU cores, {machine['memory_gib']} GiB, {machine['platform']}; "
              f"load average {load_at_start:.1f} at the start, {machine['load_average_1min']:.1f} at the end; "
              f"Python {machine['python']}, " + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
              + f"; {dt.datetime.now().isoformat(timespec='seconds')}.\n"
              "Other processes may share this machine: compare ratios taken in the same run.\n")
    print(header)
    for key in SECTIONS:
        if key in results:
            print(results[key].markdown())

    document: dict[str, Any] = {
        "plan": plan.name,
        "seconds": round(seconds, 1),
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "sections": {key: results[key].to_json() for key in SECTIONS if key in results},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    log.info("wrote %s", args.json)
    if args.keep:
        log.info("working folder kept: %s", workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if any(r.details.get("failed") for r in results.values()) else 0


def _run_sections(plan: Plan, workdir: Path, only: list[str], *, trees: dict[str, Path] | None = None,
                  epochs: int | None = None) -> dict[str, Section]:
    results: dict[str, Section] = {}
    cpu_count = os.cpu_count() or 1

    def attempt(key: str, fn: Callable[[], Any]) -> Any:
        log.info("%s ...", key)
        t0, load = time.perf_counter(), os.getloadavg()[0]
        try:
            value = fn()
        except Exception as e:  # keep the other sections' figures; the exit code says it failed
            log.error("%s failed:\n%s", key, traceback.format_exc())
            failed = not_run_section(key, TITLES.get(key, key), f"failed: {type(e).__name__}: "
                                                                 f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
            failed.details["failed"] = True
            results[key] = failed
            return None
        log.info("%s done in %.0f s", key, time.perf_counter() - t0)
        section = value[0] if isinstance(value, tuple) else value
        if isinstance(section, Section):  # other processes' load shows in every timing
            section.details["load_average_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            section.details["seconds"] = round(time.perf_counter() - t0, 1)
        return value

    if {"overhead", "storage", "startup"} & set(only):
        measured = attempt("overhead", lambda: overhead.run(plan, workdir))
        if measured:
            section, overhead_run = measured
            results["overhead"] = section
            if "startup" in only:
                value = attempt("startup", lambda: startup.run(plan, workdir, overhead_run))
                if value:
                    results["startup"] = value
            if "storage" in only:
                value = attempt("storage", lambda: storage.section(
                    storage.measure(plan, workdir), real_trial_s=section.details["median_trial_s"],
                    real_epochs=section.details["median_trial_epochs"]))
                if value:
                    results["storage"] = value
        for key in ("storage", "startup"):
            if key in only and key not in results:
                results[key] = _failed(key, "the overhead run it builds on failed")
    for key, fn in (("scaling", lambda: scaling.run(plan, workdir, cpu_count)),
                    ("quality", lambda: quality.run(plan, workdir)),
                    ("gpu", lambda: gpu.run(plan, workdir)),
                    ("nan_check", lambda: nan_check.run(plan, workdir)),
                    ("scale", lambda: scale.run(plan, workdir)),
                    ("own_data", lambda: own_data.run(plan, workdir)),
                    ("profile", lambda: profile.run(plan, workdir, trees or {}, epochs=epochs))):
        if key in only:
            value = attempt(key, fn)
            if value:
                results[key] = value
    for key in list(results):
        if key not in only:
            del results[key]
    return results


def _failed(key: str, reason: str) -> Section:
    section = not_run_section(key, TITLES[key], f"failed: {reason}")
    section.details["failed"] = True
    return section


def _machine() -> dict[str, Any]:
    import psutil

    packages = {}
    for name in ("tensorflow", "keras", "optuna", "SQLAlchemy", "keras-tuner"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "packages": packages,
    }


if __name__ == "__main__":
    sys.exit(main())
