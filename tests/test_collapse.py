"""Scoring criteria, removal order, the sweep and the budgeted choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _nets import residual_mlp

import lacoot
from lacoot.collapse import Sweep, SweepPoint
from lacoot.criteria import Criterion, get_criterion, principal_spread


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = residual_mlp()
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    return model, lacoot.find_blocks(model, x[:4]), loader


def test_score_criteria(setup) -> None:
    model, blocks, loader = setup
    names = [b.name for b in blocks]
    for crit in ("msw", "msw_rel", "cosine", "angular"):
        scores = lacoot.score_blocks(model, blocks, loader, criterion=crit)
        assert list(scores) == names
        assert all(math.isfinite(v) and v >= 0 for v in scores.values())
    assert lacoot.score_blocks(model, blocks, criterion="depth") == {"1": 3, "2": 2, "3": 1, "4": 0}
    r1 = lacoot.score_blocks(model, blocks, criterion="random", seed=1)
    assert r1 == lacoot.score_blocks(model, blocks, criterion="random", seed=1)
    assert r1 != lacoot.score_blocks(model, blocks, criterion="random", seed=2)


def test_cosine_and_msw_against_direct_computation(setup) -> None:
    model, blocks, loader = setup
    x = torch.cat([b[0] for b in loader])
    X = model[0](x).detach()
    Y = model[1](X).detach()
    cos = torch.nn.functional.cosine_similarity(X, Y, dim=1)
    scores = lacoot.score_blocks(model, blocks, [(x, None)], criterion="cosine")
    assert scores["1"] == pytest.approx(float(1 - cos.mean()), rel=1e-5)
    angular = lacoot.score_blocks(model, blocks, [(x, None)], criterion="angular")
    assert angular["1"] == pytest.approx(float(cos.clamp(-1, 1).acos().mean() / math.pi), rel=1e-5)
    msw = lacoot.score_blocks(model, blocks, [(x, None)], criterion="msw", seed=5)
    ref = lacoot.max_sliced_wasserstein(X, Y, method="ascent", seed=5)
    assert msw["1"] == pytest.approx(float(ref), rel=1e-5)
    # msw_rel: the same distance over the principal spread of the input, from NumPy's eigenvalues
    rel = lacoot.score_blocks(model, blocks, [(x, None)], criterion="msw_rel", seed=5)
    cov = np.cov(X.double().numpy(), rowvar=False, bias=True)
    spread = math.sqrt(np.linalg.eigvalsh(cov)[-1])
    assert rel["1"] == pytest.approx(float(ref) / spread, rel=1e-5)


@pytest.mark.parametrize("shape", [(40, 7), (9, 30)])  # n > d and n < d
def test_principal_spread_is_the_msw_to_the_mean(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3, shape[1])
    cov = np.cov(X.numpy(), rowvar=False, bias=True)
    want = math.sqrt(np.linalg.eigvalsh(cov)[-1])
    got = principal_spread(X)
    assert got.shape == () and torch.isfinite(got)
    assert float(got) == pytest.approx(want, rel=1e-10)
    # it is the max-sliced W2 between X and a point mass at its mean (ascent finds it, rel 1e-4)
    centre = X.mean(0, keepdim=True).expand_as(X)
    msw = lacoot.max_sliced_wasserstein(X, centre, method="ascent", seed=0)
    assert float(msw) == pytest.approx(want, rel=1e-4)
    # dimensionless: scaling the features scales both distances alike
    Y = X + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64)
    a = get_criterion("msw_rel").batch_score(X, Y, 0)
    b = get_criterion("msw_rel").batch_score(7.5 * X, 7.5 * Y, 0)
    assert float(b) == pytest.approx(float(a), rel=1e-9)


def test_identity_block_scores_zero(setup) -> None:
    model, blocks, loader = setup
    with torch.no_grad():
        for p in model[2].fc2.parameters():
            p.zero_()  # block 2 is now exactly the identity
    for crit in ("msw", "msw_rel", "cosine", "angular"):
        scores = lacoot.score_blocks(model, blocks, loader, criterion=crit)
        assert scores["2"] == pytest.approx(0.0, abs=1e-5)
        assert lacoot.removal_order(blocks, scores)[0] == "2"


def test_score_errors(setup) -> None:
    model, blocks, loader = setup
    with pytest.raises(ValueError, match="criterion 'nope' is not known; expected one of"):
        lacoot.score_blocks(model, blocks, loader, criterion="nope")
    with pytest.raises(ValueError, match="needs calibration data"):
        lacoot.score_blocks(model, blocks, None, criterion="msw")
    with pytest.raises(ValueError, match="size >= 2"):
        lacoot.score_blocks(model, blocks, [(torch.randn(1, 6), None)], criterion="msw")


def test_register_criterion_collision_warns() -> None:
    crit = get_criterion("depth")
    with pytest.warns(UserWarning, match="replaced"):
        lacoot.register_criterion(
            Criterion("depth", crit.description, static_score=crit.static_score)
        )
    with pytest.raises(ValueError, match="exactly one"):
        lacoot.register_criterion(Criterion("bad", "neither"))


def test_removal_order_ties_go_deeper(setup) -> None:
    _, blocks, _ = setup
    assert lacoot.removal_order(blocks, {"1": 0.0, "2": 0.0, "3": 1.0, "4": 0.5}) == [
        "2",
        "1",
        "4",
        "3",
    ]
    with pytest.raises(ValueError, match="no score"):
        lacoot.removal_order(blocks, {"1": 0.0})


def test_sweep_measures_every_step(setup) -> None:
    model, blocks, loader = setup
    scores = lacoot.score_blocks(model, blocks, criterion="depth")
    sweep = lacoot.sweep(model, blocks, scores, loader, loader, repeats=2, warmup=1)
    assert [p.k for p in sweep.points] == [0, 1, 2, 3, 4]
    assert sweep.order == ("4", "3", "2", "1")
    macs = [p.macs for p in sweep.points]
    params = [p.params for p in sweep.points]
    # each residual unit holds two 16x16 linear layers: 512 MACs per sample, 544 parameters
    assert [a - b for a, b in zip(macs, macs[1:], strict=False)] == [512] * 4
    assert [a - b for a, b in zip(params, params[1:], strict=False)] == [544] * 4
    assert sweep.full.val_accuracy == lacoot.evaluate_accuracy(model, loader)
    for p in sweep.points:
        shallow = lacoot.collapse(model, p)
        assert p.val_accuracy == lacoot.evaluate_accuracy(shallow, loader)
        assert p.latency_ms[1] > 0
    assert sweep.to_dict()["points"][2]["removed"] == ["4", "3"]


def _fake_sweep(accs: list[float], macs: list[int]) -> Sweep:
    pts = tuple(
        SweepPoint(k, tuple(str(i) for i in range(k)), a, a, m, 0)
        for k, (a, m) in enumerate(zip(accs, macs, strict=True))
    )
    return Sweep(order=tuple(str(i) for i in range(len(accs) - 1)), points=pts)


def test_best_within_budget() -> None:
    sweep = _fake_sweep([90.0, 89.8, 89.6, 88.0, 70.0], [100, 80, 60, 40, 20])
    assert sweep.best(max_drop=0.5).k == 2
    assert sweep.best(max_drop=0.0).k == 0
    assert sweep.best(max_macs=0.5).k == 3  # the most accurate point at <= 50 % MACs
    assert sweep.best(max_macs=0.8, max_drop=0.3).k == 1
    assert sweep.best(max_blocks=1).k == 1
    with pytest.raises(ValueError, match="no collapse meets"):
        sweep.best(max_macs=0.5, max_drop=0.5)
    with pytest.raises(ValueError, match="max_macs=1.5"):
        sweep.best(max_macs=1.5)
    with pytest.raises(ValueError, match="no budget"):
        sweep.best()


def test_collapse_leaves_original_untouched(setup) -> None:
    model, _, _ = setup
    n = lacoot.count_params(model)
    shallow = lacoot.collapse(model, ["2", "3"])
    assert lacoot.count_params(model) == n
    out = shallow(torch.randn(5, 6))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
