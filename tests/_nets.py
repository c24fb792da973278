"""Small models, and a tiny learnable dataset for them, shared by the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualUnit(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


def residual_mlp(d_in: int = 6, d: int = 16, units: int = 4, classes: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, d), *[ResidualUnit(d) for _ in range(units)], nn.Linear(d, classes)
    )


class EncoderClassifier(nn.Module):
    def __init__(self, d_in: int = 8, d: int = 32, layers: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d_in) -> (B, classes)
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _data(n: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 6, generator=g)
    Y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return [(X[i : i + 32], Y[i : i + 32]) for i in range(0, n, 32)]


# ---------------------------------------------------------------- models the zoo never had
class ParallelScales(nn.Module):
    """Blocks in a ModuleList paired with a parallel list of scales: deleting one block would
    shift every later scale onto the wrong block."""

    def __init__(self, d: int = 6, units: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualUnit(d) for _ in range(units))
        self.scales = [1.0 + i for i in range(units)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, b in enumerate(self.blocks):
            x = b(x) * self.scales[i]
        return x


class IndexedBlocks(nn.Module):
    """Blocks reached by index: deleting one leaves an index out of range."""

    def __init__(self, d: int = 6, units: int = 4) -> None:
        super().__init__()
        self.units = units
        self.blocks = nn.ModuleList(ResidualUnit(d) for _ in range(units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.units):
            x = self.blocks[i](x)
        return x


class MaskedUnit(nn.Module):
    """A block called as ``block(x, mask)``: only ``x`` flows through it."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x + self.fc(x) * mask


class MaskFirstUnit(MaskedUnit):
    """Takes the mask first and declares which argument flows."""

    lacoot_flow = 1

    def forward(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, mask)


class MaskedNet(nn.Module):
    """Blocks held as attributes and in a ModuleDict, each called with a mask."""

    def __init__(self, d: int = 6, classes: int = 3, mask_first: bool = False) -> None:
        super().__init__()
        unit = MaskFirstUnit if mask_first else MaskedUnit
        self.mask_first = mask_first
        self.first = unit(d)
        self.rest = nn.ModuleDict({"a": unit(d), "b": unit(d)})
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in (self.first, self.rest["a"], self.rest["b"]):
            x = block(mask, x) if self.mask_first else block(x, mask)
        return self.head(x)


class InPlaceUnit(nn.Module):
    """``x += f(x)``: modifies its own input."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x += self.fc(x)
        return x


class TupleInputNet(nn.Module):
    """``model(x, meta)`` or ``model(x=..., meta=...)``: two inputs."""

    def __init__(self, d: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(d + 1, d)
        self.body = nn.Sequential(ResidualUnit(d), ResidualUnit(d), ResidualUnit(d))
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(torch.cat([x, meta], dim=1))))


class TinyLM(nn.Module):
    """A decoder-style language model: ``(B, T)`` token ids -> ``(B, T, V)`` logits; its layers
    take ``(x, mask)``."""

    def __init__(self, vocab: int = 11, d: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(MaskedUnit(d) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        mask = torch.ones_like(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x)


def token_data(n: int = 64, t: int = 8, vocab: int = 11) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sequences counting up modulo ``vocab``: the next token is learnable."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    seq = (start + torch.arange(t + 1)) % vocab
    return [(seq[i : i + 16, :-1], seq[i : i + 16, 1:]) for i in range(0, n, 16)]
