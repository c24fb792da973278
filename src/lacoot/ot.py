"""Optimal-transport distances between point clouds, in torch.

Everything here is differentiable with respect to the point clouds, batched, and runs on any device.
Half-precision and bfloat16 inputs are computed in float32; float64 stays float64.

Conventions follow POT (:mod:`ot.sliced`): distances are returned as ``W_p`` (the ``p``-th root is
taken), point clouds are ``(n_samples, n_features)`` and projection matrices are
``(n_features, n_projections)`` with unit columns.

References
----------
Deshpande et al., "Max-Sliced Wasserstein Distance and its use for GANs", CVPR 2019.
Quetu et al., "LaCoOT: Layer Collapse through Optimal Transport", ICCV 2025 (arXiv 2406.08933).
"""

from __future__ import annotations

import math
from typing import Literal

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


def wasserstein_1d(u: Tensor, v: Tensor, p: float = 2.0) -> Tensor:
    r"""Exact Wasserstein-``p`` distance between 1-D empirical distributions with uniform weights.

    .. math:: W_p(u, v) = \Big(\int_0^1 |F_u^{-1}(t) - F_v^{-1}(t)|^p \, dt\Big)^{1/p}

    Parameters
    ----------
    u : Tensor, shape ``(..., n)``
        Samples of the first distribution; leading dimensions are a batch (e.g. one row per
        projection direction).
    v : Tensor, shape ``(..., m)``
        Samples of the second distribution, same leading dimensions as ``u``; ``m`` may differ
        from ``n`` (exact quantile matching).
    p : float
        Order of the distance, ``p >= 1``.

    Returns
    -------
    Tensor, shape ``(...)``
        ``W_p`` in the units of the samples, float32 (float64 for float64 inputs).
        For ``p = 1`` this equals :func:`scipy.stats.wasserstein_distance`; POT's
        ``ot.wasserstein_1d`` returns ``W_p ** p`` over the first axis instead.
    """
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
    return _safe_root(_wasserstein_1d_pow(u.to(dtype), v.to(dtype), p), p)


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
        proj = torch.randn(d, n_projections, generator=gen, dtype=torch.float64)
        proj = proj.to(device=device, dtype=dtype)
    else:
        gen_device = seed.device if isinstance(seed, torch.Generator) else device
        proj = torch.randn(d, n_projections, generator=seed, device=gen_device, dtype=dtype)
        proj = proj.to(device)
    return proj / proj.norm(dim=0, keepdim=True)


def _check_clouds(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
    """Shape and device checks; returns both clouds in the compute dtype."""
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
    if X.shape[0] < 2 or Y.shape[0] < 2:
        raise ValueError(
            f"need at least 2 samples on each side; got n={X.shape[0]}, m={Y.shape[0]}"
        )
    if X.device != Y.device:
        raise ValueError(f"X is on {X.device} and Y on {Y.device}; expected one device")
    dtype = _compute_dtype(X, Y)
    return X.to(dtype), Y.to(dtype)


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
    X: Tensor, projections: Tensor | None, n_projections: int, seed: SeedLike
) -> Tensor:
    d = X.shape[1]
    if projections is None:
        return random_projections(d, n_projections, seed, device=X.device, dtype=X.dtype)
    if projections.dim() != 2 or projections.shape[0] != d:
        raise ValueError(
            f"projections have shape {tuple(projections.shape)}; expected (n_features={d}, "
            "n_projections) with unit columns"
        )
    return projections.to(device=X.device, dtype=X.dtype)


def sliced_wasserstein(
    X: Tensor,
    Y: Tensor,
    n_projections: int = 50,
    p: float = 2.0,
    projections: Tensor | None = None,
    seed: SeedLike = None,
    validate: bool = True,
) -> Tensor:
    r"""Sliced Wasserstein distance, Monte-Carlo estimate over random directions.

    .. math:: SW_p(X, Y) = \Big(\frac{1}{L}\sum_{l=1}^{L} W_p^p(X\theta_l, Y\theta_l)\Big)^{1/p}

    Parameters
    ----------
    X : Tensor, shape ``(n, d)``
    Y : Tensor, shape ``(m, d)``
    n_projections : int
        ``L``, used when ``projections`` is not given.
    p : float
        Order, ``p >= 1``.
    projections : Tensor, shape ``(d, L)``, optional
        Explicit unit directions (POT's layout); ``n_projections`` and ``seed`` are then unused.
    seed : int or torch.Generator, optional
        Seed of the random directions.
    validate : bool
        Check that the inputs are finite (one device synchronisation).

    Returns
    -------
    Tensor, scalar
        Equal to POT's ``ot.sliced_wasserstein_distance`` with the same projections.
    """
    p = _check_p(p)
    X, Y = _check_clouds(X, Y)
    proj = _resolve_projections(X, projections, n_projections, seed)
    px, py = X @ proj, Y @ proj
    if validate:
        _check_finite(X, Y, px, py)
    return _safe_root(_wasserstein_1d_pow(px.T, py.T, p).mean(), p)


def _gradient(X: Tensor, Y: Tensor, px: Tensor, py: Tensor, p: float) -> Tensor:
    """Gradient of ``theta -> W_p^p(X theta, Y theta)`` given the projections ``px, py``.

    Matrix-vector products only: for ``n << d`` they are memory-bound and one ``(n, d) @ (d,)``
    costs about as much as one ``(n, d) @ (d, 4)``, so directions are handled one at a time.
    """
    px, py = px.detach().requires_grad_(True), py.detach().requires_grad_(True)
    with torch.enable_grad():
        gx, gy = torch.autograd.grad(_wasserstein_1d_pow(px, py, p), (px, py))
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
) -> tuple[Tensor, Tensor]:
    """Maximise ``f(theta) = W_p^p(X theta, Y theta)`` over the unit sphere from ``theta: (d,)``.

    Riemannian gradient ascent with a line search along the great circle through ``theta`` and
    the tangent gradient ``t``. Projections are linear, so the clouds projected on
    ``cos(a) theta + sin(a) t`` are ``cos(a) X theta + sin(a) X t`` for every angle ``a``: once
    ``X t`` and ``Y t`` are known, ``f`` is evaluated exactly at many angles for the price of
    sorting ``n`` numbers each. A step thus costs four matrix-vector products (the gradient and the
    tangent's projections) whatever the number of trial angles; the trials cover the power-method
    angle (the exact maximiser when the sorting permutations do not change, ``p = 2``), its
    halvings and a uniform grid. The ascent stops when no trial increases ``f`` or the direction
    moves by less than ``1 - cos < tol``. Returns the direction and ``f`` there; the search itself
    is not differentiated. ``projected`` are ``(X theta, Y theta)`` when already computed
    (``theta`` must then be a unit vector).
    """
    if projected is None:
        theta = theta / theta.norm()
        px, py = X @ theta, Y @ theta
    else:
        px, py = projected
    val = _wasserstein_1d_pow(px, py, p)
    for _ in range(n_iters):
        grad = _gradient(X, Y, px, py, p)
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
        values = _wasserstein_1d_pow(cand_x, cand_y, p)  # (A,)
        k = int(torch.argmax(values))
        if not values[k] > val:
            break
        theta = cos[k] * theta + sin[k] * tangent
        norm = theta.norm()  # 1 up to rounding; keep theta, its projections and f consistent
        theta, px, py = theta / norm, cand_x[k] / norm, cand_y[k] / norm
        val = values[k] / norm**p
        if 1.0 - float(cos[k]) < tol:
            break
    return theta, val


def _msw_random(
    X: Tensor,
    Y: Tensor,
    p: float,
    *,
    projections: Tensor | None,
    n_projections: int,
    seed: SeedLike,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    """``method="random"``: the best of the candidate directions.

    ``X: (n, d)`` and ``Y: (m, d)`` are checked clouds in the compute dtype; the candidates are
    ``projections: (d, L)`` or ``n_projections`` random unit directions. Returns ``W_p^p`` along the
    best candidate (scalar, differentiable with respect to ``X`` and ``Y``) and that candidate
    ``(d,)``.
    """
    proj = _resolve_projections(X, projections, n_projections, seed)
    px, py = X @ proj, Y @ proj
    if validate:
        _check_finite(X, Y, px, py)
    values = _wasserstein_1d_pow(px.T, py.T, p)
    k = torch.argmax(values.detach())
    return values[k], proj[:, k]


def _ascent_starts(
    X: Tensor,
    Y: Tensor,
    *,
    projections: Tensor | None,
    n_projections: int,
    seed: SeedLike,
    n_starts: int,
    init: Tensor | None,
    validate: bool,
) -> Tensor:
    """Unit start directions ``(d, K)``, ``K >= 1``, of the ascent, from detached ``X: (n, d)``
    and ``Y: (m, d)``.

    In order: ``init`` (``(d,)`` or ``(d, k)``) or, without one, the difference of the means; then
    the given ``projections: (d, L)``; then ``n_starts`` random directions. Zero columns are
    dropped; if none is left, one random direction is used.
    """
    d = X.shape[1]
    starts: list[Tensor] = []
    if init is not None:
        init = init.detach().to(device=X.device, dtype=X.dtype)
        init = init.unsqueeze(1) if init.dim() == 1 else init
        if init.dim() != 2 or init.shape[0] != d:
            raise ValueError(f"init has shape {tuple(init.shape)}; expected ({d},) or ({d}, k)")
        starts.append(init)
    else:
        # Cold start: the difference of the means, as matrix-vector products (faster than a
        # column reduction for n << d).
        mean_x = X.T @ X.new_full((X.shape[0],), 1.0 / X.shape[0])
        mean_y = Y.T @ Y.new_full((Y.shape[0],), 1.0 / Y.shape[0])
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
    projections: Tensor | None,
    n_projections: int,
    seed: SeedLike,
    n_iters: int,
    n_starts: int,
    n_ascend: int,
    init: Tensor | None,
    tol: float,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    """``method="ascent"``: rank the starts, ascend the ``n_ascend`` best, keep the best found.

    ``X: (n, d)`` and ``Y: (m, d)`` are checked clouds in the compute dtype. Returns ``W_p^p`` along
    the best direction (scalar; recomputed through ``X`` and ``Y`` when either requires grad) and
    that unit direction ``(d,)``.
    """
    if n_iters < 0 or n_starts < 0 or n_ascend < 1:
        raise ValueError(
            f"need n_iters >= 0, n_starts >= 0 and n_ascend >= 1; got n_iters={n_iters}, "
            f"n_starts={n_starts}, n_ascend={n_ascend}"
        )
    Xd, Yd = X.detach(), Y.detach()
    cand = _ascent_starts(
        Xd,
        Yd,
        projections=projections,
        n_projections=n_projections,
        seed=seed,
        n_starts=n_starts,
        init=init,
        validate=validate,
    )
    proj_x, proj_y = _project_starts(Xd, Yd, cand)
    if validate and init is not None:
        _check_finite(X, Y, proj_x, proj_y)
    values = _wasserstein_1d_pow(proj_x, proj_y, p)
    best: Tensor | None = None
    direction = cand[:, 0]
    for k in values.topk(min(n_ascend, cand.shape[1])).indices.tolist():
        theta, val = _ascend_direction(
            Xd, Yd, cand[:, k], p, n_iters, tol, projected=(proj_x[k], proj_y[k])
        )
        if best is None or val > best:
            best, direction = val, theta
    if X.requires_grad or Y.requires_grad:
        return _wasserstein_1d_pow(X @ direction, Y @ direction, p), direction
    assert best is not None  # n_ascend >= 1 and cand has a column: one start was ascended
    return best, direction


def max_sliced_wasserstein(
    X: Tensor,
    Y: Tensor,
    n_projections: int = 50,
    p: float = 2.0,
    projections: Tensor | None = None,
    seed: SeedLike = None,
    method: Method = "random",
    n_iters: int = 10,
    n_starts: int = 16,
    n_ascend: int = 4,
    init: Tensor | None = None,
    tol: float = 1e-6,
    return_direction: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Max-Sliced Wasserstein distance: the largest 1-D ``W_p`` over unit directions.

    .. math:: MSW_p(X, Y) = \max_{\|\theta\|=1} W_p(X\theta, Y\theta)

    Two estimators of the maximum:

    * ``method="random"``: the maximum over ``n_projections`` random unit directions (or the given
      ``projections``). This is a Monte-Carlo **lower bound** of the true maximum, loose in high
      dimension where random directions are nearly orthogonal to the one that matters; with the same
      projections it equals POT's ``ot.max_sliced_wasserstein_distance``.
    * ``method="ascent"``: the direction itself is optimised by projected (normalised) gradient
      ascent on the unit sphere, at most ``n_iters`` steps from each of several starts: ``init``
      (a warm start, e.g. the direction returned at the previous training step) or, without one,
      the difference of the two means, any given ``projections`` and ``n_starts`` random
      directions are ranked by
      their value and the ``n_ascend`` best are ascended, each with an exact line search along
      great circles (see ``_ascend_direction``). The best direction seen is kept, so with unit
      ``projections`` the result is never below the random estimate on them. Also a lower bound of
      the true maximum (the objective is not concave), but a much tighter one. Its cost is about
      ``4 * n_iters`` matrix-vector products per ascended start, plus ranking the starts: a warm
      start with ``n_starts=0, n_ascend=1`` suits a training loop.

    In both cases the value is differentiable with respect to ``X`` and ``Y`` through the chosen
    direction; the choice of the direction is not differentiated.

    Parameters
    ----------
    X : Tensor, shape ``(n, d)``
    Y : Tensor, shape ``(m, d)``
    n_projections : int
        Number of random directions for ``method="random"``.
    p : float
        Order, ``p >= 1``.
    projections : Tensor, shape ``(d, L)``, optional
        Explicit directions with unit columns, not checked (``random``: the candidates;
        ``ascent``: extra starts, normalised).
    seed : int or torch.Generator, optional
        Seed of the random directions.
    method : {"random", "ascent"}
    n_iters : int
        Maximum ascent steps (``ascent`` only).
    n_starts : int
        Random candidate directions (``ascent`` only).
    n_ascend : int
        How many of the best-ranked starts are ascended (``ascent`` only).
    init : Tensor, shape ``(d,)`` or ``(d, k)``, optional
        Warm-start direction(s) (``ascent`` only).
    tol : float
        Stop when every direction moved by less than ``1 - |cos| < tol`` (``ascent`` only).
    return_direction : bool
        Also return the maximising unit direction, shape ``(d,)``.
    validate : bool
        Check that the inputs are finite (one device synchronisation).

    Returns
    -------
    Tensor, scalar (and Tensor ``(d,)`` if ``return_direction``)
        ``MSW_p`` in the units of the features.
    """
    p = _check_p(p)
    X, Y = _check_clouds(X, Y)
    common = {"projections": projections, "n_projections": n_projections, "seed": seed,
              "validate": validate}  # fmt: skip
    if method == "random":
        value, direction = _msw_random(X, Y, p, **common)
    elif method == "ascent":
        value, direction = _msw_ascent(X, Y, p, n_iters=n_iters, n_starts=n_starts,
                                       n_ascend=n_ascend, init=init, tol=tol, **common)  # fmt: skip
    else:
        raise ValueError(f"method={method!r} is not known; expected 'random' or 'ascent'")
    value = _safe_root(value, p)
    return (value, direction.detach()) if return_direction else value
