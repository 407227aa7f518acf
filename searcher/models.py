"""Build a compiled Keras model from a ``ModelConfig``.

The first layers are the data's preprocessing, fitted on the fit split (``data.Preprocessing``):
rescaling, per-feature standardization, imputation and one-hot categories, so the model
takes raw inputs and a saved ``.keras`` file needs nothing else: they are Keras's own
layers and ops, so it loads with ``keras.models.load_model`` where searcher is not installed. Then MLP and CNN share one
block: layer -> optional batch norm -> activation -> optional dropout, with the initializer
and L2 on every kernel. Import this module only in worker processes and retrain: it
imports TensorFlow.
"""

from __future__ import annotations

import keras
import numpy as np

from searcher.data import Preprocessing, input_name
from searcher.table import missing_variants
from searcher.space import ModelConfig

# Keras names an activation layer where a string is not enough.
_ACTIVATION_LAYERS = {
    "leaky_relu": lambda: keras.layers.LeakyReLU(negative_slope=0.2),
    "prelu": lambda: keras.layers.PReLU(),
}


def build_model(
    config: ModelConfig,
    *,
    preprocessing: Preprocessing,
    n_classes: int,
    jit_compile: bool = False,
) -> keras.Model:
    """Return the compiled network ``config`` describes, on raw inputs as ``preprocessing`` says.

    Args:
        config: structure and hyperparameters (the same object a trial stores and
            ``retrain`` reads).
        preprocessing: the raw inputs' layout and the first layers fitted on the fit split
            (``Preprocessing.identity((28, 28, 1))`` for inputs fed as they are).
        n_classes: width of the softmax output.
        jit_compile: passed to ``model.compile``; True turns XLA on.
    """
    inputs, x = _input_layers(preprocessing)
    if config.kind == "cnn":
        for filters in config.conv_filters:
            for i in range(config.convs_per_stage):
                kernel = config.kernel_size[i % len(config.kernel_size)]
                conv = keras.layers.Conv2D(filters, kernel, padding=config.padding, **_kernel_args(config))
                x = _block(x, conv, config, dropout=0.0)
            # "same" pooling keeps a 1x1 map at 1x1 instead of failing on deep, small inputs.
            x = keras.layers.MaxPooling2D(config.pool_size, padding="same")(x)
            if config.conv_dropout:
                x = keras.layers.Dropout(config.conv_dropout)(x)
    x = keras.layers.Flatten()(x)
    for units in config.hidden_units:
        x = _block(x, keras.layers.Dense(units, **_kernel_args(config)), config, dropout=config.dropout)
    # float32 output keeps softmax and the loss stable under a mixed_float16 policy.
    outputs = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", **_kernel_args(config))(x)
    model = keras.Model(inputs, outputs, name=f"searcher_{config.kind}")
    model.compile(
        optimizer=make_optimizer(config),
        loss="sparse_categorical_crossentropy",
        # The plain cross-entropy, without the L2 penalty Keras adds to "loss": searcher's val_loss.
        metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(name="crossentropy")],
        jit_compile=jit_compile,
    )
    return model


def ensemble_model(members: list[keras.Model]) -> keras.Model:
    """One model on the members' raw inputs whose output is the mean of their class probabilities.

    ``retrain`` of a cross-validated config (``data.cv_folds``) averages its fold models, so
    the saved ``.keras`` file is still one model on raw inputs; with one member it is that member.
    """
    if len(members) == 1:
        return members[0]
    # Renamed copies of the same layers: Keras needs unique names for the nested models.
    renamed = [keras.Model(m.input, m.output, name=f"member_{k}") for k, m in enumerate(members, 1)]
    first = members[0].input
    inputs = ({name: keras.Input(t.shape[1:], dtype=t.dtype, name=name) for name, t in first.items()}
              if isinstance(first, dict) else keras.Input(first.shape[1:], dtype=first.dtype, name="inputs"))
    outputs = keras.layers.Average(name="average")([m(inputs) for m in renamed])
    # Not compiled: it is never trained, and an optimizer saved unused warns on every load.
    return keras.Model(inputs, outputs, name="searcher_ensemble")


@keras.saving.register_keras_serializable(package="searcher")
class FillMissing(keras.layers.Layer):
    """Replaces NaN with per-feature values. New models impute with Keras's own ops instead;
    ``.keras`` files saved with this layer still load where ``searcher.models`` is imported."""

    def __init__(self, values: list[float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.values = [float(v) for v in values]

    def call(self, x):
        return keras.ops.where(keras.ops.isnan(x), keras.ops.convert_to_tensor(self.values, dtype=x.dtype), x)

    def get_config(self) -> dict:
        return {**super().get_config(), "values": self.values}


def _input_layers(pre: Preprocessing):
    """The raw inputs (one array, or one named input per table column) and the preprocessed tensor."""
    if pre.kind == "array":
        raw = keras.Input(shape=pre.shape, name="inputs")
        return raw, _scaled(raw, pre)
    # Inputs are named as the columns, so a model takes {column: values} straight from a CSV reader.
    raw = {name: keras.Input(shape=(1,), name=input_name(name)) for name in pre.numeric}
    raw |= {name: keras.Input(shape=(1,), dtype="string", name=input_name(name)) for name, _ in pre.vocabularies}
    parts = []
    if pre.numeric:
        columns = [raw[name] for name in pre.numeric]
        parts.append(_scaled(keras.layers.Concatenate(name="numeric")(columns) if len(columns) > 1 else columns[0], pre))
    fills = pre.category_fill or (None,) * len(pre.vocabularies)
    for (name, vocabulary), fill in zip(pre.vocabularies, fills):
        parts.append(_one_hot(raw[name], vocabulary, fill=fill, name=input_name(name)))
    inputs = {input_name(name): tensor for name, tensor in raw.items()}
    return inputs, keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]


def _one_hot(column, vocabulary: tuple[str, ...], *, fill: str | None, name: str):
    """One-hot slots: "other" (a value the fit split never had), the vocabulary, then "missing"
    (every spelling of a missing cell), unless ``fill`` names the value a missing cell takes.

    Built from Keras's own layers so that the saved file loads without searcher: a one-hot
    lookup of the raw string, then a fixed (non-trained) matrix from lookup slot to slot
    (a matrix product: it converts to TensorFlow Lite at any batch size).
    """
    fill = fill if fill in vocabulary else None  # a column with no value in the fit split has no most frequent
    variants = [v for v in missing_variants() if v not in vocabulary]
    lookup = keras.layers.StringLookup(vocabulary=list(vocabulary) + variants, num_oov_indices=1,
                                       output_mode="one_hot", name=f"lookup_{name}")(column)
    width = len(vocabulary) + (1 if fill is not None else 2)
    slots = np.zeros((1 + len(vocabulary) + len(variants), width), dtype="float32")
    slots[np.arange(1 + len(vocabulary)), np.arange(1 + len(vocabulary))] = 1.0
    missing_slot = width - 1 if fill is None else 1 + vocabulary.index(fill)
    slots[1 + len(vocabulary):, missing_slot] = 1.0
    return keras.layers.Dense(width, use_bias=False, kernel_initializer=keras.initializers.Constant(slots),
                              trainable=False, name=f"slots_{name}")(lookup)


def _scaled(x, pre: Preprocessing):
    if pre.fill:
        # Keras ops, not a layer of searcher's: the saved model then loads with Keras alone.
        x = keras.ops.where(keras.ops.isnan(x), keras.ops.convert_to_tensor(list(pre.fill), dtype=x.dtype), x)
    if pre.mode == "rescale" and pre.kind == "array":
        return keras.layers.Rescaling(1.0 / pre.scale, name="rescale")(x)
    if pre.mean:  # standardize; a table's rescale is a min-max map, the same layer with (min, range**2)
        return keras.layers.Normalization(mean=list(pre.mean), variance=list(pre.variance), name="normalize")(x)
    return x


def _kernel_args(config: ModelConfig) -> dict:
    return {
        "kernel_initializer": config.initializer,
        "kernel_regularizer": keras.regularizers.L2(config.l2) if config.l2 else None,
    }


def _block(x, layer: keras.layers.Layer, config: ModelConfig, *, dropout: float):
    x = layer(x)
    if config.batch_norm:
        x = keras.layers.BatchNormalization()(x)
    x = _activation(config.activation)(x)
    if dropout:
        x = keras.layers.Dropout(dropout)(x)
    return x


def _activation(name: str) -> keras.layers.Layer:
    make = _ACTIVATION_LAYERS.get(name)
    return make() if make else keras.layers.Activation(name)


def make_optimizer(config: ModelConfig) -> keras.optimizers.Optimizer:
    """The optimizer ``config`` names; "momentum" and "nesterov" are SGD variants."""
    lr = config.learning_rate
    match config.optimizer:
        case "sgd":
            return keras.optimizers.SGD(lr)
        case "momentum":
            return keras.optimizers.SGD(lr, momentum=config.momentum)
        case "nesterov":
            return keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=True)
        case "rmsprop":
            return keras.optimizers.RMSprop(lr)
        case "adam":
            return keras.optimizers.Adam(lr, **_adam_args(config))
        case "adamw":
            return keras.optimizers.AdamW(lr, **_adam_args(config))
        case "nadam":
            return keras.optimizers.Nadam(lr, **_adam_args(config))
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _adam_args(config: ModelConfig) -> dict[str, float]:
    return {"beta_1": config.beta_1, "beta_2": config.beta_2, "epsilon": config.epsilon}
