"""What the collapse benchmarks share: their jobs' options and configuration, training a model
(resumably), training a shallow net from scratch, sweeping a checkpoint every way through the
pipeline's own sweep, and what a job records of its environment and training time.

``collapse_quality.py``, ``headline.py`` and ``finetune.py`` build on these, so a model is
configured and measured the same way wherever its figures appear.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model, loadavg

from lacoot.blocks import Block, remove_blocks
from lacoot.checkpoint import faded_blocks, load_checkpoint
from lacoot.collapse import stages, sweep
from lacoot.config import CollapseConfig, RunConfig
from lacoot.criteria import list_criteria
from lacoot.device import resolve_device
from lacoot.metrics import Memoized, top1_accuracy
from lacoot.pipeline import (
    _sweep_orders,
    build_model,
    model_from_checkpoint,
    prepare_data,
    run_training,
)
from lacoot.profile import count_macs
from lacoot.train import train

REPAIRS = ("none", "bn", "linear")


PLAIN = {"lam": 0.0, "target_macs": None, "fade": 0.0}  # vanilla: no penalty, no budget, no fade


def add_job_args(p: argparse.ArgumentParser, device: str = "cpu") -> None:
    """The options every collapse benchmark takes for its jobs (read by :func:`job_config`)."""
    p.add_argument("--model", default="resnet20")
    p.add_argument("--model-args", type=json.loads, default={}, help="JSON constructor args")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=device)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--calib", type=int, default=2048, help="calibration images of a repair")


def job_config(args: argparse.Namespace, seed: int, **values: Any) -> RunConfig:
    """A benchmark job's configuration: the options of :func:`add_job_args` in ``args``,
    ``seed``, no progress bars, and ``values`` on top."""
    base = {"model": args.model, "model_args": dict(args.model_args), "dataset": args.dataset,
            "data_dir": args.data_dir, "seed": seed, "device": args.device,
            "progress": False}  # fmt: skip
    return RunConfig.from_dict(base | values)


def spread_order(blocks: list[Block]) -> list[str]:
    """One block from each stage (:func:`lacoot.collapse.stages`) in turn, stages from the
    deepest, the deepest remaining block first: the removal order of the deepest-first shallow
    nets trained from scratch. Its first ``len(stages)`` names are the last block of each stage
    (the blocks the LaCoOT paper penalises)."""
    stacks = [list(g) for g in reversed(stages(blocks))]
    order: list[str] = []
    while any(stacks):
        for stack in stacks:
            if stack:
                order.append(stack.pop().name)
    return order


def git_commit(root: Path | None = None) -> str:
    """The repository's ``HEAD`` commit, with ``-dirty`` when tracked files differ from it;
    ``unknown`` outside a git checkout. ``$LACOOT_COMMIT`` overrides it (a copy of the code run
    where its repository is not, such as an exported tree on another machine)."""
    if os.environ.get("LACOOT_COMMIT"):
        return os.environ["LACOOT_COMMIT"]
    root = root or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                               cwd=root, capture_output=True, text=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def epoch_seconds(history: Sequence[dict[str, Any]]) -> float:
    """The seconds a training's epochs took, summed from its log (``history``): right for a run
    resumed from its checkpoint or reused complete, where the wall time of the last process
    counts only what that process did. The training steps only: set-up, the validation passes,
    the removal's choice and the sweeps are not counted."""
    return round(sum(e["seconds"] for e in history), 1)


def job_environment(args: argparse.Namespace) -> dict[str, Any]:
    """What a job's result depends on besides its configuration (machine, device, torch,
    precision, commit, threads) and the load when it started."""
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    return {
        "machine": torch.cuda.get_device_name(dev)
        if cuda
        else f"{cpu_model()} ({platform.machine()})",
        "device": dev.type,
        "torch": torch.__version__,
        "precision": "bfloat16 autocast" if cuda and RunConfig().amp else "float32",
        "commit": git_commit(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_at_start": loadavg(),
    }


def train_resumably(cfg: RunConfig) -> Path:
    """``cfg.out/checkpoint.pt`` trained for ``cfg.epochs`` epochs: reused when complete,
    resumed when a run was interrupted, else trained from the start."""
    ckpt = Path(cfg.out) / "checkpoint.pt"
    if ckpt.is_file():
        if len(load_checkpoint(ckpt)["history"]) >= cfg.epochs:
            return ckpt
        return run_training(cfg, resume=True)[0]
    return run_training(cfg, overwrite=True)[0]


def train_scratch(cfg: RunConfig, removed: Sequence[str]) -> tuple[torch.nn.Module, dict]:
    """The model of ``cfg`` without the blocks ``removed``, trained from scratch on ``cfg``'s
    data with ``cfg``'s schedule (resumed from ``cfg.out`` when interrupted); returns the model
    and its figures: accuracies, MACs, parameters and the MACs of the full architecture."""
    device = resolve_device(cfg.device)
    data = prepare_data(cfg.data_spec(), device, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    spec = model_spec(cfg, data.num_classes, data.image_shape[0])
    full = build_model(spec)
    model = remove_blocks(full, list(removed)).to(device)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    state = load_checkpoint(ckpt) if ckpt.is_file() else None
    if state is not None and len(state["history"]) >= cfg.epochs:
        model.load_state_dict(state["model"])
        history = state["history"]
    else:
        result = train(model, [], data.train, data.val, cfg.train_config(), out_dir=cfg.out,
                       device=device, progress=False, resume=state is not None)  # fmt: skip
        history = result.history
    model.eval()
    point = sweep(model, [], {}, data.val, data.test, latency_batch_sizes=()).full
    example = torch.zeros(1, *data.image_shape, device=device)
    return model, {
        "removed": list(removed),
        "history": history,
        "val_accuracy": point.val_accuracy,
        "test_accuracy": point.test_accuracy,
        "macs": point.macs,
        "params": point.params,
        "full_macs": count_macs(full.to(device), example),
        "full_params": sum(p.numel() for p in full.parameters()),
    }


def model_spec(cfg: RunConfig, num_classes: int, in_channels: int) -> dict[str, Any]:
    """The zoo spec of ``cfg``'s model, as checkpoints record it."""
    return {"name": cfg.model, "num_classes": num_classes, "in_channels": in_channels,
            "kwargs": dict(cfg.model_args)}  # fmt: skip


def sweep_every_way(
    ckpt: Path,
    device: str,
    seed: int,
    orders: Sequence[str] | None = None,
    repairs: Sequence[str] = REPAIRS,
    calib_samples: int = 2048,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A checkpoint's model swept k = 0..K in every order (all registered criteria unless
    ``orders``) with every repair, by the pipeline's own sweep (``lacoot collapse`` measures
    the same way: ``greedy`` scored with the sweep's repair, no patch for a faded block). One
    memoised evaluation serves every order and repair. Returns ``sweeps`` keyed
    ``"order/repair"`` (each :meth:`lacoot.Sweep.to_dict`), the scores, the blocks, the
    checkpoint's targets and faded blocks and the full model's MACs and parameters."""
    dev = resolve_device(device)
    state = load_checkpoint(ckpt, map_location=dev)
    model, found, spec = model_from_checkpoint(state, ckpt, dev)
    data = prepare_data(spec, dev, seed=seed)
    example = torch.zeros(1, *state["image_shape"], device=dev)
    memo, faded = Memoized(top1_accuracy), faded_blocks(state)
    orders = list(orders or list_criteria())
    sweeps: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    for repair in repairs:
        opts = CollapseConfig(criterion=orders[0], compare=tuple(orders[1:]), repair=repair,
                              calib_samples=calib_samples, latency_batch_sizes=())  # fmt: skip
        sc, sw = _sweep_orders(model, found, data.val, data.test, example, opts, seed, say,
                               memo, faded)  # fmt: skip
        for order in orders:
            sweeps[f"{order}/{repair}"] = sw[order].to_dict()
            scores[f"{order}/{repair}"] = sc[order]
    full = next(iter(sweeps.values()))["points"][0]
    return {
        "blocks": [b.name for b in found],
        "targets": (state.get("regularizer") or {}).get("targets"),
        "faded": list(faded),
        "history": state["history"],
        "train_config": state["train_config"],
        "full_macs": full["macs"],
        "full_params": full["params"],
        "scores": scores,
        "sweeps": sweeps,
    }
