"""Find the blocks of any ``nn.Module`` that can collapse to identity, and remove them.

A block is *collapsible* when, in one traced forward pass, it

* is called exactly once,
* returns one tensor of the shape and dtype of the tensor that *flows* through it (its first
  tensor argument, or the argument its module names in a ``lacoot_flow`` attribute: a position or
  a keyword), or a tuple that starts with one (as some transformer layers return ``(hidden,
  attention weights)``; a collapsed block returns ``(x, None, ...)``). Other arguments (an
  attention mask, position ids, flags, a cache) are passed along and ignored by a collapsed
  block, and
* holds parameters (removing a parameter-free module saves nothing).

:func:`find_blocks` returns, by default, the outermost collapsible modules that are not single
layers (leaf modules) and not pure chains: a module whose forward only feeds its input through its
sub-modules one after the other (``nn.Sequential``, ``nn.TransformerEncoder``) is looked into,
so a ResNet stage gives its residual blocks and an encoder its layers. A model can declare its own
blocks with a method ``lacoot_blocks(self) -> list[str]`` of qualified module names; the user can
override either with ``include``/``exclude`` glob patterns.

Models of outside libraries are handled through :func:`lacoot.adapters.adapter_for` (which
containers must delete their removed layers and what to renumber, what of an output to compare,
an example input when none is given). This module imports nothing else from lacoot but
:mod:`lacoot.inputs`, :mod:`lacoot.adapters` and its FLOP-counter helper.
"""

from __future__ import annotations

import copy
import functools
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._flops import flop_counter
from .adapters import adapter_for
from .inputs import batch_size, call_model

__all__ = [
    "Block",
    "BlockDiscoveryError",
    "find_blocks",
    "trace_modules",
    "ModuleCall",
    "remove_blocks",
    "identity_blocks",
    "CollapsedBlock",
    "CollapseError",
    "flow_tensor",
    "deleted_from",
    "rebuild_removed",
    "replace_arg",
    "tensor_version",
    "outputs_match",
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
        Parameter elements its removal removes (those it shares with a module outside it, a
        tied layer say, are not counted).
    macs : int
        Multiply-accumulates of one call, per sample, on the traced example.
    order : int
        Position in execution order among all traced module calls (0 = first).
    inplace : bool
        The block modified its input in place (``x += f(x)``) in the traced pass; hooks then copy
        its input before it runs, so its distance is measured on the true input.
    tokens : bool
        Its features ``(B, T, D)`` are sequences of tokens (the model's adapter says so,
        :mod:`lacoot.adapters`): distances and criteria take each token (padding excluded) as one
        sample of ``D`` features, not each sequence as one sample of ``T * D``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    macs: int
    order: int
    inplace: bool = False
    tokens: bool = False

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
    input: Tensor | None = None  # the flowing tensor (see flow_tensor)
    output: Any = None
    callees: list[ModuleCall] = field(default_factory=list)
    version: int = 0  # the input's version counter before the call
    end_version: int = 0  # the output's version counter when the call returned
    inplace: bool = False  # the call modified its input in place

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
        if self.input is None:
            return "takes no tensor; a block passes a tensor through"
        out = output_tensor(self.output)
        if out is None:
            return (f"returns {type(self.output).__name__}; a block returns one tensor, or a "
                    "tuple starting with one")  # fmt: skip
        if out.shape != self.input.shape or out.dtype != self.input.dtype:
            return (
                f"changes shape {_shape(self.input)}->{_shape(out)}; only shape-preserving "
                "blocks can be collapsed (the flowing tensor is the first tensor argument unless "
                "the module names another in `lacoot_flow`)"
            )
        if not any(True for _ in self.module.parameters()):
            return "holds no parameters; removing it saves nothing"
        return None

    def is_chain(self) -> bool:
        """True if the forward only threads its input through its direct callees in turn."""
        if not self.callees or self.input is None:
            return False
        current: Any = self.input
        version = self.version
        for callee in self.callees:
            if not callee.single_tensor_in_out or callee.input is not current:
                return False
            if callee.version != version:  # changed in place in between (``out += x``)
                return False
            current, version = callee.output, callee.end_version
        return current is self.output and self.end_version == version


def _shape(t: Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape[1:]) + ")"


# modules seen returning a tuple ``(tensor, ...)``: its length, so that a stand-in returns the same
_ARITY: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()


def output_tensor(output: Any) -> Tensor | None:
    """The tensor that flows out of a block: its output, or the first element of a tuple it
    returns; None for anything else."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def with_output_tensor(output: Any, tensor: Tensor) -> Any:
    """``output`` with its flowing tensor replaced by ``tensor`` (a tuple keeps its other
    elements)."""
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


def _note_arity(module: nn.Module, output: Any) -> None:
    if isinstance(output, tuple) and output_tensor(output) is not None:
        _ARITY[module] = len(output)


def flow_tensor(
    args: tuple, kwargs: dict, flow: int | str | None = None
) -> tuple[Tensor | None, int | str | None]:
    """The tensor that flows through a block call, and where it is: ``args[flow]`` or
    ``kwargs[flow]`` when ``flow`` (the module's ``lacoot_flow``) is given, else the first tensor
    among the positional, then the keyword arguments. ``(None, None)`` when there is none."""
    if flow is not None:
        if isinstance(flow, str):
            value = kwargs.get(flow)
        else:
            value = args[flow] if 0 <= flow < len(args) else None
        return (value, flow) if isinstance(value, Tensor) else (None, None)
    for i, value in enumerate(args):
        if isinstance(value, Tensor):
            return value, i
    for key, value in kwargs.items():
        if isinstance(value, Tensor):
            return value, key
    return None, None


def replace_arg(args: tuple, kwargs: dict, where: int | str, value: Any) -> tuple[tuple, dict]:
    """``args``/``kwargs`` with the argument at ``where`` (a position or a keyword) replaced."""
    if isinstance(where, str):
        return args, {**kwargs, where: value}
    return (*args[:where], value, *args[where + 1 :]), kwargs


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
    model: nn.Module, example_input: Any
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
            rec.tensor_inputs, _ = count_tensor_args(args, kwargs)
            rec.input, _ = flow_tensor(args, kwargs, getattr(module, "lacoot_flow", None))
            rec.version = tensor_version(rec.input)
            if stack:
                stack[-1].callees.append(rec)
        stack.append(rec)

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any, name: str) -> None:
        rec = stack.pop()
        _note_arity(module, output)
        if rec.calls == 1:
            rec.output = output
            rec.end_version = tensor_version(output_tensor(output))
            rec.inplace = rec.input is not None and tensor_version(rec.input) != rec.version

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
            call_model(model, example_input)
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


def tensor_version(t: Tensor | None) -> int:
    """A tensor's in-place version counter (0 for None or a tensor without one)."""
    try:
        return int(t._version) if t is not None else 0
    except RuntimeError:  # inference tensors have no version counter
        return 0


def _own_params(model: nn.Module, name: str) -> int:
    """Parameter elements that removing block ``name`` removes: its parameters that no module
    outside it uses (a layer shared with another block stays)."""
    outside = {
        id(p)
        for n, p in model.named_parameters(remove_duplicate=False)
        if not n.startswith(name + ".")
    }
    mine = {id(p): p for p in model.get_submodule(name).parameters()}
    return sum(p.numel() for i, p in mine.items() if i not in outside)


def _make_block(model: nn.Module, rec: ModuleCall, macs: dict[str, int], batch: int) -> Block:
    assert rec.input is not None
    return Block(
        name=rec.name,
        kind=type(rec.module).__name__,
        shape=tuple(rec.input.shape[1:]),
        params=_own_params(model, rec.name),
        macs=macs.get(rec.name, 0) // max(batch, 1),
        order=rec.order,
        inplace=rec.inplace,
        tokens=adapter_for(model).token_features(model, rec.input),
    )


def _same_extent(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` holds the features of ``b`` at about their size: more than a quarter of its
    elements (whole batches, so windows folded into the batch count; a gate on pooled features
    ``(B, C, 1, 1)`` does not)."""
    return 4 * a.numel() > b.numel()


def _passing_work(rec: ModuleCall, calls: dict[str, ModuleCall], macs: dict[str, int]) -> bool:
    """Whether a layer inside ``rec`` multiplies (MACs > 0) features at the size of those that
    flow through it: not so for a normalisation (no MAC), an activation, or a gate computed on
    pooled features (squeeze-excitation)."""
    assert rec.input is not None
    for name, inner in calls.items():
        if not (name.startswith(rec.name + ".") or name == rec.name):
            continue
        if any(True for _ in inner.module.children()) or macs.get(name, 0) <= 0:
            continue
        if isinstance(inner.input, Tensor) and _same_extent(inner.input, rec.input):
            return True
    return False


def _why_not(rec: ModuleCall, calls: dict[str, ModuleCall], macs: dict[str, int]) -> str | None:
    """Why ``rec`` is not a block by default (None: it is one, unless it holds blocks)."""
    why = rec.rejection()
    if why is None and not any(True for _ in rec.module.children()):
        why = "is a single layer (a leaf module)"
    if why is None and rec.is_chain():
        why = "only chains its sub-modules; looked into instead"
    if why is None and not _passing_work(rec, calls, macs):
        why = ("multiplies nothing at the size of the features it passes (a normalisation, an "
               "activation, a gate on pooled features): removing it saves nothing; name it with "
               "include= to remove it anyway")  # fmt: skip
    return why


def _holds_blocks(rec: ModuleCall, calls: dict[str, ModuleCall], macs: dict[str, int]) -> bool:
    """Whether ``rec`` (or a module inside it) runs two or more blocks of one class one after the
    other, each taking the previous one's output: a layer list inside an encoder that also adds a
    position embedding or normalises at the end."""
    for name, inner in calls.items():
        if name != rec.name and not name.startswith(rec.name + "."):
            continue
        run = 0
        previous = None
        for c in inner.callees:
            follows = (previous is not None and c.input is output_tensor(previous.output)
                       and type(c.module) is type(previous.module))  # fmt: skip
            if _why_not(c, calls, macs) is None:
                run = run + 1 if follows else 1
                if run >= 2:
                    return True
                previous = c
            else:
                run, previous = 0, None
    return False


def _default_blocks(
    model: nn.Module, calls: dict[str, ModuleCall], macs: dict[str, int]
) -> tuple[list[ModuleCall], dict[str, str]]:
    """Outermost collapsible, non-leaf, non-chain modules that multiply features at full size and
    hold no chain of blocks; and why the others were passed over."""
    chosen: list[ModuleCall] = []
    reasons: dict[str, str] = {}

    def visit(name: str, module: nn.Module) -> None:
        rec = calls.get(name)
        if rec is not None and name:
            why = _why_not(rec, calls, macs)
            if why is None and _holds_blocks(rec, calls, macs):
                why = "runs a sequence of blocks (a layer list); looked into instead"
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
    example_input: Any,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    use_declared: bool = True,
) -> list[Block]:
    """Collapsible blocks of ``model``, in execution order.

    Parameters
    ----------
    model : nn.Module
        Any model; it is run once in eval mode without gradients and left in its original mode.
    example_input : Tensor, tuple or dict
        One example batch, e.g. ``(B, C, H, W)``; a tuple is unpacked as positional arguments, a
        dict as keyword arguments (:func:`lacoot.inputs.call_model`).
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
            named = {n: r for n, r in calls.items() if n and match_name(n, pattern)}
            matched = [rec for rec in named.values() if rec.rejection() is None]
            if not matched:
                why = {n: r.rejection() or "" for n, r in named.items()}
                raise BlockDiscoveryError(
                    f"include pattern {pattern!r} matches no collapsible module of "
                    f"{type(model).__name__}"
                    + (f"; the modules it names:\n{_explain(why)}" if why else
                       " (no module called in the forward pass has a matching name)")
                )  # fmt: skip
            chosen.extend(r for r in matched if r not in chosen)
    elif use_declared and callable(getattr(model, "lacoot_blocks", None)):
        chosen = _validated(
            model.lacoot_blocks(), calls, model, f"{type(model).__name__}.lacoot_blocks()"
        )
    else:
        chosen, reasons = _default_blocks(model, calls, macs)
        if not chosen:
            raise BlockDiscoveryError(
                f"{type(model).__name__} has no collapsible block: a block is a sub-module called "
                "once that maps one tensor to a tensor of the same shape and holds parameters. "
                f"Modules passed over:\n{_explain(reasons)}\nName blocks with include=... or "
                "declare them with a lacoot_blocks() method."
            )
    chosen = [r for r in chosen if not any(match_name(r.name, p) for p in excludes)]
    _check_not_nested((r.name for r in chosen), BlockDiscoveryError)
    batch = batch_size(example_input)
    return sorted((_make_block(model, r, macs, batch) for r in chosen), key=lambda b: b.order)


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


class CollapseError(ValueError):
    """Removing blocks would change what the model computes, or leaves a model that cannot run."""


class CollapsedBlock(nn.Identity):
    """``nn.Identity`` that stands for a removed block: returns the tensor that flowed through it.

    It accepts every argument its caller passes to the block (masks, position ids, flags) and
    returns the flowing one: ``args[flow]``/``kwargs[flow]`` when the block declared
    ``lacoot_flow``, else its first tensor argument. ``removed`` is the block's name, used in
    error messages. ``arity``: 0 when the block returned a tensor, else the length of the tuple it
    returned (the stand-in then returns ``(x, None, ...)``).
    """

    def __init__(self, flow: int | str | None = None, removed: str = "", arity: int = 0) -> None:
        super().__init__()
        self.flow, self.removed, self.arity = flow, removed, int(arity)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        tensor, _ = flow_tensor(args, kwargs, self.flow)
        if tensor is None:
            where = f"argument {self.flow!r}" if self.flow is not None else "a tensor argument"
            raise TypeError(f"a collapsed block passes {where} through; it was given none")
        return stand_in_output(tensor, self.arity)

    def __getattr__(self, attr: str) -> Any:
        try:
            return super().__getattr__(attr)
        except AttributeError:
            removed = self.__dict__.get("removed") or "?"
            parent = removed.rpartition(".")[0] or "the model"
            raise AttributeError(
                f"{type(self).__name__} stands for the removed block {removed!r} and has no "
                f"attribute {attr!r}: the code holding it ({parent!r}) reads the block's "
                "attributes, so replacing it by identity cannot run there. Remove it with "
                "remove_blocks(..., example_input=...), which deletes it from its container "
                "when that computes the same function"
            ) from None


def stand_in_output(tensor: Tensor, arity: int) -> Any:
    """What identity in place of a block returns: ``tensor``, or ``(tensor, None, ...)`` of
    ``arity`` elements for a block that returned a tuple."""
    return (tensor,) + (None,) * (arity - 1) if arity else tensor


def _collapsed(model: nn.Module, name: str) -> CollapsedBlock:
    module = model.get_submodule(name)
    flow = getattr(module, "lacoot_flow", None)
    return CollapsedBlock(flow, removed=name, arity=_ARITY.get(module, 0))


def identity_blocks(model: nn.Module, blocks: Iterable[str | Block]) -> nn.Module:
    """A copy of ``model`` with each block replaced by :class:`CollapsedBlock` (identity on its
    flowing tensor); the original is kept. This defines what a collapse computes."""
    names = _names(blocks)
    new = copy.deepcopy(model)
    for name in names:
        _check_exists(model, name)
        parent, child = _split(name)
        setattr(new.get_submodule(parent), child, _collapsed(model, name))
    return new


def _check_exists(model: nn.Module, name: str) -> None:
    if not name:
        raise ValueError("the model itself cannot be collapsed; expected a sub-module name")
    try:
        model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"block {name!r} is not a sub-module of {type(model).__name__}") from None


def deleted_from(collapsed: nn.Module, names: Iterable[str]) -> list[str]:
    """The containers of ``collapsed`` (a result of :func:`remove_blocks`) from which the
    removed ``names`` were deleted (the others stand as :class:`CollapsedBlock` or another
    stand-in at their name)."""
    out = set()
    for name in names:
        try:
            kept = isinstance(collapsed.get_submodule(name), CollapsedBlock)
        except AttributeError:  # deleted from the end of its container
            kept = False
        if not kept:
            out.add(_split(name)[0])
    return sorted(out)


def rebuild_removed(model: nn.Module, names: Sequence[str], deleted: Iterable[str]) -> nn.Module:
    """:func:`remove_blocks` as it was done once: ``names`` deleted from the containers
    ``deleted`` (:func:`deleted_from`), replaced by identity elsewhere (to load saved weights)."""
    return _build(model, list(names), set(deleted))


def _build(model: nn.Module, names: Sequence[str], delete_in: set[str]) -> nn.Module:
    """A copy of ``model`` without ``names``: deleted from the containers in ``delete_in``
    (renumbering them, as ``del container[i]`` does), replaced by identity elsewhere."""
    new = copy.deepcopy(model)
    deletions: dict[str, list[int]] = {}
    for name in names:
        parent_name, child = _split(name)
        if parent_name in delete_in:
            parent = new.get_submodule(parent_name)
            deletions.setdefault(parent_name, []).append(list(parent._modules).index(child))
        else:
            setattr(new.get_submodule(parent_name), child, _collapsed(model, name))
    adapter = adapter_for(model)
    for parent_name, indices in deletions.items():
        parent = new.get_submodule(parent_name)
        old_len = len(parent)
        for i in sorted(indices, reverse=True):
            del parent[i]
        kept = [i for i in range(old_len) if i not in set(indices)]
        adapter.after_delete(new, parent_name, kept, old_len)
    return new


@torch.no_grad()
def _outputs(model: nn.Module, example: Any, identity: Sequence[str] = ()) -> Any:
    """``model``'s output on ``example`` in eval mode, with the blocks ``identity`` made identity
    by hooks (the modules stay in place), or the exception it raised."""

    def skip(m: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        _note_arity(m, output)
        x = flow_tensor(args, kwargs, getattr(m, "lacoot_flow", None))[0]
        return stand_in_output(x, len(output) if isinstance(output, tuple) else 0)

    handles = [model.get_submodule(n).register_forward_hook(skip, with_kwargs=True)
               for n in identity]  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        return adapter_for(model).comparable(call_model(model, example))
    except Exception as exc:  # a model that cannot run is an answer here
        return exc
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def outputs_match(a: Any, b: Any, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Whether two model outputs (tensors, or tuples/lists/dicts of them) are equal within
    ``rtol``/``atol``; an exception on either side never matches."""
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return False
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        close = torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        return a.shape == b.shape and bool(close)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(outputs_match(a[k], b[k], rtol, atol) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        pairs = zip(a, b, strict=False)
        return len(a) == len(b) and all(outputs_match(x, y, rtol, atol) for x, y in pairs)
    return type(a) is type(b) and a == b


def remove_blocks(
    model: nn.Module, blocks: Iterable[str | Block], example_input: Any = None
) -> nn.Module:
    """A copy of ``model`` without the blocks (the original is untouched), computing exactly
    what :func:`identity_blocks` computes.

    A block is deleted from the ``nn.Sequential`` or ``nn.ModuleList`` that holds it (the
    container renumbered) where that computes the same function, and replaced by
    :class:`CollapsedBlock` elsewhere; either way its weights leave the state dict. With
    ``example_input`` (a batch, as for :func:`find_blocks`) every deletion is checked on it
    against identity replacement: a container whose deletion changes the output (a forward that
    pairs blocks with another list, or indexes them) keeps identity in its place. Without it,
    blocks are deleted from ``nn.Sequential`` (whose forward is the chain) and replaced by
    identity in any other container. A model that neither can run is a :class:`CollapseError`
    naming the container (``nn.TransformerEncoder`` without any layer, say).

    A model of an outside library goes through its adapter (:mod:`lacoot.adapters`): the
    containers it names (a Hugging Face decoder's layer list) always delete their blocks and have
    their indices and config counts rewritten, or the removal is a :class:`CollapseError`; its
    example input is used when none is given, and only what its adapter compares (logits and
    hidden states, not cache objects) has to match.
    """
    names = _names(blocks)
    for name in names:
        _check_exists(model, name)
    _check_not_nested(names)
    adapter = adapter_for(model)
    required = {c for c in adapter.delete_in(model) if any(_split(n)[0] == c for n in names)}
    containers = sorted({_split(n)[0] for n in names if isinstance(
        model.get_submodule(_split(n)[0]), (nn.Sequential, nn.ModuleList))})  # fmt: skip
    if example_input is None:
        example_input = adapter.example_input(model)
    if example_input is None:
        sequential = {c for c in containers if isinstance(model.get_submodule(c), nn.Sequential)}
        return _build(model, names, sequential | required)
    reference = _outputs(model, example_input, identity=names)
    delete_in: set[str] = set(required)
    for c in containers:  # keep each container's deletion that computes the same
        if c in required:
            continue
        if outputs_match(_outputs(_build(model, names, delete_in | {c}), example_input), reference):
            delete_in.add(c)
    new = _build(model, names, delete_in)
    got = _outputs(new, example_input)
    if not outputs_match(got, reference):
        _collapse_failed(names, got, reference, required)
    return new


def _collapse_failed(names: list[str], got: Any, reference: Any, required: set[str]) -> None:
    failed = got if isinstance(got, BaseException) else reference
    why = (f"{type(failed).__name__}: {failed}" if isinstance(failed, BaseException)
           else "its output differs from the model with identity in their place")  # fmt: skip
    if required:
        raise CollapseError(
            f"removing {names} from {sorted(required)} changes what the model computes ({why}): "
            "these layers pass more than their hidden state to the layers after them (a "
            "position bias, say), so they cannot be removed one by one"
        )
    where = ", ".join(sorted({repr(_split(n)[0] or "<model>") for n in names}))
    raise CollapseError(
        f"removing {names} leaves a model that cannot compute what identity in their place "
        f"computes, whether they are deleted from or replaced in {where} ({why}); remove "
        "fewer blocks there"
    )
