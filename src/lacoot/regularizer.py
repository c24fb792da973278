"""The LaCoOT penalty: ``lam * mean_b MSW(X_b, Y_b)`` over collapsible blocks, as a loss term.

Forward hooks capture each block's input ``X_b`` and output ``Y_b`` during the model's own forward
pass; :meth:`MSWRegularizer.penalty` flattens each sample to one vector (each real token, for the
layers of a sequence model: ``Block.tokens``) and returns the mean Max-Sliced Wasserstein
distance, scaled by ``lam``, with gradients flowing into the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as dist_
from .blocks import (
    Block,
    flow_tensor,
    output_tensor,
    replace_arg,
    tensor_version,
    with_output_tensor,
)
from .config import TrainConfig
from .distributed import gather_batch
from .inputs import call_model, token_mask, token_rows
from .ot import Method, max_sliced_wasserstein, random_projections

__all__ = ["MSWRegularizer", "StopForward", "block_io_hooks", "power_spread", "run_hooked"]

DISTANCES = ("msw", "cosine")  # the block distances a penalty can use
MAX_WEIGHT = 64.0  # the largest weight ``escalate`` gives (TrainConfig's help says it: tested)
SPREAD_KEY = "/spread"  # suffix of the carried principal directions in ``directions``


def cosine_distance(X: Tensor, Y: Tensor) -> Tensor:
    """``1 - mean_i cos(x_i, y_i)`` of ``X, Y: (n, d)``, each row of ``Y`` against its own row of
    ``X`` (block influence): a differentiable scalar in ``[0, 2]``."""
    return 1.0 - F.cosine_similarity(X, Y, dim=1, eps=1e-12).mean()


@dataclass(frozen=True)
class Layout:
    """Where a block's features lie in memory: ``shape``, the shape of one sample, and
    ``order``, its dimensions (1-based, as in the batch) from the outermost in memory to the
    innermost, e.g. ``(2, 3, 1)`` for a channels-last ``(B, C, H, W)`` batch.

    :func:`flat_pair` lists the coordinates in this order (a view, no copy); directions drawn or
    carried in the logical order of ``flatten(1)`` are moved into it by :meth:`to_memory` and
    back by :meth:`to_logical`, so a penalty computes the same numbers in either layout."""

    shape: tuple[int, ...]
    order: tuple[int, ...]

    @staticmethod
    def of(x: Tensor, y: Tensor) -> Layout | None:
        """The layout of ``x`` (``y`` of the same shape follows it), or None where
        ``flatten(1)`` already costs nothing or cannot be avoided (2-D, contiguous, shapes
        differ, or memory order equal to logical order)."""
        if x.dim() <= 2 or x.shape != y.shape or x.is_contiguous():
            return None
        order = tuple(sorted(range(1, x.dim()), key=x.stride, reverse=True))
        return None if order == tuple(range(1, x.dim())) else Layout(tuple(x.shape[1:]), order)

    def flatten(self, t: Tensor) -> Tensor:
        """``t: (B, *shape)`` as ``(B, d)`` in memory order."""
        return t.permute(0, *self.order).flatten(1)

    def to_memory(self, theta: Tensor) -> Tensor:
        """Directions ``(d,)`` or ``(d, L)`` in logical order, rows reordered to memory order."""
        k = len(self.shape)
        rows = theta.reshape(*self.shape, *theta.shape[1:])
        return rows.permute(*[o - 1 for o in self.order], *range(k, rows.dim())).reshape(
            theta.shape
        )

    def to_logical(self, theta: Tensor) -> Tensor:
        """The inverse of :meth:`to_memory`: the same reordering from the memory side (the
        sample shape as laid out in memory, the inverse permutation)."""
        in_memory = tuple(self.shape[o - 1] for o in self.order)
        inverse = tuple(self.order.index(i) + 1 for i in range(1, len(self.shape) + 1))
        return Layout(in_memory, inverse).to_memory(theta)


def flat_layout(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Layout | None]:
    """:func:`flat_pair` and the :class:`Layout` it followed (None: logical order)."""
    layout = Layout.of(x, y)
    if layout is None:
        return x.flatten(1), y.flatten(1), None
    return layout.flatten(x), layout.flatten(y), layout


def flat_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``x, y: (B, ...)`` as ``(B, d)`` matrices whose columns list the same coordinates in the
    same order: ``x``'s memory order (:class:`Layout`), so a channels-last ``x`` is viewed, not
    copied (``flatten`` would copy it, and its gradient back, on every step). Tensors of other
    shapes, or already in logical order, are flattened as they are."""
    X, Y, _ = flat_layout(x, y)
    return X, Y


def check_distance(distance: str, relative: bool) -> None:
    """Raise ValueError for an unknown ``distance`` or for ``relative`` with a distance other
    than ``msw`` (the relative penalty divides an MSW)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r} is not known; expected one of {DISTANCES}")
    if distance != "msw" and relative:
        raise ValueError(f"relative=True divides an MSW; distance={distance!r} is scale-free: "
                         "expected relative=False")  # fmt: skip


@torch.no_grad()
def power_spread(X: Tensor, init: Tensor | None = None, n_iters: int = 2) -> tuple[Tensor, Tensor]:
    """Spread of ``X: (n, d)`` along its principal direction, by power iteration (no gradient).

    Returns ``(sqrt(lambda_max), v)``: ``lambda_max`` the largest eigenvalue of the biased
    covariance of ``X`` (estimated from below by the Rayleigh quotient at the last iterate
    ``v: (d,)``, a unit vector, float32). This is the Max-Sliced ``W_2`` between ``X`` and a point
    mass at its mean, the exact value of which :func:`lacoot.criteria.principal_spread` computes.
    Without ``init`` the iteration starts at the sample farthest from the mean and runs
    ``max(n_iters, 20)`` times; with ``init`` (the previous step's ``v``) ``n_iters`` times.
    """
    Xc = X.detach().float()
    Xc = Xc - Xc.mean(dim=0, keepdim=True)
    if init is None or init.shape != Xc.shape[1:] or init.device != Xc.device:
        v, n_iters = Xc[Xc.norm(dim=1).argmax()], max(n_iters, 20)
    else:
        v = init.float()
    v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    for _ in range(n_iters):
        v = Xc.T @ (Xc @ v)
        v = v / v.norm().clamp_min(torch.finfo(v.dtype).tiny)
    return (Xc @ v).norm() / Xc.shape[0] ** 0.5, v


def _in_memory_order(theta: Tensor | None, layout: Layout | None) -> Tensor | None:
    """Directions ``(d,)`` or ``(d, L)`` in logical order moved into ``layout``'s order (when
    both are given and ``d`` is the layout's width)."""
    if theta is None or layout is None or theta.shape[0] != math.prod(layout.shape):
        return theta
    return layout.to_memory(theta)


def _in_logical_order(theta: Tensor, layout: Layout | None) -> Tensor:
    return theta if layout is None else layout.to_logical(theta)


def _at_least_float32(t: Tensor) -> Tensor:
    """Half precision features (autocast, bfloat16 models) in float32; float64 kept."""
    return t if t.dtype == torch.float64 else t.float()


def block_io_hooks(
    model: nn.Module, blocks: Iterable[Block | str], callback: Any
) -> list[torch.utils.hooks.RemovableHandle]:
    """Install hooks calling ``callback(name, block_input, block_output)`` after each block runs;
    a tensor the callback returns replaces the block's output (None: the output is kept). For a
    block that returns a tuple, ``block_output`` is its first element (the one replaced).

    ``block_input`` is the tensor flowing through the block (its first tensor argument, or the one
    its module names in ``lacoot_flow``; masks and other arguments are not passed on); both keep
    their batch dimension, ``(B, ...)``. A :class:`Block` found modifying its input in place
    (``Block.inplace``) runs on a copy, so its input is seen as it was; a block given by name that
    turns out to do so is a ``RuntimeError`` (its input would be lost). Returns the handles.
    """
    handles = []
    for block in blocks:
        name = block.name if isinstance(block, Block) else str(block)
        copy_input = isinstance(block, Block) and block.inplace
        module = model.get_submodule(name)
        flow = getattr(module, "lacoot_flow", None)
        seen: dict[str, Any] = {}

        def pre(m: nn.Module, args: tuple, kwargs: dict, name: str = name, flow: Any = flow,
                seen: dict = seen, copy_input: bool = copy_input) -> Any:  # fmt: skip
            x, where = flow_tensor(args, kwargs, flow)
            if x is None:
                raise TypeError(f"block {name!r} was called without a tensor to pass through")
            seen["x"], seen["version"] = x, tensor_version(x)
            if copy_input:
                return replace_arg(args, kwargs, where, x.clone())
            return None

        def post(m: nn.Module, args: tuple, kwargs: dict, output: Any, name: str = name,
                 seen: dict = seen) -> Any:  # fmt: skip
            x = seen.pop("x")
            y = output_tensor(output)
            if y is None:
                raise TypeError(f"block {name!r} returned {type(output).__name__}; a block "
                                "returns one tensor, or a tuple starting with one")  # fmt: skip
            if tensor_version(x) != seen["version"]:
                raise RuntimeError(
                    f"block {name!r} modified its input in place (x += ...), so its input is "
                    "lost; pass the Block found by lacoot.find_blocks (it records this and the "
                    "input is copied first), or compute out of place (x = x + ...)"
                )
            replaced = callback(name, x, y)
            return None if replaced is None else with_output_tensor(output, replaced)

        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    return handles


class StopForward(Exception):
    """Raised by a hook to end a forward pass once it has seen what it needs."""


def run_hooked(model: nn.Module, x: Any, handles: list) -> None:
    """``model`` called on ``x`` with the hooks ``handles`` installed, then removed; a
    :class:`StopForward` raised by one of them ends the pass without an error."""
    try:
        call_model(model, x)
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


class MSWRegularizer:
    """Max-Sliced Wasserstein penalty between the inputs and outputs of blocks.

    Parameters
    ----------
    model : nn.Module
        The model being trained; hooks are installed on the blocks at construction.
    blocks : iterable of Block or str
        Blocks (from :func:`lacoot.find_blocks`) or their qualified names.
    lam : float
        Weight ``lambda >= 0`` of the penalty.
    method : {"ascent", "random"}
        Estimator of the max-sliced distance (see :func:`lacoot.ot.max_sliced_wasserstein`).
        ``ascent`` keeps each block's maximising direction and warm-starts the next step from it.
    n_projections : int
        Random directions of the ``random`` estimator.
    n_iters, n_starts : int
        Ascent steps per training step and random starts of the ``ascent`` estimator; the defaults
        (2 steps, no random start, only the best start ascended) rely on the warm start carried
        across steps. A block's first step (no warm start yet) uses a thorough search instead.
    p : float
        Wasserstein order.
    seed : int, optional
        Seed of the random directions; the step count is added so every step draws new ones.
    relative : bool
        Divide each block's distance by the spread of its input along its principal direction
        (:func:`power_spread`, detached, its direction carried across steps like the ascent's).
        The ratio is scale-free: the penalty can no longer be lowered by shrinking the features,
        and one lambda means the same for blocks of any width or scale. It is the training
        counterpart of the ``msw_rel`` criterion (``MSW(X, Y) / MSW(X, mean(X))``).
    distance : {"msw", "cosine"}
        ``msw``: the LaCoOT penalty (the max-sliced distance above). ``cosine``: ``1 - mean_i
        cos(x_i, y_i)``, each sample's output against its own input (the ``cosine`` criterion,
        block influence): a pointwise, scale-free distance, zero exactly when the block keeps every
        sample's direction, and one pass over the features (no directions, no sort). Not the
        paper's; offered because the ``cosine`` order is the one that removes best (measured in
        ``docs/benchmarks/collapse_quality.md``). ``method``, ``n_projections``, ``n_iters``,
        ``n_starts``, ``p`` and ``relative`` concern ``msw`` only.
    escalate : float, optional
        Treat the penalised blocks as constraints ("these blocks must become removable"): each
        block carries its own weight ``w_b`` (1 at first; the penalty is ``lam * mean_b w_b *
        MSW_b``), multiplied by ``escalate_rate`` after every step on which the block's influence
        (``1 - mean_i cos(x_i, y_i)``, no gradient, over the samples of every process) is above
        ``escalate``, and divided by it (not below 1) otherwise, up to ``max_weight``. A block
        the task keeps alive is pulled ever harder, a dead one is left alone; the weights are in
        :attr:`weights` (checkpointed by the trainer). None (default): every weight is 1.
    escalate_rate, max_weight : float
        The per-step factor (``> 1``) and the cap (``>= 1``) of the weights of ``escalate``. The
        cap may be changed between steps (the trainer keeps ``learning rate x weight`` at most
        the peak learning rate: a weight 32 times the penalty's at the peak of a one-cycle
        schedule made a resnet20 training diverge); a weight above it counts as the cap.
    stop_input_grad : bool
        Treat each block's input as a fixed target: ``MSW(stop_grad(X), Y)``, so the penalty moves
        the block's output towards its input and not the input (the layers before the block)
        towards the output. The gradient still reaches earlier layers through ``Y`` (a residual
        block's skip connection among them). Default: through both.
    gather : bool
        Under ``torch.distributed`` (DDP), compute each distance on the global batch: the block
        inputs and outputs of every rank are gathered (gradients flowing back to each rank), so
        the value equals the single-process value on the same samples. Default: each rank uses
        its local batch (no communication). No effect in a single process.

    Notes
    -----
    :meth:`penalty` uses the last forward pass of the model. Batches of fewer than 2 samples carry
    no distance and give a zero penalty. Use as a context manager, or call :meth:`close`, to remove
    the hooks.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Iterable[Block | str],
        lam: float = 1.0,
        method: Method = TrainConfig.method,  # type: ignore[assignment]
        n_projections: int = TrainConfig.n_projections,
        n_iters: int = TrainConfig.n_iters,
        n_starts: int = 0,
        p: float = 2.0,
        seed: int | None = None,
        gather: bool = False,
        relative: bool = False,
        distance: str = "msw",
        escalate: float | None = None,
        escalate_rate: float = 1.01,
        max_weight: float = MAX_WEIGHT,
        stop_input_grad: bool = False,
    ) -> None:
        if not lam >= 0:
            raise ValueError(f"lam={lam!r} is negative or NaN; expected lam >= 0")
        if escalate is not None and not escalate >= 0:
            raise ValueError(f"escalate={escalate!r}; expected a block influence >= 0, or None")
        if not escalate_rate > 1 or not max_weight >= 1:
            raise ValueError(f"escalate_rate={escalate_rate!r}, max_weight={max_weight!r}; "
                             "expected escalate_rate > 1 and max_weight >= 1")  # fmt: skip
        check_distance(distance, relative)
        if method not in ("ascent", "random"):
            raise ValueError(f"method={method!r} is not known; expected 'ascent' or 'random'")
        blocks = list(blocks)
        self.names = [b.name if isinstance(b, Block) else str(b) for b in blocks]
        if not self.names:
            raise ValueError("no blocks given; expected at least one block to regularise")
        self.model = model
        self.lam = float(lam)
        self.method = method
        self.n_projections = n_projections
        self.n_iters = n_iters
        self.n_starts = n_starts
        self.p = p
        self.seed = seed
        self.gather = bool(gather)
        self.kind = distance
        self.relative = bool(relative)
        self.stop_input_grad = bool(stop_input_grad)
        self.steps = 0
        self.escalate = escalate
        self.escalate_rate = float(escalate_rate)
        self.max_weight = float(max_weight)
        self.weights: dict[str, float] = {}  # the escalated blocks' weights (absent: 1)
        self.directions: dict[str, Tensor] = {}
        self.last: dict[str, Tensor] = {}
        self._captured: dict[str, tuple[Tensor, Tensor]] = {}
        self._drawn: tuple[int, dict[tuple, Tensor]] = (-1, {})  # (step, width -> directions)
        self._handles = block_io_hooks(model, blocks, self._capture)
        # blocks whose features are tokens: every real token one sample, padding read from the
        # ``attention_mask`` the model is called with
        self.tokens = {b.name for b in blocks if isinstance(b, Block) and b.tokens}
        self._mask: Tensor | None = None
        if self.tokens:
            self._handles.append(model.register_forward_pre_hook(self._see_mask, with_kwargs=True))

    def _see_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._mask = token_mask(kwargs)

    def _capture(self, name: str, x: Tensor, y: Tensor) -> None:
        self._captured[name] = (x.detach() if self.stop_input_grad else x, y)

    def distance(self, name: str, x: Tensor, y: Tensor, layout: Layout | None = None) -> Tensor:
        """``MSW(x, y)`` of one block with samples flattened: ``x, y: (B, ...)`` -> scalar.

        ``layout`` says how already flattened ``(B, d)`` features are ordered (default: read
        from ``x``). Random directions and the carried ascent direction are kept in logical
        order and moved into the features' order, so the value does not depend on the layout."""
        if layout is None:
            X, Y, layout = flat_layout(x, y)
        else:
            X, Y = x.flatten(1), y.flatten(1)
        if self.kind == "cosine":
            return cosine_distance(X, Y)
        seed = None if self.seed is None else self.seed + self.steps
        if self.method == "random":
            return max_sliced_wasserstein(
                X, Y, p=self.p, projections=self._projections(X, seed, layout),
                n_projections=self.n_projections, seed=seed, validate=False,
            )  # fmt: skip
        init = self.directions.get(name)
        if init is not None and (init.shape[0] != X.shape[1] or init.device != X.device):
            init = None
        # Without a warm start (first step, new input size) search thoroughly once; afterwards the
        # carried direction plus a few steps tracks the maximum as the features change.
        search = (
            {"n_iters": self.n_iters, "n_starts": self.n_starts, "n_ascend": 1}
            if init is not None
            else {
                "n_iters": max(self.n_iters, 10),
                "n_starts": max(self.n_starts, 16),
                "n_ascend": 4,
            }
        )
        starts = None  # random starts drawn in logical order, as for contiguous features
        if search["n_starts"] and seed is not None:
            starts = random_projections(X.shape[1], search["n_starts"], seed, X.device, X.dtype)
            starts, search["n_starts"] = _in_memory_order(starts, layout), 0
        value, direction = max_sliced_wasserstein(
            X,
            Y,
            p=self.p,
            projections=starts,
            seed=seed,
            method="ascent",
            init=None if init is None else _in_memory_order(init, layout),
            return_direction=True,
            validate=False,
            **search,
        )
        self.directions[name] = direction if layout is None else layout.to_logical(direction)
        return value

    def _projections(self, X: Tensor, seed: int | None, layout: Layout | None) -> Tensor | None:
        """The seeded random directions ``(d, n_projections)`` of this step for features of
        ``X``'s width, in ``layout``'s order: drawn once per width, device and dtype and shared by
        the blocks of that width (the seed is the same for every block of a step, so they are the
        very directions each block would draw). None without a seed: each block draws its own."""
        if seed is None:
            return None
        if self._drawn[0] != self.steps:
            self._drawn = (self.steps, {})
        cache = self._drawn[1]
        key = (X.shape[1], X.device, X.dtype)
        if key not in cache:
            cache[key] = random_projections(
                X.shape[1], self.n_projections, seed, device=X.device, dtype=X.dtype
            )
        if layout is not None and (key, layout) not in cache:
            cache[(key, layout)] = layout.to_memory(cache[key])
        return cache[key] if layout is None else cache[(key, layout)]

    def penalty(self) -> Tensor:
        """``lam * mean_b MSW(X_b, Y_b)`` for the last forward pass: a scalar with gradients.

        Per-block values (detached) are kept in :attr:`last`.
        """
        if not self._captured:
            raise RuntimeError(
                "no hooked block ran since the last penalty(): call the model's forward first. "
                "If the model was compiled (torch.compile) before this MSWRegularizer was "
                "attached, the compiled code does not run hooks added later: attach the "
                "regularizer first and compile afterwards (or call torch._dynamo.reset() after "
                "attaching it)"
            )
        captured, self._captured = self._captured, {}
        values = []
        self.last = {}
        for name in self.names:
            if name not in captured:
                raise RuntimeError(f"block {name!r} was not run in the last forward pass")
            x, y = captured[name]
            if name in self.tokens:
                x, y, layout = token_rows(x, self._mask), token_rows(y, self._mask), None
            else:
                x, y, layout = flat_layout(x, y)
            if self.gather:  # one collective per block: (B, 2, d) -> (sum_r B_r, 2, d)
                both = gather_batch(torch.stack([x, y], dim=1))
                x, y = both[:, 0], both[:, 1]
            if x.shape[0] < 2:
                continue
            with torch.autocast(x.device.type, enabled=False):  # distances in float32
                x, y = _at_least_float32(x), _at_least_float32(y)
                value = self.distance(name, x, y, layout)
                if self.relative:
                    init = self.directions.get(name + SPREAD_KEY)
                    spread, v = power_spread(x, _in_memory_order(init, layout))
                    self.directions[name + SPREAD_KEY] = _in_logical_order(v, layout)
                    value = value / spread.clamp_min(torch.finfo(spread.dtype).tiny)
            self.last[name] = value.detach()
            values.append(value * min(self.weights.get(name, 1.0), self.max_weight))
        self.steps += 1
        if self.escalate is not None:  # on every process, even one whose batch was too small
            self._escalate(captured)
        if not values:
            device = next(iter(captured.values()))[0].device
            return torch.zeros((), device=device)
        return self.lam * torch.stack(values).mean()

    @torch.no_grad()
    def _escalate(self, captured: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Update :attr:`weights` from this step's block influences (see ``escalate``): each
        block's ``1 - cos(x_i, y_i)`` averaged over the samples of every process (one all-reduce
        of ``(2, n_blocks)`` sums and counts). The weights take effect from the next step; a
        block that saw no sample anywhere keeps its weight."""
        sums = torch.zeros(2, len(self.names), device=next(iter(captured.values()))[0].device)
        for i, name in enumerate(self.names):
            x, y = (t.float() for t in flat_pair(*captured[name]))
            if x.shape[0]:
                sums[0, i] = x.shape[0] * cosine_distance(x, y)
                sums[1, i] = x.shape[0]
        sums = dist_.all_reduce(sums)
        for name, (total, n) in zip(self.names, sums.T.tolist(), strict=True):
            if not n:
                continue
            c = total / n
            w = self.weights.get(name, 1.0)
            w = w * self.escalate_rate if c > self.escalate else w / self.escalate_rate
            self.weights[name] = min(max(w, 1.0), self.max_weight)

    def discard(self) -> None:
        """Drop what the hooks captured in the last forward pass, without a penalty (a step that
        skips it); :attr:`last` is emptied too, so no stale distance is read as this step's."""
        self._captured = {}
        self.last = {}

    def forget(self, names: Iterable[str] | None = None) -> None:
        """Drop the carried ascent directions of ``names`` (default: all), for example after
        a batch whose distances were not finite; the next step searches afresh."""
        for name in list(self.directions) if names is None else names:
            self.directions.pop(name, None)
            self.directions.pop(name + SPREAD_KEY, None)

    def distances(self) -> dict[str, float]:
        """Per-block distances of the last :meth:`penalty` call, as floats."""
        return {name: float(v) for name, v in self.last.items()}

    def close(self) -> None:
        """Remove the hooks and drop captured tensors."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._captured = {}

    def __enter__(self) -> MSWRegularizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
