"""Datasets: scikit-learn's bundled 8x8 digits (offline) and MNIST / Fashion-MNIST from local IDX
files (gzip or raw)."""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetError(ValueError):
    """Missing or malformed dataset (one-line message naming the file)."""


@dataclass
class Dataset:
    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self):
        return self.X_train.shape[1]


def load_digits_dataset(test_fraction: float = 0.2) -> Dataset:
    """8x8 digits scaled to [0, 1]; a fixed stratified split (independent of the run's seed, so
    runs with different seeds are compared on the same test set)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = d.data / 16.0
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=test_fraction, random_state=0,
                                          stratify=d.target)
    return Dataset("digits", Xtr, ytr.astype(np.int64), Xte, yte.astype(np.int64), 10)


_MAGIC = {2051: 3, 2049: 1}  # images (n, rows, cols), labels (n,)


def read_idx(path: str | os.PathLike, expect_magic: int) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes; checks magic number and sizes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found (expected an IDX file, raw or .gz)") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt gzip stream ({e})") from None
    if len(raw) < 8:
        raise DatasetError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expect_magic:
        raise DatasetError(f"{path}: magic number {magic}, expected {expect_magic} "
                           f"({'images' if expect_magic == 2051 else 'labels'}, unsigned-byte IDX)")
    ndim = _MAGIC[magic]
    hdr = 4 + 4 * ndim
    if len(raw) < hdr:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - hdr != size:
        raise DatasetError(f"{path}: {len(raw) - hdr} data bytes, expected {size} for dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=hdr).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for cand in (root / stem, root / (stem + ".gz"), root / stem.replace("-idx", ".idx"),
                 root / (stem.replace("-idx", ".idx") + ".gz")):
        if cand.exists():
            return cand
    raise DatasetError(f"{root / stem}: file not found (expected {stem} or {stem}.gz in {root})")


def load_idx_dataset(path: str | os.PathLike, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST (same file names and format) from a folder of four IDX files."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected the folder holding the four {name} IDX files)")
    parts = {}
    for split, pre in (("train", "train"), ("test", "t10k")):
        fi = _find(root, f"{pre}-images-idx3-ubyte")
        fl = _find(root, f"{pre}-labels-idx1-ubyte")
        X = read_idx(fi, 2051)
        y = read_idx(fl, 2049)
        if X.shape[0] != y.shape[0]:
            raise DatasetError(f"{fl}: {y.shape[0]} labels, expected {X.shape[0]} (one per image in {fi.name})")
        if y.size and y.max() > 9:
            raise DatasetError(f"{fl}: label {int(y.max())}, expected classes 0..9")
        parts[split] = (X.reshape(len(X), -1).astype(np.float64) / 255.0, y.astype(np.int64))
    return Dataset(name, parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], 10)


def load_dataset(spec: str) -> Dataset:
    """'digits', 'mnist:PATH' or 'fashion:PATH'."""
    if spec == "digits":
        return load_digits_dataset()
    kind, sep, path = spec.partition(":")
    if sep and kind in ("mnist", "fashion", "fashion-mnist") and path:
        return load_idx_dataset(path, "fashion-mnist" if kind.startswith("fashion") else "mnist")
    raise DatasetError(f"--dataset {spec!r}: expected 'digits', 'mnist:PATH' or 'fashion:PATH'")
