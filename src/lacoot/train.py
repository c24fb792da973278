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
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import __version__
from . import distributed as dist_
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
    "TrainingInterrupted",
]

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, not a lacoot checkpoint, or does not fit."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after finishing a step and writing a checkpoint.

    Attributes: ``signum`` (the signal), ``checkpoint`` (path or None), ``epoch`` (completed
    epochs) and ``batch`` (batches done in the next epoch) at which ``--resume`` continues.
    """

    def __init__(self, signum: int, checkpoint: Path | None, epoch: int, batch: int) -> None:
        self.signum, self.checkpoint, self.epoch, self.batch = signum, checkpoint, epoch, batch
        where = f"epoch {epoch + 1}, after batch {batch}" if batch else f"after epoch {epoch}"
        saved = (
            f"checkpoint written to {checkpoint}; continue with --resume"
            if checkpoint is not None
            else "no checkpoint (no output folder)"
        )
        super().__init__(f"{signal.Signals(signum).name} received: stopped {where}; {saved}")


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
    nonfinite: str = "stop"  # a non-finite loss: "stop" the run, or "skip" the batch
    global_msw: bool = False  # under DDP: MSW on the global batch (features gathered)
    sync_bn: bool = False  # under DDP: batch statistics over the global batch
    relative: bool = False  # each MSW divided by its block input's principal spread (scale-free)
    penalize: tuple[str, ...] = ()  # glob patterns: regularise only the blocks they match
    target_blocks: int | None = None  # budget: after target_warmup epochs, penalise only K blocks
    target_macs: float | None = None  # budget: ... only the blocks that bring MACs to this
    # fraction (1 or None: no budget)
    target_warmup: int = 1  # epochs with every block penalised before the targets are chosen
    # (at most epochs - 1: the targets are penalised during the last epoch at least)
    target_criterion: str = "msw_rel"  # ranks the blocks when the targets are chosen

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        self.penalize = tuple(str(p) for p in self.penalize)
        self.validate()

    @property
    def targeted(self) -> bool:
        """Whether the penalised blocks are chosen by a budget during training."""
        return self.target_blocks is not None or (
            self.target_macs is not None and self.target_macs < 1
        )

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
            (
                self.nonfinite in ("stop", "skip"),
                f"nonfinite={self.nonfinite!r}; expected 'stop' or 'skip'",
            ),
            (
                self.target_blocks is None or not self.target_macs or self.target_macs >= 1,
                f"target_blocks={self.target_blocks!r} and target_macs={self.target_macs!r}; "
                "expected at most one budget",
            ),
            (
                self.target_blocks is None or self.target_blocks >= 1,
                f"target_blocks={self.target_blocks!r}; expected a count >= 1",
            ),
            (
                self.target_macs is None or 0 < self.target_macs <= 1,
                f"target_macs={self.target_macs!r}; expected a fraction in (0, 1] (1: no budget)",
            ),
            (
                isinstance(self.target_warmup, int) and 0 <= self.target_warmup,
                f"target_warmup={self.target_warmup!r}; expected an integer >= 0 (epochs)",
            ),
            (
                not (self.targeted and self.penalize),  # penalize with target_macs=1 is fine
                "penalize and target_blocks/target_macs both choose the penalised blocks; "
                "expected one of them",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        from .criteria import list_criteria

        if self.target_criterion not in list_criteria():
            raise ValueError(
                f"target_criterion={self.target_criterion!r} is not known; expected one of "
                f"{', '.join(list_criteria())}"
            )

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

    @classmethod
    def same_run(cls, saved: Any, cfg: TrainConfig) -> bool:
        """Whether a checkpoint's ``train_config`` mapping describes the run ``cfg`` (options
        added to lacoot after the checkpoint was written take their defaults)."""
        try:
            return cls.from_dict(dict(saved)).to_dict() == cfg.to_dict()
        except (TypeError, ValueError):
            return False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        d["penalize"] = list(self.penalize)
        return d


@dataclass
class TrainResult:
    """Per-epoch history (one dict per epoch) and the path of the last checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    penalized: list[str] = field(default_factory=list)  # blocks regularised at the end


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


def _start_epoch(loader: Any, epoch: int, start_batch: int) -> int:
    """Tell the loader (or its sampler, e.g. ``DistributedSampler``) the epoch; return how many
    batches must still be skipped by hand (0 when the loader can start at ``start_batch``)."""
    if hasattr(loader, "set_epoch"):
        if start_batch:
            try:
                loader.set_epoch(epoch, start_batch=start_batch)
                return 0
            except TypeError:
                pass
        loader.set_epoch(epoch)
    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)
    return start_batch


class _GracefulStop:
    """SIGINT/SIGTERM set a flag checked after every step (a second Ctrl-C stops at once)."""

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            if self.announce:
                print(
                    f"lacoot: {signal.Signals(signum).name} received; finishing the current step "
                    "and writing a checkpoint (Ctrl-C again stops at once)",
                    file=sys.stderr,
                    flush=True,
                )

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


def _restore_scheduler(
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


def _new_sums(names: Sequence[str]) -> dict[str, Any]:
    return {"loss": 0.0, "penalty": 0.0, "correct": 0, "seen": 0, "skipped": 0, "seconds": 0.0,
            "dist": {n: 0.0 for n in names}, "count": {n: 0 for n in names}}  # fmt: skip


def _reduce_sums(sums: dict[str, Any], names: Sequence[str], dev: torch.device) -> dict[str, Any]:
    """Sum the per-rank epoch totals over ranks (identity in a single process)."""
    if not dist_.info().distributed:
        return sums
    keys = ("loss", "penalty", "correct", "seen", "skipped")
    flat = [float(sums[k]) for k in keys]
    flat += [sums["dist"][n] for n in names] + [float(sums["count"][n]) for n in names]
    total = dist_.all_reduce(torch.tensor(flat, dtype=torch.float64, device=dev)).tolist()
    out = dict(sums)
    out.update(zip(keys, total[: len(keys)], strict=True))
    m = len(names)
    out["dist"] = dict(zip(names, total[len(keys) : len(keys) + m], strict=True))
    out["count"] = dict(zip(names, total[len(keys) + m :], strict=True))
    return out


def _penalized(blocks: Sequence[Block], cfg: TrainConfig) -> list[str]:
    """Names of the blocks penalised from the start: all, or those ``cfg.penalize`` matches."""
    from .blocks import match_name

    names = [b.name for b in blocks]
    if not cfg.penalize:
        return names
    chosen = [n for n in names if any(match_name(n, p) for p in cfg.penalize)]
    if not chosen:
        raise ValueError(
            f"penalize={list(cfg.penalize)} matches none of the blocks {names}; expected glob "
            "patterns of block names such as 'layer*.2'"
        )
    return chosen


def _penalty_on(
    model: nn.Module,
    blocks: Sequence[Block],
    targets: Sequence[str] | None,
    cfg: TrainConfig,
    replaces: MSWRegularizer | None = None,
) -> MSWRegularizer | None:
    """The penalty on a budget's ``targets`` once chosen, else on the blocks penalised from the
    start; ``replaces`` (an earlier penalty) is closed. None for vanilla training (no hooks, no
    per-step cost)."""
    if replaces is not None:
        replaces.close()
    names = list(targets) if targets is not None else _penalized(blocks, cfg)
    if not names or cfg.lam <= 0:
        return None
    return MSWRegularizer(
        model,
        names,
        lam=cfg.lam,
        method=cfg.method,
        n_projections=cfg.n_projections,
        n_iters=cfg.n_iters,
        seed=cfg.seed,
        gather=cfg.global_msw,
        relative=cfg.relative,
    )


def choose_targets(
    model: nn.Module, blocks: Sequence[Block], loader: Iterable, cfg: TrainConfig, device: Any
) -> list[str]:
    """The blocks ``cfg``'s budget (``target_blocks`` or ``target_macs``) removes first when
    ranked by ``cfg.target_criterion`` on (at most 8 batches of) ``loader``.

    The random number generators are left as they were, so a run that chooses here and one that
    resumes with the choice read from its checkpoint go on alike.
    """
    from .collapse import choose_blocks
    from .criteria import score_blocks
    from .profile import count_macs

    rng = _rng_state()
    try:
        scores = score_blocks(
            model, blocks, loader, criterion=cfg.target_criterion, seed=cfg.seed, max_batches=8
        )
        example = next(iter(loader))[0][:1].to(device)
        full = count_macs(model, example)
    finally:
        _set_rng_state(rng)
    if cfg.target_blocks is not None:
        return choose_blocks(blocks, scores, full, n_blocks=cfg.target_blocks)
    return choose_blocks(blocks, scores, full, max_macs=cfg.target_macs)


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
        Trained in place, moved to ``device``. Under ``torch.distributed`` it is wrapped in
        ``DistributedDataParallel`` for the run (and with ``cfg.sync_bn`` its batch-norm layers
        are replaced in place by :class:`lacoot.syncbn.SyncBatchNorm`).
    blocks : list of Block
        The collapsible blocks to regularise (from :func:`lacoot.find_blocks`); with
        ``cfg.lam == 0`` they are not hooked and no distance is logged.
    train_loader, val_loader : iterable of (inputs, labels)
        Batches; a loader with ``set_epoch(epoch)`` (or whose ``sampler`` has one, such as
        ``DistributedSampler``) is told the epoch before each pass. Under ``torch.distributed``
        ``train_loader`` yields this rank's shard; every rank evaluates ``val_loader`` whole.
    cfg : TrainConfig
    out_dir : path, optional
        Where ``checkpoint.pt`` (after every epoch, and on SIGINT/SIGTERM), ``log.json`` and
        ``log.csv`` go, and TensorBoard event files (``tensorboard/``) when tensorboard is
        installed. Only rank 0 writes.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (written at the end of an epoch or, after a
        signal, in the middle of one): the same final weights as an uninterrupted run with the
        same world size. Another world size resumes too (same epoch and batch position; the
        schedule is fast-forwarded when the number of steps per epoch differs).
    meta : dict, optional
        Extra entries stored in the checkpoint (e.g. how to rebuild the model).
    progress : bool
        Show a progress bar per epoch (tqdm, when installed; rank 0 only).
    on_epoch : callable, optional
        Called with each epoch's log row (on every rank; the rows are identical).

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingInterrupted
        On SIGINT or SIGTERM, after the current step and a checkpoint.
    FloatingPointError
        On a non-finite loss with ``cfg.nonfinite == "stop"``; the last checkpoint is kept.
    """
    where = dist_.info()
    main = where.rank == 0
    dev = resolve_device(device)
    if cfg.sync_bn and where.distributed:
        from .syncbn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    model.to(dev)
    out = Path(out_dir) if out_dir is not None else None
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    torch.manual_seed(cfg.seed + where.rank)
    steps_per_epoch = _len(train_loader)
    if steps_per_epoch is None:
        raise ValueError("train_loader has no len(); expected a sized loader")
    if steps_per_epoch < 1:
        raise ValueError("train_loader yields no batch; expected at least one per epoch")
    opt = _optimizer(model, cfg)
    sched = _scheduler(opt, cfg, steps_per_epoch)
    use_amp = cfg.amp and dev.type == "cuda"
    targets: list[str] | None = None  # the blocks a budget chose (cfg.targeted), once chosen
    reg = _penalty_on(model, blocks, targets, cfg)
    names = list(reg.names) if reg is not None else []
    history: list[dict[str, Any]] = []
    start_epoch = start_batch = 0
    partial: dict[str, Any] | None = None
    if resume:
        if ckpt_path is None:
            raise CheckpointError("cannot resume without an output folder")
        payload: tuple[str, Any] | None = None
        if main:  # rank 0 reads, every rank gets the same state (no shared disk needed)
            try:
                if not ckpt_path.is_file():
                    raise CheckpointError(f"cannot resume: no checkpoint at {ckpt_path}")
                payload = ("ok", load_checkpoint(ckpt_path, map_location="cpu"))
            except CheckpointError as exc:
                payload = ("error", str(exc))
        payload = dist_.broadcast_object(payload)
        assert payload is not None
        if payload[0] == "error":
            raise CheckpointError(payload[1])
        state = payload[1]
        if not TrainConfig.same_run(state.get("train_config"), cfg):
            raise CheckpointError(
                f"cannot resume {ckpt_path}: it was trained with another configuration"
            )
        model.load_state_dict(state["model"])
        _restore_scheduler(sched, opt, state, steps_per_epoch)
        start_epoch, start_batch = int(state["epoch"]), int(state.get("batch", 0))
        start_batch = min(start_batch, steps_per_epoch)
        saved_world = int(state.get("world_size", 1))
        regs = state["regularizer"]
        if regs.get("targets") is not None:
            targets = list(regs["targets"])
            reg = _penalty_on(model, blocks, targets, cfg, replaces=reg)
        if reg is not None:
            reg.steps = int(regs["steps"])
            dirs = regs.get("directions_ranks") if saved_world == where.world_size else None
            mine = dirs[where.rank] if dirs else regs["directions"]
            reg.directions = {k: v.to(dev) for k, v in mine.items()}
        rngs = state.get("rng_ranks") if saved_world == where.world_size else None
        if rngs:
            _set_rng_state(rngs[where.rank])
        elif where.rank == 0:
            _set_rng_state(state["rng"])
        else:  # a new rank: a fresh stream tied to the seed, rank and position
            torch.manual_seed(cfg.seed + where.rank + 7919 * (start_epoch + 1) + start_batch)
        history = list(state["history"])
        partial = state.get("partial") if start_batch else None
    net: nn.Module = model
    if where.distributed:
        from torch.nn.parallel import DistributedDataParallel

        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            net = DistributedDataParallel(model, device_ids=[index])
        else:
            net = DistributedDataParallel(model)

    def checkpoint(epoch: int, batch: int, sums: dict[str, Any] | None) -> None:
        """All ranks take part (their random states and directions are gathered)."""
        rngs = dist_.all_gather_object(_rng_state())
        dirs = dist_.all_gather_object(
            {k: v.detach().cpu() for k, v in reg.directions.items()} if reg else {}
        )
        if main and ckpt_path is not None:
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "regularizer": {
                        "targets": targets,
                        "steps": reg.steps if reg else 0,
                        "directions": dirs[0],
                        "directions_ranks": dirs,
                    },
                    "rng": rngs[0],
                    "rng_ranks": rngs,
                    "epoch": epoch,
                    "batch": batch,
                    "partial": sums,
                    "steps_per_epoch": steps_per_epoch,
                    "world_size": where.world_size,
                    "train_config": cfg.to_dict(),
                    "history": history,
                    "blocks": [b.to_dict() for b in blocks],
                    **(meta or {}),
                },
            )
        dist_.barrier()

    def stop_flags(nonfinite: bool, stopper: _GracefulStop) -> tuple[bool, bool]:
        """(any rank's loss non-finite, any rank asked to stop): every rank decides alike."""
        flags = (nonfinite, stopper.signum is not None)
        if where.distributed:
            t = dist_.all_reduce(torch.tensor([float(f) for f in flags], device=dev), "max")
            flags = (bool(t[0] > 0), bool(t[1] > 0))
        return flags

    def interrupted(stopper: _GracefulStop, epoch: int, batch: int) -> TrainingInterrupted:
        signum = stopper.signum if stopper.signum is not None else int(signal.SIGTERM)
        return TrainingInterrupted(signum, ckpt_path, epoch, batch)

    board = _tensorboard(out) if main else None
    try:
        with _GracefulStop(announce=main) as stopper:
            for epoch in range(start_epoch, cfg.epochs):
                if reg is not None and cfg.targeted and targets is None:
                    if epoch >= min(cfg.target_warmup, cfg.epochs - 1):
                        targets = dist_.broadcast_object(
                            choose_targets(
                                model,
                                blocks,
                                val_loader if val_loader is not None else train_loader,
                                cfg,
                                dev,
                            )
                        )
                        reg = _penalty_on(model, blocks, targets, cfg, replaces=reg)
                        if main and progress:
                            print(f"lacoot: penalising only {targets}", file=sys.stderr)
                names = list(reg.names) if reg is not None else []
                net.train()
                first = epoch == start_epoch
                skip = start_batch if first else 0
                by_hand = _start_epoch(train_loader, epoch, skip)
                sums = dict(partial) if first and partial else _new_sums(names)
                t0 = time.perf_counter() - float(sums["seconds"])
                batches: Iterable = islice(iter(train_loader), by_hand, None)
                bar = _progress(
                    batches,
                    steps_per_epoch - skip,
                    f"epoch {epoch + 1}/{cfg.epochs}",
                    progress and main,
                )
                for k, (x, y) in enumerate(bar, start=skip):
                    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                    if cfg.nonfinite == "skip":  # a skipped batch must not touch BN statistics
                        kept_buffers = [b.detach().clone() for b in model.buffers()]
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                        logits = net(x)
                    task = F.cross_entropy(logits.float(), y)
                    penalty = reg.penalty() if reg is not None else torch.zeros((), device=dev)
                    loss = task + penalty
                    bad_loss, stop = stop_flags(not bool(torch.isfinite(loss)), stopper)
                    opt.zero_grad(set_to_none=True)
                    if bad_loss:
                        bad = [n for n, v in (reg.last.items() if reg else []) if not v.isfinite()]
                        if cfg.nonfinite == "stop":
                            kept = (
                                f"the last good checkpoint, {ckpt_path} (epoch {epoch}), is kept"
                                if ckpt_path is not None and ckpt_path.is_file()
                                else "no checkpoint was written yet"
                            )
                            raise FloatingPointError(
                                f"non-finite loss at epoch {epoch + 1}, step {k + 1} of "
                                f"{steps_per_epoch} (task loss {float(task.detach()):.4g}"
                                + (f"; non-finite block distances: {bad}" if bad else "")
                                + f"); {kept}. Lower the learning rate or lambda, or pass "
                                "--nonfinite skip to skip such batches"
                            )
                        with torch.no_grad():
                            for b, kept in zip(model.buffers(), kept_buffers, strict=True):
                                b.copy_(kept)
                        if reg is not None:
                            reg.forget(bad)  # a direction from non-finite features is useless
                        sums["skipped"] += 1
                        sched.step()  # the schedule keeps its pace
                    else:
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
                                sums["dist"][name] += float(v)
                                sums["count"][name] += 1
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(
                            loss=f"{float(task.detach()):.3f}",
                            penalty=f"{float(penalty.detach()):.3f}",
                            acc=f"{100.0 * sums['correct'] / max(sums['seen'], 1):.1f}",
                        )
                    if stop and k + 1 < steps_per_epoch:
                        sums["seconds"] = time.perf_counter() - t0
                        checkpoint(epoch, k + 1, sums)
                        raise interrupted(stopper, epoch, k + 1)
                # DDP keeps parameters equal; make the batch-norm statistics rank 0's too, so
                # every rank evaluates and checkpoints the same model
                dist_.broadcast_(model.buffers())
                total = _reduce_sums(sums, names, dev)
                seen = max(total["seen"], 1)
                row: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "lr": opt.param_groups[0]["lr"],
                    "train_loss": total["loss"] / seen,
                    "train_penalty": total["penalty"] / seen,
                    "train_accuracy": 100.0 * total["correct"] / seen,
                    "seconds": time.perf_counter() - t0,
                }
                if total["skipped"]:
                    row["skipped_batches"] = int(total["skipped"])
                    if main:
                        warnings.warn(
                            f"epoch {epoch + 1}: skipped {int(total['skipped'])} batches with a "
                            "non-finite loss",
                            RuntimeWarning,
                            stacklevel=2,
                        )
                if val_loader is not None:
                    row["val_loss"], row["val_accuracy"] = _evaluate(model, val_loader, dev)
                for name in names:
                    if total["count"][name]:
                        row[f"msw/{name}"] = total["dist"][name] / total["count"][name]
                history.append(row)
                if board is not None:
                    for key, value in row.items():
                        if key != "epoch":
                            board.add_scalar(key, value, epoch + 1)
                    board.flush()
                if out is not None:
                    checkpoint(epoch + 1, 0, None)
                    if main:
                        _write_logs(out, history)
                if on_epoch is not None:
                    on_epoch(row)
                if stop_flags(False, stopper)[1]:  # a signal during evaluation or writing
                    if epoch + 1 < cfg.epochs:
                        raise interrupted(stopper, epoch + 1, 0)
                    break  # the run is complete anyway
    finally:
        if reg is not None:
            reg.close()
        if board is not None:
            board.close()
    return TrainResult(history=history, checkpoint=ckpt_path, penalized=names)
