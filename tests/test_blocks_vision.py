"""Blocks found by default in the patterns of torchvision and timm models (reproduced in
``_vision_nets`` without either library): the blocks a user expects, and no module whose removal
saves no multiply-accumulate."""

from __future__ import annotations

import pytest
import torch
from _vision_nets import TinyConvNeXt, TinyEfficientNet, TVResNet, TVViT

import lacoot
from lacoot.blocks import find_blocks, remove_blocks

X = torch.randn(2, 3, 16, 16)

EXPECTED = {
    "resnet (in-place add and ReLU)": (
        TVResNet, ["layer1.0"] + [f"layer{i}.1" for i in range(1, 5)]),
    "efficientnet (BN-act, SE, skip)": (TinyEfficientNet, ["blocks.0.0", "blocks.1.1", "blocks.2.1",
                                                          "blocks.2.2"]),
    "vit (encoder with position embedding and final norm)": (
        TVViT, [f"encoder.layers.{i}" for i in range(4)]),
    "convnext (layer scale)": (TinyConvNeXt, [f"stages.0.{i}" for i in range(3)]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_the_blocks_a_user_expects(case: str) -> None:
    torch.manual_seed(0)
    cls, names = EXPECTED[case]
    model = cls().eval()
    blocks = find_blocks(model, X)
    assert [b.name for b in blocks] == names
    assert all(b.macs > 0 for b in blocks)  # each removal saves MACs
    full = lacoot.count_macs(model, X[:1])
    for b in blocks:  # removing one block saves its MACs and computes identity in its place
        shallow = remove_blocks(model, [b.name], X)
        assert lacoot.count_macs(shallow, X[:1]) == pytest.approx(full - b.macs, rel=0.02)


def test_the_in_place_residual_block_is_not_taken_for_a_chain() -> None:
    torch.manual_seed(0)
    model = TVResNet().eval()
    blocks = find_blocks(model, X)
    shallow = remove_blocks(model, ["layer1.1"], X)
    with torch.no_grad():
        want = model.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            model.layer4(model.layer3(model.layer2(model.layer1[0](
                model.relu(model.bn1(model.conv1(X))))))), 1), 1))  # fmt: skip
        torch.testing.assert_close(shallow(X), want)
    assert "layer1.1" in {b.name for b in blocks}


def test_zero_mac_modules_are_explained_and_can_still_be_named() -> None:
    """BN with its activation and SE gates are passed over by default with the reason; include=
    still takes them."""
    torch.manual_seed(0)
    model = TinyEfficientNet().eval()
    found = find_blocks(model, X, include=["blocks.1.0.bn1", "blocks.1.0.se"])
    assert [b.name for b in found] == ["blocks.1.0.bn1", "blocks.1.0.se"]
    with pytest.raises(lacoot.BlockDiscoveryError, match="saves nothing"):
        find_blocks(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), TinyBN(4)), X)


class TinyBN(torch.nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        from _vision_nets import BatchNormAct2d

        self.bn = BatchNormAct2d(c)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.scale
