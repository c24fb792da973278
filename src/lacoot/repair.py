"""Training-free repair of a collapsed model: re-estimated batch norm, closed-form linear patches.

Removing blocks shifts the distribution of every later feature, so the running statistics of the
batch-norm layers after a removed block no longer match what they normalise. Two repairs use only
a small calibration set and never take a gradient step:

* :func:`recalibrate_bn` re-estimates every batch-norm layer's running mean and variance;
* :func:`linear_patch` replaces each removed block by the least-squares affine channel mixing from
  its input to its output (:class:`LinearPatch`: a 1x1 convolution on ``(B, C, H, W)`` features,
  an ``nn.Linear(D, D)`` on ``(B, D)`` or ``(B, T, D)``), fitted in closed form, block after block.

:func:`repair` applies ``"none"``, ``"bn"``, ``"linear"`` (patches, then batch-norm
re-estimation) or ``"fused"`` (one least-squares map per run of removed layers folded into the
layer before it, :mod:`lacoot.fuse`: no extra module, the repair for a library's models that must
stay normal models of their library) to the original model and the names of the blocks to remove.

A patch costs ``C * C`` MACs per position and ``C * C + C`` parameters. It is not folded into a
neighbouring layer: in a residual network the patched tensor feeds both the skip path and the next
block's first layer, and folding is only valid when its one consumer is a linear layer, which
cannot be known without model-specific code. Two consecutive patches cannot be merged in general
either, since the tensor between them may have other consumers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .adapters import adapter_for
from .blocks import (
    Block,
    _check_exists,
    _check_not_nested,
    _names,
    _split,
    flow_tensor,
    identity_blocks,
    remove_blocks,
)
from .config import CollapseConfig
from .inputs import batch_size, call_model, first_samples, to_device
from .profile import model_device
from .regularizer import StopForward, block_io_hooks, run_hooked

__all__ = ["REPAIRS", "LinearPatch", "check_repair", "linear_patch", "recalibrate_bn", "repair"]

REPAIRS = ("none", "bn", "linear", "fused")


def check_repair(method: str, option: str = "repair") -> None:
    """Raise ``ValueError`` naming ``option`` unless ``method`` is one of :data:`REPAIRS`."""
    if method not in REPAIRS:
        raise ValueError(f"{option}={method!r} is not known; expected one of {', '.join(REPAIRS)}")


def _check_n_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples={n_samples!r}; expected an int >= 1")


def _inputs(loader: Iterable[Any], n_samples: int) -> Iterator[Any]:
    """Inputs of the loader's ``(inputs, targets)`` batches (a tensor, tuple or dict), the last
    one cut so that exactly n_samples pass."""
    seen = 0
    for batch in loader:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        x = first_samples(x, n_samples - seen)
        if batch_size(x) == 0:
            continue
        seen += batch_size(x)
        yield x
        if seen >= n_samples:
            return


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


class _Moments:
    """Per-channel count, mean and sum of squared deviations of ``(N, C, *)`` inputs, merged
    exactly across batches (Chan et al.), in float64."""

    def __init__(self) -> None:
        self.calls = 0
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        x = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N * spatial)
        n, mean = x.shape[1], x.mean(1)
        m2 = (x - mean[:, None]).square().sum(1)
        self.calls += 1
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * n / total)
        self.count = total

    def write(self, bn: _BatchNorm) -> None:
        assert self.mean is not None and self.m2 is not None
        bn.running_mean.copy_(self.mean)
        bn.running_var.copy_(self.m2 / max(self.count - 1, 1))  # unbiased, as torch stores it
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.fill_(self.calls)


def recalibrate_bn(
    model: nn.Module, loader: Iterable[Any], n_samples: int = CollapseConfig.calib_samples
) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on calibration data.

    Every ``torch.nn.modules.batchnorm._BatchNorm`` that tracks running statistics
    (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, subclasses) and is called in the forward pass gets
    the exact mean and unbiased variance, per channel, of all the inputs it saw over the first
    ``n_samples`` calibration samples (batches merged exactly, whatever their sizes), and
    ``num_batches_tracked`` = the number of batches it normalised. During the pass, as in
    ``torch.optim.swa_utils.update_bn``, batch-norm layers are in train mode (they normalise with
    batch statistics) and every other module is in eval mode (no dropout).

    Parameters
    ----------
    model : nn.Module
        Left untouched (weights, buffers, training mode).
    loader : iterable
        Batches ``(inputs, labels)`` (labels unused) or bare input tensors; ``inputs`` of shape
        ``(B, ...)`` are moved to the model's device. The batch that crosses ``n_samples`` is cut.
    n_samples : int
        Calibration samples to use, ``>= 1``.

    Returns
    -------
    nn.Module
        The copy, with the training mode of every module as in ``model``. Weights are unchanged;
        a model without batch norm gives an unchanged copy (the loader is not read). Batch-norm
        layers not called in the pass keep their statistics.

    Notes
    -----
    As in training, a batch-norm layer in train mode rejects a batch with one value per channel,
    e.g. a last batch of one sample on ``(B, D)`` features.

    Raises
    ------
    ValueError
        ``n_samples < 1``, or the loader yields no sample.
    """
    _check_n_samples(n_samples)
    new = copy.deepcopy(model)
    bns = {
        name: m
        for name, m in new.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    }
    if not bns:
        return new
    moments = {name: _Moments() for name in bns}
    handles = [
        bn.register_forward_pre_hook(lambda m, args, mom=moments[name]: mom.add(args[0]))
        for name, bn in bns.items()
    ]
    modes, device, seen = _modes(new), model_device(new), 0
    new.eval()
    for bn in bns.values():
        bn.train()
    try:
        with torch.no_grad():
            for x in _inputs(loader, n_samples):
                call_model(new, to_device(x, device))
                seen += batch_size(x)
    finally:
        for h in handles:
            h.remove()
        _restore_modes(new, modes)
    if seen == 0:
        raise ValueError("the calibration loader yielded no sample; expected at least one batch")
    with torch.no_grad():
        for name, bn in bns.items():
            if moments[name].calls:
                moments[name].write(bn)
    return new


class LinearPatch(nn.Module):
    """Affine channel mixing that stands in for a removed block: ``x -> map(x)``.

    Parameters
    ----------
    channels : int
        ``C`` (or ``D``): input and output channels.
    conv : bool
        ``map`` is ``nn.Conv2d(C, C, 1)`` for ``(B, C, H, W)`` features if true, else
        ``nn.Linear(D, D)`` acting on the last dimension of ``(B, D)`` or ``(B, T, D)``.

    Notes
    -----
    Like :class:`lacoot.blocks.CollapsedBlock`, the forward accepts the extra arguments the caller
    passes to the block (masks, flags) and maps the flowing one: ``flow`` (the block's
    ``lacoot_flow``) or its first tensor argument.
    """

    def __init__(self, channels: int, conv: bool = False, flow: int | str | None = None) -> None:
        super().__init__()
        self.channels, self.conv, self.flow = int(channels), bool(conv), flow
        self.map: nn.Module = (
            nn.Conv2d(channels, channels, 1) if conv else nn.Linear(channels, channels)
        )

    @classmethod
    def from_affine(
        cls, weight: Tensor, bias: Tensor, conv: bool = False, flow: int | str | None = None
    ) -> LinearPatch:
        """Patch computing ``y = weight @ x + bias`` per position; ``weight: (C, C)``,
        ``bias: (C,)``, on their device and dtype."""
        patch = cls(weight.shape[1], conv, flow).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            patch.map.weight.copy_(weight.reshape(patch.map.weight.shape))
            patch.map.bias.copy_(bias)
        return patch

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        x, _ = flow_tensor(args, kwargs, self.flow)
        if x is None:
            raise TypeError("a linear patch maps the tensor flowing through its block; it was "
                            "given none")  # fmt: skip
        return self.map(x)


class _Normal:
    """Centred normal equations ``Sxx = XcᵀXc``, ``Sxy = XcᵀYc`` and the means, accumulated over
    batches of rows ``x: (N, D)``, ``y: (N, D)`` by exact merging, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mx = self.my = self.sxx = self.sxy = torch.zeros(0)

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double(), y.double()
        n, mx, my = x.shape[0], x.mean(0), y.mean(0)
        xc, yc = x - mx, y - my
        sxx, sxy = xc.T @ xc, xc.T @ yc
        if self.count == 0:
            self.count, self.mx, self.my, self.sxx, self.sxy = n, mx, my, sxx, sxy
            return
        total = self.count + n
        dx, dy, w = mx - self.mx, my - self.my, self.count * n / total
        self.sxx = self.sxx + sxx + w * torch.outer(dx, dx)
        self.sxy = self.sxy + sxy + w * torch.outer(dx, dy)
        self.mx, self.my = self.mx + dx * (n / total), self.my + dy * (n / total)
        self.count = total

    def solve(self, ridge: float) -> tuple[Tensor, Tensor]:
        """``weight (D_out, D_in)`` and ``bias (D_out,)``; the ridge ``ridge * trace(Sxx) / D``
        acts on the weight only, and ``ridge = 0`` gives the minimum-norm least squares."""
        d = self.sxx.shape[0]
        a = self.sxx + (ridge * self.sxx.trace() / d) * torch.eye(
            d, dtype=self.sxx.dtype, device=self.sxx.device
        )
        m = None
        if ridge > 0:
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) == 0:
                m = torch.cholesky_solve(self.sxy, chol)
        if m is None:
            m = torch.linalg.pinv(a, hermitian=True) @ self.sxy
        return m.T, self.my - self.mx @ m


def _capture(model: nn.Module, name: str, x: Any, output: bool) -> Tensor:
    """The input (or output) of block ``name`` when ``model`` runs on ``x``; the forward stops
    right after the block."""
    seen: list[Tensor] = []

    def grab(_: str, block_in: Tensor, block_out: Tensor) -> None:
        seen.append(block_out if output else block_in)
        raise StopForward

    run_hooked(model, x, block_io_hooks(model, [name], grab))
    if not seen:
        raise ValueError(f"block {name!r} was not called in the forward pass")
    return seen[0]


def _execution_order(model: nn.Module, names: list[str], x: Any) -> list[str]:
    """``names`` in the order their blocks run on ``x``, after checking each can be patched."""
    order: list[str] = []

    def record(name: str, block_in: Tensor, block_out: Tensor) -> None:
        if block_in.shape != block_out.shape:
            raise ValueError(
                f"block {name!r} maps shape {tuple(block_in.shape)} to {tuple(block_out.shape)}; "
                "a linear patch needs equal input and output shapes"
            )
        if block_in.dim() not in (2, 3, 4) or not block_in.is_floating_point():
            raise ValueError(
                f"block {name!r} takes a {block_in.dtype} tensor of shape "
                f"{tuple(block_in.shape)}; a linear patch needs float (B, D), (B, T, D) or "
                "(B, C, H, W) features"
            )
        order.append(name)

    handles = block_io_hooks(model, names, record)
    try:
        call_model(model, x)
    finally:
        for h in handles:
            h.remove()
    for name in names:
        if order.count(name) != 1:
            raise ValueError(
                f"block {name!r} is called {order.count(name)} times per forward; expected once"
            )
    return order


def _rows(t: Tensor) -> Tensor:
    """Observations of channel mixing: ``(B, C, H, W) -> (B*H*W, C)``, ``(..., D) -> (-1, D)``."""
    return t.movedim(1, -1).reshape(-1, t.shape[1]) if t.dim() == 4 else t.reshape(-1, t.shape[-1])


def _fit_patch(
    model: nn.Module, new: nn.Module, name: str, batches: list[Any], ridge: float
) -> LinearPatch:
    """Patch for ``name``: input as seen in ``new`` (earlier blocks patched), target = output of
    the original ``model``, on the same batches."""
    device, normal = model_device(model), _Normal()
    x_in = None
    for x in batches:
        x = to_device(x, device)
        target = _capture(model, name, x, output=True)
        x_in = _capture(new, name, x, output=False)
        normal.add(_rows(x_in), _rows(target))
    assert x_in is not None
    weight, bias = normal.solve(ridge)
    flow = getattr(model.get_submodule(name), "lacoot_flow", None)
    return LinearPatch.from_affine(
        weight.to(x_in.dtype), bias.to(x_in.dtype), conv=x_in.dim() == 4, flow=flow
    )


def linear_patch(
    model: nn.Module,
    names: Iterable[str | Block],
    loader: Iterable[Any],
    n_samples: int = CollapseConfig.calib_samples,
    ridge: float = 1e-4,
) -> nn.Module:
    """A copy of ``model`` with each named block replaced by a closed-form :class:`LinearPatch`.

    Each patch is the least-squares affine map (weight and bias) from the block's input to its
    output over every position of the first ``n_samples`` calibration samples: one observation per
    spatial position of ``(B, C, H, W)`` features, per token of ``(B, T, D)``, per sample of
    ``(B, D)``. Blocks are fitted in execution order (recorded by one forward pass): the input of
    the i-th block is the one seen in the copy where the earlier blocks are already patched, the
    target is the original model's output of that block on the same batch. Both models run in eval
    mode; the loader is read once and its batches are kept in memory. Solved in float64 from the
    centred normal equations with ``ridge * trace(XcᵀXc) / D`` added to the diagonal (the bias is
    not regularised).

    Parameters
    ----------
    model : nn.Module
        The original model; left untouched (its mode is restored after the passes).
    names : iterable of str or Block
        Blocks to patch; each must be called once and map one float tensor to one of the same
        shape.
    loader : iterable
        Batches ``(inputs, labels)`` (labels unused) or bare inputs ``(B, ...)``.
    n_samples : int
        Calibration samples, ``>= 1``; the batch that crosses it is cut.
    ridge : float
        Relative ridge ``>= 0``; ``0`` gives the minimum-norm least-squares solution, which
        reproduces a block that is itself affine channel mixing to float precision.

    Returns
    -------
    nn.Module
        The patched copy, with every module's training mode as in ``model`` (a patch takes that
        of its block). With no name, a plain copy.

    Raises
    ------
    ValueError
        An unknown or nested block name, a block whose output shape differs from its input's or
        that is not called once, ``ridge < 0``, ``n_samples < 1``, or an empty loader.
    """
    names = _names(names)
    if not ridge >= 0:
        raise ValueError(f"ridge={ridge!r} is negative or NaN; expected ridge >= 0")
    _check_n_samples(n_samples)
    for name in names:
        _check_exists(model, name)
    _check_not_nested(names)
    new = copy.deepcopy(model)
    if not names:
        return new
    batches = list(_inputs(loader, n_samples))
    if not batches:
        raise ValueError("the calibration loader yielded no sample; expected at least one batch")
    modes, new_modes = _modes(model), _modes(new)
    model.eval()
    new.eval()
    try:
        with torch.no_grad():
            for name in _execution_order(model, names, to_device(batches[0], model_device(model))):
                patch = _fit_patch(model, new, name, batches, ridge).eval()
                parent, child = _split(name)
                setattr(new.get_submodule(parent), child, patch)
    finally:
        _restore_modes(model, modes)
    for name in names:
        new.get_submodule(name).train(new_modes[name])
    _restore_modes(new, new_modes)
    return new


def _check_patchable(model: nn.Module, names: list[str]) -> None:
    """Refuse patches inside layer lists that the model's library needs to stay plain lists of
    its layers (:mod:`lacoot.adapters`): a patch there breaks its cache and its reload."""
    strict = adapter_for(model).delete_in(model)
    inside = [n for n in names if _split(n)[0] in strict]
    if inside:
        raise ValueError(
            f"repair 'linear' would put patch modules among the layers {inside} of "
            f"{type(model).__name__}, which its library's cache and save/reload cannot hold; "
            "use repair 'fused' (the maps folded into the layers kept)"
        )


def repair(
    model: nn.Module,
    removed: Iterable[str | Block],
    loader: Iterable[Any] | None = None,
    method: str = "bn",
    n_samples: int = CollapseConfig.calib_samples,
    *,
    collapsed: nn.Module | None = None,
    identities: Iterable[str] = (),
) -> nn.Module:
    """The collapsed and repaired model, from the original full model and the blocks to remove.

    Parameters
    ----------
    model : nn.Module
        The original (full) model; left untouched.
    removed : iterable of str or Block
        Blocks to remove.
    loader : iterable, optional
        Calibration batches ``(inputs, labels)``; required unless ``method="none"``.
    method : {"none", "bn", "linear", "fused"}
        ``"fused"``: :func:`lacoot.fuse.fused_linear` (maps folded into the layers kept; no batch
        norm re-estimation). ``"none"``: :func:`lacoot.blocks.remove_blocks` only.
        ``"bn"``: removal, then
        :func:`recalibrate_bn`. ``"linear"``: :func:`linear_patch` in place of each block, then
        :func:`recalibrate_bn`. With no removed block, ``"bn"`` and ``"linear"`` still re-estimate
        the batch norm of the full model (a valid repair of it).
    n_samples : int
        Calibration samples for each step.
    collapsed : nn.Module, optional
        ``remove_blocks(model, removed, ...)`` already built and checked (as a sweep has it):
        the ``"none"`` and ``"bn"`` repairs start from it instead of removing again.
    identities : iterable of str
        Blocks the training already replaced by the identity (faded out,
        :class:`lacoot.fade.Fade`): the layers after them learnt on their input, so ``"linear"``
        puts no patch in their place (a patch would bring back the block's own output) but
        :class:`lacoot.blocks.CollapsedBlock`, and fits the other patches on the model without
        them.

    Returns
    -------
    nn.Module
        A new model.

    Raises
    ------
    ValueError
        Unknown method, missing loader, or an error of the steps above.
    """
    check_repair(method, "method")
    if method != "none" and loader is None:
        raise ValueError(f"method={method!r} needs a calibration loader; got loader=None")
    names = _names(removed)
    if method == "fused":
        from .fuse import fused_linear

        return fused_linear(model, names, loader, n_samples)[0]
    if method == "linear":
        _check_patchable(model, names)
        gone = [n for n in names if n in set(identities)]
        base = identity_blocks(model, gone) if gone else model
        patched = linear_patch(base, [n for n in names if n not in gone], loader, n_samples)
        return recalibrate_bn(patched, loader, n_samples)
    if collapsed is None:
        example = None
        if loader is not None:  # a few samples to check each deletion (remove_blocks)
            example = to_device(first_samples(next(iter(loader))[0], 2), model_device(model))
        collapsed = remove_blocks(model, names, example)
    return collapsed if method == "none" else recalibrate_bn(collapsed, loader, n_samples)
