"""Perplexity and next-token accuracy from one pass (lacoot.lm_metrics), against the two
separate metrics of lacoot.metrics."""

from __future__ import annotations

import math

import pytest
import torch
from _nets import TinyLM, token_data

from lacoot.lm_metrics import PerplexityAndAccuracy
from lacoot.metrics import negative_perplexity, token_accuracy


def test_one_pass_equals_the_two_metrics_and_keeps_the_accuracy():
    torch.manual_seed(0)
    model, data = TinyLM(), token_data()
    targets = data[0][1].clone()  # a view of the inputs' storage: write a copy
    targets[0, :3] = -100  # ignored targets count in neither
    data[0] = (data[0][0], targets)
    metric = PerplexityAndAccuracy()
    value = metric(model, data)
    assert value == pytest.approx(negative_perplexity(model, data), rel=1e-6)
    assert value < -1  # minus a perplexity
    assert metric.accuracy(data, value) == pytest.approx(token_accuracy(model, data), abs=1e-9)
    assert metric.accuracy(list(data), value) is None  # another loader
    assert metric.accuracy(data, value + 1e-3) is None and metric.accuracy(None, value) is None
    assert model.training  # the mode is restored


def test_a_value_that_two_passes_share_with_other_accuracies_is_ambiguous(monkeypatch):
    metric, data = PerplexityAndAccuracy(), token_data()
    passes = iter([(10.0, 3, 10), (10.0, 4, 10), (10.0, 4, 10)])
    monkeypatch.setattr(metric, "_pass", lambda model, loader: next(passes))
    value = metric(None, data)
    assert value == -math.exp(1.0) and metric.accuracy(data, value) == 30.0
    metric(None, data)  # same perplexity, another accuracy: never the wrong one
    assert metric.accuracy(data, value) is None
    metric(None, data)
    assert metric.accuracy(data, value) is None


def test_logits_of_another_shape_are_refused():
    data = [(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))]
    flat = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Flatten(), torch.nn.Linear(12, 5))
    with pytest.raises(ValueError, match=r"logits \(B, T, V\) and targets \(B, T\); got \(2, 5\)"):
        PerplexityAndAccuracy()(flat, data)
