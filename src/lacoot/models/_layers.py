"""Small building blocks shared by the model zoo (pure torch, torchvision-compatible names)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "ConvNormActivation",
    "Permute",
    "StochasticDepth",
    "TransformerConfig",
    "check_mlp_and_dropouts",
    "check_patch_size",
    "check_positive_fields",
    "check_positive_int",
    "check_probability",
    "init_linear_trunc_normal",
    "make_divisible",
]


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive ``int``, else raise a ``ValueError`` naming it.

    Parameters
    ----------
    value : object
        The value to check (``bool`` is rejected even though it subclasses ``int``).
    name : str
        Argument name used in the error message.

    Returns
    -------
    int
        ``value`` unchanged.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_probability(value: object, name: str) -> float:
    """Return ``value`` as a float if it lies in ``[0, 1]``, else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}")
    return float(value)


class TransformerConfig(Protocol):
    """The fields that :class:`~lacoot.models.vit.ViTConfig` and
    :class:`~lacoot.models.swin.SwinConfig` share and check alike."""

    @property
    def img_size(self) -> int: ...
    @property
    def patch_size(self) -> int: ...
    @property
    def mlp_ratio(self) -> float: ...
    @property
    def dropout(self) -> float: ...
    @property
    def attention_dropout(self) -> float: ...
    @property
    def stochastic_depth_prob(self) -> float: ...


def check_positive_fields(config: object, names: Sequence[str]) -> None:
    """Check that the fields ``names`` of ``config`` are positive ints, in that order.

    Raises
    ------
    ValueError
        Naming the first field that is not a positive ``int`` (see :func:`check_positive_int`).
    """
    for name in names:
        check_positive_int(getattr(config, name), name)


def check_patch_size(config: TransformerConfig) -> None:
    """Check that ``config.img_size`` is a multiple of ``config.patch_size``.

    Raises
    ------
    ValueError
        If it is not.
    """
    if config.img_size % config.patch_size:
        raise ValueError(
            f"img_size ({config.img_size}) must be a multiple of patch_size ({config.patch_size})"
        )


def check_mlp_and_dropouts(config: TransformerConfig) -> None:
    """Check that ``config.mlp_ratio`` is positive, then that ``dropout``,
    ``attention_dropout`` and ``stochastic_depth_prob`` are probabilities (in that order).

    Raises
    ------
    ValueError
        Naming the first field that fails.
    """
    if not config.mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive; got {config.mlp_ratio!r}")
    for name in ("dropout", "attention_dropout", "stochastic_depth_prob"):
        check_probability(getattr(config, name), name)


def init_linear_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """Re-initialise every ``nn.Linear`` in ``module`` (in ``modules()`` order, in place):
    truncated-normal weights with standard deviation ``std`` and zero biases (ViT/Swin rule)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` not below 90 % of ``v``.

    Same rule as torchvision's ``_make_divisible`` (from the TensorFlow MobileNet code), so channel
    counts match torchvision's for every ``width_mult``.
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # make sure rounding down does not go down by more than 10 %
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> activation`` as a ``Sequential`` (children ``0``, ``1``, ``2``).

    Mirrors ``torchvision.ops.misc.Conv2dNormActivation`` (the former ``ConvBNReLU``): the
    convolution has no bias, padding is ``(kernel_size - 1) // 2`` so a stride-1 unit preserves the
    spatial size.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input ``(B, in_channels, H, W)`` and of the output.
    kernel_size : int
        Square kernel size.
    stride : int
        Convolution stride; the output is ``(B, out_channels, ceil(H / stride), ceil(W / stride))``.
    groups : int
        Convolution groups (``groups == in_channels`` gives a depthwise convolution).
    activation : type[nn.Module]
        Activation class, instantiated without arguments (``nn.ReLU6`` for MobileNetV2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] = nn.ReLU6,
    ) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            activation(),
        )
        self.out_channels = out_channels


class Permute(nn.Module):
    """Permute the dimensions of a tensor (``torchvision.ops.misc.Permute``).

    Parameters
    ----------
    dims : Sequence[int]
        The desired ordering of dimensions, e.g. ``(0, 2, 3, 1)`` for ``(B, C, H, W) ->
        (B, H, W, C)``.
    """

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(int(d) for d in dims)

    def forward(self, x: Tensor) -> Tensor:
        return torch.permute(x, self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class StochasticDepth(nn.Module):
    """Randomly drop a residual branch (``torchvision.ops.StochasticDepth``).

    In training mode, ``mode="row"`` zeroes the whole branch for each sample independently with
    probability ``p`` and rescales the kept samples by ``1 / (1 - p)``; ``mode="batch"`` draws one
    decision for the whole batch. In eval mode (or with ``p == 0``) it is the identity.

    Parameters
    ----------
    p : float
        Drop probability in ``[0, 1]``.
    mode : {"row", "batch"}
        Granularity of the drop decision.
    """

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = check_probability(p, "p")
        if mode not in ("row", "batch"):
            raise ValueError(f"mode must be 'row' or 'batch'; got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival_rate = 1.0 - self.p
        if self.mode == "row":
            size = [x.shape[0]] + [1] * (x.ndim - 1)  # (B, 1, ..., 1)
        else:
            size = [1] * x.ndim
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival_rate)
        if survival_rate > 0.0:
            noise.div_(survival_rate)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"
