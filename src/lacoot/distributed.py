"""Data-parallel training with ``torch.distributed``: the process group, ranks, collectives.

``lacoot train`` runs unchanged under ``torchrun``: :func:`init_from_env` reads the variables
torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), joins the process
group (``gloo`` on CPU, ``nccl`` on CUDA) and picks this process's device. Outside torchrun
every helper here is a no-op for a single process, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .device import resolve_device

__all__ = [
    "DistInfo",
    "info",
    "init_from_env",
    "shutdown",
    "env_rank",
    "is_main",
    "barrier",
    "broadcast_object",
    "all_gather_object",
    "broadcast_",
    "all_reduce",
    "gather_batch",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def info() -> DistInfo:
    """This process's rank and world size (``0`` of ``1`` when not distributed)."""
    if not _active():
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r}; expected an integer") from None


def init_from_env(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device, bool]:
    """Join the process group described by torchrun's environment, if there is one.

    Parameters
    ----------
    device : str or torch.device
        The requested device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under torchrun
        with CUDA each process takes ``cuda:LOCAL_RANK`` (an explicit index is an error).

    Returns
    -------
    (DistInfo, torch.device, bool)
        This process's place, its device, and whether this call created the process group
        (then :func:`shutdown` should be called at the end).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    dev = resolve_device(device)
    if world_size <= 1:
        return DistInfo(), dev, False
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} with WORLD_SIZE={world_size}; expected 0 <= RANK < size")
    if dev.type == "cuda":
        if dev.index is not None and str(device) != "auto":
            raise ValueError(
                f"device={str(device)!r} under torchrun; use 'cuda' or 'auto' (each process "
                "takes cuda:LOCAL_RANK)"
            )
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices; "
                "start at most that many processes per node"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        created = True
    return DistInfo(rank, world_size, local_rank), dev, created


def env_rank() -> int:
    """This process's rank as torchrun announced it (``RANK``; 0 outside torchrun), valid
    before the process group exists and after it is gone."""
    return _env_int("RANK", 0)


def _failing() -> bool:
    """Whether an exception is propagating (then a barrier could wait for a dead peer)."""
    import sys

    return sys.exc_info()[0] is not None


def shutdown(created: bool = True) -> None:
    """Leave the process group (only when ``created``, i.e. :func:`init_from_env` made it)."""
    if created and dist.is_available() and dist.is_initialized():
        if not _failing():
            dist.barrier()  # leave together: gloo aborts a process whose peer hangs up first
        dist.destroy_process_group()


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return info().rank == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small states such as checkpoints)."""
    if not _active():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_(tensors: Any, src: int = 0) -> None:
    """Overwrite ``tensors`` (an iterable of tensors) with rank ``src``'s values, in place."""
    if not _active():
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t, src=src)


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """``t`` reduced element-wise over ranks with ``op`` (``"sum"`` or ``"max"``): a new tensor,
    no gradient. Identity in a single process."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op={op!r}; expected 'sum' or 'max'")
    if not _active():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=ops[op])
    return t


def gather_batch(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0, with gradients flowing back to each rank.

    ``x: (B_r, ...)`` on rank ``r`` -> ``(sum_r B_r, ...)`` in rank order, identical on every
    rank. Ranks may hold different ``B_r``. The backward pass sums the gradients that all ranks
    send to a rank's slice (each rank's loss depends on every rank's samples), so with DDP's
    gradient averaging a penalty computed on the gathered batch gets exactly the gradient the
    same penalty would get in one process holding the whole batch.
    """
    if not _active():
        return x
    import torch.distributed._functional_collectives as fc  # autograd-aware collectives

    group = dist.group.WORLD
    n = torch.tensor([x.shape[0]], device=x.device)
    everyone = [torch.empty_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, n)
    sizes = [int(s) for s in everyone]
    x = x.contiguous()
    if len(set(sizes)) == 1:
        out = fc.all_gather_single_autograd(x, 0, group)
        return out.wait() if hasattr(out, "wait") else out
    # unequal batches: pad to the largest, gather, then drop the padding
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    out = fc.all_gather_single_autograd(padded, 0, group)
    out = out.wait() if hasattr(out, "wait") else out
    chunks = out.split(max(sizes))
    return torch.cat([c[:n] for c, n in zip(chunks, sizes, strict=True)])
