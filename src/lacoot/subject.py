"""What a collapse works on: a model, its blocks, the data that judges it and how it is judged.

A :class:`Subject` comes from a lacoot checkpoint (:func:`lacoot.pipeline.checkpoint_subject`)
or from a model brought as it is with a text corpus (:func:`lacoot.lm.lm_subject`); scoring,
the sweep, the report and the export then treat both alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .blocks import Block

__all__ = ["Subject"]


@dataclass
class Subject:
    """A model and its data, ready to be scored, swept and exported.

    ``calib`` is the split that scores the blocks, chooses the collapse and calibrates the repair;
    ``test`` the held-out one; ``example`` one sample (MACs, latency, export). ``metric`` is
    ``fn(model, loader) -> float``, higher better. ``state`` holds the checkpoint's contents
    (empty for a model brought as it is); ``source`` the checkpoint path or the ``--model``
    value; ``tokenizer`` is set for a language model."""

    model: nn.Module
    blocks: list[Block]
    calib: Any
    test: Any
    example: Any
    metric: Any
    model_spec: dict[str, Any]
    data_spec: dict[str, Any]
    preprocessing: dict[str, Any]
    fingerprint: dict[str, Any]
    source: str
    state: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None

    @property
    def language_model(self) -> bool:
        """Whether the model is a language model judged by perplexity on text."""
        return self.tokenizer is not None
