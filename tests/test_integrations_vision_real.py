"""The blocks lacoot finds by default in the real torchvision and timm models (random weights),
when those libraries import here. They do not beside the CPU build of torch 2.13 this project
tests on (their builds for it need CUDA); with torch 2.14.1 and torchvision 0.29.1 they do::

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tv/bin/pip install --no-deps timm && /tmp/tv/bin/pip install numpy pytest safetensors \\
        huggingface_hub pyyaml && /tmp/tv/bin/pip install --no-deps -e .
    /tmp/tv/bin/python -m pytest tests/test_integrations_vision_real.py

Expected: every residual block with an identity shortcut, nothing else (no batch norm, no
activation, no squeeze-excitation gate), each saving MACs.
"""

from __future__ import annotations

import pytest
import torch

import lacoot


def _library(name: str):
    try:
        return __import__(name)
    except Exception as exc:  # torchvision's CUDA build raises RuntimeError on a CPU torch
        pytest.skip(f"{name} does not import here: {type(exc).__name__}: {exc}")


# (builder, blocks expected, class of every block)
TORCHVISION = {
    "resnet18": (5, {"BasicBlock"}),
    "resnet50": (12, {"Bottleneck"}),
    "mobilenet_v2": (10, {"InvertedResidual"}),
    "efficientnet_b0": (9, {"MBConv"}),
    "convnext_tiny": (18, {"CNBlock"}),
    "vit_b_16": (12, {"EncoderBlock"}),
    "swin_t": (12, {"SwinTransformerBlock"}),
}
TIMM = {
    "resnet18": (5, {"BasicBlock"}),
    "resnet50": (12, {"Bottleneck"}),
    "mobilenetv2_100": (10, {"InvertedResidual"}),
    "efficientnet_b0": (9, {"InvertedResidual"}),
    "convnext_tiny": (18, {"ConvNeXtBlock"}),
    "vit_tiny_patch16_224": (12, {"Block"}),
    "swin_tiny_patch4_window7_224": (12, {"SwinTransformerBlock"}),
}
X = torch.randn(1, 3, 224, 224)


def _check(model: torch.nn.Module, count: int, kinds: set[str]) -> None:
    blocks = lacoot.find_blocks(model.eval(), X)
    assert {b.kind for b in blocks} == kinds, [(b.name, b.kind) for b in blocks]
    assert len(blocks) == count, [b.name for b in blocks]
    assert all(b.macs > 0 for b in blocks)


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_blocks(name: str) -> None:
    tv = _library("torchvision")
    _check(getattr(tv.models, name)(weights=None), *TORCHVISION[name])


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_blocks(name: str) -> None:
    timm = _library("timm")
    _check(timm.create_model(name, pretrained=False), *TIMM[name])
