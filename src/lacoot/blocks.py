"""Find the blocks of any ``nn.Module`` that can collapse to identity, and remove them.

A block is *collapsible* when, in one traced forward pass, it

* is called exactly once,
* takes exactly one tensor (other arguments may be ``None``, numbers, flags) and returns one tensor
  of the same shape and dtype, and
* holds parameters (removing a parameter-free module saves nothing).

:func:`find_blocks` returns, by default, the outermost collapsible modules that are not single
layers (leaf modules) and not pure chains: a module whose forward only feeds its input through its
sub-modules one after the other (``nn.Sequential``, ``nn.TransformerEncoder``) is looked into,
so a ResNet stage gives its residual blocks and an encoder its layers. A model can declare its own
blocks with a method ``lacoot_blocks(self) -> list[str]`` of qualified module names; the user can
override either with ``include``/``exclude`` glob patterns.

This module imports nothing else from lacoot but its FLOP-counter helper.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._flops import flop_counter

__all__ = [
    "Block",
    "BlockDiscoveryError",
    "find_blocks",
    "trace_modules",
    "ModuleCall",
    "remove_blocks",
    "identity_blocks",
    "CollapsedBlock",
]


class BlockDiscoveryError(ValueError):
    """No collapsible block could be found, or a requested block is not collapsible."""


@dataclass(frozen=True)
class Block:
    """A collapsible sub-module.

    Attributes
    ----------
    name : str
        Qualified name in the model (``model.get_submodule(name)``).
    kind : str
        Class name of the module.
    shape : tuple of int
        Per-sample shape of its input and output (batch dimension excluded).
    params : int
        Parameter elements it holds.
    macs : int
        Multiply-accumulates of one call, per sample, on the traced example.
    order : int
        Position in execution order among all traced module calls (0 = first).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    macs: int
    order: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ModuleCall:
    """What one module did in the traced forward pass."""

    name: str
    module: nn.Module
    order: int
    calls: int = 0
    tensor_inputs: int = 0
    input: Tensor | None = None
    output: Any = None
    callees: list[ModuleCall] = field(default_factory=list)

    @property
    def single_tensor_in_out(self) -> bool:
        return (
            self.tensor_inputs == 1
            and isinstance(self.input, Tensor)
            and isinstance(self.output, Tensor)
        )

    def rejection(self) -> str | None:
        """Why this module cannot collapse to identity, or ``None`` if it can."""
        if self.calls != 1:
            return f"called {self.calls} times per forward; a block must be called once"
        if self.tensor_inputs != 1:
            return f"takes {self.tensor_inputs} tensors; a block takes exactly one"
        if not isinstance(self.output, Tensor):
            return f"returns {type(self.output).__name__}; a block returns one tensor"
        assert self.input is not None
        if self.output.shape != self.input.shape or self.output.dtype != self.input.dtype:
            return (
                f"changes shape {_shape(self.input)}->{_shape(self.output)}; only shape-preserving "
                "blocks can be collapsed"
            )
        if not any(True for _ in self.module.parameters()):
            return "holds no parameters; removing it saves nothing"
        return None

    def is_chain(self) -> bool:
        """True if the forward only threads its input through its direct callees in turn."""
        if not self.callees or self.input is None:
            return False
        current: Any = self.input
        for callee in self.callees:
            if not callee.single_tensor_in_out or callee.input is not current:
                return False
            current = callee.output
        return current is self.output


def _shape(t: Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape[1:]) + ")"


def count_tensor_args(args: tuple, kwargs: dict) -> tuple[int, Tensor | None]:
    """Number of tensor arguments of a call, and the tensor itself if there is exactly one."""
    tensors = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            tensors.append(value)
        elif isinstance(value, (list, tuple, dict)):
            items = value.values() if isinstance(value, dict) else value
            tensors.extend(v for v in items if isinstance(v, Tensor))
            tensors.append(None)  # a container of tensors is never a single tensor input
    first = tensors[0] if len(tensors) == 1 and tensors[0] is not None else None
    return len(tensors), first


@torch.no_grad()
def trace_modules(
    model: nn.Module, example_input: Tensor | Sequence[Any]
) -> tuple[dict[str, ModuleCall], dict[str, int]]:
    """Run one forward pass in eval mode and record every module call.

    Returns the calls keyed by qualified module name (``""`` is the model) and the MACs per module
    (total over the example batch). Modules that were not called are absent.
    """
    calls: dict[str, ModuleCall] = {}
    stack: list[ModuleCall] = []
    handles = []
    counter = [0]

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict, name: str) -> None:
        rec = calls.get(name)
        if rec is None:
            rec = calls[name] = ModuleCall(name=name, module=module, order=counter[0])
            counter[0] += 1
        rec.calls += 1
        if rec.calls == 1:
            rec.tensor_inputs, rec.input = count_tensor_args(args, kwargs)
            if stack:
                stack[-1].callees.append(rec)
        stack.append(rec)

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str) -> None:
        rec = stack.pop()
        if rec.calls == 1:
            rec.output = output

    for name, module in model.named_modules():
        handles.append(
            module.register_forward_pre_hook(
                lambda m, a, k, n=name: pre_hook(m, a, k, n), with_kwargs=True
            )
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, k, o, n=name: post_hook(m, a, k, o, n), with_kwargs=True
            )
        )
    was_training = model.training
    model.eval()
    try:
        with flop_counter() as flops:
            if isinstance(example_input, Tensor):
                model(example_input)
            else:
                model(*example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    root = type(model).__name__
    per_module = flops.get_flop_counts()
    macs = {}
    for name in calls:
        key = root if name == "" else f"{root}.{name}"
        macs[name] = sum(per_module.get(key, {}).values()) // 2
    return calls, macs


def _batch_size(example_input: Tensor | Sequence[Any]) -> int:
    first = example_input if isinstance(example_input, Tensor) else example_input[0]
    return int(first.shape[0]) if isinstance(first, Tensor) and first.dim() > 0 else 1


def _make_block(rec: ModuleCall, macs: dict[str, int], batch: int) -> Block:
    assert rec.input is not None
    return Block(
        name=rec.name,
        kind=type(rec.module).__name__,
        shape=tuple(rec.input.shape[1:]),
        params=sum(p.numel() for p in rec.module.parameters()),
        macs=macs.get(rec.name, 0) // max(batch, 1),
        order=rec.order,
    )


def _default_blocks(
    model: nn.Module, calls: dict[str, ModuleCall]
) -> tuple[list[ModuleCall], dict[str, str]]:
    """Outermost collapsible, non-leaf, non-chain modules; and why the others were passed over."""
    chosen: list[ModuleCall] = []
    reasons: dict[str, str] = {}

    def visit(name: str, module: nn.Module) -> None:
        rec = calls.get(name)
        if rec is not None and name:
            why = rec.rejection()
            if why is None and not any(True for _ in module.children()):
                why = "is a single layer (a leaf module)"
            if why is None and rec.is_chain():
                why = "only chains its sub-modules; looked into instead"
            if why is None:
                chosen.append(rec)
                return
            reasons[name] = why
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return chosen, reasons


def _explain(reasons: dict[str, str], limit: int = 12) -> str:
    lines = [f"  {name or '<model>'}: {why}" for name, why in list(reasons.items())[:limit]]
    if len(reasons) > limit:
        lines.append(f"  ... and {len(reasons) - limit} more")
    return "\n".join(lines)


def _validated(names: Iterable[str], calls: dict[str, ModuleCall], model: nn.Module, source: str):
    chosen = []
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise BlockDiscoveryError(
                f"{source} names block {name!r}, which is not a sub-module of "
                f"{type(model).__name__}"
            ) from None
        rec = calls.get(name)
        if rec is None:
            raise BlockDiscoveryError(
                f"{source} names block {name!r}, which is not called in the forward pass"
            )
        why = rec.rejection()
        if why is not None:
            raise BlockDiscoveryError(f"{source}: block {name!r} {why}")
        chosen.append(rec)
    return chosen


def _check_not_nested(names: Iterable[str], error: type[ValueError] = ValueError) -> None:
    ordered = sorted(names)
    for a, b in zip(ordered[:-1], ordered[1:], strict=True):
        if b.startswith(a + "."):
            raise error(
                f"blocks {a!r} and {b!r} are nested; expected blocks that do not contain each "
                "other "
                "(collapsing the outer one removes the inner one too)"
            )


def find_blocks(
    model: nn.Module,
    example_input: Tensor | Sequence[Any],
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    use_declared: bool = True,
) -> list[Block]:
    """Collapsible blocks of ``model``, in execution order.

    Parameters
    ----------
    model : nn.Module
        Any model; it is run once in eval mode without gradients and left in its original mode.
    example_input : Tensor or sequence
        One example batch, e.g. ``(B, C, H, W)``; a sequence is unpacked as positional arguments.
    include : str or list of str, optional
        Glob patterns over qualified module names: ``*`` and ``?`` match within one dotted part,
        ``**`` across parts (``"layer*.1"`` matches ``layer3.1``, not ``layer3.0.downsample.1``).
        When given, every collapsible module matching one of them is a block (leaf modules and
        chains too); a pattern that matches no collapsible module is an error.
    exclude : str or list of str, optional
        Glob patterns of modules to drop from the result.
    use_declared : bool
        Ask the model first: if it has a ``lacoot_blocks()`` method, the names it returns are the
        blocks (each checked to be collapsible).

    Returns
    -------
    list of Block
        Sorted by execution order (shallowest first).

    Raises
    ------
    BlockDiscoveryError
        No block was found (the message says why each candidate was passed over), a declared or
        included block is not collapsible, or chosen blocks are nested.
    """
    calls, macs = trace_modules(model, example_input)
    includes = [include] if isinstance(include, str) else list(include or [])
    excludes = [exclude] if isinstance(exclude, str) else list(exclude or [])
    if includes:
        chosen = []
        for pattern in includes:
            matched = [
                rec
                for name, rec in calls.items()
                if name and match_name(name, pattern) and rec.rejection() is None
            ]
            if not matched:
                raise BlockDiscoveryError(
                    f"include pattern {pattern!r} matches no collapsible module of "
                    f"{type(model).__name__}"
                )
            chosen.extend(r for r in matched if r not in chosen)
    elif use_declared and callable(getattr(model, "lacoot_blocks", None)):
        chosen = _validated(
            model.lacoot_blocks(), calls, model, f"{type(model).__name__}.lacoot_blocks()"
        )
    else:
        chosen, reasons = _default_blocks(model, calls)
        if not chosen:
            raise BlockDiscoveryError(
                f"{type(model).__name__} has no collapsible block: a block is a sub-module called "
                "once that maps one tensor to a tensor of the same shape and holds parameters. "
                f"Modules passed over:\n{_explain(reasons)}\nName blocks with include=... or "
                "declare them with a lacoot_blocks() method."
            )
    chosen = [r for r in chosen if not any(match_name(r.name, p) for p in excludes)]
    _check_not_nested((r.name for r in chosen), BlockDiscoveryError)
    batch = _batch_size(example_input)
    return sorted((_make_block(r, macs, batch) for r in chosen), key=lambda b: b.order)


def _names(blocks: Iterable[str | Block]) -> list[str]:
    names = [b.name if isinstance(b, Block) else b for b in blocks]
    if len(set(names)) != len(names):
        raise ValueError(f"block names repeat in {names}; expected each block once")
    return names


@functools.lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Module-name glob: ``*`` and ``?`` stay within one dotted part, ``**`` spans parts."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^.]*")
        elif c == "?":
            out.append("[^.]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"pattern {pattern!r} has an unclosed '['")
            body = pattern[i + 1 : end]
            out.append("[^" + body[1:] + "]" if body.startswith("!") else f"[{body}]")
            i = end + 1
            continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def match_name(name: str, pattern: str) -> bool:
    """Whether a qualified module name matches a glob pattern (``layer*.1``, ``features.**``)."""
    return _glob_regex(pattern).match(name) is not None


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


class CollapsedBlock(nn.Identity):
    """``nn.Identity`` that stands for a removed block: returns the block's one tensor argument.

    Unlike ``nn.Identity`` it accepts the extra arguments its caller passes to the block (masks,
    flags), e.g. ``src_mask=None`` from ``nn.TransformerEncoder``.
    """

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        n, tensor = count_tensor_args(args, kwargs)
        if n != 1 or tensor is None:
            raise TypeError(f"a collapsed block passes one tensor through; it was given {n}")
        return tensor


def identity_blocks(model: nn.Module, blocks: Iterable[str | Block]) -> nn.Module:
    """A copy of ``model`` with each block replaced by ``nn.Identity``; the original is kept."""
    names = _names(blocks)
    new = copy.deepcopy(model)
    for name in names:
        _check_exists(model, name)
        parent, child = _split(name)
        setattr(new.get_submodule(parent), child, CollapsedBlock())
    return new


def _check_exists(model: nn.Module, name: str) -> None:
    if not name:
        raise ValueError("the model itself cannot be collapsed; expected a sub-module name")
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"block {name!r} is not a sub-module of {type(model).__name__}") from None


def remove_blocks(model: nn.Module, blocks: Iterable[str | Block]) -> nn.Module:
    """A copy of ``model`` with the blocks removed (the original is untouched).

    A block held by an ``nn.Sequential`` or ``nn.ModuleList`` is deleted from it (the container is
    renumbered, as ``del container[i]`` does); any other block is replaced by
    :class:`CollapsedBlock` (an ``nn.Identity``).
    Either way its weights leave the state dict and the function computed is that of
    :func:`identity_blocks`.
    """
    names = _names(blocks)
    for name in names:
        _check_exists(model, name)
    _check_not_nested(names)
    new = copy.deepcopy(model)
    deletions: dict[str, list[int]] = {}
    for name in names:
        parent_name, child = _split(name)
        parent = new.get_submodule(parent_name)
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            deletions.setdefault(parent_name, []).append(list(parent._modules).index(child))
        else:
            setattr(parent, child, CollapsedBlock())
    for parent_name, indices in deletions.items():
        parent = new.get_submodule(parent_name)
        for i in sorted(indices, reverse=True):
            del parent[i]
    return new
