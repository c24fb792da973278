"""Tests of the model zoo: registry, shapes, gradients, torchvision names, blocks, MACs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lacoot import models
from lacoot.models import _registry
from lacoot.models._layers import ConvNormActivation, Permute, StochasticDepth
from lacoot.models.swin import ShiftedWindowAttention, SwinTransformerBlock

EXPECTED_MODELS = [
    "mobilenet_v2",
    "resnet110",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet50",
    "resnet56",
    "swin_t",
    "vit_tiny",
]

#: Extra keyword arguments for a 28x28 input (models whose geometry is tied to the input size).
KWARGS_28 = {"vit_tiny": {"img_size": 28}, "swin_t": {"img_size": 28}}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _x(batch: int = 2, channels: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, channels, size, size)  # (B, C, H, W)


# --------------------------------------------------------------------------------------------
# registry


def test_list_models_is_sorted_and_complete() -> None:
    names = models.list_models()
    assert names == sorted(names)
    assert names == EXPECTED_MODELS


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        models.create("resnet19")
    msg = str(info.value)
    assert "'resnet19'" in msg
    for name in EXPECTED_MODELS:
        assert name in msg
    with pytest.raises(ValueError, match="unknown model name"):
        models.create(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "10"])
def test_create_rejects_bad_num_classes_and_channels(bad: object) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        models.create("resnet20", num_classes=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels"):
        models.create("resnet20", in_channels=bad)  # type: ignore[arg-type]


def test_register_model_collision_warns_and_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @models.register_model
    def tiny_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    assert "tiny_net" in models.list_models()
    with pytest.warns(UserWarning, match="'tiny_net' is already registered"):

        @models.register_model(name="tiny_net")
        def other(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
            return nn.Linear(in_channels, num_classes)

    net = models.create("tiny_net", num_classes=4, in_channels=5)
    assert isinstance(net, nn.Linear) and net.out_features == 4 and net.in_features == 5

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh name must not warn

        @models.register_model(name="another_net")
        def another(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
            return nn.Identity()

    assert models.create("another_net").__class__ is nn.Identity
    with pytest.warns(UserWarning, match="resnet20"):
        models.register_model(another, name="resnet20")
    assert _registry._REGISTRY["resnet20"] is another


def test_registry_is_restored_after_monkeypatch() -> None:
    assert models.list_models() == EXPECTED_MODELS
    assert isinstance(models.create("resnet20"), models.CifarResNet)


# --------------------------------------------------------------------------------------------
# forward / backward on every registered model


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_forward_shape_and_finite(name: str) -> None:
    net = models.create(name, num_classes=7).eval()
    with torch.no_grad():
        out = net(_x())
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    net.train()
    out = net(_x())
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_every_parameter_gets_a_finite_gradient(name: str) -> None:
    net = models.create(name).train()
    net(_x()).sum().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, f"{name}: {pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_grayscale_28x28(name: str) -> None:
    net = models.create(name, num_classes=10, in_channels=1, **KWARGS_28.get(name, {}))
    out = net.train()(_x(channels=1, size=28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    with torch.no_grad():
        out = net.eval()(_x(batch=1, channels=1, size=28))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_imagenet_variants_run_on_small_inputs(name: str) -> None:
    kwargs = {"setting": "imagenet"} if name == "mobilenet_v2" else {"stem": "imagenet"}
    net = models.create(name, num_classes=5, **kwargs).eval()
    with torch.no_grad():
        assert net(_x(size=64)).shape == (2, 5)


def test_models_are_independent_instances() -> None:
    a, b = models.create("resnet20"), models.create("resnet20")
    assert a is not b
    assert not torch.equal(a.conv1.weight, b.conv1.weight)


# --------------------------------------------------------------------------------------------
# argument validation


def test_bad_model_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="stem"):
        models.create("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="collapse_unit"):
        models.create("mobilenet_v2", collapse_unit="layer")
    with pytest.raises(ValueError, match="setting"):
        models.create("mobilenet_v2", setting="mnist")
    with pytest.raises(ValueError, match="depth"):
        models.CifarResNet(21)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        models.create("vit_tiny", img_size=30, patch_size=4)
    with pytest.raises(ValueError, match="num_heads"):
        models.create("vit_tiny", embed_dim=100, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        models.create("swin_t", embed_dim=20)
    with pytest.raises(ValueError, match="depths"):
        models.create("swin_t", depths=(2, 2), num_heads=(3, 6, 12))
    with pytest.raises(TypeError):
        models.create("resnet20", stem="cifar")  # CIFAR ResNets have no stem option


# --------------------------------------------------------------------------------------------
# torchvision-compatible names: hand-written tables


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


# torchvision resnet18(num_classes=1000), written out by hand (first blocks of each kind).
RESNET18_TABLE: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.bn1.bias": (64,),
    "layer1.0.bn1.running_mean": (64,),
    "layer1.0.bn1.running_var": (64,),
    "layer1.0.bn1.num_batches_tracked": (),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.bn2.weight": (64,),
    "layer1.0.bn2.bias": (64,),
    "layer1.0.bn2.running_mean": (64,),
    "layer1.0.bn2.running_var": (64,),
    "layer1.0.bn2.num_batches_tracked": (),
    "layer1.1.conv1.weight": (64, 64, 3, 3),
    "layer1.1.conv2.weight": (64, 64, 3, 3),
    "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.bn1.weight": (128,),
    "layer2.0.bn1.bias": (128,),
    "layer2.0.bn1.running_mean": (128,),
    "layer2.0.bn1.running_var": (128,),
    "layer2.0.bn1.num_batches_tracked": (),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.bn2.weight": (128,),
    "layer2.0.bn2.bias": (128,),
    "layer2.0.bn2.running_mean": (128,),
    "layer2.0.bn2.running_var": (128,),
    "layer2.0.bn2.num_batches_tracked": (),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.weight": (128,),
    "layer2.0.downsample.1.bias": (128,),
    "layer2.0.downsample.1.running_mean": (128,),
    "layer2.0.downsample.1.running_var": (128,),
    "layer2.0.downsample.1.num_batches_tracked": (),
    "layer2.1.conv1.weight": (128, 128, 3, 3),
    "layer3.0.conv1.weight": (256, 128, 3, 3),
    "layer3.0.downsample.0.weight": (256, 128, 1, 1),
    "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.conv1.weight": (512, 256, 3, 3),
    "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.0.downsample.1.running_var": (512,),
    "layer4.1.conv2.weight": (512, 512, 3, 3),
    "layer4.1.bn2.num_batches_tracked": (),
    "fc.weight": (1000, 512),
    "fc.bias": (1000,),
}

# torchvision resnet50(num_classes=1000): Bottleneck, stride on the 3x3 conv (V1.5).
RESNET50_TABLE: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 7, 7),
    **_bn("bn1", 64),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    **_bn("layer1.0.bn1", 64),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    **_bn("layer1.0.bn2", 64),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    **_bn("layer1.0.bn3", 256),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    **_bn("layer1.0.downsample.1", 256),
    "layer1.1.conv1.weight": (64, 256, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.conv3.weight": (512, 128, 1, 1),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer3.5.conv3.weight": (1024, 256, 1, 1),
    **_bn("layer3.5.bn3", 1024),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fc.weight": (1000, 2048),
    "fc.bias": (1000,),
}

# torchvision mobilenet_v2(num_classes=1000).
MOBILENET_V2_TABLE: dict[str, tuple[int, ...]] = {
    "features.0.0.weight": (32, 3, 3, 3),
    **_bn("features.0.1", 32),
    # features.1: expand ratio 1 -> conv.0 is the depthwise ConvBNReLU, conv.1/2 the projection
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    **_bn("features.1.conv.0.1", 32),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    **_bn("features.1.conv.2", 16),
    # features.2: expand 16 -> 96, depthwise, project to 24
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    **_bn("features.2.conv.0.1", 96),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    **_bn("features.2.conv.1.1", 96),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    **_bn("features.2.conv.3", 24),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    **_bn("features.18.1", 1280),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}

# torchvision swin_t(num_classes=1000): patch 4, window 7, embed 96.
SWIN_T_TABLE: dict[str, tuple[int, ...]] = {
    "features.0.0.weight": (96, 3, 4, 4),
    "features.0.0.bias": (96,),
    "features.0.2.weight": (96,),
    "features.0.2.bias": (96,),
    "features.1.0.norm1.weight": (96,),
    "features.1.0.norm1.bias": (96,),
    "features.1.0.attn.relative_position_bias_table": (169, 3),
    "features.1.0.attn.relative_position_index": (2401,),
    "features.1.0.attn.qkv.weight": (288, 96),
    "features.1.0.attn.qkv.bias": (288,),
    "features.1.0.attn.proj.weight": (96, 96),
    "features.1.0.attn.proj.bias": (96,),
    "features.1.0.norm2.weight": (96,),
    "features.1.0.norm2.bias": (96,),
    "features.1.0.mlp.0.weight": (384, 96),
    "features.1.0.mlp.0.bias": (384,),
    "features.1.0.mlp.3.weight": (96, 384),
    "features.1.0.mlp.3.bias": (96,),
    "features.2.reduction.weight": (192, 384),
    "features.2.norm.weight": (384,),
    "features.2.norm.bias": (384,),
    "features.5.5.attn.relative_position_bias_table": (169, 12),
    "features.6.reduction.weight": (768, 1536),
    "features.7.1.attn.qkv.weight": (2304, 768),
    "features.7.1.mlp.3.weight": (768, 3072),
    "norm.weight": (768,),
    "norm.bias": (768,),
    "head.weight": (1000, 768),
    "head.bias": (1000,),
}

TORCHVISION_CASES = {
    # name: (kwargs, hand table, state-dict entries, parameters as listed by torchvision)
    "resnet18": ({"stem": "imagenet"}, RESNET18_TABLE, 122, 11_689_512),
    "resnet34": ({"stem": "imagenet"}, {}, 218, 21_797_672),
    "resnet50": ({"stem": "imagenet"}, RESNET50_TABLE, 320, 25_557_032),
    "mobilenet_v2": ({"setting": "imagenet"}, MOBILENET_V2_TABLE, 314, 3_504_872),
    "swin_t": (
        {"patch_size": 4, "window_size": 7, "img_size": 224},
        SWIN_T_TABLE,
        185,
        28_288_354,
    ),
}


@pytest.mark.parametrize("name", list(TORCHVISION_CASES))
def test_torchvision_state_dict_table(name: str) -> None:
    kwargs, table, n_keys, n_params = TORCHVISION_CASES[name]
    net = models.create(name, num_classes=1000, **kwargs)
    sd = net.state_dict()
    for key, shape in table.items():
        assert key in sd, f"{name}: missing {key}"
        assert tuple(sd[key].shape) == shape, f"{name}: {key} {tuple(sd[key].shape)} != {shape}"
    assert len(sd) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params
    assert all(sd[k].dtype == torch.long for k in sd if k.endswith("num_batches_tracked"))


def _torchvision_resnet_shapes(
    bottleneck: bool, layers: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3
) -> dict[str, tuple[int, ...]]:
    """Every state-dict entry of a torchvision ResNet, in order, from its architecture."""
    out: dict[str, tuple[int, ...]] = {"conv1.weight": (64, in_channels, 7, 7), **_bn("bn1", 64)}
    expansion = 4 if bottleneck else 1
    inplanes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True), start=1):
        for i in range(n):
            p = f"layer{stage}.{i}"
            stride = 2 if stage > 1 and i == 0 else 1
            if bottleneck:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
                out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                out.update(_bn(f"{p}.bn3", planes * 4))
            else:
                out[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                out.update(_bn(f"{p}.bn1", planes))
                out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                out.update(_bn(f"{p}.bn2", planes))
            if i == 0 and (stride != 1 or inplanes != planes * expansion):
                out[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                out.update(_bn(f"{p}.downsample.1", planes * expansion))
            inplanes = planes * expansion
    out["fc.weight"] = (num_classes, 512 * expansion)
    out["fc.bias"] = (num_classes,)
    return out


@pytest.mark.parametrize(
    ("name", "bottleneck", "layers"),
    [
        ("resnet18", False, (2, 2, 2, 2)),
        ("resnet34", False, (3, 4, 6, 3)),
        ("resnet50", True, (3, 4, 6, 3)),
    ],
)
def test_resnet_state_dict_matches_torchvision_exactly(
    name: str, bottleneck: bool, layers: tuple[int, ...]
) -> None:
    expected = _torchvision_resnet_shapes(bottleneck, layers)
    assert len(expected) == TORCHVISION_CASES[name][2]
    net = models.create(name, num_classes=1000, stem="imagenet")
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert list(got) == list(expected)  # same keys, same order
    assert got == expected
    fake_tv = {
        k: torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked") else torch.randn(s)
        for k, s in expected.items()
    }
    net.load_state_dict(fake_tv, strict=True)
    assert torch.equal(net.fc.weight, fake_tv["fc.weight"])
    # the CIFAR stem differs only in conv1's kernel; in_channels only in its input dimension
    cifar = models.create(name, num_classes=1000, in_channels=1).state_dict()
    assert tuple(cifar["conv1.weight"].shape) == (64, 1, 3, 3)
    assert [k for k in cifar] == list(expected)


def test_resnet_module_names() -> None:
    net = models.create("resnet18")
    names = dict(net.named_children())
    assert list(names) == [
        "conv1",
        "bn1",
        "relu",
        "maxpool",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
        "avgpool",
        "fc",
    ]
    assert isinstance(net.maxpool, nn.MaxPool2d) and net.conv1.stride == (1, 1)
    assert net.layer2[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize(
    ("name", "n"), [("resnet20", 3), ("resnet32", 5), ("resnet56", 9), ("resnet110", 18)]
)
def test_cifar_resnet_layout(name: str, n: int) -> None:
    net = models.create(name)
    assert [k for k, _ in net.named_children()] == [
        "conv1",
        "bn1",
        "relu",
        "layer1",
        "layer2",
        "layer3",
        "avgpool",
        "fc",
    ]
    assert tuple(net.conv1.weight.shape) == (16, 3, 3, 3) and net.conv1.stride == (1, 1)
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [n, n, n]
    assert net.layer1[0].downsample is None
    for layer, cin, cout in ((net.layer2, 16, 32), (net.layer3, 32, 64)):
        ds = layer[0].downsample
        assert isinstance(ds, nn.Sequential) and isinstance(ds[1], nn.BatchNorm2d)
        assert tuple(ds[0].weight.shape) == (cout, cin, 1, 1) and ds[0].stride == (2, 2)
        assert all(block.downsample is None for block in layer[1:])
    assert tuple(net.fc.weight.shape) == (10, 64)
    n_conv = sum(1 for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert n_conv + 1 == 6 * n + 2  # 3x3 convs + fc = depth


def test_swin_module_names() -> None:
    net = models.create("swin_t")
    assert [k for k, _ in net.named_children()] == [
        "features",
        "norm",
        "permute",
        "avgpool",
        "flatten",
        "head",
    ]
    stem = net.features[0]
    assert isinstance(stem[0], nn.Conv2d) and isinstance(stem[1], Permute)
    assert isinstance(stem[2], nn.LayerNorm)
    for i in (1, 3, 5, 7):
        assert all(isinstance(b, SwinTransformerBlock) for b in net.features[i])
    for i in (2, 4, 6):
        assert isinstance(net.features[i], models.swin.PatchMerging)
    block = net.features[1][1]
    assert [k for k, _ in block.named_children()] == [
        "norm1",
        "attn",
        "stochastic_depth",
        "norm2",
        "mlp",
    ]
    assert block.attn.shift_size == [2, 2] and net.features[1][0].attn.shift_size == [0, 0]


# --------------------------------------------------------------------------------------------
# blocks


EXPECTED_BLOCK_COUNTS = {
    "resnet20": 7,
    "resnet32": 13,
    "resnet56": 25,
    "resnet110": 52,
    "resnet18": 5,
    "resnet34": 13,
    "resnet50": 12,
    "mobilenet_v2": 10,
    "vit_tiny": 12,
    "swin_t": 12,
}


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_find_blocks_count(name: str) -> None:
    blocks = pytest.importorskip("lacoot.blocks")
    net = models.create(name)
    found = blocks.find_blocks(net, _x())
    assert len(found) == EXPECTED_BLOCK_COUNTS[name]
    for b in found:  # every block is shape-preserving on its own
        assert b.params > 0
    if hasattr(net, "lacoot_blocks"):
        assert [b.name for b in found] == net.lacoot_blocks()


def test_find_blocks_names() -> None:
    blocks = pytest.importorskip("lacoot.blocks")
    x = _x()
    names = [b.name for b in blocks.find_blocks(models.create("resnet18"), x)]
    assert names == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    imagenet = models.create("resnet18", stem="imagenet")
    assert [b.name for b in blocks.find_blocks(imagenet, x)] == names
    names = [b.name for b in blocks.find_blocks(models.create("resnet20"), x)]
    assert names == [
        "layer1.0",
        "layer1.1",
        "layer1.2",
        "layer2.1",
        "layer2.2",
        "layer3.1",
        "layer3.2",
    ]
    names = [b.name for b in blocks.find_blocks(models.create("resnet50"), x)]
    assert "layer1.0" not in names and names[0] == "layer1.1" and len(names) == 12
    vit = models.create("vit_tiny", depth=4)
    assert [b.name for b in blocks.find_blocks(vit, x)] == [f"blocks.{i}" for i in range(4)]
    swin = models.create("swin_t", embed_dim=24, depths=(2, 2, 2, 2))
    assert [b.name for b in blocks.find_blocks(swin, x)] == [
        f"features.{s}.{i}" for s in (1, 3, 5, 7) for i in range(2)
    ]


@pytest.mark.parametrize(("setting", "n_depthwise"), [("cifar", 14), ("imagenet", 13)])
def test_mobilenet_declared_units(setting: str, n_depthwise: int) -> None:
    net = models.create("mobilenet_v2", setting=setting)
    res_blocks = net.lacoot_blocks()
    assert res_blocks == [f"features.{i}" for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]
    for name in res_blocks:
        assert net.get_submodule(name).use_res_connect

    net = models.create("mobilenet_v2", setting=setting, collapse_unit="depthwise")
    units = net.lacoot_blocks()
    assert len(units) == n_depthwise
    assert units[0] == "features.1.conv.0"
    assert all(u.endswith(".conv.1") for u in units[1:])
    assert ("features.2.conv.1" in units) == (setting == "cifar")
    for name in units:
        unit = net.get_submodule(name)
        conv = unit[0]
        assert isinstance(unit, ConvNormActivation)
        assert conv.groups == conv.in_channels == conv.out_channels
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)

    # every declared unit is shape-preserving in an actual forward pass
    seen: dict[str, bool] = {}
    hooks = [
        net.get_submodule(n).register_forward_hook(
            lambda m, a, o, n=n: seen.__setitem__(n, a[0].shape == o.shape)
        )
        for n in units
    ]
    with torch.no_grad():
        net.eval()(_x())
    for h in hooks:
        h.remove()
    assert seen == dict.fromkeys(units, True)

    blocks = pytest.importorskip("lacoot.blocks")
    assert [b.name for b in blocks.find_blocks(net, _x())] == units


def test_mobilenet_strides() -> None:
    cifar = models.create("mobilenet_v2")
    imagenet = models.create("mobilenet_v2", setting="imagenet")
    assert cifar.features[0][0].stride == (1, 1) and imagenet.features[0][0].stride == (2, 2)
    assert cifar.features[2].stride == 1 and imagenet.features[2].stride == 2
    with torch.no_grad():
        f_c = cifar.features.eval()(_x())
        f_i = imagenet.features.eval()(_x())
    assert f_c.shape == (2, 1280, 4, 4) and f_i.shape == (2, 1280, 1, 1)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {}),
        ("resnet50", {}),
        ("mobilenet_v2", {}),
        ("mobilenet_v2", {"collapse_unit": "depthwise"}),
        ("vit_tiny", {"depth": 3}),
        ("swin_t", {"embed_dim": 24}),
    ],
)
def test_removing_all_blocks_leaves_a_working_model(name: str, kwargs: dict) -> None:
    blocks = pytest.importorskip("lacoot.blocks")
    if not hasattr(blocks, "remove_blocks"):
        pytest.skip("lacoot.blocks.remove_blocks is not available")
    net = models.create(name, **kwargs).eval()
    found = blocks.find_blocks(net, _x())
    short = blocks.remove_blocks(net, found)
    with torch.no_grad():
        out = short(_x())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert sum(p.numel() for p in short.parameters()) < sum(p.numel() for p in net.parameters())
    if hasattr(short, "lacoot_blocks"):
        assert short.lacoot_blocks() == []


# --------------------------------------------------------------------------------------------
# ViT


@pytest.mark.parametrize(("size", "patch", "tokens"), [(32, 4, 65), (28, 4, 50), (28, 7, 17)])
def test_vit_geometry(size: int, patch: int, tokens: int) -> None:
    net = models.create("vit_tiny", in_channels=1, img_size=size, patch_size=patch, depth=2)
    assert tuple(net.pos_embed.shape) == (1, tokens, 192)
    assert tuple(net.cls_token.shape) == (1, 1, 192)
    seen = []
    net.blocks[0].register_forward_hook(lambda m, a, o: seen.append((a[0].shape, o.shape)))
    with torch.no_grad():
        assert net.eval()(_x(channels=1, size=size)).shape == (2, 10)
    assert seen == [((2, tokens, 192), (2, tokens, 192))]


def test_vit_defaults_and_size_check() -> None:
    net = models.create("vit_tiny")
    cfg = net.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio) == (192, 12, 3, 4.0)
    assert len(net.blocks) == 12 and net.blocks[0].mlp.fc1.out_features == 768
    with pytest.raises(ValueError, match=r"\(B, C, 32, 32\)"):
        net(_x(size=28))


def test_vit_attention_matches_naive() -> None:
    attn = models.vit.Attention(dim=12, num_heads=3).eval()
    x = torch.randn(2, 5, 12)  # (B, N, D)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    w = (q @ k.transpose(-2, -1) / math.sqrt(4)).softmax(-1)
    ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 5, 12))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Swin


def _reference_window_attention(attn: ShiftedWindowAttention, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``shifted_window_attention`` algorithm with explicit matmuls."""
    B, H, W, C = x.shape
    ws = attn.window_size
    pad_r = (ws[1] - W % ws[1]) % ws[1]
    pad_b = (ws[0] - H % ws[0]) % ws[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, pH, pW, _ = x.shape
    shift = list(attn.shift_size)
    if ws[0] >= pH:
        shift[0] = 0
    if ws[1] >= pW:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nW = (pH // ws[0]) * (pW // ws[1])
    x = x.view(B, pH // ws[0], ws[0], pW // ws[1], ws[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * nW, ws[0] * ws[1], C)
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q * (C // heads) ** -0.5) @ k.transpose(-2, -1)
    a = a + attn.get_relative_position_bias()
    if sum(shift) > 0:
        mask = x.new_zeros((pH, pW))
        hs = ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None))
        wss = ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None))
        count = 0
        for h in hs:
            for w in wss:
                mask[h[0] : h[1], w[0] : w[1]] = count
                count += 1
        mask = mask.view(pH // ws[0], ws[0], pW // ws[1], ws[1]).permute(0, 2, 1, 3)
        mask = mask.reshape(nW, ws[0] * ws[1])
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        a = a.view(B, nW, heads, x.size(1), x.size(1)) + mask.unsqueeze(1).unsqueeze(0)
        a = a.view(-1, heads, x.size(1), x.size(1))
    a = a.softmax(-1)
    x = (a @ v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, attn.proj.weight, attn.proj.bias)
    x = x.view(B, pH // ws[0], pW // ws[1], ws[0], ws[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pH, pW, C)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :]


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [8, 6, 4, 2, 5])
def test_swin_attention_matches_torchvision_algorithm(shift: int, size: int) -> None:
    attn = ShiftedWindowAttention(16, [4, 4], [shift, shift], num_heads=2).eval()
    x = torch.randn(2, size, size, 16)  # (B, H, W, C)
    with torch.no_grad():
        out = attn(x)
        ref = _reference_window_attention(attn, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert attn.shift_size == [shift, shift]  # small maps do not disable the shift for good


def test_swin_relative_position_index() -> None:
    attn = ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=1)
    # tokens (0,0),(0,1),(1,0),(1,1); index = (dh + 1) * 3 + (dw + 1)
    expected = [4, 3, 1, 0, 5, 4, 2, 1, 7, 6, 4, 3, 8, 7, 5, 4]
    assert attn.relative_position_index.tolist() == expected
    assert "relative_position_index" in dict(attn.named_buffers())
    assert tuple(attn.relative_position_bias_table.shape) == (9, 1)


def test_swin_feature_sizes_and_block_shapes() -> None:
    net = models.create("swin_t", embed_dim=24).eval()
    assert net.config.feature_sizes() == [16, 8, 4, 2]
    shapes = []
    for i in (1, 3, 5, 7):
        net.features[i][0].register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    with torch.no_grad():
        net(_x())
    assert shapes == [(2, 16, 16, 24), (2, 8, 8, 48), (2, 4, 4, 96), (2, 2, 2, 192)]


# --------------------------------------------------------------------------------------------
# layers


def test_stochastic_depth_and_permute() -> None:
    x = torch.randn(64, 3, 4)
    sd = StochasticDepth(0.5, "row")
    assert sd.eval()(x) is x
    y = sd.train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(kept.sum()) < 64
    torch.testing.assert_close(y[kept], 2 * x[kept])
    with pytest.raises(ValueError):
        StochasticDepth(1.5)
    assert Permute([0, 2, 1])(x).shape == (64, 4, 3)


# --------------------------------------------------------------------------------------------
# MACs


def test_resnet18_cifar_macs_match_paper() -> None:
    profile = pytest.importorskip("lacoot.profile")
    macs = profile.count_macs(models.create("resnet18", num_classes=10), _x(batch=1))
    assert macs == pytest.approx(140.19e6, rel=0.01)


def test_resnet20_macs_from_first_principles() -> None:
    profile = pytest.importorskip("lacoot.profile")
    hw = 32 * 32
    expected = (
        3 * 16 * 9 * hw  # stem
        + 6 * 16 * 16 * 9 * hw  # layer1
        + (16 * 32 * 9 + 5 * 32 * 32 * 9 + 16 * 32) * hw // 4  # layer2 incl. projection
        + (32 * 64 * 9 + 5 * 64 * 64 * 9 + 32 * 64) * hw // 16  # layer3 incl. projection
        + 64 * 10  # fc
    )
    assert profile.count_macs(models.create("resnet20"), _x(batch=1)) == expected
