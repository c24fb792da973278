"""Optimal-transport distances between point clouds, in torch.

Everything here is differentiable with respect to the point clouds, batched, and runs on any device.
Half-precision and bfloat16 inputs are computed in float32; float64 stays float64.

Conventions follow POT (:mod:`ot.sliced`): distances are returned as ``W_p`` (the ``p``-th root is
taken), point clouds are ``(n_samples, n_features)`` and projection matrices are
``(n_features, n_projections)`` with unit columns.

Parity with POT (``ot.wasserstein_1d``, ``ot.sliced_wasserstein_distance``,
``ot.max_sliced_wasserstein_distance``):

* sample weights ``a: (n,)`` and ``b: (m,)`` (keyword-only; non-negative, normalised here to sum
  to 1, where POT uses them as given), exact weighted 1-D ``W_p`` through the quantile functions;
* ``log=True`` returns ``(value, {"projections": (d, L), "projected_emds": (L,)})`` with POT's key
  names and meaning: ``projected_emds`` holds ``W_p^p`` (not ``W_p``) along each direction;
* NumPy inputs give NumPy outputs (computed in float64): a ``numpy.float64`` scalar (POT's type,
  also a Python ``float``), or an ``ndarray`` for batched or vector results;
* a single sample on either side (``n = 1`` or ``m = 1``) is a Dirac measure, as in POT; an empty
  side is an error.

POT's ``wasserstein_1d`` takes its samples along the *first* axis and returns ``W_p^p``; ours takes
them along the *last* axis and returns ``W_p``. Seeds do not reproduce POT's random directions: pass
the same ``projections`` to both to compare.

References
----------
Deshpande et al., "Max-Sliced Wasserstein Distance and its use for GANs", CVPR 2019.
Quetu et al., "LaCoOT: Layer Collapse through Optimal Transport", ICCV 2025 (arXiv 2406.08933).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "wasserstein_1d",
    "sliced_wasserstein",
    "max_sliced_wasserstein",
    "random_projections",
]

Method = Literal["random", "ascent"]
SeedLike = int | torch.Generator | None
ArrayLike = Tensor | np.ndarray


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, otherwise float32 (half and bfloat16 are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_p(p: float) -> float:
    p = float(p)
    if not p >= 1.0 or not math.isfinite(p):
        raise ValueError(f"p={p!r} is not a valid Wasserstein order; expected a finite p >= 1")
    return p


def _safe_root(x: Tensor, p: float) -> Tensor:
    """``x ** (1/p)`` whose gradient at ``x == 0`` is 0 instead of inf/NaN."""
    if p == 1.0:
        return x
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, safe ** (1.0 / p), x * 0)  # x * 0 keeps NaN


def _wasserstein_1d_pow(u: Tensor, v: Tensor, p: float) -> Tensor:
    """``W_p^p`` between the empirical distributions in the last dimension of ``u`` and ``v``.

    ``u: (..., n)``, ``v: (..., m)`` with uniform weights; returns ``(...)``. With ``n == m`` the
    optimal coupling matches sorted samples one to one. Otherwise the two quantile functions are
    compared on the union of their breakpoints ``{i/n} U {j/m}``; the breakpoints are kept as exact
    integers on the common grid ``1/(n*m)`` so no rounding can shift a quantile index.
    """
    n, m = u.shape[-1], v.shape[-1]
    su = torch.sort(u, dim=-1).values
    sv = torch.sort(v, dim=-1).values
    if n == m:
        return (su - sv).abs().pow(p).mean(dim=-1)
    device = u.device
    levels = torch.cat(
        [
            torch.arange(1, n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(1, m + 1, device=device, dtype=torch.int64) * n,
        ]
    )
    levels = torch.unique(levels)  # sorted, the last one is n*m
    widths = torch.diff(levels, prepend=levels.new_zeros(1)).to(u.dtype) / (n * m)
    iu = torch.div(levels + m - 1, m, rounding_mode="floor") - 1  # quantile index of u at t
    iv = torch.div(levels + n - 1, n, rounding_mode="floor") - 1
    diff = su.index_select(-1, iu) - sv.index_select(-1, iv)
    return (diff.abs().pow(p) * widths).sum(dim=-1)


def _wasserstein_1d_pow_weighted(
    u: Tensor, v: Tensor, p: float, a: Tensor | None, b: Tensor | None
) -> Tensor:
    """``W_p^p`` between weighted empirical distributions in the last dimension of ``u`` and ``v``.

    ``u: (..., n)``, ``v: (..., m)``; ``a`` is ``(n,)`` or ``(..., n)`` (``b`` likewise),
    normalised to sum to 1, ``None`` for uniform weights; returns ``(...)``. Exact: the quantile
    functions ``F_u^{-1}`` and ``F_v^{-1}`` are piecewise constant between the cumulative weights of
    the sorted samples, so on every interval between consecutive levels of the merged cumulative
    sums both are constant; the integral of ``|F_u^{-1} - F_v^{-1}|^p`` is the sum over these
    intervals (POT's ``ot.wasserstein_1d``, with the samples in the last dimension).
    Differentiable with respect to the samples (and to the weights, through the interval widths).
    """
    n, m = u.shape[-1], v.shape[-1]
    su, iu = torch.sort(u, dim=-1)
    sv, iv = torch.sort(v, dim=-1)
    wa = u.new_full((n,), 1.0 / n) if a is None else a
    wb = v.new_full((m,), 1.0 / m) if b is None else b
    cu = torch.cumsum(torch.gather(wa.expand(u.shape), -1, iu), dim=-1)
    cv = torch.cumsum(torch.gather(wb.expand(v.shape), -1, iv), dim=-1)
    levels = torch.sort(torch.cat([cu, cv], dim=-1), dim=-1).values  # (..., n + m)
    # On (levels[k-1], levels[k]] the u-quantile is the first sorted sample whose cumulative
    # weight reaches levels[k]; rounding can leave the last cumulative weight a little below 1.
    ku = torch.searchsorted(cu.contiguous(), levels.contiguous()).clamp_(max=n - 1)
    kv = torch.searchsorted(cv.contiguous(), levels.contiguous()).clamp_(max=m - 1)
    widths = torch.diff(levels, dim=-1, prepend=levels.new_zeros(levels.shape[:-1] + (1,)))
    diff = torch.gather(su, -1, ku) - torch.gather(sv, -1, kv)
    return (diff.abs().pow(p) * widths).sum(dim=-1)


def _w1d_pow(u: Tensor, v: Tensor, p: float, a: Tensor | None, b: Tensor | None) -> Tensor:
    """``W_p^p`` in the last dimension: the uniform fast path when both weights are ``None``."""
    if a is None and b is None:
        return _wasserstein_1d_pow(u, v, p)
    return _wasserstein_1d_pow_weighted(u, v, p, a, b)


def _is_numpy(*pairs: tuple[str, Any]) -> bool:
    """Whether the named inputs are NumPy arrays (all) or tensors (all); else a TypeError."""
    kinds = []
    for name, x in pairs:
        if isinstance(x, np.ndarray):
            kinds.append("numpy.ndarray")
        elif isinstance(x, Tensor):
            kinds.append("torch.Tensor")
        else:
            raise TypeError(
                f"{name} is a {type(x).__name__}; expected a torch.Tensor or a numpy.ndarray"
            )
    if len(set(kinds)) > 1:
        got = ", ".join(f"{name} a {k}" for (name, _), k in zip(pairs, kinds, strict=True))
        names = " and ".join(name for name, _ in pairs)
        raise TypeError(
            f"mixed NumPy and torch inputs: {got}; pass {names} both as NumPy arrays or both as "
            "tensors"
        )
    return kinds[0] == "numpy.ndarray"


def _as_tensor(x: ArrayLike, name: str) -> Tensor:
    """A tensor from a tensor or a NumPy array (float64 on the CPU), else a TypeError."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    raise TypeError(f"{name} is a {type(x).__name__}; expected a torch.Tensor or a numpy.ndarray")


def _to_numpy(x: Tensor) -> np.ndarray | np.float64:
    """NumPy result: ``numpy.float64`` for a scalar (POT's type), otherwise an ``ndarray``."""
    arr = x.detach().cpu().numpy()
    return np.float64(arr) if arr.ndim == 0 else arr


def _check_weights(
    w: ArrayLike | None, n: int, name: str, like: Tensor, batched: tuple[int, ...] | None = None
) -> Tensor | None:
    """Sample weights ``w`` of ``n`` samples as ``like``'s dtype and device, normalised to sum 1.

    ``w`` has shape ``(n,)`` (or ``batched``, the full shape of the samples, when given). Raises a
    ValueError naming ``name`` for a wrong shape, a non-finite or negative entry, or a zero sum.
    """
    if w is None:
        return None
    w = _as_tensor(w, name).to(device=like.device, dtype=like.dtype)
    if w.shape != (n,) and w.shape != batched:
        also = "" if batched is None or batched == (n,) else f" or {batched}"
        raise ValueError(
            f"{name} has shape {tuple(w.shape)}; expected ({n},){also}: one non-negative weight "
            "per sample"
        )
    total = w.sum(dim=-1, keepdim=True)
    finite, low, least = torch.stack(
        [torch.isfinite(w).all().to(w.dtype), w.min(), total.min()]
    ).tolist()  # one synchronisation
    if not finite:
        raise ValueError(f"{name} holds NaN or inf; expected finite non-negative weights")
    if low < 0:
        raise ValueError(f"{name} has a negative entry ({low:g}); expected non-negative weights")
    if not least > 0:
        raise ValueError(f"{name} sums to 0; expected non-negative weights with a positive sum")
    return w / total


def wasserstein_1d(
    u: ArrayLike,
    v: ArrayLike,
    p: float = 2.0,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
) -> Tensor | np.ndarray | np.float64:
    r"""Exact Wasserstein-``p`` distance between 1-D empirical distributions.

    .. math:: W_p(u, v) = \Big(\int_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p \, dt\Big)^{1/p}

    Parameters
    ----------
    u : Tensor or ndarray, shape ``(..., n)``
        Samples of the first distribution; leading dimensions are a batch (e.g. one row per
        projection direction). ``n = 1`` is a Dirac measure.
    v : Tensor or ndarray, shape ``(..., m)``
        Samples of the second distribution, same leading dimensions as ``u``; ``m`` may differ
        from ``n`` (exact quantile matching).
    p : float
        Order of the distance, ``p >= 1``.
    a : Tensor or ndarray, shape ``(n,)`` or ``(..., n)``, optional, keyword-only
        Non-negative weights of the samples of ``u`` (normalised here to sum to 1; a row per batch
        element in the second form). Default: uniform, ``1/n``.
    b : Tensor or ndarray, shape ``(m,)`` or ``(..., m)``, optional, keyword-only
        Weights of the samples of ``v``, likewise.

    Returns
    -------
    Tensor, shape ``(...)``, or NumPy
        ``W_p`` in the units of the samples, float32 (float64 for float64 inputs); differentiable
        with respect to the samples. NumPy ``u`` and ``v`` are computed in float64 and give a
        ``numpy.float64`` scalar, or an ``ndarray`` of shape ``(...)`` for batched inputs.
        For ``p = 1`` this equals :func:`scipy.stats.wasserstein_distance` (also with weights);
        POT's ``ot.wasserstein_1d`` returns ``W_p ** p`` over the first axis instead.

    Raises
    ------
    TypeError
        ``u`` and ``v`` mix NumPy and torch.
    ValueError
        An invalid ``p``, an empty side, shapes that differ in the batch dimensions, or invalid
        weights (wrong shape, negative, non-finite or zero-sum; the message names ``a`` or ``b``).
    """
    numpy_io = _is_numpy(("u", u), ("v", v))
    u, v = _as_tensor(u, "u"), _as_tensor(v, "v")
    p = _check_p(p)
    if u.dim() < 1 or v.dim() < 1:
        raise ValueError(
            f"wasserstein_1d expects tensors of shape (..., n); got {tuple(u.shape)} and "
            f"{tuple(v.shape)}"
        )
    if u.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"batch shapes differ: u {tuple(u.shape)} and v {tuple(v.shape)}; expected the same "
            "leading dimensions"
        )
    if u.shape[-1] < 1 or v.shape[-1] < 1:
        raise ValueError(
            f"need at least one sample on each side; got n={u.shape[-1]}, m={v.shape[-1]}"
        )
    dtype = _compute_dtype(u, v)
    u, v = u.to(dtype), v.to(dtype)
    a_ = _check_weights(a, u.shape[-1], "a", u, tuple(u.shape))
    b_ = _check_weights(b, v.shape[-1], "b", v, tuple(v.shape))
    value = _safe_root(_w1d_pow(u, v, p, a_, b_), p)
    return _to_numpy(value) if numpy_io else value


def random_projections(
    d: int,
    n_projections: int,
    seed: SeedLike = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Directions drawn uniformly on the unit sphere of ``R^d``.

    Returns a ``(d, n_projections)`` tensor with unit-norm columns (POT's layout). With an integer
    ``seed`` the draw is made on the CPU: the same seed gives the same directions on every device.
    """
    if d < 1 or n_projections < 1:
        raise ValueError(
            f"need d >= 1 and n_projections >= 1; got d={d}, n_projections={n_projections}"
        )
    if isinstance(seed, int):
        gen = torch.Generator().manual_seed(seed)
        drawn = torch.float64 if dtype == torch.float64 else torch.float32  # half: via float32
        proj = torch.randn(d, n_projections, generator=gen, dtype=drawn)
        proj = proj.to(device=device, dtype=dtype)
    else:
        gen_device = seed.device if isinstance(seed, torch.Generator) else device
        proj = torch.randn(d, n_projections, generator=seed, device=gen_device, dtype=dtype)
        proj = proj.to(device)
    return proj.div_(proj.norm(dim=0, keepdim=True))  # a fresh tensor: divided in place


def _check_clouds(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """Shape and device checks; returns both clouds in the compute dtype.

    One sample on a side is allowed (a Dirac measure, as in POT); an empty side is not.
    """
    if X.dim() != 2 or Y.dim() != 2:
        raise ValueError(
            f"point clouds must be 2-D (n_samples, n_features); got X {tuple(X.shape)} and "
            f"Y {tuple(Y.shape)}"
        )
    if X.shape[1] != Y.shape[1]:
        raise ValueError(
            f"feature sizes differ: X has {X.shape[1]} features, Y has {Y.shape[1]}; expected the "
            "same number of features"
        )
    if X.shape[0] < 1 or Y.shape[0] < 1:
        raise ValueError(
            f"need at least one sample on each side; got n={X.shape[0]}, m={Y.shape[0]}"
        )
    if X.device != Y.device:
        raise ValueError(f"X is on {X.device} and Y on {Y.device}; expected one device")
    dtype = _compute_dtype(X, Y)
    return X.to(dtype), Y.to(dtype)


def _prepare(
    X: ArrayLike, Y: ArrayLike, a: ArrayLike | None, b: ArrayLike | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, bool]:
    """Common input handling of the cloud functions: NumPy or torch (not mixed), checked clouds in
    the compute dtype, normalised weights (``None`` for uniform) and whether the input was NumPy."""
    numpy_io = _is_numpy(("X", X), ("Y", Y))
    X, Y = _check_clouds(_as_tensor(X, "X"), _as_tensor(Y, "Y"))
    a_ = _check_weights(a, X.shape[0], "a", X)
    b_ = _check_weights(b, Y.shape[0], "b", Y)
    return X, Y, a_, b_, numpy_io


def _check_finite(X: Tensor, Y: Tensor, *probes: Tensor) -> None:
    """Raise if ``X`` or ``Y`` holds NaN or inf.

    ``probes`` are small tensors already computed as linear maps of the clouds (projections, means):
    a non-finite input makes them non-finite, so the full scan of ``X`` and ``Y`` (several times
    slower than a matrix-vector product) runs only when a probe is not finite.
    """
    if all(bool(torch.isfinite(t).all()) for t in probes):
        return
    for name, t in (("X", X), ("Y", Y)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf); expected finite")


def _resolve_projections(
    X: Tensor, projections: ArrayLike | None, n_projections: int, seed: SeedLike
) -> Tensor:
    d = X.shape[1]
    if projections is None:
        return random_projections(d, n_projections, seed, device=X.device, dtype=X.dtype)
    projections = _as_tensor(projections, "projections")
    if projections.dim() != 2 or projections.shape[0] != d:
        raise ValueError(
            f"projections have shape {tuple(projections.shape)}; expected (n_features={d}, "
            "n_projections) with unit columns"
        )
    return projections.to(device=X.device, dtype=X.dtype)


def _finish(
    numpy_io: bool, value: Tensor, *extra: Tensor, log: dict[str, Tensor] | None = None
) -> Any:
    """``value``, then ``extra`` and ``log`` when given, converted to NumPy for NumPy input."""
    out: list[Any] = [value, *extra]
    if log is not None:
        out.append(log)
    if numpy_io:
        out = [
            {k: _to_numpy(t) for k, t in o.items()} if isinstance(o, dict) else _to_numpy(o)
            for o in out
        ]
    return out[0] if len(out) == 1 else tuple(out)


def sliced_wasserstein(
    X: ArrayLike,
    Y: ArrayLike,
    n_projections: int = 50,
    p: float = 2.0,
    projections: ArrayLike | None = None,
    seed: SeedLike = None,
    validate: bool = True,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    log: bool = False,
) -> Any:
    r"""Sliced Wasserstein distance, Monte-Carlo estimate over random directions.

    .. math:: SW_p(X, Y) = \Big(\frac{1}{L}\sum_{l=1}^{L} W_p^p(X\theta_l, Y\theta_l)\Big)^{1/p}

    Parameters
    ----------
    X : Tensor or ndarray, shape ``(n, d)``
        Samples of the first distribution; ``n = 1`` is a Dirac measure.
    Y : Tensor or ndarray, shape ``(m, d)``
        Samples of the second distribution, same kind (torch or NumPy) as ``X``.
    n_projections : int
        ``L``, used when ``projections`` is not given.
    p : float
        Order, ``p >= 1``.
    projections : Tensor or ndarray, shape ``(d, L)``, optional
        Explicit unit directions (POT's layout); ``n_projections`` and ``seed`` are then unused.
    seed : int or torch.Generator, optional
        Seed of the random directions (not the directions POT draws for the same seed).
    validate : bool
        Check that the inputs are finite (one device synchronisation).
    a : Tensor or ndarray, shape ``(n,)``, optional, keyword-only
        Non-negative sample weights of ``X``, normalised here to sum to 1. Default: uniform.
    b : Tensor or ndarray, shape ``(m,)``, optional, keyword-only
        Non-negative sample weights of ``Y``, likewise.
    log : bool, keyword-only
        Also return a dictionary (POT's ``log``): ``"projections"``, the ``(d, L)`` directions
        used, and ``"projected_emds"``, the ``(L,)`` values ``W_p^p`` (the ``p``-th power, in
        units of the features to the ``p``) along each of them, so that the value is
        ``projected_emds.mean() ** (1/p)``.

    Returns
    -------
    Tensor, scalar (and dict if ``log``)
        ``SW_p`` in the units of the features; equal to POT's ``ot.sliced_wasserstein_distance``
        with the same projections and weights. NumPy ``X`` and ``Y`` are computed in float64 and
        give a ``numpy.float64`` (and NumPy arrays in the dict).
    """
    p = _check_p(p)
    X, Y, a_, b_, numpy_io = _prepare(X, Y, a, b)
    proj = _resolve_projections(X, projections, n_projections, seed)
    px, py = X @ proj, Y @ proj
    if validate:
        _check_finite(X, Y, px, py)
    emds = _w1d_pow(px.T, py.T, p, a_, b_)
    value = _safe_root(emds.mean(), p)
    logd = {"projections": proj, "projected_emds": emds} if log else None
    return _finish(numpy_io, value, log=logd)


def _gradient(
    X: Tensor,
    Y: Tensor,
    px: Tensor,
    py: Tensor,
    p: float,
    a: Tensor | None = None,
    b: Tensor | None = None,
) -> Tensor:
    """Gradient of ``theta -> W_p^p(X theta, Y theta)`` (weights ``a``, ``b``) given the
    projections ``px, py``.

    Matrix-vector products only: for ``n << d`` they are memory-bound and one ``(n, d) @ (d,)``
    costs about as much as one ``(n, d) @ (d, 4)``, so directions are handled one at a time.
    """
    px, py = px.detach().requires_grad_(True), py.detach().requires_grad_(True)
    with torch.enable_grad():
        gx, gy = torch.autograd.grad(_w1d_pow(px, py, p, a, b), (px, py))
    return X.T @ gx + Y.T @ gy


def _step_angles(power_angle: Tensor, n_grid: int = 8, n_halvings: int = 10) -> Tensor:
    """Trial rotation angles along a great circle, all in ``(0, pi/2]``: the power-method angle
    scaled by ``2, 1, 1/2, ..., 2**-n_halvings`` and a uniform grid of ``n_grid`` angles."""
    scales = 2.0 ** -torch.arange(-1, n_halvings + 1, dtype=power_angle.dtype)
    grid = torch.arange(1, n_grid + 1, dtype=power_angle.dtype) * (math.pi / 2 / n_grid)
    angles = torch.cat([power_angle.cpu() * scales, grid]).clamp(1e-6, math.pi / 2)
    return angles.to(power_angle.device)


@torch.no_grad()
def _ascend_direction(
    X: Tensor,
    Y: Tensor,
    theta: Tensor,
    p: float,
    n_iters: int,
    tol: float,
    projected: tuple[Tensor, Tensor] | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    with_projections: bool = False,
) -> tuple[Tensor, ...]:
    """Maximise ``f(theta) = W_p^p(X theta, Y theta)`` (weights ``a``, ``b``) over the unit sphere
    from ``theta: (d,)``.

    Riemannian gradient ascent with a line search along the great circle through ``theta`` and
    the tangent gradient ``t``. Projections are linear, so the clouds projected on
    ``cos(a) theta + sin(a) t`` are ``cos(a) X theta + sin(a) X t`` for every angle ``a``: once
    ``X t`` and ``Y t`` are known, ``f`` is evaluated exactly at many angles for the price of
    sorting ``n`` numbers each. A step thus costs four matrix-vector products (the gradient and the
    tangent's projections) whatever the number of trial angles; the trials cover the power-method
    angle (the exact maximiser when the sorting permutations do not change, ``p = 2``), its
    halvings and a uniform grid. The ascent stops when no trial increases ``f`` or the direction
    moves by less than ``1 - cos < tol``. Returns the direction and ``f`` there (and, with
    ``with_projections``, ``X theta, Y theta`` at that direction); the search itself is not
    differentiated. ``projected`` are ``(X theta, Y theta)`` when already computed (``theta``
    must then be a unit vector). For ``p = 1`` see :func:`_ascend_kinked`.
    """
    if projected is None:
        theta = theta / theta.norm()
        px, py = X @ theta, Y @ theta
    else:
        px, py = projected
    val = _w1d_pow(px, py, p, a, b)
    for _ in range(n_iters):
        grad = _gradient(X, Y, px, py, p, a, b)
        radial = grad @ theta
        tangent = grad - radial * theta
        tangent = tangent - (tangent @ theta) * theta  # once more: exact orthogonality
        tnorm = tangent.norm()
        if not tnorm > 1e-10 * grad.norm():  # at a critical point (to rounding)
            break
        tangent = tangent / tnorm
        tx, ty = X @ tangent, Y @ tangent
        angles = _step_angles(torch.atan2(tnorm, radial.abs()))
        cos, sin = torch.cos(angles).to(px.dtype), torch.sin(angles).to(px.dtype)
        cand_x = cos[:, None] * px + sin[:, None] * tx  # (A, n)
        cand_y = cos[:, None] * py + sin[:, None] * ty  # (A, m)
        values = _w1d_pow(cand_x, cand_y, p, a, b)  # (A,)
        k = int(torch.argmax(values))
        if not values[k] > val:
            break
        theta = cos[k] * theta + sin[k] * tangent
        norm = theta.norm()  # 1 up to rounding; keep theta, its projections and f consistent
        theta, px, py = theta / norm, cand_x[k] / norm, cand_y[k] / norm
        val = values[k] / norm**p
        if 1.0 - float(cos[k]) < tol:
            break
    return (theta, val, px, py) if with_projections else (theta, val)


class _ProjectedValue(torch.autograd.Function):
    """``W_p^p(X theta, Y theta)`` (uniform weights) from projections ``px = X theta`` and
    ``py = Y theta`` already computed: its gradient ``dW/dpx theta^T`` (and ``Y``'s) flows into
    ``X`` and ``Y`` without projecting them again (``theta`` is not differentiated)."""

    @staticmethod
    def forward(ctx: Any, X: Tensor, Y: Tensor, theta: Tensor, px: Tensor, py: Tensor,
                p: float) -> Tensor:  # fmt: skip
        px, py = px.detach().requires_grad_(True), py.detach().requires_grad_(True)
        with torch.enable_grad():
            value = _wasserstein_1d_pow(px, py, p)
            gx, gy = torch.autograd.grad(value, (px, py))
        ctx.save_for_backward(theta, gx, gy)
        return value.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        theta, gx, gy = ctx.saved_tensors
        dx = torch.outer(grad * gx, theta) if ctx.needs_input_grad[0] else None
        dy = torch.outer(grad * gy, theta) if ctx.needs_input_grad[1] else None
        return dx, dy, None, None, None, None


def _min_norm_weights(gram: np.ndarray) -> np.ndarray:
    """Convex weights ``lam: (k,)`` minimising ``|sum_i lam_i v_i|`` given ``gram = V V^T``.

    Wolfe's minimum-norm-point algorithm (Wolfe 1976) on the Gram matrix of ``k`` vectors (``k``
    is small: the bundle of :func:`_ascend_kinked`): a corral ``S`` of affinely independent
    vectors whose affine minimum-norm point has positive weights is grown by the vector most
    opposed to the current point until none is (``v_j . x >= |x|^2`` for all ``j``: optimal).
    """
    k = gram.shape[0]
    G = gram / max(float(np.max(np.diag(gram))), 1e-300)
    eps = 1e-12
    first = int(np.argmin(np.diag(G)))
    corral, lam = [first], np.zeros(k)
    lam[first] = 1.0
    for _ in range(4 * k + 4):  # each major cycle adds one vector; minor cycles drop some
        x_dot = G @ lam
        j = int(np.argmin(x_dot))
        if x_dot[j] >= lam @ x_dot - eps or j in corral:
            break
        corral.append(j)
        for _ in range(k + 1):
            c = len(corral)
            system = np.ones((c + 1, c + 1))
            system[:c, :c] = G[np.ix_(corral, corral)]
            system[c, c] = 0.0
            rhs = np.zeros(c + 1)
            rhs[c] = 1.0
            mu = np.linalg.lstsq(system, rhs, rcond=None)[0][:c]  # affine min-norm point of S
            if np.all(mu > eps):
                lam = np.zeros(k)
                lam[corral] = mu
                break
            cur = lam[corral]
            out = mu <= eps
            step = float(np.min(cur[out] / np.maximum(cur[out] - mu[out], 1e-300)))
            new = cur + step * (mu - cur)
            keep = new > eps
            corral = [s for s, kp in zip(corral, keep, strict=True) if kp]
            lam = np.zeros(k)
            lam[corral] = new[keep]
            if len(corral) <= 1:
                break
    return lam / lam.sum()


def _circle_max(
    px: Tensor,
    py: Tensor,
    ux: Tensor,
    uy: Tensor,
    val: Tensor,
    angles: Tensor,
    p: float,
    a: Tensor | None,
    b: Tensor | None,
    max_rounds: int = 24,
) -> tuple[float, Tensor, float]:
    """Maximise ``g(s) = f(cos(s) theta + sin(s) u)`` over ``s in [0, pi/2]`` from trial angles.

    ``px, py`` and ``ux, uy`` are the projections of the clouds on ``theta`` and on the unit
    tangent ``u``; ``val = g(0)``. The best of ``0`` and the ``angles`` is refined by zooms (9
    equally spaced angles on the bracket between its neighbours, which keeps the best point: the
    refinement never decreases ``g``) until the bracket is narrower than ``eps**(2/3)`` radians
    (``eps`` of the dtype: 4e-11 in float64, 2e-5 in float32, well above the rounding of the
    projections). No matrix-vector product: each zoom sorts ``9 (n + m)`` numbers. Returns the best
    angle ``s*``, ``g(s*)`` and the angle just beyond ``s*`` (the right end of the last bracket),
    where a kink that stopped the increase has been crossed.
    """
    resolution = torch.finfo(px.dtype).eps ** (2 / 3)

    def g(s: Tensor) -> Tensor:
        cos, sin = torch.cos(s).to(px.dtype), torch.sin(s).to(px.dtype)
        return _w1d_pow(
            cos[:, None] * px + sin[:, None] * ux, cos[:, None] * py + sin[:, None] * uy, p, a, b
        )

    s = torch.cat([angles.new_zeros(1), angles]).unique()  # sorted
    vals = g(s)
    vals[0] = val  # s = 0 exactly: theta itself
    for rnd in range(max_rounds + 1):
        j = int(torch.argmax(vals))
        lo, hi = s[max(j - 1, 0)], s[min(j + 1, s.numel() - 1)]
        best_s, best_v = s[j], vals[j]
        if rnd == max_rounds or float(hi - lo) < resolution:
            break
        s = torch.linspace(float(lo), float(hi), 9, dtype=s.dtype, device=s.device)
        vals = g(s)
        # the previous best is on the new grid (centre or end) up to rounding: keep its value
        k = int(torch.argmin((s - best_s).abs()))
        s[k], vals[k] = best_s, best_v
    beyond = float(hi) if float(hi) > float(best_s) else float(best_s) + float(hi - lo) / 2
    return float(best_s), best_v, beyond


@torch.no_grad()
def _ascend_kinked(
    X: Tensor,
    Y: Tensor,
    theta: Tensor,
    p: float,
    n_iters: int,
    tol: float,
    projected: tuple[Tensor, Tensor] | None = None,
    a: Tensor | None = None,
    b: Tensor | None = None,
    max_bundle: int = 8,
) -> tuple[Tensor, Tensor]:
    """:func:`_ascend_direction` for objectives with kinks (``p = 1``): a bundle method.

    ``f(theta) = W_p^p(X theta, Y theta)`` is the minimum over couplings of functions that are
    smooth on each side of the planes where two projected samples swap order; where the optimal
    coupling changes, ``f`` has a concave kink (a ridge). For ``p = 1`` every piece is *linear*,
    ``f = c . theta``, so the gradient carries no information on where the piece ends: a step
    along it stops at the first ridge, the gradient on the far side points back across it, and
    plain gradient steps zig-zag across the ridge with shrinking angles until the tolerance ends
    them, short of any maximum. Here the ascent direction is the minimum-norm element of the convex
    hull of the tangent gradient at ``theta`` and a *bundle* of gradients met just beyond the kinks
    that stopped earlier steps (Wolfe's conjugate subgradient / bundle method): along a ridge
    between pieces A and B it is the direction that increases both, i.e. along the ridge.

    Every step maximises ``f`` along the great circle in that direction (:func:`_circle_max`; at
    the same four matrix-vector products per step). A step that reaches at least half of the
    angle at which the current piece would peak is *serious*: the bundle is emptied. Otherwise a
    kink stopped it (*null* step): the gradient just beyond the kink (two more matrix-vector
    products) joins the bundle and, if the best point is higher, the step moves there and the
    gradient at its start joins too (oldest dropped beyond ``max_bundle``). The gradient beyond
    the kink decreases ``f`` along the direction, so each null step strictly shrinks the
    minimum-norm element. A bundle gradient ``c`` is the linear map of its piece, so
    ``c . theta = f(theta)`` exactly when ``theta`` is on the closure of that piece: gradients of
    pieces no longer adjacent (linearisation error above ``eps**(1/3)`` relative, ``6e-6`` in
    float64) are dropped before each step, so they cannot fake a stationary point.

    Stops when the minimum-norm element predicts a step ``1 - cos < tol`` (approximately
    stationary: zero lies in the convex hull of the gradients of the pieces meeting at ``theta``,
    a local maximum to first order), when a null step finds no new gradient, or after ``n_iters``
    steps. ``f`` never decreases. Returns the direction and ``f`` there, like
    :func:`_ascend_direction`.
    """
    if projected is None:
        theta = theta / theta.norm()
        px, py = X @ theta, Y @ theta
    else:
        px, py = projected
    val = _w1d_pow(px, py, p, a, b)
    adjacent = torch.finfo(px.dtype).eps ** (1 / 3)  # relative linearisation error of a neighbour
    bundle: list[Tensor] = []  # ambient gradients (d,) met at kinks, tangent parts taken per step
    for _ in range(n_iters):
        grad = _gradient(X, Y, px, py, p, a, b)
        if bundle:
            errors = ((torch.stack(bundle) @ theta - val).abs() / val.abs()).tolist()
            bundle = [c for c, e in zip(bundle, errors, strict=True) if e <= adjacent]
        vecs = torch.stack([grad, *bundle])
        vecs = vecs - (vecs @ theta)[:, None] * theta  # tangent parts at theta, (k, d)
        if len(bundle) == 0:
            u = vecs[0]
        else:
            lam = _min_norm_weights((vecs @ vecs.T).cpu().double().numpy())
            u = torch.from_numpy(lam).to(vecs) @ vecs
        u = u - (u @ theta) * theta
        unorm = u.norm()
        if not unorm > 1e-10 * grad.norm():  # stationary (to rounding)
            break
        power = torch.atan2(unorm, (grad @ theta).abs())  # peak angle of the current piece
        if 1.0 - math.cos(float(power)) < tol:  # predicted step below the tolerance
            break
        udir = u / unorm
        ux, uy = X @ udir, Y @ udir
        step, best, beyond = _circle_max(px, py, ux, uy, val, _step_angles(power), p, a, b)
        if step >= 0.5 * float(power):  # serious step
            if not best > val:  # a tie along the whole circle (to rounding)
                break
            bundle = []
        else:  # null step: a kink stopped the increase
            cb, sb = math.cos(beyond), math.sin(beyond)
            g_beyond = _gradient(X, Y, cb * px + sb * ux, cb * py + sb * uy, p, a, b)
            if not float(g_beyond @ udir) < 0.5 * float(unorm):  # nothing new: stop here
                if not best > val:
                    break
            else:  # the piece beyond the kink and, if we move to the kink, the one left behind
                bundle = (bundle + ([grad] if best > val else []) + [g_beyond])[-max_bundle:]
        if not best > val:
            continue
        c, s = math.cos(step), math.sin(step)
        theta = c * theta + s * udir
        norm = theta.norm()
        theta, px, py = theta / norm, (c * px + s * ux) / norm, (c * py + s * uy) / norm
        val = _w1d_pow(px, py, p, a, b)
    return theta, val


def _msw_random(
    X: Tensor,
    Y: Tensor,
    p: float,
    *,
    projections: ArrayLike | None,
    n_projections: int,
    seed: SeedLike,
    validate: bool,
    a: Tensor | None,
    b: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``method="random"``: the best of the candidate directions.

    ``X: (n, d)`` and ``Y: (m, d)`` are checked clouds in the compute dtype, ``a: (n,)`` and
    ``b: (m,)`` normalised weights or ``None``; the candidates are ``projections: (d, L)`` or
    ``n_projections`` random unit directions. Returns ``W_p^p`` along the best candidate (scalar,
    differentiable with respect to ``X`` and ``Y``), that candidate ``(d,)``, and the candidates
    ``(d, L)`` with their values ``W_p^p`` ``(L,)`` (the log).
    """
    proj = _resolve_projections(X, projections, n_projections, seed)
    with torch.no_grad():  # the gradient needs only the best direction: no (d, L) backward
        px, py = X.detach() @ proj, Y.detach() @ proj
        if validate:
            _check_finite(X, Y, px, py)
        values = _w1d_pow(px.T, py.T, p, a, b)
    k = int(torch.argmax(values))
    if torch.is_grad_enabled() and (X.requires_grad or Y.requires_grad):
        theta = proj[:, k]
        return _w1d_pow(X @ theta, Y @ theta, p, a, b), theta, proj, values
    return values[k], proj[:, k], proj, values


def _ascent_starts(
    X: Tensor,
    Y: Tensor,
    *,
    projections: ArrayLike | None,
    n_projections: int,
    seed: SeedLike,
    n_starts: int,
    init: ArrayLike | None,
    validate: bool,
    a: Tensor | None = None,
    b: Tensor | None = None,
) -> Tensor:
    """Unit start directions ``(d, K)``, ``K >= 1``, of the ascent, from detached ``X: (n, d)``
    and ``Y: (m, d)`` (normalised weights ``a``, ``b`` or ``None``).

    In order: ``init`` (``(d,)`` or ``(d, k)``) or, without one, the difference of the (weighted)
    means; then the given ``projections: (d, L)``; then ``n_starts`` random directions. Zero columns
    are dropped; if none is left, one random direction is used.
    """
    d = X.shape[1]
    starts: list[Tensor] = []
    if init is not None:
        init = _as_tensor(init, "init").detach().to(device=X.device, dtype=X.dtype)
        init = init.unsqueeze(1) if init.dim() == 1 else init
        if init.dim() != 2 or init.shape[0] != d:
            raise ValueError(f"init has shape {tuple(init.shape)}; expected ({d},) or ({d}, k)")
        starts.append(init)
    else:
        # Cold start: the difference of the means, as matrix-vector products (faster than a
        # column reduction for n << d).
        mean_x = X.T @ (X.new_full((X.shape[0],), 1.0 / X.shape[0]) if a is None else a)
        mean_y = Y.T @ (Y.new_full((Y.shape[0],), 1.0 / Y.shape[0]) if b is None else b)
        if validate:
            _check_finite(X, Y, mean_x, mean_y)
        starts.append((mean_x - mean_y).unsqueeze(1))
    if projections is not None:
        starts.append(_resolve_projections(X, projections, n_projections, seed))
    if n_starts > 0:
        starts.append(random_projections(d, n_starts, seed, X.device, X.dtype))
    cand = torch.cat(starts, dim=1)
    norms = cand.norm(dim=0)
    cand = cand[:, norms > 0] / norms[norms > 0]  # equal means give a zero start
    if cand.shape[1] == 0:
        cand = random_projections(d, 1, seed, X.device, X.dtype)
    return cand


def _project_starts(X: Tensor, Y: Tensor, cand: Tensor) -> tuple[Tensor, Tensor]:
    """Projections ``(K, n)`` and ``(K, m)`` of ``X: (n, d)`` and ``Y: (m, d)`` on the columns of
    ``cand: (d, K)``: matrix-vector products for a few, one product for many (for ``n << d`` the
    latter is slower per column)."""
    if cand.shape[1] <= 4:
        proj_x = torch.stack([X @ c for c in cand.unbind(1)])
        proj_y = torch.stack([Y @ c for c in cand.unbind(1)])
        return proj_x, proj_y
    return (X @ cand).T, (Y @ cand).T


def _msw_ascent(
    X: Tensor,
    Y: Tensor,
    p: float,
    *,
    projections: ArrayLike | None,
    n_projections: int,
    seed: SeedLike,
    n_iters: int,
    n_starts: int,
    n_ascend: int,
    init: ArrayLike | None,
    tol: float,
    validate: bool,
    a: Tensor | None,
    b: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``method="ascent"``: rank the starts, ascend the ``n_ascend`` best, keep the best found.

    ``X: (n, d)`` and ``Y: (m, d)`` are checked clouds in the compute dtype, ``a: (n,)`` and
    ``b: (m,)`` normalised weights or ``None``. Each start is ascended by
    :func:`_ascend_direction`, for ``p = 1`` by :func:`_ascend_kinked`. Returns ``W_p^p`` along
    the best direction (scalar; recomputed through ``X`` and ``Y`` when either requires grad), that
    unit direction ``(d,)``, and the unit starts ``(d, K)`` with their values ``W_p^p`` ``(K,)``.
    """
    if n_iters < 0 or n_starts < 0 or n_ascend < 1:
        raise ValueError(
            f"need n_iters >= 0, n_starts >= 0 and n_ascend >= 1; got n_iters={n_iters}, "
            f"n_starts={n_starts}, n_ascend={n_ascend}"
        )
    Xd, Yd = X.detach(), Y.detach()
    ad = None if a is None else a.detach()
    bd = None if b is None else b.detach()
    cand = _ascent_starts(
        Xd,
        Yd,
        projections=projections,
        n_projections=n_projections,
        seed=seed,
        n_starts=n_starts,
        init=init,
        validate=validate,
        a=ad,
        b=bd,
    )
    proj_x, proj_y = _project_starts(Xd, Yd, cand)
    if validate and init is not None:
        _check_finite(X, Y, proj_x, proj_y)
    values = _w1d_pow(proj_x, proj_y, p, ad, bd)
    best: Tensor | None = None
    direction, at_best = cand[:, 0], None
    for k in values.topk(min(n_ascend, cand.shape[1])).indices.tolist():
        start = (Xd, Yd, cand[:, k], p, n_iters, tol)
        if p == 1.0:
            theta, val = _ascend_kinked(*start, projected=(proj_x[k], proj_y[k]), a=ad, b=bd)
            projected = None
        else:
            theta, val, *projected = _ascend_direction(
                *start, projected=(proj_x[k], proj_y[k]), a=ad, b=bd, with_projections=True
            )
        if best is None or val > best:
            best, direction, at_best = val, theta, projected
    assert best is not None  # n_ascend >= 1 and cand has a column: one start was ascended
    if any(t is not None and t.requires_grad for t in (X, Y, a, b)):
        if at_best is not None and a is None and b is None and torch.is_grad_enabled():
            best = _ProjectedValue.apply(X, Y, direction, *at_best, p)  # no new projection
        else:
            best = _w1d_pow(X @ direction, Y @ direction, p, a, b)
    return best, direction, cand, values


def max_sliced_wasserstein(
    X: ArrayLike,
    Y: ArrayLike,
    n_projections: int = 50,
    p: float = 2.0,
    projections: ArrayLike | None = None,
    seed: SeedLike = None,
    method: Method = "random",
    n_iters: int = 10,
    n_starts: int = 16,
    n_ascend: int = 4,
    init: ArrayLike | None = None,
    tol: float = 1e-6,
    return_direction: bool = False,
    validate: bool = True,
    *,
    a: ArrayLike | None = None,
    b: ArrayLike | None = None,
    log: bool = False,
) -> Any:
    r"""Max-Sliced Wasserstein distance: the largest 1-D ``W_p`` over unit directions.

    .. math:: MSW_p(X, Y) = \max_{\|\theta\|=1} W_p(X\theta, Y\theta)

    Two estimators of the maximum:

    * ``method="random"``: the maximum over ``n_projections`` random unit directions (or the given
      ``projections``). This is a Monte-Carlo **lower bound** of the true maximum, loose in high
      dimension where random directions are nearly orthogonal to the one that matters; with the same
      projections (and weights) it equals POT's ``ot.max_sliced_wasserstein_distance``.
    * ``method="ascent"``: the direction itself is optimised by projected (normalised) gradient
      ascent on the unit sphere, at most ``n_iters`` steps from each of several starts: ``init``
      (a warm start, e.g. the direction returned at the previous training step) or, without one,
      the difference of the two (weighted) means, any given ``projections`` and ``n_starts`` random
      directions are ranked by
      their value and the ``n_ascend`` best are ascended, each with an exact line search along
      great circles (see ``_ascend_direction``). The best direction seen is kept, so with unit
      ``projections`` the result is never below the random estimate on them. Also a lower bound of
      the true maximum (the objective is not concave), but a much tighter one. Its cost is about
      ``4 * n_iters`` matrix-vector products per ascended start, plus ranking the starts: a warm
      start with ``n_starts=0, n_ascend=1`` suits a training loop. For ``p = 1`` the objective is
      piecewise linear in the direction and its maxima sit on kinks, where plain gradient steps
      zig-zag and stall; the steps then follow the kinks (a bundle method, ``_ascend_kinked``, at
      most two more matrix-vector products per step).

    In both cases the value is differentiable with respect to ``X`` and ``Y`` through the chosen
    direction; the choice of the direction is not differentiated.

    Parameters
    ----------
    X : Tensor or ndarray, shape ``(n, d)``
        Samples of the first distribution; ``n = 1`` is a Dirac measure.
    Y : Tensor or ndarray, shape ``(m, d)``
        Samples of the second distribution, same kind (torch or NumPy) as ``X``.
    n_projections : int
        Number of random directions for ``method="random"``.
    p : float
        Order, ``p >= 1``.
    projections : Tensor or ndarray, shape ``(d, L)``, optional
        Explicit directions with unit columns, not checked (``random``: the candidates;
        ``ascent``: extra starts, normalised).
    seed : int or torch.Generator, optional
        Seed of the random directions (not the directions POT draws for the same seed).
    method : {"random", "ascent"}
    n_iters : int
        Maximum ascent steps (``ascent`` only).
    n_starts : int
        Random candidate directions (``ascent`` only).
    n_ascend : int
        How many of the best-ranked starts are ascended (``ascent`` only).
    init : Tensor or ndarray, shape ``(d,)`` or ``(d, k)``, optional
        Warm-start direction(s) (``ascent`` only).
    tol : float
        Stop when every direction moved by less than ``1 - |cos| < tol`` (``ascent`` only).
    return_direction : bool
        Also return the maximising unit direction, shape ``(d,)``.
    validate : bool
        Check that the inputs are finite (one device synchronisation).
    a : Tensor or ndarray, shape ``(n,)``, optional, keyword-only
        Non-negative sample weights of ``X``, normalised here to sum to 1. Default: uniform. The
        ascent maximises the weighted objective (and starts from the weighted means).
    b : Tensor or ndarray, shape ``(m,)``, optional, keyword-only
        Non-negative sample weights of ``Y``, likewise.
    log : bool, keyword-only
        Also return a dictionary with POT's keys: ``"projections"``, directions ``(d, L)``, and
        ``"projected_emds"``, the values ``W_p^p`` (``p``-th power) along them ``(L,)``; the
        returned value is ``projected_emds.max() ** (1/p)`` (to rounding). ``random``: the
        candidate directions, as in POT. ``ascent``: the ``K`` unit start directions (``init`` or
        the mean difference, ``projections``, random starts) sorted by decreasing value, the
        ``n_ascend`` first of which were ascended, then as the last column the returned direction
        (``L = K + 1``; its value is the largest). Values are differentiable where the result is.

    Returns
    -------
    Tensor, scalar, then Tensor ``(d,)`` if ``return_direction``, then dict if ``log``
        ``MSW_p`` in the units of the features; with both flags ``(value, direction, log)``.
        NumPy ``X`` and ``Y`` are computed in float64 and give a ``numpy.float64`` (the direction
        and the dict entries as NumPy arrays).
    """
    p = _check_p(p)
    X, Y, a_, b_, numpy_io = _prepare(X, Y, a, b)
    common = {"projections": projections, "n_projections": n_projections, "seed": seed,
              "validate": validate, "a": a_, "b": b_}  # fmt: skip
    if method == "random":
        value, direction, proj, emds = _msw_random(X, Y, p, **common)
    elif method == "ascent":
        value, direction, proj, emds = _msw_ascent(
            X, Y, p, n_iters=n_iters, n_starts=n_starts, n_ascend=n_ascend, init=init, tol=tol,
            **common)  # fmt: skip
        if log:  # the ranked starts, then the returned direction
            order = torch.sort(emds, descending=True, stable=True).indices
            proj = torch.cat([proj[:, order], direction.detach().unsqueeze(1)], dim=1)
            emds = torch.cat([emds[order], value.reshape(1)])
    else:
        raise ValueError(f"method={method!r} is not known; expected 'random' or 'ascent'")
    logd = {"projections": proj, "projected_emds": emds} if log else None
    extra = (direction.detach(),) if return_direction else ()
    return _finish(numpy_io, _safe_root(value, p), *extra, log=logd)
