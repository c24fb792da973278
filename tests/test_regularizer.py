"""The MSW penalty: values, gradients, hooks, warm starts, the relative (scale-free) penalty
and its power-iteration spread, and its effect on training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _nets import residual_mlp

import lacoot
import lacoot.models
from lacoot.criteria import principal_spread
from lacoot.ot import max_sliced_wasserstein
from lacoot.regularizer import power_spread


def _block_io(model, names, x):
    io = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: io.__setitem__(n, (a[0].detach(), o.detach()))
        )
        for n in names
    ]
    out = model(x)
    for h in handles:
        h.remove()
    return out, io


def test_penalty_is_lam_times_mean_block_distance() -> None:
    torch.manual_seed(0)
    model = residual_mlp()
    x = torch.randn(32, 6)
    blocks = lacoot.find_blocks(model, x)
    names = [b.name for b in blocks]
    proj = {}
    with lacoot.MSWRegularizer(model, blocks, lam=0.7, method="random", seed=3) as reg:
        _, io = _block_io(model, names, x)
        penalty = reg.penalty()
        proj = reg.distances()
    expected = torch.stack(
        [
            max_sliced_wasserstein(X.flatten(1), Y.flatten(1), n_projections=50, seed=3)
            for X, Y in io.values()
        ]
    ).mean()
    torch.testing.assert_close(penalty, 0.7 * expected, rtol=1e-6, atol=0)
    assert set(proj) == set(names)
    torch.testing.assert_close(
        torch.tensor(list(proj.values())).mean(), expected, rtol=1e-6, atol=0
    )


def test_random_directions_drawn_once_per_width_and_step(monkeypatch) -> None:
    """Blocks of one width share the step's seeded draw: the same values and gradients as each
    block drawing its own (bit for bit), with one draw per width and step."""
    import lacoot.regularizer as regularizer

    torch.manual_seed(0)
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    names = [b.name for b in blocks]
    draws: list[int] = []
    draw = regularizer.random_projections
    monkeypatch.setattr(regularizer, "random_projections",
                        lambda d, *a, **k: draws.append(d) or draw(d, *a, **k))  # fmt: skip
    params = list(model.parameters())
    with lacoot.MSWRegularizer(model, blocks, lam=1.0, method="random", seed=5) as reg:
        for step in range(2):
            io: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            handles = [
                model.get_submodule(n).register_forward_hook(
                    lambda m, a, o, n=n, io=io: io.__setitem__(n, (a[0], o))
                )
                for n in names
            ]
            model(torch.randn(16, 6))
            for h in handles:
                h.remove()
            penalty = reg.penalty()
            direct = torch.stack([
                max_sliced_wasserstein(*io[n], n_projections=50, seed=5 + step) for n in names
            ]).mean()  # fmt: skip
            assert torch.equal(penalty.detach(), direct.detach())
            ours = torch.autograd.grad(penalty, params, retain_graph=True, allow_unused=True)
            theirs = torch.autograd.grad(direct, params, allow_unused=True)
            for a, b in zip(ours, theirs, strict=True):
                assert (a is None and b is None) or torch.equal(a, b)
    widths = {io[n][0].flatten(1).shape[1] for n in names}
    assert len(names) > len(widths) and len(draws) == 2 * len(widths)


def test_penalty_gradient_reaches_every_block_parameter() -> None:
    torch.manual_seed(0)
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    with lacoot.MSWRegularizer(model, blocks, lam=1.0) as reg:
        model(torch.randn(16, 6))
        reg.penalty().backward()
    for b in blocks:
        for p in model.get_submodule(b.name).parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0


def test_ascent_directions_persist_and_warm_start() -> None:
    torch.manual_seed(0)
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    x = torch.randn(64, 6)
    with lacoot.MSWRegularizer(model, blocks, method="ascent", n_iters=0) as reg:
        model(x)
        first = reg.penalty().item()
        dirs = {k: v.clone() for k, v in reg.directions.items()}
        assert set(dirs) == {b.name for b in blocks}
        for _ in range(5):
            model(x)
            later = reg.penalty().item()
    # with no ascent step, only warm starts can improve the estimate on the same data
    assert later >= first - 1e-6
    moved = any(not torch.equal(dirs[k], reg.directions[k]) for k in dirs)
    assert moved or later == pytest.approx(first, rel=1e-6)  # the search and one projection
    # compute the same value by different float paths


@pytest.mark.parametrize("batch", [1, 2, 3, 17])
def test_any_batch_size(batch: int) -> None:
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    with lacoot.MSWRegularizer(model, blocks) as reg:
        loss = F.cross_entropy(model(torch.randn(batch, 6)), torch.zeros(batch, dtype=torch.long))
        penalty = reg.penalty()
        (loss + penalty).backward()
    assert penalty.shape == () and torch.isfinite(penalty)
    if batch == 1:
        assert penalty.item() == 0.0 and reg.distances() == {}
    else:
        assert penalty.item() > 0 and len(reg.distances()) == len(blocks)


def test_hooks_removed_on_close() -> None:
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    with lacoot.MSWRegularizer(model, blocks):
        assert any(m._forward_hooks for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())


def test_errors() -> None:
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, torch.randn(4, 6))
    with pytest.raises(ValueError, match="lam=-1"):
        lacoot.MSWRegularizer(model, blocks, lam=-1.0)
    with pytest.raises(ValueError, match="method='max'"):
        lacoot.MSWRegularizer(model, blocks, method="max")
    with lacoot.MSWRegularizer(model, blocks) as reg, pytest.raises(RuntimeError, match="forward"):
        reg.penalty()


def _train(lam: float, steps: int = 300, seed: int = 0) -> tuple[dict[str, float], float]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(1234)
    w = torch.randn(6, 3, generator=gen)
    x = torch.randn(1024, 6, generator=gen)
    y = (x @ w).argmax(1)
    model = residual_mlp()
    blocks = lacoot.find_blocks(model, x[:4])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with lacoot.MSWRegularizer(model, blocks, lam=lam) as reg:
        for step in range(steps):
            i = (step * 64) % 1024
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]) + reg.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    scores = lacoot.score_blocks(model, blocks, [(x[:512], y[:512])], criterion="msw")
    acc = lacoot.evaluate_accuracy(model, [(x, y)])
    return scores, acc


def test_penalty_shrinks_block_distances_end_to_end() -> None:
    plain, plain_acc = _train(lam=0.0)
    regularised, reg_acc = _train(lam=1.0)
    # every block moves its output distribution closer to its input distribution
    for name in plain:
        assert regularised[name] < 0.5 * plain[name], (name, plain[name], regularised[name])
    assert reg_acc > 80.0 and plain_acc > 80.0


@pytest.mark.parametrize("shape", [(40, 7), (12, 30)])
def test_power_spread_matches_the_exact_principal_spread(shape: tuple[int, int]) -> None:
    torch.manual_seed(1)
    X = torch.randn(*shape) * torch.linspace(0.2, 3.0, shape[1])
    exact = float(principal_spread(X.double()))
    cold, v = power_spread(X)
    assert float(cold) == pytest.approx(exact, rel=1e-3)
    warm, _ = power_spread(X, init=v, n_iters=2)  # warm start: stays at the maximum
    assert float(warm) == pytest.approx(exact, rel=1e-4)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)


def _penalty(model: torch.nn.Module, x: torch.Tensor, relative: bool) -> tuple[float, dict]:
    reg = lacoot.MSWRegularizer(model, ["1", "2"], lam=1.0, seed=0, relative=relative)
    with reg:
        model(x)
        value = float(reg.penalty().detach())
    return value, reg.distances()


def test_relative_penalty_is_unchanged_when_features_are_scaled() -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=2)
    x = torch.randn(64, 6)
    scaled = residual_mlp(units=2)
    scaled.load_state_dict(model.state_dict())
    with torch.no_grad():  # stem x10 and biases x10: every block input and output is 10x
        scaled[0].weight.mul_(10)  # larger (ReLU is positively homogeneous)
        scaled[0].bias.mul_(10)
        for unit in (scaled[1], scaled[2]):
            unit.fc1.bias.mul_(10)
            unit.fc2.bias.mul_(10)
    raw, _ = _penalty(model, x, relative=False)
    raw10, _ = _penalty(scaled, x, relative=False)
    assert raw10 == pytest.approx(10 * raw, rel=1e-3)  # the raw penalty scales with features
    rel, dists = _penalty(model, x, relative=True)
    rel10, dists10 = _penalty(scaled, x, relative=True)
    assert rel10 == pytest.approx(rel, rel=1e-3)
    for name in dists:
        assert dists10[name] == pytest.approx(dists[name], rel=1e-3)


def test_relative_penalty_gradient_flows_to_blocks_only_through_the_distance() -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=2)
    x = torch.randn(32, 6)
    with lacoot.MSWRegularizer(model, ["1"], lam=1.0, seed=0, relative=True) as reg:
        model(x)
        reg.penalty().backward()
    assert model[1].fc2.weight.grad is not None and model[1].fc2.weight.grad.abs().sum() > 0
    assert model[2].fc1.weight.grad is None  # not penalised: no gradient at all


def test_penalty_is_float32_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    model = residual_mlp()
    x = torch.randn(32, 6)
    blocks = lacoot.find_blocks(model, x)
    values = {}
    for amp in (False, True):
        with lacoot.MSWRegularizer(model, blocks, method="random", seed=0) as reg:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(x)
                values[amp] = reg.penalty()
    assert values[True].dtype == torch.float32
    # the features differ (bfloat16 layers), the distance is computed alike
    torch.testing.assert_close(values[True], values[False], rtol=0.05, atol=0)


def test_penalty_without_a_forward_says_what_to_do_also_about_torch_compile() -> None:
    model = residual_mlp()
    with lacoot.MSWRegularizer(model, lacoot.find_blocks(model, torch.randn(2, 6))) as reg:
        with pytest.raises(RuntimeError, match="call the model's forward first.*torch.compile"):
            reg.penalty()


def test_cosine_distance_penalty_value_gradient_and_errors() -> None:
    import numpy as np

    torch.manual_seed(0)
    model = residual_mlp().double()
    x = torch.randn(16, 6, dtype=torch.float64)
    blocks = lacoot.find_blocks(model, x)
    names = [b.name for b in blocks]
    with lacoot.MSWRegularizer(model, blocks, lam=0.5, distance="cosine") as reg:
        _, io = _block_io(model, names, x)
        penalty = reg.penalty()
    expected = []  # NumPy, sample by sample
    for X, Y in io.values():
        a, b = X.numpy(), Y.numpy()
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        expected.append(1.0 - cos.mean())
    assert float(penalty) == pytest.approx(0.5 * np.mean(expected), rel=1e-12)

    unit = lacoot.MSWRegularizer(model, blocks, distance="cosine")
    X, Y = (torch.randn(8, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b: unit.distance("u", a, b), (X, Y))
    unit.close()
    with pytest.raises(ValueError, match="distance='l2' is not known"):
        lacoot.MSWRegularizer(model, blocks, distance="l2")
    with pytest.raises(ValueError, match="relative=True divides an MSW"):
        lacoot.MSWRegularizer(model, blocks, distance="cosine", relative=True)


def test_escalate_raises_the_weight_of_alive_blocks_only() -> None:
    """Closed form: an identity block (influence 0) keeps weight 1, a block that changes its input
    doubles per step up to the cap; the penalty uses the weights of the step before."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(6, 6))
    reg = lacoot.MSWRegularizer(model, ["0", "1"], lam=0.5, method="random", seed=3,
                                escalate=1e-3, escalate_rate=2.0, max_weight=5.0)  # fmt: skip
    x = torch.randn(16, 6)
    seen = []
    for _ in range(4):
        model(x)
        before = dict(reg.weights)
        value = reg.penalty()
        expected = 0.5 * sum(before.get(n, 1.0) * float(reg.last[n]) for n in ("0", "1")) / 2
        assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
        seen.append(dict(reg.weights))
    assert [w["1"] for w in seen] == [2.0, 4.0, 5.0, 5.0]  # capped at max_weight
    assert all(w["0"] == 1.0 for w in seen)  # never below 1
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(6))
        model[1].bias.zero_()
    model(x)
    reg.penalty()
    assert reg.weights["1"] == 2.5  # dead now: the weight falls back
    reg.max_weight = 1.5  # a lower cap (the trainer's, at a high learning rate) acts at once
    with torch.no_grad():
        model[1].weight.mul_(2.0)
    model(x)
    value = float(reg.penalty().detach())
    assert float(reg.last["1"]) > 0.1 and value == pytest.approx(
        0.5 * 1.5 * float(reg.last["1"]) / 2, rel=1e-6
    )
    with pytest.raises(ValueError, match="escalate=-1"):
        lacoot.MSWRegularizer(model, ["0"], escalate=-1)
    with pytest.raises(ValueError, match="escalate_rate=1"):
        lacoot.MSWRegularizer(model, ["0"], escalate=0.1, escalate_rate=1)


def test_channels_last_features_are_viewed_in_memory_order_not_copied() -> None:
    from lacoot.regularizer import flat_pair

    x = torch.randn(6, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    X, Y = flat_pair(x, 2 * x + 1)
    assert X.data_ptr() == x.data_ptr() and X._base is not None  # a view: nothing copied
    torch.testing.assert_close(Y, 2 * X + 1)  # the same coordinate in each column of both
    torch.testing.assert_close(X, x.permute(0, 2, 3, 1).reshape(6, -1))
    contiguous = x.contiguous()
    X2, _ = flat_pair(contiguous, contiguous)
    torch.testing.assert_close(X2, contiguous.flatten(1))  # logical order kept where it is free


@pytest.mark.parametrize(
    "options",
    [
        {"distance": "cosine"},
        {"method": "random", "seed": 5, "relative": True},
        {"method": "ascent", "seed": 5},
    ],  # fmt: skip
)
def test_penalty_of_a_channels_last_model_equals_the_contiguous_one(options: dict) -> None:
    """The features are viewed in memory order, the directions drawn and carried in logical
    order: a channels-last model gets the penalty, gradients and carried directions of its
    contiguous copy, step after step (float64; the relative scale is computed in float32,
    hence the tolerances)."""
    torch.manual_seed(0)
    model = lacoot.models.create("resnet20", num_classes=3, in_channels=2, widths=[4, 4, 8])
    model = model.double()
    x = torch.randn(8, 2, 8, 8, dtype=torch.float64)
    blocks = lacoot.find_blocks(model, x)
    models = [model, copy.deepcopy(model).to(memory_format=torch.channels_last)]
    inputs = [x, x.contiguous(memory_format=torch.channels_last)]
    runs = []
    for m, inp in zip(models, inputs, strict=True):
        with lacoot.MSWRegularizer(m, blocks, **options) as reg:
            values = []
            for _ in range(3):  # the ascent: a thorough search, then warm starts
                m(inp)
                values.append(reg.penalty())
            grads = torch.autograd.grad(values[-1], list(m.parameters()), allow_unused=True)
            runs.append((torch.stack(values), grads, dict(reg.directions)))
    (v0, g0, d0), (v1, g1, d1) = runs
    torch.testing.assert_close(v0, v1, rtol=1e-6, atol=1e-12)
    for a, b in zip(g0, g1, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert d0.keys() == d1.keys()
    for key in d0:
        torch.testing.assert_close(d0[key], d1[key], rtol=1e-5, atol=1e-6)
    if options.get("method") == "random":  # logical order: the contiguous computation
        name = blocks[0].name
        with lacoot.MSWRegularizer(models[1], [name], **options) as reg:
            _, io = _block_io(models[1], [name], inputs[1])
            value = reg.penalty()
        X, Y = (t.flatten(1) for t in io[name])
        msw = max_sliced_wasserstein(X, Y, n_projections=50, seed=5)
        # the spread by power iteration (20 steps) is within 1e-4 of the exact one
        torch.testing.assert_close(value, msw / principal_spread(X), rtol=1e-4, atol=0)


class _Constant(torch.nn.Module):
    """A block whose output does not depend on its input: ``(B, d) -> (B, d)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.c = torch.nn.Parameter(torch.randn(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c.expand_as(x) + 0.1 * torch.arange(x.shape[0]).unsqueeze(1)


@pytest.mark.parametrize("method", ["random", "ascent"])
def test_a_stopped_input_gradient_reaches_the_block_only(method: str) -> None:
    # the block's output ignores its input, so with the input stopped nothing reaches the stem;
    # the value and the block's own gradient are the same either way
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), _Constant(6))
    x = torch.randn(32, 4)
    got = {}
    for stop in (False, True):
        net = copy.deepcopy(model)
        with lacoot.MSWRegularizer(net, ["1"], method=method, seed=0,
                                   stop_input_grad=stop) as reg:  # fmt: skip
            net(x)
            value = reg.penalty()
            value.backward()
        got[stop] = (float(value.detach()), net[0].weight.grad, net[1].c.grad)
    assert got[True][0] == pytest.approx(got[False][0], rel=1e-6)
    torch.testing.assert_close(got[True][2], got[False][2], rtol=1e-5, atol=1e-7)
    assert float(got[False][1].abs().sum()) > 0
    assert got[True][1] is None or float(got[True][1].abs().sum()) == 0.0
