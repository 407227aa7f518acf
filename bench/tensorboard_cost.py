"""What TensorBoard logging costs a trial: the digits MLP trained with and without it.

``python -m bench.tensorboard_cost [--epochs 20] [--rounds 6]`` trains one config of
digits-mlp (its ``tutorial-mlp-sgd`` baseline) with searcher's own ``training.train``, in one
process, for exactly ``--epochs`` epochs (no early stopping), ``--rounds`` times each way,
alternating which goes first so that load from other processes hits both alike. "on" adds
what a worker adds with ``runtime.tensorboard`` (``searcher.tensorboard.TrialBoard``): the
hparams summary before training, Keras's TensorBoard callback, the metric scalar after. It
prints s/epoch both ways (whole ``train`` call divided by epochs, so the callback's writer
set-up and close count), the per-trial fixed cost of the two extra summaries, and the bytes a
trial writes. Unlike ``python -m bench`` it trains in this process: run it on its own.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tensorboard_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)

    from searcher.devices import TrainingRuntime, import_tensorflow

    import_tensorflow()
    import optuna

    from searcher.data import load_search_data
    from searcher.space import baseline_params, suggest_values, trial_config
    from searcher.spec import load_spec
    from searcher.tensorboard import TrialBoard
    from searcher.training import train

    spec = load_spec("digits-mlp")
    baseline = next(b for b in spec.baselines if b.name == "tutorial-mlp-sgd")
    params = baseline_params(spec, baseline.params)
    config = trial_config(spec, suggest_values(optuna.trial.FixedTrial(params), spec), seed=0)
    data = load_search_data(spec.data, split_seed=spec.split_seed)
    runtime, direction, metric = TrainingRuntime(), spec.training.direction, spec.training.metric

    def run(board: TrialBoard | None) -> dict[str, float]:
        t0 = time.perf_counter()
        if board:
            board.write_hparams(params, trial_id="bench")
        t1 = time.perf_counter()
        result = train(config, data, direction=direction, runtime=runtime, max_epochs=args.epochs,
                       early_stopping=False, callbacks=board.callbacks(1) if board else [])
        t2 = time.perf_counter()
        if board:
            board.finish(result.best_value, step=args.epochs)
        t3 = time.perf_counter()
        return {"s_per_epoch": (t2 - t1) / args.epochs, "fixed_s": (t1 - t0) + (t3 - t2),
                "in_epoch_s": statistics.median(result.epoch_seconds)}

    run(None)  # warm-up: the first trial of a process pays for tracing that later ones reuse
    rows: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="tb-cost-") as scratch:
        for r in range(args.rounds):
            for side in (("off", "on") if r % 2 == 0 else ("on", "off")):
                board = TrialBoard(Path(scratch) / f"trial-{r}", metric=metric) if side == "on" else None
                rows[side].append(run(board))
                print(f"round {r + 1} {side:>3}: {rows[side][-1]['s_per_epoch']:.4f} s/epoch", flush=True)
        sizes = [sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) for d in Path(scratch).iterdir()]
        files = [sum(1 for p in d.rglob("*") if p.is_file()) for d in Path(scratch).iterdir()]

    off = statistics.median(r["s_per_epoch"] for r in rows["off"])
    on = statistics.median(r["s_per_epoch"] for r in rows["on"])
    print(f"\ndigits MLP {baseline.name}, {args.epochs} epochs x {args.rounds} rounds each way (medians)")
    print("| | s/epoch (whole train call / epochs) | in-epoch clock s/epoch |")
    print("|---|---|---|")
    for side in ("off", "on"):
        print(f"| TensorBoard {side} | {statistics.median(r['s_per_epoch'] for r in rows[side]):.4f} | "
              f"{statistics.median(r['in_epoch_s'] for r in rows[side]):.4f} |")
    print(f"\non/off: {on / off:.3f} ({1000 * (on - off):+.1f} ms/epoch); hparams + metric summaries per trial: "
          f"{1000 * statistics.median(r['fixed_s'] for r in rows['on']):.1f} ms; "
          f"written per trial: {statistics.median(sizes) / 1024:.1f} KiB in {statistics.median(files):.0f} files")


if __name__ == "__main__":
    main()
