"""Collapse blocks in score order: the cumulative sweep, the budgeted choice, the shallow model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Block, CollapseError, remove_blocks
from .config import CollapseConfig
from .inputs import first_samples, repeat_sample, to_device
from .metrics import Metric, metric_name, metric_text, top1_accuracy
from .profile import compare_latency, count_macs, count_params, model_device

__all__ = [
    "removal_order", "stages", "keep_deep_order", "choose_blocks", "collapse", "sweep", "Sweep",
    "SweepPoint",
]  # fmt: skip

Loader = Iterable[tuple[Tensor, Tensor]]


def removal_order(blocks: Sequence[Block], scores: Mapping[str, float]) -> list[str]:
    """Block names sorted by ascending score (removed first); ties go to the deeper block."""
    missing = [b.name for b in blocks if b.name not in scores]
    if missing:
        raise ValueError(f"no score for blocks {missing}; expected a score for every block")
    ordered = sorted(blocks, key=lambda b: (scores[b.name], -b.order))
    return [b.name for b in ordered]


def stages(blocks: Sequence[Block]) -> list[list[Block]]:
    """Blocks grouped into stages: a stage is the blocks with one feature shape
    (``Block.shape``), in execution order; stages from the shallowest to the deepest, ranked by
    their deepest block."""
    groups: dict[tuple[int, ...], list[Block]] = {}
    for b in sorted(blocks, key=lambda b: b.order):
        groups.setdefault(b.shape, []).append(b)
    return sorted(groups.values(), key=lambda g: g[-1].order)


def keep_deep_order(blocks: Sequence[Block], order: Sequence[str]) -> list[str]:
    """``order`` with the block that would empty both of the two deepest :func:`stages` moved
    last: removing blocks in the returned order empties those two stages only when every block
    goes. With fewer than two stages the order is unchanged."""
    groups = stages(blocks)
    if len(groups) < 2:
        return list(order)
    deep = {b.name for g in groups[-2:] for b in g}
    last = [n for n in order if n in deep][-1]
    return [n for n in order if n != last] + [last]


def choose_blocks(
    blocks: Sequence[Block],
    scores: Mapping[str, float],
    full_macs: int,
    n_blocks: int | None = None,
    max_macs: float | None = None,
    keep_deep: bool = False,
) -> list[str]:
    """The blocks a budget removes, in removal order: the first ``n_blocks`` of the order, or as
    few as bring the MACs per sample to at most ``max_macs * full_macs``.

    ``full_macs`` is the whole model's MACs per sample; each block saves its own ``Block.macs``.
    ``keep_deep``: the order is :func:`keep_deep_order`'s, so a budget short of every block keeps
    at least one block of the two deepest stages.
    """
    if (n_blocks is None) == (max_macs is None):
        raise ValueError(
            f"n_blocks={n_blocks!r}, max_macs={max_macs!r}; expected exactly one of them"
        )
    order = removal_order(blocks, scores)
    if keep_deep:
        order = keep_deep_order(blocks, order)
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

    ``val_accuracy`` and ``test_accuracy`` hold the sweep's evaluation function
    (:attr:`Sweep.metric`; top-1 accuracy in percent by default), of the repaired model when the
    sweep repairs;
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
    """Measurements of a cumulative collapse, ``points[k]`` with ``k`` blocks removed.

    ``metric`` names the evaluation function the points hold (higher is better); ``stopped``
    says why the sweep ended before removing every block of ``order`` (None when it did not).
    """

    order: tuple[str, ...]
    points: tuple[SweepPoint, ...]
    repair: str = "none"
    calib_samples: int = 0  # calibration images each repair used (0: no repair)
    metric: str = "top1_accuracy"
    stopped: str | None = None

    @property
    def full(self) -> SweepPoint:
        return self.points[0]

    def best(
        self,
        max_drop: float | None = None,
        max_macs: float | None = None,
        max_blocks: int | None = None,
        reference: float | None = None,
        max_latency: float | None = None,
        latency_batch: int | None = None,
    ) -> SweepPoint:
        """Choose a collapse within a budget, judged on the validation accuracy.

        Parameters
        ----------
        max_drop : float, optional
            Largest allowed drop of the validation metric from ``reference``, in its units
            (percentage points for accuracies).
        max_macs : float, optional
            Largest allowed MACs as a fraction of the full model's, in ``(0, 1]``.
        max_blocks : int, optional
            Remove at most this many blocks.
        reference : float, optional
            The validation metric ``max_drop`` is measured from; the full model's when None.
        max_latency : float, optional
            Largest allowed measured latency as a fraction of the full model's, in ``(0, 1]``,
            at batch size ``latency_batch`` (default: the largest the sweep measured). Medians of
            timed runs: a point near the limit may fall on either side of it in another run.

        Returns
        -------
        SweepPoint
            With ``max_macs`` or ``max_latency``: the most accurate collapse (validation) meeting
            every budget, fewer MACs breaking ties. Otherwise the deepest collapse meeting them.

        Raises
        ------
        ValueError
            No budget given, a budget out of range, or no point meets them all.
        """
        if max_drop is None and max_macs is None and max_blocks is None and max_latency is None:
            raise ValueError(
                "no budget given; expected max_drop, max_macs, max_blocks or max_latency"
            )
        if max_drop is not None and not max_drop >= 0:
            raise ValueError(f"max_drop={max_drop!r}; expected a drop >= 0 percentage points")
        if max_macs is not None and not 0 < max_macs <= 1:
            raise ValueError(f"max_macs={max_macs!r}; expected a fraction in (0, 1]")
        if max_blocks is not None and not 0 <= max_blocks:
            raise ValueError(f"max_blocks={max_blocks!r}; expected a count >= 0")
        full = self.full
        if max_drop is not None and full.val_accuracy is None:
            raise ValueError("max_drop needs validation accuracies; the sweep has none")
        ref = full.val_accuracy if reference is None else reference
        latency = self._latency_of(max_latency, latency_batch)
        feasible = []
        for pt in self.points:
            if latency is not None and latency(pt) > max_latency * latency(full):
                continue
            if max_blocks is not None and pt.k > max_blocks:
                continue
            if max_macs is not None and pt.macs > max_macs * full.macs:
                continue
            if max_drop is not None and ref - pt.val_accuracy > max_drop + 1e-9:
                continue
            feasible.append(pt)
        if not feasible:
            raise ValueError(
                f"no collapse meets max_drop={max_drop}, max_macs={max_macs}, "
                f"max_blocks={max_blocks}, max_latency={max_latency}: the sweep reaches "
                f"{min(p.macs for p in self.points) / full.macs:.1%} of the MACs, removing at most "
                f"{self.points[-1].k} blocks"
            )
        if max_macs is not None or max_latency is not None:
            return max(feasible, key=lambda p: (p.val_accuracy or 0.0, -p.macs))
        return max(feasible, key=lambda p: p.k)

    def _latency_of(
        self, max_latency: float | None, batch: int | None
    ) -> Callable[[SweepPoint], float] | None:
        """A point's latency at ``batch`` (default: the largest measured) for a ``max_latency``
        budget; None without one."""
        if max_latency is None:
            return None
        if not 0 < max_latency <= 1:
            raise ValueError(f"max_latency={max_latency!r}; expected a fraction in (0, 1]")
        measured = sorted(set.intersection(*(set(p.latency_ms) for p in self.points)))
        if not measured:
            raise ValueError("max_latency needs latencies; the sweep measured none")
        b = measured[-1] if batch is None else batch
        if b not in measured:
            raise ValueError(f"latency_batch={batch!r}; the sweep measured batch sizes {measured}")
        return lambda p: p.latency_ms[b]

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "repair": self.repair,
            "calib_samples": self.calib_samples,
            "metric": self.metric,
            "stopped": self.stopped,
            "points": [p.to_dict() for p in self.points],
        }


def collapse(
    model: nn.Module, selection: SweepPoint | Iterable[str | Block], example_input: Any = None
) -> nn.Module:
    """A new, shallower model without the selected blocks (the original is untouched), computing
    exactly what identity in their place computes (:func:`lacoot.blocks.remove_blocks`; with
    ``example_input`` deletions from any container are checked on it, without it only
    ``nn.Sequential`` ones are made).

    ``selection`` is a :class:`SweepPoint` (e.g. ``sweep.best(max_drop=0.5)``) or block names.
    """
    names = selection.removed if isinstance(selection, SweepPoint) else selection
    return remove_blocks(model, names, example_input)


def sweep(
    model: nn.Module,
    blocks: Sequence[Block],
    scores: Mapping[str, float],
    val_loader: Loader | None,
    test_loader: Loader | None = None,
    max_blocks: int | None = None,
    example_input: Any = None,
    latency_batch_sizes: Sequence[int] = CollapseConfig.latency_batch_sizes,
    warmup: int = 3,
    repeats: int = CollapseConfig.latency_repeats,
    repair: str = CollapseConfig.repair,
    calib_loader: Loader | None = None,
    calib_samples: int = CollapseConfig.calib_samples,
    progress: Callable[[str], None] | None = None,
    evaluate: Metric | None = None,
    identities: Sequence[str] = (),
) -> Sweep:
    """Remove blocks cumulatively in score order and measure every step ``k = 0..K``.

    Parameters
    ----------
    model : nn.Module
        The trained model (left untouched).
    blocks, scores
        From :func:`lacoot.find_blocks` and :func:`lacoot.score_blocks`.
    val_loader, test_loader : iterable of (inputs, targets), optional
        The evaluation function runs on each given loader; inputs may be a tensor, a tuple or a
        dict (:mod:`lacoot.inputs`).
    max_blocks : int, optional
        ``K``; all blocks by default.
    example_input : Tensor, tuple or dict, optional
        A batch (its first sample is used for MACs and latency, all of it to check each
        deletion); by default the first sample of ``val_loader`` (or ``test_loader``).
    latency_batch_sizes : sequence of int
        Batch sizes at which latency is measured (empty: no latency).
    warmup, repeats : int
        Latency measurement: the ``K + 1`` models take turns, ``repeats`` timed rounds after
        ``warmup`` untimed ones; the median per model is kept.
    repair : {"none", "bn", "linear", "fused"}
        Training-free repair of every collapse with ``k >= 1`` (:func:`lacoot.repair.repair`);
        the points then hold the repaired figures and, in ``unrepaired``, the plain ones. The
        default is the command's (``CollapseConfig.repair``); a Hugging Face model takes
        ``"none"`` or ``"fused"`` (patch modules cannot stand among its layers).
    calib_loader : iterable of (inputs, labels), optional
        Calibration data of the repair; ``val_loader`` by default.
    calib_samples : int
        Calibration images per repair.
    identities : sequence of str
        Blocks the training already replaced by the identity (faded out): the ``"linear"``
        repair puts no patch in their place (:func:`lacoot.repair.repair`).
    progress : callable, optional
        Called with a short message after each measured ``k``.
    evaluate : callable, optional
        ``fn(model, loader) -> float``, higher is better (:mod:`lacoot.metrics`:
        ``top1_accuracy``, the default, ``token_accuracy``, ``negative_perplexity``).

    A collapse that cannot be built (:class:`lacoot.blocks.CollapseError`: no container can
    run without the blocks) ends the sweep there; :attr:`Sweep.stopped` says why.
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
    example = to_device(_example_input(example_input, val_loader, test_loader), device)
    say = progress if progress is not None else (lambda message: None)
    evaluate = evaluate if evaluate is not None else top1_accuracy
    one = first_samples(example, 1)  # MACs are per sample
    plain, stopped = _collapses(model, order[:K], example)
    models = plain
    if repair != "none":
        models = [model] + [
            repair_model(
                model,
                order[:k],
                calib,
                method=repair,
                n_samples=calib_samples,
                collapsed=plain[k],
                identities=identities,
            )  # fmt: skip
            for k in range(1, len(plain))
        ]
        say(f"repaired {len(plain) - 1} collapses ({repair}, {calib_samples} calibration samples)")
    latencies = _latencies(models, example, latency_batch_sizes, warmup, repeats, say)
    points = []
    for k, current in enumerate(models):
        scores = _evaluate(evaluate, current, val_loader, test_loader)
        unrepaired = (
            scores
            if current is plain[k]
            else _evaluate(evaluate, plain[k], val_loader, test_loader)
        )
        points.append(
            SweepPoint(k=k, removed=tuple(order[:k]), val_accuracy=scores["val_accuracy"],
                       test_accuracy=scores["test_accuracy"], macs=count_macs(current, one),
                       params=count_params(current), latency_ms=latencies[k],
                       unrepaired=unrepaired)
        )  # fmt: skip
        name, show = metric_text(metric_name(evaluate))
        val, test = show(scores["val_accuracy"]), show(scores["test_accuracy"])
        say(f"k={k}: val {name} {val}, test {test}")
    if stopped:
        say(stopped)
    del models, plain
    if device.type == "cuda":
        torch.cuda.empty_cache()
    used = calib_samples if repair != "none" else 0
    return Sweep(order=tuple(order), points=tuple(points), repair=repair, calib_samples=used,
                 metric=metric_name(evaluate), stopped=stopped)  # fmt: skip


def _collapses(
    model: nn.Module, order: Sequence[str], example: Any
) -> tuple[list[nn.Module], str | None]:
    """The model with its first ``k`` blocks removed, ``k = 0, 1, ...`` until ``order`` ends or
    a collapse cannot be built (then the reason)."""
    models = [model]
    for k in range(1, len(order) + 1):
        try:
            models.append(remove_blocks(model, order[:k], example))
        except CollapseError as exc:
            return models, f"stopped at k={k - 1}: {exc}"
    return models, None


def _example_input(given: Any, val_loader: Loader | None, test_loader: Loader | None) -> Any:
    """``given``, or the first sample of the first loader given (batch of 1)."""
    if given is not None:
        return given
    source = val_loader if val_loader is not None else test_loader
    if source is None:
        raise ValueError("pass example_input, or a loader to take one sample from")
    return first_samples(next(iter(source))[0], 1)


def _latencies(
    models: Sequence[nn.Module], example: Any, batch_sizes: Sequence[int], warmup: int,
    repeats: int, say: Callable[[str], None],
) -> list[dict[int, float]]:  # fmt: skip
    """Median latency (ms) of every model at every batch size, the models taking turns."""
    latencies: list[dict[int, float]] = [{} for _ in models]
    for bs in batch_sizes:
        say(f"latency of {len(models)} models at batch {bs}")
        batch = repeat_sample(example, bs)
        timed = compare_latency(list(models), batch, warmup=warmup, repeats=repeats)
        for lat, t in zip(latencies, timed, strict=True):
            lat[bs] = t.median_ms
    return latencies


def _evaluate(
    evaluate: Metric, model: nn.Module, val_loader: Loader | None, test_loader: Loader | None
) -> dict[str, float | None]:
    return {
        "val_accuracy": None if val_loader is None else evaluate(model, val_loader),
        "test_accuracy": None if test_loader is None else evaluate(model, test_loader),
    }
