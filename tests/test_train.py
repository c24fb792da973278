"""The training loop (lacoot.train): non-finite losses, options, samplers told the epoch, and the
penalised blocks chosen by pattern or by budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _faulty import CFG, Faulty, tiny_loader, tiny_model
from _nets import _data, residual_mlp

import lacoot
from lacoot.train import TrainConfig, load_checkpoint, train


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    model, blocks = tiny_model()
    saved: list[bytes] = []
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(FloatingPointError) as info:
        train(
            model, blocks, Faulty(tiny_loader(), 1, 4, "nan"), None, CFG, out_dir=tmp_path,
            progress=False, on_epoch=lambda row: saved.append(ckpt.read_bytes()),
        )  # fmt: skip
    message = str(info.value)
    assert "non-finite loss at epoch 2, step 5 of 6" in message
    assert "non-finite block distances: ['layer1.0', 'layer1.1', 'layer1.2'" in message
    assert f"the last good checkpoint, {ckpt} (epoch 1), is kept" in message
    assert "--nonfinite skip" in message
    assert len(saved) == 1 and ckpt.read_bytes() == saved[0]


def test_nonfinite_skip_drops_the_batch_and_goes_on(tmp_path: Path) -> None:
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "nonfinite": "skip"})
    with pytest.warns(RuntimeWarning, match="epoch 2: skipped 1 batches"):
        result = train(
            model, blocks, Faulty(tiny_loader(), 1, 4, "nan"), None, cfg, out_dir=tmp_path,
            progress=False,
        )  # fmt: skip
    assert [row.get("skipped_batches", 0) for row in result.history] == [0, 1, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result.history[2].items())
    out = model.eval()(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_bad_training_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="nonfinite='ignore'; expected 'stop' or 'skip'"):
        TrainConfig(nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown training options \\['lamda'\\]"):
        TrainConfig.from_dict({"lamda": 1.0})
    same = {"epochs": 3, "lam": 0.1, "lr": 0.05, "fade": 0.6}  # the others: their defaults
    assert TrainConfig.differences(same, TrainConfig(epochs=3, lam=0.1, lr=0.05)) == []
    # a checkpoint written before --fade existed was not faded: it does not resume with the
    # default fade, and the error names the option
    old = {"epochs": 3, "lam": 0.1, "lr": 0.05}
    assert TrainConfig.from_saved(old).fade == 0.0
    assert TrainConfig.differences(old, TrainConfig(epochs=3, lam=0.1, lr=0.05)) == [
        "fade=0.0 (now 0.6)"
    ]
    assert TrainConfig.differences(old, TrainConfig(epochs=3, lam=0.1, lr=0.05, fade=0.0)) == []
    assert "cannot be read" in TrainConfig.differences({"epochs": "x"}, CFG)[0]


def test_dataloader_with_distributed_sampler_is_told_the_epoch(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,)))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    seen: list[int] = []
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "epochs": 2})
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    train(
        model,
        blocks,
        loader,
        None,
        cfg,
        progress=False,
        on_epoch=lambda r: seen.append(sampler.epoch),
    )
    assert seen == [0, 1]


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


def test_the_penalty_options_reach_the_regulariser() -> None:
    from lacoot.train import _penalty_on

    model = residual_mlp(units=2)
    blocks = lacoot.find_blocks(model, _data()[0][0][:2])
    for flag in (False, True):
        cfg = TrainConfig(stop_input_grad=flag, relative=flag, lam=0.5, target_macs=1.0)
        reg = _penalty_on(model, blocks, None, cfg, 4)
        assert (reg.stop_input_grad, reg.relative, reg.lam) == (flag, flag, 0.5)
        reg.close()


def test_lambda_warmup_ramps_linearly_per_step(monkeypatch) -> None:
    from lacoot.regularizer import MSWRegularizer
    from lacoot.train import lam_at

    cfg = TrainConfig(lam=2.0, lam_warmup=1.5, target_macs=1.0)
    assert [lam_at(cfg, s, 4) for s in range(8)] == pytest.approx(
        [2.0 * (s + 1) / 6 for s in range(6)] + [2.0, 2.0]
    )  # closed form: 1.5 epochs of 4 steps
    assert lam_at(TrainConfig(lam=2.0), 0, 4) == 2.0  # no warm-up: the full weight at once
    seen: list[float] = []
    penalty = MSWRegularizer.penalty
    monkeypatch.setattr(MSWRegularizer, "penalty", lambda self: seen.append(self.lam)
                        or penalty(self))  # fmt: skip
    model, blocks = tiny_model()
    train(model, blocks, tiny_loader(), None, TrainConfig(**{**CFG.to_dict(), "lam": 0.4,
          "lam_warmup": 1.0}), progress=False)  # fmt: skip
    assert seen == pytest.approx([0.4 * (s + 1) / 6 for s in range(6)] + [0.4] * 12)
    with pytest.raises(ValueError, match="lam_warmup=-1"):
        TrainConfig(lam_warmup=-1)


def test_lazy_penalty_every_n_steps_weighted_n_times(monkeypatch) -> None:
    from lacoot.regularizer import MSWRegularizer
    from lacoot.train import lam_at

    seen: list[float] = []
    penalty = MSWRegularizer.penalty
    monkeypatch.setattr(MSWRegularizer, "penalty", lambda self: seen.append(self.lam)
                        or penalty(self))  # fmt: skip
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "lam": 0.4, "lam_warmup": 1.0, "penalty_every": 4})
    result = train(model, blocks, tiny_loader(), None, cfg, progress=False)
    steps = len(tiny_loader())
    total = cfg.epochs * steps
    assert seen == pytest.approx([4 * lam_at(cfg, s, steps) for s in range(0, total, 4)])
    assert all(math.isfinite(v) for row in result.history for k, v in row.items()
               if k.startswith("msw/"))  # fmt: skip  # averaged over the penalised steps only
    reg = MSWRegularizer(model, blocks, lam=1.0)
    model(next(iter(tiny_loader()))[0])
    reg.discard()  # a skipped step: the captured features are dropped
    with pytest.raises(RuntimeError, match="no hooked block ran"):
        reg.penalty()
    reg.close()
    with pytest.raises(ValueError, match="penalty_every=0"):
        TrainConfig(penalty_every=0)


def test_escalate_needs_blocks_meant_to_go_and_logs_their_weights(tmp_path) -> None:
    with pytest.raises(ValueError, match="escalate=0.001 pulls harder .* every block is "):
        TrainConfig(escalate=1e-3, target_macs=1.0)
    with pytest.raises(ValueError, match="escalate=-1"):
        TrainConfig(escalate=-1, target_blocks=1)
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "penalize": ("layer1.*",), "escalate": 0.0})
    result = train(model, blocks, tiny_loader(), None, cfg, progress=False)
    weights = {k: v for k, v in result.history[-1].items() if k.startswith("weight/")}
    assert sorted(weights) == ["weight/layer1.0", "weight/layer1.1", "weight/layer1.2"]
    # closed form: x 2 per epoch of 6 steps (influence > 0 = TOL), capped at step t by the peak
    # lr over the lr of the step (cosine schedule, 18 steps), so lr x weight <= peak lr
    w = 1.0
    for t in range(18):
        w = min(w * 2 ** (1 / 6), min(64.0, 2 / (1 + math.cos(math.pi * t / 18))))
    assert weights["weight/layer1.0"] == pytest.approx(w) and w > 4


def test_cosine_distance_budget_run_trains_and_is_recorded(tmp_path) -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    loader = _data()
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    cfg = TrainConfig(epochs=2, lam=1.0, distance="cosine", target_blocks=2, target_warmup=1,
                      schedule="constant", lr=0.01)  # fmt: skip
    result = train(model, blocks, loader, loader[:2], cfg, out_dir=tmp_path, device="cpu",
                   progress=False)  # fmt: skip
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["train_config"]["distance"] == "cosine"
    last = result.history[-1]
    assert sorted(k for k in last if k.startswith("msw/")) == sorted(
        f"msw/{t}" for t in state["regularizer"]["targets"]
    )
    assert all(0 <= last[k] <= 2 for k in last if k.startswith("msw/"))  # 1 - cos in [0, 2]


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


def test_channels_last_trains_the_same_model() -> None:
    runs = {}
    for fmt in (False, True):
        model, blocks = tiny_model()
        cfg = TrainConfig(**{**CFG.to_dict(), "epochs": 1, "channels_last": fmt})
        runs[fmt] = (train(model, blocks, tiny_loader(), None, cfg, device="cpu",
                           progress=False).history[-1], model)  # fmt: skip
    assert runs[True][1].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert runs[True][0]["train_loss"] == pytest.approx(runs[False][0]["train_loss"], rel=1e-4)
    for a, b in zip(runs[False][1].parameters(), runs[True][1].parameters(), strict=True):
        assert float((a - b).detach().abs().max()) < 0.02  # rounding, amplified by 6 steps


def test_the_penalty_keeps_working_under_torch_compile() -> None:
    torch.manual_seed(0)
    model, loader = residual_mlp(), _data(64)
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    cfg = TrainConfig(epochs=2, lam=0.5, compile=True, target_blocks=2, target_warmup=1,
                      schedule="constant", lr=0.05)  # fmt: skip
    result = train(model, blocks, loader, loader, cfg, device="cpu", progress=False)
    first, second = result.history
    assert all(first[f"msw/{b.name}"] > 0 for b in blocks)  # every block's hooks ran
    assert sorted(k for k in second if k.startswith("msw/")) == sorted(
        f"msw/{n}" for n in result.penalized
    )  # the targets' new hooks ran in the recompiled model
    assert len(result.penalized) == 2 and second["train_penalty"] > 0


def test_target_keep_deep_reaches_the_budget() -> None:
    """``target_keep_deep`` reorders the budget's ranking (the choice never empties the two
    deepest stages short of every block)."""
    from lacoot.collapse import keep_deep_order
    from lacoot.train import choose_targets

    model, blocks = tiny_model()

    def chosen(k: int, keep: bool) -> list[str]:
        cfg = TrainConfig(**{**CFG.to_dict(), "target_macs": None, "target_blocks": k,
                             "target_keep_deep": keep})  # fmt: skip
        return choose_targets(model, blocks, tiny_loader(), cfg, "cpu")

    order = chosen(len(blocks), False)
    kept = chosen(len(blocks) - 1, True)
    assert kept == keep_deep_order(blocks, order)[:-1]
    shapes = sorted({b.shape for b in blocks}, key=lambda s: max(b.order for b in blocks
                                                                  if b.shape == s))  # fmt: skip
    deep = {b.name for b in blocks if b.shape in shapes[-2:]}
    assert not deep <= set(kept)
