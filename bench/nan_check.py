"""Section 7, NaN check: seconds per epoch without a NaN check, with a per-batch check, and
with searcher's (at the end of each epoch), on the digits tutorial MLP at two batch sizes.

A callback with ``on_train_batch_end`` makes Keras hand each batch's logs back to Python; on a
GPU that is a host sync per step. The child ``bench._nan_check`` trains all three in one
process, alternating, ``nan_repeats`` times for ``nan_epochs`` epochs each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench._common import Plan, Section, cpu_placement_env, run_python, table

TITLE = "7. NaN check: seconds per epoch with and without it"
BATCH_SIZES = (32, 128)
VARIANTS = {"none": "no check", "per_batch": "per batch (`on_train_batch_end`)",
            "searcher": "searcher: epoch end (`logs['loss']`)"}


def run(plan: Plan, workdir: Path) -> Section:
    out = workdir / "nan-check.json"
    run_python("bench._nan_check", str(out), "--epochs", str(plan.nan_epochs), "--repeats", str(plan.nan_repeats),
               "--batch-sizes", ",".join(map(str, BATCH_SIZES)), env=cpu_placement_env(1))
    measured = json.loads(out.read_text())
    rows, figures = [], {}
    for r in measured["rows"]:
        b, none = r["batch_size"], r["none_s"]
        ms_per_step = 1000 * (r["per_batch_s"] - none) / r["steps_per_epoch"]
        rows.append([b, r["steps_per_epoch"], *(1000 * r[f"{v}_s"] for v in VARIANTS),
                     f"{r['per_batch_s'] / none:.2f}x ({ms_per_step:+.2f} ms/step)", f"{r['searcher_s'] / none:.2f}x"])
        for v in VARIANTS:
            figures.setdefault(f"s_per_epoch_{v}", {})[str(b)] = round(r[f"{v}_s"], 5)
    text = table(["batch size", "steps / epoch", *(f"ms / epoch, {label}" for label in VARIANTS.values()),
                  "per batch vs none", "searcher vs none"], rows)
    text += (f"\nMedian of {plan.nan_repeats} run(s) of {plan.nan_epochs} epochs (first epoch left out), one "
             "process with one worker's threads; the variants alternate. On a CPU the batch's loss already sits "
             "in host memory, so the per-batch check costs little here; on a GPU each check waits for the step "
             "to finish. searcher checks the epoch's mean loss, which is NaN or inf when any batch's was.\n")
    details: dict[str, Any] = {"rows": measured["rows"], "epochs": plan.nan_epochs, "repeats": plan.nan_repeats}
    return Section("nan_check", TITLE, figures, text, details)
