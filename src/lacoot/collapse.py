"""Collapse blocks in score order: the cumulative sweep, the budgeted choice, the shallow model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Block, remove_blocks
from .profile import compare_latency, count_macs, count_params, evaluate_accuracy, model_device

__all__ = ["removal_order", "choose_blocks", "collapse", "sweep", "Sweep", "SweepPoint"]

Loader = Iterable[tuple[Tensor, Tensor]]


def removal_order(blocks: Sequence[Block], scores: Mapping[str, float]) -> list[str]:
    """Block names sorted by ascending score (removed first); ties go to the deeper block."""
    missing = [b.name for b in blocks if b.name not in scores]
    if missing:
        raise ValueError(f"no score for blocks {missing}; expected a score for every block")
    ordered = sorted(blocks, key=lambda b: (scores[b.name], -b.order))
    return [b.name for b in ordered]


def choose_blocks(
    blocks: Sequence[Block],
    scores: Mapping[str, float],
    full_macs: int,
    n_blocks: int | None = None,
    max_macs: float | None = None,
) -> list[str]:
    """The blocks a budget removes, in removal order: the first ``n_blocks`` of the order, or as
    few as bring the MACs per sample to at most ``max_macs * full_macs``.

    ``full_macs`` is the whole model's MACs per sample; each block saves its own ``Block.macs``.
    """
    if (n_blocks is None) == (max_macs is None):
        raise ValueError(
            f"n_blocks={n_blocks!r}, max_macs={max_macs!r}; expected exactly one of them"
        )
    order = removal_order(blocks, scores)
    if n_blocks is not None:
        if not 1 <= n_blocks <= len(order):
            raise ValueError(f"n_blocks={n_blocks!r}; expected 1..{len(order)} blocks")
        return order[:n_blocks]
    assert max_macs is not None
    if not 0 < max_macs < 1:
        raise ValueError(f"max_macs={max_macs!r}; expected a fraction in (0, 1)")
    saves = {b.name: b.macs for b in blocks}
    chosen, macs = [], full_macs
    for name in order:
        if macs <= max_macs * full_macs:
            return chosen
        chosen.append(name)
        macs -= saves[name]
    if macs > max_macs * full_macs:
        raise ValueError(
            f"max_macs={max_macs}: removing every block leaves {macs / full_macs:.1%} of the MACs"
        )
    return chosen


@dataclass(frozen=True)
class SweepPoint:
    """The model with its ``k`` lowest-scored blocks removed (and repaired), measured.

    Accuracies are top-1 in percent, of the repaired model when the sweep repairs;
    ``unrepaired`` holds the ``val_accuracy`` and ``test_accuracy`` of the same collapse without
    repair (equal when the sweep does not repair). ``macs`` (per sample), ``params`` and
    ``latency_ms`` (batch size -> median forward time in milliseconds) are the repaired model's,
    linear patches included.
    """

    k: int
    removed: tuple[str, ...]
    val_accuracy: float | None
    test_accuracy: float | None
    macs: int
    params: int
    latency_ms: dict[int, float] = field(default_factory=dict)
    unrepaired: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed"] = list(self.removed)
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return d


@dataclass(frozen=True)
class Sweep:
    """Measurements of a cumulative collapse, ``points[k]`` with ``k`` blocks removed."""

    order: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    repair: str = "none"
    calib_samples: int = 0  # calibration images each repair used (0: no repair)

    @property
    def full(self) -> SweepPoint:
        return self.points[0]

    def best(
        self,
        max_drop: float | None = None,
        max_macs: float | None = None,
        max_blocks: int | None = None,
    ) -> SweepPoint:
        """Choose a collapse within a budget, judged on the validation accuracy.

        Parameters
        ----------
        max_drop : float, optional
            Largest allowed drop of validation accuracy from the full model, in percentage points.
        max_macs : float, optional
            Largest allowed MACs as a fraction of the full model's, in ``(0, 1]``.
        max_blocks : int, optional
            Remove at most this many blocks.

        Returns
        -------
        SweepPoint
            With ``max_macs``: the most accurate collapse (validation) meeting every budget, fewer
            MACs breaking ties. Otherwise the deepest collapse meeting them.

        Raises
        ------
        ValueError
            No budget given, a budget out of range, or no point meets them all.
        """
        if max_drop is None and max_macs is None and max_blocks is None:
            raise ValueError("no budget given; expected max_drop, max_macs or max_blocks")
        if max_drop is not None and not max_drop >= 0:
            raise ValueError(f"max_drop={max_drop!r}; expected a drop >= 0 percentage points")
        if max_macs is not None and not 0 < max_macs <= 1:
            raise ValueError(f"max_macs={max_macs!r}; expected a fraction in (0, 1]")
        if max_blocks is not None and not 0 <= max_blocks:
            raise ValueError(f"max_blocks={max_blocks!r}; expected a count >= 0")
        full = self.full
        if max_drop is not None and full.val_accuracy is None:
            raise ValueError("max_drop needs validation accuracies; the sweep has none")
        feasible = []
        for pt in self.points:
            if max_blocks is not None and pt.k > max_blocks:
                continue
            if max_macs is not None and pt.macs > max_macs * full.macs:
                continue
            if max_drop is not None and full.val_accuracy - pt.val_accuracy > max_drop + 1e-9:
                continue
            feasible.append(pt)
        if not feasible:
            raise ValueError(
                f"no collapse meets max_drop={max_drop}, max_macs={max_macs}, "
                f"max_blocks={max_blocks}: the sweep reaches "
                f"{min(p.macs for p in self.points) / full.macs:.1%} of the MACs, removing at most "
                f"{self.points[-1].k} blocks"
            )
        if max_macs is not None:
            return max(feasible, key=lambda p: (p.val_accuracy or 0.0, -p.macs))
        return max(feasible, key=lambda p: p.k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "repair": self.repair,
            "calib_samples": self.calib_samples,
            "points": [p.to_dict() for p in self.points],
        }


def collapse(model: nn.Module, selection: SweepPoint | Iterable[str | Block]) -> nn.Module:
    """A new, physically shallower model without the selected blocks (the original is untouched).

    ``selection`` is a :class:`SweepPoint` (e.g. ``sweep.best(max_drop=0.5)``) or block names.
    """
    names = selection.removed if isinstance(selection, SweepPoint) else selection
    return remove_blocks(model, names)


def sweep(
    model: nn.Module,
    blocks: Sequence[Block],
    scores: Mapping[str, float],
    val_loader: Loader | None,
    test_loader: Loader | None = None,
    max_blocks: int | None = None,
    example_input: Tensor | None = None,
    latency_batch_sizes: Sequence[int] = (1,),
    warmup: int = 3,
    repeats: int = 10,
    repair: str = "none",
    calib_loader: Loader | None = None,
    calib_samples: int = 2048,
    progress: Callable[[str], None] | None = None,
) -> Sweep:
    """Remove blocks cumulatively in score order and measure every step ``k = 0..K``.

    Parameters
    ----------
    model : nn.Module
        The trained model (left untouched).
    blocks, scores
        From :func:`lacoot.find_blocks` and :func:`lacoot.score_blocks`.
    val_loader, test_loader : iterable of (inputs, labels), optional
        Accuracy is measured on each given loader.
    max_blocks : int, optional
        ``K``; all blocks by default.
    example_input : Tensor, optional
        One sample with its batch dimension, ``(1, ...)``, used for MACs and latency; by default
        the first sample of ``val_loader`` (or ``test_loader``).
    latency_batch_sizes : sequence of int
        Batch sizes at which latency is measured (empty: no latency).
    warmup, repeats : int
        Latency measurement: the ``K + 1`` models take turns, ``repeats`` timed rounds after
        ``warmup`` untimed ones; the median per model is kept.
    repair : {"none", "bn", "linear"}
        Training-free repair of every collapse with ``k >= 1`` (:func:`lacoot.repair.repair`);
        the points then hold the repaired figures and, in ``unrepaired``, the plain ones.
    calib_loader : iterable of (inputs, labels), optional
        Calibration data of the repair; ``val_loader`` by default.
    calib_samples : int
        Calibration images per repair.
    progress : callable, optional
        Called with a short message after each measured ``k``.
    """
    from .repair import check_repair
    from .repair import repair as repair_model

    check_repair(repair)
    order = removal_order(blocks, scores)
    K = len(order) if max_blocks is None else max_blocks
    if not 0 <= K <= len(order):
        raise ValueError(f"max_blocks={max_blocks}; expected 0..{len(order)}")
    calib = calib_loader if calib_loader is not None else val_loader
    if repair != "none" and calib is None:
        raise ValueError(f"repair={repair!r} needs calibration data; pass calib_loader=...")
    device = model_device(model)
    example = _example_input(example_input, val_loader, test_loader).to(device)
    say = progress if progress is not None else (lambda message: None)
    plain = [remove_blocks(model, order[:k]) if k else model for k in range(K + 1)]
    models = plain
    if repair != "none":
        models = [model] + [
            repair_model(model, order[:k], calib, method=repair, n_samples=calib_samples)
            for k in range(1, K + 1)
        ]
        say(f"repaired {K} collapses ({repair}, {calib_samples} calibration images)")
    latencies = _latencies(models, example, latency_batch_sizes, warmup, repeats, say)
    points = []
    for k, current in enumerate(models):
        accuracy = _accuracies(current, val_loader, test_loader)
        unrepaired = (
            accuracy if current is plain[k] else _accuracies(plain[k], val_loader, test_loader)
        )
        points.append(
            SweepPoint(k=k, removed=tuple(order[:k]), val_accuracy=accuracy["val_accuracy"],
                       test_accuracy=accuracy["test_accuracy"],
                       macs=count_macs(current, example[:1]), params=count_params(current),
                       latency_ms=latencies[k], unrepaired=unrepaired)
        )  # fmt: skip
        shown = {n: "-" if v is None else f"{v:.2f}%" for n, v in accuracy.items()}
        say(f"k={k}: val {shown['val_accuracy']}, test {shown['test_accuracy']}")
    del models, plain
    if device.type == "cuda":
        torch.cuda.empty_cache()
    used = calib_samples if repair != "none" else 0
    return Sweep(order=tuple(order), points=tuple(points), repair=repair, calib_samples=used)


def _example_input(
    given: Tensor | None, val_loader: Loader | None, test_loader: Loader | None
) -> Tensor:
    """``given``, or the first sample of the first loader given, ``(1, ...)``."""
    if given is not None:
        return given
    source = val_loader if val_loader is not None else test_loader
    if source is None:
        raise ValueError("pass example_input, or a loader to take one sample from")
    return next(iter(source))[0][:1]


def _latencies(
    models: Sequence[nn.Module], example: Tensor, batch_sizes: Sequence[int], warmup: int,
    repeats: int, say: Callable[[str], None],
) -> list[dict[int, float]]:  # fmt: skip
    """Median latency (ms) of every model at every batch size, the models taking turns."""
    latencies: list[dict[int, float]] = [{} for _ in models]
    for bs in batch_sizes:
        say(f"latency of {len(models)} models at batch {bs}")
        batch = example.expand(bs, *example.shape[1:]).contiguous()
        timed = compare_latency(list(models), batch, warmup=warmup, repeats=repeats)
        for lat, t in zip(latencies, timed, strict=True):
            lat[bs] = t.median_ms
    return latencies


def _accuracies(
    model: nn.Module, val_loader: Loader | None, test_loader: Loader | None
) -> dict[str, float | None]:
    return {
        "val_accuracy": None if val_loader is None else evaluate_accuracy(model, val_loader),
        "test_accuracy": None if test_loader is None else evaluate_accuracy(model, test_loader),
    }
