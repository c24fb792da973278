"""The whole LaCoOT job as library functions: data, model, train, score, sweep, report, export.

The ``lacoot`` command is a thin layer over these. A run is described by a :class:`RunConfig`
(flat keys, the same names as the command-line options) that is saved beside its results, and every
checkpoint records how to rebuild its model and its data splits, so later steps need only the
checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_text
from ._version import __version__
from .blocks import Block, find_blocks, remove_blocks
from .checkpoint import CheckpointError, faded_blocks, load_checkpoint
from .collapse import Sweep, SweepPoint, sweep
from .config import CollapseConfig, RunConfig
from .criteria import score_blocks
from .device import resolve_device
from .distributed import barrier, env_rank, init_from_env, shutdown
from .metrics import Memoized, top1_accuracy
from .profile import count_macs
from .train import train

__all__ = [
    "RunConfig",
    "Data",
    "prepare_data",
    "build_model",
    "model_from_checkpoint",
    "calibration_data",
    "run_training",
    "run_scoring",
    "run_collapse",
    "run_export",
    "run_all",
    "environment",
]


COLLAPSE_OUTPUTS = ("report.json", "report.md", "accuracy_vs_macs.png", "shallow.pt")


# -------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """Loaders of the three splits and the shape of one sample."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    image_shape: tuple[int, int, int]


def prepare_data(
    spec: dict[str, Any],
    device: torch.device,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Data:
    """Load a dataset, split off validation (seeded), and wrap the splits in tensor loaders.

    ``spec`` is :meth:`RunConfig.data_spec` (also stored in checkpoints); its ``batch_size`` is
    the global batch. Training batches are shuffled and augmented on the device; validation and
    test batches are neither. With ``world_size > 1`` the training loader yields rank ``rank``'s
    shard, ``batch_size / world_size`` samples per batch (together the same global batches as
    one process would see, except for at most ``world_size - 1`` samples per epoch);
    validation and test are whole on every rank.
    """
    from .data import TensorLoader, load_dataset, train_val_split

    bs = spec["batch_size"]
    if bs % world_size:
        raise ValueError(
            f"batch_size={bs} is not divisible by the {world_size} processes; the batch size is "
            "the global batch, split evenly over the processes"
        )
    full = load_dataset(spec["dataset"], "train", spec.get("data_dir"))
    train_set, val_set = train_val_split(full, spec["val_fraction"], seed=spec["split_seed"])
    test_set = load_dataset(spec["dataset"], "test", spec.get("data_dir"))
    test_set = test_set.with_stats(train_set.mean, train_set.std)
    common = {"device": device, "mean": train_set.mean, "std": train_set.std}
    return Data(
        train=TensorLoader(
            train_set,
            bs // world_size,
            shuffle=True,
            augment=spec["augment"],
            seed=seed,
            drop_last=True,
            rank=rank,
            world_size=world_size,
            **common,
        ),
        val=TensorLoader(val_set, 512, shuffle=False, **common) if len(val_set) else None,
        test=TensorLoader(test_set, 512, shuffle=False, **common),
        num_classes=full.num_classes,
        image_shape=full.image_shape,
    )


# ------------------------------------------------------------------------------------- model
def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a zoo model from ``{"name", "num_classes", "in_channels", "kwargs"}``."""
    from .models import create

    return create(
        spec["name"],
        num_classes=spec["num_classes"],
        in_channels=spec["in_channels"],
        **spec.get("kwargs", {}),
    )


def _example(image_shape: Sequence[int], device: torch.device, batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, *image_shape, device=device)


def model_from_checkpoint(
    state: dict[str, Any], path: str | os.PathLike, device: torch.device
) -> tuple[nn.Module, list[Block], dict[str, Any]]:
    """Rebuild the trained model of a checkpoint, its blocks and its data spec."""
    for key in ("model_spec", "data_spec", "image_shape"):
        if key not in state:
            raise CheckpointError(
                f"checkpoint {str(path)!r} has no {key!r}; was it written by lacoot train?"
            )
    model = build_model(state["model_spec"])
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit model {state['model_spec']['name']!r} "
            f"with {state['model_spec']['num_classes']} classes ({first})"
        ) from None
    model.to(device).eval()
    blocks = find_blocks(model, _example(state["image_shape"], device))
    return model, blocks, state["data_spec"]


def calibration_data(
    spec: dict[str, Any], device: torch.device, data_dir: str | None = None, seed: int = 0
) -> tuple[Data, Any, dict[str, Any]]:
    """A checkpoint's data (``spec``, its folder overridden by ``data_dir``), its calibration
    loader (the validation split, else the training split) and the spec actually used."""
    if data_dir is not None:
        spec = {**spec, "data_dir": data_dir}
    data = prepare_data(spec, device, seed=seed)
    return data, data.val if data.val is not None else data.train, spec


# --------------------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict[str, Any]:
    """What a result depends on besides its configuration."""
    env = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "lacoot": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _check_out_dir(out: Path, overwrite: bool, resume: bool) -> None:
    if resume:
        return
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output folder {str(out)!r} already holds results; pass --overwrite to replace "
            "them or --resume to continue"
        )


# ------------------------------------------------------------------------------------ steps
def run_training(
    cfg: RunConfig, overwrite: bool = False, resume: bool = False
) -> tuple[Path, list[dict[str, Any]]]:
    """Train ``cfg.model`` on ``cfg.dataset`` with LaCoOT; return the checkpoint and history.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) this process joins the process
    group, trains its shard with DistributedDataParallel and leaves the group at the end; only
    rank 0 writes files.
    """
    out = Path(cfg.out)
    tcfg = cfg.train_config()
    where, device, created = init_from_env(cfg.device)
    try:
        _check_out_dir(out, overwrite, resume)  # every rank, before any rank writes
        barrier()
        data = prepare_data(
            cfg.data_spec(), device, seed=cfg.seed, rank=where.rank, world_size=where.world_size
        )
        torch.manual_seed(cfg.seed)
        model_spec = {
            "name": cfg.model,
            "num_classes": data.num_classes,
            "in_channels": data.image_shape[0],
            "kwargs": dict(cfg.model_args),
        }
        model = build_model(model_spec).to(device)
        blocks = find_blocks(model, _example(data.image_shape, device))
        if resume:
            ckpt = out / "checkpoint.pt"
            state = load_checkpoint(ckpt) if ckpt.exists() else None
            if state is not None and state.get("model_spec") != model_spec:
                raise CheckpointError(
                    f"cannot resume {str(ckpt)!r}: it holds model {state.get('model_spec')}, "
                    f"not {model_spec}"
                )
        if where.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
        barrier()
        result = train(
            model,
            blocks,
            data.train,
            data.val,
            tcfg,
            out_dir=out,
            device=device,
            resume=resume,
            progress=cfg.progress,
            meta={
                "model_spec": model_spec,
                "data_spec": cfg.data_spec(),
                "image_shape": list(data.image_shape),
                "run_config": json.dumps(cfg.to_dict()),
            },
        )
    finally:
        shutdown(created)
    assert result.checkpoint is not None
    return result.checkpoint, result.history


def run_scoring(
    checkpoint: str | os.PathLike,
    criteria: Sequence[str] = ("msw",),
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of every block of a checkpoint's model on its validation split, per criterion;
    also written to the JSON file ``out`` when given."""
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    model, blocks, spec = model_from_checkpoint(state, checkpoint, dev)
    _, calib, _ = calibration_data(spec, dev, data_dir, seed)
    scores = {c: score_blocks(model, blocks, calib, criterion=c, seed=seed) for c in criteria}
    if out is not None:
        atomic_write_text(out, json.dumps(scores, indent=2))
    return scores


def _refuse_earlier_report(out: Path, overwrite: bool) -> None:
    earlier = [n for n in COLLAPSE_OUTPUTS if (out / n).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"output folder {str(out)!r} already holds a collapse report ({', '.join(earlier)}); "
            "pass --overwrite to replace it or choose another --out"
        )


def _sweep_orders(
    model: nn.Module, found: list[Block], calib: Any, test: Any, example: torch.Tensor,
    opts: CollapseConfig, seed: int, say: Any, memo: Memoized, faded: Sequence[str],
) -> tuple[dict[str, dict[str, float]], dict[str, Sweep]]:  # fmt: skip
    """Scores and sweep of every order (``opts.criterion`` first, then ``opts.compare``). One
    :class:`lacoot.metrics.Memoized` evaluation, ``memo``, serves them all: a collapse that the
    ``greedy`` criterion judged, or that another order reaches too, is evaluated once. The
    ``faded`` blocks (the training's identities) get no linear patch."""
    sweeps: dict[str, Sweep] = {}
    scores: dict[str, dict[str, float]] = {}
    for name in [opts.criterion, *[c for c in opts.compare if c != opts.criterion]]:
        say(f"scoring {len(found)} blocks by {name!r}")
        scores[name] = score_blocks(
            model, found, calib, criterion=name, seed=seed, repair=opts.repair,
            calib_samples=opts.calib_samples, progress=lambda msg: say(f"  {msg}"), evaluate=memo,
            identities=faded,
        )  # fmt: skip
        timed = name == opts.criterion  # latency only for the chosen order: same per depth
        say(f"sweeping {name!r} order with repair {opts.repair!r}"
            + (" and latency" if timed else ""))  # fmt: skip
        sweeps[name] = sweep(
            model, found, scores[name], calib, test, example_input=example,
            latency_batch_sizes=opts.latency_batch_sizes if timed else (),
            repeats=opts.latency_repeats, repair=opts.repair, calib_samples=opts.calib_samples,
            progress=lambda msg, name=name: say(f"  {name}: {msg}"), evaluate=memo,
            identities=faded,
        )  # fmt: skip
    say(f"{memo.hits} of {memo.calls} evaluations were of a collapse already measured")
    return scores, sweeps


def _reference(
    model: nn.Module, faded: Sequence[str], calib: Any, full: SweepPoint, memo: Memoized
) -> dict[str, Any]:
    """The validation accuracy a ``max_drop`` budget is measured from, and whose it is.

    The full model's, unless the training faded blocks out (``faded``, recorded in the
    checkpoint): then the function it trained last is the model without them, and the full
    depth (the faded blocks switched back on) may be worse than it; the better of the two is
    the reference, so that the budget is never looser than the user reads it."""
    ref = {"model": "full model", "val_accuracy": full.val_accuracy, "faded": list(faded)}
    if faded and full.val_accuracy is not None:
        trained = memo(remove_blocks(model, faded), calib)
        ref["faded_val_accuracy"] = trained
        if trained > full.val_accuracy:
            ref.update(model="model without the faded blocks", val_accuracy=trained)
    return ref


def run_collapse(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    options: CollapseConfig | None = None,
    *,
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Sweep k = 0..K removed blocks for each order, choose within the budget, write a report.

    ``options`` (:class:`lacoot.config.CollapseConfig`; its fields may also be given, or
    overridden, as keywords) name the orders, the budget, the repair and the latency batches.
    Every collapse is repaired (:func:`lacoot.repair.repair`, ``calib_samples`` images of the
    validation split) and measured with and without it. Writes ``report.json``, ``report.md``
    and ``accuracy_vs_macs.png`` (when matplotlib is installed) into ``out`` and the chosen
    shallow (repaired) model as ``shallow.pt``; returns the report. An earlier report in
    ``out`` is an error unless ``overwrite``. ``progress`` prints each phase to stderr.
    """
    from .export import save_model
    from .repair import repair as repair_model
    from .report import write_report

    opts = CollapseConfig.from_dict({**(options or CollapseConfig()).to_dict(), **overrides})
    if not opts.has_budget:
        raise ValueError("no budget given; expected max_drop, max_macs, max_latency or blocks")
    out = Path(out)
    _refuse_earlier_report(out, overwrite)
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    model, found, spec = model_from_checkpoint(state, checkpoint, dev)
    if opts.blocks is not None and opts.blocks > len(found):
        raise ValueError(
            f"blocks={opts.blocks}, but the model has only {len(found)} collapsible blocks"
        )
    data, calib, spec = calibration_data(spec, dev, data_dir, seed)
    example = _example(state["image_shape"], dev, batch=1)
    say = _announcer(progress)
    memo, faded = Memoized(top1_accuracy), faded_blocks(state)
    scores, sweeps = _sweep_orders(
        model, found, calib, data.test, example, opts, seed, say, memo, faded
    )
    main = sweeps[opts.criterion]
    reference = _reference(model, faded, calib, main.full, memo)
    chosen: SweepPoint = (
        main.points[opts.blocks]
        if opts.blocks is not None
        else main.best(
            max_drop=opts.max_drop,
            max_macs=opts.max_macs,
            reference=reference["val_accuracy"],
            max_latency=opts.max_latency,
        )  # fmt: skip
    )
    out.mkdir(parents=True, exist_ok=True)
    shallow = (
        repair_model(
            model, chosen.removed, calib, opts.repair, opts.calib_samples, identities=faded
        )
        if chosen.k
        else model
    )
    save_model(out / "shallow.pt", shallow, state["model_spec"], list(chosen.removed))
    report = {
        "environment": environment(dev), "checkpoint": str(checkpoint), "seed": seed,
        "model_spec": state["model_spec"], "data_spec": spec,
        "train_config": state.get("train_config"), "train_history": state.get("history"),
        "blocks": [b.to_dict() for b in found], "criterion": opts.criterion,
        "budget": {"max_drop": opts.max_drop, "max_macs": opts.max_macs,
                   "max_latency": opts.max_latency, "blocks": opts.blocks},  # fmt: skip
        "reference": reference,
        "repair": {"method": opts.repair,
                   "calib_samples": opts.calib_samples if opts.repair != "none" else 0},
        "penalized": (state.get("regularizer") or {}).get("targets"),
        "full_macs": count_macs(model, example), "scores": scores,
        "sweeps": {k: s.to_dict() for k, s in sweeps.items()}, "chosen": chosen.to_dict(),
    }  # fmt: skip
    write_report(out, report)
    return report


def _announcer(enabled: bool) -> Any:
    """``say(message)``: a timestamped line on stderr, or nothing."""
    start = time.perf_counter()

    def say(message: str) -> None:
        if enabled:
            print(f"lacoot [{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr,
                  flush=True)  # fmt: skip

    return say


def run_export(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    blocks: int | Sequence[str],
    fmt: str = "pt",
    options: CollapseConfig | None = None,
    *,
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    fold_bn: bool | None = None,
    optimize: bool = False,
) -> dict[str, Any]:
    """Write a checkpoint's model without ``blocks`` (a count, removed in ``options.criterion``
    order, or block names), repaired by ``options.repair`` on ``options.calib_samples``
    validation images, as ``fmt`` (``pt``, ``torchscript`` or ``onnx``, the last checked in
    onnxruntime when installed), batch norm folded for the inference formats unless ``fold_bn``
    is False, a TorchScript file frozen and optimised for inference with ``optimize``. Returns
    :func:`lacoot.export.export_model`'s summary (MACs, parameters and latency of the exported
    model included)."""
    from .blocks import remove_blocks
    from .collapse import removal_order
    from .export import export_model
    from .repair import repair

    opts = options or CollapseConfig()
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{str(output)!r} already exists; pass --overwrite to replace it")
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    model, found, spec = model_from_checkpoint(state, checkpoint, dev)
    names = [b.name for b in found]
    if isinstance(blocks, int):
        if blocks > len(found):
            raise ValueError(f"--blocks {blocks}, but the model has only {len(found)} blocks")
        scores = run_scoring(checkpoint, [opts.criterion], device, data_dir)
        removed = removal_order(found, scores[opts.criterion])[:blocks]
    else:
        removed = list(blocks)
        unknown = [n for n in removed if n not in names]
        if unknown:
            raise ValueError(f"blocks {unknown} are not collapsible; expected some of {names}")
    example = _example(state["image_shape"], dev, batch=1)
    if opts.repair == "none" or not removed:
        shallow = remove_blocks(model, removed, example).eval()
    else:
        _, calib, _ = calibration_data(spec, dev, data_dir, seed)
        shallow = repair(model, removed, calib, opts.repair, opts.calib_samples,
                         identities=faded_blocks(state)).eval()  # fmt: skip
    return export_model(shallow, output, fmt, example, state["model_spec"], removed, fold_bn,
                        optimize=optimize)  # fmt: skip


def run_all(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any] | None:
    """The main job: train with LaCoOT, then collapse and report into ``cfg.out`` (with the
    options used as ``config.yaml``).

    Under ``torchrun`` every process trains and rank 0 alone collapses and reports; the other
    ranks return ``None``.
    """
    import yaml

    ckpt, _ = run_training(cfg, overwrite=overwrite, resume=resume)
    if env_rank() != 0:
        return None
    report = run_collapse(
        ckpt,
        cfg.out,
        cfg.collapse_config().or_default_budget(),
        device=cfg.device,
        seed=cfg.seed,
        overwrite=overwrite or resume,  # a fresh run's folder was checked to be empty
        progress=cfg.progress,
    )
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_text(Path(cfg.out) / "config.yaml", text)
    return report
