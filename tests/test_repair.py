"""Training-free repair: batch-norm re-estimation and closed-form linear patches."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from _nets import EncoderClassifier, residual_mlp
from torch import nn

from lacoot.blocks import remove_blocks
from lacoot.models import create
from lacoot.profile import count_macs, count_params
from lacoot.repair import REPAIRS, LinearPatch, linear_patch, recalibrate_bn, repair


def _loader(x: torch.Tensor, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch], torch.zeros(len(x[i : i + batch]))) for i in range(0, len(x), batch)]


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of ``(N, C, *)``."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(1).float(), flat.var(1, unbiased=True).float()


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), k


class ConvUnit(nn.Module):
    """Residual unit with batch norm: ``x + bn(conv(relu(x)))`` on ``(B, C, H, W)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(torch.relu(x)))


def _bn_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        ConvUnit(8),
        ConvUnit(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _warm_up(model: nn.Module, x: torch.Tensor, steps: int = 3) -> None:
    """Train-mode forwards so running statistics are not the defaults; ends in eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(x)
    model.eval()


# --------------------------------------------------------------------------- recalibrate_bn


def test_recalibrate_bn_gives_exact_data_statistics_and_changes_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Dropout(0.5), nn.BatchNorm2d(3, momentum=0.3), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
    )
    _warm_up(model, torch.randn(8, 3, 5, 5) * 3 + 1)
    model.train()
    model[3].eval()  # mixed modes must survive
    modes, state = _modes(model), _state(model)
    x = torch.randn(12, 3, 5, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 2.0
    new = recalibrate_bn(model, _loader(x, 4), n_samples=10)  # 4 + 4 + 2 samples
    mean, var = _channel_stats(x[:10])
    torch.testing.assert_close(new[1].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new[1].running_var, var, atol=1e-5, rtol=1e-5)
    assert int(new[1].num_batches_tracked) == 3 and int(new[3].num_batches_tracked) == 3
    assert not torch.equal(new[3].running_mean, model[3].running_mean)
    assert new[1].momentum == 0.3 and new[3].momentum == 0.1
    for (name, p), q in zip(model.named_parameters(), new.parameters(), strict=True):
        assert torch.equal(p, q), name
    _assert_state_equal(model, state)
    assert _modes(model) == modes and _modes(new) == modes


def test_recalibrate_bn_reads_no_batch_beyond_n_samples():
    x = torch.randn(8, 2)

    def loader():
        yield x[:4], None
        yield x[4:], None
        raise AssertionError("a batch past n_samples was requested")

    new = recalibrate_bn(nn.Sequential(nn.BatchNorm1d(2)), loader(), n_samples=7)
    mean, var = _channel_stats(x[:7])
    torch.testing.assert_close(new[0].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new[0].running_var, var, atol=1e-5, rtol=1e-5)
    assert int(new[0].num_batches_tracked) == 2


@pytest.mark.parametrize(
    "bn, shape",
    [
        (nn.BatchNorm1d(3), (9, 3)),
        (nn.BatchNorm1d(3), (9, 3, 4)),
        (nn.BatchNorm3d(3), (9, 3, 2, 2, 2)),
        (nn.SyncBatchNorm(3), (9, 3, 4, 4)),
    ],
)
def test_recalibrate_bn_covers_every_batchnorm_kind(bn, shape):
    torch.manual_seed(1)
    x = torch.randn(*shape) * 2 - 1
    new = recalibrate_bn(nn.Sequential(bn), _loader(x, 3), n_samples=9)
    mean, var = _channel_stats(x)
    torch.testing.assert_close(new[0].running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new[0].running_var, var, atol=1e-5, rtol=1e-5)


def test_recalibrate_bn_without_batchnorm_is_a_plain_copy():
    model = residual_mlp()
    new = recalibrate_bn(model, [], n_samples=4)
    assert new is not model
    _assert_state_equal(new, model.state_dict())


@pytest.mark.parametrize("n", [0, -3])
def test_recalibrate_bn_rejects_bad_n_samples(n):
    with pytest.raises(ValueError, match=f"n_samples={n}"):
        recalibrate_bn(_bn_net(), _loader(torch.randn(4, 1, 6, 6), 2), n_samples=n)


def test_recalibrate_bn_rejects_empty_loader():
    with pytest.raises(ValueError, match="no sample"):
        recalibrate_bn(_bn_net(), [], n_samples=4)


def test_recalibrate_bn_repairs_a_collapsed_resnet20():
    torch.manual_seed(0)
    model = create("resnet20", num_classes=10, in_channels=1)
    _warm_up(model, torch.randn(8, 1, 28, 28) * 2 + 0.5)
    collapsed = remove_blocks(model, ["layer1.1"])
    x = torch.randn(16, 1, 28, 28)
    new = recalibrate_bn(collapsed, _loader(x, 8), n_samples=16)
    with torch.no_grad():
        out = new(x[:4])
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert not torch.allclose(new.layer2[0].bn1.running_mean, collapsed.layer2[0].bn1.running_mean)
    assert not torch.allclose(new.bn1.running_var, collapsed.bn1.running_var)


# --------------------------------------------------------------------------- linear_patch


class Affine(nn.Module):
    """An affine block with a skip: ``x + lin(x)`` on ``(..., D)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin(x)


class ConvAffine(nn.Module):
    """A 1x1-convolution block with a skip on ``(B, C, H, W)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_linear_patch_reproduces_an_affine_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), Affine(16), nn.Linear(16, 3)).train()
    state = _state(model)
    patched = linear_patch(model, ["1"], _loader(torch.randn(64, 6), 16), n_samples=64, ridge=0)
    assert isinstance(patched[1], LinearPatch) and isinstance(patched[1].map, nn.Linear)
    x = torch.randn(32, 6)
    with torch.no_grad():
        torch.testing.assert_close(patched(x), model(x), atol=1e-5, rtol=1e-5)
    _assert_state_equal(model, state)
    assert model.training and patched.training


def test_linear_patch_reproduces_a_conv_block_and_is_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ConvAffine(8), nn.Conv2d(8, 2, 1)).eval()
    x = torch.randn(8, 3, 6, 6)
    patched = linear_patch(model, ["1"], _loader(x, 4), n_samples=8, ridge=0)
    assert isinstance(patched[1].map, nn.Conv2d)
    held_out = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(patched(held_out), model(held_out), atol=1e-4, rtol=1e-4)
    removed = remove_blocks(model, ["1"])
    assert count_params(patched) == count_params(removed) + 8 * 8 + 8
    assert count_macs(patched, held_out) == count_macs(removed, held_out) + 4 * 6 * 6 * 8 * 8


def test_linear_patch_state_dict_round_trip():
    torch.manual_seed(0)
    model = residual_mlp()
    patched = linear_patch(model, ["2"], _loader(torch.randn(32, 6), 8))
    assert "2.map.weight" in patched.state_dict() and "2.fc1.weight" not in patched.state_dict()
    buffer = io.BytesIO()
    torch.save(patched.state_dict(), buffer)
    buffer.seek(0)
    other = copy.deepcopy(patched)
    nn.init.zeros_(other[2].map.weight)
    other.load_state_dict(torch.load(buffer))
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), patched.eval()(x))


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean())


def test_progressive_patches_beat_plain_removal_and_follow_execution_order():
    torch.manual_seed(0)
    model = residual_mlp(units=4)
    with torch.no_grad():
        for unit in model[1:5]:
            unit.fc2.weight.mul_(3.0)  # make the units far from identity
    calib, held_out = torch.randn(512, 6), torch.randn(256, 6)
    patched = linear_patch(model, ["3", "2"], _loader(calib, 64), n_samples=512)
    in_order = linear_patch(model, ["2", "3"], _loader(calib, 64), n_samples=512)
    removed = remove_blocks(model, ["2", "3"])
    with torch.no_grad():
        target = model(held_out)
        assert _mse(patched(held_out), target) < 0.5 * _mse(removed(held_out), target)
        torch.testing.assert_close(patched(held_out), in_order(held_out))


def test_linear_patch_on_a_transformer_layer_passes_through_masks():
    torch.manual_seed(0)
    model = EncoderClassifier().eval()
    calib, held_out = torch.randn(64, 5, 8), torch.randn(16, 5, 8)
    patched = linear_patch(model, ["encoder.layers.1"], _loader(calib, 16), n_samples=64)
    removed = remove_blocks(model, ["encoder.layers.1"])
    with torch.no_grad():
        target = model(held_out)
        assert _mse(patched(held_out), target) < _mse(removed(held_out), target)


def test_linear_patch_ignores_extra_arguments():
    patch = LinearPatch(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(patch(x, mask=None), patch.map(x))
    torch.testing.assert_close(patch(x, None, is_causal=False), patch.map(x))
    torch.testing.assert_close(patch(x, torch.ones(3, 4)), patch.map(x))  # x flows, mask ignored
    with pytest.raises(TypeError, match="given none"):
        patch(None)


def test_linear_patch_errors():
    model = nn.Sequential(nn.Linear(6, 16), residual_mlp(16, 16, 1, 16)[1], nn.Linear(16, 8))
    data = _loader(torch.randn(8, 6), 4)
    with pytest.raises(ValueError, match="'nope'"):
        linear_patch(model, ["nope"], data)
    with pytest.raises(ValueError, match="shape"):
        linear_patch(model, ["2"], data)
    with pytest.raises(ValueError, match="ridge=-1"):
        linear_patch(model, ["1"], data, ridge=-1.0)
    with pytest.raises(ValueError, match="n_samples=0"):
        linear_patch(model, ["1"], data, n_samples=0)
    with pytest.raises(ValueError, match="no sample"):
        linear_patch(model, ["1"], [])


# --------------------------------------------------------------------------- repair


def test_repair_methods():
    torch.manual_seed(0)
    model = _bn_net()
    _warm_up(model, torch.randn(8, 1, 6, 6) * 2)
    state = _state(model)
    data = _loader(torch.randn(16, 1, 6, 6), 8)
    x = torch.randn(4, 1, 6, 6)
    none = repair(model, ["2"], method="none")
    with torch.no_grad():
        torch.testing.assert_close(none(x), remove_blocks(model, ["2"])(x))
        for method in ("bn", "linear"):
            out = repair(model, ["2"], data, method=method, n_samples=16)(x)
            assert out.shape == (4, 3) and torch.isfinite(out).all()
    assert isinstance(repair(model, ["2"], data, method="linear")[2], LinearPatch)
    full = repair(model, [], data, method="bn")  # no block removed: the full model re-estimated
    assert not torch.equal(full[1].running_mean, model[1].running_mean)
    _assert_state_equal(model, state)
    assert REPAIRS == ("none", "bn", "linear", "fused")


def test_repair_errors():
    model = _bn_net()
    with pytest.raises(ValueError, match="'foo'"):
        repair(model, ["2"], [], method="foo")
    with pytest.raises(ValueError, match="'bn'.*loader"):
        repair(model, ["2"], method="bn")
    with pytest.raises(ValueError, match="'linear'.*loader"):
        repair(model, ["2"], None, method="linear")


def test_linear_repair_puts_no_patch_in_place_of_a_faded_block(tmp_path):
    import lacoot

    spec = {"name": "resnet20", "num_classes": 3, "in_channels": 1,
            "kwargs": {"widths": [4, 4, 8]}}  # fmt: skip
    torch.manual_seed(0)
    model = create(spec["name"], num_classes=3, in_channels=1, **spec["kwargs"]).eval()
    x = torch.randn(16, 1, 8, 8)
    loader = _loader(x, 8)
    faded = ["layer1.1"]
    # only the faded block removed: no patch at all, the plain collapse (batch norm re-estimated)
    only = repair(model, faded, loader, "linear", 16, identities=faded).eval()
    assert not any(isinstance(m, LinearPatch) for m in only.modules())
    with torch.no_grad():
        torch.testing.assert_close(only(x), repair(model, faded, loader, "bn", 16).eval()(x))
    assert count_macs(only, x[:1]) == count_macs(remove_blocks(model, faded), x[:1])
    # with another block: that one patched, fitted on the model without the faded one
    both = repair(model, ["layer1.1", "layer3.2"], loader, "linear", 16, identities=faded).eval()
    patches = [n for n, m in both.named_modules() if isinstance(m, LinearPatch)]
    assert patches == ["layer3.2"]
    base = lacoot.blocks.identity_blocks(model, faded)
    expected = recalibrate_bn(linear_patch(base, ["layer3.2"], loader, 16), loader, 16).eval()
    with torch.no_grad():
        torch.testing.assert_close(both(x), expected(x))
    lacoot.save_model(tmp_path / "s.pt", both, spec, ["layer1.1", "layer3.2"])  # reloads alike
    with torch.no_grad():
        torch.testing.assert_close(lacoot.load(tmp_path / "s.pt").eval()(x), both(x))
