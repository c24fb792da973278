"""CIFAR-10 and CIFAR-100 from the standard "python version" pickle batches.

Layouts (``data_dir`` may be the extracted folder or its parent)::

    cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/train, test, meta

Each batch is a Python-2 pickle of a dict with bytes keys: ``b"data"`` (``uint8`` array of shape
``(N, 3072)``, rows are 1024 red, 1024 green then 1024 blue values of a 32x32 image in row-major
order), ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Class names come from
``batches.meta`` (``b"label_names"``) or ``meta`` (``b"fine_label_names"``).

Pickles are read with a restricted unpickler that only reconstructs numpy arrays and plain
containers, so a malicious file cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DatasetError, DatasetNotFoundError, ImageDataset
from .sources import find_root

__all__ = ["load_cifar", "CIFAR_SPECS", "read_cifar_pickle"]


@dataclass(frozen=True)
class CifarSpec:
    name: str
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    subdirs: tuple[str, ...]
    url: str


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        title="CIFAR-10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        num_classes=10,
        subdirs=("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py", "cifar-10"),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        title="CIFAR-100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        num_classes=100,
        subdirs=("cifar-100-python", "cifar100", "cifar100/cifar-100-python", "cifar-100"),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("copyreg", "_reconstructor"),
    ("builtins", "object"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            if module.startswith("numpy.core.") and hasattr(np, "_core"):
                module = "numpy._core." + module[len("numpy.core.") :]  # numpy >= 2 location
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read one CIFAR pickle into a dict with ``str`` keys.

    Python-2 pickles are decoded with ``encoding="bytes"``; bytes keys and bytes class names
    are decoded as UTF-8 (Latin-1 as fallback).

    Raises
    ------
    DatasetError
        Missing, truncated or corrupted file, or not a dict; the message names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read CIFAR batch ({e})") from e
    try:
        obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... all mean a bad file
        raise DatasetError(
            f"{path}: truncated or corrupted CIFAR pickle ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {_to_str(k): v for k, v in obj.items()}


def _to_str(x: Any) -> Any:
    if isinstance(x, bytes):
        try:
            return x.decode("utf-8")
        except UnicodeDecodeError:
            return x.decode("latin-1")
    return x


def _probe(spec: CifarSpec, split: str):
    files = spec.train_files if split == "train" else spec.test_files

    def probe(folder: Path) -> bool:
        return all((folder / f).is_file() for f in files)

    return probe


def _read_batch(path: Path, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    for key in ("data", spec.label_key):
        if key not in d:
            raise DatasetError(f"{path}: CIFAR batch has no {key!r} entry")
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d[spec.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed CIFAR batch ({e})") from e
    if data.dtype != np.uint8:
        raise DatasetError(f"{path}: 'data' must be uint8, got {data.dtype}")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DatasetError(
            f"{path}: label count mismatch ({data.shape[0]} images, {labels.size} {spec.label_key})"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DatasetError(
            f"{path}: labels must lie in [0, {spec.num_classes}), got "
            f"[{labels.min()}, {labels.max()}]"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(
    name: str, split: str = "train", data_dir: str | os.PathLike | None = None
) -> ImageDataset:
    """Load CIFAR-10 or CIFAR-100 from the python-pickle batches.

    Parameters
    ----------
    name : {"cifar10", "cifar100"}
        Dataset.
    split : {"train", "test"}
        ``train``: 50000 images; ``test``: 10000.
    data_dir : path, optional
        The extracted folder (``cifar-10-batches-py``/``cifar-100-python``) or its parent.
        Otherwise ``$LACOOT_DATA`` and its subfolders are searched. Nothing is downloaded.

    Returns
    -------
    ImageDataset
        ``images`` ``uint8 (N, 3, 32, 32)``, ``labels`` ``int64 (N,)``, 10 or 100 classes
        (CIFAR-100: the fine labels).
    """
    spec = CIFAR_SPECS[name]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root, tried = find_root(data_dir, _probe(spec, split), spec.subdirs)
    if root is None:
        looked = ", ".join(str(p) for p in tried) or "(nowhere: no data_dir and LACOOT_DATA unset)"
        raise DatasetNotFoundError(
            f"{spec.title} {split} batches not found (looked in {looked}). Download "
            f"{spec.url}, extract it (it creates {spec.folder}/) and pass that folder or its "
            f"parent with `--data-dir DIR` (data_dir=DIR) or set LACOOT_DATA=DIR."
        )
    files = spec.train_files if split == "train" else spec.test_files
    parts = [_read_batch(root / f, spec) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    meta_path = root / spec.meta_file
    if meta_path.is_file():
        meta = read_cifar_pickle(meta_path)
        if spec.names_key not in meta:
            raise DatasetError(f"{meta_path}: no {spec.names_key!r} entry")
        classes = [_to_str(c) for c in meta[spec.names_key]]
        if len(classes) != spec.num_classes:
            raise DatasetError(
                f"{meta_path}: {len(classes)} class names, expected {spec.num_classes}"
            )
    else:
        classes = [str(i) for i in range(spec.num_classes)]
    return ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels),
        classes,
        name=spec.name,
        split=split,
        root=root,
        hflip=True,
    )
