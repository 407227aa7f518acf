"""``searcher init``: look at a user's data and write a ready study spec for it.

The spec is written as commented YAML and then loaded back through ``spec.load_spec``,
so what ``init`` writes is always a spec ``launch`` accepts. The budget comes from one
short measured training run of a middle configuration on this machine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from searcher import sources
from searcher.sizing import Sizing, TrialCost, size_budget
from searcher.sizing import describe as describe_budget
from searcher.data import SearchData, describe_data, load_search_data
from searcher.errors import UserError
from searcher.spec import DataSpec, StudySpec, load_spec, parse_spec
from searcher.table import MISSING_TEXT, read_header

_MAX_IMAGE_SIDE = 96  # larger images are resized for the default budget
_FINE_VALIDATION = 1_000  # below this many validation rows, accuracy is too coarse to rank trials
# Below this many training rows a tabular study cross-validates: one split of a few hundred
# rows ranked trials by luck (breast_cancer: the best trial's validation loss 0.003 on its
# split, 0.043 as a 5-fold mean).
_CROSS_VALIDATE_BELOW = 2_000
_CV_FOLDS = 5
_TIMING_ROWS = 50_000  # init times a larger table's epoch on this many rows and scales up
_FEW_VALUES = 10  # an integer column with at most this many values may be codes: offered as categorical


@dataclass(frozen=True)
class Scaffold:
    """What ``init`` decided, for the message it prints."""

    path: Path
    spec: StudySpec
    summary: dict[str, Any]
    sizing: Sizing


@dataclass(frozen=True)
class Roles:
    """Column roles a user gives ``init`` for a CSV file (``--categorical`` ...); ``missing``:
    ``data.missing``, else chosen from the data."""

    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    missing: str | None = None

    def given(self) -> bool:
        return bool(self.categorical or self.numeric or self.ignore)


def init_spec(data_path: str, *, output: Path | None, target: str | None = None, test_path: str | None = None,
              minutes: float = 10.0, workers: int | None = None, force: bool = False,
              roles: Roles = Roles()) -> Scaffold:
    """Inspect ``data_path`` (a CSV file, a folder of class subfolders, or a .npz), write a spec.

    ``test_path``: a separate test file or folder like ``data_path``; else a test split is carved.
    ``roles``: for a CSV file, columns to treat as categories or numbers, or to leave out.
    """
    data = _data_spec(data_path, target=target, roles=roles)
    if test_path:
        if data.dataset == "npz":
            raise UserError("--test: a .npz holds its own test split (x_test, y_test)")
        if not Path(test_path).exists():
            raise UserError(f"--test: {test_path}: no such file or folder")
        data = data.model_copy(update={"test_path": test_path})
    output = output or Path(f"{Path(data_path.rstrip('/')).stem or 'study'}.yaml")
    if output.suffix not in (".yaml", ".yml"):
        raise UserError(f"-o: the spec file must end in .yaml, got {output.name}")
    if output.exists() and not force:
        raise UserError(f"-o: {output} exists; pass --force to overwrite it, or choose another name")
    notes: list[str] = []
    stored = None if data.dataset == "images" else sources.read(data)  # read once: gaps, own test split
    offers: list[str] = []
    if stored is not None and stored.table is not None:
        data, offers = _with_roles(data, stored, roles, notes)
    data = _with_missing(data, stored, notes, given=roles.missing)
    data = _with_image_size(data, notes)
    search_data = load_search_data(data, split_seed=0)
    kind = "cnn" if len(search_data.input_shape) == 3 and search_data.preprocessing.kind == "array" else "mlp"
    raw = _spec_dict(data, search_data, kind, notes, has_test=stored is not None and stored.x_test is not None)
    if raw["data"].get("cv_folds"):  # the data as the study will see it: in folds
        search_data = load_search_data(data.model_copy(update={"cv_folds": raw["data"]["cv_folds"]}), split_seed=0)
    if workers is None:
        from searcher.devices import default_cpu_workers, detect_gpus

        workers = len(detect_gpus()) or default_cpu_workers(os.cpu_count() or 1)
    sizing = _sized_budget(raw, search_data, minutes=minutes, workers=workers)
    text = _render(sizing.raw, data_path=data_path, search_data=search_data, notes=notes + offers, sizing=sizing,
                   output=output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return Scaffold(output, load_spec(output), search_data.summary(), sizing)


def _data_spec(data_path: str, *, target: str | None, roles: Roles) -> DataSpec:
    path = Path(data_path)
    csv_only = [flag for flag, given in (("--target", target), ("--categorical", roles.categorical),
                                         ("--numeric", roles.numeric), ("--ignore", roles.ignore)) if given]
    if path.is_dir():
        if csv_only:
            raise UserError(f"{csv_only[0]}: is only used with a CSV file, not an image folder")
        if roles.missing and roles.missing != "error":
            raise UserError(f"--missing: {roles.missing} imputation is for tables (CSV, npz), not an image folder")
        return DataSpec(dataset="images", path=data_path)
    if not path.exists():
        raise UserError(f"{data_path}: no such file or folder")
    if path.suffix.lower() == ".npz":
        if csv_only:
            raise UserError(f"{csv_only[0]}: is only used with a CSV file, not a .npz")
        return DataSpec(dataset="npz", path=data_path, missing=roles.missing or "error")
    if path.suffix.lower() != ".csv":
        raise UserError(f"{data_path}: expected a .csv file, a .npz file or a folder with one subfolder per class")
    header = read_header(path)
    columns = f"(columns: {', '.join(header)})"
    if not target:
        raise UserError(f"--target: which column holds the class? {path.name} has columns {', '.join(header)}")
    if target not in header:
        raise UserError(f"--target: {path.name} has no column {target!r} {columns}")
    seen: dict[str, str] = {}
    for flag, names in (("--categorical", roles.categorical), ("--numeric", roles.numeric),
                        ("--ignore", roles.ignore)):
        for name in names:
            if name not in header:
                raise UserError(f"{flag}: {path.name} has no column {name!r} {columns}")
            if name == target:
                raise UserError(f"{flag}: {name!r} is the target (--target)")
            if name in seen:
                raise UserError(f"{flag}: {name!r} is also given to {seen[name]}; give a column one role")
            seen[name] = flag
    features = tuple(h for h in header if h != target and h not in roles.ignore) if roles.ignore else ()
    return DataSpec(dataset="csv", path=data_path, target=target, categorical=roles.categorical, features=features,
                    missing=roles.missing or "error")


def _with_roles(data: DataSpec, raw: sources.RawData, roles: Roles, notes: list[str]) -> tuple[DataSpec, list[str]]:
    """Leave out ID-like and constant columns (with a note), force ``--numeric`` columns to be
    numbers, and offer integer columns of few values as categories (comments for the spec)."""
    x, kinds = raw.x_train, raw.table
    for name in roles.numeric:
        if name in kinds.categorical:
            column = x[name]
            filled = np.flatnonzero(column != MISSING_TEXT)
            raise UserError(f"--numeric: column {name!r} holds text ({column[filled[0]]!r} in line "
                            f"{filled[0] + 2} of {data.path}); it cannot be a number")
    left_out, offers = [], []
    rows = len(raw.y_train)
    for name in kinds.columns:
        column = x[name]
        values = column[~np.isnan(column)] if name in kinds.numeric else column[column != MISSING_TEXT]
        distinct = len(np.unique(values))
        gaps = len(values) < rows
        if distinct + gaps <= 1:
            left_out.append(name)
            notes.append(f"features: {name!r} is left out: it holds one value in every row"
                         if distinct else f"features: {name!r} is left out: every cell is missing")
            continue
        if name in roles.numeric or name in roles.categorical:
            continue
        integers = name in kinds.numeric and np.array_equal(values, np.round(values))
        if distinct == rows and (name in kinds.categorical or integers):
            left_out.append(name)
            notes.append(f"features: {name!r} is left out: every value is different, like an ID "
                         f"(pass --numeric {name} or --categorical {name} to keep it)")
        elif integers and 3 <= distinct <= _FEW_VALUES:
            offers.append(f"categorical?: {name!r} holds {distinct} distinct whole numbers; if they are codes "
                          f"rather than amounts, add it to data.categorical (init --categorical {name})")
    if not left_out:
        return data, offers
    features = tuple(c for c in (data.features or read_header(Path(data.path))) if c in kinds.columns
                     and c not in left_out)
    if not features:
        raise UserError(f"{data.path}: no feature column is left ({', '.join(left_out)} left out); "
                        "keep one with --numeric or --categorical")
    return data.model_copy(update={"features": features}), offers


def _with_missing(data: DataSpec, raw: sources.RawData | None, notes: list[str], *,
                  given: str | None) -> DataSpec:
    """Impute numbers only where the data (``raw``; None for images) has gaps, and say so."""
    if raw is None:
        return data
    missing = text = 0
    for x in (raw.x_train, raw.x_test):
        if isinstance(x, dict):
            features = data.features or raw.table.columns
            missing += sum(int(np.isnan(x[name]).sum()) for name in raw.table.numeric if name in features)
            text += sum(int((x[name] == MISSING_TEXT).sum()) for name in raw.table.categorical if name in features)
        elif isinstance(x, np.ndarray) and x.dtype.kind == "f":
            missing += int(np.isnan(x).sum())
    if text and given != "most_frequent":
        notes.append(f"missing: {text} missing text cell(s); \"missing\" is a category of its own in each column")
    if given:
        return data
    if not missing:
        return data
    notes.append(f"missing: {missing} missing number(s) in the data, imputed with the fit split's means")
    return data.model_copy(update={"missing": "mean"})


def _with_image_size(data: DataSpec, notes: list[str]) -> DataSpec:
    if data.dataset != "images":
        return data
    first = sources.list_images(Path(data.path))[0][0]
    height, width, channels = sources.peek_image(first)
    update: dict[str, Any] = {"color_mode": "grayscale" if channels == 1 else "rgb"}
    size = (height, width)
    if max(size) > _MAX_IMAGE_SIDE:
        scale = _MAX_IMAGE_SIDE / max(size)
        size = (max(8, round(height * scale)), max(8, round(width * scale)))
        notes.append(f"image_size: the images are {height}x{width}; resized to {size[0]}x{size[1]} so the "
                     "budget fits; raise it for accuracy")
    update["image_size"] = size
    return data.model_copy(update=update)


def _spec_dict(data: DataSpec, search_data: SearchData, kind: str, notes: list[str], *,
               has_test: bool) -> dict[str, Any]:
    rows = len(search_data.train) + len(search_data.val)
    counts = np.bincount(search_data.train.y, minlength=search_data.n_classes)
    imbalance = counts.max() / max(1, counts.min())
    data_raw: dict[str, Any] = {key: value for key, value in data.model_dump(exclude_defaults=True).items()}
    data_raw["preprocess"] = "auto"
    if kind == "mlp" and rows < _CROSS_VALIDATE_BELOW:
        data_raw["cv_folds"] = _CV_FOLDS
        notes.append(f"cv_folds: {rows} training rows leave a validation split of about {rows // _CV_FOLDS}, too few "
                     f"to select on: every trial trains {_CV_FOLDS} models, each validated on the fold it did not "
                     f"see, and `retrain` averages them (export --ensemble 3 averages the top 3 configs' too)")
    else:
        data_raw["validation_fraction"] = 0.2
    if not data.test_path and not has_test:
        data_raw.setdefault("test_fraction", 0.2)
    training: dict[str, Any] = {}
    if rows < 2_000:
        training.update(max_epochs=40, patience=6)
    elif rows < 20_000:
        training.update(max_epochs=25, patience=4)
    else:
        training.update(max_epochs=15, patience=3)
    training["metric"] = "val_accuracy"
    n_val = len(search_data.val)
    if n_val < _FINE_VALIDATION:
        training["metric"] = "val_loss"
        notes.append(f"metric: the validation split has {n_val} rows, so accuracy moves in steps of "
                     f"{100 / n_val:.1f} points and many trials tie; the validation loss (cross-entropy) ranks finer")
    if imbalance > 3:
        training["class_weight"] = "balanced"
        if search_data.n_classes == 2:
            training["metric"] = "val_auc"
        notes.append(f"class_weight: the largest class has {imbalance:.1f}x the examples of the smallest; "
                     "balanced weights make every class count" + (" and AUC ranks trials" if
                                                                 search_data.n_classes == 2 else ""))
    batches = [16, 32, 64, 128] if rows < 5_000 else [32, 64, 128, 256] if rows < 200_000 else [128, 256, 512, 1024]
    search: dict[str, Any] = {
        "activation": {"choices": ["relu", "elu", "selu", "gelu", "swish", "tanh", "leaky_relu"]},
        "initializer": {"choices": ["he_normal", "he_uniform", "glorot_uniform", "lecun_normal"]},
        "optimizer": {"choices": ["adam", "adamw", "nadam", "rmsprop", "momentum", "sgd"]},
        "learning_rate": {"low": 1.0e-4, "high": 0.1, "log": True},
        "momentum": {"low": 0.5, "high": 0.99},
        "dropout": {"low": 0.0, "high": 0.5},
        "l2": {"low": 1.0e-6, "high": 1.0e-2, "log": True, "off": True},
        "batch_norm": {"choices": [False, True]},
        "batch_size": {"choices": batches},
    }
    model: dict[str, Any] = {"kind": kind}
    common = {"activation": "relu", "initializer": "he_normal", "optimizer": "adam", "dropout": 0.0,
              "batch_norm": False, "batch_size": 32 if 32 in batches else batches[0]}
    if kind == "mlp":
        features = int(np.prod(search_data.input_shape)) + sum(
            len(v) + 1 for _, v in search_data.preprocessing.vocabularies)
        high = int(min(512, max(64, 2 ** math.ceil(math.log2(4 * features)))))
        search.update(depth={"low": 0, "high": 3}, units={"low": 16, "high": high, "log": True})
        baseline = {"depth": 2, "units": [64, 64]}
    else:
        side = min(search_data.input_shape[:2])
        stages = max(1, min(3, int(math.log2(max(2, side))) - 1))  # each stage halves the map
        search.update(depth={"low": 1, "high": stages}, filters={"low": 16, "high": 128, "log": True},
                      dense_units={"low": 32, "high": 256, "log": True}, conv_dropout={"low": 0.0, "high": 0.4})
        model.update(convs_per_stage=1, kernel_size=3)
        baseline = {"depth": min(2, stages), "filters": [32, 64][:min(2, stages)], "dense_units": 128,
                    "conv_dropout": 0.0}
    return {
        "description": f"{kind.upper()} on {data.path}, written by `searcher init`.",
        "data": data_raw, "model": model, "search": search, "training": training,
        "sampler": {"name": "tpe", "n_startup_trials": 10},
        "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 3},
        "budget": {"n_trials": 40}, "seed": 0,
        "baselines": [{"name": "plain-adam", "note": "a common first try by hand",
                       "params": {**common, "learning_rate": 1.0e-3, "l2": 0, **baseline}}]
                     + ([{"name": "linear", "note": "no hidden layer: logistic regression on the preprocessed inputs",
                          "params": {**common, "learning_rate": 1.0e-2, "l2": 1.0e-3, "depth": 0}}]
                        if kind == "mlp" else []),
    }


class _MiddleTrial:
    """Answers the space's questions with middle values, for one representative timing run."""

    _PREFERRED = ("relu", "he_normal", "adam", False)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return next((c for c in self._PREFERRED if c in choices), choices[len(choices) // 2])

    def suggest_float(self, name: str, low: float, high: float, *, step: Any = None, log: bool = False) -> float:
        return math.sqrt(low * high) if log else (low + high) / 2

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(round(math.sqrt(low * high))) if log else (low + high) // 2


def _sized_budget(raw: dict[str, Any], search_data: SearchData, *, minutes: float, workers: int) -> Sizing:
    """``size_budget`` on a measured trial; when it chose a search sample, the trial is measured
    again on that sample, and the budget sized again with what the rows really save here."""
    classes = search_data.n_classes
    cost = _measure_trial(raw, search_data)
    sizing = size_budget(raw, cost, minutes=minutes, workers=workers, classes=classes)
    rows = sizing.raw["data"].get("search_rows")
    if not rows:
        return sizing
    sample = load_search_data(DataSpec.model_validate(sizing.raw["data"]), split_seed=0)
    cost = cost.calibrated(_measure_trial(raw, sample))
    return size_budget(raw, cost, minutes=minutes, workers=workers, classes=classes)


def _measure_trial(raw: dict[str, Any], search_data: SearchData) -> TrialCost:
    """What a trial of a middle configuration costs on this machine, from a 3-epoch run."""
    from searcher.devices import import_tensorflow

    import_tensorflow()  # before searcher.training imports Keras: without TensorFlow's start-up lines
    from searcher.devices import TrainingRuntime, apply_runtime
    from searcher.training import train
    from searcher.space import suggest_values, trial_config

    spec = parse_spec({**raw, "name": "init-timing"}, source="searcher init")
    runtime = TrainingRuntime.from_spec(spec.runtime)  # what the written spec's workers will use
    apply_runtime(runtime)
    config = trial_config(spec, suggest_values(_MiddleTrial(), spec), seed=0)
    fit_rows, val_rows = len(search_data.train), len(search_data.val)
    # A large table is timed on a sample: an epoch's steps scale with its rows.
    scale = max(1.0, fit_rows / _TIMING_ROWS)
    if scale > 1:
        pick = np.random.default_rng(0).permutation
        search_data = dataclasses.replace(
            search_data, train=search_data.train.take(pick(len(search_data.train))[:_TIMING_ROWS]),
            val=search_data.val.take(pick(len(search_data.val))[:_TIMING_ROWS]), folds=())
    result = train(config, search_data, direction=spec.training.direction, runtime=runtime, max_epochs=3)
    steady = statistics.median(result.epoch_seconds[1:]) if len(result.epoch_seconds) > 1 else result.epoch_seconds[0]
    # The first epoch also builds and traces the model: every model pays that once.
    return TrialCost(epoch_s=steady * scale, first_epoch_extra_s=max(0.0, result.epoch_seconds[0] - steady),
                     folds=raw["data"].get("cv_folds") or 1, fit_rows=fit_rows, val_rows=val_rows)


def _render(raw: dict[str, Any], *, data_path: str, search_data: SearchData, notes: list[str], sizing: Sizing,
            output: Path) -> str:
    rows = len(search_data.train) + len(search_data.val)
    data_comments = {
        "preprocess": f"here: {search_data.preprocessing.describe()}; fitted on the fit split, inside the model",
        "validation_fraction": "carved from the training rows, stratified and seeded",
        "cv_folds": "stratified, seeded folds of the training rows; a trial's value is the mean over them",
        "test_fraction": "held out; only `searcher retrain` scores it, once",
        "test_path": "the held-out test set; only `searcher retrain` scores it, once",
        "missing": {"mean": "numbers: the fit split's means; text: a category of its own; inside the model",
                    "most_frequent": "the fit split's most frequent value or category, inside the model",
                    "error": "a missing number is an error; missing text is a category of its own"}[
                        raw["data"].get("missing", "error")],
        "image_size": "every image is resized to this (height, width)",
        "search_rows": f"a stratified sample of the {len(search_data.train)} fit rows for the search, so the budget "
                       "fits (see the top); retrain trains on all",
    }
    sized = "shortened so the budget fits (see the top)" if any("epochs" in c for c in sizing.shaped) else \
        f"sized to {rows} training rows"
    training_comments = {"max_epochs": sized, "patience": "early stopping on the metric",
                         "class_weight": "the classes are imbalanced"}
    lines = [
        f"# searcher spec for {data_path}, written by `searcher init` on {dt.date.today().isoformat()}.",
        f"# data: {describe_data(search_data.summary())}",
        *[f"# {note}" for note in notes],
        f"# budget: {describe_budget(sizing)}, measured on a middle configuration"
        + (" (on the whole fit split and on the sample)." if raw["data"].get("search_rows") else "."),
        *([f"# {sizing.note}."] if sizing.note else []),
        f"# Next: searcher launch {output}; then status, report, export, retrain (see searcher --help).",
        "",
        f"description: {_flow(raw['description'])}",
        "",
        *_section("data", raw["data"], data_comments),
        "",
        *_section("model", raw["model"], {}),
        "",
        *_section("search", raw["search"], {"momentum": "sampled only for the momentum and nesterov optimizers",
                                             "depth": "hidden layers; 0 is a linear model" if raw["model"]["kind"] == "mlp"
                                             else "conv stages",
                                             "l2": "off: an explicit 'no L2' choice",
                                             "units": "one value per hidden layer",
                                             "filters": "one value per conv stage",
                                             **{key: "fixed so the budget fits (see the top)"
                                                for key, knob in raw["search"].items() if not isinstance(knob, dict)}}),
        "",
        *_section("training", raw["training"], training_comments),
        "",
        *(f"{key}: {_flow(raw[key])}" for key in ("sampler", "pruner", "budget", "seed")),
        "",
        "# A configuration you might try by hand, run first so the search can be compared with it.",
        "baselines:",
        *(f"  - {_flow(baseline)}" for baseline in raw["baselines"]),
        "",
    ]
    return "\n".join(lines)


def _section(name: str, values: dict[str, Any], comments: dict[str, str]) -> list[str]:
    lines = [f"{name}:"]
    for key, value in values.items():
        line = f"  {key}: {_flow(value)}"
        lines.append(f"{line:<44} # {comments[key]}" if key in comments else line)
    return lines


def _flow(value: Any) -> str:
    """One value as one line of YAML (flow style), quoted where YAML needs it."""
    import yaml

    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10_000).strip()[1:-1]
