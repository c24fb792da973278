"""Linear repair fused into the weights: no extra module (ReplaceMe, Shopkhoev et al. 2025).

Removing the layers ``i+1 .. i+n`` of a residual stack leaves the output of layer ``i``,
``h_i = r_i + M_i`` (``M_i``: what its last projection, the *writer*, adds to the residual stream
``r_i``), where the output of layer ``i+n`` was. One linear map ``T: (D, D)`` fitted so that

    r_i + M_i T  ~  h_{i+n}     (least squares over calibration tokens)

is folded into the writer (``W <- T^T W``, ``b <- b T``): the collapsed model has the same
modules as one built with fewer layers, saves as a plain model of its library, and costs no MAC
more. The normal equations ``M^T M`` and ``M^T (h_{i+n} - r_i)`` are accumulated batch by batch in
float64 (memory ``O(D^2)``, never every activation). Runs are fitted in execution order, each on
the model with the earlier runs already fused and removed.

A run that starts at the first layer has no layer before it to fuse into: its layers are removed
without a map (``FusedRepair.unfused``). The writer is the last module with a 2-D weight that runs
inside layer ``i`` and returns the layer's output shape (``down_proj`` of a Llama MLP,
``c_proj`` of GPT-2); a layer whose output is not ``r_i + M_i`` (post-norm, say) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .blocks import _names, _split, output_tensor, remove_blocks, stand_in_output
from .config import CollapseConfig
from .inputs import call_model, first_samples, model_device, to_device, token_mask, token_rows
from .regularizer import StopForward, run_hooked

__all__ = ["fused_linear", "runs_of", "writer_of"]


def runs_of(model: nn.Module, names: Sequence[str]) -> list[tuple[str, int, int]]:
    """Contiguous runs of removed layers: ``(container, first, last)`` indices in the container
    (an ``nn.ModuleList``/``nn.Sequential``), in the containers' order."""
    by_parent: dict[str, list[int]] = {}
    for name in names:
        parent, child = _split(name)
        container = model.get_submodule(parent)
        if not isinstance(container, (nn.ModuleList, nn.Sequential)) or not child.isdigit():
            raise ValueError(
                f"block {name!r} is not an item of a layer list; a fused repair folds a map into "
                "the layer before a removed run of a list"
            )
        by_parent.setdefault(parent, []).append(int(child))
    runs = []
    for parent, idx in by_parent.items():
        idx = sorted(idx)
        start = prev = idx[0]
        for i in idx[1:] + [None]:
            if i is not None and i == prev + 1:
                prev = i
                continue
            runs.append((parent, start, prev))
            if i is not None:
                start = prev = i
    return runs


@torch.no_grad()
def writer_of(model: nn.Module, layer: str, example: Any) -> str:
    """Qualified name of the writer of ``layer``: the last module with a 2-D ``weight`` that runs
    inside it on ``example`` and returns a tensor of the layer's output shape."""
    module = model.get_submodule(layer)
    calls: list[tuple[str, tuple]] = []
    out: list[Tensor] = []
    handles = [
        m.register_forward_hook(
            lambda mod, a, o, n=f"{layer}.{n}": (
                calls.append((n, tuple(o.shape))) if isinstance(o, Tensor) else None
            )  # fmt: skip
        )
        for n, m in module.named_modules()
        if n and isinstance(getattr(m, "weight", None), Tensor) and m.weight.dim() == 2
    ]
    handles.append(module.register_forward_hook(lambda m, a, o: out.append(output_tensor(o))))
    try:
        call_model(model, example)
    finally:
        for h in handles:
            h.remove()
    shape = tuple(out[0].shape) if out and out[0] is not None else None
    found = [n for n, s in calls if s == shape]
    if not found:
        raise ValueError(f"layer {layer!r} has no linear layer writing its output {shape}; a "
                         "fused repair needs one")  # fmt: skip
    return found[-1]


class _Accumulator:
    """``X^T X`` and ``X^T Y`` over row batches ``(N, D)``, in float64."""

    def __init__(self) -> None:
        self.xtx: Tensor | None = None
        self.xty: Tensor | None = None

    def add(self, x: Tensor, y: Tensor) -> None:
        x, y = x.double(), y.double()
        xtx, xty = x.T @ x, x.T @ y
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        self.xty = xty if self.xty is None else self.xty + xty

    def solve(self, ridge: float) -> Tensor:
        """``T`` minimising ``|X T - Y|^2 + lam |T - I|^2``, ``lam = ridge * trace(X^T X) / D``:
        the ridge pulls the map towards the identity (the layers removed without a map)."""
        assert self.xtx is not None and self.xty is not None
        d = self.xtx.shape[0]
        lam = ridge * self.xtx.trace() / d
        eye = torch.eye(d, dtype=self.xtx.dtype, device=self.xtx.device)
        return torch.linalg.lstsq(self.xtx + lam * eye, self.xty + lam * eye).solution


def _capture(model: nn.Module, names: dict[str, str], x: Any, skip: Sequence[str] = (),
             stop: str | None = None) -> dict[str, Tensor]:  # fmt: skip
    """The outputs (flowing tensors) of the modules ``names`` (key -> qualified name) when
    ``model`` runs on ``x``, with the modules ``skip`` made identity; the pass ends after the
    module ``stop`` when given."""
    seen: dict[str, Tensor] = {}

    def grab(key: str, name: str, output: Any) -> None:
        seen[key] = output_tensor(output)
        if name == stop and len(seen) == len(names):
            raise StopForward

    handles = []
    for name in skip:
        handles.append(model.get_submodule(name).register_forward_hook(_identity, with_kwargs=True))
    for key, name in names.items():
        handles.append(model.get_submodule(name).register_forward_hook(
            lambda m, a, o, key=key, name=name: grab(key, name, o)))  # fmt: skip
    run_hooked(model, x, handles)
    return seen


def _identity(m: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    x = args[0] if args and isinstance(args[0], Tensor) else next(
        v for v in kwargs.values() if isinstance(v, Tensor))  # fmt: skip
    return stand_in_output(x, len(output) if isinstance(output, tuple) else 0)


def _fold(writer: nn.Module, t: Tensor) -> None:
    """``writer``'s output ``o`` becomes ``o @ t``: an ``nn.Linear`` (weight ``(out, in)``) or a
    transposed one (weight ``(in, out)``, GPT-2's ``Conv1D``)."""
    w = writer.weight
    t = t.to(w.dtype)
    if isinstance(writer, nn.Linear) or w.shape[0] == t.shape[0] != w.shape[1]:
        w.copy_(t.T @ w)
    else:
        w.copy_(w @ t)
    if getattr(writer, "bias", None) is not None:
        writer.bias.copy_(writer.bias @ t)


def fused_linear(
    model: nn.Module,
    removed: Iterable[str],
    loader: Iterable[Any],
    n_samples: int = CollapseConfig.calib_samples,
    ridge: float = 1e-4,
    example_input: Any = None,
) -> tuple[nn.Module, list[str]]:
    """The model without the ``removed`` layers, each run of them replaced by a linear map fused
    into the writer of the layer before it (see the module's doc).

    Parameters
    ----------
    model : nn.Module
        The full model; left untouched.
    removed : iterable of str
        Layers to remove: items of layer lists (``model.layers.7``).
    loader : iterable
        Calibration batches ``(inputs, targets)``; tokens are rows (padding excluded through the
        batch's ``attention_mask``).
    n_samples : int
        Calibration sequences.
    ridge : float
        Relative ridge ``>= 0`` pulling each map towards the identity (``ridge * trace(M^T M) / D``
        on the diagonal): ``0`` is plain least squares, a large ridge removes the layers without a
        map. Out-of-domain text favours a larger ridge than the calibration text does.
    example_input : optional
        Passed to :func:`lacoot.blocks.remove_blocks` to check the removal.

    Returns
    -------
    (nn.Module, list of str)
        The collapsed model, and the runs left without a map (their first layer, when nothing
        comes before it).
    """
    from .repair import _inputs

    names = _names(removed)
    batches = list(_inputs(loader, n_samples))
    if not batches:
        raise ValueError("the calibration loader yielded no sample; expected at least one batch")
    device = model_device(model)
    new = _eval_copy(model)
    runs = runs_of(model, names)
    ends = {f"{p}.{last}": f"{p}.{last}" for p, first, last in runs if first > 0}
    targets = _targets(model, ends, batches, device)
    done: list[str] = []
    unfused = []
    for parent, first, last in runs:
        run = [f"{parent}.{i}" for i in range(first, last + 1)]
        if first == 0:
            unfused.append(run[0])
        else:
            prev = f"{parent}.{first - 1}"
            _fit_and_fold(new, prev, [t[run[-1]] for t in targets], done, batches, device, ridge)
        done += run
    return remove_blocks(new, names, example_input), unfused


@torch.no_grad()
def _targets(model: nn.Module, ends: dict[str, str], batches: list, device) -> list[dict]:
    """Per batch, the original model's outputs of the layers ``ends`` (one pass each, ended
    after the last of them)."""
    if not ends:
        return [{} for _ in batches]
    was = model.training
    model.eval()
    try:
        last = max(ends, key=lambda n: int(n.rsplit(".", 1)[1]))
        return [_capture(model, ends, to_device(x, device), stop=last) for x in batches]
    finally:
        model.train(was)


def _eval_copy(model: nn.Module) -> nn.Module:
    import copy

    new = copy.deepcopy(model)
    return new.eval()


@torch.no_grad()
def _fit_and_fold(new, prev, targets, done, batches, device, ridge) -> None:
    """Fit ``T`` for one run on ``new`` (earlier runs ``done`` made identity there) against
    ``targets`` (per batch, the original model's output of the run's last layer), fold it into
    ``prev``'s writer, and check the layer now outputs ``r + M T``."""
    writer = writer_of(new, prev, to_device(first_samples(batches[0], 1), device))
    acc, check = _Accumulator(), None
    for x, target in zip(batches, targets, strict=True):
        x = to_device(x, device)
        mask = token_mask(x)
        got = _capture(new, {"h": prev, "m": writer}, x, skip=done, stop=prev)
        m, r = got["m"], got["h"] - got["m"]
        acc.add(token_rows(m, mask), token_rows(target - r, mask))
        check = check or (x, r, m)
    t = acc.solve(ridge)
    _fold(new.get_submodule(writer), t)
    x, r, m = check
    after = _capture(new, {"h": prev}, x, skip=done, stop=prev)["h"]
    expected = r + (m.double() @ t).to(m.dtype)
    if not torch.allclose(after, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
        raise ValueError(
            f"layer {prev!r} does not output its input plus what {writer!r} writes (a "
            "post-norm layer, say): a map folded into that writer is not the map fitted"
        )
