"""lacoot.metrics: evaluation functions against brute force and closed forms, shape checks."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lacoot.metrics import (
    Memoized,
    model_fingerprint,
    negative_perplexity,
    token_accuracy,
    top1_accuracy,
)


class Fixed(nn.Module):
    """Returns the logits it was built with, whatever the input (optionally wrapped)."""

    def __init__(self, logits: torch.Tensor, wrap: str = "") -> None:
        super().__init__()
        self.logits, self.wrap, self.p = logits, wrap, nn.Parameter(torch.zeros(()))

    def forward(self, x):
        if self.wrap == "tuple":
            return (self.logits, None)
        if self.wrap == "object":
            return SimpleNamespace(logits=self.logits, loss=None)
        return self.logits


def test_top1_accuracy_counts_argmax_hits_and_reads_wrapped_logits() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    for wrap in ("", "tuple", "object"):
        assert top1_accuracy(Fixed(logits, wrap), [(torch.zeros(4), labels)]) == 75.0


def test_top1_accuracy_refuses_language_model_shapes_even_when_they_line_up() -> None:
    logits = torch.randn(2, 5, 5)  # (B, T, V) with V == T: argmax(dim=1) would "work"
    with pytest.raises(ValueError, match=r"expects logits \(B, C\).*token_accuracy"):
        top1_accuracy(Fixed(logits), [(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))])


def test_token_metrics_against_brute_force_and_the_uniform_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 7, generator=g)
    targets = torch.randint(0, 7, (3, 4), generator=g)
    targets[0, 0] = -100  # ignored
    keep = targets != -100
    hits = (logits.argmax(-1) == targets)[keep].float().mean().item() * 100
    assert token_accuracy(Fixed(logits), [(torch.zeros(3), targets)]) == pytest.approx(hits)
    nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep]).item()
    got = negative_perplexity(Fixed(logits), [(torch.zeros(3), targets)])
    assert got == pytest.approx(-math.exp(nll), rel=1e-6)
    uniform = Fixed(torch.zeros(3, 4, 7))  # perplexity of a uniform guess over V is V
    assert negative_perplexity(uniform, [(torch.zeros(3), targets)]) == pytest.approx(-7.0)
    with pytest.raises(ValueError, match=r"expect logits \(B, T, V\) and targets \(B, T\)"):
        token_accuracy(Fixed(torch.randn(3, 7)), [(torch.zeros(3), targets[:, 0])])


def test_memoized_metric_evaluates_each_model_and_loader_once() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    a = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    b = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    memo = Memoized(top1_accuracy)
    assert memo.__name__ == "top1_accuracy"
    first = memo(net, a)
    assert first == top1_accuracy(net, a)
    assert memo(copy.deepcopy(net), a) == first  # equal contents: remembered
    assert memo(net, b) == top1_accuracy(net, b)  # another loader: evaluated
    assert (memo.calls, memo.hits) == (3, 1)
    changed = copy.deepcopy(net)
    changed[1].running_mean += 1.0  # a buffer, not a parameter: still another model
    assert model_fingerprint(changed) != model_fingerprint(net)
    assert memo(changed, a) == top1_accuracy(changed, a)
    retyped = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    retyped.load_state_dict(net.state_dict())
    retyped[1] = nn.Identity()  # same tensors but for one module: another fingerprint
    assert model_fingerprint(retyped) != model_fingerprint(net)
    assert (memo.calls, memo.hits) == (4, 1)
