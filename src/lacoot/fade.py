"""Fade blocks out of a model during training, so that their removal changes nothing.

A faded block computes ``y + alpha * (x - y)`` in place of its output ``y`` (``x``: its input):
``alpha = 0`` is the block itself, ``alpha = 1`` the identity. The trainer raises ``alpha`` over
the end of a run (``TrainConfig.fade``) for the blocks meant to go (a budget's targets or the
blocks named by ``penalize``), so the rest of the network learns to do without them and the
training ends with them exact identities: removing them afterwards gives the trained function.
Hooks only (any block :func:`lacoot.find_blocks` finds); the modules and their weights stay.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .blocks import Block
from .regularizer import block_io_hooks

__all__ = ["Fade"]


class Fade:
    """Blend the outputs of ``blocks`` towards their inputs by :attr:`alpha` (0 to 1).

    Parameters
    ----------
    model : nn.Module
    blocks : iterable of Block or str
        The blocks to fade (shape-preserving: each output has its input's shape).
    alpha : float
        The initial blend, in ``[0, 1]``; change :attr:`alpha` between forward passes.

    Notes
    -----
    Hooks registered after those of an :class:`~lacoot.regularizer.MSWRegularizer` on the same
    blocks leave it the blocks' own outputs (the penalty keeps pulling each block towards the
    identity while it fades). Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, model: nn.Module, blocks: Iterable[Block | str], alpha: float = 0.0) -> None:
        self.names = [b.name if isinstance(b, Block) else str(b) for b in blocks]
        if not self.names:
            raise ValueError("no blocks given; expected at least one block to fade")
        self.alpha = alpha
        self._handles = block_io_hooks(model, blocks, self._blend)

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha={value!r}; expected a blend in [0, 1]")
        self._alpha = float(value)

    def _blend(self, name: str, x: Tensor, y: Tensor) -> Tensor | None:
        """``y`` moved ``alpha`` of the way to ``x``: ``(B, ...)`` -> ``(B, ...)``."""
        if self._alpha == 0.0:
            return None
        if self._alpha == 1.0:
            return x.to(y.dtype)
        return torch.lerp(y, x.to(y.dtype), self._alpha)

    def close(self) -> None:
        """Remove the hooks: the blocks compute their own outputs again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> Fade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
