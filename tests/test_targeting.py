"""The penalty aimed at removal: scale-free distances, penalised blocks by pattern or budget."""

from __future__ import annotations

import pytest
import torch
from _nets import residual_mlp

import lacoot
from lacoot.collapse import choose_blocks
from lacoot.criteria import principal_spread
from lacoot.regularizer import power_spread
from lacoot.train import TrainConfig, load_checkpoint, train


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


def test_choose_blocks_by_count_and_by_macs() -> None:
    model = residual_mlp(units=4)
    blocks = lacoot.find_blocks(model, torch.randn(2, 6))
    scores = {"1": 0.4, "2": 0.1, "3": 0.3, "4": 0.2}
    full = lacoot.count_macs(model, torch.randn(1, 6))
    assert choose_blocks(blocks, scores, full, n_blocks=2) == ["2", "4"]
    per_block = blocks[0].macs
    keep = (full - 3 * per_block) / full  # exactly three blocks must go
    assert choose_blocks(blocks, scores, full, max_macs=keep) == ["2", "4", "3"]
    with pytest.raises(ValueError, match="exactly one"):
        choose_blocks(blocks, scores, full)
    with pytest.raises(ValueError, match="removing every block leaves"):
        choose_blocks(blocks, scores, full, max_macs=0.01)
    with pytest.raises(ValueError, match="n_blocks=9"):
        choose_blocks(blocks, scores, full, n_blocks=9)


def _data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    Y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return [(X[i : i + 32], Y[i : i + 32]) for i in range(0, n, 32)]


def test_budget_targeted_run_penalises_exactly_the_chosen_blocks(tmp_path) -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    loader = _data()
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    cfg = TrainConfig(epochs=3, lam=1.0, relative=True, target_blocks=2, target_warmup=1,
                      schedule="constant", lr=0.01)  # fmt: skip
    result = train(model, blocks, loader, loader[:2], cfg, out_dir=tmp_path, device="cpu",
                   progress=False)  # fmt: skip
    targets = load_checkpoint(tmp_path / "checkpoint.pt")["regularizer"]["targets"]
    assert len(targets) == 2 and result.penalized == targets
    first, *later = result.history
    assert sorted(k for k in first if k.startswith("msw/")) == ["msw/1", "msw/2", "msw/3", "msw/4"]
    for row in later:
        assert sorted(k for k in row if k.startswith("msw/")) == sorted(f"msw/{t}" for t in targets)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 2])  # before and after the targets are chosen
def test_targeted_run_resumes_exactly(tmp_path, stop_after: int) -> None:
    loader = _data()
    cfg = TrainConfig(epochs=3, lam=0.5, target_blocks=1, target_warmup=1, schedule="constant",
                      lr=0.01)  # fmt: skip

    def fresh():
        torch.manual_seed(0)
        model = residual_mlp(units=3)
        return model, lacoot.find_blocks(model, loader[0][0][:2])

    model, blocks = fresh()
    train(model, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "a", device="cpu",
          progress=False)  # fmt: skip

    def stop(row):
        if row["epoch"] == stop_after:
            raise _Stop

    part, blocks = fresh()
    with pytest.raises(_Stop):
        train(part, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "b", device="cpu",
              progress=False, on_epoch=stop)  # fmt: skip
    resumed, blocks = fresh()
    train(resumed, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "b", device="cpu",
          progress=False, resume=True)  # fmt: skip
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    targets = [load_checkpoint(tmp_path / d / "checkpoint.pt")["regularizer"]["targets"]
               for d in "ab"]  # fmt: skip
    assert targets[0] == targets[1] and len(targets[0]) == 1


def test_penalize_patterns_and_errors(tmp_path) -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    loader = _data(64)
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    cfg = TrainConfig(epochs=1, lam=0.5, penalize=("[24]",), schedule="constant")
    result = train(model, blocks, loader, None, cfg, device="cpu", progress=False)
    assert result.penalized == ["2", "4"]
    bad = TrainConfig(epochs=1, lam=0.5, penalize=("layer*",))
    with pytest.raises(ValueError, match="matches none of the blocks"):
        train(model, blocks, loader, None, bad, device="cpu", progress=False)
    for kwargs, message in [
        ({"target_blocks": 2, "target_macs": 0.5}, "at most one budget"),
        ({"target_blocks": 0}, "target_blocks=0"),
        ({"target_macs": 1.5}, "target_macs=1.5"),
        ({"target_blocks": 2, "target_warmup": -1}, "target_warmup=-1"),
        ({"target_blocks": 2, "penalize": ("1",)}, "expected one of them"),
        ({"target_criterion": "nope"}, "target_criterion='nope'"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**kwargs)


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


def test_sweep_with_repair_reports_both_figures() -> None:
    from lacoot.models import create

    torch.manual_seed(0)
    model = create("resnet20", num_classes=10, in_channels=1, widths=(4, 4, 8))
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    model.train()
    with torch.no_grad():
        model(x)
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    blocks = lacoot.find_blocks(model, x[:2])
    scores = lacoot.score_blocks(model, blocks, criterion="depth")
    plain = lacoot.sweep(model, blocks, scores, loader, loader, latency_batch_sizes=(),
                         max_blocks=2)  # fmt: skip
    fixed = lacoot.sweep(model, blocks, scores, loader, loader, latency_batch_sizes=(),
                         max_blocks=2, repair="linear", calib_samples=48)  # fmt: skip
    assert fixed.repair == "linear" and fixed.calib_samples == 48 and plain.calib_samples == 0
    assert fixed.points[0].val_accuracy == plain.points[0].val_accuracy  # k = 0 is not repaired
    for p, q in zip(plain.points, fixed.points, strict=True):
        assert q.unrepaired["val_accuracy"] == p.val_accuracy
        assert p.unrepaired["val_accuracy"] == p.val_accuracy
    assert fixed.points[2].macs > plain.points[2].macs  # the 1x1 patches are counted
    assert fixed.to_dict()["points"][1]["unrepaired"]["test_accuracy"] is not None
    with pytest.raises(ValueError, match="repair='bad'"):
        lacoot.sweep(model, blocks, scores, loader, repair="bad")
