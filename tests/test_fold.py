"""lacoot.fold: batch norm folded into the layer before it computes what the model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lacoot.fold import fold_batchnorm, fold_pairs
from lacoot.models import create


def _with_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


@pytest.mark.parametrize(("name", "kwargs"), [("resnet20", {}), ("resnet18", {"stem": "cifar"}),
                                              ("mobilenet_v2", {})])  # fmt: skip
def test_every_batch_norm_of_the_zoo_cnns_folds_within_1e_5(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    model = _with_statistics(create(name, num_classes=10, **kwargs), x)
    folded = fold_batchnorm(model, x[:2])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)


class SharedOutput(nn.Module):
    """The convolution's output feeds the batch norm and the sum: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.fc, self.bn1d = nn.Linear(3, 4), nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = (self.bn(y) + y).mean(dim=(2, 3))
        return self.bn1d(self.fc(z))


def test_a_fold_that_would_change_the_output_is_not_made() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5)
    model = _with_statistics(SharedOutput(), x)
    assert fold_pairs(model, x) == [("conv", "bn"), ("fc", "bn1d")]
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn, nn.BatchNorm2d)  # kept: y is used twice
    assert isinstance(folded.bn1d, nn.Identity)  # Linear + BatchNorm1d folded
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-5)
