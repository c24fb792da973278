"""A small Vision Transformer (Dosovitskiy et al., 2021) for low-resolution images.

``vit_tiny`` follows the DeiT-Ti shape (embed dim 192, depth 12, 3 heads, MLP ratio 4) with a
class token and a learnable position embedding sized from ``img_size`` and ``patch_size``
(default: 32x32 images, 4x4 patches -> 64 patches + 1 class token). Module names follow timm:
``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.i.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}``, ``norm``, ``head``.

Each encoder block ``blocks.i`` is a pre-norm residual block mapping ``(B, N, D)`` to
``(B, N, D)``; they are the units that LaCoOT can collapse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import (
    StochasticDepth,
    check_mlp_and_dropouts,
    check_patch_size,
    check_positive_fields,
    init_linear_trunc_normal,
)
from ._registry import register_model

__all__ = ["Attention", "EncoderBlock", "Mlp", "PatchEmbed", "ViTConfig", "VisionTransformer"]

#: ViTConfig fields that must be positive ints, in the order they are checked.
_POSITIVE_INT_FIELDS = (
    "img_size",
    "patch_size",
    "in_channels",
    "num_classes",
    "embed_dim",
    "depth",
    "num_heads",
)


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`VisionTransformer` (validated on construction).

    Attributes
    ----------
    img_size : int
        Side of the square input images; must be a multiple of ``patch_size``.
    patch_size : int
        Side of the square patches.
    in_channels : int
        Input image channels.
    num_classes : int
        Output size of ``head``.
    embed_dim : int
        Token width ``D``; must be a multiple of ``num_heads``.
    depth : int
        Number of encoder blocks.
    num_heads : int
        Attention heads.
    mlp_ratio : float
        MLP hidden width over ``D``.
    qkv_bias : bool
        Bias in the query/key/value projection.
    dropout : float
        Dropout after the position embedding, in the MLP and after the attention projection.
    attention_dropout : float
        Dropout on the attention weights.
    stochastic_depth_prob : float
        Drop-path probability of the last block (linearly increasing from 0 over the blocks).
    """

    img_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    stochastic_depth_prob: float = 0.0

    def __post_init__(self) -> None:
        check_positive_fields(self, _POSITIVE_INT_FIELDS)
        check_patch_size(self)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be a multiple of num_heads ({self.num_heads})"
            )
        check_mlp_and_dropouts(self)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens ``(img_size / patch_size) ** 2``."""
        return (self.img_size // self.patch_size) ** 2


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping patches and embed them linearly.

    Maps ``(B, C, H, W)`` with ``H == W == img_size`` to ``(B, N, D)``, ``N = (H / patch) ** 2``.
    """

    def __init__(self, img_size: int, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected input of shape (B, C, {self.img_size}, {self.img_size}); got "
                f"{tuple(x.shape)} (build the model with img_size matching the data)"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, N, D)


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, D)`` tokens via ``scaled_dot_product_attention``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, h, N, d)
        p = self.attention_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, N, d)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """``Linear -> GELU -> Dropout -> Linear -> Dropout`` on ``(B, N, D)`` tokens."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc1(x)))  # (B, N, hidden)
        return self.drop(self.fc2(x))  # (B, N, D)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Maps ``(B, N, D)`` to ``(B, N, D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attention_dropout, dropout)
        self.drop_path = StochasticDepth(stochastic_depth_prob, "row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))  # (B, N, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))  # (B, N, D)


class VisionTransformer(nn.Module):
    """ViT classifier reading the class token.

    Parameters
    ----------
    config : ViTConfig
        Hyper-parameters.

    Notes
    -----
    Maps ``(B, in_channels, img_size, img_size)`` to ``(B, num_classes)``; the input size is
    fixed by the position embedding and checked in :class:`PatchEmbed`.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_channels, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.embed_dim))
        self.pos_drop = nn.Dropout(c.dropout)
        denom = max(c.depth - 1, 1)
        self.blocks = nn.Sequential(
            *(
                EncoderBlock(
                    c.embed_dim,
                    c.num_heads,
                    c.mlp_ratio,
                    c.qkv_bias,
                    c.dropout,
                    c.attention_dropout,
                    c.stochastic_depth_prob * i / denom,
                )
                for i in range(c.depth)
            )
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.head = nn.Linear(c.embed_dim, c.num_classes)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        init_linear_trunc_normal(self, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, N + 1, D)
        x = self.blocks(x)  # (B, N + 1, D)
        x = self.norm(x)
        return self.head(x[:, 0])  # (B, num_classes)


@register_model
def vit_tiny(num_classes: int = 10, in_channels: int = 3, **kwargs: object) -> VisionTransformer:
    """ViT-Tiny (D=192, depth 12, 3 heads); other :class:`ViTConfig` fields as keywords.

    Defaults to 32x32 inputs with 4x4 patches; for 28x28 images pass ``img_size=28`` with
    ``patch_size=4`` or ``7``.
    """
    return VisionTransformer(ViTConfig(num_classes=num_classes, in_channels=in_channels, **kwargs))
