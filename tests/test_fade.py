"""Fading blocks out during training (lacoot.fade, TrainConfig.fade)."""

from __future__ import annotations

import pytest
import torch
from _faulty import CFG, tiny_loader, tiny_model
from _nets import _data, residual_mlp

import lacoot
from lacoot.checkpoint import faded_blocks
from lacoot.collapse import SweepPoint
from lacoot.fade import Fade
from lacoot.metrics import Memoized, top1_accuracy
from lacoot.pipeline import _reference
from lacoot.regularizer import MSWRegularizer
from lacoot.train import TrainConfig, fade_at, load_checkpoint, train


def _mlp() -> tuple[torch.nn.Module, list[lacoot.Block], torch.Tensor]:
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    x = torch.randn(8, 6)
    return model, lacoot.find_blocks(model, x[:2]), x


def test_fade_blends_each_output_towards_its_input() -> None:
    model, blocks, x = _mlp()
    with torch.no_grad():
        h = model[0](x)
        y = model[1](h)
        with Fade(model, [blocks[0]], alpha=0.25):
            blended = model[1](h)
        assert torch.allclose(blended, y + 0.25 * (h - y), rtol=0, atol=1e-6)  # closed form
        assert torch.equal(model[1](h), y)  # closed: the block's own output again
        with Fade(model, [blocks[0]], alpha=0.0):
            assert torch.equal(model[1](h), y)


def test_a_fully_faded_model_is_the_collapsed_model() -> None:
    model, blocks, x = _mlp()
    names = [blocks[1].name, blocks[3].name]
    with torch.no_grad(), Fade(model, names, alpha=1.0):
        faded = model(x)
    assert torch.equal(faded, lacoot.remove_blocks(model, names)(x))  # exact, not close


def test_a_penalty_hooked_first_sees_the_blocks_own_outputs() -> None:
    model, blocks, x = _mlp()
    last = blocks[-1:]  # its input does not depend on its own fade
    with torch.no_grad(), MSWRegularizer(model, last, distance="cosine") as reg:
        model(x)
        plain = float(reg.penalty())
        with Fade(model, last, alpha=1.0):
            model(x)
            assert float(reg.penalty()) == pytest.approx(plain, rel=1e-6) and plain > 0


def test_fade_rejects_bad_blends_and_no_blocks() -> None:
    model, blocks, _ = _mlp()
    with pytest.raises(ValueError, match=r"alpha=1.5; expected a blend in \[0, 1\]"):
        Fade(model, blocks, alpha=1.5)
    with pytest.raises(ValueError, match="no blocks given"):
        Fade(model, [])


def test_fade_schedule_rises_over_the_first_half_of_its_span_then_holds() -> None:
    cfg = TrainConfig(epochs=5, fade=0.4, target_blocks=1)  # 20 steps: span 8, ramp 4
    assert [fade_at(cfg, s, 4) for s in range(20)] == pytest.approx(
        [0.0] * 12 + [0.25, 0.5, 0.75] + [1.0] * 5
    )
    assert all(fade_at(TrainConfig(fade=0.0), s, 4) == 0.0 for s in range(8))
    # the default (a budget's targets faded over the last 60%) yields to a run without a budget
    assert TrainConfig().fade == 0.6 and TrainConfig(target_macs=1.0).fade == 0.0
    with pytest.raises(ValueError, match="fade=0.4 fades out the blocks meant to go"):
        TrainConfig(fade=0.4, target_macs=1.0)
    with pytest.raises(ValueError, match="fade=1"):
        TrainConfig(fade=1, target_blocks=1)


def test_a_faded_budget_run_ends_without_its_targets_and_records_them(tmp_path) -> None:
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    loader = _data()
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    cfg = TrainConfig(epochs=4, lam=1.0, target_blocks=2, target_warmup=1, fade=0.5,
                      schedule="constant", lr=0.01)  # fmt: skip
    result = train(model, blocks, loader, loader[:2], cfg, out_dir=tmp_path, device="cpu",
                   progress=False)  # fmt: skip
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    targets = state["regularizer"]["targets"]
    assert result.faded == targets == result.penalized == state["faded"] == faded_blocks(state)
    assert [row.get("fade") for row in result.history] == [None, None, 1.0, 1.0]
    old = {k: v for k, v in state.items() if k != "faded"}  # written before "faded" existed
    assert faded_blocks(old) == targets
    old["history"] = [row | {"fade": 0.5} for row in old["history"]]  # still blending: not gone
    assert faded_blocks(old) == []
    assert faded_blocks({"history": [], "regularizer": {"targets": None}}) == []
    x = torch.cat([b[0] for b in loader[:2]])
    with torch.no_grad():
        collapsed = lacoot.remove_blocks(model, targets)
        correct = sum(int((collapsed(b[0]).argmax(1) == b[1]).sum()) for b in loader[:2])
    assert 100.0 * correct / len(x) == pytest.approx(result.history[-1]["val_accuracy"])
    # a max_drop budget is measured from the better of the full depth and the model trained last
    memo = Memoized(top1_accuracy)
    for full, whose in ((0.0, "model without the faded blocks"), (100.0, "full model")):
        point = SweepPoint(0, (), full, full, 0, 0)
        ref = _reference(model, targets, loader[:2], point, memo)
        assert ref["model"] == whose and ref["faded"] == targets
        assert ref["faded_val_accuracy"] == pytest.approx(result.history[-1]["val_accuracy"])
        assert ref["val_accuracy"] == max(full, ref["faded_val_accuracy"])


def test_fade_on_named_blocks() -> None:
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "lam": 0.1, "penalize": ("layer1.*",), "fade": 0.5})
    result = train(model, blocks, tiny_loader(), None, cfg, progress=False)
    assert result.faded == ["layer1.0", "layer1.1", "layer1.2"] == result.penalized
    with pytest.raises(ValueError, match="lam=0 trains without the penalty"):  # vanilla: no fade
        TrainConfig(**{**CFG.to_dict(), "lam": 0.0, "penalize": ("layer1.*",), "fade": 0.5})


def test_a_compiled_model_does_not_recompile_for_every_blend() -> None:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, blocks, x = _mlp()
    fade = Fade(model, blocks[:2])
    compiled = torch.compile(model, backend="eager")
    for alpha in [i / 10 for i in range(11)]:  # the ramp of a training, coarsely
        fade.alpha = alpha
        out = compiled(x)
        with torch.no_grad():
            assert torch.allclose(out, model(x), rtol=0, atol=1e-6)
    # alpha 0 (no blend), the first blend, the blend as a symbolic float, alpha 1 (identity)
    assert counters["stats"]["unique_graphs"] <= 4
    fade.close()
    torch._dynamo.reset()
