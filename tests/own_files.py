"""Files a user brings, written from scikit-learn's data sets: a CSV table, a folder of PNG images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def wine_csv(folder: Path) -> tuple[Path, Path]:
    """scikit-learn's wine (features from 0.1 to 1,680) with a categorical column and a string
    target, as a training and a test file."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split

    wine = load_wine()
    names = np.array(["barolo", "grignolino", "barbera"])
    cellar = np.array(["north", "south", "east"])[np.arange(len(wine.target)) % 3]
    header = list(wine.feature_names) + ["cellar", "cultivar"]  # one name holds a "/"
    rows = [[f"{v:g}" for v in x] + [c, names[t]] for x, t, c in zip(wine.data, wine.target, cellar)]
    train, test = train_test_split(rows, test_size=36, random_state=0, stratify=wine.target)
    return write_csv(folder / "wine.csv", header, train), write_csv(folder / "wine-test.csv", header, test)


def digits_png_folder(folder: Path, *, per_class: int = 30) -> Path:
    """scikit-learn's digits as 8x8 grayscale PNG files, one subfolder per class."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = folder / "digits-png"
    for label in range(10):
        (root / f"digit-{label}").mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:per_class]):
            png = tf.io.encode_png((image * 255 / 16).astype("uint8")[..., None]).numpy()
            (root / f"digit-{label}" / f"{i:03d}.png").write_bytes(png)
    return root
