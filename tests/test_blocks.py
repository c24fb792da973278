"""Block discovery and removal on CIFAR ResNets, a transformer encoder and a residual MLP."""

from __future__ import annotations

import pytest
import torch
from _nets import EncoderClassifier, ResidualUnit, residual_mlp
from torch import nn

import lacoot
from lacoot.blocks import (
    BlockDiscoveryError,
    CollapsedBlock,
    find_blocks,
    identity_blocks,
    remove_blocks,
)
from lacoot.models import create


def _cases():
    return {
        "resnet18-cifar": (
            lambda: create("resnet18", num_classes=10, stem="cifar"),
            torch.randn(2, 3, 32, 32),
            ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"],
        ),
        "resnet20": (
            lambda: create("resnet20", num_classes=10),
            torch.randn(2, 3, 32, 32),
            ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"],
        ),
        "transformer-encoder": (
            EncoderClassifier,
            torch.randn(2, 7, 8),
            [f"encoder.layers.{i}" for i in range(4)],
        ),
        "residual-mlp": (residual_mlp, torch.randn(4, 6), ["1", "2", "3", "4"]),
    }


CASES = _cases()


@pytest.mark.parametrize("case", list(CASES))
def test_default_blocks(case: str) -> None:
    build, x, expected = CASES[case]
    torch.manual_seed(0)
    model = build()
    blocks = find_blocks(model, x)
    assert [b.name for b in blocks] == expected
    for b in blocks:
        assert b.params == sum(p.numel() for p in model.get_submodule(b.name).parameters())
        assert b.macs > 0
    assert [b.order for b in blocks] == sorted(b.order for b in blocks)


@pytest.mark.parametrize("case", list(CASES))
def test_removed_model_equals_identity_model(case: str) -> None:
    build, x, _ = CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    before = model(x)
    names = [b.name for b in find_blocks(model, x)][1::2]
    removed = remove_blocks(model, names).eval()
    replaced = identity_blocks(model, names).eval()
    out = removed(x)
    assert out.shape == before.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, replaced(x), rtol=0, atol=0)
    # the original is untouched
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert lacoot.count_params(removed) < lacoot.count_params(model)
    state = removed.state_dict()
    assert len(state) < len(model.state_dict())


def test_state_dict_loses_removed_weights() -> None:
    model = residual_mlp()
    removed = remove_blocks(model, ["2"])
    # Sequential renumbers: 4 units become 3, the head shifts from index 5 to 4.
    assert [k for k in removed.state_dict() if k.endswith("fc1.weight")] == [
        "1.fc1.weight",
        "2.fc1.weight",
        "3.fc1.weight",
    ]
    expected = lacoot.count_params(model) - sum(p.numel() for p in model[2].parameters())
    assert lacoot.count_params(removed) == expected


def test_non_container_block_becomes_identity() -> None:
    model = create("resnet18", num_classes=10, stem="cifar")
    removed = remove_blocks(model, ["layer4.1"])
    assert isinstance(removed.layer4, nn.Sequential) and len(removed.layer4) == 1
    enc = EncoderClassifier()
    r = remove_blocks(enc, ["encoder.layers.0"])
    assert len(r.encoder.layers) == 3


def test_collapsed_block_passes_its_tensor_and_kwargs() -> None:
    x = torch.randn(2, 3)
    assert CollapsedBlock()(x, src_mask=None, is_causal=False) is x
    with pytest.raises(TypeError, match="one tensor"):
        CollapsedBlock()(x, x)


def test_include_exclude_patterns() -> None:
    model = create("resnet18", num_classes=10, stem="cifar")
    x = torch.randn(2, 3, 32, 32)
    names = [b.name for b in find_blocks(model, x, include="layer*.1")]
    assert names == ["layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert [b.name for b in find_blocks(model, x, include="layer1.**.bn2")] == [
        "layer1.0.bn2",
        "layer1.1.bn2",
    ]
    names = [b.name for b in find_blocks(model, x, exclude=["layer1.*"])]
    assert names == ["layer2.1", "layer3.1", "layer4.1"]
    # include may pick single layers too
    names = [b.name for b in find_blocks(model, x, include="layer1.0.bn*")]
    assert names == ["layer1.0.bn1", "layer1.0.bn2"]
    with pytest.raises(BlockDiscoveryError, match="layer2.0"):
        find_blocks(model, x, include="layer2.0")
    with pytest.raises(BlockDiscoveryError, match="nested"):
        find_blocks(model, x, include=["layer1.0", "layer1.0.bn1"])


class Declares(nn.Module):
    def __init__(self, declared: list[str]) -> None:
        super().__init__()
        self.body = residual_mlp()
        self.declared = declared

    def lacoot_blocks(self) -> list[str]:
        return self.declared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_model_declares_its_blocks() -> None:
    x = torch.randn(4, 6)
    model = Declares(["body.1.fc1", "body.3"])
    assert [b.name for b in find_blocks(model, x)] == ["body.1.fc1", "body.3"]
    assert [b.name for b in find_blocks(model, x, use_declared=False)] == [
        f"body.{i}" for i in range(1, 5)
    ]
    with pytest.raises(BlockDiscoveryError, match="body.0.*changes shape"):
        find_blocks(Declares(["body.0"]), x)
    with pytest.raises(BlockDiscoveryError, match="not a sub-module"):
        find_blocks(Declares(["body.nope"]), x)


class SharedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.unit = ResidualUnit(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.unit(self.unit(x)))


class TupleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.fc(x), x


class ReturnsTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = TupleBlock()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(x)[0])


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)), "changes shape"),
        (SharedTwice(), "called 2 times"),
        (ReturnsTuple(), "returns tuple"),
    ],
)
def test_no_collapsible_block_is_explained(model: nn.Module, reason: str) -> None:
    with pytest.raises(BlockDiscoveryError, match=reason):
        find_blocks(model, torch.randn(3, 4))


def test_trace_restores_training_mode_and_leaves_no_hooks() -> None:
    model = create("resnet20", num_classes=10).train()
    find_blocks(model, torch.randn(2, 3, 32, 32))
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_remove_blocks_rejects_bad_names() -> None:
    model = residual_mlp()
    with pytest.raises(ValueError, match="'9' is not a sub-module"):
        remove_blocks(model, ["9"])
    with pytest.raises(ValueError, match="repeat"):
        remove_blocks(model, ["1", "1"])
    with pytest.raises(ValueError, match="nested"):
        remove_blocks(model, ["1", "1.fc1"])
