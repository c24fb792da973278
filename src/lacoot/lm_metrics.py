"""Perplexity and next-token accuracy of a language model, both from one pass over the data.

A sweep takes one evaluation function; :class:`PerplexityAndAccuracy` is that function (it
returns minus the perplexity, higher being better, as :func:`lacoot.metrics.negative_perplexity`)
and keeps the next-token accuracy of the same pass, so that a report shows both per depth without
a second pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .inputs import call_model, model_device, to_device
from .metrics import logits_of

__all__ = ["PerplexityAndAccuracy"]


class PerplexityAndAccuracy:
    """``fn(model, loader) -> -perplexity`` over ``({"input_ids", ...}, targets (B, T))``
    batches (targets equal to ``ignore_index`` do not count), remembering the next-token
    accuracy (percent) of each pass.

    :meth:`accuracy` looks an accuracy up by the loader and the value returned for it: the
    value a sweep point holds. Two passes on one loader that return the same value but different
    accuracies make that value ambiguous, and its accuracy None, never a wrong one.
    """

    __name__ = "negative_perplexity"

    def __init__(self, ignore_index: int = -100) -> None:
        self.ignore_index = ignore_index
        self._seen: dict[tuple[int, float], float | None] = {}
        self._loaders: dict[int, Iterable[Any]] = {}  # held, so that no id is reused

    def __call__(self, model: nn.Module, loader: Iterable[Any]) -> float:
        nll, correct, total = self._pass(model, loader)
        if total == 0:
            raise ValueError("the loader yielded no target token; expected at least one")
        value, accuracy = -math.exp(nll / total), 100.0 * correct / total
        key = (id(loader), value)
        self._loaders[id(loader)] = loader
        known = self._seen.get(key, accuracy)
        self._seen[key] = accuracy if known == accuracy else None
        return value

    def accuracy(self, loader: Iterable[Any] | None, value: float | None) -> float | None:
        """The next-token accuracy of the pass on ``loader`` that returned ``value``."""
        if loader is None or value is None:
            return None
        return self._seen.get((id(loader), value))

    def _pass(self, model: nn.Module, loader: Iterable[Any]) -> tuple[float, int, int]:
        """Summed cross-entropy, correct and counted target tokens, the model in eval mode."""
        device, was_training = model_device(model), model.training
        nll, correct, total = 0.0, 0, 0
        model.eval()
        try:
            with torch.no_grad():
                for inputs, targets in loader:
                    logits = logits_of(call_model(model, to_device(inputs, device)))  # (B, T, V)
                    targets = targets.to(device)
                    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
                        raise ValueError(
                            f"perplexity expects logits (B, T, V) and targets (B, T); got "
                            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
                        )
                    keep = targets != self.ignore_index
                    picked, wanted = logits[keep].float(), targets[keep]
                    nll += float(F.cross_entropy(picked, wanted, reduction="sum"))
                    correct += int((picked.argmax(dim=-1) == wanted).sum())
                    total += int(wanted.numel())
        finally:
            model.train(was_training)
        return nll, correct, total
