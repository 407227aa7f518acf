"""Section 6, GPU: CIFAR-10 CNN seconds per epoch, a searcher trial against a bare Keras loop,
in float32, mixed precision, XLA, and both. Runs only when ``searcher.devices.detect_gpus()``
finds a GPU; needs CIFAR-10 (downloaded by Keras, or ``SEARCHER_DATA_DIR``).

Both sides train the cifar-cnn tutorial network (its first baseline) for ``gpu_epochs``
epochs on GPU 0 with the placement ``searcher launch`` gives one worker; the figure is the
median epoch time. The searcher side is a real ``searcher launch`` of a one-trial spec with
``runtime.mixed_precision`` / ``runtime.xla`` set, read back from the trial's
``sec_per_epoch``; the bare side is ``bench._gpu_epoch``: ``build_model`` + ``model.fit``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench._common import Plan, Section, launch, load_trials, not_run_section, run_python, table, write_spec

TITLE = "6. GPU: CIFAR-10 CNN seconds per epoch"
VARIANTS = {  # key: (label, mixed_precision, xla)
    "float32": ("float32", False, False),
    "mixed": ("mixed precision", True, False),
    "xla": ("XLA", False, True),
    "mixed_xla": ("mixed precision + XLA", True, True),
}


def gpu_spec(folder: Path, key: str, *, epochs: int, base: str = "cifar-cnn", data: dict | None = None) -> Path:
    from searcher.spec import load_spec

    label, mixed, xla = VARIANTS[key]
    params = dict(load_spec(base).baselines[0].params)
    changes: dict[str, Any] = {
        "search": params,
        "training": {"max_epochs": epochs, "patience": None},
        "sampler": {"name": "random"},
        "pruner": {"name": "none"},
        "baselines": [],
        "runtime": {"mixed_precision": mixed, "xla": xla},
    }
    if data:
        changes["data"] = data
    return write_spec(folder, base=base, name=f"gpu-{key.replace('_', '-')}", changes=changes)


def measure_variant(spec: Path, *, gpu_env: dict[str, str]) -> dict[str, float]:
    """Seconds per epoch of one variant: a one-trial ``searcher launch`` and the bare loop."""
    name = spec.stem
    run_ = launch(spec, study=name, workers=1, trials=1, cwd=spec.parent / f"run-{name}")
    trial = next(t for t in load_trials(run_.url, name) if t.state.name == "COMPLETE")
    out = spec.parent / f"bare-{name}.json"
    run_python("bench._gpu_epoch", str(spec), str(out), env=gpu_env)
    bare = json.loads(out.read_text())
    return {"searcher_s_per_epoch": float(trial.user_attrs["sec_per_epoch"]),
            "bare_s_per_epoch": bare["sec_per_epoch"], "precision": bare["precision"],
            "thread_line": "; ".join(l.split("; pid")[0] for l in run_.thread_lines())}


def run(plan: Plan, workdir: Path) -> Section:
    try:
        from searcher.devices import detect_gpus, plan_workers
    except ImportError as e:
        return not_run_section("gpu", TITLE, f"searcher.devices is not importable ({e})")
    gpus = detect_gpus()
    if not gpus:
        return not_run_section("gpu", TITLE, "no GPU visible")
    gpu_env = plan_workers(1, gpus=gpus, cpu_count=os.cpu_count() or 1)[0].env()
    folder = workdir / "gpu"
    results: dict[str, dict[str, Any]] = {}
    rows = []
    for key, (label, _, _) in VARIANTS.items():
        try:
            r = measure_variant(gpu_spec(folder, key, epochs=plan.gpu_epochs), gpu_env=gpu_env)
        except RuntimeError as e:  # e.g. CIFAR-10 cannot be downloaded: say so, keep the other sections
            reason = str(e).strip().splitlines()[-1][:200]
            return not_run_section("gpu", TITLE, f"{label} failed: {reason}")
        results[key] = r
        rows.append([label, r["searcher_s_per_epoch"], r["bare_s_per_epoch"],
                     f"{r['searcher_s_per_epoch'] / r['bare_s_per_epoch']:.2f}x",
                     f"{results['float32']['bare_s_per_epoch'] / r['bare_s_per_epoch']:.2f}x"])
    text = table(["variant", "searcher trial s/epoch", "bare Keras s/epoch", "searcher / bare",
                  "bare speed-up vs float32"], rows)
    text += (f"\ncifar-cnn tutorial network, {plan.gpu_epochs} epochs, median epoch; GPU {gpu_env['CUDA_VISIBLE_DEVICES']} "
             f"of {', '.join(gpus)}. Worker: {results['float32']['thread_line']}.\n")
    figures = {f"{k}_{side}": round(r[f"{side}_s_per_epoch"], 4) for k, r in results.items()
               for side in ("searcher", "bare")}
    return Section("gpu", TITLE, figures, text, {"variants": results, "gpus": gpus})
