"""MACs, parameters, latency and accuracy measurements."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lacoot


class Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, N, D)
        return F.scaled_dot_product_attention(x, x, x)


def test_macs_of_known_layers() -> None:
    assert lacoot.count_macs(nn.Linear(7, 5), torch.randn(3, 7)) == 3 * 7 * 5
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert lacoot.count_macs(conv, torch.randn(1, 2, 6, 6)) == 4 * 6 * 6 * 2 * 9
    # attention: Q K^T and A V, each B*H*N*N*D multiply-adds, counted on CPU too
    b, h, n, d = 2, 3, 5, 4
    assert lacoot.count_macs(Attention(), torch.randn(b, h, n, d)) == 2 * b * h * n * n * d


def test_count_params_counts_shared_once() -> None:
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert lacoot.count_params(model) == 20


def test_latency_and_mode_restored() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    lat = lacoot.measure_latency(model, torch.randn(4, 8), warmup=1, repeats=5)
    assert lat.median_ms > 0 and lat.min_ms <= lat.median_ms and lat.repeats == 5
    assert lat.batch_size == 4 and model.training
    with pytest.raises(ValueError, match="repeats"):
        lacoot.measure_latency(model, torch.randn(4, 8), repeats=0)


def test_accuracy_exact() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert lacoot.evaluate_accuracy(model, [(x[:2], y[:2]), (x[2:], y[2:])]) == 75.0
    with pytest.raises(ValueError, match="no samples"):
        lacoot.evaluate_accuracy(model, [])
