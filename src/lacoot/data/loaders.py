"""Fast, seeded data loaders.

:class:`TensorLoader` keeps a whole :class:`~lacoot.data.base.ImageDataset` on the device as
``uint8`` and produces each batch with a handful of tensor operations (index, crop+flip gather,
affine normalisation). :class:`StreamingLoader` does the same for datasets that stay on disk
(:class:`~lacoot.data.folder.ImageFileDataset`): DataLoader workers decode and collate
``uint8`` batches, and the augmentation is applied to the whole batch afterwards.

Determinism. An epoch's sample order is a permutation drawn from a ``torch.Generator`` seeded
with a hash of ``(seed, epoch)``, identical on every rank; rank ``r`` of ``world_size`` takes
positions ``r, r + world_size, ...`` of the permutation truncated to a multiple of
``world_size`` (equal-size, disjoint shards; at most ``world_size - 1`` samples are left out
of an epoch, different ones each epoch). Crop offsets and flips for the whole epoch are drawn
up front from a second generator seeded with ``(seed, epoch, rank)``. Batches therefore depend
only on ``(seed, epoch, rank, world_size, batch size)``: not on the device, the number of
workers, or whether earlier batches were produced, which makes mid-epoch resumption exact
(``set_epoch(epoch, start_batch=k)``). The epoch does not advance by itself: call
``set_epoch`` at the start of every epoch, as with ``DistributedSampler``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .augment import crop_flip, default_padding, sample_augment_params
from .base import DatasetError, ImageDataset

__all__ = ["TensorLoader", "StreamingLoader", "collate_uint8", "epoch_generator"]


@contextmanager
def _intra_op_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (no-op for ``None`` or no change)."""
    prev = torch.get_num_threads()
    if n is None or n == prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def epoch_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from a hash of non-negative integers (for example
    ``(seed, epoch)``), so nearby seeds give unrelated streams."""
    if any(int(p) < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative, got {parts}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


@dataclass(frozen=True)
class _LoaderOptions:
    """The keyword options that :class:`TensorLoader` and :class:`StreamingLoader` share
    (documented there), apart from ``mean``/``std``, which each loader defaults in its own way.
    """

    batch_size: int
    shuffle: bool
    augment: bool
    pad: int | None
    flip: bool | None
    device: str | torch.device
    dtype: torch.dtype
    seed: int
    drop_last: bool
    rank: int
    world_size: int
    cpu_threads: int | None

    @classmethod
    def pick(cls, arguments: Mapping[str, Any]) -> _LoaderOptions:
        """The options among a loader constructor's arguments (pass its ``locals()``)."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})


class _PlannedLoader:
    """Shared batch planning (order, sharding, augmentation parameters) and finishing."""

    def __init__(
        self,
        n: int,
        image_shape: tuple[int, int, int],
        options: _LoaderOptions,
        *,
        hflip_default: bool,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        o = options
        if o.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {o.batch_size}")
        if o.world_size < 1 or not 0 <= o.rank < o.world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={o.rank}, world={o.world_size}"
            )
        if o.seed < 0:
            raise ValueError(f"seed must be non-negative, got {o.seed}")
        if n < o.world_size:
            raise ValueError(f"{n} samples cannot be sharded over {o.world_size} ranks")
        c, h, w = image_shape
        self.n = int(n)
        self.batch_size = int(o.batch_size)
        self.shuffle = bool(o.shuffle)
        self.augment = bool(o.augment)
        self.pad = int(default_padding(h, w) if o.pad is None else o.pad) if o.augment else 0
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {o.pad}")
        self.flip = bool(hflip_default if o.flip is None else o.flip) if o.augment else False
        self.device = torch.device(o.device)
        self.dtype = o.dtype
        self.seed = int(o.seed)
        self.drop_last = bool(o.drop_last)
        self.rank = int(o.rank)
        self.world_size = int(o.world_size)
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std must have {c} entries")
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        m = torch.tensor(self.mean, dtype=torch.float64).view(1, c, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float64).view(1, c, 1, 1)
        self._scale = (1.0 / (255.0 * s)).to(self.device, o.dtype)
        self._shift = (-m / s).to(self.device, o.dtype)
        if o.cpu_threads is not None and o.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or None, got {o.cpu_threads}")
        # only CPU batches run torch's intra-op thread pool; CUDA work is unaffected
        self.cpu_threads = o.cpu_threads if self.device.type == "cpu" else None
        self.epoch = 0
        self._start_batch = 0

    # -- planning -------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """Samples of this rank per epoch (before ``drop_last``)."""
        return self.n // self.world_size if self.world_size > 1 else self.n

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and augmentation the next iteration produces.

        Parameters
        ----------
        epoch : int
            Epoch number (non-negative).
        start_batch : int
            Skip the first ``start_batch`` batches of the next iteration only (exact resume in
            the middle of an epoch: the remaining batches are identical to an uninterrupted
            run's).
        """
        if epoch < 0 or start_batch < 0:
            raise ValueError("epoch and start_batch must be non-negative")
        self.epoch = int(epoch)
        self._start_batch = int(start_batch)

    def epoch_indices(self, epoch: int | None = None) -> Tensor:
        """Dataset indices this rank visits in ``epoch`` (default: current), ``int64
        (num_samples,)`` on the CPU, in visiting order (before ``drop_last``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self.shuffle:
            order = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))
        else:
            order = torch.arange(self.n)
        if self.world_size > 1:
            order = order[: self.num_samples * self.world_size][self.rank :: self.world_size]
        return order

    def _plan(self) -> tuple[Tensor, Tensor | None, Tensor | None, range]:
        idx = self.epoch_indices()
        off = fl = None
        if self.augment and (self.pad > 0 or self.flip):
            gen = epoch_generator(self.seed, self.epoch, self.rank, 1)
            off, fl = sample_augment_params(idx.numel(), self.pad, self.flip, gen)
            off, fl = off.to(self.device), fl.to(self.device)  # one copy per epoch
        start, self._start_batch = self._start_batch, 0
        return idx, off, fl, range(min(start, len(self)), len(self))

    def _bounds(self, k: int) -> slice:
        return slice(k * self.batch_size, min((k + 1) * self.batch_size, self.num_samples))

    def _finish(self, x: Tensor, off: Tensor | None, fl: Tensor | None, sl: slice) -> Tensor:
        if off is not None and fl is not None:
            x = crop_flip(x, off[sl], fl[sl], self.pad)
        return torch.addcmul(self._shift, x.to(self.dtype), self._scale)


class TensorLoader(_PlannedLoader):
    """Batches of a whole in-memory dataset kept on the device.

    Iterating yields ``(images, labels)``: ``images`` of shape ``(B, C, H, W)`` and dtype
    ``dtype`` normalised as ``(pixel / 255 - mean) / std``; ``labels`` ``int64 (B,)``; both on
    ``device``. ``B = batch_size`` except possibly for a short last batch (``drop_last=False``).

    Parameters
    ----------
    dataset : ImageDataset
        Data; its ``uint8`` images are copied to ``device`` once (for CIFAR-10 train,
        150 MB).
    batch_size : int
        Images per batch.
    shuffle : bool
        Seeded random order per epoch; otherwise dataset order.
    augment : bool
        Random crop with zero padding and (optionally) horizontal flip.
    pad : int, optional
        Crop padding in pixels (default: 2 below 32 pixels, else 4). Only with ``augment``.
    flip : bool, optional
        Random horizontal flip with probability 1/2 (default: ``dataset.hflip``, off for MNIST).
        Only with ``augment``.
    mean, std : sequence of float, optional
        Normalisation statistics in units of full scale (default: the dataset's; pass the
        training set's when loading test data).
    device : str or torch.device
        Where the data lives and batches are produced.
    dtype : torch.dtype
        Floating dtype of the images.
    seed : int
        Non-negative base seed of order and augmentation.
    drop_last : bool
        Drop the last batch of an epoch when it is short.
    rank, world_size : int
        Shard of this process for data-parallel training (see the module docstring).
    cpu_threads : int or None
        Torch intra-op threads used while a batch is produced on the CPU (restored before the
        batch is yielded; ignored on CUDA). Default 1: the per-batch operations are too small
        to gain from threads, and multi-threaded OpenMP regions stall badly when other
        processes share the CPU (measured: 2 threads gave about 2,000 images/s instead of
        400,000 on a busy 2-core machine). ``None`` keeps torch's setting.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        augment: bool = False,
        pad: int | None = None,
        flip: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        cpu_threads: int | None = 1,
    ) -> None:
        options = _LoaderOptions.pick(locals())  # the shared keyword options, by name
        super().__init__(
            len(dataset),
            dataset.image_shape,
            options,
            hflip_default=dataset.hflip,
            mean=dataset.mean if mean is None else mean,
            std=dataset.std if std is None else std,
        )
        self.dataset = dataset
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        with _intra_op_threads(self.cpu_threads):
            idx, off, fl, batches = self._plan()
            idx = idx.to(self.device)
        for k in batches:
            with _intra_op_threads(self.cpu_threads):  # not held across the yield
                sl = self._bounds(k)
                bi = idx[sl]
                x = self._finish(self.images.index_select(0, bi), off, fl, sl)
                y = self.labels.index_select(0, bi)
            yield x, y


def collate_uint8(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack ``(uint8 image (C, H, W), int label)`` samples into ``uint8 (B, C, H, W)`` and
    ``int64 (B,)``."""
    shapes = {tuple(s[0].shape) for s in batch}
    if len(shapes) != 1:
        raise DatasetError(f"images of one batch differ in shape: {sorted(shapes)}")
    images = torch.stack([s[0] for s in batch])
    labels = torch.tensor([int(s[1]) for s in batch], dtype=torch.int64)
    return images, labels


class _PlanBatchSampler(Sampler[list[int]]):
    """Yields the index batches of the loader's current plan (set before each iteration)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamingLoader(_PlannedLoader):
    """Seeded, augmented batches of image files decoded by DataLoader workers.

    Same output, order, sharding and augmentation semantics as :class:`TensorLoader` (the
    batches of both are identical for the same data, seed and epoch); only the source differs:
    ``dataset[i]`` must return ``(uint8 image (C, H, W), int label)``, for example an
    :class:`~lacoot.data.folder.ImageFileDataset`. Workers decode and collate ``uint8``
    batches; crop/flip and normalisation run on the whole batch on ``device`` in the main
    process.

    Parameters
    ----------
    dataset : Dataset
        Map-style dataset of ``(uint8 (C, H, W), int)`` samples with ``image_shape``
        ``(C, H, W)``; ``hflip``, ``mean``/``std`` and ``estimate_stats`` are used when present.
    batch_size, shuffle, augment, pad, flip, device, dtype, seed, drop_last, rank, world_size
        As for :class:`TensorLoader`.
    cpu_threads : int or None
        As for :class:`TensorLoader` (applies to the batch augmentation in the main process).
    mean, std : sequence of float, optional
        Normalisation statistics (full-scale units). Default: ``dataset.mean``/``std``, else
        ``dataset.estimate_stats()`` (a random sample of images).
    num_workers : int
        DataLoader worker processes (0: decode in the main process).
    pin_memory, persistent_workers, prefetch_factor
        Passed to :class:`torch.utils.data.DataLoader`.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        *,
        shuffle: bool = True,
        augment: bool = False,
        pad: int | None = None,
        flip: bool | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        cpu_threads: int | None = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        options = _LoaderOptions.pick(locals())  # the shared keyword options, by name
        if mean is None or std is None:
            m, s = getattr(dataset, "mean", None), getattr(dataset, "std", None)
            if m is None or s is None:
                if not hasattr(dataset, "estimate_stats"):
                    raise ValueError("pass mean and std (the dataset has no statistics)")
                m, s = dataset.estimate_stats()
            mean = m if mean is None else mean
            std = s if std is None else std
        super().__init__(
            len(dataset),
            tuple(dataset.image_shape),
            options,
            hflip_default=getattr(dataset, "hflip", True),
            mean=mean,
            std=std,
        )
        self.dataset = dataset
        self._sampler = _PlanBatchSampler()
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._sampler,
            num_workers=num_workers,
            collate_fn=collate_uint8,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        with _intra_op_threads(self.cpu_threads):
            idx, off, fl, batches = self._plan()
        self._sampler.batches = [idx[self._bounds(k)].tolist() for k in batches]
        nb = self.device.type == "cuda"
        for k, (x, y) in zip(batches, self._loader, strict=True):
            with _intra_op_threads(self.cpu_threads):
                x = self._finish(x.to(self.device, non_blocking=nb), off, fl, self._bounds(k))
                y = y.to(self.device, non_blocking=nb)
            yield x, y
