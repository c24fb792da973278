"""Training under torch.distributed: 2 gloo processes on this machine (CPU, loopback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _data import write_idx_dataset
from _dist import run_ranks
from _nets import residual_mlp

import lacoot
from lacoot import distributed
from lacoot.train import load_checkpoint

# Tolerances: the gathered computation is the single-process one on the same rows, up to the
# float32 summation order of the gradient all-reduce.
RTOL, ATOL = 1e-5, 1e-6


def _penalty_and_grads(x: torch.Tensor, gather: bool, method: str):
    torch.manual_seed(0)
    model = residual_mlp(d_in=6, d=16, units=3)
    blocks = lacoot.find_blocks(model, x[:2])
    with lacoot.MSWRegularizer(model, blocks, lam=1.0, method=method, seed=5, gather=gather) as r:
        model(x)
        penalty = r.penalty()
        penalty.backward()
        grads = {
            n: torch.zeros_like(p) if p.grad is None else p.grad.clone()  # the head: no grad
            for n, p in model.named_parameters()
        }
        return float(penalty.detach()), grads


def _batch(n: int = 24) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(1))


def _rank_penalty(rank: int, world_size: int, method: str, gather: bool, sizes: list[int]):
    x = _batch(sum(sizes))
    start = sum(sizes[:rank])
    value, grads = _penalty_and_grads(x[start : start + sizes[rank]], gather, method)
    # what DistributedDataParallel does to gradients: average over ranks
    for g in grads.values():
        torch.distributed.all_reduce(g)
        g /= world_size
    return value, grads


@pytest.mark.parametrize(("method", "sizes"), [("ascent", [12, 12]), ("random", [9, 15])])
def test_global_msw_equals_single_process(method: str, sizes: list[int]) -> None:
    want_value, want_grads = _penalty_and_grads(_batch(sum(sizes)), False, method)
    results = run_ranks(_rank_penalty, 2, (method, True, sizes))
    for value, grads in results:
        assert value == pytest.approx(want_value, rel=RTOL)
        for name, g in grads.items():
            assert g.shape == want_grads[name].shape and torch.isfinite(g).all()
            torch.testing.assert_close(g, want_grads[name], rtol=RTOL, atol=ATOL)


def test_local_msw_is_each_ranks_own() -> None:
    results = run_ranks(_rank_penalty, 2, ("random", False, [12, 12]))
    x = _batch(24)
    for rank, (value, _) in enumerate(results):
        want, _ = _penalty_and_grads(x[12 * rank : 12 * rank + 12], False, "random")
        assert value == pytest.approx(want, rel=RTOL)
    assert results[0][0] != pytest.approx(results[1][0], rel=1e-3)


def _escalated_weights(rank: int, world_size: int, sizes: list[int]) -> dict[str, float]:
    torch.manual_seed(0)
    model = residual_mlp(d_in=6, d=16, units=3)
    x = _batch(sum(sizes))[sum(sizes[:rank]) : sum(sizes[: rank + 1])]
    blocks = [b.name for b in lacoot.find_blocks(model, x[:1])]
    with lacoot.MSWRegularizer(model, blocks, method="random", seed=5, escalate=0.05,
                               escalate_rate=2.0) as reg:  # fmt: skip
        for _ in range(2):
            model(x)
            reg.penalty()
        return dict(reg.weights)


def test_escalation_weighs_every_sample_even_on_a_rank_with_one() -> None:
    """A rank whose batch is too small for a distance (1 sample) still takes part in the
    influence all-reduce: both ranks end with the weights of one process on all 16 samples."""
    want = _escalated_weights(0, 1, [16])
    assert sorted(set(want.values())) == [1.0, 4.0]  # some blocks alive, some under 0.05
    assert run_ranks(_escalated_weights, 2, ([1, 15],)) == [want, want]


def _gather_shapes(rank: int, world_size: int):
    x = torch.full((rank + 1, 3), float(rank), requires_grad=True)
    y = distributed.gather_batch(x)
    (y.sum() * (rank + 1)).backward()
    return y.detach(), x.grad


def test_gather_batch_unequal_sizes_and_gradients() -> None:
    (y0, g0), (y1, g1) = run_ranks(_gather_shapes, 2)
    want = torch.tensor([[0.0] * 3, [1.0] * 3, [1.0] * 3])
    assert torch.equal(y0, want) and torch.equal(y1, want)
    # every rank's loss is (rank + 1) * sum: each slice receives 1 + 2 = 3
    assert torch.equal(g0, torch.full((1, 3), 3.0)) and torch.equal(g1, torch.full((2, 3), 3.0))


def test_not_distributed_is_a_single_process() -> None:
    where = distributed.info()
    assert (where.rank, where.world_size, where.distributed) == (0, 1, False)
    x = torch.randn(3, 2)
    assert distributed.gather_batch(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


# ------------------------------------------------------------------------------- torchrun
NARROW = ["--model-arg", "widths=[4, 4, 8]"]
TRAIN = ["train", "--batch-size", "32", "--lr", "0.05", "--no-progress", "--schedule", "cosine"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_idx_dataset(root / "data", n_train=224, n_test=64)
    return root


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "LACOOT_DATA": str(work / "data"), "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, work: Path, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "lacoot", *args,
    ]  # fmt: skip


def _run(cmd: list[str], work: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=work, env=_env(work), capture_output=True, text=True, timeout=600
    )
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def test_torchrun_trains_deterministically_rank0_writes(work: Path) -> None:
    args = [*TRAIN, "--epochs", "2", *NARROW, "--global-msw"]
    first = _run(torchrun(*args, "--out", "ddp1", work=work), work)
    _run(torchrun(*args, "--out", "ddp2", work=work), work)
    assert first.stdout.count("trained resnet20") == 1  # rank 0 reports, rank 1 is silent
    a, b = (load_checkpoint(work / d / "checkpoint.pt") for d in ("ddp1", "ddp2"))
    assert a["world_size"] == 2 and a["epoch"] == 2 and len(a["rng_ranks"]) == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    log = json.loads((work / "ddp1" / "log.json").read_text())
    assert [row["epoch"] for row in log] == [1, 2]
    targets = a["regularizer"]["targets"]  # the default budget, chosen alike on both ranks
    assert targets and targets == b["regularizer"]["targets"]
    assert all(k in log[-1] for k in ("val_accuracy", *(f"msw/{t}" for t in targets)))
    files = sorted(p.name for p in (work / "ddp1").iterdir()
                   if p.name != "tensorboard" and not p.name.startswith("."))  # fmt: skip
    assert files == ["checkpoint.pt", "config.json", "log.csv", "log.json"]
    board = work / "ddp1" / "tensorboard"  # when tensorboard is installed: rank 0's only
    assert not board.exists() or len(list(board.iterdir())) == 1


def test_torchrun_sigterm_then_resume_with_one_process(work: Path) -> None:
    args = [*TRAIN, "--epochs", "12", *NARROW, "--out", "ddp_stop"]
    proc = subprocess.Popen(
        torchrun(*args, work=work), cwd=work, env=_env(work), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = work / "ddp_stop" / "log.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(json.loads(log.read_text() or "[]")) >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "SIGTERM received" in err, err
    state = load_checkpoint(work / "ddp_stop" / "checkpoint.pt")
    assert state["world_size"] == 2 and 1 <= state["epoch"] < 12, "not interrupted; slow it"
    # go on in a single process: the same epochs, one log row each
    env = _env(work)
    done = subprocess.run(
        [sys.executable, "-m", "lacoot", *args, "--resume"], cwd=work, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    final = load_checkpoint(work / "ddp_stop" / "checkpoint.pt")
    assert final["epoch"] == 12 and final["world_size"] == 1
    assert [row["epoch"] for row in final["history"]] == list(range(1, 13))
    assert all(torch.isfinite(v).all() for v in final["model"].values() if v.is_floating_point())


def test_batch_not_divisible_by_processes(work: Path) -> None:
    proc = _run(
        torchrun("train", "--batch-size", "33", "--epochs", "1", "--out", "odd", *NARROW,
                 work=work),
        work, check=None,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "--batch-size 33 is not divisible by the 2 processes" in proc.stderr
    proc = _run(torchrun("collapse", "none.pt", "--blocks", "1", work=work), work, check=None)
    assert proc.returncode != 0
    assert "`lacoot collapse` runs in one process; only train and run" in proc.stderr


def _ddp_train(rank: int, world_size: int, out: str, fault: bool, resume: bool, sync_bn: bool):
    """Train the tiny model with DDP; rank 0 may be sent SIGTERM at epoch 1, batch 1."""
    from _faulty import CFG, Faulty, tiny_loader, tiny_model

    from lacoot.train import TrainConfig, TrainingInterrupted, train

    model, blocks = tiny_model()
    loader = tiny_loader(rank, world_size)
    if fault and rank == 0:
        loader = Faulty(loader, 1, 1, signal.SIGTERM)
    cfg = TrainConfig(**{**CFG.to_dict(), "global_msw": True, "sync_bn": sync_bn})
    try:
        train(model, blocks, loader, None, cfg, out_dir=out, resume=resume, progress=False)
    except TrainingInterrupted as exc:
        return ("interrupted", exc.epoch, exc.batch)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sync_bn", [False, True])
def test_ddp_signal_on_one_rank_stops_all_and_resumes_exactly(
    tmp_path: Path, sync_bn: bool
) -> None:
    full = run_ranks(_ddp_train, 2, (str(tmp_path / "full"), False, False, sync_bn))
    assert all(torch.equal(full[0][k], full[1][k]) for k in full[0])  # replicas agree
    cut = run_ranks(_ddp_train, 2, (str(tmp_path / "cut"), True, False, sync_bn))
    assert cut == [("interrupted", 1, 2)] * 2  # rank 1 never saw a signal, yet stopped alike
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["batch"], state["world_size"]) == (1, 2, 2)
    resumed = run_ranks(_ddp_train, 2, (str(tmp_path / "cut"), False, True, sync_bn))
    for key, want in full[0].items():
        assert torch.equal(resumed[0][key], want), key
    if sync_bn:  # the global batch statistics differ from the local ones
        local = run_ranks(_ddp_train, 2, (str(tmp_path / "local"), False, False, False))
        assert not torch.equal(local[0]["bn1.running_mean"], full[0]["bn1.running_mean"])
