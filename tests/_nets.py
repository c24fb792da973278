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
