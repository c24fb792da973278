"""``--model`` values (lacoot.model_source): zoo names, hf:, timm: and torchvision: prefixes; the
libraries imported only when asked, with a one-line error when they cannot be."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from lacoot import model_source
from lacoot.config import RunConfig
from lacoot.model_source import build_library_model, canonical_model, split_source


class TinyNet(nn.Module):
    """A stand-in for a library's classifier: stem, two residual units, head."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)
        self.units = nn.Sequential(*[Unit(width) for _ in range(2)])
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.units(self.stem(x)).mean(dim=(2, 3)))


class Unit(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


def fake_timm() -> types.ModuleType:
    """A module with timm's ``create_model`` (knows one name, ``tinynet``)."""
    module = types.ModuleType("timm")

    def create_model(name, pretrained=False, num_classes=1000, in_chans=3, **kwargs):
        assert pretrained is False  # lacoot never downloads weights
        if name != "tinynet":
            raise RuntimeError(f"Unknown model ({name})")
        return TinyNet(num_classes, in_chans, **kwargs)

    module.create_model = create_model
    return module


def fake_torchvision() -> types.ModuleType:
    """A module with ``torchvision.models.tinynet(weights=None, num_classes=...)``."""
    module = types.ModuleType("torchvision")
    module.models = types.SimpleNamespace(
        tinynet=lambda weights=None, num_classes=1000: TinyNet(num_classes, 3)
    )
    return module


def test_split_and_canonical_names():
    assert split_source("resnet20") == ("zoo", "resnet20")
    assert split_source("hf:/a/b:c") == ("hf", "/a/b:c")
    assert split_source("timm:vit_tiny_patch16_224") == ("timm", "vit_tiny_patch16_224")
    assert canonical_model("torchvision:resnet18") == "torchvision:resnet18"
    with pytest.raises(ValueError, match="unknown model 'resnet9'; valid names: .*timm:NAME"):
        canonical_model("resnet9")
    with pytest.raises(ValueError, match="names no timm model"):
        split_source("timm:")
    assert RunConfig(model="timm:anything").model == "timm:anything"  # checked when built
    with pytest.raises(ValueError, match="unknown model 'nope:x'"):
        RunConfig(model="nope:x")


def test_timm_model_built_with_classes_and_channels(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", fake_timm())
    net = build_library_model("timm:tinynet", 7, 1, {"width": 6})
    assert net(torch.zeros(2, 1, 8, 8)).shape == (2, 7) and net.stem.out_channels == 6
    with pytest.raises(ValueError, match="--model 'timm:resnet9' cannot be built .*Unknown model"):
        build_library_model("timm:resnet9", 7, 1, {})
    with pytest.raises(ValueError, match="cannot be built"):
        build_library_model("timm:tinynet", 7, 1, {"depth": 3})  # an argument it does not take


def test_torchvision_model_built_for_rgb_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision())
    net = build_library_model("torchvision:tinynet", 5, 3, {})
    assert net(torch.zeros(1, 3, 8, 8)).shape == (1, 5)
    with pytest.raises(ValueError, match="takes 3-channel images, the dataset has 1"):
        build_library_model("torchvision:tinynet", 5, 1, {})
    with pytest.raises(ValueError, match="torchvision.models has no model 'resnet9'"):
        build_library_model("torchvision:resnet9", 5, 3, {})


BROKEN = [
    ImportError("No module named 'timm'"),
    RuntimeError("operator torchvision::nms does not exist"),
]


@pytest.mark.parametrize("error", BROKEN)
@pytest.mark.parametrize("prefix", ["timm", "torchvision"])
def test_a_library_that_cannot_be_imported_is_one_line_with_the_install(monkeypatch, error, prefix):
    def refuse(name):
        raise error

    monkeypatch.setattr(model_source.importlib, "import_module", refuse)
    with pytest.raises(ValueError) as info:
        build_library_model(f"{prefix}:tinynet", 10, 3, {})
    text = str(info.value)
    assert "\n" not in text and f"--model '{prefix}:tinynet' needs {prefix}" in text
    assert type(error).__name__ in text and model_source.INSTALL[prefix] in text


def test_hf_models_are_not_built_for_training():
    with pytest.raises(ValueError, match="is a language model: lacoot score, collapse and export"):
        build_library_model("hf:folder", 10, 3, {})


def test_no_library_is_imported_by_naming_its_prefix():
    import subprocess

    code = (
        "import sys; from lacoot.config import RunConfig; RunConfig(model='timm:x'); "
        "RunConfig(model='torchvision:y'); RunConfig(model='hf:z'); "
        "print(sorted(m for m in ('timm', 'torchvision', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
