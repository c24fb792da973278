"""Common in-memory representation of an image classification dataset.

Everything here is pure torch: a dataset is a ``uint8`` image tensor of shape ``(N, C, H, W)``
(pixel values 0..255), an ``int64`` label tensor of shape ``(N,)``, the class names, and the
per-channel mean and standard deviation used for normalisation, expressed as fractions of full
scale (pixel / 255, so in ``[0, 1]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "channel_stats",
    "train_val_split",
]


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupted or inconsistent.

    The message always names the offending file or folder and the problem.
    """


class DatasetNotFoundError(DatasetError):
    """The dataset files could not be found (and could not be downloaded)."""


@torch.no_grad()
def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a ``uint8`` image tensor.

    Parameters
    ----------
    images : Tensor
        ``uint8`` tensor of shape ``(N, C, H, W)``, pixel values 0..255.
    chunk : int
        Number of images converted to ``float64`` at a time (bounds the extra memory).

    Returns
    -------
    mean, std : tuple of float
        Length-``C`` tuples in units of full scale (pixel / 255). The standard deviation is the
        population one over all pixels of the channel. An empty tensor gives ``0.0`` / ``1.0``.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    n, c = images.shape[:2]
    if n == 0:
        return (0.0,) * c, (1.0,) * c
    s = torch.zeros(c, dtype=torch.float64, device=images.device)
    s2 = torch.zeros(c, dtype=torch.float64, device=images.device)
    for i in range(0, n, chunk):
        x = images[i : i + chunk].to(torch.float64)
        s += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = s / count
    var = (s2 / count - mean.square()).clamp_min(0.0)
    std = var.sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple((mean / 255.0).tolist()), tuple((std / 255.0).tolist())


class ImageDataset(Dataset):
    """An image classification dataset held in memory as tensors.

    Indexing returns ``(image, label)`` with ``image`` a ``uint8`` tensor ``(C, H, W)`` and
    ``label`` a Python ``int``, so the object also works with a plain
    :class:`torch.utils.data.DataLoader`; :class:`lacoot.data.TensorLoader` is the fast path.

    Parameters
    ----------
    images : Tensor
        ``uint8`` tensor of shape ``(N, C, H, W)``, pixel values 0..255.
    labels : Tensor
        Integer tensor of shape ``(N,)`` with values in ``[0, len(classes))``; stored as ``int64``.
    classes : sequence of str
        Class names; ``classes[k]`` is the name of label ``k``.
    mean, std : sequence of float, optional
        Per-channel normalisation statistics in units of full scale (pixel / 255). Computed from
        ``images`` when omitted.
    name : str
        Short dataset name (``"fashion-mnist"``, ``"cifar10"``, ...).
    split : str
        ``"train"``, ``"test"``, ``"val"`` or a free-form description.
    root : path, optional
        Folder the data was read from (informational).
    hflip : bool
        Whether horizontal flipping is a label-preserving augmentation for this data (``False``
        for MNIST digits). Used as the default of the loaders' ``flip`` argument.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        classes: Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        name: str = "dataset",
        split: str = "train",
        root: str | os.PathLike | None = None,
        hflip: bool = True,
    ) -> None:
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if not isinstance(labels, Tensor) or labels.dim() != 1:
            raise ValueError("labels must be a 1-D integer tensor")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{images.shape[0]} images but {labels.shape[0]} labels in dataset {name!r}"
            )
        classes = [str(c) for c in classes]
        labels = labels.to(torch.int64)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ValueError(
                f"labels of dataset {name!r} must lie in [0, {len(classes)}), got "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        self.images = images
        self.labels = labels
        self.classes = classes
        if mean is None or std is None:
            m, s = channel_stats(images)
            mean = m if mean is None else mean
            std = s if std is None else std
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std must have {c} entries (one per channel)")
        if any(float(v) <= 0 for v in std):
            raise ValueError("std entries must be positive")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.name = name
        self.split = split
        self.root = Path(root) if root is not None else None
        self.hflip = bool(hflip)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(
        self,
        indices: Tensor | Sequence[int],
        *,
        split: str | None = None,
        recompute_stats: bool = False,
    ) -> ImageDataset:
        """A new dataset with the samples at ``indices`` (tensors are indexed, i.e. copied).

        Parameters
        ----------
        indices : Tensor or sequence of int
            Sample indices, shape ``(M,)``.
        split : str, optional
            Split name of the result (default: this dataset's).
        recompute_stats : bool
            Compute ``mean``/``std`` from the subset instead of inheriting this dataset's.
        """
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
        return self._replace(
            images=self.images[idx],
            labels=self.labels[idx.to(self.labels.device)],
            mean=None if recompute_stats else self.mean,
            std=None if recompute_stats else self.std,
            split=self.split if split is None else split,
        )

    def _replace(self, **changes: Any) -> ImageDataset:
        """A new dataset with this one's fields, except ``changes`` (constructor arguments)."""
        fields = {
            "images": self.images, "labels": self.labels, "classes": self.classes,
            "mean": self.mean, "std": self.std, "name": self.name, "split": self.split,
            "root": self.root, "hflip": self.hflip,
        }  # fmt: skip
        return ImageDataset(**(fields | changes))

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> ImageDataset:
        """Same tensors (not copied), other normalisation statistics.

        Typical use: normalise a test set with the training set's statistics,
        ``test = test.with_stats(train.mean, train.std)``.
        """
        return self._replace(mean=mean, std=std)

    def fingerprint(self) -> str:
        """A SHA-256 digest of the images, labels and class names (hex, 16 characters): two
        datasets with the same fingerprint hold the same samples in the same order."""
        digest = hashlib.sha256()
        digest.update(repr((tuple(self.images.shape), self.classes)).encode())
        digest.update(self.images.cpu().contiguous().numpy().tobytes())
        digest.update(self.labels.cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def to(self, device: str | torch.device) -> ImageDataset:
        """Same dataset with its tensors on ``device`` (no copy if already there)."""
        return self._replace(images=self.images.to(device), labels=self.labels.to(device))

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"shape=({c}, {h}, {w}), classes={self.num_classes}, device={self.images.device})"
        )


def train_val_split(
    dataset: ImageDataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Seeded random split of a training set into training and validation parts.

    The split is deterministic given ``seed`` and ``len(dataset)``; the two parts are disjoint
    and together cover the dataset. Both keep the original sample order. The training part's
    ``mean``/``std`` are recomputed from its own images and the validation part reuses them, so
    no statistic leaks from validation into training.

    Parameters
    ----------
    dataset : ImageDataset
        The full training set, ``N`` samples.
    val_fraction : float
        Fraction of samples held out for validation, in ``[0, 1)``; the paper uses 0.1. The
        validation size is ``round(N * val_fraction)``.
    seed : int
        Seed of the permutation (a dedicated :class:`torch.Generator`, global RNG untouched).

    Returns
    -------
    train, val : ImageDataset
        ``N - round(N * val_fraction)`` and ``round(N * val_fraction)`` samples.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(dataset)
    n_val = int(round(n * val_fraction))
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=gen)
    val_idx = perm[:n_val].sort().values
    train_idx = perm[n_val:].sort().values
    train = dataset.subset(train_idx, split="train", recompute_stats=True)
    val = dataset.subset(val_idx, split="val").with_stats(train.mean, train.std)
    return train, val
