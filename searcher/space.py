"""The search space: a spec's knobs become Optuna parameters, and a trial becomes a config.

Optuna parameter names are stored data (renaming one is a migration):
``activation, initializer, optimizer, lr, momentum, beta_1, beta_2, epsilon, dropout,
conv_dropout, use_l2, l2, batch_norm, batch_size, depth, units_{i}, filters_{i}, dense_units``.

``TrialConfig`` is the one object a trial trains, ``export`` writes and ``retrain`` reads,
so the searched network and the retrained one are built from the same thing.
"""

from __future__ import annotations

import json

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from searcher.spec import (
    ADAM_KNOBS,
    ADAM_OPTIMIZERS,
    KNOBS,
    MOMENTUM_OPTIMIZERS,
    Choice,
    DataSpec,
    Fixed,
    Range,
    StudySpec,
    max_depth,
)

PARAM_NAMES = {"learning_rate": "lr"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """Everything ``models.build_model`` needs: structure plus resolved hyperparameters."""

    kind: Literal["mlp", "cnn"]
    hidden_units: tuple[int, ...]
    conv_filters: tuple[int, ...] = ()
    convs_per_stage: int = 1
    kernel_size: tuple[int, ...] = (3,)
    pool_size: int = 2
    padding: Literal["same", "valid"] = "same"
    activation: str
    initializer: str
    dropout: float = Field(ge=0, lt=1)
    conv_dropout: float = Field(0.0, ge=0, lt=1)
    l2: float = Field(ge=0)
    batch_norm: bool
    optimizer: str
    learning_rate: float = Field(gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    beta_1: float = Field(0.9, gt=0, lt=1)  # adam, adamw, nadam; Keras' defaults
    beta_2: float = Field(0.999, gt=0, lt=1)
    epsilon: float = Field(1e-7, gt=0)


class TrainingConfig(_Frozen):
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    patience: int | None
    metric: Literal["val_accuracy", "val_auc", "val_loss"]
    class_weight: Literal["none", "balanced"] = "none"


class TrialConfig(_Frozen):
    """A fully resolved trial: what to train, on what, how, with which seeds.

    ``split_seed`` picks the validation split (``data.split_seed``, else the study's seed; the
    same for every trial); ``seed`` sets weights, dropout and shuffling for this trial.
    """

    data: DataSpec
    model: ModelConfig
    training: TrainingConfig
    seed: int
    split_seed: int

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


class Trial(Protocol):
    """The part of ``optuna.Trial`` the space uses (a FixedTrial works too)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, step: Any = None, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...


def _suggest(trial: Trial, knob: Any, knob_name: str, param: str) -> Any:
    if isinstance(knob, Fixed):
        return knob.value
    if isinstance(knob, Choice):
        return trial.suggest_categorical(param, list(knob.choices))
    assert isinstance(knob, Range)
    if knob.off and not trial.suggest_categorical(f"use_{param}", [False, True]):
        return 0.0
    if KNOBS[knob_name].kind is int:
        step = int(knob.step or 1)
        return trial.suggest_int(param, int(knob.low), int(knob.high), step=step, log=knob.log)
    return trial.suggest_float(param, knob.low, knob.high, step=knob.step, log=knob.log)


def suggest_values(trial: Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample every knob (fixed knobs keep their value); returns knob name -> value.

    Per-layer knobs (``units``, ``filters``) come back as tuples, one value per layer,
    sampled as ``units_0``, ``units_1``, ... only for the layers that exist, and
    ``momentum`` only for optimizers that use it (``beta_1``, ``beta_2``, ``epsilon`` only for
    Adam and its variants), so TPE models what really varied.
    """
    search = spec.search
    values: dict[str, Any] = {}
    for name in KNOBS:
        if spec.model.kind not in KNOBS[name].model_kinds or name in ("momentum", *ADAM_KNOBS, "units", "filters"):
            continue
        values[name] = _suggest(trial, getattr(search, name), name, PARAM_NAMES.get(name, name))
    values["momentum"] = (
        _suggest(trial, search.momentum, "momentum", "momentum") if values["optimizer"] in MOMENTUM_OPTIMIZERS else 0.0
    )
    for name in ADAM_KNOBS:  # other optimizers ignore them: the Keras default stands in
        values[name] = (_suggest(trial, getattr(search, name), name, name) if values["optimizer"] in ADAM_OPTIMIZERS
                        else ModelConfig.model_fields[name].default)
    layer_knob = "units" if spec.model.kind == "mlp" else "filters"
    knob = getattr(search, layer_knob)
    layers = []
    for i in range(int(values["depth"])):
        if isinstance(knob, Fixed):
            layers.append(knob.value[i] if isinstance(knob.value, tuple) else knob.value)
        else:
            layers.append(_suggest(trial, knob, layer_knob, f"{layer_knob}_{i}"))
    values[layer_knob] = tuple(int(v) for v in layers)
    return values


def trial_config(spec: StudySpec, values: dict[str, Any], *, seed: int) -> TrialConfig:
    """Resolve sampled knob values and the spec's fixed structure into a TrialConfig."""
    cnn = spec.model.kind == "cnn"
    model = ModelConfig(
        kind=spec.model.kind,
        hidden_units=(int(values["dense_units"]),) if cnn else values["units"],
        conv_filters=values["filters"] if cnn else (),
        convs_per_stage=spec.model.convs_per_stage,
        kernel_size=spec.model.kernel_size,
        pool_size=spec.model.pool_size,
        padding=spec.model.padding,
        activation=values["activation"],
        initializer=values["initializer"],
        dropout=float(values["dropout"]),
        conv_dropout=float(values.get("conv_dropout", 0.0)),
        l2=float(values["l2"]),
        batch_norm=bool(values["batch_norm"]),
        optimizer=values["optimizer"],
        learning_rate=float(values["learning_rate"]),
        momentum=float(values["momentum"]),
        **{name: float(values[name]) for name in ADAM_KNOBS},
    )
    training = TrainingConfig(
        batch_size=int(values["batch_size"]),
        max_epochs=spec.training.max_epochs,
        patience=spec.training.patience,
        metric=spec.training.metric,
        class_weight=spec.training.class_weight,
    )
    return TrialConfig(data=spec.data, model=model, training=training, seed=seed, split_seed=spec.split_seed)


def baseline_params(spec: StudySpec, params: dict[str, Any]) -> dict[str, Any]:
    """Translate a baseline's knob values into the Optuna parameters to enqueue.

    Fixed knobs are not Optuna parameters, so they are dropped; a per-layer list
    becomes ``units_0``, ``units_1``, ...; ``l2: 0`` on an ``off`` range becomes
    ``use_l2: false``.
    """
    enqueued: dict[str, Any] = {}
    for name, value in params.items():
        knob = getattr(spec.search, name)
        if isinstance(knob, Fixed):
            continue
        param = PARAM_NAMES.get(name, name)
        if name in ("units", "filters"):
            for i, item in enumerate(value if isinstance(value, list) else [value] * _depth_of(spec, params)):
                enqueued[f"{param}_{i}"] = item
        elif isinstance(knob, Range) and knob.off:
            enqueued[f"use_{param}"] = value != 0
            if value != 0:
                enqueued[param] = value
        else:
            enqueued[param] = value
    return enqueued


def _depth_of(spec: StudySpec, params: dict[str, Any]) -> int:
    depth = spec.search.depth
    return int(params.get("depth", depth.value if isinstance(depth, Fixed) else 1))


def grid_search_space(spec: StudySpec) -> dict[str, list[Any]]:
    """The Optuna parameters and their values, for the grid sampler (choices only)."""
    from searcher.errors import SpecError

    grid: dict[str, list[Any]] = {}
    for name in spec.search.searched():
        knob = getattr(spec.search, name)
        if not isinstance(knob, Choice):
            raise SpecError(f"sampler.name: grid needs every searched knob as choices; search.{name} is a range")
        param = PARAM_NAMES.get(name, name)
        if name in ("units", "filters"):
            for i in range(max_depth(spec.search)):
                grid[f"{param}_{i}"] = list(knob.choices)
        else:
            grid[param] = list(knob.choices)
    return grid



def describe(config: dict[str, Any]) -> str:
    """A one-line summary of a stored trial config, with only the knobs that apply."""
    m, t = config["model"], config["training"]
    layers = f"conv {m['conv_filters']} x{m['convs_per_stage']} -> dense {m['hidden_units']}" if m["kind"] == "cnn" \
        else f"dense {m['hidden_units']}" if m["hidden_units"] else "linear (no hidden layer)"
    optimizer = f"{m['optimizer']} lr={m['learning_rate']:.3g}"
    if m["optimizer"] in MOMENTUM_OPTIMIZERS:
        optimizer += f" momentum={m['momentum']:.3g}"
    if m["optimizer"] in ADAM_OPTIMIZERS:
        optimizer += "".join(f" {k}={m[k]:.3g}" for k in ADAM_KNOBS
                             if m.get(k, ModelConfig.model_fields[k].default) != ModelConfig.model_fields[k].default)
    regular = [f"dropout {m['dropout']:.2f}" if m["dropout"] else "no dropout",
               f"L2 {m['l2']:.2g}" if m["l2"] else "no L2"]
    if m["kind"] == "cnn" and m.get("conv_dropout"):
        regular.append(f"conv dropout {m['conv_dropout']:.2f}")
    if m["batch_norm"]:
        regular.append("batch norm")
    return (f"{m['kind']} {layers} | {m['activation']}, {m['initializer']} | {optimizer} | "
            f"{', '.join(regular)} | batch {t['batch_size']}")
