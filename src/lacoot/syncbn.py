"""Synchronised batch normalisation that works on CPU (gloo) as well as CUDA (nccl).

``torch.nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be on
GPU"). :class:`SyncBatchNorm` computes the batch statistics of all ranks of a process group with
two autograd-aware all-reduces, which work with any backend:

1. the per-channel sum and the element count give the global mean;
2. the per-channel sum of squared deviations from that mean gives the global biased variance
   (two passes, so no catastrophic cancellation as with ``E[x^2] - E[x]^2``).

Gradients flow through both all-reduces (their backward is an all-reduce of the gradients), so
each rank's input gradient is the gradient of the *sum* of all ranks' losses, exactly as for one
process holding the whole batch; the parameter gradients are local and are summed over ranks by
the usual data-parallel gradient all-reduce (DDP).

:func:`convert_sync_batchnorm` swaps every batch-norm layer of a model for this class.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


def _all_reduce_sum(tensor: Tensor, group: Any) -> Tensor:
    """Differentiable all-reduce (sum) of ``tensor`` over ``group``; returns a new tensor."""
    from torch.distributed import _functional_collectives as fcol

    out = fcol.all_reduce(tensor.contiguous(), "sum", group)
    wait = getattr(out, "wait", None)
    return wait() if callable(wait) else out


class SyncBatchNorm(_BatchNorm):
    r"""Batch normalisation whose training statistics span all ranks of a process group.

    Drop-in replacement for ``nn.BatchNorm1d/2d/3d`` and ``nn.SyncBatchNorm`` that also runs on
    CPU tensors (gloo) as well as CUDA ones (nccl). In training mode, with ``torch.distributed``
    initialised and more than one rank in ``process_group``, the per-channel mean and biased
    variance are those of the union of the batches of all ranks (which may differ in size,
    even be empty on some ranks), and the running statistics are updated with them (variance
    unbiased with the global count). In every other case (eval mode, no process group, a group of
    one) the forward is exactly ``nn.BatchNorm``'s, i.e. ``F.batch_norm``.

    Parameters
    ----------
    num_features : int
        Number of channels ``C``.
    eps : float, optional
        Added to the variance for numerical stability.
    momentum : float or None, optional
        Running-statistics momentum; ``None`` gives a cumulative moving average (factor
        ``1 / num_batches_tracked``).
    affine : bool, optional
        Learn a per-channel scale ``weight`` and shift ``bias``, each of shape ``(C,)``.
    track_running_stats : bool, optional
        Keep ``running_mean``/``running_var`` (shape ``(C,)``) and ``num_batches_tracked``.
        Without them batch statistics are used in eval mode too (not synchronised there).
    process_group : torch.distributed.ProcessGroup or None, optional
        Group over which statistics are synchronised; ``None`` is the default (world) group.
    device, dtype : optional
        Factory arguments for the parameters and buffers.

    Notes
    -----
    Input and output have shape ``(N, C, *)`` with any number (zero or more) of trailing
    dimensions; ``N`` may differ between ranks. In synchronised training every rank of the group
    must call ``forward`` the same number of times, and must also run the corresponding
    ``backward`` calls if any does, since each forward issues two collectives and each backward
    two more. Statistics are accumulated in at least float32 (half/bfloat16 inputs are upcast
    and the output cast back). One host read of the global element count per forward checks that
    there is more than one value per channel.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device=device,
            dtype=dtype,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"SyncBatchNorm expected input of shape (N, C, *) with at least 2 dimensions, "
                f"got shape {tuple(input.shape)}"
            )
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm expected input of shape (N, {self.num_features}, *) "
                f"(num_features={self.num_features} channels in dimension 1), "
                f"got shape {tuple(input.shape)}"
            )

    def _sync_group(self) -> Any | None:
        """The group to synchronise over in this forward, or ``None`` for plain batch norm."""
        if not self.training:
            return None
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        if dist.get_world_size(group) <= 1:
            return None
        return group

    def forward(self, input: Tensor) -> Tensor:
        """Normalise ``input`` per channel.

        Parameters
        ----------
        input : Tensor
            Shape ``(N, C, *)``.

        Returns
        -------
        Tensor
            Shape ``(N, C, *)``, dtype of ``input``.

        Raises
        ------
        ValueError
            If ``input`` has fewer than 2 dimensions or ``C != num_features``, or if there is
            only one value per channel over all ranks in synchronised training.
        """
        self._check_input_dim(input)
        group = self._sync_group()
        if group is None:
            return super().forward(input)  # exactly nn.BatchNorm's forward (F.batch_norm)
        return self._sync_forward(input, group)

    def _sync_forward(self, input: Tensor, group: Any) -> Tensor:
        """Training forward with statistics all-reduced over ``group``; input ``(N, C, *)``."""
        c = self.num_features
        reduce_dims = [0, *range(2, input.dim())]
        stat_shape = (1, c) + (1,) * (input.dim() - 2)  # broadcasts a (C,) vector over (N, C, *)
        acc_dtype = torch.promote_types(input.dtype, torch.float32)
        x = input.to(acc_dtype)

        # Pass 1: global mean from (per-channel sum, element count per channel), one all-reduce.
        local_count = input.numel() // c if c > 0 else 0
        count_t = torch.full((1,), float(local_count), dtype=acc_dtype, device=input.device)
        packed = _all_reduce_sum(torch.cat([x.sum(dim=reduce_dims), count_t]), group)  # (C + 1,)
        total, count = packed[:c], packed[c]
        n = int(round(count.item()))
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {n} over all ranks "
                f"(local input shape {tuple(input.shape)})"
            )
        mean = total / n  # (C,)

        # Pass 2: global biased variance from squared deviations to the global mean.
        centered = x - mean.reshape(stat_shape)
        sq_dev = _all_reduce_sum((centered * centered).sum(dim=reduce_dims), group)  # (C,)
        var = sq_dev / n  # (C,)

        self._update_running_stats(mean.detach(), var.detach(), n)

        out = centered * torch.rsqrt(var + self.eps).reshape(stat_shape)
        if self.weight is not None:
            out = out * self.weight.to(acc_dtype).reshape(stat_shape)
        if self.bias is not None:
            out = out + self.bias.to(acc_dtype).reshape(stat_shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        """Momentum (or cumulative) update of running stats with ``(C,)`` global batch stats."""
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        unbiased = var * (n / (n - 1))
        self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

    @classmethod
    def convert_sync_batchnorm(
        cls, module: nn.Module, process_group: Any | None = None
    ) -> nn.Module:
        """Alias of :func:`convert_sync_batchnorm`, mirroring ``nn.SyncBatchNorm``'s API."""
        return convert_sync_batchnorm(module, process_group)


def _convert_one(bn: _BatchNorm, process_group: Any | None) -> SyncBatchNorm:
    """A :class:`SyncBatchNorm` sharing ``bn``'s parameters, buffers and training mode."""
    tensors = [t for t in (bn.weight, bn.running_mean) if t is not None]
    if any(nn.parameter.is_lazy(t) for t in tensors):
        raise ValueError(
            f"cannot convert an uninitialised lazy batch norm ({type(bn).__name__}); "
            "run a forward pass first"
        )
    if process_group is None:
        process_group = getattr(bn, "process_group", None)  # keep an nn.SyncBatchNorm's group
    ref = tensors[0] if tensors else None
    new = SyncBatchNorm(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        process_group=process_group,
        device=None if ref is None else ref.device,
        dtype=None if ref is None else ref.dtype,
    )
    # Same objects, like torch's converter: optimisers built on the old model stay valid and
    # requires_grad, device and dtype are kept.
    if bn.affine:
        new.weight = bn.weight
        new.bias = bn.bias
    if bn.track_running_stats:
        new.running_mean = bn.running_mean
        new.running_var = bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    if hasattr(bn, "qconfig"):
        new.qconfig = bn.qconfig
    new.train(bn.training)
    return new


def convert_sync_batchnorm(module: nn.Module, process_group: Any | None = None) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by a :class:`SyncBatchNorm`.

    Every ``nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``,
    subclasses) that is not already a :class:`SyncBatchNorm` is swapped, recursively, for one
    with the same hyper-parameters, training mode and the *same* ``weight``/``bias`` parameters
    and ``running_mean``/``running_var``/``num_batches_tracked`` buffers (so state-dict keys and
    values, devices, dtypes and ``requires_grad`` are unchanged). Works in place on children.

    Parameters
    ----------
    module : nn.Module
        Model (or a single batch-norm layer) to convert.
    process_group : torch.distributed.ProcessGroup or None, optional
        Group the new layers synchronise over; ``None`` keeps an ``nn.SyncBatchNorm``'s own
        group and otherwise means the default (world) group.

    Returns
    -------
    nn.Module
        ``module`` itself with converted children, or a new :class:`SyncBatchNorm` if ``module``
        is itself a batch-norm layer (as ``nn.SyncBatchNorm.convert_sync_batchnorm``).

    Raises
    ------
    ValueError
        On an uninitialised lazy batch-norm layer.
    """
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = _convert_one(module, process_group)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
