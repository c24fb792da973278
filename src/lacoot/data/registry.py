"""Dataset registry: one entry point for every supported dataset."""

from __future__ import annotations

import os

from .base import ImageDataset
from .cifar import load_cifar
from .folder import (
    ImageFileDataset,
    image_folder_files,
    load_image_folder,
    load_tiny_imagenet,
    tiny_imagenet_files,
)
from .idx import load_idx_dataset

__all__ = ["DATASETS", "load_dataset", "dataset_files", "canonical_name"]

#: Supported dataset names.
DATASETS: tuple[str, ...] = (
    "fashion-mnist",
    "mnist",
    "cifar10",
    "cifar100",
    "tiny-imagenet",
    "imagefolder",
    "text",
)
TEXT_ONLY = "text"  # tokenised by a language model's tokenizer: lacoot.data.text.load_text

_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-200": "tiny-imagenet",
    "image-folder": "imagefolder",
}


def canonical_name(name: str) -> str:
    """Canonical dataset name (case-insensitive, ``_`` = ``-``, a few aliases).

    Raises
    ------
    ValueError
        Unknown name; the message lists the valid ones.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return key


def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    image_size: tuple[int, int] | None = None,
    resize: bool = False,
    num_threads: int | None = None,
) -> ImageDataset:
    """Load a dataset split into memory.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`: ``fashion-mnist``, ``mnist`` (``(1, 28, 28)``, 10 classes),
        ``cifar10``, ``cifar100`` (``(3, 32, 32)``, 10/100 classes), ``tiny-imagenet``
        (``(3, 64, 64)``, 200 classes), ``imagefolder`` (any class-per-folder tree, RGB).
        ``text`` is listed too but read by :func:`lacoot.data.text.load_text` (it needs a
        tokenizer); here it is a ``ValueError``.
    split : {"train", "test"}
        Split. For Tiny-ImageNet ``test`` is the labelled validation set. Hold out a
        validation set from ``train`` with :func:`lacoot.data.train_val_split`.
    data_dir : path, optional
        Folder of the data (required for ``imagefolder``). Otherwise ``$LACOOT_DATA``,
        ``/usr/share/datasets/<name>/`` (MNIST-like) and the download cache are searched, see
        :mod:`lacoot.data.sources`.
    download : bool
        Allow a verified download when the files are not found (Fashion-MNIST only: the other
        datasets have no recorded SHA-256 and are never downloaded).
    image_size : (height, width), optional
        ``imagefolder``: required image size (default: the first image's).
    resize : bool
        ``imagefolder``: resize other sizes to ``image_size`` instead of raising.
    num_threads : int, optional
        Decoding threads for image-file datasets.

    Returns
    -------
    ImageDataset
        ``images`` ``uint8 (N, C, H, W)``, ``labels`` ``int64 (N,)``, ``classes``, and
        ``mean``/``std`` of this split's own images (units of full scale). To normalise test
        data like training data use ``test.with_stats(train.mean, train.std)``.

    Raises
    ------
    ValueError
        Unknown name or split, or ``imagefolder`` without ``data_dir``.
    DatasetError
        Missing, corrupted or inconsistent files (the message names them and says how to
        install the data).
    """
    key = canonical_name(name)
    _check_split(split)
    if key == TEXT_ONLY:
        raise ValueError(
            "dataset 'text' is tokenised by a language model's tokenizer; expected a model "
            "hf:FOLDER or hf:FILE.gguf (lacoot.data.text.load_text), not an image model"
        )
    if key in ("fashion-mnist", "mnist"):
        return load_idx_dataset(key, split, data_dir, download=download)
    if key in ("cifar10", "cifar100"):
        return load_cifar(key, split, data_dir)
    if key == "tiny-imagenet":
        return load_tiny_imagenet(data_dir, split, num_threads=num_threads)
    if data_dir is None:
        raise ValueError("dataset 'imagefolder' needs data_dir (the folder of class folders)")
    return load_image_folder(
        data_dir, split, image_size=image_size, resize=resize, num_threads=num_threads
    )


def dataset_files(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    resize: bool = False,
) -> ImageFileDataset:
    """Lazily decoded dataset for :class:`lacoot.data.StreamingLoader` (image-file datasets
    only: ``tiny-imagenet`` and ``imagefolder``)."""
    key = canonical_name(name)
    _check_split(split)
    if key == "tiny-imagenet":
        return tiny_imagenet_files(data_dir, split)
    if key == "imagefolder":
        if data_dir is None:
            raise ValueError("dataset 'imagefolder' needs data_dir (the folder of class folders)")
        return image_folder_files(data_dir, split, image_size=image_size, resize=resize)
    raise ValueError(
        f"dataset {key!r} is not stored as image files; use load_dataset() and TensorLoader"
    )
