"""Save and load the physically shallower model; export it to TorchScript or ONNX.

A ``pt`` file holds the zoo specification of the model, the removed blocks, the input
normalisation and the state dict; :func:`load` rebuilds it without the original checkpoint
(``torch.load(weights_only=True)``: no code is unpickled). TorchScript and ONNX files stand alone:
by default their first layer normalises the input (:class:`Normalize`), so they take images
scaled to ``[0, 1]``. Every exported file has a sidecar ``<file>.json`` (:func:`write_sidecar`)
that says what input it expects and what its outputs mean.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._io import atomic_write_bytes, atomic_write_text
from ._version import __version__
from .blocks import rebuild_removed

__all__ = [
    "save_model", "load", "export_torchscript", "export_onnx", "check_onnx", "export_model",
    "FORMATS", "Normalize", "write_sidecar", "sidecar_path",
]  # fmt: skip

MODEL_FORMAT = 1
MODULE_FORMATS = ("pt", "torchscript", "onnx")  # what export_model writes
FORMATS = (*MODULE_FORMATS, "hf")  # hf: a Hugging Face model's save_pretrained folder (lacoot.lm)


def _collapse_of(
    model: nn.Module, spec: dict[str, Any], removed: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """How ``removed`` left ``model`` (the collapse of a fresh ``spec`` model, its own earlier
    collapses ``spec["shallow"]`` included): the removed blocks a :class:`LinearPatch` stands
    in for, with their shapes, and the containers they were deleted from (those now shorter)."""
    from .model_source import build_model
    from .repair import LinearPatch

    before = build_model(spec)
    deleted = sorted({
        parent for parent in (n.rpartition(".")[0] for n in removed)
        if isinstance(before.get_submodule(parent), (nn.Sequential, nn.ModuleList))
        and len(model.get_submodule(parent)) < len(before.get_submodule(parent))
    })  # fmt: skip
    patched = {}
    for name in removed:
        if name.rpartition(".")[0] in deleted:
            continue
        m = model.get_submodule(name)
        if isinstance(m, LinearPatch) and not isinstance(before.get_submodule(name), LinearPatch):
            patched[name] = {"channels": m.channels, "conv": m.conv}
    return patched, deleted


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    spec: dict[str, Any],
    removed: Sequence[str],
    preprocessing: dict[str, Any] | None = None,
) -> None:
    """Write a collapsed zoo (or timm/torchvision) model: ``spec`` (``name``, ``num_classes``,
    ``in_channels``, ``kwargs``; ``shallow`` when the model trained was itself a collapse), the
    removed block names (numbered as in the model ``spec`` builds), the input normalisation the
    model expects (``preprocessing``, see :func:`lacoot.pipeline.preprocessing`) and the
    weights. Removed blocks that a :class:`lacoot.repair.LinearPatch` stands in for
    (``repair="linear"``) are recorded with their patch's shape, so :func:`load` rebuilds them."""
    _check_spec(spec)
    patched, deleted = _collapse_of(model, spec, removed)
    buffer = io.BytesIO()
    torch.save(
        {
            "kind": "lacoot-model",
            "format": MODEL_FORMAT,
            "lacoot_version": __version__,
            "model_spec": spec,
            "removed": list(removed),
            "patched": patched,
            "deleted_from": deleted,
            "preprocessing": preprocessing,
            "state_dict": model.state_dict(),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


SPEC_KEYS = ("name", "num_classes", "in_channels")


def _check_spec(spec: Any, where: str = "spec") -> None:
    """A zoo specification: a dict with a registered ``name``, ``num_classes``, ``in_channels``
    and optional ``kwargs``."""
    from .model_source import split_source
    from .models import list_models

    missing = [k for k in SPEC_KEYS if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ValueError(
            f"{where} {spec!r} lacks {missing}; expected a zoo model specification "
            "{'name', 'num_classes', 'in_channels', 'kwargs'} (lacoot.load rebuilds zoo models "
            "only; save any other model with torch.save)"
        )
    if split_source(spec["name"])[0] in ("timm", "torchvision"):
        return  # rebuilt by its library (lacoot.model_source)
    if spec["name"] not in list_models():
        raise ValueError(f"{where} names model {spec['name']!r}, which is not in the zoo; "
                         f"valid names: {', '.join(list_models())}")  # fmt: skip


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (or ``lacoot export --format pt``), in eval mode.

    Raises ``ValueError`` naming the file if it is missing, unreadable, not a lacoot model, or its
    weights do not fit its specification.
    """
    from .checkpoint import safe_torch_load
    from .model_source import build_model

    state = safe_torch_load(path, "model file", "lacoot export --format pt", map_location)
    if not isinstance(state, dict) or state.get("kind") != "lacoot-model":
        raise ValueError(f"{str(path)!r} is not a lacoot model file (see lacoot export)")
    spec = state.get("model_spec")
    _check_spec(spec, f"model file {str(path)!r}: its specification")
    model = rebuild_collapsed(build_model(spec), collapsed_shape(state))
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"weights in {str(path)!r} do not fit {spec['name']} ({first})") from None
    return model.to(map_location).eval()


def collapsed_shape(state: dict[str, Any]) -> dict[str, Any]:
    """What a model file records of its collapse: ``{"removed", "patched", "deleted_from"}``
    (``deleted_from`` inferred for files written before lacoot recorded it: every container a
    removed block was in)."""
    return {"removed": list(state["removed"]), "patched": dict(state.get("patched", {})),
            "deleted_from": state.get("deleted_from")}  # fmt: skip


def rebuild_collapsed(model: nn.Module, shape: dict[str, Any]) -> nn.Module:
    """``model`` (freshly built) as it was collapsed (:func:`collapsed_shape`): its linear
    patches put in place, the other removed blocks deleted or made identity, ready to load the
    collapsed model's weights."""
    from .repair import LinearPatch

    patched = shape.get("patched", {})
    for name, patch in patched.items():  # in place, before any deletion renumbers a container
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, LinearPatch(patch["channels"], patch["conv"]))
    names = [n for n in shape["removed"] if n not in patched]
    deleted = shape.get("deleted_from")
    if deleted is None:
        parents = {n.rpartition(".")[0] for n in names}
        containers = (nn.Sequential, nn.ModuleList)
        deleted = [p for p in parents if isinstance(model.get_submodule(p), containers)]
    return rebuild_removed(model, names, deleted)


class Normalize(nn.Module):
    """An exported model's first layer: ``model((x - mean) / std)`` per channel, so that the
    exported file takes images scaled to ``[0, 1]`` (``pixel / 255``)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the input description of an exported file goes: ``<file>.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def write_sidecar(
    path: str | os.PathLike, fmt: str, preprocessing: dict[str, Any], embedded: bool,
    removed: Sequence[str],
) -> Path:  # fmt: skip
    """Write ``<path>.json``: the input the model at ``path`` expects (shape, layout, channel
    order, scale, mean and std and whether the model applies them itself) and its outputs
    (class names)."""
    pre = dict(preprocessing)
    where = ("inside the model (its first layer): feed pixel / 255" if embedded
             else "by the caller: feed (pixel / 255 - mean) / std")  # fmt: skip
    record = {
        "file": Path(path).name,
        "format": fmt,
        "lacoot_version": __version__,
        "removed_blocks": list(removed),
        "input": {
            k: pre.get(k)
            for k in ("input_shape", "layout", "dtype", "channel_order", "scale", "mean", "std")
        }  # fmt: skip
        | {"normalization_applied": where, "normalize": pre.get("normalize")},
        "output": {"kind": "logits", "class_names": pre.get("class_names")},
    }
    target = sidecar_path(path)
    atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    return target


def _write_via_temp(path: Path, write: Any) -> None:
    """Let ``write(tmp_path)`` produce the file, then move it into place atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_torchscript(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike, optimize: bool = False
) -> torch.jit.ScriptModule:
    """Trace ``model`` (eval mode) on ``example_input`` and save it as a TorchScript file; return
    the module a deployment runs.

    ``optimize`` writes the traced module frozen (``torch.jit.freeze``: weights become constants)
    and returns it passed through ``torch.jit.optimize_for_inference`` (convolutions fused with
    what follows them, oneDNN layouts and prepacked weights on CPU), which the deployment applies
    after loading: ``torch.jit.optimize_for_inference(torch.jit.load(path))``. The optimised
    module itself cannot be saved and loaded back (PyTorch 2.x). It is faster at large batches
    on CPU and can be slower at batch 1 (``docs/benchmarks/collapse_latency.md``).
    """
    model = model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example_input)
        if optimize:
            traced = torch.jit.freeze(traced)
    _write_via_temp(Path(path), lambda tmp: torch.jit.save(traced, tmp))
    return torch.jit.optimize_for_inference(traced) if optimize else traced


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike) -> None:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension (needs ``onnx``)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError("ONNX export needs the onnx package: pip install 'lacoot[onnx]'") from None
    model = model.eval()

    def write(tmp: str) -> None:
        torch.onnx.export(
            model,
            (example_input,),
            tmp,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )

    _write_via_temp(Path(path), write)


def check_onnx(model: nn.Module, path: str | os.PathLike, example_input: Tensor) -> float | None:
    """Run the ONNX file at ``path`` in onnxruntime on 3 random inputs shaped like
    ``example_input`` and compare with ``model`` (CPU). Returns the largest absolute difference,
    or None when onnxruntime is not installed; a difference beyond ``rtol=1e-3, atol=1e-4`` is a
    ``ValueError``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    x = torch.randn(3, *example_input.shape[1:])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        want = model.cpu()(x)
    err = float((got - want).abs().max())
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
        raise ValueError(f"ONNX output differs from torch's by {err:.3g}; file {path}")
    return err


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    fmt: str,
    example_input: Tensor,
    spec: dict[str, Any],
    removed: Sequence[str],
    fold_bn: bool | None = None,
    latency_repeats: int = 20,
    optimize: bool = False,
    preprocessing: dict[str, Any] | None = None,
    embed_normalization: bool | None = None,
) -> dict[str, Any]:
    """Write a collapsed zoo model in one of :data:`FORMATS` and measure what was written.

    ``preprocessing`` (the input normalisation, :func:`lacoot.pipeline.preprocessing`) goes
    into the sidecar ``<path>.json`` (:func:`write_sidecar`) and a ``pt`` file; with
    ``embed_normalization`` (default: on for ``torchscript`` and ``onnx`` when
    ``preprocessing`` is given) the written model starts with :class:`Normalize` and takes
    images scaled to ``[0, 1]``.

    ``fold_bn`` (default: on for ``torchscript`` and ``onnx``, the inference formats; ``pt``
    files are rebuilt from the zoo by :func:`load` and keep their batch norms) folds every batch
    norm into the layer before it (:func:`lacoot.fold.fold_batchnorm`, checked on
    ``example_input``). ``optimize`` (``torchscript`` only) writes the module frozen, to be
    optimised for inference after loading (:func:`export_torchscript`). An ONNX file is checked
    in onnxruntime (:func:`check_onnx`). Returns ``{"path", "format", "removed", "folded_bn",
    "optimized", "macs", "params", "latency_ms", "onnx_max_abs_diff"}``: MACs per sample and
    parameters of the exported model, its median latency in milliseconds at the batch of
    ``example_input`` (``latency_repeats`` timed passes of the TorchScript module as deployed,
    optimised with ``optimize``; else of the eager model), the ONNX difference None unless
    checked.
    """
    from .fold import fold_batchnorm
    from .profile import count_macs, count_params, measure_latency

    if fmt not in MODULE_FORMATS:
        raise ValueError(f"format={fmt!r}; expected one of {', '.join(MODULE_FORMATS)}")
    fold = fmt != "pt" if fold_bn is None else bool(fold_bn)
    if fold and fmt == "pt":
        raise ValueError(
            "fold_bn=True needs an inference format (torchscript or onnx): a pt file is rebuilt "
            "from the zoo by lacoot.load, batch norms included"
        )
    if optimize and fmt != "torchscript":
        raise ValueError(f"optimize=True for format={fmt!r}; expected format 'torchscript'")
    embed = _embedding(fmt, preprocessing, embed_normalization)
    model = fold_batchnorm(model, example_input) if fold else model.eval()
    deployed = model
    if embed and preprocessing:
        deployed = Normalize(model, preprocessing["mean"], preprocessing["std"]).eval()
    diff, timed = None, deployed
    if fmt == "pt":
        save_model(path, model, spec, removed, preprocessing=preprocessing)
    elif fmt == "torchscript":
        timed = export_torchscript(deployed, example_input, path, optimize=optimize)
    else:
        export_onnx(deployed, example_input, path)
        diff = check_onnx(deployed, path, example_input)
    sidecar = write_sidecar(path, fmt, preprocessing, embed, removed) if preprocessing else None
    latency = measure_latency(timed, example_input, repeats=latency_repeats)
    return {
        "path": str(path), "format": fmt, "removed": list(removed), "folded_bn": fold,
        "optimized": bool(optimize), "normalization_embedded": embed,
        "sidecar": None if sidecar is None else str(sidecar),
        "macs": count_macs(model, example_input[:1]), "params": count_params(model),
        "latency_ms": latency.median_ms, "onnx_max_abs_diff": diff,
    }  # fmt: skip


def _embedding(fmt: str, preprocessing: dict[str, Any] | None, embed: bool | None) -> bool:
    """Whether the written model normalises its own input (see :func:`export_model`)."""
    if embed is None:
        return fmt != "pt" and bool(preprocessing)
    if embed and fmt == "pt":
        raise ValueError(
            "embed_normalization=True needs an inference format (torchscript or onnx): a pt "
            "file is rebuilt from the zoo by lacoot.load; its normalisation is in its .json"
        )
    if embed and not preprocessing:
        raise ValueError("embed_normalization=True, but no normalisation is known (preprocessing)")
    return bool(embed)
