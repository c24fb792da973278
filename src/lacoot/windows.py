"""Windows of consecutive layers whose input and output are closest: the layer-pruning choice of
Gromov et al. ("The Unreasonable Ineffectiveness of the Deeper Layers", 2024) and of ReplaceMe.

For layers ``0 .. L-1`` run one after the other (a decoder's layer list), ``h_s`` is the hidden
state entering layer ``s`` and ``h_L`` the one leaving the last. Removing the ``n`` layers
``s .. s+n-1`` is judged by the distance between ``h_s`` and ``h_{s+n}``, averaged over
calibration samples:

* ``angular``: ``arccos(cos(h_s, h_{s+n})) / pi`` of each sequence's *last* real token (Gromov
  et al.: the last token is the one that sees the whole sequence);
* ``cosine``: ``1 - cos(h_s, h_{s+n})`` over every real token (ReplaceMe's choice of the cut).

Unlike a per-layer score these choose a set per ``n``: the best window of 3 layers need not hold
the best window of 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Block
from .inputs import call_model, model_device, to_device, token_mask, token_rows
from .regularizer import block_io_hooks

__all__ = ["WINDOW_DISTANCES", "window_distances", "best_window"]

WINDOW_DISTANCES = ("angular", "cosine")


def _last_tokens(h: Tensor, mask: Tensor | None) -> Tensor:
    """``h: (B, T, D)`` -> ``(B, D)``, each sequence's last real token (left or right padding)."""
    if mask is None:
        return h[:, -1]
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values.clamp_min(0)
    return h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]


def _distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Row-wise distance of ``a, b: (N, D)``, in float64."""
    cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)
    return torch.arccos(cos.clamp(-1, 1)) / math.pi if kind == "angular" else 1 - cos


@torch.no_grad()
def window_distances(
    model: nn.Module,
    blocks: Sequence[Block | str],
    loader: Iterable[Any],
    n: int,
    distance: str = "angular",
    max_batches: int | None = None,
) -> list[float]:
    """Mean distance between the input of ``blocks[s]`` and the output of ``blocks[s+n-1]``, for
    every start ``s = 0 .. len(blocks) - n``.

    ``blocks`` must run one after the other, each taking the previous one's output (checked on
    every batch). ``loader`` yields ``(inputs, targets)``; padding is excluded through the
    batch's ``attention_mask``. ``angular`` takes each sequence's last real token, ``cosine``
    every real token; features that are not sequences ``(B, T, D)`` count one row per sample.
    """
    if distance not in WINDOW_DISTANCES:
        raise ValueError(f"distance={distance!r}; expected one of {WINDOW_DISTANCES}")
    names = [b.name if isinstance(b, Block) else str(b) for b in blocks]
    if not 1 <= n <= len(names):
        raise ValueError(f"n={n!r}; expected a window of 1..{len(names)} layers")
    sums = torch.zeros(len(names) - n + 1, dtype=torch.float64)
    count = 0
    states: dict[str, tuple[Tensor, Tensor]] = {}
    handles = block_io_hooks(model, names, lambda name, x, y: states.__setitem__(name, (x, y)))
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = to_device(x, device)
            states.clear()
            call_model(model, x)
            rows = _boundaries(states, names, token_mask(x), last=distance == "angular")
            d = torch.stack([_distance(rows[s], rows[s + n], distance) for s in range(len(sums))])
            sums += d.sum(dim=1).cpu()
            count += d.shape[1]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("the loader yielded no sample; expected at least one batch")
    return (sums / count).tolist()


def _boundaries(
    states: dict[str, tuple[Tensor, Tensor]], names: list[str], mask: Tensor | None, last: bool
) -> list[Tensor]:
    """``h_0 .. h_L`` as rows: the input of each block, then the output of the last."""
    missing = [n for n in names if n not in states]
    if missing:
        raise ValueError(f"blocks {missing} did not run; expected every block once per batch")
    for a, b in zip(names[:-1], names[1:], strict=True):
        if states[a][1] is not states[b][0]:
            raise ValueError(f"block {b!r} does not take the output of {a!r}; a window needs "
                             "layers run one after the other")  # fmt: skip
    hidden = [states[n][0] for n in names] + [states[names[-1]][1]]

    def rows(h: Tensor) -> Tensor:
        if h.dim() != 3:
            return h.flatten(1)
        return _last_tokens(h, mask) if last else token_rows(h, mask)

    return [rows(h) for h in hidden]


def best_window(
    model: nn.Module,
    blocks: Sequence[Block | str],
    loader: Iterable[Any],
    n: int,
    distance: str = "angular",
    max_batches: int | None = None,
) -> list[str]:
    """Names of the ``n`` consecutive blocks whose removal moves the hidden state least
    (:func:`window_distances`; ties go to the deeper window)."""
    d = window_distances(model, blocks, loader, n, distance, max_batches)
    start = min(range(len(d)), key=lambda s: (d[s], -s))
    names = [b.name if isinstance(b, Block) else str(b) for b in blocks]
    return names[start : start + n]
