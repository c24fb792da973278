"""The training loop: task loss plus the LaCoOT penalty, checkpoints every epoch, exact resume.

A checkpoint holds everything the next epoch depends on (weights, optimiser, schedule, AMP scaler,
the regulariser's ascent directions and step count, the random number generators), so a resumed run
ends with the same weights as an uninterrupted one. Checkpoints are written atomically (temporary
file, then rename) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from ._io import atomic_write_bytes, atomic_write_text
from .blocks import Block
from .regularizer import MSWRegularizer

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
    "atomic_write_text",
    "resolve_device",
    "CheckpointError",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, not a lacoot checkpoint, or does not fit."""


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (units in the comments)."""

    epochs: int = 10  # passes over the training split
    lam: float = 0.1  # weight of the MSW penalty; 0 trains the vanilla model
    optimizer: str = "sgd"  # "sgd" (momentum, nesterov) or "adamw"
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "multistep"  # "multistep", "cosine", "onecycle" or "constant"
    milestones: tuple[int, ...] = (80, 120)  # epochs at which multistep multiplies lr by gamma
    gamma: float = 0.1
    seed: int = 0
    amp: bool = True  # mixed precision (bfloat16 autocast) on CUDA only
    method: str = "ascent"  # MSW estimator: "ascent" or "random"
    n_projections: int = 50  # random directions of the "random" estimator
    n_iters: int = 2  # ascent steps per training step
    grad_clip: float | None = None  # max gradient norm, None for no clipping

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range value."""
        checks: list[tuple[bool, str]] = [
            (
                isinstance(self.epochs, int) and self.epochs > 0,
                f"epochs={self.epochs!r}; expected an integer > 0",
            ),
            (self.lam >= 0 and math.isfinite(self.lam), f"lam={self.lam!r}; expected lam >= 0"),
            (
                self.optimizer in ("sgd", "adamw"),
                f"optimizer={self.optimizer!r}; expected 'sgd' or 'adamw'",
            ),
            (self.lr > 0, f"lr={self.lr!r}; expected lr > 0"),
            (0 <= self.momentum < 1, f"momentum={self.momentum!r}; expected 0 <= momentum < 1"),
            (self.weight_decay >= 0, f"weight_decay={self.weight_decay!r}; expected >= 0"),
            (
                self.schedule in ("multistep", "cosine", "onecycle", "constant"),
                f"schedule={self.schedule!r}; expected 'multistep', 'cosine', 'onecycle' or "
                "'constant'",
            ),
            (0 < self.gamma <= 1, f"gamma={self.gamma!r}; expected 0 < gamma <= 1"),
            (
                self.method in ("ascent", "random"),
                f"method={self.method!r}; expected 'ascent' or 'random'",
            ),
            (self.n_projections >= 1, f"n_projections={self.n_projections!r}; expected >= 1"),
            (self.n_iters >= 0, f"n_iters={self.n_iters!r}; expected >= 0"),
            (
                self.grad_clip is None or self.grad_clip > 0,
                f"grad_clip={self.grad_clip!r}; expected > 0",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; unknown keys are an error naming them and the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training options {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


@dataclass
class TrainResult:
    """Per-epoch history (one dict per epoch) and the path of the last checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; an unavailable CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Serialise ``state`` with ``torch.save`` and write it atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "lacoot_version": __version__, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a lacoot checkpoint safely (``weights_only=True``: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, code-carrying pickle...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read safely ({first}); expected a file written "
            "by lacoot"
        ) from None
    if not isinstance(state, dict) or "format" not in state or "model" not in state:
        raise CheckpointError(f"{str(path)!r} is not a lacoot checkpoint (no format/model entry)")
    if state["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format {state['format']}; this lacoot reads up to "
            f"{CHECKPOINT_FORMAT}"
        )
    return state


# ------------------------------------------------------------------------------------- training
def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule (epoch milestones are converted to steps)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "multistep":
        steps = [m * steps_per_epoch for m in cfg.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=steps, gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def _set_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


def _progress(iterable: Iterable, total: int | None, desc: str, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    model.train()
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


def _tensorboard(out_dir: Path | None) -> Any:
    """A TensorBoard writer into ``out_dir/tensorboard`` when tensorboard is installed."""
    if out_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _write_logs(out_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(out_dir / "log.json", json.dumps(history, indent=2))
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out_dir / "log.csv", buffer.getvalue())


def train(
    model: nn.Module,
    blocks: Sequence[Block],
    train_loader: Iterable[tuple[Tensor, Tensor]],
    val_loader: Iterable[tuple[Tensor, Tensor]] | None,
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` with cross-entropy plus ``cfg.lam`` times the mean MSW of ``blocks``.

    Parameters
    ----------
    model : nn.Module
        Trained in place, moved to ``device``.
    blocks : list of Block
        The collapsible blocks to regularise (from :func:`lacoot.find_blocks`); with
        ``cfg.lam == 0`` they are not hooked and no distance is logged.
    train_loader, val_loader : iterable of (inputs, labels)
        Batches; a loader with ``set_epoch(epoch)`` is told the epoch before each pass.
    cfg : TrainConfig
    out_dir : path, optional
        Where ``checkpoint.pt`` (after every epoch), ``log.json`` and ``log.csv`` go, and
        TensorBoard event files (``tensorboard/``) when tensorboard is installed.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt``: same final weights as an uninterrupted run.
    meta : dict, optional
        Extra entries stored in the checkpoint (e.g. how to rebuild the model).
    progress : bool
        Show a progress bar per epoch (tqdm, when installed).
    on_epoch : callable, optional
        Called with each epoch's log row.

    Returns
    -------
    TrainResult
    """
    dev = resolve_device(device)
    model.to(dev)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    torch.manual_seed(cfg.seed)
    steps_per_epoch = _len(train_loader)
    if steps_per_epoch is None:
        raise ValueError("train_loader has no len(); expected a sized loader")
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg, steps_per_epoch)
    use_amp = cfg.amp and dev.type == "cuda"
    reg = (
        MSWRegularizer(
            model,
            blocks,
            lam=cfg.lam,
            method=cfg.method,
            n_projections=cfg.n_projections,
            n_iters=cfg.n_iters,
            seed=cfg.seed,
        )
        if blocks and cfg.lam > 0
        else None  # vanilla training: no penalty, and no per-step distance cost either
    )
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if resume:
        if ckpt_path is None or not ckpt_path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint at {ckpt_path}")
        state = load_checkpoint(ckpt_path, map_location=dev)
        if state.get("train_config") != cfg.to_dict():
            raise CheckpointError(
                f"cannot resume {ckpt_path}: it was trained with another configuration"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if reg is not None and state["regularizer"]["directions"]:
            reg.steps = int(state["regularizer"]["steps"])
            reg.directions = {k: v.to(dev) for k, v in state["regularizer"]["directions"].items()}
        _set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
    board = _tensorboard(out)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            _set_epoch(train_loader, epoch)
            t0 = time.perf_counter()
            sums = {"loss": 0.0, "penalty": 0.0, "correct": 0, "seen": 0}
            dist_sums: dict[str, float] = {}
            dist_counts: dict[str, int] = {}
            bar = _progress(
                train_loader, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", progress
            )
            for x, y in bar:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(x)
                task = F.cross_entropy(logits.float(), y)
                penalty = reg.penalty() if reg is not None else torch.zeros((), device=dev)
                loss = task + penalty
                if not torch.isfinite(loss):
                    bad = [n for n, v in (reg.last.items() if reg else []) if not torch.isfinite(v)]
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch + 1}, step {reg.steps if reg else '?'}"
                        + (f"; non-finite block distances: {bad}" if bad else "")
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                n = y.numel()
                sums["loss"] += float(task.detach()) * n
                sums["penalty"] += float(penalty.detach()) * n
                sums["correct"] += int((logits.argmax(1) == y).sum())
                sums["seen"] += n
                if reg is not None:
                    for name, v in reg.last.items():
                        dist_sums[name] = dist_sums.get(name, 0.0) + float(v)
                        dist_counts[name] = dist_counts.get(name, 0) + 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(
                        loss=f"{float(task.detach()):.3f}",
                        penalty=f"{float(penalty.detach()):.3f}",
                        acc=f"{100.0 * sums['correct'] / sums['seen']:.1f}",
                    )
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": sums["loss"] / max(sums["seen"], 1),
                "train_penalty": sums["penalty"] / max(sums["seen"], 1),
                "train_accuracy": 100.0 * sums["correct"] / max(sums["seen"], 1),
                "seconds": time.perf_counter() - t0,
            }
            if val_loader is not None:
                row["val_loss"], row["val_accuracy"] = _evaluate(model, val_loader, dev)
            for name in sorted(dist_sums, key=lambda k: [b.name for b in blocks].index(k)):
                row[f"msw/{name}"] = dist_sums[name] / dist_counts[name]
            history.append(row)
            if board is not None:
                for key, value in row.items():
                    if key != "epoch":
                        board.add_scalar(key, value, epoch + 1)
                board.flush()
            if out is not None:
                assert ckpt_path is not None
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "regularizer": {
                            "steps": reg.steps if reg else 0,
                            "directions": dict(reg.directions) if reg else {},
                        },
                        "rng": _rng_state(),
                        "epoch": epoch + 1,
                        "train_config": cfg.to_dict(),
                        "history": history,
                        "blocks": [b.to_dict() for b in blocks],
                        **(meta or {}),
                    },
                )
                _write_logs(out, history)
            if on_epoch is not None:
                on_epoch(row)
    finally:
        if reg is not None:
            reg.close()
        if board is not None:
            board.close()
    return TrainResult(history=history, checkpoint=ckpt_path)
