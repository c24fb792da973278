"""Block-scoring criteria behind one registry. A lower score means "remove first".

* ``msw``: LaCoOT's criterion, the Max-Sliced Wasserstein distance between a block's input and
  output distributions (samples flattened), averaged over calibration batches.
* ``msw_rel``: ``msw`` divided by the spread of the block's input along its principal direction
  (the distance from the input cloud to a point at its mean, measured the same way). Raw
  distances grow with the width and scale of a stage; the ratio is comparable across stages.
* ``cosine``: block influence, ``1 - mean cos(x_i, y_i)`` over samples; over tokens for a
  sequence model's layers (``Block.tokens``), which is ShortGPT's block influence.
* ``angular``: ``mean arccos(cos(x_i, y_i)) / pi`` (Gromov et al., "The Unreasonable
  Ineffectiveness of the Deeper Layers").
* ``greedy``: the iterative calibration-driven removal of SLEB and BlockPruner: at each step the
  block whose removal (with the chosen repair) keeps the highest calibration accuracy goes next.
  Costs ``N (N + 1) / 2 - 1`` repairs and evaluations of the calibration split for ``N`` blocks;
  ``max_steps = s`` stops after ``s`` steps (``s N - s (s - 1) / 2`` evaluations) and orders the
  rest by the last step's evaluations. Its scores are removal positions (0 = first).
* ``random``: a seeded random order.
* ``depth``: deepest block first.

New criteria register with :func:`register_criterion`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import Block
from .config import CollapseConfig
from .inputs import call_model, model_device, to_device, token_mask, token_rows
from .metrics import Metric, top1_accuracy
from .ot import max_sliced_wasserstein
from .regularizer import block_io_hooks, cosine_distance

__all__ = [
    "Criterion",
    "register_criterion",
    "list_criteria",
    "get_criterion",
    "score_blocks",
    "principal_spread",
]

BatchScore = Callable[[Tensor, Tensor, int], Tensor]
StaticScore = Callable[[Sequence[Block], int], dict[str, float]]
# (model, blocks, calibration loader, repair, calibration samples, progress, evaluate=...,
# [identities=...], [max_steps=...]) -> scores; ``evaluate`` (keyword) is the evaluation function a
# candidate is judged by, ``identities`` (keyword, passed only when not empty) the blocks the
# training already replaced by the identity, for the repair, ``max_steps`` (keyword, passed only
# when given) the removals after which a search may stop
ModelScore = Callable[..., dict[str, float]]


@dataclass(frozen=True)
class Criterion:
    """A way to rank blocks.

    Exactly one of ``batch_score`` (data-driven: ``(X, Y, seed) -> scalar`` for one batch with
    ``X, Y: (B, D)``, averaged over batches weighted by ``B``), ``static_score`` (blocks and seed
    to scores, no data) and ``model_score`` (runs collapsed models on the calibration data:
    ``(model, blocks, loader, repair, calib_samples, progress, evaluate=fn) -> scores``) is set.
    """

    name: str
    description: str
    batch_score: BatchScore | None = None
    static_score: StaticScore | None = None
    model_score: ModelScore | None = None


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to the registry (a warning if it replaces one of the same name)."""
    kinds = (criterion.batch_score, criterion.static_score, criterion.model_score)
    if sum(k is not None for k in kinds) != 1:
        raise ValueError(
            f"criterion {criterion.name!r} must set exactly one of batch_score, static_score and "
            "model_score"
        )
    if criterion.name in _CRITERIA:
        warnings.warn(f"criterion {criterion.name!r} is replaced", UserWarning, stacklevel=2)
    _CRITERIA[criterion.name] = criterion
    return criterion


def list_criteria() -> list[str]:
    """Names of the registered criteria."""
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    """The registered criterion called ``name``."""
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(
            f"criterion {name!r} is not known; expected one of {', '.join(list_criteria())}"
        ) from None


def _angle(X: Tensor, Y: Tensor) -> Tensor:
    """Row-wise angle ``2 atan2(|x^ - y^|, |x^ + y^|)``: exact near 0, unlike ``acos(cos)``."""
    X = torch.nn.functional.normalize(X.float(), dim=1, eps=1e-12)
    Y = torch.nn.functional.normalize(Y.float(), dim=1, eps=1e-12)
    return 2 * torch.atan2((X - Y).norm(dim=1), (X + Y).norm(dim=1))


def _msw(X: Tensor, Y: Tensor, seed: int) -> Tensor:
    return max_sliced_wasserstein(X, Y, method="ascent", seed=seed)


def principal_spread(X: Tensor) -> Tensor:
    """Standard deviation of ``X: (n, d)`` along its principal direction, ``sqrt(lambda_max)`` of
    its (biased) covariance: the Max-Sliced ``W_2`` between ``X`` and a point mass at its mean.

    Exact, from the eigenvalues of the ``min(n, d)``-sized Gram matrix in float64.
    """
    Xc = (X - X.mean(dim=0, keepdim=True)).double()
    gram = Xc @ Xc.T if Xc.shape[0] <= Xc.shape[1] else Xc.T @ Xc
    return (torch.linalg.eigvalsh(gram)[-1].clamp_min(0) / X.shape[0]).sqrt().to(X.dtype)


def _msw_relative(X: Tensor, Y: Tensor, seed: int) -> Tensor:
    spread = principal_spread(X)
    return _msw(X, Y, seed) / spread.clamp_min(torch.finfo(spread.dtype).tiny)


def _random(blocks: Sequence[Block], seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(len(blocks), generator=gen, dtype=torch.float64)
    return {b.name: float(v) for b, v in zip(blocks, values, strict=True)}


def _depth(blocks: Sequence[Block], seed: int) -> dict[str, float]:
    ordered = sorted(blocks, key=lambda b: b.order)
    return {b.name: float(len(ordered) - 1 - i) for i, b in enumerate(ordered)}


register_criterion(
    Criterion("msw", "Max-Sliced Wasserstein distance input->output (LaCoOT)", batch_score=_msw)
)
register_criterion(
    Criterion(
        "msw_rel",
        "Max-Sliced Wasserstein distance input->output over the input's principal spread "
        "(dimensionless, comparable across stages)",
        batch_score=_msw_relative,
    )
)
register_criterion(
    Criterion(
        "cosine",
        "1 - mean cosine similarity of input and output (block influence)",
        batch_score=lambda X, Y, seed: cosine_distance(X.float(), Y.float()),
    )
)
register_criterion(
    Criterion(
        "angular",
        "mean angular distance arccos(cos)/pi of input and output",
        batch_score=lambda X, Y, seed: (_angle(X, Y) / math.pi).mean(),
    )
)


def _greedy(
    model: nn.Module,
    blocks: Sequence[Block],
    loader: Iterable,
    repair: str,
    calib_samples: int,
    progress: Callable[[str], None] | None = None,
    evaluate: Metric | None = None,
    identities: Sequence[str] = (),
    max_steps: int | None = None,
) -> dict[str, float]:
    from .repair import repair as repair_model

    evaluate = evaluate if evaluate is not None else top1_accuracy
    removed: list[str] = []
    remaining = sorted(blocks, key=lambda b: -b.order)  # ties go to the deeper block
    steps = len(blocks) - 1 if max_steps is None else min(max_steps, len(blocks) - 1)
    accuracy: dict[str, float] = {}
    while len(removed) < steps:
        accuracy = {
            b.name: evaluate(
                repair_model(
                    model, [*removed, b.name], loader, repair, calib_samples, identities=identities
                ),
                loader,  # fmt: skip
            )
            for b in remaining
        }
        best = max(remaining, key=lambda b: accuracy[b.name])
        removed.append(best.name)
        remaining.remove(best)
        if progress is not None:
            progress(f"greedy step {len(removed)}: {best.name} ({accuracy[best.name]:.4g})")
    # after the last step, the rest in the order of that step's evaluations (each block's
    # removal judged next to those removed before it); a single block needs no evaluation
    remaining.sort(key=lambda b: -accuracy.get(b.name, 0.0))
    removed += [b.name for b in remaining]
    return {name: float(i) for i, name in enumerate(removed)}


register_criterion(
    Criterion(
        "greedy",
        "iterative removal of the block whose removal (repaired) costs least calibration accuracy",
        model_score=_greedy,
    )
)
register_criterion(Criterion("random", "seeded random order", static_score=_random))
register_criterion(Criterion("depth", "deepest block first", static_score=_depth))


@torch.no_grad()
def score_blocks(
    model: nn.Module,
    blocks: Sequence[Block],
    loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    criterion: str = CollapseConfig.criterion,
    seed: int = 0,
    max_batches: int | None = None,
    repair: str = CollapseConfig.repair,
    calib_samples: int = CollapseConfig.calib_samples,
    progress: Callable[[str], None] | None = None,
    evaluate: Metric | None = None,
    identities: Sequence[str] = (),
    max_steps: int | None = None,
) -> dict[str, float]:
    """Score every block; lower scores are removed first.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode (restored afterwards) without gradients.
    blocks : list of Block
        From :func:`lacoot.find_blocks`.
    loader : iterable of (inputs, labels), optional
        Calibration batches (the validation split); required by data-driven criteria. Batches of
        fewer than 2 samples are skipped. For blocks whose features are tokens
        (``Block.tokens``: layers of a Hugging Face model) every token is a sample, padding
        excluded (the batch's ``attention_mask``), and batches are weighted by their tokens.
    criterion : str
        A registered criterion: ``msw``, ``msw_rel``, ``cosine``, ``angular``, ``greedy``,
        ``random``, ``depth``.
    seed : int
        Seed of the criterion's randomness (random directions, random order).
    max_batches : int, optional
        Use only the first batches of ``loader``.
    repair, calib_samples
        For criteria that run collapsed models (``greedy``): the repair of every candidate
        collapse (:func:`lacoot.repair.repair`) and its calibration images. The candidates are
        evaluated on the whole of ``loader``.
    progress : callable, optional
        Called with a short message after each step of a criterion that runs models.
    evaluate : callable, optional
        ``fn(model, loader) -> float`` (higher is better) with which criteria that run models
        judge a candidate (:mod:`lacoot.metrics`; top-1 accuracy by default).
    identities : sequence of str
        For criteria that run repaired collapses: blocks the training already replaced by the
        identity (faded out), which the ``"linear"`` repair does not patch.

    Returns
    -------
    dict
        Block name -> score (``msw``: a distance in feature units; others dimensionless;
        ``msw_rel`` is ``msw`` divided by :func:`principal_spread` of the block's input).
    """
    crit = get_criterion(criterion)
    if not blocks:
        raise ValueError("no blocks to score; expected at least one Block")
    if crit.static_score is not None:
        return crit.static_score(blocks, seed)
    if loader is None:
        raise ValueError(f"criterion {criterion!r} needs calibration data; pass loader=...")
    if crit.model_score is not None:
        from .repair import check_repair

        check_repair(repair)
        extra: dict[str, Any] = {"identities": list(identities)} if identities else {}
        if max_steps is not None:
            if not (isinstance(max_steps, int) and max_steps >= 1):
                raise ValueError(f"max_steps={max_steps!r}; expected an integer >= 1")
            extra["max_steps"] = max_steps
        return crit.model_score(
            model, blocks, loader, repair, calib_samples, progress, evaluate=evaluate, **extra
        )
    assert crit.batch_score is not None
    batch_score = crit.batch_score
    sums = {b.name: 0.0 for b in blocks}
    counts = {b.name: 0 for b in blocks}
    tokens = {b.name: b.tokens for b in blocks}
    step, mask = [0], [None]

    def on_block(name: str, x: Tensor, y: Tensor) -> None:
        if tokens[name]:  # each token (padding excluded) one sample
            x, y = token_rows(x, mask[0]), token_rows(y, mask[0])
        n = x.shape[0]
        if n < 2:
            return
        value = float(batch_score(x.flatten(1), y.flatten(1), seed + step[0]))
        if not math.isfinite(value):
            raise ValueError(f"criterion {criterion!r} gave {value} for block {name!r}")
        sums[name] += value * n
        counts[name] += n

    was_training = model.training
    model.eval()
    device = model_device(model)
    handles = block_io_hooks(model, blocks, on_block)
    try:
        for i, (x, _) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = to_device(x, device, non_blocking=True)
            mask[0] = token_mask(x)
            call_model(model, x)
            step[0] += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    empty = [name for name, c in counts.items() if c == 0]
    if empty:
        raise ValueError(
            f"no calibration batch of at least 2 samples reached blocks {empty}; "
            "expected a loader with batches of size >= 2"
        )
    return {name: sums[name] / counts[name] for name in sums}
