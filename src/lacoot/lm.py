"""A Hugging Face language model brought by ``--model hf:...`` and the text corpus that judges it:
the steps of the pipeline that differ from an image checkpoint's.

The model is loaded in float32 (:func:`lacoot.model_source.load_hf`), the corpus tokenised by its
tokenizer and split (:mod:`lacoot.data.text`); without training every chunk that is not test
calibrates (scores, chooses, repairs). The sweep's metric is minus the perplexity, the
next-token accuracy of the same passes kept beside it (:class:`PerplexityAndAccuracy`). A
collapse is written as a ``save_pretrained`` folder with its tokenizer, or as ONNX with dynamic
batch and sequence axes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._io import atomic_write_text
from ._version import __version__
from .blocks import find_blocks, remove_blocks
from .config import LM_DEFAULTS, RunConfig
from .inputs import first_samples
from .lm_metrics import PerplexityAndAccuracy
from .subject import Subject

__all__ = ["Brought", "lm_subject", "save_lm", "export_lm_onnx", "add_token_accuracy"]


@dataclass(frozen=True)
class Brought:
    """A model named by ``--model`` (``hf:FOLDER`` or ``hf:FILE.gguf``) instead of a lacoot
    checkpoint, and the text corpus that judges it (``dataset="text"``, ``data_dir``)."""

    model: str
    data_dir: str | None
    dataset: str = "text"
    seq_len: int = RunConfig.seq_len
    test_fraction: float = RunConfig.test_fraction
    batch_size: int = LM_DEFAULTS["batch_size"]

    def check(self) -> None:
        """``ValueError`` naming the flag unless this is a language model with a text corpus."""
        from .model_source import split_source

        if split_source(self.model)[0] != "hf":
            raise ValueError(
                f"--model {self.model!r} without a checkpoint; expected hf:FOLDER or "
                "hf:FILE.gguf (a zoo, timm or torchvision model is trained first: lacoot train)"
            )
        if self.dataset != "text":
            raise ValueError(f"--dataset {self.dataset!r} with --model {self.model!r}; expected "
                             "--dataset text (a folder of plain-text files)")  # fmt: skip
        if self.data_dir is None:
            raise ValueError("--dataset text needs --data-dir: the folder of .txt, .gz or "
                             "suffix-less text files")  # fmt: skip


def _check_vocabulary(model: nn.Module, chunks: Tensor, value: str) -> None:
    """Every token id of the corpus must be a row of the model's embedding."""
    rows = model.get_input_embeddings().num_embeddings
    top = int(chunks.max()) if chunks.numel() else -1
    if top >= rows:
        raise ValueError(
            f"--model {value!r}: its tokenizer gives token id {top}, but its embedding has "
            f"{rows} rows; expected the model's own tokenizer"
        )


def lm_subject(
    brought: Brought, device: torch.device, seed: int, say: Callable[[str], None]
) -> Subject:
    """The model of ``brought`` on ``device`` with its decoder layers as blocks, its corpus
    split into calibration (every chunk not held out for test) and test."""
    from .data.text import TextLoader, load_text
    from .model_source import load_hf

    brought.check()
    say(f"loading {brought.model} (float32)")
    model, tokenizer = load_hf(brought.model)
    model.to(device)
    splits = load_text(brought.data_dir, tokenizer, brought.seq_len, 0.0, brought.test_fraction,
                       seed, say)  # fmt: skip
    _check_vocabulary(model, torch.cat([splits.train, splits.test]), brought.model)
    say(f"calibration: the {len(splits.train)} train sequences (no lacoot training here)")
    calib = TextLoader(splits.train, brought.batch_size, device=device)
    test = TextLoader(splits.test, brought.batch_size, device=device)
    example = first_samples(next(iter(calib))[0], 2)
    blocks = find_blocks(model, example)
    say(f"{len(blocks)} blocks: {', '.join(b.name for b in blocks)}")
    layers = getattr(model.config, "num_hidden_layers", None)
    spec = {"name": brought.model, "library": "transformers",
            "architecture": type(model).__name__, "layers": layers}  # fmt: skip
    data_spec = {"dataset": "text", "data_dir": brought.data_dir, "seq_len": brought.seq_len,
                 "test_fraction": brought.test_fraction, "split_seed": seed,
                 "batch_size": brought.batch_size, "files": splits.files,
                 "tokens": splits.tokens, "sequences": splits.counts()}  # fmt: skip
    return Subject(
        model=model, blocks=blocks, calib=calib, test=test, example=first_samples(example, 1),
        metric=PerplexityAndAccuracy(), model_spec=spec, data_spec=data_spec,
        preprocessing=_text_input(tokenizer, brought.seq_len),
        fingerprint={"checkpoint": None, "now": {"text": splits.fingerprint}},
        source=brought.model, tokenizer=tokenizer,
    )  # fmt: skip


def _text_input(tokenizer: Any, seq_len: int) -> dict[str, Any]:
    """What the model takes and gives, for the report and the export's sidecar."""
    return {
        "kind": "text", "tokenizer": type(tokenizer).__name__, "seq_len": seq_len,
        "inputs": "input_ids and attention_mask, int64 (batch, sequence)",
        "output": "next-token logits, float32 (batch, sequence, vocabulary)",
    }  # fmt: skip


def add_token_accuracy(report: dict[str, Any], metric: Any, calib: Any, test: Any) -> None:
    """Every sweep point of ``report`` (and the chosen one) gets the next-token accuracy of the
    passes that measured its perplexity: ``token_accuracy`` ``{"val", "test"}``, and the same
    in its ``unrepaired`` figures."""

    def of(values: dict[str, Any]) -> dict[str, float | None]:
        return {"val": metric.accuracy(calib, values.get("val_accuracy")),
                "test": metric.accuracy(test, values.get("test_accuracy"))}  # fmt: skip

    for sweep in report["sweeps"].values():
        for point in sweep["points"]:
            point["token_accuracy"] = of(point)
            point["unrepaired"]["token_accuracy"] = of(point["unrepaired"])
    chosen = report["chosen"]
    chosen["token_accuracy"] = of(chosen)
    chosen["unrepaired"]["token_accuracy"] = of(chosen["unrepaired"])


def save_lm(path: Path, model: nn.Module, tokenizer: Any) -> None:
    """``model`` and ``tokenizer`` as a ``save_pretrained`` folder at ``path`` (plain
    ``transformers`` reloads it)."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


class _Logits(nn.Module):
    """The model as ONNX sees it: ``(input_ids, attention_mask) -> logits``, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          use_cache=False).logits  # fmt: skip


ONNX_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch",
             1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}  # fmt: skip


def export_lm_onnx(model: nn.Module, example: dict[str, Tensor], path: Path) -> float | None:
    """Write ``model`` as ONNX (inputs ``input_ids``, ``attention_mask``; output ``logits``;
    batch and sequence axes dynamic) and check it in onnxruntime, when installed, on a batch of
    another size and length with a left-padded row; returns the largest difference on real
    tokens (a ValueError beyond ``atol=1e-4, rtol=1e-3``)."""
    from .export import _write_via_temp

    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'lacoot[onnx]'") from None
    wrapped = _Logits(model.cpu().eval()).eval()
    args = (example["input_ids"].cpu(), example["attention_mask"].cpu())

    def write(tmp: str) -> None:
        names = ["input_ids", "attention_mask"]
        torch.onnx.export(wrapped, args, tmp, input_names=names, output_names=["logits"],
                          dynamic_axes=ONNX_AXES, dynamo=False)  # fmt: skip

    _write_via_temp(path, write)
    vocab = model.get_input_embeddings().num_embeddings
    return _check_lm_onnx(wrapped, path, vocab, args[0].shape[1])


def _check_lm_onnx(wrapped: nn.Module, path: Path, vocab: int, length: int) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, max(2, length - 1)), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :1] = 0  # a left-padded row
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input_ids": ids.numpy(),
                                              "attention_mask": mask.numpy()})[0])  # fmt: skip
    with torch.no_grad():
        want = wrapped(ids, mask)
    real = mask.bool()
    err = float((got[real] - want[real]).abs().max())
    if not torch.allclose(got[real], want[real], rtol=1e-3, atol=1e-4):
        raise ValueError(f"ONNX output differs from torch's by {err:.3g}; file {path}")
    return err


def write_lm_sidecar(path: Path, fmt: str, subject: Subject, removed: list[str]) -> Path:
    """``<path>.json``: what the exported language model takes and gives."""
    from .export import sidecar_path

    record = {"file": path.name, "format": fmt, "lacoot_version": __version__,
              "source": subject.source, "removed_blocks": list(removed),
              "input": subject.preprocessing}  # fmt: skip
    target = sidecar_path(path)
    atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target


# ------------------------------------------------------------------------------- training
@dataclass
class LMTraining:
    """What ``lacoot train --model hf:...`` trains: the model (its logits flattened to
    ``(B * T, V)`` while the hook ``flat`` is attached, so that the training loop's
    classification loss and accuracy are per token), its blocks, its loaders (targets
    ``(B * T,)``) and what the checkpoint records."""

    model: nn.Module
    blocks: list[Any]
    train: Any
    val: Any
    test: Any
    fingerprint: str
    model_spec: dict[str, Any]
    preprocessing: dict[str, Any]
    init: dict[str, str] | None
    flat: Any
    teacher: nn.Module | None = None  # distilled from (--teacher), its logits flattened too
    taught: dict[str, str] | None = None  # the teacher's record: path, format, sha256


def _flatten_logits(module: nn.Module, args: Any, output: Any) -> Tensor:
    from .metrics import logits_of

    return logits_of(output).flatten(0, 1)  # (B, T, V) -> (B * T, V)


def lm_training(cfg: RunConfig, device: torch.device, rank: int, world_size: int,
                say: Callable[[str], None]) -> LMTraining:  # fmt: skip
    """The language model of ``cfg.model`` (started from ``cfg.init`` when given) and its text
    corpus split into train, validation and test, ready for :func:`lacoot.train.train`. Under
    ``torchrun`` the training loader yields rank ``rank``'s shard of each global batch of
    ``cfg.batch_size`` sequences; validation and test are whole on every rank."""
    from .data.text import TextLoader, load_text
    from .init_weights import load_init
    from .model_source import load_hf

    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the {world_size} "
                         "processes; the batch size is the global batch, split evenly over the "
                         "processes")  # fmt: skip
    Brought(cfg.model, cfg.data_dir, cfg.dataset).check()
    say(f"loading {cfg.model} (float32)")
    model, tokenizer = load_hf(cfg.model)
    init = None if cfg.init is None else load_init(cfg.init, model, cfg.model)
    teacher, taught = (None, None) if cfg.teacher is None else load_lm_teacher(
        cfg.teacher, device, model, tokenizer
    )  # fmt: skip
    model.to(device)
    splits = load_text(cfg.data_dir, tokenizer, cfg.seq_len, cfg.val_fraction, cfg.test_fraction,
                       cfg.seed, say)  # fmt: skip
    _check_vocabulary(model, torch.cat([splits.train, splits.val, splits.test]), cfg.model)
    if cfg.batch_size > len(splits.train):
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the training split "
                         f"({len(splits.train)} sequences); expected at most that")  # fmt: skip
    loaders = [TextLoader(chunks, cfg.batch_size, device=device, flat_targets=True)
               for chunks in (splits.val, splits.test)]  # fmt: skip
    train = TextLoader(splits.train, cfg.batch_size // world_size, shuffle=True, seed=cfg.seed,
                       drop_last=True, device=device, flat_targets=True, rank=rank,
                       world_size=world_size)  # fmt: skip
    blocks = find_blocks(model, first_samples(next(iter(loaders[1]))[0], 2))
    spec = {"name": cfg.model, "library": "transformers", "architecture": type(model).__name__,
            "layers": getattr(model.config, "num_hidden_layers", None)}  # fmt: skip
    return LMTraining(
        model=model, blocks=blocks, train=train, val=loaders[0] if len(splits.val) else None,
        test=loaders[1], fingerprint=splits.fingerprint, model_spec=spec,
        preprocessing=_text_input(tokenizer, cfg.seq_len), init=init,
        flat=model.register_forward_hook(_flatten_logits), teacher=teacher, taught=taught,
    )  # fmt: skip


LM_TEACHERS = "hf:FOLDER, hf:FILE.gguf or a checkpoint of lacoot train on a language model"


def load_lm_teacher(
    value: str, device: torch.device, student: nn.Module, tokenizer: Any
) -> tuple[nn.Module, dict[str, str]]:
    """The teacher of a language model's distillation (``--teacher``): ``hf:FOLDER`` or
    ``hf:FILE.gguf`` (the model as it is, typically the one being made shallower), or a
    ``checkpoint.pt`` of ``lacoot train`` on a language model (its model as trained last: layers
    its training faded out removed). In eval mode on ``device``, its logits flattened to
    ``(B * T, V)`` as the student's are; returned with its record ``{"path", "format",
    "sha256"}`` (of the file; of the weights for a folder). A teacher whose vocabulary (token
    to id) or number of logits differs from the student's is a ``ValueError`` naming both."""
    from .checkpoint import CheckpointError, faded_blocks, safe_torch_load
    from .init_weights import file_sha256, weights_sha256
    from .model_source import load_hf, split_source

    if split_source(value)[0] == "hf":
        teacher, theirs = load_hf(value)
        where = Path(split_source(value)[1])
        kind = "gguf file" if where.suffix.lower() == ".gguf" else "hf folder"
        digest = file_sha256(where) if where.is_file() else weights_sha256(teacher)
    else:
        state = safe_torch_load(value, "--teacher", LM_TEACHERS)
        name = (state.get("model_spec") or {}).get("name", "") if isinstance(state, dict) else ""
        if not name.startswith("hf:") or "model" not in state:
            raise ValueError(f"--teacher {value!r} is not a checkpoint of lacoot train on a "
                             f"language model; expected {LM_TEACHERS}")  # fmt: skip
        try:
            teacher, theirs = lm_from_checkpoint(state, value)
        except CheckpointError as exc:
            raise ValueError(f"--teacher: {exc}") from None
        faded = faded_blocks(state)
        teacher = remove_blocks(teacher, faded) if faded else teacher
        kind, digest = "lacoot checkpoint", file_sha256(value)
    sizes = [m.get_input_embeddings().num_embeddings for m in (teacher, student)]
    if theirs.get_vocab() != tokenizer.get_vocab() or sizes[0] != sizes[1]:
        raise ValueError(
            f"--teacher {value!r} has another vocabulary than the model trained ({sizes[0]} "
            f"logits and {len(theirs)} tokens, against {sizes[1]} and {len(tokenizer)}, or the "
            "same tokens numbered otherwise); expected a teacher with the student's tokenizer"
        )
    teacher.register_forward_hook(_flatten_logits)
    return teacher.to(device).eval(), {"path": value, "format": kind, "sha256": digest}


def lm_from_checkpoint(state: dict[str, Any], checkpoint: str) -> tuple[nn.Module, Any]:
    """The language model a ``lacoot train`` checkpoint trained (its folder ``hf:...`` loaded,
    the checkpoint's weights in it) and its tokenizer; weights that do not fit are a
    :class:`lacoot.checkpoint.CheckpointError` naming them."""
    from .checkpoint import load_trained_weights
    from .model_source import load_hf

    name = state["model_spec"]["name"]
    model, tokenizer = load_hf(name)
    load_trained_weights(model, state, checkpoint, name,
                         expected="the model folder it was trained from")  # fmt: skip
    return model, tokenizer


def lm_checkpoint_subject(
    state: dict[str, Any], checkpoint: str, device: torch.device, data_dir: str | None,
    val_from: str, say: Callable[[str], None],
) -> Subject:  # fmt: skip
    """A language model trained by ``lacoot train``: rebuilt from its folder (``hf:...``) with
    the checkpoint's weights, and its corpus split as in the training (the validation split
    calibrates, or the training split with ``val_from="train"`` when none was held out)."""
    from .data.text import TextLoader, load_text

    spec, ds = state["model_spec"], dict(state["data_spec"])
    ds["data_dir"] = data_dir if data_dir is not None else ds["data_dir"]
    model, tokenizer = lm_from_checkpoint(state, checkpoint)
    model.to(device).eval()
    splits = load_text(ds["data_dir"], tokenizer, ds["seq_len"], ds["val_fraction"],
                       ds["test_fraction"], ds["split_seed"], say)  # fmt: skip
    if (len(splits.val) > 0) == (val_from == "train"):
        raise ValueError(f"val_from={val_from!r} with val_fraction={ds['val_fraction']}; expected "
                         "val_from='val' with a validation split, 'train' without one")  # fmt: skip
    calib = TextLoader(splits.val if len(splits.val) else splits.train, ds["batch_size"],
                       device=device)  # fmt: skip
    example = first_samples(next(iter(calib))[0], 2)
    now = {"train": splits.fingerprint, "test": splits.fingerprint}
    return Subject(
        model=model, blocks=find_blocks(model, example), calib=calib,
        test=TextLoader(splits.test, ds["batch_size"], device=device),
        example=first_samples(example, 1), metric=PerplexityAndAccuracy(), model_spec=spec,
        data_spec=ds, preprocessing=_text_input(tokenizer, ds["seq_len"]),
        fingerprint={"checkpoint": state.get("data_fingerprint"), "now": now},
        source=str(checkpoint), state=state, tokenizer=tokenizer,
    )  # fmt: skip
