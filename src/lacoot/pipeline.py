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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from ._io import atomic_write_text
from .blocks import Block, find_blocks
from .collapse import Sweep, SweepPoint, sweep
from .criteria import list_criteria, score_blocks
from .distributed import barrier, env_rank, init_from_env, shutdown
from .profile import count_macs
from .train import CheckpointError, TrainConfig, load_checkpoint, resolve_device, train

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
    "run_all",
    "environment",
]


COLLAPSE_OUTPUTS = ("report.json", "report.md", "accuracy_vs_macs.png", "shallow.pt")
DEFAULT_MAX_DROP = 1.0  # percentage points: the budget of `lacoot run` when none is given
DEFAULT_TARGET_MACS = 0.55  # penalise the blocks whose removal brings the MACs to 55%


@dataclass
class RunConfig:
    """Everything one ``lacoot`` run depends on (flat: the keys are the command-line options)."""

    # what
    model: str = "resnet20"
    model_args: dict[str, Any] = field(default_factory=dict)  # extra constructor arguments
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    val_fraction: float = 0.1  # held out of the training set, as the paper
    batch_size: int = 128
    augment: bool = True  # random crop with padding (+ flip where label-preserving)
    device: str = "auto"
    out: str = "runs/lacoot"
    # training (see TrainConfig)
    epochs: int = 4
    lam: float = 1.0  # measured (random, 4 targets): docs/benchmarks/collapse_quality.md
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    milestones: list[int] = field(default_factory=lambda: [80, 120])
    gamma: float = 0.1
    seed: int = 0
    amp: bool = True
    method: str = "random"  # 50 random directions, as the paper: 3x cheaper than ascent on a GPU
    n_projections: int = 50
    n_iters: int = 2
    nonfinite: str = "stop"
    global_msw: bool = False
    sync_bn: bool = False
    relative: bool = False
    penalize: list[str] = field(default_factory=list)
    target_blocks: int | None = None
    target_macs: float | None = DEFAULT_TARGET_MACS  # 1: no budget, every block penalised
    target_warmup: int = 1
    target_criterion: str = "msw_rel"
    # scoring and collapse
    criterion: str = "greedy"  # measured: docs/benchmarks/collapse_quality.md
    compare: list[str] = field(default_factory=lambda: ["cosine"])
    max_drop: float | None = None  # points of validation accuracy; 1.0 if no budget is given
    max_macs: float | None = None  # fraction of the full model's MACs
    blocks: int | None = None  # remove exactly this many blocks
    repair: str = "linear"  # measured: docs/benchmarks/collapse_quality.md
    calib_samples: int = 2048  # calibration images of each repair
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 128])
    latency_repeats: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.penalize or self.target_blocks is not None) and (
            self.target_macs == DEFAULT_TARGET_MACS
        ):  # the default budget yields to the blocks the user names or counts
            self.target_macs = None
        self.validate()

    def validate(self) -> None:
        """Reject out-of-range values before any work starts."""
        from .data import DATASETS, canonical_name
        from .models import list_models

        if self.model not in list_models():
            raise ValueError(
                f"unknown model {self.model!r}; valid names: {', '.join(list_models())}"
            )
        canonical = canonical_name(self.dataset)  # raises with the valid names
        assert canonical in DATASETS
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r}; expected 0 <= value < 1")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 2):
            raise ValueError(f"batch_size={self.batch_size!r}; expected an integer >= 2")
        for name in [self.criterion, *self.compare]:
            if name not in list_criteria():
                raise ValueError(
                    f"unknown criterion {name!r}; valid names: {', '.join(list_criteria())}"
                )
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ValueError(f"max_drop={self.max_drop!r}; expected >= 0 percentage points")
        if self.max_macs is not None and not 0 < self.max_macs <= 1:
            raise ValueError(f"max_macs={self.max_macs!r}; expected a fraction in (0, 1]")
        if self.blocks is not None and self.blocks < 0:
            raise ValueError(f"blocks={self.blocks!r}; expected a count >= 0")
        from .repair import check_repair

        check_repair(self.repair)
        if not (isinstance(self.calib_samples, int) and self.calib_samples >= 1):
            raise ValueError(f"calib_samples={self.calib_samples!r}; expected an integer >= 1")
        if any(b < 1 for b in self.latency_batch_sizes):
            raise ValueError(f"latency_batch_sizes={self.latency_batch_sizes}; expected >= 1")
        self.train_config()  # validates the training options

    def train_config(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in asdict(self).items() if k in names})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping (a YAML file, say); unknown keys and wrong types are errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown options {unknown}; expected some of {sorted(known)}")
        defaults = cls.__new__(cls)
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            setattr(defaults, f.name, default)
        for key, value in values.items():
            _check_type(key, value, getattr(defaults, key))
        merged = {f.name: getattr(defaults, f.name) for f in fields(cls)} | dict(values)
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def data_spec(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "data_dir": self.data_dir,
            "val_fraction": self.val_fraction,
            "split_seed": self.seed,
            "batch_size": self.batch_size,
            "augment": self.augment,
        }


def _check_type(key: str, value: Any, default: Any) -> None:
    if value is None or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(
            f"option {key}={value!r} has type {type(value).__name__}; expected "
            f"{type(default).__name__}"
        )


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
) -> dict[str, dict[str, float]]:
    """Scores of every block of a checkpoint's model on its validation split, per criterion."""
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    model, blocks, spec = model_from_checkpoint(state, checkpoint, dev)
    _, calib, _ = calibration_data(spec, dev, data_dir, seed)
    return {c: score_blocks(model, blocks, calib, criterion=c, seed=seed) for c in criteria}


def run_collapse(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    criterion: str = "msw",
    compare: Sequence[str] = (),
    max_drop: float | None = None,
    max_macs: float | None = None,
    blocks: int | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    latency_batch_sizes: Sequence[int] = (1, 128),
    latency_repeats: int = 10,
    overwrite: bool = False,
    repair: str = "linear",
    calib_samples: int = 2048,
    progress: bool = True,
) -> dict[str, Any]:
    """Sweep k = 0..K removed blocks for each criterion, choose within the budget, write a report.

    Every collapse is repaired with ``repair`` (:func:`lacoot.repair.repair`, ``calib_samples``
    images of the validation split) and measured with and without it. Writes ``report.json``,
    ``report.md`` and ``accuracy_vs_macs.png`` (when matplotlib is installed) into ``out`` and the
    chosen shallow (repaired) model as ``shallow.pt``; returns the report. An earlier report in
    ``out`` is an error unless ``overwrite``. ``progress`` prints each phase to stderr.
    """
    from .export import save_model
    from .repair import repair as repair_model
    from .report import write_report

    if max_drop is None and max_macs is None and blocks is None:
        raise ValueError("no budget given; expected max_drop, max_macs or blocks")
    earlier = [n for n in COLLAPSE_OUTPUTS if (Path(out) / n).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"output folder {str(out)!r} already holds a collapse report ({', '.join(earlier)}); "
            "pass --overwrite to replace it or choose another --out"
        )
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    model, found, spec = model_from_checkpoint(state, checkpoint, dev)
    if blocks is not None and blocks > len(found):
        raise ValueError(f"blocks={blocks}, but the model has only {len(found)} collapsible blocks")
    data, calib, spec = calibration_data(spec, dev, data_dir, seed)
    example = _example(state["image_shape"], dev, batch=1)
    sweeps: dict[str, Sweep] = {}
    scores: dict[str, dict[str, float]] = {}
    say = _announcer(progress)
    for name in [criterion, *[c for c in compare if c != criterion]]:
        say(f"scoring {len(found)} blocks by {name!r}")
        scores[name] = score_blocks(
            model, found, calib, criterion=name, seed=seed, repair=repair,
            calib_samples=calib_samples, progress=lambda msg: say(f"  {msg}"),
        )  # fmt: skip
        timed = name == criterion  # latency only for the chosen order: it is the same per depth
        say(f"sweeping {name!r} order with repair {repair!r}" + (" and latency" if timed else ""))
        sweeps[name] = sweep(
            model,
            found,
            scores[name],
            calib,
            data.test,
            example_input=example,
            latency_batch_sizes=latency_batch_sizes if timed else (),
            repeats=latency_repeats,
            repair=repair,
            calib_samples=calib_samples,
            progress=lambda msg, name=name: say(f"  {name}: {msg}"),
        )
    chosen: SweepPoint = (
        sweeps[criterion].points[blocks]
        if blocks is not None
        else sweeps[criterion].best(max_drop=max_drop, max_macs=max_macs)
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shallow = (
        repair_model(model, chosen.removed, calib, repair, calib_samples) if chosen.k else model
    )
    save_model(out / "shallow.pt", shallow, state["model_spec"], list(chosen.removed))
    report = {
        "environment": environment(dev),
        "checkpoint": str(checkpoint),
        "seed": seed,
        "model_spec": state["model_spec"],
        "data_spec": spec,
        "train_config": state.get("train_config"),
        "train_history": state.get("history"),
        "blocks": [b.to_dict() for b in found],
        "criterion": criterion,
        "budget": {"max_drop": max_drop, "max_macs": max_macs, "blocks": blocks},
        "repair": {"method": repair, "calib_samples": calib_samples if repair != "none" else 0},
        "penalized": (state.get("regularizer") or {}).get("targets"),
        "full_macs": count_macs(model, example),
        "scores": scores,
        "sweeps": {k: s.to_dict() for k, s in sweeps.items()},
        "chosen": chosen.to_dict(),
    }
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


def run_all(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any] | None:
    """The main job: train with LaCoOT, then collapse and report into ``cfg.out``.

    Under ``torchrun`` every process trains and rank 0 alone collapses and reports; the other
    ranks return ``None``.
    """
    ckpt, _ = run_training(cfg, overwrite=overwrite, resume=resume)
    if env_rank() != 0:
        return None
    no_budget = cfg.max_drop is None and cfg.max_macs is None and cfg.blocks is None
    return run_collapse(
        ckpt,
        cfg.out,
        criterion=cfg.criterion,
        compare=cfg.compare,
        max_drop=DEFAULT_MAX_DROP if no_budget else cfg.max_drop,
        max_macs=cfg.max_macs,
        blocks=cfg.blocks,
        device=cfg.device,
        seed=cfg.seed,
        latency_batch_sizes=cfg.latency_batch_sizes,
        latency_repeats=cfg.latency_repeats,
        overwrite=overwrite or resume,  # a fresh run's folder was checked to be empty
        repair=cfg.repair,
        calib_samples=cfg.calib_samples,
        progress=cfg.progress,
    )
