"""Tests of :mod:`lacoot.ot` against SciPy, POT and brute force.

Unless a test says otherwise, reference comparisons are made in float64 with a relative tolerance
of 1e-5 (the implementations differ only by floating-point summation order, so this is loose by
orders of magnitude but still catches any wrong weight, quantile index or missing p-th root).
"""

from __future__ import annotations

import math

import numpy as np
import ot as pot
import pytest
import scipy.stats
import torch

from lacoot.ot import (
    max_sliced_wasserstein,
    random_projections,
    sliced_wasserstein,
    wasserstein_1d,
)

F64 = torch.float64
REL = 1e-5  # relative tolerance vs SciPy / POT in float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clouds(seed: int, n: int, m: int, d: int, dtype: torch.dtype = F64):
    """Well-conditioned pair: X ~ N(0, I), Y ~ N(0, I) @ (I + 0.5 A) + shift, A ~ N(0, 1/d)."""
    g = _gen(seed)
    A = torch.randn(d, d, generator=g, dtype=F64) / math.sqrt(d)
    X = torch.randn(n, d, generator=g, dtype=F64)
    Y = torch.randn(m, d, generator=g, dtype=F64) @ (torch.eye(d, dtype=F64) + 0.5 * A)
    Y = Y + 0.3 * torch.randn(d, generator=g, dtype=F64)
    return X.to(dtype), Y.to(dtype)


def _f(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _rel(a, b) -> float:
    a, b = _f(a), _f(b)
    return abs(a - b) / max(abs(b), 1e-300)


# --------------------------------------------------------------------------------------------
# wasserstein_1d
# --------------------------------------------------------------------------------------------

SIZES = [(50, 50), (37, 53), (64, 16), (1, 7), (2, 3)]


@pytest.mark.parametrize("n,m", SIZES)
def test_wasserstein_1d_matches_scipy_p1(n, m):
    g = _gen(n * 1000 + m)
    u = torch.randn(n, generator=g, dtype=F64)
    v = 0.7 * torch.randn(m, generator=g, dtype=F64) + 0.4
    ours = wasserstein_1d(u, v, p=1)
    ref = scipy.stats.wasserstein_distance(u.numpy(), v.numpy())
    assert ours.dtype == F64 and ours.shape == ()
    assert _rel(ours, ref) < REL  # rel 1e-5


@pytest.mark.parametrize("p", [1, 2, 3, 1.5])
@pytest.mark.parametrize("n,m", SIZES)
def test_wasserstein_1d_matches_pot(n, m, p):
    g = _gen(7 * n + m)
    u = torch.randn(n, generator=g, dtype=F64)
    v = 1.3 * torch.randn(m, generator=g, dtype=F64) - 0.2
    ours = wasserstein_1d(u, v, p=p)
    # POT returns W_p^p; we return W_p.
    ref = pot.wasserstein_1d(u.numpy(), v.numpy(), p=p) ** (1.0 / p)
    assert _rel(ours, ref) < REL  # rel 1e-5


def test_wasserstein_1d_known_values():
    # Translation by c: W_p = |c| for every p; unequal counts with the same quantile function: 0.
    u = torch.tensor([0.0, 1.0, 5.0], dtype=F64)
    for p in (1, 2, 3):
        assert _rel(wasserstein_1d(u, u + 2.5, p=p), 2.5) < 1e-12
    v = torch.tensor([0.0, 0.0, 1.0, 1.0, 5.0, 5.0], dtype=F64)
    assert float(wasserstein_1d(u, v, p=2)) == 0.0
    # {0, 1} vs {0}: W_1 = 1/2, W_2 = sqrt(1/2).
    a, b = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([0.0], dtype=F64)
    assert _rel(wasserstein_1d(a, b, p=1), 0.5) < 1e-12
    assert _rel(wasserstein_1d(a, b, p=2), math.sqrt(0.5)) < 1e-12


@pytest.mark.parametrize("n,m", [(40, 40), (40, 27)])
@pytest.mark.parametrize("p", [1, 2])
def test_wasserstein_1d_batched_equals_rows(n, m, p):
    g = _gen(11)
    u = torch.randn(3, 4, n, generator=g, dtype=F64)
    v = torch.randn(3, 4, m, generator=g, dtype=F64) * 2 + 1
    batched = wasserstein_1d(u, v, p=p)
    assert batched.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            row = wasserstein_1d(u[i, j], v[i, j], p=p)
            # Same arithmetic per row; 1e-12 allows only reordering of the reduction.
            assert _rel(batched[i, j], row) < 1e-12
            ref = pot.wasserstein_1d(u[i, j].numpy(), v[i, j].numpy(), p=p) ** (1.0 / p)
            assert _rel(batched[i, j], ref) < REL


# --------------------------------------------------------------------------------------------
# sliced / max-sliced vs POT, seeds
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(80, 80), (80, 57)])
def test_sliced_and_max_sliced_match_pot(n, m, p):
    d, L = 6, 40
    X, Y = _clouds(3, n, m, d)
    proj = random_projections(d, L, seed=5, dtype=F64)
    sw = sliced_wasserstein(X, Y, p=p, projections=proj)
    msw = max_sliced_wasserstein(X, Y, p=p, projections=proj, method="random")
    sw_ref = pot.sliced_wasserstein_distance(X, Y, projections=proj, p=p)
    msw_ref = pot.max_sliced_wasserstein_distance(X, Y, projections=proj, p=p)
    assert sw.dtype == F64 and msw.dtype == F64
    assert _rel(sw, sw_ref) < REL  # rel 1e-5
    assert _rel(msw, msw_ref) < REL  # rel 1e-5
    # max over directions >= mean over the same directions (strictly here: the data is anisotropic)
    assert float(msw) > float(sw)


def test_random_projections_layout():
    P = random_projections(7, 13, seed=1)
    assert P.shape == (7, 13) and P.dtype == torch.float32
    assert torch.allclose(P.norm(dim=0), torch.ones(13), atol=1e-6)  # unit columns (float32)
    assert torch.equal(P, random_projections(7, 13, seed=1))
    assert not torch.equal(P, random_projections(7, 13, seed=2))
    with pytest.raises(ValueError, match="need d >= 1"):
        random_projections(0, 3)
    with pytest.raises(ValueError, match="need d >= 1"):
        random_projections(3, 0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_seed_reproducible_and_equals_explicit_projections(dtype):
    d, L = 9, 30
    X, Y = _clouds(4, 60, 45, d, dtype)
    P = random_projections(d, L, seed=17, dtype=dtype)
    for fn in (sliced_wasserstein, max_sliced_wasserstein):
        a = fn(X, Y, n_projections=L, seed=17)
        b = fn(X, Y, n_projections=L, seed=17)
        c = fn(X, Y, projections=P)
        assert a.dtype == dtype
        # Same seed -> same directions -> bitwise identical value.
        assert torch.equal(a, b)
        assert torch.equal(a, c)
        assert not torch.equal(a, fn(X, Y, n_projections=L, seed=18))
    a = max_sliced_wasserstein(X, Y, method="ascent", seed=17)
    assert torch.equal(a, max_sliced_wasserstein(X, Y, method="ascent", seed=17))


# --------------------------------------------------------------------------------------------
# degenerate cases
# --------------------------------------------------------------------------------------------

ALL_METHODS = {
    "w1d": lambda X, Y, p: wasserstein_1d(X[:, 0], Y[:, 0], p=p),
    "sliced": lambda X, Y, p: sliced_wasserstein(X, Y, p=p, seed=0),
    "random": lambda X, Y, p: max_sliced_wasserstein(X, Y, p=p, seed=0),
    "ascent": lambda X, Y, p: max_sliced_wasserstein(X, Y, p=p, seed=0, method="ascent"),
}


@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
@pytest.mark.parametrize("name", list(ALL_METHODS))
def test_identical_inputs_give_zero_and_zero_gradient(name, p):
    X0, _ = _clouds(0, 30, 30, 5)
    X = X0.clone().requires_grad_(True)
    Y = X0.clone().requires_grad_(True)
    val = ALL_METHODS[name](X, Y, p)
    assert _f(val) == 0.0  # exactly: identical sorted projections
    val.backward()
    for t in (X, Y):
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()  # no NaN/inf from the p-th root at 0
        assert float(t.grad.abs().max()) == 0.0


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(50, 50), (50, 31)])
def test_one_dimensional_equals_exact(n, m, p):
    X, Y = _clouds(2, n, m, 1)
    exact = wasserstein_1d(X[:, 0], Y[:, 0], p=p)
    # In d=1 every unit direction is +-1 and W_p is symmetric: all estimators are exact.
    for val in (
        sliced_wasserstein(X, Y, p=p, seed=1),
        max_sliced_wasserstein(X, Y, p=p, seed=1),
        max_sliced_wasserstein(X, Y, p=p, seed=1, method="ascent"),
        max_sliced_wasserstein(X, Y, p=p, method="ascent", n_starts=0),
    ):
        assert _rel(val, exact) < 1e-12  # float64, same 1-D problem
    ref = scipy.stats.wasserstein_distance(X[:, 0].numpy(), Y[:, 0].numpy())
    if p == 1:
        assert _rel(exact, ref) < REL


# --------------------------------------------------------------------------------------------
# ascent
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("d", [3, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_ascent_at_least_random_with_same_projections(seed, d, p):
    X, Y = _clouds(100 + seed, 70, 55, d)
    P = random_projections(d, 50, seed=seed, dtype=F64)
    rnd = max_sliced_wasserstein(X, Y, p=p, projections=P, method="random")
    for kwargs in ({}, {"n_starts": 0}, {"n_starts": 0, "n_iters": 0}, {"n_ascend": 1}):
        asc = max_sliced_wasserstein(X, Y, p=p, projections=P, method="ascent", seed=seed, **kwargs)
        # The best candidate is ascended and only increases are accepted; 1e-12 (float64) only
        # absorbs re-normalising an already unit start.
        assert _f(asc) >= _f(rnd) * (1 - 1e-12), kwargs


def test_ascent_at_least_random_float32():
    X, Y = _clouds(9, 128, 128, 256, torch.float32)
    P = random_projections(256, 50, seed=9)
    rnd = max_sliced_wasserstein(X, Y, projections=P)
    asc = max_sliced_wasserstein(X, Y, projections=P, method="ascent", seed=9)
    # float32: 1e-6 relative covers rounding of the re-normalised start.
    assert _f(asc) >= _f(rnd) * (1 - 1e-6)
    # In high dimension the ascent should be far above the random lower bound.
    assert _f(asc) > 1.2 * _f(rnd)


def _fibonacci_hemisphere(k: int) -> torch.Tensor:
    """(3, k) unit directions, quasi-uniform on the upper half sphere (Fibonacci lattice)."""
    i = torch.arange(k, dtype=F64) + 0.5
    z = i / k  # uniform in (0, 1): equal-area on the hemisphere
    r = torch.sqrt(1 - z**2)
    phi = i * math.pi * (3 - math.sqrt(5))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z])


def _brute_force(X: torch.Tensor, Y: torch.Tensor, D: torch.Tensor) -> dict[int, float]:
    """max over the columns of D of W_p, p in {1, 2}, independent of lacoot.

    Unequal counts are handled by repeating each sorted sample lcm/n (resp. lcm/m) times, which
    leaves the quantile function unchanged and makes the coupling one-to-one.
    """
    n, m = X.shape[0], Y.shape[0]
    k = math.lcm(n, m)
    su = torch.sort((X @ D).T, dim=-1).values.repeat_interleave(k // n, dim=-1)
    sv = torch.sort((Y @ D).T, dim=-1).values.repeat_interleave(k // m, dim=-1)
    diff = (su - sv).abs()
    return {1: float(diff.mean(-1).max()), 2: float(diff.pow(2).mean(-1).max().sqrt())}


# d=2: 5,000 angles in [0, pi) (spacing 6.3e-4 rad; W_p(-theta) = W_p(theta)).
# d=3: 20,000 Fibonacci directions on the half sphere (spacing about 0.018 rad).
_ANGLES = torch.arange(5_000, dtype=F64) * math.pi / 5_000
_GRIDS = {
    2: torch.stack([torch.cos(_ANGLES), torch.sin(_ANGLES)]),
    3: _fibonacci_hemisphere(20_000),
}


@pytest.mark.parametrize("d", [2, 3])
def test_ascent_matches_brute_force(d):
    # 10 seeded datasets, equal and unequal counts, p = 1 and 2, default arguments.
    worst = 1.0
    for seed in range(10):
        n, m = (96, 96) if seed % 2 == 0 else (96, 64)
        X, Y = _clouds(1000 + seed, n, m, d)
        brute = _brute_force(X, Y, _GRIDS[d])
        for p in (1, 2):
            val, direction = max_sliced_wasserstein(
                X, Y, p=p, method="ascent", seed=seed, return_direction=True
            )
            ratio = _f(val) / brute[p]
            worst = min(worst, ratio)
            # Within 1% of the brute-force maximum (not weakened).
            assert ratio >= 0.99, (seed, p, ratio)
            # The value is a genuine W_p on a unit direction, so it cannot exceed the true maximum;
            # the grid is fine enough to be within 1% of that maximum.
            assert ratio <= 1.01, (seed, p, ratio)
            assert abs(float(direction.norm()) - 1) < 1e-12
            assert _rel(val, wasserstein_1d(X @ direction, Y @ direction, p=p)) < 1e-12
    assert worst >= 0.99


@pytest.mark.parametrize("p", [1, 2])
def test_warm_start_not_worse(p):
    for seed in range(4):
        X, Y = _clouds(200 + seed, 80, 60, 32)
        v1, d1 = max_sliced_wasserstein(
            X, Y, p=p, method="ascent", seed=seed, return_direction=True
        )
        v2 = max_sliced_wasserstein(X, Y, p=p, method="ascent", seed=seed, init=d1)
        assert _f(v2) >= _f(v1) * (1 - 1e-12)  # float64; 1e-12 for re-normalisation
        # Training configuration: no random starts, two steps from the previous direction.
        v3 = max_sliced_wasserstein(X, Y, p=p, method="ascent", n_starts=0, n_iters=2, init=d1)
        assert _f(v3) >= _f(v1) * (1 - 1e-12)
        # init may also be several directions, (d, k).
        v4 = max_sliced_wasserstein(
            X, Y, p=p, method="ascent", n_starts=0, init=torch.stack([d1, -d1], dim=1)
        )
        assert _f(v4) >= _f(v1) * (1 - 1e-12)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().to(F64).requires_grad_(True)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("n,m", [(6, 6), (6, 4), (5, 7)])
def test_gradcheck_wasserstein_1d(n, m, p):
    g = _gen(n * 10 + m)
    u = _leaf(torch.randn(2, n, generator=g, dtype=F64))
    v = _leaf(torch.randn(2, m, generator=g, dtype=F64) + 0.3)
    assert torch.autograd.gradcheck(lambda a, b: wasserstein_1d(a, b, p=p), (u, v))


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(6, 6), (6, 4)])
def test_gradcheck_sliced_and_random(n, m, p):
    X, Y = _clouds(5, n, m, 3)
    X, Y = _leaf(X), _leaf(Y)
    P = random_projections(3, 8, seed=2, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda a, b: sliced_wasserstein(a, b, p=p, projections=P), (X, Y)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: max_sliced_wasserstein(a, b, p=p, projections=P), (X, Y)
    )


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(8, 8), (8, 5)])
def test_gradient_ascent_equals_fixed_direction(n, m, p):
    # Spread differs along e_0 (Y scaled by 3), the means differ slightly along e_1: the optimum is
    # well away from the mean difference, so pinning below has a margin.
    g = _gen(6)
    X = _leaf(torch.randn(n, 4, generator=g, dtype=F64))
    Y = torch.randn(m, 4, generator=g, dtype=F64) * torch.tensor([3.0, 1.0, 1.0, 1.0], dtype=F64)
    Y = _leaf(Y + torch.tensor([0.0, 0.2, 0.0, 0.0], dtype=F64))
    val, direction = max_sliced_wasserstein(
        X, Y, p=p, method="ascent", seed=0, return_direction=True
    )
    gX, gY = torch.autograd.grad(val, (X, Y))
    ref = wasserstein_1d(X @ direction, Y @ direction, p=p)
    rX, rY = torch.autograd.grad(ref, (X, Y))
    assert _rel(val, ref) < 1e-12
    # The direction is not differentiated: the gradient is that of W_p on the returned direction.
    torch.testing.assert_close(gX, rX, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gY, rY, rtol=1e-10, atol=1e-12)
    assert gX.abs().sum() > 0 and gY.abs().sum() > 0
    # gradcheck through the ascent code path with the direction pinned: warm start from the
    # optimum, no random candidate and no step, so the choice is init vs the mean difference.
    mean_dir = X.mean(0) - Y.mean(0)
    mean_val = wasserstein_1d(X @ mean_dir / mean_dir.norm(), Y @ mean_dir / mean_dir.norm(), p=p)
    assert _f(val) > _f(mean_val) * (1 + 1e-3)  # margin: the choice is stable under eps

    def pinned(a, b):
        return max_sliced_wasserstein(
            a, b, p=p, method="ascent", init=direction, n_starts=0, n_iters=0
        )

    assert _rel(pinned(X, Y), val) < 1e-12
    assert torch.autograd.gradcheck(pinned, (X, Y))
    assert torch.autograd.gradcheck(
        lambda a, b: wasserstein_1d(a @ direction, b @ direction, p=p), (X, Y)
    )


@pytest.mark.parametrize("name", list(ALL_METHODS))
def test_gradients_flow_to_both_clouds(name):
    X0, Y0 = _clouds(8, 40, 33, 6, torch.float32)
    X, Y = X0.clone().requires_grad_(True), Y0.clone().requires_grad_(True)
    ALL_METHODS[name](X, Y, 2).backward()
    for t in (X, Y):
        assert t.grad is not None and t.grad.dtype == torch.float32
        assert torch.isfinite(t.grad).all()
        assert float(t.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(ALL_METHODS))
def test_half_inputs_computed_in_float32(name, dtype):
    X32, Y32 = _clouds(12, 64, 48, 8, torch.float32)
    low = ALL_METHODS[name](X32.to(dtype), Y32.to(dtype), 2)
    full = ALL_METHODS[name](X32, Y32, 2)
    assert low.dtype == torch.float32
    # Only the inputs are rounded (float16: 2^-11, bfloat16: 2^-8 relative); 1e-2 relative.
    assert _rel(low, full) < 1e-2
    # Rounded inputs computed in float32 give exactly the same value.
    exact = ALL_METHODS[name](X32.to(dtype).float(), Y32.to(dtype).float(), 2)
    assert torch.equal(low, exact)


@pytest.mark.parametrize("name", list(ALL_METHODS))
def test_float64_stays_float64(name):
    X, Y = _clouds(13, 20, 20, 4)
    assert ALL_METHODS[name](X, Y, 2).dtype == F64
    # Mixed float32 / float64 promotes to float64.
    assert ALL_METHODS[name](X.float(), Y, 2).dtype == F64
    assert ALL_METHODS[name](X.float(), Y.float(), 2).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------

CLOUD_FNS = {
    "sliced": lambda X, Y, **kw: sliced_wasserstein(X, Y, **kw),
    "random": lambda X, Y, **kw: max_sliced_wasserstein(X, Y, method="random", **kw),
    "ascent": lambda X, Y, **kw: max_sliced_wasserstein(X, Y, method="ascent", **kw),
}


@pytest.mark.parametrize("name", list(CLOUD_FNS))
def test_error_feature_sizes(name):
    with pytest.raises(ValueError, match="feature sizes differ"):
        CLOUD_FNS[name](torch.randn(10, 3), torch.randn(10, 4))


@pytest.mark.parametrize("name", list(CLOUD_FNS))
@pytest.mark.parametrize("n,m", [(1, 10), (10, 1), (0, 5)])
def test_error_too_few_samples(name, n, m):
    with pytest.raises(ValueError, match="at least 2 samples"):
        CLOUD_FNS[name](torch.randn(n, 3), torch.randn(m, 3))


@pytest.mark.parametrize("name", list(CLOUD_FNS))
def test_error_not_2d(name):
    with pytest.raises(ValueError, match="must be 2-D"):
        CLOUD_FNS[name](torch.randn(10), torch.randn(10))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", ["X", "Y"])
@pytest.mark.parametrize("name", list(CLOUD_FNS))
def test_error_non_finite(name, side, bad):
    X, Y = _clouds(14, 20, 15, 5, torch.float32)
    (X if side == "X" else Y)[3, 2] = bad
    with pytest.raises(ValueError, match=f"{side} holds 1 non-finite"):
        CLOUD_FNS[name](X, Y, seed=0)


@pytest.mark.parametrize("name", list(ALL_METHODS))
def test_nan_propagates_without_validation(name):
    # wasserstein_1d never validates and validate=False skips the check (the regulariser's
    # setting): a NaN input must then give a NaN distance, not a silent 0.
    X, Y = _clouds(14, 20, 15, 5, torch.float32)
    X[3, 0] = math.nan
    fns = {
        "w1d": lambda: wasserstein_1d(X[:, 0], Y[:, 0], p=2),
        "sliced": lambda: sliced_wasserstein(X, Y, seed=0, validate=False),
        "random": lambda: max_sliced_wasserstein(X, Y, seed=0, validate=False),
        "ascent": lambda: max_sliced_wasserstein(X, Y, seed=0, method="ascent", validate=False),
    }
    assert torch.isnan(fns[name]())


@pytest.mark.parametrize("name", list(CLOUD_FNS))
@pytest.mark.parametrize("shape", [(4, 10), (6, 10), (5,), (5, 2, 2)])
def test_error_projections_shape(name, shape):
    X, Y = _clouds(15, 20, 15, 5, torch.float32)
    with pytest.raises(ValueError, match="projections have shape"):
        CLOUD_FNS[name](X, Y, projections=torch.randn(*shape))


def test_error_unknown_method():
    X, Y = _clouds(16, 20, 15, 5, torch.float32)
    with pytest.raises(ValueError, match="method='sinkhorn' is not known"):
        max_sliced_wasserstein(X, Y, method="sinkhorn")


@pytest.mark.parametrize("p", [0.5, 0, -1, math.nan, math.inf])
def test_error_invalid_p(p):
    X, Y = _clouds(17, 20, 15, 5, torch.float32)
    with pytest.raises(ValueError, match="not a valid Wasserstein order"):
        wasserstein_1d(X[:, 0], Y[:, 0], p=p)
    for fn in CLOUD_FNS.values():
        with pytest.raises(ValueError, match="not a valid Wasserstein order"):
            fn(X, Y, p=p)


def test_error_ascent_arguments():
    X, Y = _clouds(18, 20, 15, 5, torch.float32)
    with pytest.raises(ValueError, match="init has shape"):
        max_sliced_wasserstein(X, Y, method="ascent", init=torch.randn(4))
    for kw in ({"n_iters": -1}, {"n_starts": -1}, {"n_ascend": 0}):
        with pytest.raises(ValueError, match="need n_iters >= 0"):
            max_sliced_wasserstein(X, Y, method="ascent", **kw)


def test_error_wasserstein_1d_shapes():
    with pytest.raises(ValueError, match="batch shapes differ"):
        wasserstein_1d(torch.randn(3, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="at least one sample"):
        wasserstein_1d(torch.randn(5), torch.randn(0))
    with pytest.raises(ValueError, match="expects tensors of shape"):
        wasserstein_1d(torch.tensor(1.0), torch.randn(3))


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available"),
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_devices(device):
    X64, Y64 = _clouds(19, 128, 96, 32)
    X = X64.float().to(device).requires_grad_(True)
    Y = Y64.float().to(device).requires_grad_(True)
    P = random_projections(32, 50, seed=3, device=device)
    assert P.device.type == device
    # An integer seed draws on the CPU: the same directions on every device.
    torch.testing.assert_close(P.cpu(), random_projections(32, 50, seed=3))
    sw = sliced_wasserstein(X, Y, projections=P)
    rnd, rdir = max_sliced_wasserstein(X, Y, projections=P, return_direction=True)
    asc, adir = max_sliced_wasserstein(X, Y, method="ascent", seed=3, return_direction=True)
    for t in (sw, rnd, asc, rdir, adir):
        assert t.device.type == device
    (sw + rnd + asc).backward()
    assert X.grad.device.type == device and torch.isfinite(X.grad).all()
    assert Y.grad.device.type == device and torch.isfinite(Y.grad).all()
    # Reference in float64 on the CPU with the same directions: 1e-5 relative (float32 compute).
    P64 = P.cpu().double()
    assert _rel(sw, pot.sliced_wasserstein_distance(X64, Y64, projections=P64)) < REL
    assert _rel(rnd, pot.max_sliced_wasserstein_distance(X64, Y64, projections=P64)) < REL
    w = wasserstein_1d(X64 @ adir.cpu().double(), Y64 @ adir.cpu().double())
    assert _rel(asc, w) < REL
    assert _f(asc) >= _f(rnd) * (1 - 1e-6)
    assert np.isfinite(_f(asc))
