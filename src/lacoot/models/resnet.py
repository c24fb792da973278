"""ResNet-18/34/50 with torchvision's module layout (He et al., 2016).

The parameter and buffer names and shapes are those of ``torchvision.models.resnet`` (``conv1``,
``bn1``, ``layer1`` ... ``layer4`` of :class:`BasicBlock` / :class:`Bottleneck` with an optional
``downsample`` ``Sequential(conv1x1, BatchNorm2d)``, ``fc``), so a torchvision state dict loads
with ``strict=True`` whenever ``in_channels == 3`` and the stems agree (``stem="imagenet"``).

Two stems are offered:

* ``"imagenet"``: 7x7 stride-2 convolution, BN, ReLU, 3x3 stride-2 max-pool (torchvision);
* ``"cifar"``: 3x3 stride-1 convolution, BN, ReLU, then the same 3x3 stride-2 max-pool, as in the
  LaCoOT authors' code for 32x32 inputs (ResNet-18 then costs 140.19 M MACs at 32x32).

Deviation from torchvision, on purpose: the ReLUs are not in-place and the residual sum is
out-of-place, so activations captured by forward hooks (block discovery, OT regularisation) are
never overwritten afterwards. This changes neither the state dict nor the outputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import check_positive_int
from ._registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50"]

_STEMS = ("cifar", "imagenet")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (torchvision's ``conv3x3``)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias (torchvision's ``conv1x1``)."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Option-B shortcut ``Sequential(conv1x1, BatchNorm2d)`` used as ``downsample``."""
    return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))


def init_resnet_weights(model: nn.Module) -> None:
    """Initialise a ResNet in place, torchvision's rule: every ``nn.Conv2d`` weight Kaiming-normal
    (``fan_out``, ReLU gain), every ``nn.BatchNorm2d`` weight 1 and bias 0, in ``modules()`` order
    (other modules keep their default initialisation)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (ResNet-18/34, CIFAR ResNets).

    Parameters
    ----------
    inplanes : int
        Input channels ``C_in``.
    planes : int
        Output channels ``C_out`` (``expansion == 1``).
    stride : int
        Stride of the first convolution.
    downsample : nn.Module, optional
        Shortcut applied to the input when the shape changes (``stride != 1`` or
        ``C_in != C_out``).

    Notes
    -----
    Maps ``(B, C_in, H, W)`` to ``(B, C_out, H / stride, W / stride)``; with ``stride == 1`` and no
    ``downsample`` the block is shape-preserving and thus a candidate for collapse.
    """

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, C_out, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, C_out, H', W')
        out = self.bn2(self.conv2(out))  # (B, C_out, H', W')
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection (ResNet-50, torchvision V1.5).

    The stride sits on the 3x3 convolution, as in torchvision.

    Parameters
    ----------
    inplanes : int
        Input channels ``C_in``.
    planes : int
        Bottleneck width; the block outputs ``C_out = planes * 4`` channels.
    stride : int
        Stride of the 3x3 convolution.
    downsample : nn.Module, optional
        Shortcut applied to the input when the shape changes.

    Notes
    -----
    Maps ``(B, C_in, H, W)`` to ``(B, 4 * planes, H / stride, W / stride)``.
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # (B, 4P, H', W')
        out = self.relu(self.bn1(self.conv1(x)))  # (B, P, H, W)
        out = self.relu(self.bn2(self.conv2(out)))  # (B, P, H', W')
        out = self.bn3(self.conv3(out))  # (B, 4P, H', W')
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Four-stage ResNet with torchvision's module names.

    Parameters
    ----------
    block : type[BasicBlock] | type[Bottleneck]
        Residual block class.
    layers : tuple[int, int, int, int]
        Number of blocks per stage.
    num_classes : int
        Output size of ``fc``.
    in_channels : int
        Input image channels.
    stem : {"cifar", "imagenet"}
        Stem type, see the module docstring.
    zero_init_residual : bool
        Zero-initialise the last BN of each block (torchvision option).

    Notes
    -----
    Maps ``(B, in_channels, H, W)`` to logits ``(B, num_classes)``. The ``"cifar"`` stem keeps the
    resolution before the max-pool, so a 32x32 input gives 16/8/4/2 feature maps in the four
    stages; the ``"imagenet"`` stem divides by 4 before ``layer1``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "cifar",
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        if stem not in _STEMS:
            raise ValueError(f"stem must be one of {_STEMS}; got {stem!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must hold 4 positive ints; got {layers!r}")
        for i, n in enumerate(layers):
            check_positive_int(n, f"layers[{i}]")
        self.stem = stem
        self.inplanes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        init_resnet_weights(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = projection_shortcut(self.inplanes, planes * block.expansion, stride)
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/2, W/2) for "cifar"
        x = self.layer1(x)  # (B, 64 * e, H1, W1)
        x = self.layer2(x)  # (B, 128 * e, H1/2, W1/2)
        x = self.layer3(x)  # (B, 256 * e, H1/4, W1/4)
        x = self.layer4(x)  # (B, 512 * e, H1/8, W1/8)
        x = self.avgpool(x).flatten(1)  # (B, 512 * e)
        return self.fc(x)  # (B, num_classes)


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``stem="cifar"`` by default, see :class:`ResNet`."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, **kwargs)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]); ``stem="cifar"`` by default, see :class:`ResNet`."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels, **kwargs)


@register_model
def resnet50(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``stem="cifar"`` by default, see :class:`ResNet`."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, **kwargs)
