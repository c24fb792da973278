"""Run a function in several processes joined by a gloo process group on this machine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world_size: int, fn: Callable[..., Any], store: str, out: str, args) -> None:
    torch.set_num_threads(1)  # two ranks on two cores: no oversubscription
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # nobody leaves while a peer still talks
    finally:
        dist.destroy_process_group()
    # Skip interpreter finalisation: gloo's worker threads can still hold tensors whose release
    # then aborts the process (SIGABRT, "terminate called without an active exception").
    os._exit(0)


def run_ranks(fn: Callable[..., Any], world_size: int = 2, args: tuple = ()) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes (gloo, CPU).

    ``fn`` must be a module-level function; its return values (anything ``torch.save`` can
    write, tensors included) come back as a list indexed by rank. A failing rank fails the call.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp) / "store")
        mp.spawn(_entry, args=(world_size, fn, store, tmp, args), nprocs=world_size, join=True)
        return [
            torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]
