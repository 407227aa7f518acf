"""What a Keras user writes without searcher: the network of a trial config as a plain
``keras.Sequential`` on inputs preprocessed once in numpy, compiled with accuracy alone.

No preprocessing layers inside the model, no extra metric, no callbacks: the bare side of the
overhead ratio (``bench._replay``) and the plain Optuna loop (``bench/_plain_optuna.py``) build
this, so everything searcher adds to a model is on searcher's side of the ratio.
Imports TensorFlow: child processes only.
"""

from __future__ import annotations

import keras
import numpy as np


def plain_inputs(x: np.ndarray, preprocessing) -> np.ndarray:
    """``x`` (raw, as searcher loads it) preprocessed once as a user would: divided by the scale,
    or standardized with the fit split's mean and variance (``data.Preprocessing``), float32."""
    if preprocessing.kind != "array":
        raise ValueError("the plain model takes array data, not tables")
    x = np.asarray(x, dtype="float32")
    if preprocessing.mode == "rescale":
        return x / np.float32(preprocessing.scale)
    if preprocessing.mode == "standardize":
        mean = np.asarray(preprocessing.mean, dtype="float32")
        std = np.sqrt(np.asarray(preprocessing.variance, dtype="float32"))
        return (x - mean) / np.maximum(std, np.float32(keras.config.epsilon()))
    return x


def plain_model(*, input_shape: tuple[int, ...], hidden_units: tuple[int, ...], activation: str,
                initializer: str, dropout: float, l2: float, batch_norm: bool, optimizer: keras.optimizers.Optimizer,
                n_classes: int) -> keras.Model:
    """Flatten -> Dense blocks (batch norm, activation, dropout) -> softmax, compiled with accuracy."""
    regularizer = keras.regularizers.L2(l2) if l2 else None
    layers: list = [keras.Input(shape=input_shape), keras.layers.Flatten()]
    for units in hidden_units:
        layers.append(keras.layers.Dense(units, kernel_initializer=initializer, kernel_regularizer=regularizer))
        if batch_norm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(_activation(activation))
        if dropout:
            layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(n_classes, activation="softmax", kernel_initializer=initializer,
                                     kernel_regularizer=regularizer))
    model = keras.Sequential(layers)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def plain_model_of(config, *, input_shape: tuple[int, ...], n_classes: int) -> keras.Model:
    """``plain_model`` for a searcher ``ModelConfig`` (an MLP), with searcher's optimizer choice."""
    from searcher.models import make_optimizer

    if config.kind != "mlp":
        raise ValueError("the plain model is an MLP")
    return plain_model(input_shape=input_shape, hidden_units=tuple(config.hidden_units), activation=config.activation,
                       initializer=config.initializer, dropout=config.dropout, l2=config.l2,
                       batch_norm=config.batch_norm, optimizer=make_optimizer(config), n_classes=n_classes)


def _activation(name: str) -> keras.layers.Layer:
    if name == "leaky_relu":
        return keras.layers.LeakyReLU(negative_slope=0.2)
    if name == "prelu":
        return keras.layers.PReLU()
    return keras.layers.Activation(name)
