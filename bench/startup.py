"""Section 4, start-up: from a cold ``searcher launch digits-mlp --workers 1`` to the first
finished trial in the storage (polled every 0.1 s).

The overhead run (section 1) is one such launch; the full plan adds fresh ones with
``--trials 1``. Their first trial is the same, the spec's first baseline. The phases come
from the worker's log (its TensorFlow set-up line) and the trial's stored start and end.
"""

from __future__ import annotations

from pathlib import Path

from bench._common import LaunchRun, Plan, Section, launch, load_trials, median, table

TITLE = "4. Start-up: cold launch to the first finished trial"
STUDY = "digits-mlp"


def _phases(run_: LaunchRun) -> dict[str, float]:
    trials = [t for t in load_trials(run_.url, STUDY) if t.datetime_complete is not None]
    first = min(trials, key=lambda t: t.datetime_complete)
    ready = run_.worker_ready_s()
    start = first.datetime_start.timestamp() - run_.started
    end = first.datetime_complete.timestamp() - run_.started
    return {
        "worker_ready_s": ready if ready is not None else float("nan"),
        "first_trial_start_s": start,
        "first_trial_end_s": end,
        "first_trial_s": run_.first_finished_s if run_.first_finished_s is not None else end,
    }


def run(plan: Plan, workdir: Path, overhead_run: LaunchRun) -> Section:
    samples = [_phases(overhead_run)]
    for i in range(plan.startup_repeats):
        run_ = launch(STUDY, study=STUDY, workers=1, trials=1, cwd=workdir / f"startup-{i}", poll_first=True)
        samples.append(_phases(run_))
    m = {key: median(s[key] for s in samples) for key in samples[0]}
    rows = [
        ["launch → worker's TensorFlow set up (interpreters, imports, study opened)", m["worker_ready_s"],
         m["worker_ready_s"]],
        ["→ first trial started (data loaded, objective ready)", m["first_trial_start_s"] - m["worker_ready_s"],
         m["first_trial_start_s"]],
        ["→ first trial finished (the spec's first baseline trained)", m["first_trial_end_s"] - m["first_trial_start_s"],
         m["first_trial_end_s"]],
        ["→ seen in the storage by polling", m["first_trial_s"] - m["first_trial_end_s"], m["first_trial_s"]],
    ]
    text = table(["phase", "seconds", "since launch"], rows)
    each = ", ".join(f"{s['first_trial_s']:.2f}" for s in samples)
    text += f"\n**first_trial_s = {m['first_trial_s']:.2f}** (median of {len(samples)} cold launch(es): {each} s).\n"
    figures = {"first_trial_s": round(m["first_trial_s"], 3), "first_trial_start_s": round(m["first_trial_start_s"], 3)}
    return Section("startup", TITLE, figures, text, {"samples": samples, "median": m})
