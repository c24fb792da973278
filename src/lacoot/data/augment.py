"""Batch augmentation and normalisation with tensor operations (no per-image Python loop).

All functions work on whole batches of ``uint8`` images ``(B, C, H, W)`` on any device. Random
crop with zero padding and horizontal flip are fused into a single ``gather``: output pixel
``(b, c, i, j)`` is read from the zero-padded image at row ``dy[b] + i`` and column
``dx[b] + j`` (or ``dx[b] + W - 1 - j`` when ``flip[b]``), which is exactly "pad by ``pad``
zeros on each side, crop an ``H x W`` window at offset ``(dy, dx)``, then mirror left-right".
Zero padding is in pixel space (value 0) before normalisation, as in the usual CIFAR recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_flip", "sample_augment_params", "normalize", "default_padding"]


def default_padding(height: int, width: int) -> int:
    """Default crop padding in pixels: 2 for images smaller than 32 pixels (MNIST-sized
    28x28), else 4 (CIFAR 32x32, Tiny-ImageNet 64x64)."""
    return 2 if min(height, width) < 32 else 4


def sample_augment_params(
    n: int, pad: int, flip: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Draw crop offsets and flip decisions for ``n`` images.

    Parameters
    ----------
    n : int
        Number of images.
    pad : int
        Padding in pixels; offsets are uniform in ``[0, 2 * pad]`` (``pad`` = no shift).
    flip : bool
        Whether to draw flips (probability 1/2); all ``False`` otherwise.
    generator : torch.Generator
        CPU generator (results do not depend on the device the batch lives on).

    Returns
    -------
    offsets : Tensor
        ``int64 (n, 2)``: row and column offsets ``(dy, dx)`` into the padded image.
    flips : Tensor
        ``bool (n,)``.
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, dtype=torch.int64)
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
    else:
        flips = torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Zero-padded crop and optional horizontal flip of every image of a batch.

    Parameters
    ----------
    images : Tensor
        ``(B, C, H, W)`` batch, any dtype (normally ``uint8``).
    offsets : Tensor
        ``int64 (B, 2)`` crop offsets ``(dy, dx)`` in ``[0, 2 * pad]``; ``(pad, pad)`` keeps
        the image in place.
    flips : Tensor
        ``bool (B,)``: mirror image ``b`` left-right after cropping.
    pad : int
        Zero padding in pixels on each side.

    Returns
    -------
    Tensor
        ``(B, C, H, W)``, same dtype and device as ``images``.
    """
    b, c, h, w = images.shape
    if b == 0:
        return images.clone()
    dev = images.device
    offsets = offsets.to(dev)
    flips = flips.to(dev)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad > 0 else images
    hp, wp = h + 2 * pad, w + 2 * pad
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, 0:1] + ar_h  # (B, H)
    cols = offsets[:, 1:2] + torch.where(flips[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    lin = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w)  # (B, 1, H*W)
    flat = padded.reshape(b, c, hp * wp)
    out = torch.gather(flat, 2, lin.expand(b, c, h * w))
    return out.view(b, c, h, w)


def normalize(
    images: Tensor,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Convert ``uint8`` pixels to normalised floats: ``(x / 255 - mean) / std`` per channel.

    Parameters
    ----------
    images : Tensor
        ``uint8 (B, C, H, W)``, pixel values 0..255.
    mean, std : sequence of float or Tensor
        Length-``C`` statistics in units of full scale (pixel / 255).
    dtype : torch.dtype
        Floating output dtype.

    Returns
    -------
    Tensor
        ``(B, C, H, W)`` of ``dtype``.
    """
    c = images.shape[1]
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(1, c, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).reshape(1, c, 1, 1)
    scale = (1.0 / (255.0 * s)).to(device=images.device, dtype=dtype)
    shift = (-m / s).to(device=images.device, dtype=dtype)
    return torch.addcmul(shift, images.to(dtype), scale)
