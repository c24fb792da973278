"""lacoot.inputs: one tensor, a tuple or a dict of them, moved, called, sliced and repeated."""

from __future__ import annotations

import torch
from torch import nn

from lacoot.inputs import batch_size, call_model, first_samples, repeat_sample, to_device


class Echo(nn.Module):
    def forward(self, *args, **kwargs):
        return args, kwargs


def test_call_model_unpacks_tuples_as_positional_and_dicts_as_keyword_arguments() -> None:
    x, m = torch.zeros(3, 2), torch.ones(3, 1)
    assert call_model(Echo(), x) == ((x,), {})
    args, kwargs = call_model(Echo(), (x, m))
    assert args == (x, m) and kwargs == {}
    args, kwargs = call_model(Echo(), {"ids": x, "mask": m})
    assert args == () and set(kwargs) == {"ids", "mask"}


def test_slicing_repeating_and_moving_reach_every_tensor_and_keep_other_values() -> None:
    batch = {"ids": torch.arange(12).view(4, 3), "extra": (torch.zeros(4), 7), "flag": True}
    assert batch_size(batch) == 4
    two = first_samples(batch, 2)
    assert two["ids"].shape == (2, 3) and two["extra"][0].shape == (2,) and two["extra"][1] == 7
    five = repeat_sample(batch, 5)
    assert torch.equal(five["ids"], torch.arange(3).expand(5, 3)) and five["flag"] is True
    assert five["ids"].is_contiguous()
    moved = to_device((torch.zeros(2), [torch.ones(2)]), "cpu")
    assert isinstance(moved, tuple) and isinstance(moved[1], list)
