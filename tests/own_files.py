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


def pattern_png_folder(folder: Path, *, per_class: int, side: int = 64, seed: int = 0) -> Path:
    """``per_class`` noisy RGB PNGs of ``side`` x ``side`` in each of 4 class folders, one pattern
    per class (horizontal stripes, vertical stripes, a disc, a checkerboard) in random colours,
    sizes and places: a CNN can learn them, a constant guess cannot."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    def png(rgb: np.ndarray) -> bytes:
        raw = b"".join(b"\x00" + row.tobytes() for row in rgb)  # filter type 0 per row
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype("float32")
    root = folder / "pics"
    for label, name in enumerate(("hstripes", "vstripes", "disc", "checks")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            period, phase = rng.uniform(side / 10, side / 5), rng.uniform(0, 2 * np.pi)
            if label == 0:
                mask = np.sin(2 * np.pi * y / period + phase) > 0
            elif label == 1:
                mask = np.sin(2 * np.pi * x / period + phase) > 0
            elif label == 2:
                cy, cx, r = rng.uniform(side / 4, 3 * side / 4, 2).tolist() + [rng.uniform(side / 8, side / 3)]
                mask = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
            else:
                mask = (np.floor(y / period * 2) + np.floor(x / period * 2)) % 2 == 0
            fg, bg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            image = np.where(mask[..., None], fg, bg) + rng.normal(0, 40, (side, side, 3))
            (root / name / f"{i:05d}.png").write_bytes(png(np.clip(image, 0, 255).astype(np.uint8)))
    return root
