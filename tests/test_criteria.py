"""Scoring criteria (lacoot.criteria): values against direct computation, the principal spread,
identity blocks, the greedy order, registration and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _nets import _data, residual_mlp

import lacoot
from lacoot.criteria import Criterion, get_criterion, principal_spread


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


def test_greedy_order_removes_the_least_harmful_block_first() -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=3)
    loader = _data(128)
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    with torch.no_grad():  # block 2 does nothing: removing it costs no accuracy at all
        model[2].fc2.weight.zero_()
        model[2].fc2.bias.zero_()
        model[1].fc2.weight.mul_(20)  # block 1 matters a lot
    scores = lacoot.score_blocks(model, blocks, loader, criterion="greedy", repair="none")
    assert sorted(scores.values()) == [0.0, 1.0, 2.0]
    order = lacoot.removal_order(blocks, scores)
    assert order[0] == "2"
    with pytest.raises(ValueError, match="repair='nope'"):
        lacoot.score_blocks(model, blocks, loader, criterion="greedy", repair="nope")


def test_greedy_max_steps_stops_the_search_and_keeps_its_first_removals() -> None:
    """``max_steps = s`` costs ``s N - s (s - 1) / 2`` evaluations (counted), its first ``s``
    removals are those of the full search, and the rest follow the last step's evaluations."""
    torch.manual_seed(0)
    model = residual_mlp(units=5)
    loader = _data(64)
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    calls: list[float] = []

    def counted(m, data) -> float:
        calls.append(lacoot.metrics.top1_accuracy(m, data))
        return calls[-1]

    full = lacoot.removal_order(blocks, lacoot.score_blocks(
        model, blocks, loader, criterion="greedy", repair="none", evaluate=counted))  # fmt: skip
    assert len(calls) == 5 * 6 // 2 - 1
    calls.clear()
    scores = lacoot.score_blocks(model, blocks, loader, criterion="greedy", repair="none",
                                 evaluate=counted, max_steps=2)  # fmt: skip
    assert len(calls) == 2 * 5 - 1
    order = lacoot.removal_order(blocks, scores)
    assert order[:2] == full[:2] and sorted(order) == sorted(full)
    last = dict(
        zip(
            [b.name for b in sorted(blocks, key=lambda b: -b.order) if b.name != order[0]],
            calls[5:],
            strict=True,
        )
    )  # the second step's evaluations, by block
    assert [last[n] for n in order[1:]] == sorted(last.values(), reverse=True)
    with pytest.raises(ValueError, match="max_steps=0"):
        lacoot.score_blocks(model, blocks, loader, criterion="greedy", max_steps=0)
