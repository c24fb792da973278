"""Fold batch norm into the convolution or linear layer before it, for deployment.

In eval mode ``BN(conv(x)) = conv'(x)`` with the convolution's weights scaled per output channel by
``gamma / sqrt(running_var + eps)`` and its bias shifted; the batch norm then becomes identity and
its memory pass disappears. Which batch norm follows which layer is read from one traced forward
pass (the batch norm's input is the very tensor the layer returned), not from the model's code, and
every fold is checked on the example input: a fold that changes the output (the layer's output is
also used elsewhere, say) is not made.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .blocks import outputs_match
from .inputs import call_model

__all__ = ["fold_batchnorm", "fold_pairs"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def fold_pairs(model: nn.Module, example_input: Any) -> list[tuple[str, str]]:
    """``(layer, batch_norm)`` names where, in one forward pass on ``example_input`` (eval mode),
    the batch norm (running statistics, called once) normalises exactly the output of the
    convolution or linear layer (called once)."""
    return _pairs_and_output(model, example_input)[0]


@torch.no_grad()
def _pairs_and_output(model: nn.Module, example_input: Any) -> tuple[list[tuple[str, str]], Any]:
    """:func:`fold_pairs` and the model's output of that same pass."""
    produced: dict[int, tuple[str, Tensor]] = {}  # the tensor kept alive: its id stays unique
    calls: dict[str, int] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _FOLDABLE):

            def after(m: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                if isinstance(out, Tensor):
                    produced[id(out)] = (name, out)

            handles.append(module.register_forward_hook(after))
        elif isinstance(module, _BatchNorm) and module.track_running_stats:

            def before(m: nn.Module, args: tuple, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                x = args[0] if args else None
                source = produced.get(id(x)) if isinstance(x, Tensor) else None
                if source is not None and source[1] is x:
                    pairs.append((source[0], name))

            handles.append(module.register_forward_pre_hook(before))
    was_training = model.training
    model.eval()
    try:
        output = call_model(model, example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return [(a, b) for a, b in pairs if calls.get(a) == 1 and calls.get(b) == 1], output


def _fold_one(layer: nn.Module, bn: _BatchNorm) -> None:
    """Scale and shift ``layer`` in place so that it computes ``bn(layer(x))`` (eval mode)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    weight = layer.weight
    factor = scale.view(-1, *([1] * (weight.dim() - 1)))  # per output channel (dim 0)
    old_bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    new_weight = (weight.double() * factor).to(weight.dtype)
    new_bias = (old_bias * scale + shift).to(weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


@torch.no_grad()
def fold_batchnorm(
    model: nn.Module, example_input: Any, rtol: float = 1e-4, atol: float = 1e-5
) -> nn.Module:
    """A copy of ``model`` in eval mode with every batch norm that directly follows a
    convolution or linear layer folded into it (the batch norm replaced by ``nn.Identity``).

    ``example_input`` (a batch: tensor, tuple or dict) finds the pairs (:func:`fold_pairs`) and
    checks the result: folds are kept together when the output stays within ``rtol``/``atol``
    of the original's, and otherwise one at a time, each kept only if it passes. The original
    model is untouched.
    """
    model = copy.deepcopy(model).eval()
    pairs, reference = _pairs_and_output(model, example_input)

    def folded(chosen: list[tuple[str, str]]) -> nn.Module:
        new = copy.deepcopy(model)
        for layer, bn in chosen:
            _fold_one(new.get_submodule(layer), new.get_submodule(bn))
            _set(new, bn, nn.Identity())
        return new

    def same(new: nn.Module) -> bool:
        return outputs_match(call_model(new, example_input), reference, rtol, atol)

    candidate = folded(pairs)
    if same(candidate):
        return candidate
    kept: list[tuple[str, str]] = []
    for pair in pairs:
        if same(folded([*kept, pair])):
            kept.append(pair)
    return folded(kept)
