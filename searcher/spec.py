"""Study specs: plain YAML validated into frozen, typed config objects.

A spec says what to search (``search``), on what (``data``, ``model``), how to
train one trial (``training``), how to search (``sampler``, ``pruner``,
``budget``), how workers behave (``runtime``) and which hand-tuned
configurations to try first (``baselines``). Every error names the file and
the field path: ``studies/x.yaml: search.learning_rate.low: must be > 0, got -0.1``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from searcher.errors import SpecError

ACTIVATIONS = ("relu", "elu", "selu", "gelu", "swish", "tanh", "sigmoid", "leaky_relu", "prelu")
INITIALIZERS = (
    "glorot_uniform",
    "glorot_normal",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "random_normal",
)
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "nadam")
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")
ADAM_OPTIMIZERS = ("adam", "adamw", "nadam")  # the ones beta_1, beta_2 and epsilon apply to
ADAM_KNOBS = ("beta_1", "beta_2", "epsilon")
DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "npz", "csv", "images")
FILE_DATASETS = ("npz", "csv", "images")  # a user's own data, read from data.path
METRICS = {"val_accuracy": "maximize", "val_auc": "maximize", "val_loss": "minimize"}
SHIPPED_STUDIES = Path(__file__).parent / "studies"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a study name: also a folder name for its logs


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldError(ValueError):
    """A validation error inside a field, with the rest of the path (``low``, ``[1]``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# --- search knobs: a fixed value, a list of choices, or a range -------------------------


class Fixed(_Frozen):
    """A knob held at one value; it is not an Optuna parameter."""

    value: Any

    @model_serializer
    def _raw(self) -> Any:
        return list(self.value) if isinstance(self.value, tuple) else self.value


class Choice(_Frozen):
    """A categorical knob: Optuna picks one of ``choices``."""

    choices: tuple[Any, ...]

    @model_serializer
    def _raw(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


class Range(_Frozen):
    """A numeric knob sampled from [low, high]; ``off`` adds an explicit "off" (0) choice.

    A log range cannot hold 0, so "no L2 at all" needs its own choice.
    """

    low: float
    high: float
    log: bool = False
    step: float | None = None
    off: bool = False

    @model_serializer
    def _raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            raw["log"] = True
        if self.step is not None:
            raw["step"] = self.step
        if self.off:
            raw["off"] = True
        return raw


Knob = Union[Fixed, Choice, Range]


class _Domain:
    """What values one knob may take; parses its raw YAML form into a Knob."""

    def __init__(
        self,
        kind: type,
        *,
        names: tuple[str, ...] = (),
        low: float | None = None,
        low_open: bool = False,
        high: float | None = None,
        high_open: bool = False,
        off_ok: bool = False,
        per_layer: bool = False,
        model_kinds: tuple[str, ...] = ("mlp", "cnn"),
    ) -> None:
        self.kind, self.names = kind, names
        self.low, self.low_open, self.high, self.high_open = low, low_open, high, high_open
        self.off_ok, self.per_layer, self.model_kinds = off_ok, per_layer, model_kinds

    def check_value(self, value: Any, path: str = "") -> Any:
        if self.kind is bool:
            if not isinstance(value, bool):
                raise FieldError(path, f"must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if value not in self.names:
                raise FieldError(path, f"must be one of {', '.join(self.names)}; got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FieldError(path, f"must be a number, got {value!r}")
        if self.kind is int and value != int(value):
            raise FieldError(path, f"must be a whole number, got {value!r}")
        value = self.kind(value)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            op = ">" if self.low_open else ">="
            if not (self.off_ok and value == 0):
                raise FieldError(path, f"must be {op} {self.low}, got {value}")
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            op = "<" if self.high_open else "<="
            raise FieldError(path, f"must be {op} {self.high}, got {value}")
        return value

    def parse(self, raw: Any) -> Knob:
        if isinstance(raw, dict):
            if "choices" in raw:
                return self._parse_choice(raw)
            if "low" in raw or "high" in raw:
                return self._parse_range(raw)
            raise FieldError("", "expected a value, {choices: [...]} or {low: ..., high: ...}")
        if isinstance(raw, list):
            if not self.per_layer:
                raise FieldError("", "a list is only allowed for per-layer knobs; use {choices: [...]}")
            if not raw:
                raise FieldError("", "must list at least one layer")
            return Fixed(value=tuple(self.check_value(v, f"[{i}]") for i, v in enumerate(raw)))
        return Fixed(value=self.check_value(raw))

    def _parse_choice(self, raw: dict[str, Any]) -> Choice:
        extra = set(raw) - {"choices"}
        if extra:
            raise FieldError(sorted(extra)[0], "unknown field (a choice knob takes only 'choices')")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise FieldError("choices", "must be a non-empty list")
        values = tuple(self.check_value(v, f"choices[{i}]") for i, v in enumerate(choices))
        if len(set(values)) != len(values):
            raise FieldError("choices", f"must not repeat a value, got {list(values)}")
        return Choice(choices=values)

    def _parse_range(self, raw: dict[str, Any]) -> Range:
        # YAML 1.1 reads the key `off` as the boolean False.
        raw = {("off" if key is False else key): value for key, value in raw.items()}
        if self.kind in (str, bool):
            raise FieldError("", "a range needs a numeric knob; use {choices: [...]}")
        allowed = {"low", "high", "log", "step", "off"}
        for key in raw:
            if key not in allowed:
                raise FieldError(key, f"unknown field (a range takes {', '.join(sorted(allowed))})")
        for key in ("low", "high"):
            if key not in raw:
                raise FieldError(key, "is required in a range")
        low, high = self.check_value(raw["low"], "low"), self.check_value(raw["high"], "high")
        log, off, step = raw.get("log", False), raw.get("off", False), raw.get("step")
        for key, flag in (("log", log), ("off", off)):
            if not isinstance(flag, bool):
                raise FieldError(key, f"must be true or false, got {flag!r}")
        if low > high:
            raise FieldError("low", f"must be <= high ({high}), got {low}")
        if log and low <= 0:
            raise FieldError("low", f"must be > 0 with log: true, got {low}")
        if off and not self.off_ok:
            raise FieldError("off", "is only allowed for l2")
        if step is not None:
            if log:
                raise FieldError("step", "cannot be combined with log: true")
            if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0:
                raise FieldError("step", f"must be a positive number, got {step!r}")
            if self.kind is int and step != int(step):
                raise FieldError("step", f"must be a whole number, got {step!r}")
        return Range(low=low, high=high, log=log, step=step, off=off)


KNOBS: dict[str, _Domain] = {
    "activation": _Domain(str, names=ACTIVATIONS),
    "initializer": _Domain(str, names=INITIALIZERS),
    "optimizer": _Domain(str, names=OPTIMIZERS),
    "learning_rate": _Domain(float, low=0, low_open=True),
    "momentum": _Domain(float, low=0, high=1, high_open=True),
    "beta_1": _Domain(float, low=0, low_open=True, high=1, high_open=True),
    "beta_2": _Domain(float, low=0, low_open=True, high=1, high_open=True),
    "epsilon": _Domain(float, low=0, low_open=True),
    "dropout": _Domain(float, low=0, high=1, high_open=True),
    "conv_dropout": _Domain(float, low=0, high=1, high_open=True, model_kinds=("cnn",)),
    "l2": _Domain(float, low=0, off_ok=True),
    "batch_norm": _Domain(bool),
    "batch_size": _Domain(int, low=1),
    "depth": _Domain(int, low=0),  # mlp 0: a linear (softmax-regression) model on the preprocessed inputs
    "units": _Domain(int, low=1, per_layer=True, model_kinds=("mlp",)),
    "filters": _Domain(int, low=1, per_layer=True, model_kinds=("cnn",)),
    "dense_units": _Domain(int, low=1, model_kinds=("cnn",)),
}

_DEFAULTS: dict[str, Any] = {
    "activation": "relu",
    "initializer": "glorot_uniform",
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "momentum": 0.9,
    "beta_1": 0.9,  # Keras' Adam defaults
    "beta_2": 0.999,
    "epsilon": 1e-7,
    "dropout": 0.0,
    "conv_dropout": 0.0,
    "l2": 0.0,
    "batch_norm": False,
    "batch_size": 32,
    "depth": 2,
    "units": 64,
    "filters": 32,
    "dense_units": 128,
}


class SearchSpec(_Frozen):
    """The search space: every knob is fixed, a list of choices, or a range."""

    activation: Knob = Fixed(value=_DEFAULTS["activation"])
    initializer: Knob = Fixed(value=_DEFAULTS["initializer"])
    optimizer: Knob = Fixed(value=_DEFAULTS["optimizer"])
    learning_rate: Knob = Fixed(value=_DEFAULTS["learning_rate"])
    momentum: Knob = Fixed(value=_DEFAULTS["momentum"])
    beta_1: Knob = Fixed(value=_DEFAULTS["beta_1"])
    beta_2: Knob = Fixed(value=_DEFAULTS["beta_2"])
    epsilon: Knob = Fixed(value=_DEFAULTS["epsilon"])
    dropout: Knob = Fixed(value=_DEFAULTS["dropout"])
    conv_dropout: Knob = Fixed(value=_DEFAULTS["conv_dropout"])
    l2: Knob = Fixed(value=_DEFAULTS["l2"])
    batch_norm: Knob = Fixed(value=_DEFAULTS["batch_norm"])
    batch_size: Knob = Fixed(value=_DEFAULTS["batch_size"])
    depth: Knob = Fixed(value=_DEFAULTS["depth"])
    units: Knob = Fixed(value=_DEFAULTS["units"])
    filters: Knob = Fixed(value=_DEFAULTS["filters"])
    dense_units: Knob = Fixed(value=_DEFAULTS["dense_units"])

    @field_validator("*", mode="before")
    @classmethod
    def _parse_knob(cls, raw: Any, info: Any) -> Knob:
        if isinstance(raw, (Fixed, Choice, Range)):
            return raw
        return KNOBS[info.field_name].parse(raw)

    def searched(self) -> list[str]:
        """Names of the knobs Optuna samples (not fixed)."""
        return [name for name in KNOBS if not isinstance(getattr(self, name), Fixed)]


# --- the other sections ----------------------------------------------------------------


class DataSpec(_Frozen):
    """Which data, how it is split, and how the model's first layers preprocess it.

    ``preprocess`` is fitted on the fit split only and lives inside the model, so a saved
    model takes raw inputs. ``auto``: images (integer arrays, or anything with a
    height/width/channel shape) are rescaled to [0, 1]; 2-D features are standardized per
    feature; CSV tables standardize numeric columns and one-hot encode categorical ones.

    ``cv_folds: K`` replaces the one validation split with K stratified folds of the
    training rows: a trial trains K models, each validated on the fold it did not see, and
    its value is their mean at the epoch where that mean is best; ``retrain`` averages the K
    models into one. For small data,
    where one validation split of a few dozen rows is too noisy to select on.

    ``missing``: a missing cell (empty, NA, N/A, NaN, null, None, ?) of a text column is a
    category of its own, except with ``most_frequent``, which imputes the fit split's most
    frequent category. In numbers it is an error (``error``, naming the column and line), or
    imputed with the fit split's mean (``mean``) or most frequent value (``most_frequent``).

    ``search_rows: N``: the search trains on a stratified, seeded sample of N rows of the fit
    split (``searcher init`` sets it when the minutes asked cannot hold the whole). The
    validation split shrinks in the same proportion, so validating stays a small share of an
    epoch, but keeps at least 1,000 rows (or all it has): fewer rank trials by luck. The test
    split is untouched; ``retrain`` (and ``export`` when it retrains) trains on the whole fit
    split, while ``replay`` and ``confirm`` repeat trials on the search's sample.
    """

    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10", "npz", "csv", "images"]
    path: str | None = None
    test_path: str | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    target: str | None = None
    features: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None
    color_mode: Literal["rgb", "grayscale"] = "rgb"
    preprocess: Literal["auto", "standardize", "rescale", "none"] = "auto"
    missing: Literal["error", "mean", "most_frequent"] = "error"
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    cv_folds: int | None = Field(None, ge=2, le=20)
    split_seed: int | None = Field(None, ge=0)  # None: the study's seed
    search_rows: int | None = Field(None, ge=2)

    @model_validator(mode="after")
    def _fields_fit_dataset(self) -> DataSpec:
        own = self.dataset in FILE_DATASETS
        if own and not self.path:
            what = {"npz": "a .npz with x_train, y_train (and x_test, y_test)", "csv": "a CSV file with a header row",
                    "images": "a folder with one subfolder of images per class"}[self.dataset]
            raise FieldError("path", f"is required for dataset {self.dataset} ({what})")
        if not own:
            for name in ("path", "test_path", "test_fraction"):
                if getattr(self, name) is not None:
                    raise FieldError(name, f"is only used with dataset {', '.join(FILE_DATASETS)}, not {self.dataset}")
        if self.dataset == "npz" and self.test_path:
            raise FieldError("test_path", "is not used with npz: put x_test, y_test in the file, or set test_fraction")
        if self.test_path and self.test_fraction:
            raise FieldError("test_fraction", "cannot be combined with test_path: the test split comes from one of them")
        if self.dataset == "csv" and not self.target:
            raise FieldError("target", "is required for dataset csv (the column holding the class)")
        # Compared with the defaults, not "was it set": a stored spec lists every field.
        for name in ("target", "features", "categorical"):
            if self.dataset != "csv" and getattr(self, name):
                raise FieldError(name, f"is only used with dataset csv, not {self.dataset}")
        for name, default in (("image_size", None), ("color_mode", "rgb")):
            if self.dataset != "images" and getattr(self, name) != default:
                raise FieldError(name, f"is only used with dataset images, not {self.dataset}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise FieldError("image_size", f"must be two sizes >= 1 (height, width), got {list(self.image_size)}")
        for name in ("features", "categorical"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise FieldError(name, f"must not repeat a column, got {list(values)}")
        if self.features and (extra := [c for c in self.categorical if c not in self.features]):
            raise FieldError("categorical", f"{extra[0]!r} is not in data.features")
        if self.missing != "error" and self.dataset not in ("npz", "csv"):
            raise FieldError("missing", f"{self.missing} imputation is for tables (npz, csv), not {self.dataset}")
        if self.cv_folds and self.validation_fraction != DataSpec.model_fields["validation_fraction"].default:
            raise FieldError("validation_fraction", f"is not used with cv_folds: each of the {self.cv_folds} folds "
                                                    f"validates on 1/{self.cv_folds} of the training rows; drop one")
        if self.cv_folds and self.search_rows:
            raise FieldError("search_rows", "is not used with cv_folds: folds are for data too small to sample; "
                                            "drop one")
        return self


class ModelSpec(_Frozen):
    """The fixed structure around the searched knobs.

    mlp: Flatten, ``depth`` hidden dense blocks of ``units``, softmax.
    cnn: ``depth`` stages of ``convs_per_stage`` conv blocks (``kernel_size`` per conv in a
    stage) of ``filters`` then max-pool, Flatten, one dense block of ``dense_units``, softmax.
    """

    kind: Literal["mlp", "cnn"]
    convs_per_stage: int = Field(1, ge=1)
    kernel_size: tuple[int, ...] = (3,)
    pool_size: int = Field(2, ge=1)
    padding: Literal["same", "valid"] = "same"

    @field_validator("kernel_size", mode="before")
    @classmethod
    def _kernel_list(cls, raw: Any) -> Any:
        return [raw] if isinstance(raw, int) else raw

    @model_validator(mode="after")
    def _kernels_match(self) -> ModelSpec:
        if any(k < 1 for k in self.kernel_size):
            raise FieldError("kernel_size", f"must be >= 1, got {list(self.kernel_size)}")
        if len(self.kernel_size) not in (1, self.convs_per_stage):
            raise FieldError(
                "kernel_size",
                f"must give one size or one per conv in a stage ({self.convs_per_stage}), "
                f"got {list(self.kernel_size)}",
            )
        return self


class TrainingSpec(_Frozen):
    max_epochs: int = Field(20, ge=1)
    patience: int | None = Field(3, ge=1)
    metric: Literal["val_accuracy", "val_auc", "val_loss"] = "val_accuracy"
    direction: Literal["maximize", "minimize"] | None = None
    class_weight: Literal["none", "balanced"] = "none"  # balanced: each class weighs as much in the loss

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> TrainingSpec:
        natural = METRICS[self.metric]
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise FieldError("direction", f"{self.metric} must be {natural}d, got {self.direction}")
        return self


class SamplerSpec(_Frozen):
    name: Literal["tpe", "random", "cmaes", "gp", "grid", "nsgaii"] = "tpe"
    n_startup_trials: int = Field(8, ge=0)  # nsgaii: its population size (the first generation is random)


class PrunerSpec(_Frozen):
    name: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(4, ge=0)
    n_warmup_steps: int = Field(2, ge=0)


class BudgetSpec(_Frozen):
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0)


# --- deployment: constraints on what a model costs, and cost as a second objective -------

COST_OBJECTIVES = ("n_params", "latency_ms", "sec_per_epoch", "model_mb")
CONSTRAINTS = ("max_params", "max_latency_ms", "max_model_mb")
MULTI_OBJECTIVE_SAMPLERS = ("tpe", "nsgaii", "gp", "random")
# Samplers that learn where the feasible region is; random and grid learn from no result at all.
CONSTRAINED_SAMPLERS = ("tpe", "nsgaii", "gp", "random", "grid")


class ConstraintsSpec(_Frozen):
    """Limits a deployable model must meet; a trial over one is infeasible, never "best".

    ``max_params`` is checked on the built model before any training; latency (per example,
    batch 1) and model size are measured after training.
    """

    max_params: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0)
    max_model_mb: float | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key in raw:
                if key not in CONSTRAINTS:
                    raise FieldError(str(key), f"unknown constraint; constraints are {', '.join(CONSTRAINTS)}")
            if not any(v is not None for v in raw.values()):
                raise FieldError("", f"set at least one of {', '.join(CONSTRAINTS)}")
        return raw

    def limits(self) -> dict[str, float]:
        """The constraints that are set, by name."""
        return {name: getattr(self, name) for name in CONSTRAINTS if getattr(self, name) is not None}


class RuntimeSpec(_Frozen):
    """How workers behave; none of it changes what a trial computes."""

    heartbeat_interval: int = Field(5, ge=1)
    grace_period: int = Field(20, ge=2)
    max_retries: int = Field(2, ge=0)
    max_failures_in_a_row: int = Field(5, ge=1)
    mixed_precision: bool = False
    xla: bool = False
    recycle_after_trials: int = Field(100, ge=1)
    recycle_memory_growth_mb: int | None = Field(2048, ge=64)
    max_worker_memory_mb: int | None = Field(None, ge=256)
    # How long a worker waits for a lost database (a drained PostgreSQL pod is away 1-3 minutes)
    # before it exits 69 (EX_UNAVAILABLE), which launch, Kubernetes, compose and Slurm restart.
    db_outage_minutes: float = Field(30.0, gt=0)
    # A folder for TensorBoard logs (searcher/tensorboard.py); a relative path is from the working directory.
    tensorboard: str | None = Field(None, min_length=1)
    # The trained models of the best K complete trials, as Optuna artifacts (searcher.artifacts); 0: none.
    keep_models: int = Field(3, ge=0)
    # Where: a folder every worker can reach, or s3://bucket/prefix. Default: <db stem>-artifacts/ beside SQLite.
    artifacts: str | None = None

    @model_validator(mode="after")
    def _grace_exceeds_interval(self) -> RuntimeSpec:
        if self.grace_period <= self.heartbeat_interval:
            raise FieldError(
                "grace_period",
                f"must be > heartbeat_interval ({self.heartbeat_interval}), got {self.grace_period}",
            )
        return self


class Baseline(_Frozen):
    """A hand-tuned configuration run before any sampling, e.g. a tutorial's."""

    name: str
    params: dict[str, Any]
    note: str = ""


class WarmStartSpec(_Frozen):
    """Start the study from an earlier one (``searcher.warm_start``): its top configurations run
    first, its finished trials are history the sampler learns from. ``storage``: the old study's
    database (default: the new study's); ``top``: configurations to run again (default
    min(5, budget / 4))."""

    study: str = Field(pattern=NAME_PATTERN)
    storage: str | None = None
    top: int | None = Field(None, ge=0)


class StudySpec(_Frozen):
    """A whole study spec, validated: data, model, search space, training, budget, pruner,
    runtime, constraints and objectives. Frozen; ``search_hash`` names what a worker must share."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    data: DataSpec
    model: ModelSpec
    search: SearchSpec = SearchSpec()
    training: TrainingSpec = TrainingSpec()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: BudgetSpec = BudgetSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    seed: int = 0
    baselines: tuple[Baseline, ...] = ()
    constraints: ConstraintsSpec | None = None
    objectives: tuple[str, ...] | None = None  # [metric] or [metric, cost]; None: the metric alone
    warm_start: WarmStartSpec | None = None  # how the study begins, not what it searches: not in search_hash

    @model_validator(mode="after")
    def _objectives_and_constraints(self) -> StudySpec:
        if self.objectives is not None:
            listed = list(self.objectives)
            if not 1 <= len(listed) <= 2:
                raise FieldError("objectives", f"must list the metric and at most one cost, e.g. "
                                               f"[{self.training.metric}, n_params], got {listed}")
            if listed[0] != self.training.metric:
                raise FieldError("objectives[0]", f"must be training.metric ({self.training.metric}), "
                                                  f"got {listed[0]!r}")
            if len(listed) == 2 and listed[1] not in COST_OBJECTIVES:
                raise FieldError("objectives[1]", f"unknown objective; the second objective is one of "
                                                  f"{', '.join(COST_OBJECTIVES)}, got {listed[1]!r}")
            if len(listed) == 2 and self.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
                raise FieldError("sampler.name", f"{self.sampler.name} cannot search two objectives "
                                                 f"(objectives: {listed}); use {', '.join(MULTI_OBJECTIVE_SAMPLERS)}")
        if self.constraints is not None and self.sampler.name not in CONSTRAINED_SAMPLERS:
            raise FieldError("sampler.name", f"{self.sampler.name} would ignore constraints "
                                             f"({', '.join(self.constraints.limits())}); use tpe, nsgaii or gp, "
                                             f"which learn where the feasible region is")
        if self.sampler.name == "nsgaii" and self.sampler.n_startup_trials < 2:
            raise FieldError("sampler.n_startup_trials", f"is nsgaii's population size and must be >= 2, "
                                                         f"got {self.sampler.n_startup_trials}")
        return self

    @model_validator(mode="after")
    def _knobs_fit_model(self) -> StudySpec:
        if self.model.kind == "cnn" and self.data.dataset == "csv":
            raise FieldError("model.kind", "cnn needs images; dataset csv gives a table of features: use mlp")
        if self.model.kind == "cnn" and depth_range(self.search)[0] < 1:
            raise FieldError("search.depth", f"a cnn needs at least 1 conv stage, got {depth_range(self.search)[0]}")
        for name in KNOBS:
            knob = getattr(self.search, name)
            if self.model.kind not in KNOBS[name].model_kinds and name in self.search.model_fields_set:
                raise FieldError(f"search.{name}", f"only applies to model kind {KNOBS[name].model_kinds[0]}")
            if isinstance(knob, Fixed) and isinstance(knob.value, tuple):
                _check_layer_list(self.search, name, len(knob.value), f"search.{name}")
        names = [b.name for b in self.baselines]
        for i, baseline in enumerate(self.baselines):
            if names.index(baseline.name) != i:
                raise FieldError(f"baselines[{i}].name", f"repeats {baseline.name!r}")
            for key, value in baseline.params.items():
                _check_baseline_value(self.search, key, value, f"baselines[{i}].params.{key}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain YAML-able data; ``StudySpec.model_validate`` reads it back."""
        raw = json.loads(self.model_dump_json())
        for name, domain in KNOBS.items():
            if self.model.kind not in domain.model_kinds:
                del raw["search"][name]
        if raw["warm_start"] is None:
            del raw["warm_start"]
        elif raw["warm_start"]["storage"]:  # the spec is stored in the study: never a password
            from searcher.storage import mask_url

            raw["warm_start"]["storage"] = mask_url(raw["warm_start"]["storage"])
        for key in ("constraints", "objectives"):  # absent when unset: older studies keep their hash
            if raw[key] is None:
                del raw[key]
        for section, names in _ADDED_SINCE_FIRST_RELEASE.items():  # likewise, at their defaults
            for name in names:
                if name in raw[section] and raw[section][name] == _default_of(section, name):
                    del raw[section][name]
        if "constraints" in raw:
            raw["constraints"] = {k: v for k, v in raw["constraints"].items() if v is not None}
        return raw

    def search_hash(self) -> str:
        """A hash of everything that decides what a trial computes (not the budget or runtime).

        Workers compare it before joining a study so two search spaces never mix.
        """
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("budget", "runtime", "description", "warm_start")}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def split_seed(self) -> int:
        """The seed of the validation split: ``data.split_seed``, else the study's ``seed``.

        Fixing ``data.split_seed`` lets repeats of a study over seeds score on one validation set.
        """
        return self.seed if self.data.split_seed is None else self.data.split_seed


# Fields a spec gained after studies were first stored. ``to_dict`` (and so ``search_hash``) leaves
# them out while they hold their default, so a study stored before them still accepts its workers.
_ADDED_SINCE_FIRST_RELEASE = {
    "data": ("test_path", "test_fraction", "target", "features", "categorical", "image_size", "color_mode",
             "preprocess", "missing", "split_seed", "cv_folds", "search_rows"),
    "training": ("class_weight",),
    "search": ("beta_1", "beta_2", "epsilon"),
}


def _default_of(section: str, name: str) -> Any:
    if section == "search":
        return _DEFAULTS.get(name)
    model = {"data": DataSpec, "training": TrainingSpec}[section]
    default = model.model_fields[name].default
    return list(default) if isinstance(default, tuple) else default


def depth_range(search: SearchSpec) -> tuple[int, int]:
    """The fewest and the most layers (mlp) or stages (cnn) ``search.depth`` allows."""
    depth = search.depth
    if isinstance(depth, Fixed):
        return int(depth.value), int(depth.value)
    if isinstance(depth, Choice):
        return int(min(depth.choices)), int(max(depth.choices))
    return int(depth.low), int(depth.high)


def max_depth(search: SearchSpec) -> int:
    """The most layers (mlp) or stages (cnn) ``search.depth`` allows."""
    return depth_range(search)[1]


def objective_names(spec: StudySpec) -> tuple[str, ...]:
    """What the study optimizes: the metric, then the cost objective if there is one."""
    return spec.objectives or (spec.training.metric,)


def directions(spec: StudySpec) -> list[str]:
    """Optuna directions of ``objective_names``: the metric's, then minimize (every cost)."""
    return [spec.training.direction] + ["minimize"] * (len(objective_names(spec)) - 1)


def _check_layer_list(search: SearchSpec, name: str, length: int, path: str) -> None:
    if isinstance(search.depth, Fixed) and length != search.depth.value:
        raise FieldError(path, f"lists {length} layers but search.depth is {search.depth.value}")
    if length < max_depth(search):
        raise FieldError(path, f"lists {length} layers but search.depth can be {max_depth(search)}")


def _check_baseline_value(search: SearchSpec, key: str, value: Any, path: str) -> None:
    if key not in KNOBS:
        raise FieldError(path, f"unknown knob; knobs are {', '.join(KNOBS)}")
    domain, knob = KNOBS[key], getattr(search, key)
    values = value if isinstance(value, list) and domain.per_layer else [value]
    for j, item in enumerate(values):
        item_path = f"{path}[{j}]" if isinstance(value, list) else path
        domain.check_value(item, item_path)
        if isinstance(knob, Fixed):
            fixed = knob.value[j] if isinstance(knob.value, tuple) else knob.value
            if item != fixed:
                raise FieldError(item_path, f"search.{key} is fixed to {fixed!r}; a baseline cannot change it")
        elif isinstance(knob, Choice) and item not in knob.choices:
            raise FieldError(item_path, f"{item!r} is not among search.{key} choices {list(knob.choices)}")
        elif isinstance(knob, Range) and not (knob.low <= item <= knob.high or (knob.off and item == 0)):
            raise FieldError(item_path, f"{item!r} is outside search.{key} [{knob.low}, {knob.high}]")


# --- loading ---------------------------------------------------------------------------


def resolve_spec_path(name_or_path: str, *, cwd: Path | None = None) -> Path:
    """Find a spec by path, in ./studies, or among the shipped studies."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        if not candidate.is_file():
            raise SpecError(f"{name_or_path}: no such spec file")
        return candidate
    for folder in ((cwd or Path.cwd()) / "studies", SHIPPED_STUDIES):
        path = folder / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    known = ", ".join(sorted(p.stem for p in SHIPPED_STUDIES.glob("*.yaml")))
    raise SpecError(f"{name_or_path}: no such study (shipped studies: {known})")


def load_spec(name_or_path: str | Path) -> StudySpec:
    """Read and validate a study spec; the study name defaults to the file name."""
    path = resolve_spec_path(str(name_or_path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of fields at the top level")
    raw.setdefault("name", path.stem)
    # Like docker compose, top-level `x-` keys hold YAML anchors and are not fields.
    raw = {key: value for key, value in raw.items() if not str(key).startswith("x-")}
    return parse_spec(raw, source=str(path))


def parse_spec(raw: dict[str, Any], *, source: str) -> StudySpec:
    """Validate a spec given as data; errors start with ``source: field.path:``."""
    return validate_model(StudySpec, raw, source=source)


def validate_model(model: type[BaseModel], raw: Any, *, source: str) -> Any:
    """Validate ``raw`` as ``model``, turning the first error into one readable line."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{source}: {_describe(e)}") from None


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    parts: list[str] = []
    for item in first["loc"]:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1] if parts else ''}[{item}]"]
        else:
            parts.append(str(item))
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        if cause.path:
            sub = cause.path if cause.path.startswith("[") else "." + cause.path
            parts = [".".join(parts) + sub] if parts else [cause.path]
        message = cause.message
    elif first["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    elif first["type"] == "missing":
        message = "is required"
    else:
        message = re.sub(r"^(Value error, |Assertion failed, )", "", first["msg"])
        message = f"{message[0].lower()}{message[1:]}, got {first.get('input')!r}" if message else message
    location = ".".join(parts)
    more = len(error.errors()) - 1
    suffix = f" (and {more} more error{'s' * (more > 1)})" if more else ""
    return f"{location}: {message}{suffix}" if location else f"{message}{suffix}"
