"""MobileNetV2 (Sandler et al., 2018) with torchvision's module layout.

Names and shapes follow ``torchvision.models.mobilenet_v2``: ``features.0`` is a ConvBNReLU6
``Sequential`` (``features.0.0`` conv, ``features.0.1`` BN), ``features.1`` ... ``features.17`` are
:class:`InvertedResidual` blocks whose layers live in ``features.N.conv``, ``features.18`` is the
final 1x1 ConvBNReLU6, and ``classifier = Sequential(Dropout, Linear)``. With
``setting="imagenet"`` and ``in_channels=3`` a torchvision state dict loads with ``strict=True``.

``setting="cifar"`` is the variant of the LaCoOT paper for 32x32 inputs: the stem convolution and
the first stride-2 stage (24 channels) both use stride 1, leaving an overall stride of 8.

The model declares its collapsible units through :meth:`MobileNetV2.lacoot_blocks`:

* ``collapse_unit="block"``: the inverted-residual blocks that have a residual connection
  (stride 1, same input/output channels) -- 10 blocks for both settings;
* ``collapse_unit="depthwise"``: the depthwise 3x3 ConvBNReLU6 unit (``features.N.conv.1``, or
  ``features.N.conv.0`` in the expansion-free first block) of every stride-1 inverted residual;
  these preserve shape ``(B, C_hidden, H, W)`` -- 13 units for ``"imagenet"``, 14 for ``"cifar"``.

Deviation from torchvision, on purpose: ReLU6 is not in-place (hook-captured activations stay
intact); the state dict and the outputs are unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import ConvNormActivation, check_positive_int, check_probability, make_divisible
from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]

#: (t, c, n, s): expansion ratio, output channels, repeats, stride of the first repeat.
_IMAGENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 -> 1 for 32x32 inputs
    *_IMAGENET_SETTING[2:],
)
#: setting -> (stem stride, inverted residual setting)
_SETTINGS = {"cifar": (1, _CIFAR_SETTING), "imagenet": (2, _IMAGENET_SETTING)}
_COLLAPSE_UNITS = ("block", "depthwise")


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> project (1x1, linear), residual when shapes match.

    Parameters
    ----------
    inp : int
        Input channels ``C_in``.
    oup : int
        Output channels ``C_out``.
    stride : int
        Stride of the depthwise convolution (1 or 2).
    expand_ratio : int
        Hidden width ``C_hidden = round(C_in * expand_ratio)``; with 1 the expansion is skipped.

    Notes
    -----
    Maps ``(B, C_in, H, W)`` to ``(B, C_out, H / stride, W / stride)``. ``use_res_connect`` is
    ``stride == 1 and C_in == C_out``. ``depthwise_index`` is the position of the depthwise
    ConvBNReLU6 in ``self.conv``.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride!r}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden_dim, kernel_size=1))  # pw
        self.depthwise_index = len(layers)
        layers += [
            ConvNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # dw
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),  # pw-linear
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)  # (B, C_out, H / stride, W / stride)
        return x + out if self.use_res_connect else out


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier.

    Parameters
    ----------
    num_classes : int
        Output size of ``classifier.1``.
    in_channels : int
        Input image channels.
    setting : {"cifar", "imagenet"}
        Stride configuration, see the module docstring.
    width_mult : float
        Channel multiplier (channels rounded to multiples of ``round_nearest``).
    round_nearest : int
        Channel rounding granularity.
    dropout : float
        Dropout probability before the classifier.
    collapse_unit : {"block", "depthwise"}
        Which units :meth:`lacoot_blocks` declares as collapsible.

    Notes
    -----
    Maps ``(B, in_channels, H, W)`` to ``(B, num_classes)``; the last feature map is
    ``(B, 1280, H / 8, W / 8)`` for ``"cifar"`` and ``(B, 1280, H / 32, W / 32)`` for
    ``"imagenet"``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        setting: str = "cifar",
        width_mult: float = 1.0,
        round_nearest: int = 8,
        dropout: float = 0.2,
        collapse_unit: str = "block",
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(round_nearest, "round_nearest")
        if setting not in _SETTINGS:
            raise ValueError(f"setting must be one of {tuple(_SETTINGS)}; got {setting!r}")
        if collapse_unit not in _COLLAPSE_UNITS:
            raise ValueError(
                f"collapse_unit must be one of {_COLLAPSE_UNITS}; got {collapse_unit!r}"
            )
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
            raise ValueError(f"width_mult must be a positive number; got {width_mult!r}")
        if width_mult <= 0:
            raise ValueError(f"width_mult must be a positive number; got {width_mult!r}")
        dropout = check_probability(dropout, "dropout")
        self.setting = setting
        self.collapse_unit = collapse_unit

        stem_stride, residual_setting = _SETTINGS[setting]
        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            ConvNormActivation(in_channels, input_channel, stride=stem_stride)
        ]
        for t, c, n, s in residual_setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(
                    InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t)
                )
                input_channel = output_channel
        features.append(ConvNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes)
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def lacoot_blocks(self) -> list[str]:
        """Qualified names of the collapsible units, in forward order.

        Returns
        -------
        list[str]
            ``["features.3", ...]`` for ``collapse_unit="block"``, or
            ``["features.1.conv.0", "features.2.conv.1", ...]`` for ``"depthwise"``. Every listed
            module maps a tensor to a tensor of the same shape. Units already replaced (e.g. by
            ``nn.Identity`` after a collapse) are no longer listed.
        """
        names = []
        for i, m in enumerate(self.features):
            if not isinstance(m, InvertedResidual):
                continue
            if self.collapse_unit == "block":
                if m.use_res_connect:
                    names.append(f"features.{i}")
            elif m.stride == 1 and isinstance(m.conv[m.depthwise_index], ConvNormActivation):
                names.append(f"features.{i}.conv.{m.depthwise_index}")
        return names

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, 1280, H / 8, W / 8) for "cifar"
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)  # (B, 1280)
        return self.classifier(x)  # (B, num_classes)


@register_model
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> MobileNetV2:
    """MobileNetV2; ``setting="cifar"`` and ``collapse_unit="block"`` by default.

    See :class:`MobileNetV2` for the keyword arguments.
    """
    return MobileNetV2(num_classes, in_channels, **kwargs)
