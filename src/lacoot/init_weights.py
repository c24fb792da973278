"""The weights a training starts from (``--init``): read, checked key by key, fingerprinted.

A lacoot checkpoint (``checkpoint.pt``: its ``model``), a model file of ``lacoot export`` (a
collapsed one too: the training then keeps its architecture, :func:`init_shapes`), a plain
``state_dict`` saved with
``torch.save`` (read with ``weights_only``: no code runs) or a ``.safetensors`` file. The keys
must match the model's exactly: a weight missing, unexpected or of another shape is an error
naming them, never a partly initialised model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import safe_torch_load, weights_mismatch

__all__ = [
    "InitFile", "read_init", "load_init", "init_shapes", "file_sha256", "weights_sha256",
]  # fmt: skip

WRITERS = (
    "a lacoot checkpoint, a model file of lacoot export (.pt), "
    "torch.save(model.state_dict()) or safetensors"
)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 digest of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """The SHA-256 digest of a model's weights: every tensor of its state dict, name and bytes,
    in order (for weights that are no single file, such as a ``save_pretrained`` folder)."""
    h = hashlib.sha256()
    for key, t in model.state_dict().items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class InitFile:
    """An ``--init`` file read once: its weights, what kind of file it is and, for a model file
    of ``lacoot export``, its model spec and collapse (:func:`lacoot.export.collapsed_shape`)."""

    path: Path
    weights: dict[str, torch.Tensor]
    kind: str
    spec: dict[str, Any] | None = None
    collapse: dict[str, Any] | None = None


def read_init(path: str | os.PathLike) -> InitFile:
    """Read ``path`` (one of :data:`WRITERS`); a missing or foreign file is a ``ValueError``."""
    from .export import collapsed_shape

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--init {str(path)!r} does not exist; expected {WRITERS}")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"--init {str(path)!r} needs safetensors: pip install "
                             "safetensors") from None  # fmt: skip
        try:
            return InitFile(path, load_file(str(path)), "safetensors")
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise ValueError(f"--init {str(path)!r} is not a readable safetensors file "
                             f"({exc})") from None  # fmt: skip
    state: Any = safe_torch_load(path, "--init", WRITERS)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "model_spec" in state:
        return InitFile(path, state["model"], "lacoot checkpoint")
    if isinstance(state, dict) and state.get("kind") == "lacoot-model":
        collapse = collapsed_shape(state) if state["removed"] else None  # None: the full model
        return InitFile(path, state["state_dict"], "lacoot model file", state["model_spec"],
                        collapse)  # fmt: skip
    if (
        isinstance(state, dict)
        and state
        and all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        return InitFile(path, state, "state_dict")
    raise ValueError(f"--init {str(path)!r} holds neither a lacoot checkpoint nor a state_dict "
                     f"(a mapping of names to tensors); expected {WRITERS}")  # fmt: skip


def init_shapes(init: InitFile, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The collapses a model file of ``lacoot export`` went through (oldest first), for a
    training that starts from it: ``spec["shallow"]`` of :func:`lacoot.model_source.build_model`.
    Empty for any other file and for a model file of the full model. A collapsed file of another
    model (name, classes, channels or arguments) is a ``ValueError`` naming both."""
    if init.collapse is None or init.spec is None:
        return []
    theirs = init.spec
    keys = ("name", "num_classes", "in_channels")
    if any(theirs.get(k) != spec.get(k) for k in keys) or theirs.get("kwargs", {}) != spec.get(
        "kwargs", {}
    ):
        said = {k: theirs.get(k) for k in (*keys, "kwargs")}
        wanted = {k: spec.get(k) for k in (*keys, "kwargs")}
        raise ValueError(f"--init {str(init.path)!r} is a collapsed {said}; expected a collapse "
                         f"of the model trained here, {wanted}")  # fmt: skip
    return [*theirs.get("shallow", []), init.collapse]


def load_init(init: str | os.PathLike | InitFile, model: nn.Module, name: str) -> dict[str, str]:
    """Load the weights of ``init`` (a path or a file :func:`read_init` read) into ``model``
    (named ``name`` in messages), every key matched; returns ``{"path", "format", "sha256"}``
    to record with the run."""
    if not isinstance(init, InitFile):
        init = read_init(init)
    path = init.path
    why = weights_mismatch(model, init.weights)
    if why != "the weights do not load":
        raise ValueError(f"--init {str(path)!r} does not fit model {name!r} ({why}); expected "
                         "the weights of this very architecture and number of classes")  # fmt: skip
    try:
        model.load_state_dict(init.weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"--init {str(path)!r} does not load into model {name!r} "
                         f"({str(exc).splitlines()[0]})") from None  # fmt: skip
    return {"path": str(path), "format": init.kind, "sha256": file_sha256(path)}
