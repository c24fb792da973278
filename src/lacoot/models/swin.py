"""Swin Transformer (Liu et al., 2021) with torchvision's module layout.

Names follow ``torchvision.models.swin_transformer`` (V1):

* ``features.0 = Sequential(Conv2d, Permute, LayerNorm)`` -- patch embedding to ``(B, H, W, C)``;
* ``features.1, 3, 5, 7`` -- stages, ``Sequential`` of :class:`SwinTransformerBlock` with
  ``norm1``, ``attn`` (``qkv``, ``proj``, ``relative_position_bias_table``,
  ``relative_position_index`` buffer), ``stochastic_depth``, ``norm2``, ``mlp`` (``mlp.0``,
  ``mlp.3`` Linear, like ``torchvision.ops.MLP``);
* ``features.2, 4, 6`` -- :class:`PatchMerging` (``norm``, ``reduction``);
* ``norm``, ``permute``, ``avgpool``, ``flatten``, ``head``.

With ``patch_size=4, window_size=7, in_channels=3`` and 1000 classes the state dict is that of
torchvision's ``swin_t`` (28,288,354 parameters) and loads with ``strict=True``.

Small inputs: like torchvision, when a feature map is not a multiple of the window it is
zero-padded up to one, and when the (padded) map is no larger than the window the cyclic shift is
switched off for that call. The window itself is never shrunk (the original Microsoft code shrinks
it instead), so ``relative_position_bias_table`` keeps the same shape in every stage. Defaults
target 32x32 images: ``patch_size=2, window_size=4`` -> feature maps 16, 8, 4, 2.

Deviation from the torchvision release this was checked against: the per-block ``shift_size``
list is copied before being zeroed for small maps (older torchvision mutated it in place, so one
small input disabled the shift for good), and dropout honours ``self.training``. Attention is
computed with ``scaled_dot_product_attention`` (same maths, relative bias and shift mask passed as
an additive mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import (
    Permute,
    StochasticDepth,
    check_mlp_and_dropouts,
    check_patch_size,
    check_positive_fields,
    check_positive_int,
    init_linear_trunc_normal,
)
from ._registry import register_model

__all__ = [
    "PatchMerging",
    "ShiftedWindowAttention",
    "SwinConfig",
    "SwinTransformer",
    "SwinTransformerBlock",
    "swin_t",
]


@dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of :class:`SwinTransformer` (validated on construction).

    Attributes
    ----------
    img_size : int
        Nominal side of the input images; must be a multiple of ``patch_size``. The network itself
        accepts any size (windows are padded), this only documents and validates the intent.
    patch_size : int
        Side of the square patches of the embedding convolution.
    window_size : int
        Side of the square attention windows.
    in_channels : int
        Input image channels.
    num_classes : int
        Output size of ``head``.
    embed_dim : int
        Channels ``C`` of the first stage; stage ``i`` has ``C * 2 ** i``.
    depths : tuple[int, ...]
        Blocks per stage.
    num_heads : tuple[int, ...]
        Attention heads per stage; must divide the stage width.
    mlp_ratio : float
        MLP hidden width over the stage width.
    dropout, attention_dropout : float
        Dropout probabilities (outputs, attention weights).
    stochastic_depth_prob : float
        Drop-path probability of the last block, linearly increasing from 0 (torchvision: 0.2).
    """

    img_size: int = 32
    patch_size: int = 2
    window_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.2

    def __post_init__(self) -> None:
        check_positive_fields(
            self,
            ("img_size", "patch_size", "window_size", "in_channels", "num_classes", "embed_dim"),
        )
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"depths and num_heads must be non-empty and of equal length; got "
                f"{self.depths!r} and {self.num_heads!r}"
            )
        for i, (d, h) in enumerate(zip(self.depths, self.num_heads, strict=True)):
            check_positive_int(d, f"depths[{i}]")
            check_positive_int(h, f"num_heads[{i}]")
            if (self.embed_dim * 2**i) % h:
                raise ValueError(
                    f"stage {i} width {self.embed_dim * 2**i} is not a multiple of "
                    f"num_heads[{i}] = {h}"
                )
        check_patch_size(self)
        check_mlp_and_dropouts(self)

    def feature_sizes(self) -> list[int]:
        """Feature-map side per stage for an ``img_size`` input (e.g. ``[16, 8, 4, 2]``)."""
        sizes = [self.img_size // self.patch_size]
        for _ in self.depths[1:]:
            sizes.append((sizes[-1] + 1) // 2)
        return sizes


class PatchMerging(nn.Module):
    """Concatenate 2x2 neighbours and project: ``(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)``.

    Odd sizes are zero-padded first, as in torchvision.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = x.shape[-3], x.shape[-2]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, H', W', C), H' and W' even
        x0 = x[..., 0::2, 0::2, :]  # (B, H'/2, W'/2, C)
        x1 = x[..., 1::2, 0::2, :]
        x2 = x[..., 0::2, 1::2, :]
        x3 = x[..., 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)  # (B, H'/2, W'/2, 4C)
        return self.reduction(self.norm(x))  # (B, H'/2, W'/2, 2C)


def _shift_mask(
    pad_h: int, pad_w: int, window: Sequence[int], shift: Sequence[int], x: Tensor
) -> Tensor:
    """Additive mask ``(num_windows, N, N)`` (0 or -100) separating regions mixed by the roll."""
    mask = x.new_zeros((pad_h, pad_w))
    h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
    w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
    count = 0
    for h in h_slices:
        for w in w_slices:
            mask[h[0] : h[1], w[0] : w[1]] = count
            count += 1
    mask = mask.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])  # (nW, N)
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)  # (nW, N, N)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class ShiftedWindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias, optionally shifted.

    Parameters
    ----------
    dim : int
        Channels ``C``.
    window_size : Sequence[int]
        ``(Wh, Ww)``.
    shift_size : Sequence[int]
        Cyclic shift ``(Sh, Sw)`` (0 for regular windows).
    num_heads : int
        Attention heads.

    Notes
    -----
    Maps ``(B, H, W, C)`` to ``(B, H, W, C)``.
    """

    def __init__(
        self,
        dim: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(window_size) != 2 or len(shift_size) != 2:
            raise ValueError("window_size and shift_size must be of length 2")
        self.window_size = [int(w) for w in window_size]
        self.shift_size = [int(s) for s in shift_size]
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.dropout = dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads)
        )  # ((2Wh-1)(2Ww-1), heads)
        coords = torch.stack(
            torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
        )  # (2, Wh, Ww)
        coords = coords.flatten(1)  # (2, N)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()  # (N, N, 2)
        rel[:, :, 0] += wh - 1
        rel[:, :, 1] += ww - 1
        rel[:, :, 0] *= 2 * ww - 1
        self.register_buffer("relative_position_index", rel.sum(-1).flatten())  # (N * N,)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def get_relative_position_bias(self) -> Tensor:
        """Relative position bias ``(1, heads, N, N)`` with ``N = Wh * Ww``."""
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, heads)
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        window = self.window_size
        pad_r = (window[1] - W % window[1]) % window[1]
        pad_b = (window[0] - H % window[0]) % window[0]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # (B, pH, pW, C)
        _, pad_h, pad_w, _ = x.shape
        shift = list(self.shift_size)  # copy: never mutate the configured shift
        if window[0] >= pad_h:
            shift[0] = 0
        if window[1] >= pad_w:
            shift[1] = 0
        shifted = sum(shift) > 0
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))

        # partition windows
        nh, nw = pad_h // window[0], pad_w // window[1]
        num_windows = nh * nw
        n = window[0] * window[1]
        x = x.view(B, nh, window[0], nw, window[1], C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, n, C)  # (B*nW, N, C)

        qkv = self.qkv(x).reshape(B * num_windows, n, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, heads, N, d)
        mask = self.get_relative_position_bias()  # (1, heads, N, N)
        if shifted:
            shift_mask = _shift_mask(pad_h, pad_w, window, shift, x)  # (nW, N, N)
            mask = mask + shift_mask.unsqueeze(1)  # (nW, heads, N, N)
            mask = mask.unsqueeze(0).expand(B, -1, -1, -1, -1)  # (B, nW, heads, N, N)
            mask = mask.reshape(B * num_windows, self.num_heads, n, n)
        p = self.attention_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=p)
        x = x.transpose(1, 2).reshape(B * num_windows, n, C)  # (B*nW, N, C)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)

        # reverse windows
        x = x.view(B, nh, nw, window[0], window[1], C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_h, pad_w, C)  # (B, pH, pW, C)
        if shifted:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()  # (B, H, W, C)


class SwinMLP(nn.Sequential):
    """``Linear, GELU, Dropout, Linear, Dropout`` (indices 0..4, as ``torchvision.ops.MLP``)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )


class SwinTransformerBlock(nn.Module):
    """``x + sd(attn(norm1(x)))`` then ``x + sd(mlp(norm2(x)))``.

    Maps ``(B, H, W, C)`` to ``(B, H, W, C)`` (stochastic depth ``sd`` only in training).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Sequence[int],
        shift_size: Sequence[int],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ShiftedWindowAttention(
            dim,
            window_size,
            shift_size,
            num_heads,
            attention_dropout=attention_dropout,
            dropout=dropout,
        )
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = SwinMLP(dim, int(dim * mlp_ratio), dropout)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))  # (B, H, W, C)
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))  # (B, H, W, C)


class SwinTransformer(nn.Module):
    """Swin Transformer classifier.

    Parameters
    ----------
    config : SwinConfig
        Hyper-parameters.

    Notes
    -----
    Maps ``(B, in_channels, H, W)`` to ``(B, num_classes)``. Internally the features are
    channels-last ``(B, H', W', C')``.
    """

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        c = config
        window = [c.window_size, c.window_size]
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(c.in_channels, c.embed_dim, c.patch_size, stride=c.patch_size),
                Permute([0, 2, 3, 1]),
                nn.LayerNorm(c.embed_dim),
            )
        ]
        total_blocks = sum(c.depths)
        block_id = 0
        for i_stage, depth in enumerate(c.depths):
            dim = c.embed_dim * 2**i_stage
            stage: list[nn.Module] = []
            for i_layer in range(depth):
                sd_prob = c.stochastic_depth_prob * block_id / max(total_blocks - 1, 1)
                stage.append(
                    SwinTransformerBlock(
                        dim,
                        c.num_heads[i_stage],
                        window_size=window,
                        shift_size=[0 if i_layer % 2 == 0 else w // 2 for w in window],
                        mlp_ratio=c.mlp_ratio,
                        dropout=c.dropout,
                        attention_dropout=c.attention_dropout,
                        stochastic_depth_prob=sd_prob,
                    )
                )
                block_id += 1
            layers.append(nn.Sequential(*stage))
            if i_stage < len(c.depths) - 1:
                layers.append(PatchMerging(dim))
        self.features = nn.Sequential(*layers)

        num_features = c.embed_dim * 2 ** (len(c.depths) - 1)
        self.norm = nn.LayerNorm(num_features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, c.num_classes)

        init_linear_trunc_normal(self, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)  # (B, H', W', C')
        x = self.norm(x)
        x = self.permute(x)  # (B, C', H', W')
        x = self.flatten(self.avgpool(x))  # (B, C')
        return self.head(x)  # (B, num_classes)


@register_model
def swin_t(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> SwinTransformer:
    """Swin-T (embed 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24)).

    Defaults to 32x32 inputs (``patch_size=2, window_size=4``); torchvision's ImageNet
    configuration is ``patch_size=4, window_size=7, img_size=224``. Other :class:`SwinConfig`
    fields are accepted as keywords.
    """
    return SwinTransformer(SwinConfig(num_classes=num_classes, in_channels=in_channels, **kwargs))
