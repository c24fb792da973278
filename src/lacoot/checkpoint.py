"""Training checkpoints: the format, atomic saving, safe loading, random states and resuming.

A checkpoint holds everything the next epoch depends on (weights, optimiser, schedule, AMP scaler,
the regulariser's ascent directions and step count, the random number generators of every
process), so a resumed run ends with the same weights as an uninterrupted one. Checkpoints are
written atomically (temporary file, then rename) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist_
from ._io import atomic_write_bytes
from ._version import __version__

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "safe_torch_load",
    "rng_state",
    "set_rng_state",
    "save_training",
    "read_for_resume",
    "restore_schedule",
    "restore_rng",
    "restore_directions",
    "weights_mismatch",
    "load_trained_weights",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, not a lacoot checkpoint, or does not fit."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise ``state`` with ``torch.save`` and write it atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "lacoot_version": __version__, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(
    path: str | os.PathLike, what: str, writer: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear line for each way it fails: no
    such file, a folder, not a file ``torch.save`` wrote (or a truncated one), or a file holding
    Python objects whose loading would run code (a whole model saved with ``torch.save``).
    ``what`` names the file (``"checkpoint"``) and ``writer`` the command that writes one."""
    path = Path(path)
    expected = f"expected a file written by {writer}"
    if path.is_dir():
        hint = " (such as " + str(path / "checkpoint.pt") + ")" if what == "checkpoint" else ""
        raise CheckpointError(f"{what} {str(path)!r} is a folder; {expected}{hint}")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist; {expected}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{what} {str(path)!r} is not a file torch.save wrote, or it is truncated; {expected}"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        holds = f" ({found[1]})" if found else ""
        raise CheckpointError(
            f"{what} {str(path)!r} holds Python objects{holds}, such as a whole model saved "
            f"with torch.save(model); lacoot does not load them, since loading would run code "
            f"from the file; {expected}"
        ) from None
    except Exception as exc:  # a damaged archive
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read safely ({_plain(first)}); {expected}"
        ) from None


def _plain(text: str) -> str:
    """``text`` without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a lacoot checkpoint safely (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    state = safe_torch_load(path, "checkpoint", "lacoot train", map_location)
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(f"{str(path)!r} is not a lacoot checkpoint (no format/model entry)")
    if state["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {state['format']}; this lacoot reads up to "
            f"{CHECKPOINT_FORMAT}"
        )
    return state


def weights_mismatch(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str:
    """How a state dict differs from a model's: counts and the first names of each kind."""
    want = model.state_dict()
    missing = [k for k in want if k not in weights]
    extra = [k for k in weights if k not in want]
    shaped = [
        f"{k} {tuple(weights[k].shape)} (model {tuple(want[k].shape)})"
        for k in want
        if k in weights and tuple(weights[k].shape) != tuple(want[k].shape)
    ]
    parts = []
    for what, names in (("missing", missing), ("unexpected", extra), ("of another shape", shaped)):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            parts.append(f"{len(names)} weights {what}: {shown}")
    return "; ".join(parts) or "the weights do not load"


def load_trained_weights(
    model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike, fits: str,
    expected: str = "",
) -> None:  # fmt: skip
    """Load a checkpoint's trained weights (``state["model"]``) into ``model``, every key matched.

    Weights that do not fit are a :class:`CheckpointError` naming the checkpoint ``path``, what
    they should fit (``fits``), how they differ and, when given, what was ``expected``.
    """
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError:
        why = weights_mismatch(model, state["model"])
        hint = f"; expected {expected}" if expected else ""
        msg = f"checkpoint {str(path)!r} does not fit {fits} ({why}){hint}"
        raise CheckpointError(msg) from None


def faded_blocks(state: dict[str, Any]) -> list[str]:
    """The blocks the checkpointed model computes without: a fade took them to the identity.

    Read from ``state["faded"]``; a checkpoint written before lacoot recorded it says so through
    its log instead: a blend of 1 in the last logged epoch faded the budget's targets.
    """
    if "faded" in state:
        return list(state["faded"] or [])
    history = state.get("history") or []
    targets = (state.get("regularizer") or {}).get("targets")
    if history and history[-1].get("fade") == 1.0 and targets:
        return list(targets)
    return []


def rng_state() -> dict[str, Any]:
    """This process's torch (and CUDA) random states."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training(
    path: Path | None, state: dict[str, Any], directions: dict[str, torch.Tensor]
) -> None:
    """Write a training checkpoint; every process calls it.

    The random states and the regulariser ``directions`` of every process are gathered into
    ``state`` (``rng``/``rng_ranks``, ``regularizer.directions``/``directions_ranks``) and rank 0
    writes it to ``path`` (nothing is written when ``path`` is None).
    """
    rngs = dist_.all_gather_object(rng_state())
    dirs = dist_.all_gather_object({k: v.detach().cpu() for k, v in directions.items()})
    if path is not None and dist_.info().rank == 0:
        regs = {**state["regularizer"], "directions": dirs[0], "directions_ranks": dirs}
        save_checkpoint(path, {**state, "regularizer": regs, "rng": rngs[0], "rng_ranks": rngs})
    dist_.barrier()


def read_for_resume(path: Path | None) -> dict[str, Any]:
    """The checkpoint to resume from: rank 0 reads it and every process gets the same state (no
    shared disk needed); a missing or unreadable file is a :class:`CheckpointError` on all."""
    if path is None:
        raise CheckpointError("cannot resume without an output folder")
    payload: tuple[str, Any] | None = None
    if dist_.info().rank == 0:
        try:
            if not path.is_file():
                raise CheckpointError(f"cannot resume: no checkpoint at {path}")
            payload = ("ok", load_checkpoint(path, map_location="cpu"))
        except CheckpointError as exc:
            payload = ("error", str(exc))
    payload = dist_.broadcast_object(payload)
    assert payload is not None
    if payload[0] == "error":
        raise CheckpointError(payload[1])
    return payload[1]


def restore_schedule(
    sched: torch.optim.lr_scheduler.LRScheduler,
    opt: torch.optim.Optimizer,
    state: dict[str, Any],
    steps_per_epoch: int,
) -> None:
    """Load the optimiser and the schedule; a run resumed with another number of steps per
    epoch (another world size) fast-forwards a fresh schedule to the same point instead."""
    if int(state.get("steps_per_epoch", steps_per_epoch)) == steps_per_epoch:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        return
    done = int(state["epoch"]) * steps_per_epoch + int(state.get("batch", 0))
    with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done):
            sched.step()
    opt.load_state_dict(state["optimizer"])  # the learning rate the old run had reached


def _same_world(state: dict[str, Any]) -> bool:
    return int(state.get("world_size", 1)) == dist_.info().world_size


def restore_rng(state: dict[str, Any], seed: int, epoch: int, batch: int) -> None:
    """This process's random state at the checkpoint; a process the saved run did not have
    gets a fresh stream tied to the seed, its rank and the position."""
    rank = dist_.info().rank
    rngs = state.get("rng_ranks") if _same_world(state) else None
    if rngs:
        set_rng_state(rngs[rank])
    elif rank == 0:
        set_rng_state(state["rng"])
    else:
        torch.manual_seed(seed + rank + 7919 * (epoch + 1) + batch)


def restore_directions(state: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """This process's regulariser directions at the checkpoint (rank 0's when the world size
    changed)."""
    regs = state["regularizer"]
    dirs = regs.get("directions_ranks") if _same_world(state) else None
    mine = dirs[dist_.info().rank] if dirs else regs["directions"]
    return {k: v.to(device) for k, v in mine.items()}
