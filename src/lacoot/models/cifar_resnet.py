"""CIFAR ResNets of He et al. (2016, section 4.2): ResNet-20/32/56/110.

Three stages of ``n`` :class:`~lacoot.models.resnet.BasicBlock` each with 16, 32 and 64 channels
(depth ``6n + 2``), a 3x3 stride-1 stem convolution, global average pooling and a linear
classifier. Stage transitions use the option-B projection shortcut (1x1 conv + BN) stored as
``downsample`` like torchvision. Module names: ``conv1, bn1, relu, layer1, layer2, layer3,
avgpool, fc``; blocks ``layer1.0`` ... ``layer3.{n-1}``.

Only the first blocks of ``layer2`` and ``layer3`` change shape, so ``3n - 2`` of the ``3n``
blocks are shape-preserving (7 for ResNet-20, 13 for ResNet-32, 25 for ResNet-56, 52 for
ResNet-110).
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import check_positive_int
from ._registry import register_model
from .resnet import BasicBlock, init_resnet_weights, projection_shortcut

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet56", "resnet110"]


class CifarResNet(nn.Module):
    """ResNet of depth ``6 * n + 2`` for small (e.g. 32x32) images.

    Parameters
    ----------
    depth : int
        Network depth; must satisfy ``(depth - 2) % 6 == 0`` (20, 32, 44, 56, 110, ...).
    num_classes : int
        Output size of ``fc``.
    in_channels : int
        Input image channels.
    widths : tuple[int, int, int]
        Channels of the three stages.

    Notes
    -----
    Maps ``(B, in_channels, H, W)`` to ``(B, num_classes)``; the stages work at ``H``, ``H/2`` and
    ``H/4`` resolution.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        check_positive_int(depth, "depth")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (20, 32, 56, 110, ...); got {depth}"
            )
        if len(widths) != 3:
            raise ValueError(f"widths must hold 3 positive ints; got {widths!r}")
        for i, w in enumerate(widths):
            check_positive_int(w, f"widths[{i}]")
        n = (depth - 2) // 6
        self.depth = depth
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(widths[0], n, stride=1)
        self.layer2 = self._make_layer(widths[1], n, stride=2)
        self.layer3 = self._make_layer(widths[2], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2], num_classes)

        init_resnet_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = projection_shortcut(self.inplanes, planes, stride)
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers.extend(BasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H/2, W/2)
        x = self.layer3(x)  # (B, 64, H/4, W/4)
        x = self.avgpool(x).flatten(1)  # (B, 64)
        return self.fc(x)  # (B, num_classes)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-20 (3 x 3 BasicBlocks, 0.27 M parameters)."""
    return CifarResNet(20, num_classes, in_channels, **kwargs)


@register_model
def resnet32(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-32 (3 x 5 BasicBlocks, 0.46 M parameters)."""
    return CifarResNet(32, num_classes, in_channels, **kwargs)


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-56 (3 x 9 BasicBlocks, 0.85 M parameters)."""
    return CifarResNet(56, num_classes, in_channels, **kwargs)


@register_model
def resnet110(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> CifarResNet:
    """CIFAR ResNet-110 (3 x 18 BasicBlocks, 1.7 M parameters)."""
    return CifarResNet(110, num_classes, in_channels, **kwargs)
