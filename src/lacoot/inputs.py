"""Model inputs: one tensor, a tuple of them (positional arguments) or a dict (keyword arguments).

Everything in lacoot that runs a model (block discovery, scoring, sweeps, repair, MACs, latency,
training) goes through these helpers, so a model that takes ``model(x, meta)`` or
``model(input_ids=..., attention_mask=...)`` works wherever one taking ``model(x)`` does. Loaders
yield ``(inputs, targets)`` pairs whose ``inputs`` is any of the three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Inputs", "to_device", "call_model", "first_samples", "repeat_sample", "batch_size",
    "model_device", "channels_last", "token_mask", "token_rows",
]  # fmt: skip

Inputs = Tensor | Sequence[Any] | Mapping[str, Any]


def _map(inputs: Any, fn: Any) -> Any:
    """``fn`` applied to every tensor of a tensor, tuple/list or dict (other values kept)."""
    if isinstance(inputs, Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: _map(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_map(v, fn) for v in inputs)
    return inputs


def _tensors(inputs: Any) -> list[Tensor]:
    if isinstance(inputs, Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _tensors(v)]
    if isinstance(inputs, (list, tuple)):
        return [t for v in inputs for t in _tensors(v)]
    return []


def model_device(model: nn.Module) -> torch.device:
    """Device of the first parameter (or buffer) of ``model``; CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(inputs: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """The inputs with every tensor moved to ``device``."""
    return _map(inputs, lambda t: t.to(device, non_blocking=non_blocking))


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*inputs)`` for a tuple or list, ``model(**inputs)``
    for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (list, tuple)):
        return model(*inputs)
    return model(inputs)


def batch_size(inputs: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (1 for a 0-d tensor)."""
    tensors = _tensors(inputs)
    if not tensors:
        raise ValueError(f"inputs of type {type(inputs).__name__} hold no tensor; expected a "
                         "tensor, or a tuple or dict of tensors")  # fmt: skip
    first = tensors[0]
    return int(first.shape[0]) if first.dim() > 0 else 1


def first_samples(inputs: Any, n: int = 1) -> Any:
    """The first ``n`` samples of a batch (every tensor sliced along its first dimension)."""
    return _map(inputs, lambda t: t[:n] if t.dim() > 0 else t)


def repeat_sample(inputs: Any, n: int) -> Any:
    """A batch of ``n`` copies of the first sample (contiguous; for latency measurements)."""
    return _map(inputs, lambda t: t[:1].expand(n, *t.shape[1:]).contiguous() if t.dim() else t)


def channels_last(inputs: Any) -> Any:
    """Every 4-D tensor of the inputs in channels-last memory format (others unchanged)."""
    return _map(inputs, lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4
                else t)  # fmt: skip


def token_mask(inputs: Any) -> Tensor | None:
    """The ``(B, T)`` mask of real tokens (1) and padding (0) of a batch: its ``attention_mask``
    entry when it is a dict holding a 2-D one (the convention of Hugging Face tokenizers), else
    None (every position counts)."""
    if isinstance(inputs, Mapping):
        mask = inputs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2:
            return mask
    return None


def token_rows(features: Tensor, mask: Tensor | None) -> Tensor:
    """Tokens of ``features: (B, T, D)`` as rows ``(N, D)``: those where ``mask: (B, T)`` is
    non-zero, or all ``B * T`` without a mask (or with one of another shape)."""
    if mask is not None and tuple(mask.shape) == tuple(features.shape[:2]):
        return features[mask.to(features.device).bool()]
    return features.reshape(-1, features.shape[-1])
