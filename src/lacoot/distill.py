"""Knowledge distillation: the loss, and the teacher read from a file.

A student trained with ``distill_weight`` ``w`` > 0 minimises, per batch,

    (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton, Vinyals and Dean 2015; ``T`` is ``distill_temperature``; the ``T^2`` keeps the soft
term's gradient on the scale of the hard one's). The teacher is a model lacoot wrote: a
checkpoint of ``lacoot train`` (its model as trained last: blocks its training faded out are
removed) or a model file of ``lacoot export`` / ``lacoot collapse`` (``.pt``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["distillation_loss", "load_teacher"]

TEACHER_FILES = "a checkpoint of lacoot train or a model file of lacoot export (.pt)"


def distillation_loss(
    student: Tensor, teacher: Tensor, hard: Tensor, weight: float, temperature: float
) -> Tensor:
    """``(1 - weight) * hard + weight * T^2 * KL(p_teacher || p_student)`` at temperature ``T``.

    ``student``, ``teacher``: logits ``(N, C)`` (the teacher's carry no gradient); ``hard``: the
    cross-entropy with the labels (a scalar), weighted ``1 - weight``. The KL divergence is the
    mean over the ``N`` samples, in nats."""
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / t, dim=1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * t * t * soft


def _close(a: Any, b: Any) -> bool:
    if len(a) != len(b):
        return False
    return all(math.isclose(x, y, rel_tol=1e-3) for x, y in zip(a, b, strict=True))


def load_teacher(
    path: str | os.PathLike, device: torch.device, preprocessing: dict[str, Any]
) -> tuple[nn.Module, dict[str, str]]:
    """The teacher model of ``path`` on ``device``, in eval mode (:func:`lacoot.train.train`
    freezes the teacher it is given), and the record ``{"path", "format", "sha256"}`` of the
    file. ``preprocessing`` is the input normalisation
    of the run: a teacher that expects another one is a ``ValueError`` naming both (it would
    see other inputs than it was trained on)."""
    from .blocks import remove_blocks
    from .checkpoint import CheckpointError, faded_blocks, safe_torch_load
    from .export import load
    from .init_weights import file_sha256
    from .pipeline import model_from_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--teacher {str(path)!r} does not exist; expected {TEACHER_FILES}")
    state = safe_torch_load(path, "--teacher", TEACHER_FILES)
    if isinstance(state, dict) and state.get("kind") == "lacoot-model":
        model, kind = load(path, map_location=device), "lacoot model file"
    elif isinstance(state, dict) and "model_spec" in state and "model" in state:
        try:
            model, _, _ = model_from_checkpoint(state, path, device)
        except CheckpointError as exc:
            raise ValueError(f"--teacher: {exc}") from None
        faded = faded_blocks(state)
        model, kind = (remove_blocks(model, faded) if faded else model), "lacoot checkpoint"
    else:
        raise ValueError(f"--teacher {str(path)!r} is neither; expected {TEACHER_FILES}")
    theirs = state.get("preprocessing") or {}
    for key in ("mean", "std"):
        if key in theirs and key in preprocessing and not _close(theirs[key], preprocessing[key]):
            raise ValueError(
                f"--teacher {str(path)!r} expects inputs normalised with {key} {theirs[key]}, "
                f"this run feeds {key} {preprocessing[key]}; expected a teacher trained on the "
                "same data and splits"
            )
    return model.to(device).eval(), {"path": str(path), "format": kind, "sha256": file_sha256(path)}
