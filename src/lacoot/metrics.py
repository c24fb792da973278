"""Evaluation functions for sweeps and reports: ``fn(model, loader) -> float``, higher is better.

:func:`lacoot.sweep`, :meth:`lacoot.Sweep.best`, the ``greedy`` criterion and the reports take any
such function as ``evaluate``; the default is :func:`top1_accuracy`. A model's output may be a
tensor of logits, a tuple whose first element is, or an object with a ``logits`` attribute (as
Hugging Face models return). Loaders yield ``(inputs, targets)`` batches whose inputs are a tensor,
a tuple or a dict (:mod:`lacoot.inputs`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inputs import call_model, model_device, to_device

__all__ = [
    "Metric", "top1_accuracy", "token_accuracy", "negative_perplexity", "metric_name", "logits_of",
    "Memoized", "model_fingerprint", "METRICS", "metric_text",
]  # fmt: skip

Metric = Callable[[nn.Module, Iterable[Any]], float]


# a sweep's metric (higher is better) -> its name, its unit and the sign that shows it as read
# (minus the perplexity is shown as the perplexity)
METRICS = {
    "top1_accuracy": ("accuracy", "%", 1.0),
    "token_accuracy": ("next-token accuracy", "%", 1.0),
    "negative_perplexity": ("perplexity", "", -1.0),
}


def metric_text(metric: str) -> tuple[str, Any]:
    """The name of a sweep's ``metric`` and ``show(value) -> str`` that prints a value as it is
    read (a perplexity positive, an accuracy with ``%``)."""
    name, unit, sign = METRICS.get(metric, (metric, "", 1.0))
    return name, lambda v: "-" if v is None else f"{sign * v:.2f}{unit}"


def metric_name(fn: Metric) -> str:
    """The name a report shows for an evaluation function (its ``__name__``)."""
    return getattr(fn, "__name__", type(fn).__name__)


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: the tensor itself, a tuple's first element, or an
    object's ``logits`` attribute."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"model output of type {type(output).__name__} holds no logits; expected a "
                    "tensor, a tuple starting with one, or an object with .logits")  # fmt: skip


def _batches(model: nn.Module, loader: Iterable[Any]) -> Iterable[tuple[Tensor, Tensor]]:
    """``(logits, targets)`` of every batch, the model in eval mode without gradients."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, targets in loader:
                inputs = to_device(inputs, device, non_blocking=True)
                yield logits_of(call_model(model, inputs)), targets.to(device, non_blocking=True)
    finally:
        model.train(was_training)


def top1_accuracy(model: nn.Module, loader: Iterable[Any]) -> float:
    """Top-1 accuracy in percent over ``(inputs, labels)`` batches: logits ``(B, C)``, integer
    labels ``(B,)``; other shapes are a ``ValueError`` that says what to use instead."""
    correct = total = 0
    for logits, labels in _batches(model, loader):
        if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"top-1 accuracy expects logits (B, C) and labels (B,); got logits "
                f"{tuple(logits.shape)} and labels {tuple(labels.shape)}. For a language model "
                "pass evaluate=lacoot.metrics.token_accuracy or negative_perplexity, or your own "
                "fn(model, loader) -> float"
            )
        correct += int((logits.argmax(dim=1) == labels).sum())
        total += labels.numel()
    if total == 0:
        raise ValueError("the loader yielded no samples; expected at least one (inputs, labels) "
                         "batch")  # fmt: skip
    return 100.0 * correct / total


def _token_pairs(model: nn.Module, loader: Iterable[Any], ignore_index: int):
    """Per batch: logits ``(N, V)`` and targets ``(N,)`` of the tokens that count."""
    for logits, targets in _batches(model, loader):
        if logits.dim() != 3 or logits.shape[:2] != targets.shape:
            raise ValueError(
                f"token metrics expect logits (B, T, V) and targets (B, T); got logits "
                f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
            )
        keep = targets != ignore_index
        yield logits[keep].float(), targets[keep]


def token_accuracy(model: nn.Module, loader: Iterable[Any], ignore_index: int = -100) -> float:
    """Next-token accuracy in percent: logits ``(B, T, V)`` against targets ``(B, T)`` (tokens
    equal to ``ignore_index`` do not count)."""
    correct = total = 0
    for logits, targets in _token_pairs(model, loader, ignore_index):
        correct += int((logits.argmax(dim=-1) == targets).sum())
        total += targets.numel()
    if total == 0:
        raise ValueError("the loader yielded no target token; expected at least one")
    return 100.0 * correct / total


def negative_perplexity(model: nn.Module, loader: Iterable[Any], ignore_index: int = -100) -> float:
    """``-exp(mean token cross-entropy)``: minus the perplexity, so higher is better, as every
    evaluation function here. Shapes as :func:`token_accuracy`."""
    nll = 0.0
    total = 0
    for logits, targets in _token_pairs(model, loader, ignore_index):
        nll += float(F.cross_entropy(logits, targets, reduction="sum"))
        total += targets.numel()
    if total == 0:
        raise ValueError("the loader yielded no target token; expected at least one")
    return -math.exp(nll / total)


def model_fingerprint(model: nn.Module) -> str:
    """A SHA-1 digest of a model's contents: its modules' names and types and every tensor of its
    ``state_dict`` (names, dtypes, shapes, bytes). Two models with equal digests compute the same
    function (up to code outside the modules); any changed weight or buffer changes it."""
    h = hashlib.sha1()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__qualname__};".encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Memoized:
    """An evaluation function that remembers its results by loader and model contents.

    Sweeps in several orders, or with several repairs, evaluate the same collapse more than once
    (the full model, each unrepaired collapse, equal prefixes of two orders, all blocks removed):
    pass one ``Memoized(metric)`` as every sweep's ``evaluate`` and each distinct
    (loader, :func:`model_fingerprint`) pair is evaluated once. The loader is keyed by identity,
    so it must yield the same data every time (no shuffling). ``calls`` and ``hits`` count.
    """

    def __init__(self, metric: Metric) -> None:
        self.metric = metric
        self.__name__ = metric_name(metric)
        self._cache: dict[tuple[int, str], float] = {}
        self._loaders: dict[int, Iterable[Any]] = {}  # held, so that no id is reused
        self.calls = self.hits = 0

    def __call__(self, model: nn.Module, loader: Iterable[Any]) -> float:
        self.calls += 1
        key = (id(loader), model_fingerprint(model))
        if key in self._cache:
            self.hits += 1
        else:
            self._loaders[id(loader)] = loader
            self._cache[key] = self.metric(model, loader)
        return self._cache[key]
