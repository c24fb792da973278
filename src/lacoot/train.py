"""The training loop: task loss plus the LaCoOT penalty, step by step and epoch by epoch.

A run checkpoints after every epoch and on SIGINT/SIGTERM (:mod:`lacoot.checkpoint`: a resumed
run ends with the same weights as an uninterrupted one) and logs every epoch
(:mod:`lacoot.trainlog`). Its options are :class:`lacoot.config.TrainConfig`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist_
from ._io import atomic_write_bytes, atomic_write_text
from .blocks import Block
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_for_resume,
    restore_directions,
    restore_rng,
    restore_schedule,
    rng_state,
    save_checkpoint,
    save_training,
    set_rng_state,
)
from .config import TrainConfig
from .device import resolve_device
from .distill import distillation_loss
from .fade import Fade
from .inputs import call_model, channels_last, first_samples, to_device
from .metrics import logits_of
from .regularizer import MAX_WEIGHT, MSWRegularizer
from .trainlog import EpochLog, EpochSums, progress_bar

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
class TrainResult:
    """Per-epoch history (one dict per epoch) and the path of the last checkpoint."""

    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    penalized: list[str] = field(default_factory=list)  # blocks regularised at the end
    faded: list[str] = field(default_factory=list)  # blocks the training ended without (fade)


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


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


@torch.no_grad()
def _evaluate(model: nn.Module, loader: Iterable, device: torch.device) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for x, y in loader:
        x, y = to_device(x, device, non_blocking=True), y.to(device, non_blocking=True)
        logits = logits_of(call_model(model, x)).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    model.train()
    return loss_sum / max(total, 1), 100.0 * correct / max(total, 1)


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


def _named(blocks: Sequence[Block], names: Sequence[str]) -> list[Block | str]:
    """The :class:`Block` of each name in ``blocks`` (the name itself where none is found)."""
    by_name = {b.name: b for b in blocks}
    return [by_name.get(n, n) for n in names]


def _penalty_on(
    model: nn.Module,
    blocks: Sequence[Block],
    targets: Sequence[str] | None,
    cfg: TrainConfig,
    steps_per_epoch: int,
    replaces: MSWRegularizer | None = None,
) -> MSWRegularizer | None:
    """The penalty on a budget's ``targets`` once chosen, else on the blocks penalised from the
    start; ``replaces`` (an earlier penalty) is closed. None for vanilla training (no hooks, no
    per-step cost). ``cfg.escalate`` acts on the blocks meant to go only (not during a budget's
    warm-up), its weights doubling in one epoch of ``steps_per_epoch`` steps (of which every
    ``cfg.penalty_every``-th computes the penalty)."""
    if replaces is not None:
        replaces.close()
    names = list(targets) if targets is not None else _penalized(blocks, cfg)
    if not names or cfg.lam <= 0:
        return None
    return MSWRegularizer(
        model,
        _named(blocks, names),
        lam=cfg.lam,
        method=cfg.method,
        n_projections=cfg.n_projections,
        n_iters=cfg.n_iters,
        seed=cfg.seed,
        gather=cfg.global_msw,
        relative=cfg.relative,
        stop_input_grad=cfg.stop_input_grad,
        distance=cfg.distance,
        escalate=cfg.escalate if targets is not None or cfg.penalize else None,
        escalate_rate=2.0 ** (cfg.penalty_every / steps_per_epoch),
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

    rng = rng_state()
    try:
        scores = score_blocks(
            model, blocks, loader, criterion=cfg.target_criterion, seed=cfg.seed, max_batches=8
        )
        example = to_device(first_samples(next(iter(loader))[0], 1), device)
        full = count_macs(model, example)
    finally:
        set_rng_state(rng)
    budget = (
        {"n_blocks": cfg.target_blocks}
        if cfg.target_blocks is not None
        else {"max_macs": cfg.target_macs}
    )
    return choose_blocks(blocks, scores, full, keep_deep=cfg.target_keep_deep, **budget)


# ------------------------------------------------------------------------------------- the loop
@dataclass
class _Run:
    """What the steps, epochs and checkpoints of one training run share."""

    model: nn.Module
    blocks: Sequence[Block]
    cfg: TrainConfig
    dev: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    steps: int  # per epoch
    out: Path | None
    meta: dict[str, Any]
    reg: MSWRegularizer | None = None
    targets: list[str] | None = None  # the blocks a budget chose (cfg.targeted), once chosen
    history: list[dict[str, Any]] = field(default_factory=list)
    net: nn.Module | None = None  # the model, wrapped in DistributedDataParallel under torchrun
    fade: Fade | None = None  # the blocks meant to go, fading out (cfg.fade), once due
    teacher: nn.Module | None = None  # distilled from (cfg.distill_weight > 0), frozen

    @property
    def main(self) -> bool:
        return dist_.info().rank == 0

    @property
    def ckpt(self) -> Path | None:
        return self.out / "checkpoint.pt" if self.out is not None else None

    @property
    def names(self) -> list[str]:
        return list(self.reg.names) if self.reg is not None else []

    @property
    def meant_to_go(self) -> list[str] | None:
        """The blocks meant to go: a budget's targets (None until chosen; the penalty covers
        every block during the warm-up), else the blocks ``cfg.penalize`` names."""
        return self.targets if self.cfg.targeted else _penalized(self.blocks, self.cfg)

    @property
    def faded(self) -> list[str]:
        """The blocks the model now computes without (their fade has reached 1)."""
        return list(self.fade.names) if self.fade is not None and self.fade.alpha == 1.0 else []

    def save(self, epoch: int, batch: int, sums: dict[str, Any] | None) -> None:
        """A checkpoint after ``batch`` steps of epoch ``epoch`` (every process takes part)."""
        regs = {"targets": self.targets, "steps": self.reg.steps if self.reg else 0,
                "weights": dict(self.reg.weights) if self.reg else {}}  # fmt: skip
        state = {
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "regularizer": regs, "epoch": epoch,
            "batch": batch, "partial": sums, "steps_per_epoch": self.steps,
            "world_size": dist_.info().world_size, "train_config": self.cfg.to_dict(),
            "history": self.history, "blocks": [b.to_dict() for b in self.blocks],
            "faded": self.faded, **self.meta,
        }  # fmt: skip
        save_training(self.ckpt, state, self.reg.directions if self.reg else {})

    def stop_flags(self, nonfinite: bool, stopper: _GracefulStop) -> tuple[bool, bool]:
        """(any process's loss non-finite, any process asked to stop): all decide alike."""
        flags = (nonfinite, stopper.signum is not None)
        if dist_.info().distributed:
            t = dist_.all_reduce(torch.tensor([float(f) for f in flags], device=self.dev), "max")
            flags = (bool(t[0] > 0), bool(t[1] > 0))
        return flags

    def interrupted(self, stopper: _GracefulStop, epoch: int, batch: int) -> TrainingInterrupted:
        signum = stopper.signum if stopper.signum is not None else int(signal.SIGTERM)
        return TrainingInterrupted(signum, self.ckpt, epoch, batch)


def _prepare(
    model: nn.Module, blocks: Sequence[Block], train_loader: Iterable, cfg: TrainConfig,
    out_dir: str | os.PathLike | None, device: str | torch.device, meta: dict[str, Any] | None,
    teacher: nn.Module | None = None,
) -> _Run:  # fmt: skip
    """Device, seed, optimiser, schedule and penalty of a fresh run."""
    where = dist_.info()
    dev = resolve_device(device)
    if cfg.sync_bn and where.distributed:
        from .syncbn import convert_sync_batchnorm

        model = convert_sync_batchnorm(model)
    model.to(dev)
    torch.manual_seed(cfg.seed + where.rank)
    steps = _len(train_loader)
    if steps is None:
        raise ValueError("train_loader has no len(); expected a sized loader")
    if steps < 1:
        raise ValueError("train_loader yields no batch; expected at least one per epoch")
    opt = _optimizer(model, cfg)
    out = Path(out_dir) if out_dir is not None else None
    run = _Run(model, blocks, cfg, dev, opt, _scheduler(opt, cfg, steps), steps, out, meta or {})
    run.reg = _penalty_on(model, blocks, None, cfg, steps)
    run.teacher = _teacher(teacher, cfg, dev)
    return run


def _teacher(teacher: nn.Module | None, cfg: TrainConfig, dev: torch.device) -> nn.Module | None:
    """The frozen teacher in eval mode on ``dev``; given exactly when ``cfg.distill_weight``
    is above 0."""
    if (teacher is None) != (cfg.distill_weight == 0):
        raise ValueError(
            f"distill_weight={cfg.distill_weight!r} with teacher="
            f"{'None' if teacher is None else type(teacher).__name__}; expected a teacher model "
            "exactly when distill_weight > 0"
        )
    if teacher is None:
        return None
    teacher = teacher.to(dev).eval()
    if cfg.channels_last:
        teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _resume(run: _Run) -> tuple[int, int, dict[str, Any] | None]:
    """Load the checkpoint into ``run``; return the epoch, the batch and the partial sums at
    which it continues."""
    state = read_for_resume(run.ckpt)
    differ = TrainConfig.differences(state.get("train_config"), run.cfg)
    if differ:
        raise CheckpointError(
            f"cannot resume {run.ckpt}: it was trained with other options: {'; '.join(differ)}; "
            "pass the options it was trained with"
        )
    run.model.load_state_dict(state["model"])
    restore_schedule(run.sched, run.opt, state, run.steps)
    epoch, batch = int(state["epoch"]), min(int(state.get("batch", 0)), run.steps)
    regs = state["regularizer"]
    if regs.get("targets") is not None:
        run.targets = list(regs["targets"])
        run.reg = _penalty_on(
            run.model, run.blocks, run.targets, run.cfg, run.steps, replaces=run.reg
        )
    if run.reg is not None:
        run.reg.steps = int(regs["steps"])
        run.reg.weights = dict(regs.get("weights", {}))
        run.reg.directions = restore_directions(state, run.dev)
    restore_rng(state, run.cfg.seed, epoch, batch)
    run.history = list(state["history"])
    return epoch, batch, state.get("partial") if batch else None


def _parallel(model: nn.Module, dev: torch.device, cfg: TrainConfig) -> nn.Module:
    """What the training steps call: ``model`` wrapped in DistributedDataParallel under torchrun,
    then compiled with ``cfg.compile`` (after the penalty's hooks are attached: compiled code
    does not run hooks added later)."""
    net = model
    if dist_.info().distributed:
        from torch.nn.parallel import DistributedDataParallel

        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            net = DistributedDataParallel(model, device_ids=[index])
        else:
            net = DistributedDataParallel(model)
    if cfg.compile:
        torch._dynamo.reset()  # forget code compiled before the current hooks
        net = torch.compile(net)
    return net


def _choose_targets_when_due(run: _Run, epoch: int, loader: Iterable, progress: bool) -> None:
    """A budget's targets, chosen once the warm-up is over; the penalty moves onto them."""
    cfg = run.cfg
    if run.reg is None or not cfg.targeted or run.targets is not None:
        return
    if epoch < min(cfg.target_warmup, cfg.epochs - 1):
        return
    run.targets = dist_.broadcast_object(
        choose_targets(run.model, run.blocks, loader, cfg, run.dev)
    )
    run.reg = _penalty_on(run.model, run.blocks, run.targets, cfg, run.steps, replaces=run.reg)
    if cfg.compile:  # new hooks: compile again
        run.net = _parallel(run.model, run.dev, cfg)
    if run.main and progress:
        print(f"lacoot: penalising only {run.targets}", file=sys.stderr)


def lam_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The penalty weight at (0-based) optimiser step ``step``: ``cfg.lam``, ramped linearly
    from ``cfg.lam / W`` at step 0 to ``cfg.lam`` at step ``W - 1`` over the ``W =
    cfg.lam_warmup * steps_per_epoch`` warm-up steps (a function of the step, so a resumed run
    goes on alike)."""
    warm = cfg.lam_warmup * steps_per_epoch
    return cfg.lam if step + 1 >= warm else cfg.lam * (step + 1) / warm


def fade_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The blend of the faded blocks at (0-based) optimiser step ``step``: 0 before the last
    ``cfg.fade`` of the ``T`` steps, rising linearly to 1 over the first half of that span, 1
    for its second half (a function of the step, as :func:`lam_at`)."""
    total = cfg.epochs * steps_per_epoch
    ramp = cfg.fade * total / 2
    if ramp <= 0:
        return 0.0
    return min(1.0, max(0.0, (step + 1 - (total - 2 * ramp)) / ramp))


def _fade_when_due(run: _Run, step: int) -> None:
    """Blend the blocks meant to go towards the identity as :func:`fade_at` says; the hooks are
    attached at the first step with a blend above 0 (after the penalty's, which keeps seeing
    the blocks' own outputs) once the blocks are known."""
    alpha = fade_at(run.cfg, step, run.steps)
    if run.fade is None:
        if alpha <= 0:
            return
        names = run.meant_to_go
        if names is None:
            return
        run.fade = Fade(run.model, _named(run.blocks, names))
        if run.cfg.compile:  # new hooks: compile again
            run.net = _parallel(run.model, run.dev, run.cfg)
    run.fade.alpha = alpha


def escalation_cap(cfg: TrainConfig, lr: float) -> float:
    """The largest weight ``cfg.escalate`` may give a block while the learning rate is ``lr``:
    ``cfg.lr / lr`` (every schedule peaks at ``cfg.lr``), between 1 and the regulariser's
    ``MAX_WEIGHT``, so the penalty's step ``lr x weight`` never exceeds its step at the peak with
    weight 1 (the weights rise as the learning rate decays; under a constant schedule they stay
    1)."""
    return min(MAX_WEIGHT, max(1.0, cfg.lr / lr)) if lr > 0 else MAX_WEIGHT


def _penalty_when_due(run: _Run, step: int) -> Tensor:
    """The penalty of (0-based) optimiser step ``step``: computed on every
    ``cfg.penalty_every``-th step with ``penalty_every`` times :func:`lam_at`'s weight (lazy
    regularisation), zero in between (the features the hooks captured are dropped)."""
    every = run.cfg.penalty_every
    if run.reg is None or step % every:
        if run.reg is not None:
            run.reg.discard()
        return torch.zeros((), device=run.dev)
    run.reg.lam = every * lam_at(run.cfg, step, run.steps)
    if run.reg.escalate is not None:
        run.reg.max_weight = escalation_cap(run.cfg, run.opt.param_groups[0]["lr"])
    return run.reg.penalty()


def _step(
    run: _Run, x: Tensor, y: Tensor, sums: dict[str, Any], stopper: _GracefulStop, epoch: int,
    k: int,
) -> tuple[Tensor, Tensor, bool]:  # fmt: skip
    """One step on the batch ``(x, y)``; returns the task loss, the penalty and whether a stop
    was asked for."""
    x, y = to_device(x, run.dev, non_blocking=True), y.to(run.dev, non_blocking=True)
    if run.cfg.channels_last:
        x = channels_last(x)
    if run.cfg.fade:
        _fade_when_due(run, epoch * run.steps + k)
    skip = run.cfg.nonfinite == "skip"  # a skipped batch must not touch BN statistics
    kept = [b.detach().clone() for b in run.model.buffers()] if skip else []
    amp = run.cfg.amp and run.dev.type == "cuda"
    with torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=amp):
        logits = logits_of(call_model(run.net if run.net is not None else run.model, x))
    task = F.cross_entropy(logits.float(), y)
    penalty = _penalty_when_due(run, epoch * run.steps + k)
    loss = _fit(run, x, logits, task, amp) + penalty
    bad_loss, stop = run.stop_flags(not bool(torch.isfinite(loss)), stopper)
    run.opt.zero_grad(set_to_none=True)
    if bad_loss:
        _nonfinite(run, task, kept, sums, epoch, k)
        return task, penalty, stop
    loss.backward()
    if run.cfg.grad_clip is not None:
        nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.grad_clip)
    run.opt.step()
    run.sched.step()
    correct = int((logits.argmax(1) == y).sum())
    distances = run.reg.last if run.reg is not None else {}
    EpochSums.add(sums, float(task.detach()), float(penalty.detach()), correct, y.numel(),
                  distances)  # fmt: skip
    return task, penalty, stop


def _fit(run: _Run, x: Any, logits: Tensor, task: Tensor, amp: bool) -> Tensor:
    """The data term of the loss: the cross-entropy ``task``, or its blend with distillation
    from the teacher (:func:`lacoot.distill.distillation_loss`)."""
    if run.teacher is None:
        return task
    with torch.no_grad(), torch.autocast(run.dev.type, dtype=torch.bfloat16, enabled=amp):
        target = logits_of(call_model(run.teacher, x))
    return distillation_loss(logits, target, task, run.cfg.distill_weight,
                             run.cfg.distill_temperature)  # fmt: skip


def _nonfinite(
    run: _Run, task: Tensor, kept: list[Tensor], sums: dict[str, Any], epoch: int, k: int
) -> None:
    """A non-finite loss on some process: stop the run (``nonfinite="stop"``, the last
    checkpoint kept) or skip the batch (``"skip"``: buffers restored, the schedule keeps its
    pace, a direction learnt from non-finite features forgotten)."""
    bad = [n for n, v in (run.reg.last.items() if run.reg else []) if not v.isfinite()]
    if run.cfg.nonfinite == "stop":
        ckpt = run.ckpt
        saved = (
            f"the last good checkpoint, {ckpt} (epoch {epoch}), is kept"
            if ckpt is not None and ckpt.is_file()
            else "no checkpoint was written yet"
        )
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch + 1}, step {k + 1} of {run.steps} (task loss "
            f"{float(task.detach()):.4g}" + (f"; non-finite block distances: {bad}" if bad else "")
            + f"); {saved}. Lower the learning rate or lambda, or pass --nonfinite skip to skip "
            "such batches"
        )  # fmt: skip
    with torch.no_grad():
        for b, old in zip(run.model.buffers(), kept, strict=True):
            b.copy_(old)
    if run.reg is not None:
        run.reg.forget(bad)
    sums["skipped"] += 1
    run.sched.step()


def _train_epoch(
    run: _Run, loader: Iterable, epoch: int, skip: int, partial: dict[str, Any] | None,
    stopper: _GracefulStop, progress: bool,
) -> tuple[dict[str, Any], float]:  # fmt: skip
    """Train one epoch from batch ``skip`` on; return its sums and its start time. A stop asked
    for mid-epoch writes a checkpoint and raises :class:`TrainingInterrupted`."""
    assert run.net is not None
    run.net.train()
    by_hand = _start_epoch(loader, epoch, skip)
    sums = dict(partial) if partial else EpochSums.new(run.names)
    t0 = time.perf_counter() - float(sums["seconds"])
    batches = islice(iter(loader), by_hand, None)
    desc = f"epoch {epoch + 1}/{run.cfg.epochs}"
    bar = progress_bar(batches, run.steps - skip, desc, progress and run.main)
    for k, (x, y) in enumerate(bar, start=skip):
        task, penalty, stop = _step(run, x, y, sums, stopper, epoch, k)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{float(task.detach()):.3f}",
                penalty=f"{float(penalty.detach()):.3f}",
                acc=f"{100.0 * sums['correct'] / max(sums['seen'], 1):.1f}",
            )
        if stop and k + 1 < run.steps:
            sums["seconds"] = time.perf_counter() - t0
            run.save(epoch, k + 1, sums)
            raise run.interrupted(stopper, epoch, k + 1)
    return sums, t0


def _end_epoch(
    run: _Run, epoch: int, sums: dict[str, Any], t0: float, val_loader: Iterable | None,
    log: EpochLog,
) -> dict[str, Any]:  # fmt: skip
    """Sum over processes, evaluate, checkpoint and log a finished epoch; return its row."""
    # DDP keeps parameters equal; make the batch-norm statistics rank 0's too, so every rank
    # evaluates and checkpoints the same model
    dist_.broadcast_(run.model.buffers())
    total = EpochSums.reduce(sums, run.names, run.dev)
    lr = run.opt.param_groups[0]["lr"]
    row = EpochSums.row(total, epoch + 1, lr, time.perf_counter() - t0)
    if total["skipped"] and run.main:
        warnings.warn(
            f"epoch {epoch + 1}: skipped {int(total['skipped'])} batches with a non-finite loss",
            RuntimeWarning,
            stacklevel=3,
        )
    if val_loader is not None:
        row["val_loss"], row["val_accuracy"] = _evaluate(run.model, val_loader, run.dev)
    row.update(EpochSums.distances(total))
    if run.reg is not None and run.reg.escalate is not None:
        row.update({f"weight/{n}": run.reg.weights.get(n, 1.0) for n in run.reg.names})
    if run.fade is not None:
        row["fade"] = run.fade.alpha
    run.history.append(row)
    if run.out is not None:
        run.save(epoch + 1, 0, None)
    log.write(run.history)
    return row


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
    teacher: nn.Module | None = None,
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
    teacher : nn.Module, optional
        The model to distil from, exactly when ``cfg.distill_weight > 0``: the data term of the
        loss is then :func:`lacoot.distill.distillation_loss` of the two models' logits (the
        teacher frozen, in eval mode). The log's ``train_loss`` stays the cross-entropy.

    Returns
    -------
    TrainResult
        With ``cfg.fade``, ``faded`` names the blocks the training ended without: the model
        comes back with them switched on again (no hook is left), and
        :func:`lacoot.remove_blocks` on them gives exactly the function trained last.

    Raises
    ------
    TrainingInterrupted
        On SIGINT or SIGTERM, after the current step and a checkpoint.
    FloatingPointError
        On a non-finite loss with ``cfg.nonfinite == "stop"``; the last checkpoint is kept.
    """
    run = _prepare(model, blocks, train_loader, cfg, out_dir, device, meta, teacher)
    start_epoch, start_batch, partial = _resume(run) if resume else (0, 0, None)
    if cfg.channels_last:
        run.model.to(memory_format=torch.channels_last)
    run.net = _parallel(run.model, run.dev, cfg)
    log = EpochLog(run.out, run.main)
    try:
        with _GracefulStop(announce=run.main) as stopper:
            for epoch in range(start_epoch, cfg.epochs):
                calib = val_loader if val_loader is not None else train_loader
                _choose_targets_when_due(run, epoch, calib, progress)
                first = epoch == start_epoch
                sums, t0 = _train_epoch(
                    run, train_loader, epoch, start_batch if first else 0,
                    partial if first else None, stopper, progress,
                )  # fmt: skip
                row = _end_epoch(run, epoch, sums, t0, val_loader, log)
                if on_epoch is not None:
                    on_epoch(row)
                if run.stop_flags(False, stopper)[1]:  # a signal during evaluation or writing
                    if epoch + 1 < cfg.epochs:
                        raise run.interrupted(stopper, epoch + 1, 0)
                    break  # the run is complete anyway
    finally:
        if run.reg is not None:
            run.reg.close()
        if run.fade is not None:
            run.fade.close()
        log.close()
    return TrainResult(
        history=run.history, checkpoint=run.ckpt, penalized=run.names, faded=run.faded
    )
