"""The whole LaCoOT job as library functions: data, model, train, score, sweep, report, export.

The ``lacoot`` command is a thin layer over these. A run is described by a :class:`RunConfig`
(flat keys, the same names as the command-line options) that is saved beside its results, and every
checkpoint records how to rebuild its model and its data splits, the input normalisation its model
expects and a fingerprint of its data, so later steps need only the checkpoint.

Every step writes into an output folder held with :class:`lacoot.outdir.OutputFolder`: locked
while it runs, nothing replaced that an earlier command did not write there, nothing left behind
by a step that is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write_text
from .blocks import Block, find_blocks, remove_blocks
from .checkpoint import CheckpointError, faded_blocks, load_checkpoint, load_trained_weights
from .collapse import Sweep, SweepPoint, sweep
from .config import LM_DEFAULTS, CollapseConfig, RunConfig
from .criteria import score_blocks
from .device import resolve_device
from .distributed import barrier, broadcast_object, env_rank, info, init_from_env, shutdown
from .init_weights import init_shapes, load_init, read_init
from .metrics import Memoized, top1_accuracy
from .model_source import build_model
from .outdir import OutputFolder, command_line
from .profile import count_macs, recording_latencies
from .provenance import data_mismatch, environment, latency_conditions, load_average
from .report_choice import REPORT_PLACES, choice, find_report
from .subject import Subject
from .train import train

__all__ = [
    "RunConfig",
    "Data",
    "prepare_data",
    "build_model",
    "model_from_checkpoint",
    "calibration_data",
    "recorded_options",
    "resume_differences",
    "run_training",
    "run_scoring",
    "run_collapse",
    "run_export",
    "run_all",
    "environment",
]


TRAIN_OUTPUTS = ("checkpoint.pt", "log.json", "log.csv", "tensorboard", "config.json")
COLLAPSE_OUTPUTS = (
    "report.json", "report.md", "accuracy_vs_macs.png", "shallow.pt", "shallow.pt.json",
    "shallow", "shallow.json",
)  # fmt: skip
RUN_OUTPUTS = (*TRAIN_OUTPUTS, *COLLAPSE_OUTPUTS, "config.yaml")
SCORE_OUTPUTS = ("scores.json",)
RESUME_FREE = ("device", "progress", "out", "data_dir")  # may differ on resume (data: fingerprint)


# -------------------------------------------------------------------------------------- data
@dataclass
class Data:
    """Loaders of the three splits, the shape of one sample, the input normalisation the model
    sees (:func:`preprocessing`) and fingerprints of the training and test data."""

    train: Any
    val: Any
    test: Any
    num_classes: int
    image_shape: tuple[int, int, int]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, str] = field(default_factory=dict)


def preprocessing(train_set: Any) -> dict[str, Any]:
    """What a model trained on ``train_set``'s split expects as input: float images ``(N, C, H,
    W)``, ``x = (pixel / 255 - mean) / std`` per channel with the training split's statistics,
    and what its outputs mean (the class names)."""
    c = train_set.image_shape[0]
    return {
        "input_shape": list(train_set.image_shape), "layout": "NCHW", "dtype": "float32",
        "channel_order": {1: "grayscale", 3: "RGB"}.get(c, f"{c} channels"),
        "scale": "pixel / 255 (values in [0, 1])", "mean": list(train_set.mean),
        "std": list(train_set.std), "normalize": "x = (pixel / 255 - mean) / std, per channel",
        "class_names": list(train_set.classes),
    }  # fmt: skip


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
    _check_batch(bs, len(train_set), len(val_set))
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
        ),  # fmt: skip
        val=TensorLoader(val_set, 512, shuffle=False, **common) if len(val_set) else None,
        test=TensorLoader(test_set, 512, shuffle=False, **common),
        num_classes=full.num_classes,
        image_shape=full.image_shape,
        preprocessing=preprocessing(train_set),
        fingerprint={"train": full.fingerprint(), "test": test_set.fingerprint()},
    )


def _check_batch(batch_size: int, n_train: int, n_val: int) -> None:
    """A training batch must fit in the training split (the last short batch is dropped)."""
    if batch_size > n_train:
        held = f" after holding out {n_val} for validation" if n_val else ""
        raise ValueError(
            f"batch_size={batch_size} is larger than the training split ({n_train} images"
            f"{held}), so an epoch would hold no batch; expected at most {n_train}"
        )


# ------------------------------------------------------------------------------------- model
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
    spec = state["model_spec"]
    model = build_model(spec)
    load_trained_weights(model, state, path,
                         f"model {spec['name']!r} with {spec['num_classes']} classes")  # fmt: skip
    model.to(device).eval()
    blocks = find_blocks(model, _example(state["image_shape"], device))
    return model, blocks, state["data_spec"]


def calibration_data(
    spec: dict[str, Any], device: torch.device, data_dir: str | None = None, seed: int = 0,
    val_from: str = "val", what: str = "scoring",
) -> tuple[Data, Any, dict[str, Any]]:  # fmt: skip
    """A checkpoint's data (``spec``, its folder overridden by ``data_dir``), its calibration
    loader and the spec actually used. The loader is the validation split; a checkpoint trained
    without one (``val_fraction=0``) is a ``ValueError`` naming ``what`` unless ``val_from`` is
    ``"train"``, which takes the training split instead."""
    if data_dir is not None:
        spec = {**spec, "data_dir": data_dir}
    data = prepare_data(spec, device, seed=seed)
    if data.val is None and val_from != "train":
        raise ValueError(
            f"the checkpoint was trained with val_fraction=0: it has no validation split for "
            f"{what}; expected a checkpoint trained with val_fraction > 0, or val_from='train' "
            "to use the training split (the report then says so)"
        )
    if data.val is not None and val_from == "train":
        raise ValueError(
            f"val_from='train', but the checkpoint holds out a validation split "
            f"(val_fraction={spec['val_fraction']}) for {what}; expected val_from='val'"
        )
    return data, data.val if data.val is not None else data.train, spec


def checkpoint_subject(
    checkpoint: str | os.PathLike, device: torch.device, data_dir: str | None = None,
    seed: int = 0, val_from: str = "val", what: str = "scoring",
    say: Callable[[str], None] = lambda message: None,
) -> Subject:  # fmt: skip
    """The trained model of a checkpoint, its blocks and its data (:func:`calibration_data`),
    judged by top-1 accuracy; a language model's by perplexity on its text
    (:func:`lacoot.lm.lm_checkpoint_subject`)."""
    from .model_source import split_source

    state = load_checkpoint(checkpoint, map_location=device)
    if split_source((state.get("model_spec") or {}).get("name", ""))[0] == "hf":
        from .lm import lm_checkpoint_subject

        return lm_checkpoint_subject(state, str(checkpoint), device, data_dir, val_from, say)
    model, found, spec = model_from_checkpoint(state, checkpoint, device)
    data, calib, spec = calibration_data(spec, device, data_dir, seed, val_from, what)
    fingerprint = {"checkpoint": state.get("data_fingerprint"), "now": data.fingerprint}
    mismatch = data_mismatch(fingerprint)
    if mismatch is not None:
        warnings.warn(f"{checkpoint}: {mismatch}", RuntimeWarning, stacklevel=2)
    return Subject(
        model=model, blocks=found, calib=calib, test=data.test,
        example=_example(state["image_shape"], device, batch=1), metric=top1_accuracy,
        model_spec=state["model_spec"], data_spec=spec,
        preprocessing=state.get("preprocessing") or data.preprocessing,
        fingerprint=fingerprint, source=str(checkpoint), state=state,
    )  # fmt: skip


def load_subject(
    source: Any, device: torch.device, data_dir: str | None, seed: int, val_from: str,
    what: str, say: Callable[[str], None],
) -> Subject:  # fmt: skip
    """A checkpoint's :class:`Subject`, or that of a model brought as it is
    (:class:`lacoot.lm.Brought`, whose corpus it names itself)."""
    from .lm import Brought, lm_subject

    if isinstance(source, Brought):
        if val_from != "val":
            raise ValueError(
                f"val_from={val_from!r} with --model {source.model!r}; a model brought as it is "
                "calibrates on every chunk not held out for test"
            )
        return lm_subject(source, device, seed, say)
    say(f"loading {source}")
    return checkpoint_subject(source, device, data_dir, seed, val_from, what, say)


def _calib_count(loader: Any, asked: int) -> int:
    """The calibration images a repair really gets: ``asked``, or fewer in a small split."""
    n = getattr(loader, "n", None)
    return min(asked, int(n)) if n is not None else asked


# ------------------------------------------------------------------------------ output folders
def _on_rank0(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0; a ``ValueError``/``OSError`` it raises is raised on every rank (one
    process decides, all agree). Returns rank 0's result (None elsewhere)."""
    if not info().distributed:
        return fn()
    result, caught, error = None, None, None
    if info().rank == 0:
        try:
            result = fn()
        except (ValueError, OSError) as exc:
            caught, error = exc, (type(exc).__name__, str(exc))
    error = broadcast_object(error)
    if caught is not None:
        raise caught
    if error is not None:
        kind = {"FileExistsError": FileExistsError, "FolderBusyError": FileExistsError,
                "CheckpointError": CheckpointError}.get(error[0], ValueError)  # fmt: skip
        raise kind(error[1])
    return result


@contextmanager
def _holding(folder: OutputFolder | None) -> Iterator[OutputFolder | None]:
    """Close ``folder`` at the end (rolled back on an exception unless committed)."""
    try:
        yield folder
    except BaseException:
        if folder is not None:
            folder.close(failed=True)
        raise
    if folder is not None:
        folder.close()


# ------------------------------------------------------------------------------------ resume
def recorded_options(out: str | os.PathLike) -> dict[str, Any]:
    """The options a run in ``out`` was trained with (read from its checkpoint; options added
    to lacoot since mean what the older lacoot did); empty when there is no checkpoint."""
    ckpt = Path(out) / "checkpoint.pt"
    if not ckpt.is_file():
        return {}
    state = load_checkpoint(ckpt)
    saved = state.get("run_config")
    if saved is None:
        return {}
    return RunConfig.from_saved(json.loads(saved)).to_dict()


def resume_differences(
    state: dict[str, Any], cfg: RunConfig, data: Data, teacher: dict[str, str] | None = None
) -> list[str]:
    """Every way the run ``cfg`` on ``data`` differs from the checkpoint ``state``: options
    (``name=then (now now)``, all but :data:`RESUME_FREE`), the data (fingerprints) and the
    teacher file (``teacher``: the record of the one this run loaded, its SHA-256)."""
    from .config import TrainConfig

    saved = state.get("run_config")
    now = cfg.to_dict()
    if saved is not None:
        then = RunConfig.from_saved(json.loads(saved)).to_dict()
        diffs = [f"{k}={then[k]!r} (now {now[k]!r})" for k in now
                 if k not in RESUME_FREE and then.get(k) != now[k]]  # fmt: skip
    else:  # written before lacoot recorded its options
        diffs = TrainConfig.differences(state.get("train_config"), cfg.train_config())
    recorded = (state.get("data_fingerprint") or {}).get("train")
    if recorded is not None and recorded != data.fingerprint["train"]:
        diffs.append(
            f"the training data (fingerprint {recorded}, now {data.fingerprint['train']} in "
            f"data_dir={cfg.data_dir!r}): other images"
        )
    then_teacher = state.get("teacher")
    if then_teacher and teacher and then_teacher["sha256"] != teacher["sha256"]:
        diffs.append(f"the teacher {cfg.teacher!r} (sha256 {then_teacher['sha256'][:12]}..., now "
                     f"{teacher['sha256'][:12]}...): another file")  # fmt: skip
    return diffs


def _guard_resume(
    out: Path, cfg: RunConfig, data: Data, model_spec: dict[str, Any],
    teacher: dict[str, str] | None,
) -> None:  # fmt: skip
    """Refuse to resume ``out``'s checkpoint as another run, listing every difference."""
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        raise CheckpointError(f"cannot resume: no checkpoint at {ckpt}; start without --resume")
    state = load_checkpoint(ckpt)
    diffs = resume_differences(state, cfg, data, teacher)
    if state.get("model_spec") not in (None, model_spec) and state.get("run_config") is None:
        diffs.append(f"model {state.get('model_spec')} (now {model_spec})")
    if diffs:
        raise CheckpointError(
            f"cannot resume {str(ckpt)!r} with other options or data: {'; '.join(diffs)}; "
            "pass --resume alone to continue with the recorded options, or start a new run "
            "with --overwrite or another --out"
        )


# ------------------------------------------------------------------------------------ steps
def _model_spec(cfg: RunConfig, data: Data) -> dict[str, Any]:
    return {"name": cfg.model, "num_classes": data.num_classes,
            "in_channels": data.image_shape[0], "kwargs": dict(cfg.model_args)}  # fmt: skip


@dataclass
class Trainee:
    """What a training starts from: the model, its blocks, its data (this process's shard), its
    spec, the record of its initial weights (``--init``) and the teacher it is distilled from
    (``--teacher``) with that file's record."""

    model: nn.Module
    blocks: list[Block]
    data: Data
    model_spec: dict[str, Any]
    init: dict[str, str] | None
    teacher: nn.Module | None
    taught: dict[str, str] | None


def _image_trainee(cfg: RunConfig, device: torch.device, where: Any) -> Trainee:
    """The image classifier to train (built, started from ``cfg.init`` when given; its teacher
    :func:`lacoot.distill.load_teacher`)."""
    data = prepare_data(
        cfg.data_spec(), device, seed=cfg.seed, rank=where.rank, world_size=where.world_size
    )
    torch.manual_seed(cfg.seed)
    model_spec = _model_spec(cfg, data)
    init_file = None if cfg.init is None else read_init(cfg.init)
    shapes = [] if init_file is None else init_shapes(init_file, model_spec)
    if shapes:  # a collapsed model file: trained as it is, without its removed blocks
        model_spec["shallow"] = shapes
    model = build_model(model_spec)
    init = None if init_file is None else load_init(init_file, model, cfg.model)
    model = model.to(device)
    blocks = find_blocks(model, _example(data.image_shape, device))
    teacher, taught = None, None
    if cfg.teacher is not None:
        from .distill import load_teacher

        teacher, taught = load_teacher(cfg.teacher, device, data.preprocessing)
    return Trainee(model, blocks, data, model_spec, init, teacher, taught)


def _lm_trainee(cfg: RunConfig, device: torch.device, where: Any) -> Trainee:
    """:func:`_image_trainee` for a language model (``hf:...``) and its text corpus: its
    logits flattened to ``(B * T, V)`` and its targets to ``(B * T,)``, so that the loop's
    loss and accuracy are per token (:func:`lacoot.lm.lm_training`; its teacher
    :func:`lacoot.lm.load_lm_teacher`)."""
    from .lm import lm_training

    job = lm_training(cfg, device, where.rank, where.world_size, _announcer(cfg.progress))
    vocab = job.model.get_input_embeddings().num_embeddings
    fingerprint = {"train": job.fingerprint, "test": job.fingerprint}  # one corpus, split
    data = Data(train=job.train, val=job.val, test=job.test, num_classes=vocab,
                image_shape=(cfg.seq_len,), preprocessing=job.preprocessing,
                fingerprint=fingerprint)  # type: ignore[arg-type]  # fmt: skip
    return Trainee(job.model, job.blocks, data, job.model_spec, job.init, job.teacher, job.taught)


def _check_targets(cfg: RunConfig, blocks: list[Block]) -> None:
    """Budget and split checks that need the model: caught before anything is written."""
    if cfg.target_blocks is not None and cfg.target_blocks > len(blocks):
        raise ValueError(
            f"target_blocks={cfg.target_blocks}, but model {cfg.model!r} has only {len(blocks)} "
            f"collapsible blocks; expected 1..{len(blocks)}"
        )
    if cfg.targeted:
        cfg.check_val_split("a budget's targets are chosen on it during the training "
                            "(target_macs/target_blocks)")  # fmt: skip


def run_training(
    cfg: RunConfig, overwrite: bool = False, resume: bool = False,
    folder: OutputFolder | None = None,
) -> tuple[Path, list[dict[str, Any]]]:  # fmt: skip
    """Train ``cfg.model`` on ``cfg.dataset`` with LaCoOT; return the checkpoint and history.

    The output folder ``cfg.out`` is locked for the run (``folder``, when given, is one this
    process already holds). A fresh run refuses a folder holding earlier results unless
    ``overwrite`` (which clears what lacoot wrote there before), ``resume`` continues the
    folder's checkpoint and refuses any other options or data (:func:`resume_differences`). A
    run refused or failed before its first checkpoint leaves nothing behind.

    Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) this process joins the process
    group, trains its shard with DistributedDataParallel and leaves the group at the end; only
    rank 0 writes files.
    """
    if overwrite and resume:
        raise ValueError("overwrite and resume both given; expected one of them")
    out = Path(cfg.out)
    where, device, created = init_from_env(cfg.device)
    try:
        own = None if folder is not None else _on_rank0(
            lambda: OutputFolder.open(out, command_line())
        )  # fmt: skip
        with _holding(own):
            held = folder if folder is not None else own
            return _train_in(cfg, out, held, device, where, overwrite, resume)
    finally:
        shutdown(created)


def _train_in(
    cfg: RunConfig, out: Path, folder: OutputFolder | None, device: torch.device, where: Any,
    overwrite: bool, resume: bool,
) -> tuple[Path, list[dict[str, Any]]]:  # fmt: skip
    """:func:`run_training` inside its held folder (``folder`` is None on ranks other than 0)."""
    if not resume:
        _on_rank0(lambda: folder and folder.refuse_existing(
            RUN_OUTPUTS, overwrite, whole=True, hint=" or --resume to continue"
        ))  # fmt: skip
    from .model_source import split_source

    trainee = _lm_trainee if split_source(cfg.model)[0] == "hf" else _image_trainee
    t = trainee(cfg, device, where)
    model, blocks, data, model_spec, taught = t.model, t.blocks, t.data, t.model_spec, t.taught
    _check_targets(cfg, blocks)
    if resume:
        _on_rank0(lambda: _guard_resume(out, cfg, data, model_spec, taught))
    elif folder is not None:
        if overwrite:
            folder.clear_previous(RUN_OUTPUTS, whole=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2))
    barrier()
    meta = {
        "model_spec": model_spec, "data_spec": cfg.data_spec(),
        "image_shape": list(data.image_shape), "run_config": json.dumps(cfg.to_dict()),
        "preprocessing": data.preprocessing, "data_fingerprint": data.fingerprint,
        "environment": environment(device), "init": t.init, "teacher": taught,
    }  # fmt: skip
    try:
        result = train(model, blocks, data.train, data.val, cfg.train_config(), out_dir=out,
                       device=device, resume=resume, progress=cfg.progress, meta=meta,
                       teacher=t.teacher)  # fmt: skip
    except BaseException:
        if folder is not None and (out / "checkpoint.pt").is_file():
            folder.commit()  # a checkpoint to resume from is worth keeping
        raise
    if folder is not None:
        folder.commit()
    assert result.checkpoint is not None
    return result.checkpoint, result.history


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def run_scoring(
    checkpoint: Any,
    criteria: Sequence[str] = ("msw",),
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    val_from: str = "val",
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Scores of every block of a checkpoint's model on its validation split (or of a model
    brought as it is, ``checkpoint`` a :class:`lacoot.lm.Brought`, on its calibration text), per
    criterion; also written to ``out/scores.json`` when the folder ``out`` is given (an earlier
    ``scores.json`` there is an error unless ``overwrite``). ``progress`` prints each phase."""
    folder = OutputFolder.open(out, command_line()) if out is not None else None
    say = _announcer(progress)
    with _holding(folder):
        if folder is not None:
            folder.refuse_existing(SCORE_OUTPUTS, overwrite)
        sub = load_subject(checkpoint, resolve_device(device), data_dir, seed, val_from,
                           "scoring", say)  # fmt: skip
        extra = (
            {"evaluate": sub.metric, "repair": LM_DEFAULTS["repair"]} if sub.language_model else {}
        )
        scores = {}
        for c in criteria:
            say(f"scoring {len(sub.blocks)} blocks by {c!r}")
            scores[c] = score_blocks(sub.model, sub.blocks, sub.calib, criterion=c, seed=seed,
                                     progress=lambda msg: say(f"  {msg}"), **extra)  # fmt: skip
        if folder is not None:
            atomic_write_text(folder.path / "scores.json", json.dumps(scores, indent=2))
            folder.commit(source=checkpoint if sub.state else None)
    return scores


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
    val_from: str = "val",
    folder: OutputFolder | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Sweep k = 0..K removed blocks for each order, choose within the budget, write a report.

    ``options`` (:class:`lacoot.config.CollapseConfig`; its fields may also be given, or
    overridden, as keywords) name the orders, the budget, the repair and the latency batches.
    Every collapse is repaired (:func:`lacoot.repair.repair`, ``calib_samples`` images of the
    validation split, or of the training split with ``val_from="train"`` for a checkpoint
    without one) and measured with and without it. Writes ``report.json``, ``report.md`` and
    ``accuracy_vs_macs.png`` (when matplotlib is installed) into the folder ``out`` and the
    chosen shallow (repaired) model as ``shallow.pt`` with its input description
    ``shallow.pt.json``; returns the report. An earlier report in ``out`` is an error unless
    ``overwrite``; ``folder`` is ``out`` when this process already holds it.
    ``progress`` prints each phase to stderr.
    """
    opts = CollapseConfig.from_dict({**(options or CollapseConfig()).to_dict(), **overrides})
    if not opts.has_budget:
        raise ValueError("no budget given; expected max_drop, max_macs, max_latency or blocks")
    own = None if folder is not None else OutputFolder.open(out, command_line())
    with _holding(own):
        held = folder if folder is not None else own
        assert held is not None
        held.refuse_existing(COLLAPSE_OUTPUTS, overwrite)
        report = _collapse_in(checkpoint, held, opts, device, data_dir, seed, progress, val_from)
    return report


def _collapse_in(
    source: Any, folder: OutputFolder, opts: CollapseConfig, device: str,
    data_dir: str | None, seed: int, progress: bool, val_from: str,
) -> dict[str, Any]:  # fmt: skip
    """:func:`run_collapse` inside its held folder."""
    dev, say = resolve_device(device), _announcer(progress)
    sub = load_subject(source, dev, data_dir, seed, val_from,
                       "scoring and choosing the collapse", say)  # fmt: skip
    if opts.blocks is not None and opts.blocks > len(sub.blocks):
        raise ValueError(
            f"blocks={opts.blocks}, but the model has only {len(sub.blocks)} collapsible blocks"
        )
    used = _calib_count(sub.calib, opts.calib_samples)
    opts = CollapseConfig.from_dict({**opts.to_dict(), "calib_samples": used})
    memo, faded = Memoized(sub.metric), faded_blocks(sub.state)
    before = load_average()
    with recording_latencies() as timed:
        scores, sweeps = _sweep_orders(
            sub.model, sub.blocks, sub.calib, sub.test, sub.example, opts, seed, say, memo, faded
        )
    conditions = latency_conditions([t.spread for t in timed], before, load_average(), dev)
    chosen = _choose(sweeps[opts.criterion], opts, sub.model, faded, sub.calib, memo)
    say(f"chose {chosen[0].k} blocks; repairing and writing {folder.path}")
    shallow = _repaired_shallow(sub, list(chosen[0].removed), opts)
    folder.clear_previous(COLLAPSE_OUTPUTS)
    _save_shallow(folder.path, shallow, sub, chosen[0])
    report = _collapse_report(sub, opts, dev, seed, val_from, chosen, conditions, scores, sweeps)
    from .report import write_report

    write_report(folder.path, report)
    folder.commit(source=sub.source if sub.state else None)
    return report


def _collapse_report(
    sub: Subject, opts: CollapseConfig, dev: torch.device, seed: int, val_from: str,
    chosen: tuple[SweepPoint, dict[str, Any]], conditions: dict[str, Any],
    scores: dict[str, dict[str, float]], sweeps: dict[str, Sweep],
) -> dict[str, Any]:  # fmt: skip
    """``report.json``'s contents."""
    state = sub.state
    report = {
        "environment": environment(dev), "checkpoint": sub.source if sub.state else None,
        "seed": seed, "model_spec": sub.model_spec, "data_spec": sub.data_spec,
        "val_from": val_from,
        "train_config": state.get("train_config"), "train_history": state.get("history"),
        "train_environment": state.get("environment"), "preprocessing": sub.preprocessing,
        "init": state.get("init"), "data_fingerprint": sub.fingerprint,
        "blocks": [b.to_dict() for b in sub.blocks], "criterion": opts.criterion,
        "budget": {"max_drop": opts.max_drop, "max_macs": opts.max_macs,
                   "max_latency": opts.max_latency, "blocks": opts.blocks},  # fmt: skip
        "reference": chosen[1],
        "repair": {"method": opts.repair,
                   "calib_samples": opts.calib_samples if opts.repair != "none" else 0,
                   "calib_split": "train" if val_from == "train" else "val"},  # fmt: skip
        "latency_conditions": conditions,
        "penalized": (state.get("regularizer") or {}).get("targets"),
        "full_macs": count_macs(sub.model, sub.example), "scores": scores,
        "sweeps": {k: s.to_dict() for k, s in sweeps.items()}, "chosen": chosen[0].to_dict(),
    }  # fmt: skip
    if sub.language_model:
        from .lm import add_token_accuracy

        add_token_accuracy(report, sub.metric, sub.calib, sub.test)
    return report


def _choose(
    main: Sweep, opts: CollapseConfig, model: nn.Module, faded: Sequence[str], calib: Any,
    memo: Memoized,
) -> tuple[SweepPoint, dict[str, Any]]:  # fmt: skip
    """The sweep point the budget chooses and the reference accuracy it was measured from."""
    reference = _reference(model, faded, calib, main.full, memo)
    if opts.blocks is not None:
        return main.points[opts.blocks], reference
    return main.best(max_drop=opts.max_drop, max_macs=opts.max_macs,
                     reference=reference["val_accuracy"],
                     max_latency=opts.max_latency), reference  # fmt: skip


def _save_shallow(folder: Path, model: nn.Module, sub: Subject, chosen: SweepPoint) -> None:
    """``shallow.pt`` and its input description ``shallow.pt.json``; for a language model the
    folder ``shallow`` (``save_pretrained``, with its tokenizer) and ``shallow.json``."""
    from .export import save_model, write_sidecar

    removed = list(chosen.removed)
    if sub.language_model:
        from .lm import save_lm, write_lm_sidecar

        save_lm(folder / "shallow", model, sub.tokenizer)
        write_lm_sidecar(folder / "shallow", "hf", sub, removed)
        return
    path, pre = folder / "shallow.pt", sub.preprocessing
    save_model(path, model, sub.model_spec, removed, preprocessing=pre)
    write_sidecar(path, "pt", pre, embedded=False, removed=removed)


def _announcer(enabled: bool) -> Any:
    """``say(message)``: a timestamped line on stderr, or nothing."""
    start = time.perf_counter()

    def say(message: str) -> None:
        if enabled:
            print(f"lacoot [{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr,
                  flush=True)  # fmt: skip

    return say


def _check_export_target(checkpoint: Any, fmt: str, lm: bool) -> None:
    """The format fits the model (where the file goes was checked before loading:
    :func:`_check_free`)."""
    model = getattr(checkpoint, "model", None)
    what = f"--model {model!r}" if model is not None else repr(str(checkpoint))
    if lm and fmt not in LM_FORMATS:
        raise ValueError(f"--format {fmt!r} for {what}, a language model; expected hf (a "
                         "save_pretrained folder) or onnx")  # fmt: skip
    if not lm and fmt == "hf":
        raise ValueError(f"--format hf writes a Hugging Face model; {what} is a lacoot "
                         "checkpoint: expected --format pt, torchscript or onnx")  # fmt: skip


def _check_free(output: Path, checkpoint: Any, fmt: str, overwrite: bool) -> None:
    """Checked before anything is loaded: the exported file (a folder for ``hf``) is never the
    checkpoint, and it and its sidecar do not exist (without ``overwrite``)."""
    from .export import sidecar_path

    if isinstance(checkpoint, (str, os.PathLike)) and _same_file(output, checkpoint):
        raise ValueError(f"--output {str(output)!r} is the checkpoint itself; expected another "
                         "file name (the checkpoint is never replaced)")  # fmt: skip
    if output.is_dir() and fmt != "hf":
        raise ValueError(f"--output {str(output)!r} is a folder; expected a file name")
    for path in (output, sidecar_path(output)):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{str(path)!r} already exists; pass --overwrite to replace it")


def run_export(
    checkpoint: Any,
    output: str | os.PathLike,
    blocks: int | Sequence[str] | None = None,
    fmt: str = "pt",
    options: CollapseConfig | None = None,
    *,
    report: str | os.PathLike | bool | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    fold_bn: bool | None = None,
    optimize: bool = False,
    val_from: str = "val",
    embed_normalization: bool | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a checkpoint's model without some of its blocks, repaired, as ``fmt``.

    Which blocks: by default the collapse its report chose (``report``: a ``report.json`` of
    ``lacoot run`` / ``lacoot collapse`` or its folder; ``None``: the one beside the checkpoint
    made from it, :func:`lacoot.report_choice.find_report`; ``False``: none), with the report's
    repair and calibration size, so the file computes the function the report measured;
    ``blocks`` an int: the report's point with that many blocks removed (without a report: the
    first ``blocks`` in ``options.criterion`` order, scored here); block names: those, repaired
    by ``options.repair``. ``options`` (criterion, repair, calib_samples) given with a report must
    agree with it.

    ``fmt``: ``pt``, ``torchscript`` or ``onnx`` (the last checked in onnxruntime when
    installed), batch norm folded for the inference formats unless ``fold_bn`` is False, a
    TorchScript file frozen and optimised for inference with ``optimize``. The input
    normalisation travels with it: a first normalising layer in TorchScript and ONNX files
    (unless ``embed_normalization`` is False) and always ``OUTPUT.json``. A language model
    (``checkpoint`` a :class:`lacoot.lm.Brought`, or a checkpoint of one) is written as ``hf``
    (a ``save_pretrained`` folder with its tokenizer) or ``onnx`` (dynamic batch and sequence).
    ``progress`` prints each phase. Returns :func:`lacoot.export.export_model`'s summary (MACs,
    parameters and latency of the exported model included) with ``report``: the report followed
    (or ``None``) and ``k``."""
    output = Path(output)
    _check_free(output, checkpoint, fmt, overwrite)
    say = _announcer(progress)
    sub = load_subject(checkpoint, resolve_device(device), data_dir, seed, val_from,
                       "the export", say)  # fmt: skip
    lm = sub.language_model
    _check_export_target(checkpoint, fmt, lm)
    removed, opts, followed = _export_choice(sub, blocks, options, report, seed, say)
    say(f"removing {removed} (repair {opts.repair!r})")
    shallow = _repaired_shallow(sub, removed, opts)
    say(f"writing {output} ({fmt})")
    write = _write_lm if lm else _write_image
    done = write(sub, shallow, output, fmt, removed, opts, fold_bn, optimize, embed_normalization)
    return done | {"report": followed, "k": len(removed)}


def _export_choice(
    sub: Subject, blocks: int | Sequence[str] | None, options: CollapseConfig | None,
    report: str | os.PathLike | bool | None, seed: int, say: Callable[[str], None],
) -> tuple[list[str], CollapseConfig, str | None]:  # fmt: skip
    """The blocks an export removes, the options that repair them and the report followed."""
    named = blocks is not None and not isinstance(blocks, int)
    found = None if named else find_report(sub.source, sub.state, report)
    if found is not None:
        chosen = choice(found[0], found[1], blocks, options)  # type: ignore[arg-type]
        say(f"following {chosen.path}: k = {chosen.k}")
        return chosen.removed, chosen.options, chosen.path
    opts = options or _default_options(sub)
    if blocks is None:
        places = " or ".join(f"{p} beside it" for p in REPORT_PLACES)
        raise ValueError(
            f"no collapse report for {sub.source!r} ({places}, made from this checkpoint): "
            "expected --blocks (a count or names), --report REPORT.json, or lacoot collapse first"
        )
    return _removed_blocks(sub, blocks, opts, seed, say), opts, None


def _default_options(sub: Subject) -> CollapseConfig:
    """The collapse options of a command given none: a language model's own defaults
    (:data:`lacoot.config.LM_DEFAULTS`) where they differ."""
    if not sub.language_model:
        return CollapseConfig()
    return CollapseConfig.from_dict(CollapseConfig.lm_defaults())


def _repaired_shallow(sub: Subject, removed: list[str], opts: CollapseConfig) -> nn.Module:
    """The subject's model without ``removed``, repaired as a sweep repairs it (the faded blocks
    of the training get no patch)."""
    from .repair import repair

    if not removed:
        return sub.model.eval()
    if opts.repair == "none":
        return remove_blocks(sub.model, removed, sub.example).eval()
    return repair(sub.model, removed, sub.calib, opts.repair, opts.calib_samples,
                  identities=faded_blocks(sub.state)).eval()  # fmt: skip


def _write_image(
    sub: Subject, shallow: nn.Module, output: Path, fmt: str, removed: list[str],
    opts: CollapseConfig, fold_bn: bool | None, optimize: bool, embed: bool | None,
) -> dict[str, Any]:  # fmt: skip
    """An image model written by :func:`lacoot.export.export_model`, its latency conditions."""
    from .export import export_model

    before = load_average()
    with recording_latencies() as timed:
        done = export_model(shallow, output, fmt, sub.example, sub.model_spec, removed, fold_bn,
                            optimize=optimize, preprocessing=sub.preprocessing,
                            embed_normalization=embed)  # fmt: skip
    spreads = [t.spread for t in timed]
    done["latency_conditions"] = latency_conditions(spreads, before, load_average(),
                                                    sub.example.device)  # fmt: skip
    return done


def _removed_blocks(sub: Subject, blocks: int | Sequence[str], opts: CollapseConfig, seed: int,
                    say: Callable[[str], None]) -> list[str]:  # fmt: skip
    """The blocks to remove: the first ``blocks`` in ``opts.criterion`` order (scored as a
    sweep scores: with its repair, the training's faded blocks unpatched), or those named."""
    from .collapse import removal_order

    names = [b.name for b in sub.blocks]
    if not isinstance(blocks, int):
        unknown = [n for n in blocks if n not in names]
        if unknown:
            raise ValueError(f"--blocks {unknown} are not collapsible; expected some of {names}")
        return list(blocks)
    if blocks > len(names):
        raise ValueError(f"--blocks {blocks}, but the model has only {len(names)} blocks")
    say(f"scoring {len(names)} blocks by {opts.criterion!r}")
    scores = score_blocks(sub.model, sub.blocks, sub.calib, criterion=opts.criterion, seed=seed,
                          evaluate=sub.metric, repair=opts.repair,
                          calib_samples=opts.calib_samples,
                          identities=faded_blocks(sub.state))  # fmt: skip
    return removal_order(sub.blocks, scores)[:blocks]


LM_FORMATS = ("hf", "onnx")


def is_language_model(source: Any) -> bool:
    """Whether ``source`` (a :class:`lacoot.lm.Brought` or a checkpoint's path) is a language
    model (``hf:...``); a checkpoint that cannot be read is not (its reader says why later)."""
    from .lm import Brought
    from .model_source import split_source

    if isinstance(source, Brought):
        return True
    try:
        name = (load_checkpoint(source).get("model_spec") or {}).get("name", "")
    except (ValueError, OSError):
        return False
    return split_source(str(name))[0] == "hf"


def _write_lm(
    sub: Subject, shallow: nn.Module, output: Path, fmt: str, removed: list[str],
    opts: CollapseConfig, fold_bn: bool | None, optimize: bool, embed: bool | None,
) -> dict[str, Any]:  # fmt: skip
    """A language model written as a ``save_pretrained`` folder with its tokenizer (``hf``) or
    ONNX, with ``OUTPUT.json``; batch norm folding, ``optimize`` and ``embed`` do not apply."""
    from .lm import export_lm_onnx, save_lm, write_lm_sidecar
    from .profile import count_params, measure_latency

    diff = None
    if fmt == "hf":
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        save_lm(output, shallow, sub.tokenizer)
    else:
        diff = export_lm_onnx(shallow, sub.example, output)
    sidecar = write_lm_sidecar(output, fmt, sub, removed)
    shallow.to(sub.example["input_ids"].device)
    before = load_average()
    latency = measure_latency(shallow, sub.example, repeats=opts.latency_repeats)
    return {
        "path": str(output), "format": fmt, "removed": removed, "folded_bn": False,
        "optimized": False, "normalization_embedded": False, "sidecar": str(sidecar),
        "macs": count_macs(shallow, sub.example), "params": count_params(shallow),
        "latency_ms": latency.median_ms, "onnx_max_abs_diff": diff,
        "latency_conditions": latency_conditions([latency.spread], before, load_average(),
                                                 sub.example["input_ids"].device),
    }  # fmt: skip


def _config_text(cfg: RunConfig) -> str:
    """The options as YAML (JSON, which YAML reads too, when pyyaml is not installed)."""
    try:
        import yaml
    except ImportError:
        return json.dumps(cfg.to_dict(), indent=2) + "\n"
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def run_all(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict[str, Any] | None:
    """The main job: train with LaCoOT, then collapse and report into ``cfg.out`` (with the
    options used as ``config.yaml``). The scoring and the choice need a validation split
    (``val_fraction > 0``) or ``val_from="train"``.

    The folder is held for the whole job. Under ``torchrun`` every process trains and rank 0
    alone collapses and reports; the other ranks return ``None``.
    """
    cfg.check_val_split("lacoot run scores the blocks and chooses the collapse on it")
    distributed = os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")
    folder = None if distributed else OutputFolder.open(cfg.out, command_line())
    with _holding(folder):
        ckpt, _ = run_training(cfg, overwrite=overwrite, resume=resume, folder=folder)
        if env_rank() != 0:
            return None
        held = folder if folder is not None else OutputFolder.open(cfg.out, command_line())
        with _holding(None if folder is not None else held):
            report = run_collapse(
                ckpt, cfg.out, cfg.collapse_config().or_default_budget(), device=cfg.device,
                seed=cfg.seed, overwrite=True, progress=cfg.progress, val_from=cfg.val_from,
                folder=held,
            )  # fmt: skip
            atomic_write_text(Path(cfg.out) / "config.yaml", _config_text(cfg))
            held.commit()
    return report
