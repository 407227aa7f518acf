"""Build a compiled Keras model from a ``ModelConfig``.

MLP and CNN share one block: layer -> optional batch norm -> activation -> optional
dropout, with the initializer and L2 on every kernel. Import this module only in worker
processes and retrain: it imports TensorFlow.
"""

from __future__ import annotations

import keras

from searcher.space import ModelConfig

# Keras names an activation layer where a string is not enough.
_ACTIVATION_LAYERS = {
    "leaky_relu": lambda: keras.layers.LeakyReLU(negative_slope=0.2),
    "prelu": lambda: keras.layers.PReLU(),
}


def build_model(
    config: ModelConfig,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    jit_compile: bool | str = "auto",
) -> keras.Model:
    """Return the compiled network ``config`` describes, for inputs of ``input_shape``.

    Args:
        config: structure and hyperparameters (the same object a trial stores and
            ``retrain`` reads).
        input_shape: one example's shape, e.g. ``(28, 28, 1)``.
        n_classes: width of the softmax output.
        jit_compile: passed to ``model.compile``; True turns XLA on.
    """
    inputs = keras.Input(shape=input_shape)
    x = inputs
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
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


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
