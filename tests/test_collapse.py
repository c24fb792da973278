"""Removal order, the sweep (with and without repair), the budgeted choice of a sweep point and
of blocks to penalise (choose_blocks), and collapse itself (lacoot.collapse)."""

from __future__ import annotations

import pytest
import torch
from _nets import TinyLM, TupleInputNet, residual_mlp, token_data

import lacoot
from lacoot.collapse import Sweep, SweepPoint, choose_blocks


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
    sweep = lacoot.sweep(model, blocks, scores, loader, loader, repeats=2, warmup=1, repair="none")
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


def test_sweep_and_greedy_put_no_patch_in_place_of_the_training_identities(
    setup, monkeypatch
) -> None:
    model, blocks, loader = setup
    scores = {"1": 3.0, "2": 0.0, "3": 2.0, "4": 1.0}  # "2" (the faded one) goes first
    sw = lacoot.sweep(model, blocks, scores, loader, loader, latency_batch_sizes=(),
                      repair="linear", identities=["2"])  # fmt: skip
    macs = [p.macs for p in sw.points]
    assert macs[0] - macs[1] == 512  # the faded block removed outright: no 16x16 patch
    assert macs[1] - macs[2] == 512 - 16 * 16  # the next one patched
    import lacoot.repair as rep

    seen = []
    real = rep.repair
    monkeypatch.setattr(rep, "repair", lambda *a, **k: seen.append(k.get("identities"))
                        or real(*a, **k))  # fmt: skip
    lacoot.score_blocks(model, blocks, loader, "greedy", repair="linear", identities=["2"])
    assert seen and all(ids == ["2"] for ids in seen)


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
    assert sweep.best(max_drop=0.5, reference=90.3).k == 1  # measured from 90.3, not 90.0
    assert sweep.best(max_macs=0.5).k == 3  # the most accurate point at <= 50 % MACs
    assert sweep.best(max_macs=0.8, max_drop=0.3).k == 1
    assert sweep.best(max_blocks=1).k == 1
    with pytest.raises(ValueError, match="no collapse meets"):
        sweep.best(max_macs=0.5, max_drop=0.5)
    with pytest.raises(ValueError, match="max_macs=1.5"):
        sweep.best(max_macs=1.5)
    with pytest.raises(ValueError, match="no budget"):
        sweep.best()


def test_best_within_a_latency_budget() -> None:
    sweep = _fake_sweep([90.0, 89.8, 89.6, 88.0, 70.0], [100, 80, 60, 40, 20])
    latency = [{1: 2.0, 8: 10.0}, {1: 1.9, 8: 8.0}, {1: 1.0, 8: 7.0}, {1: 0.9, 8: 5.0},
               {1: 0.5, 8: 2.0}]  # fmt: skip
    points = tuple(
        SweepPoint(p.k, p.removed, p.val_accuracy, p.test_accuracy, p.macs, p.params, lat)
        for p, lat in zip(sweep.points, latency, strict=True)
    )
    sweep = Sweep(order=sweep.order, points=points)
    assert sweep.best(max_latency=0.7).k == 2  # 7.0 / 10 at batch 8, the largest measured
    assert sweep.best(max_latency=0.45, latency_batch=1).k == 3  # 0.9 / 2 at batch 1
    with pytest.raises(ValueError, match="no collapse meets"):
        sweep.best(max_latency=0.7, max_drop=0.1)
    with pytest.raises(ValueError, match="latency_batch=4; the sweep measured batch sizes"):
        sweep.best(max_latency=0.5, latency_batch=4)
    with pytest.raises(ValueError, match="max_latency=0; expected a fraction"):
        sweep.best(max_latency=0)
    with pytest.raises(ValueError, match="the sweep measured none"):
        _fake_sweep([90.0, 89.0], [100, 50]).best(max_latency=0.5)


def test_collapse_leaves_original_untouched(setup) -> None:
    model, _, _ = setup
    n = lacoot.count_params(model)
    shallow = lacoot.collapse(model, ["2", "3"])
    assert lacoot.count_params(model) == n
    out = shallow(torch.randn(5, 6))
    assert out.shape == (5, 3) and torch.isfinite(out).all()


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


def test_keep_deep_keeps_a_block_of_the_two_deepest_stages() -> None:
    """resnet20's collapsible blocks (3 + 2 + 2 in three stages): the seed-1 budgets that took
    both blocks of stages 2 and 3 now keep one of them; a budget that already keeps one, and a
    model of one stage (a residual MLP), are unchanged."""
    from lacoot.models import create

    model = create("resnet20", num_classes=10, in_channels=1)
    blocks = lacoot.find_blocks(model, torch.randn(2, 1, 28, 28))
    full = lacoot.count_macs(model, torch.randn(1, 1, 28, 28))
    ranked = ["layer3.1", "layer2.2", "layer3.2", "layer1.0", "layer2.1", "layer1.2", "layer1.1"]
    scores = {n: float(i) for i, n in enumerate(ranked)}
    plain = choose_blocks(blocks, scores, full, n_blocks=6)
    assert plain == ranked[:6]  # stages 2 and 3 emptied, layer1.1 kept
    kept = choose_blocks(blocks, scores, full, n_blocks=6, keep_deep=True)
    assert kept == ["layer3.1", "layer2.2", "layer3.2", "layer1.0", "layer1.2", "layer1.1"]
    assert choose_blocks(blocks, scores, full, n_blocks=7, keep_deep=True)[-1] == "layer2.1"
    assert choose_blocks(blocks, scores, full, n_blocks=3, keep_deep=True) == ranked[:3]
    mlp = residual_mlp(units=4)
    mlp_blocks = lacoot.find_blocks(mlp, torch.randn(2, 6))
    order = {"1": 0.4, "2": 0.1, "3": 0.3, "4": 0.2}
    mlp_full = lacoot.count_macs(mlp, torch.randn(1, 6))
    assert choose_blocks(mlp_blocks, order, mlp_full, n_blocks=4, keep_deep=True) == [
        "2", "4", "3", "1"
    ]  # fmt: skip


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
                         max_blocks=2, repair="none")  # fmt: skip
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


@pytest.mark.parametrize("as_dict", [False, True])
def test_tuple_and_dict_inputs_work_wherever_a_tensor_does(as_dict: bool) -> None:
    torch.manual_seed(0)
    model = TupleInputNet()
    g = torch.Generator().manual_seed(1)
    x, meta = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    y = (x[:, 0] > 0).long()

    def pack(a, b):
        return {"x": a, "meta": b} if as_dict else (a, b)

    loader = [(pack(x[i : i + 16], meta[i : i + 16]), y[i : i + 16]) for i in range(0, 64, 16)]
    blocks = lacoot.find_blocks(model, pack(x[:2], meta[:2]))
    assert [b.name for b in blocks] == ["body.0", "body.1", "body.2"]
    for criterion in ("msw", "cosine", "greedy"):
        scores = lacoot.score_blocks(model, blocks, loader, criterion=criterion)
        assert set(scores) == {"body.0", "body.1", "body.2"}
    result = lacoot.sweep(model, blocks, scores, loader, loader, latency_batch_sizes=(1, 4),
                          repair="linear")  # fmt: skip
    assert len(result.points) == 4 and result.points[0].macs > result.points[-1].macs > 0
    assert all(set(p.latency_ms) == {1, 4} for p in result.points)
    shallow = lacoot.collapse(model, result.points[2], pack(x[:2], meta[:2]))
    assert len(shallow.body) == 1


def test_a_language_model_sweeps_with_its_own_evaluation_function() -> None:
    torch.manual_seed(0)
    model, data = TinyLM(), token_data()
    blocks = lacoot.find_blocks(model, data[0][0])
    assert [b.name for b in blocks] == ["layers.0", "layers.1", "layers.2"]
    with pytest.raises(ValueError, match="token_accuracy"):  # the default refuses (B, T, V)
        lacoot.sweep(model, blocks, {b.name: 0.0 for b in blocks}, data, latency_batch_sizes=())
    scores = lacoot.score_blocks(model, blocks, data, criterion="greedy",
                                 evaluate=lacoot.negative_perplexity)  # fmt: skip
    result = lacoot.sweep(model, blocks, scores, data, data, latency_batch_sizes=(),
                          evaluate=lacoot.negative_perplexity)  # fmt: skip
    assert result.metric == "negative_perplexity" and result.to_dict()["metric"] == result.metric
    vocab = 11
    assert all(-vocab * 4 < p.val_accuracy < 0 for p in result.points)  # minus a perplexity
    assert result.best(max_drop=1e9).k == 3
    accuracy = lacoot.sweep(model, blocks, scores, data, latency_batch_sizes=(),
                            evaluate=lacoot.token_accuracy)  # fmt: skip
    assert 0 <= accuracy.points[1].val_accuracy <= 100
