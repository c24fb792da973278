"""SyncBatchNorm on CPU: two gloo ranks against one process holding the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks
from torch import nn

from lacoot.syncbn import SyncBatchNorm, convert_sync_batchnorm

RTOL, ATOL = 1e-5, 1e-6  # tolerance of every distributed-vs-single-process comparison
C = 3


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed ``(n, C, 5, 5)`` input and fixed loss weights of the same shape."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, C, 5, 5, generator=g) * 2.0 + 0.5
    w = torch.randn(n, C, 5, 5, generator=g)
    return x, w


def _init(bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Non-trivial affine parameters."""
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, 0.0, -0.7]))


def _steps(bn: nn.Module, x: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two training steps (loss = sum(out * w)), then an eval forward; what they give."""
    bn.train()
    bn(x)
    x = x.clone().requires_grad_(True)
    out = bn(x)
    (out * w).sum().backward()
    bn.eval()  # running statistics, no synchronisation
    with torch.no_grad():
        out_eval = bn(x)
    return {
        "out": out.detach(),
        "out_eval": out_eval,
        "grad_x": x.grad,
        "grad_weight": bn.weight.grad,
        "grad_bias": bn.bias.grad,
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
        "num_batches_tracked": bn.num_batches_tracked.clone(),
    }


def _rank_fn(rank: int, world_size: int, sizes: list[int]) -> dict[str, torch.Tensor]:
    x, w = _batch(sum(sizes))
    lo = sum(sizes[:rank])
    sl = slice(lo, lo + sizes[rank])
    bn = SyncBatchNorm(C)
    _init(bn)
    result = _steps(bn, x[sl], w[sl])
    dist.barrier()  # neither rank tears its gloo group down while the other still talks
    return result


@pytest.mark.parametrize(
    "sizes", [[4, 4], [3, 5], [0, 5]], ids=["equal", "unequal", "one-rank-empty"]
)
def test_two_ranks_match_single_process(sizes: list[int]) -> None:
    ranks = run_ranks(_rank_fn, world_size=2, args=(sizes,))
    x, w = _batch(sum(sizes))
    ref_bn = nn.BatchNorm2d(C)
    _init(ref_bn)
    ref = _steps(ref_bn, x, w)

    def close(a: torch.Tensor, b: torch.Tensor) -> None:
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)

    close(torch.cat([r["out"] for r in ranks]), ref["out"])
    close(torch.cat([r["grad_x"] for r in ranks]), ref["grad_x"])
    close(torch.cat([r["out_eval"] for r in ranks]), ref["out_eval"])
    for key in ("grad_weight", "grad_bias"):  # local grads; DDP would sum them over ranks
        close(sum(r[key] for r in ranks), ref[key])
    for r in ranks:  # every rank holds the same running statistics
        close(r["running_mean"], ref["running_mean"])
        close(r["running_var"], ref["running_var"])
        assert int(r["num_batches_tracked"]) == 2


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn2(self.conv(x))))


def test_convert_sync_batchnorm() -> None:
    torch.manual_seed(0)
    model = _Net()
    x = torch.randn(5, 2, 4, 4)
    for _ in range(3):  # non-trivial running statistics
        model(x + torch.randn_like(x))
    with torch.no_grad():
        model.bn2.weight.uniform_(0.5, 1.5)
        model.head[2].bias.uniform_(-1.0, 1.0)
    model.head[2].weight.requires_grad_(False)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref_eval = model(x)
    model.train()
    ref_train = model(x)
    model.eval()
    before_after_train = {k: v.clone() for k, v in model.state_dict().items()}

    # reset the running statistics that the training forward above moved
    model.load_state_dict(before)
    converted = convert_sync_batchnorm(model)
    assert converted is model
    assert type(model.bn2) is SyncBatchNorm and type(model.head[2]) is SyncBatchNorm
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    assert not model.training and not model.bn2.training
    assert model.head[2].weight.requires_grad is False
    assert model.bn2.weight.requires_grad is True

    state = model.state_dict()
    assert list(state) == list(before)
    for k, v in before.items():
        assert state[k].dtype == v.dtype
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)

    out_eval = model(x)
    torch.testing.assert_close(out_eval, ref_eval, rtol=0, atol=0)
    model.train()
    out_train = model(x)  # no process group: plain batch norm
    assert out_train.shape == (5, 6) and torch.isfinite(out_train).all()
    torch.testing.assert_close(out_train, ref_train, rtol=0, atol=0)
    for k, v in before_after_train.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)

    # a bare batch-norm layer gives a new module; a SyncBatchNorm is left alone
    bn = nn.BatchNorm3d(2, momentum=None, affine=False).to(torch.float64)
    new = convert_sync_batchnorm(bn)
    assert type(new) is SyncBatchNorm and new.momentum is None and not new.affine
    assert new.running_mean.dtype == torch.float64
    assert convert_sync_batchnorm(new) is new
    torch_sync = nn.SyncBatchNorm(2)
    assert type(convert_sync_batchnorm(torch_sync)) is SyncBatchNorm


def test_cumulative_average_and_trailing_dims() -> None:
    torch.manual_seed(0)
    bn, ref = SyncBatchNorm(C, momentum=None), nn.BatchNorm2d(C, momentum=None)
    for i in range(4):
        x = torch.randn(6, C, 4, 4) * (i + 1) + i
        torch.testing.assert_close(bn(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=0, atol=0)
    assert int(bn.num_batches_tracked) == 4

    for shape in [(7, C), (2, C, 5), (2, C, 2, 3, 2)]:  # (N, C, *) with 0..3 trailing dims
        y = torch.randn(shape)
        assert bn(y).shape == shape
        bn.eval()
        assert bn(y).shape == shape
        bn.train()


@pytest.mark.parametrize("shape", [(C,), (4, C + 1, 5), ()])
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    bn = SyncBatchNorm(C)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, .*got shape"):
        bn(torch.randn(shape))
