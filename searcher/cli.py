"""The ``searcher`` command line: parse arguments, call the library, print.

A ``UserError`` becomes one line on stderr and exit code 1; ``--debug`` shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup
from rich.console import Console

from searcher.errors import UserError

class _Commands(TyperGroup):
    """Every command's UserError becomes one line on stderr and exit 1 (``--debug`` re-raises)."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if (ctx.obj or {}).get("debug"):
                raise
            err_console.print(f"Error: {e}", markup=False, soft_wrap=True)
            raise typer.Exit(code=1) from None


app = typer.Typer(
    cls=_Commands,
    help="Hyperparameter search for Keras models on Optuna.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # never print locals: they can hold a database password
    add_completion=False,
)
# Piped output (CI logs, `| tee`) gets long lines instead of rich's 80-column default.
console = Console(soft_wrap=not sys.stdout.isatty(), width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", envvar="SEARCHER_STORAGE", show_envvar=True,
                 help="Study storage URL: sqlite:///file.db or postgresql+psycopg2://user:pass@host/db. "
                      "Default: sqlite:///searcher.db in this folder."),
]
DataDirOpt = Annotated[
    Optional[str],
    typer.Option("--data-dir", envvar="SEARCHER_DATA_DIR", show_envvar=True,
                 help="Folder with downloaded data set files, for machines without internet."),
]
WaitOpt = Annotated[
    Optional[float],
    typer.Option("--wait", min=0, metavar="SECONDS",
                 help="Wait up to this long for the storage to accept connections (and, for a worker, "
                      "for the study to be created) instead of failing at once."),
]


NameOpt = Annotated[
    Optional[str],
    typer.Option("--name", help="The study's name in the storage (default: the spec's name; "
                                "with --seed N: NAME-seedN)."),
]
ReadSeedOpt = Annotated[
    Optional[int],
    typer.Option("--seed", help="Open STUDY-seedN, the study `launch STUDY --seed N` made."),
]


MixedPrecisionOpt = Annotated[
    Optional[bool],
    typer.Option("--mixed-precision/--no-mixed-precision", help="mixed_float16 on GPUs (default: the spec's runtime.mixed_precision)."),
]
XlaOpt = Annotated[Optional[bool], typer.Option("--xla/--no-xla", help="XLA compilation (default: the spec's runtime.xla).")]
TensorBoardOpt = Annotated[Optional[str], typer.Option(
    "--tensorboard", metavar="DIR", help="Write TensorBoard logs (curves, HParams) to DIR/STUDY/trial-N (default: the spec's runtime.tensorboard).")]


@app.callback()
def _root(ctx: typer.Context, debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks, and TensorFlow's start-up lines.")] = False) -> None:
    ctx.obj = {"debug": debug}
    if debug:
        import os

        from searcher.devices import DEBUG_ENV

        if DEBUG_ENV not in os.environ:  # read by import_tensorflow here, in workers and child processes
            os.environ[DEBUG_ENV] = "1"
            ctx.call_on_close(lambda: os.environ.pop(DEBUG_ENV, None))  # an in-process caller (tests) goes on
    _quiet_libraries()


@app.command()
def launch(
    study: Annotated[str, typer.Argument(help="A study in studies/ (e.g. digits-mlp) or a path to a spec YAML.")],
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", help="Worker processes. Default: one per GPU, else half the CPU cores (max 4).")] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1, help="Study-wide budget of finished trials (default: the spec's budget.n_trials).")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=1, help="Start no trial after this many seconds.")] = None,
    storage: StorageOpt = None,
    data_dir: DataDirOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the spec's seed; the study is then SPEC-seedN unless --name says otherwise.")] = None,
    name: NameOpt = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPU indices to use, e.g. 0,2. Default: all visible.")] = None,
    workers_per_gpu: Annotated[int, typer.Option("--workers-per-gpu", min=1, help="Workers sharing one GPU (memory growth on).")] = 1,
    mixed_precision: MixedPrecisionOpt = None,
    xla: XlaOpt = None,
    tensorboard: TensorBoardOpt = None,
    wait: WaitOpt = None,
    warm_start: Annotated[Optional[str], typer.Option("--warm-start", metavar="OLD", help="Start a new study from the earlier study OLD: its best configurations that fit this space run first, its finished trials are history the sampler learns from (not counted in the budget or results). Overrides the spec's warm_start.")] = None,
    from_storage: Annotated[Optional[str], typer.Option("--from-storage", metavar="URL", help="The storage of the --warm-start study (default: --storage).")] = None,
) -> None:
    """Create or continue a study and run worker processes until its budget is reached.

    A database lost while it runs is waited for (runtime.db_outage_minutes); --wait also
    waits for one that is not up yet when it starts.

    Example: searcher launch digits-mlp --workers 2
    """
    from searcher.devices import parse_gpu_list
    from searcher.launch import LaunchRequest, launch as run_launch

    _wait_for_storage(storage, wait)

    request = LaunchRequest(study=study, storage=storage, workers=workers, trials=trials, timeout=timeout,
                            data_dir=data_dir, seed=seed, name=name, workers_per_gpu=workers_per_gpu,
                            mixed_precision=mixed_precision, xla=xla, tensorboard=tensorboard,
                            gpus=tuple(parse_gpu_list(gpus)) if gpus is not None else None,
                            warm_start=warm_start, from_storage=from_storage)
    raise typer.Exit(code=run_launch(request, console=console))


@app.command()
def worker(
    study: Annotated[str, typer.Argument(help="The study's spec: a name in studies/ or a path; must match the stored one.")],
    storage: StorageOpt = None,
    data_dir: DataDirOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="The seed the study was launched with, if overridden.")] = None,
    name: NameOpt = None,
    create: Annotated[bool, typer.Option("--create", help="Create the study if it does not exist yet.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", min=1, help="Start no trial after this many seconds.")] = None,
    gpu: Annotated[Optional[str], typer.Option("--gpu", help="auto: lock a free GPU (for containers that see all GPUs); or a GPU index.")] = None,
    mixed_precision: MixedPrecisionOpt = None,
    xla: XlaOpt = None,
    tensorboard: TensorBoardOpt = None,
    wait: WaitOpt = None,
    worker_index: Annotated[Optional[int], typer.Option("--worker-index", hidden=True)] = None,
    parent_pid: Annotated[Optional[int], typer.Option("--parent-pid", hidden=True)] = None,
    deadline: Annotated[Optional[float], typer.Option("--deadline", hidden=True)] = None,
) -> None:
    """Join an existing study (from this or another host) and run trials until its budget is reached.

    Example: searcher worker cifar-cnn --storage postgresql+psycopg2://searcher:PASS@db-host/searcher
    """
    from searcher.worker import WorkerRequest, serve

    request = WorkerRequest(study=study, storage=storage, data_dir=data_dir, seed=seed, name=name, create=create,
                            timeout=timeout, gpu=gpu, mixed_precision=mixed_precision, xla=xla, wait=wait,
                            tensorboard=tensorboard,
                            index=worker_index, parent_pid=parent_pid, deadline=deadline)
    raise typer.Exit(code=serve(request))


@app.command()
def init(
    data: Annotated[str, typer.Argument(help="A CSV file, a folder with one subfolder of images per class, or a .npz.")],
    target: Annotated[Optional[str], typer.Option("--target", help="The CSV column holding the class.")] = None,
    test: Annotated[Optional[str], typer.Option("--test", help="A held-out test file or folder like DATA (default: carve 20 %).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Spec file to write (default: DATA's name .yaml).")] = None,
    minutes: Annotated[float, typer.Option("--minutes", min=1, help="Search time the budget is sized for.")] = 10.0,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="Workers the budget is sized for (default: as launch).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing spec file.")] = False,
    categorical: Annotated[Optional[str], typer.Option(
        "--categorical", metavar="A,B", help="CSV columns that are categories (one-hot), even if they hold numbers.")] = None,
    numeric: Annotated[Optional[str], typer.Option(
        "--numeric", metavar="A,B", help="CSV columns to keep as numbers even if they look like IDs or codes.")] = None,
    ignore: Annotated[Optional[str], typer.Option(
        "--ignore", metavar="A,B", help="CSV columns to leave out (IDs, dates, free text).")] = None,
    missing: Annotated[Optional[str], typer.Option(
        "--missing", metavar="HOW", help="data.missing: error, mean or most_frequent (default: mean where numbers "
                                         "are missing; missing text is a category of its own).")] = None,
) -> None:
    """Look at your data and write a ready study spec: model, search space, preprocessing, budget.

    Example: searcher init patients.csv --target diagnosis --categorical ward --ignore patient_id -o patients.yaml
    """
    from searcher.data import describe_data
    from searcher.init import Roles, init_spec
    from searcher.sizing import describe as describe_budget

    if missing not in (None, "error", "mean", "most_frequent"):
        raise UserError(f"--missing: must be error, mean or most_frequent, got {missing!r}")
    roles = Roles(categorical=_names(categorical), numeric=_names(numeric), ignore=_names(ignore), missing=missing)
    made = init_spec(data, output=output, target=target, test_path=test, minutes=minutes, workers=workers, force=force,
                     roles=roles)
    console.print(f"wrote {made.path}: {made.spec.model.kind} on {describe_data(made.summary)}", highlight=False)
    if made.sizing.note:
        console.print(made.sizing.note, highlight=False, markup=False)
    console.print(f"budget {describe_budget(made.sizing)}; next: searcher launch {made.path}", highlight=False)


def _names(value: str | None) -> tuple[str, ...]:
    """``A,B`` as column names (spaces around commas dropped)."""
    return tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip())) if value else ()


@app.command()
def create(
    study: Annotated[str, typer.Argument(help="A study in studies/ (e.g. digits-mlp) or a path to a spec YAML.")],
    trials: Annotated[Optional[int], typer.Option("--trials", "-n", min=1, help="Study-wide budget of finished trials (default: the spec's budget.n_trials).")] = None,
    storage: StorageOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Override the spec's seed (then the study is STUDY-seedN).")] = None,
    name: NameOpt = None,
    wait: WaitOpt = None,
) -> None:
    """Create the study (or raise the budget of an existing one), enqueue its baselines, and exit.

    It never lowers a stored budget (a re-run create Job keeps one raised meanwhile); `searcher budget` does.

    For clusters, where workers start as separate jobs: run it once, then start `searcher worker`.

    Example: searcher create cifar-cnn --trials 200 --storage postgresql+psycopg2://searcher@db-host/searcher
    """
    from searcher import stored
    from searcher import study as studies
    from searcher.launch import create_study
    from searcher.storage import mask_url, resolve_url

    spec, _ = studies.load_launch_spec(study, seed)
    stored_name = studies.study_name(spec.name, name=name, seed=seed)
    url = resolve_url(storage)
    if wait:
        studies.wait_until_ready(url, seconds=wait)
    created, note = create_study(spec, url, n_trials=trials, name=stored_name)
    if note:
        console.print(note, highlight=False, markup=False)
    states = studies.count_states(created)
    console.print(f"study {stored_name} in {mask_url(url)}: budget {created.user_attrs[stored.BUDGET]} trials, "
                  f"{studies.finished(states)} "
                  f"finished, {states['WAITING']} waiting to run; start workers with `searcher worker {study}"
                  + ("" if stored_name == spec.name else f" --name {stored_name}") + "`",
                  highlight=False, markup=False)


@app.command()
def budget(
    study: Annotated[str, typer.Argument(help="The study name.")],
    n_trials: Annotated[int, typer.Argument(metavar="N", min=1, help="The new study-wide budget of finished trials.")],
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
) -> None:
    """Raise or lower a study's budget while it runs; its workers, on every host, take it up before their next trial.

    It cannot go below the trials already finished. `searcher create` and `launch` without --trials
    raise a budget below the spec's back to it: lower budget.n_trials in the spec too.

    Example: searcher budget digits-mlp 120
    """
    from searcher.launch import change_budget
    from searcher.storage import resolve_url
    from searcher.study import study_name

    change = change_budget(resolve_url(storage), study_name(study, name=name, seed=seed), n_trials)
    console.print(change.describe(), highlight=False, markup=False)


@app.command("studies")
def list_studies(
    storage: Annotated[Optional[str], typer.Option(
        "--storage", envvar="SEARCHER_STORAGE", show_envvar=True,
        help="Also list the studies stored there: trials by state, best value, spec and seeds.")] = None,
) -> None:
    """List the shipped studies (data set, model, budget), and with --storage the stored ones.

    Example: searcher studies --storage sqlite:///searcher.db
    """
    from rich.table import Table

    from searcher.status import list_stored, render_stored
    from searcher.spec import SHIPPED_STUDIES, load_spec
    from searcher.storage import mask_url, open_storage, resolve_url

    url = resolve_url(storage) if storage is not None else None
    stored = list_stored(open_storage(url, create=False)) if url is not None else None
    table = Table(box=None, header_style="bold")
    for column in ("study", "dataset", "model", "knobs searched", "trials", "baselines"):
        table.add_column(column, no_wrap=True)
    for path in sorted(SHIPPED_STUDIES.glob("*.yaml")):
        spec = load_spec(path)
        table.add_row(spec.name, spec.data.dataset, spec.model.kind, str(len(spec.search.searched())),
                      str(spec.budget.n_trials), str(len(spec.baselines)))
    console.print(table)
    if stored is not None:
        console.print(f"\n{len(stored)} stud{'y' if len(stored) == 1 else 'ies'} in {mask_url(url)}:", highlight=False)
        console.print(render_stored(stored))


@app.command()
def status(
    study: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    wait: WaitOpt = None,
) -> None:
    """Trial counts by state, failure reasons, the best trial, and running trials with their worker.

    Example: searcher status digits-mlp --json
    """
    import json

    from searcher.status import render, take_snapshot

    _wait_for_storage(storage, wait)

    snap = take_snapshot(_load_study(study, storage, name=name, seed=seed))
    if as_json:
        typer.echo(json.dumps(snap.to_json(), indent=2))
    else:
        console.print(render(snap))


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="HTML file to write (default: STUDY-report.html).")] = None,
) -> None:
    """Write one self-contained HTML report on the study: what won and why.

    Example: searcher report digits-mlp -o report.html
    """
    from searcher.report import write_report

    loaded = _load_study(study, storage, name=name, seed=seed)
    path = write_report(loaded, output or Path(f"{loaded.study_name}-report.html"))
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser", highlight=False)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="The study name.")],
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="Export the K-th best trial instead of the winner.")] = None,
    trial: Annotated[Optional[int], typer.Option("--trial", help="Export trial N (a complete trial, by number).")] = None,
    model: Annotated[bool, typer.Option(
        "--model", help="Write the trial's trained model (-o FILE.keras), kept by the search "
                        "(runtime.keep_models), instead of its config; no training.")] = False,
    artifacts: Annotated[Optional[str], typer.Option(
        "--artifacts", help="With --model: the artifact store (folder or s3://bucket/prefix), if not the "
                            "study's runtime.artifacts or the folder beside its SQLite file.")] = None,
    smallest_within: Annotated[Optional[float], typer.Option(
        "--smallest-within", help="The smallest trial (parameters) at most this many points (0.01) of the metric "
                                  "below the best.")] = None,
    max_params: Annotated[Optional[int], typer.Option("--max-params", help="Only trials with at most N parameters.")] = None,
    max_latency_ms: Annotated[Optional[float], typer.Option(
        "--max-latency-ms", help="Only trials at most X ms per example at batch 1.")] = None,
    ensemble: Annotated[int, typer.Option(
        "--ensemble", min=1, help="Also export the next K-1 trials by value; retrain averages their models.")] = 1,
    fmt: Annotated[str, typer.Option("--format", help="yaml or json.")] = "yaml",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (default: print).")] = None,
) -> None:
    """Write the best (or K-th best, or smallest good enough) feasible trial as a config `retrain` takes.

    Example: searcher export digits-mlp --smallest-within 0.5 -o small.yaml
    """
    from searcher.export import export_config, write_export
    from searcher.ranking import PickByCost

    if fmt not in ("yaml", "json"):
        raise UserError(f"--format: must be yaml or json, got {fmt!r}")
    pick = PickByCost(smallest_within=smallest_within, max_params=max_params, max_latency_ms=max_latency_ms)
    if model:
        if ensemble > 1:
            raise UserError("--ensemble cannot be combined with --model (a kept model is one trial's)")
        from searcher.artifacts import write_kept_model
        from searcher.storage import resolve_url

        _, what = write_kept_model(_load_study(study, storage, name=name, seed=seed), resolve_url(storage), output,
                                   location=artifacts, number=trial, rank=rank, pick=pick)
        console.print(f"wrote {output}: {what}", highlight=False, markup=False)
        return
    document = export_config(_load_study(study, storage, name=name, seed=seed), rank=rank, pick=pick, ensemble=ensemble,
                             number=trial)
    text = write_export(document, output, fmt=fmt)
    if output is None:
        typer.echo(text, nl=False)
    else:
        console.print(f"wrote {output}; next: searcher retrain {output}", highlight=False)


@app.command()
def retrain(
    config: Annotated[Path, typer.Argument(help="A file written by `searcher export`.")],
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Maximum epochs (default: as in the search).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Model file, .keras (default: CONFIG.keras).")] = None,
    data_dir: DataDirOpt = None,
    serve: Annotated[Optional[Path], typer.Option(
        "--serve", help="Also write a TensorFlow SavedModel on the raw inputs into this folder, and "
                        "model.tflite there where it converts.")] = None,
) -> None:
    """Train an exported config (early stopping on validation), then score the test split once.

    Example: searcher retrain best.yaml -o best.keras --serve served/
    """
    from searcher.export import load_export, metrics_path, retrain as run_retrain

    from searcher.devices import import_tensorflow

    trial_configs, source = load_export(config)
    model_path = output or config.with_suffix(".keras")
    import_tensorflow()
    metrics = run_retrain(trial_configs, source=source, model_path=model_path, epochs=epochs, data_dir=data_dir,
                          serve=serve)
    trained = f"{metrics['final_model']}" if "members" in metrics else f"{metrics['epochs']} epochs"
    console.print(f"test accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) on "
                  f"{metrics['test_examples']} held-out examples; {trained}, "
                  f"{metrics['n_params']:,} parameters", highlight=False)
    for name, ref in (metrics.get("references") or {}).items():
        if isinstance(ref, dict):
            console.print(f"  {name.replace('_', ' ')}: test accuracy {ref['test_accuracy']:.4f} "
                          f"(loss {ref['test_loss']:.4f})", highlight=False)
    console.print(f"cost here: {metrics['model_bytes'] / 1e6:.3g} MB file; {_latency(metrics)} "
                  f"({metrics['latency_of']})", highlight=False)
    serving = metrics.get("serving")
    if serving:
        console.print(f"SavedModel: {_latency(serving['saved_model_latency'])}", highlight=False)
        console.print(f"TensorFlow Lite: {_latency(serving['tflite_latency'])}" if serving["tflite"] else
                      f"TensorFlow Lite: not written ({serving['tflite_skipped']})", highlight=False)
    shipped = [str(model_path), *([serving["saved_model"]] + ([serving["tflite"]] if serving["tflite"] else [])
                                  if serving else [])]
    console.print(f"wrote {', '.join(shipped)} and {metrics_path(model_path)}: the final model, scored once on the "
                  "test split", highlight=False)


def _latency(figures: dict) -> str:
    return (f"{figures['latency_ms_b1']:.3g} ms per example at batch 1, {figures['latency_ms_b256']:.3g} "
            "at batch 256")


@app.command()
def dashboard(
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    wait: WaitOpt = None,
    artifacts: Annotated[Optional[str], typer.Option(
        "--artifacts", help="The artifact store of kept models (folder or s3://bucket/prefix); default: "
                            "the folder beside a SQLite database.")] = None,
) -> None:
    """Serve optuna-dashboard on the study storage (with the kept models as trial artifacts).

    Example: searcher dashboard --port 8080 --wait 300
    """
    from searcher.dashboard import make_dashboard_server
    from searcher.storage import mask_url, resolve_url

    _wait_for_storage(storage, wait)
    url = resolve_url(storage)
    server = make_dashboard_server(url, host=host, port=port, artifacts=artifacts)
    console.print(f"optuna-dashboard for {mask_url(url)} at http://{host}:{server.server_port}/ (Ctrl-C to stop)",
                  highlight=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def replay(
    study: Annotated[str, typer.Argument(help="The study name.")],
    trial: Annotated[int, typer.Argument(help="The trial number.")],
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Re-run one trial's exact config and seed and compare its validation curve with the stored one.

    Example: searcher replay digits-mlp 17
    """
    from rich.table import Table

    from searcher.confirm import replay_trial, use_trial_threads
    from searcher.devices import import_tensorflow

    loaded = _load_study(study, storage, name=name, seed=seed)
    use_trial_threads(loaded, trial)
    import_tensorflow()
    result = replay_trial(loaded, trial, data_dir=data_dir)
    table = Table("epoch", "stored", "replayed", "difference", box=None, header_style="bold")
    for epoch, (a, b) in enumerate(zip(result.stored, result.replayed), start=1):
        table.add_row(str(epoch), f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}")
    console.print(table)
    console.print(f"trial {trial}: largest difference {result.max_abs_diff:.4f} over {len(result.stored)} epochs",
                  highlight=False)


@app.command()
def confirm(
    study: Annotated[str, typer.Argument(help="The study name.")],
    top: Annotated[Optional[int], typer.Option("--top", min=1, help="How many of the best trials to retrain "
                                                                  "(default 3; two objectives: the whole Pareto front).")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Fresh seeds per trial.")] = 3,
    trial: Annotated[Optional[list[int]], typer.Option(
        "--trial", help="Confirm trial N instead of the top ones (repeat: --trial 4 --trial 17).")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Processes running retrains at once.")] = 1,
    storage: StorageOpt = None,
    name: NameOpt = None,
    seed: ReadSeedOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retrain the top trials (two objectives: the Pareto front) with fresh seeds (validation only); rank by mean.

    Runs are stored with the study, so a second call continues instead of starting over;
    `export` then takes the confirmed winner.

    Example: searcher confirm digits-mlp --top 3 --seeds 3 --workers 2
    """
    from rich.table import Table

    from searcher.confirm import confirm as run_confirm
    from searcher.devices import import_tensorflow

    loaded, opened = _open_study(study, storage, name=name, seed=seed)
    import_tensorflow()  # the seeds come from searcher.training, which imports Keras
    ranking, added = run_confirm(loaded, storage=opened, top=top, seeds=seeds, workers=workers, data_dir=data_dir,
                                 numbers=trial or ())
    table = Table("rank", "trial", "mean", "spread (sd)", "runs", "single-run value", "single-run rank", "params",
                  box=None, header_style="bold")
    for rank, c in enumerate(ranking, start=1):
        table.add_row(str(rank), str(c.trial), f"{c.mean:.4f}", f"{c.spread:.4f}", str(len(c.values)),
                      f"{c.single_run:.4f}", str(c.single_rank), f"{c.n_params:,}" if c.n_params else "-")
    console.print(table)
    single_best = next(c for c in ranking if c.single_rank == 1)
    console.print(f"{added} new run(s); confirmed winner: trial {ranking[0].trial}"
                  + ("" if single_best is ranking[0] else f" (the single-run best was trial {single_best.trial})"),
                  highlight=False)


def _wait_for_storage(storage: str | None, seconds: float | None) -> None:
    """``--wait``: wait for a database that is not up (yet), one line, instead of failing at once."""
    if seconds:
        from searcher.storage import resolve_url
        from searcher.study import wait_until_ready

        wait_until_ready(resolve_url(storage), seconds=seconds)


def _load_study(study: str, storage: str | None, *, name: str | None = None, seed: int | None = None):
    """The stored study that ``launch STUDY`` with the same --name / --seed made."""
    return _open_study(study, storage, name=name, seed=seed)[0]


def _open_study(study: str, storage: str | None, *, name: str | None = None, seed: int | None = None):
    """That study and the storage it was loaded from."""
    from searcher import study as studies
    from searcher.storage import open_storage, resolve_url

    url = resolve_url(storage)
    opened = open_storage(url, create=False)
    return studies.load(studies.study_name(study, name=name, seed=seed), opened, url=url), opened


def _quiet_libraries() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial retries are "experimental" in Optuna 5 and stable in use.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="searcher")


if __name__ == "__main__":
    sys.exit(main())
