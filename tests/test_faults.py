"""Training under faults: signals mid-epoch, non-finite losses (library level, one process)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from _faulty import CFG, Faulty, tiny_loader, tiny_model

from lacoot.train import TrainConfig, TrainingInterrupted, load_checkpoint, train


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_step_checkpoints_and_resumes_exactly(tmp_path: Path, sig) -> None:
    model, blocks = tiny_model()
    train(model, blocks, tiny_loader(), None, CFG, out_dir=tmp_path / "full", progress=False)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    model, blocks = tiny_model()
    with pytest.raises(TrainingInterrupted) as info:
        train(
            model, blocks, Faulty(tiny_loader(), 1, 2, sig), None, CFG, out_dir=tmp_path / "cut",
            progress=False,
        )  # fmt: skip
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    e = info.value
    assert (e.signum, e.epoch, e.batch) == (sig, 1, 3)  # the step that saw the signal finished
    assert f"{signal.Signals(sig).name} received: stopped epoch 2, after batch 3" in str(e)
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (state["epoch"], state["batch"], len(state["history"])) == (1, 3, 1)
    model, blocks = tiny_model()
    result = train(
        model, blocks, tiny_loader(), None, CFG, out_dir=tmp_path / "cut", resume=True,
        progress=False,
    )  # fmt: skip
    want, got = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(result.checkpoint)
    for key in want:
        assert torch.equal(want[key], got[key]), key
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["history"]
    for a, b in zip(full, result.history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key != "seconds":
                assert a[key] == pytest.approx(b[key], rel=1e-12), key


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    model, blocks = tiny_model()
    saved: list[bytes] = []
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(FloatingPointError) as info:
        train(
            model, blocks, Faulty(tiny_loader(), 1, 4, "nan"), None, CFG, out_dir=tmp_path,
            progress=False, on_epoch=lambda row: saved.append(ckpt.read_bytes()),
        )  # fmt: skip
    message = str(info.value)
    assert "non-finite loss at epoch 2, step 5 of 6" in message
    assert "non-finite block distances: ['layer1.0', 'layer1.1', 'layer1.2'" in message
    assert f"the last good checkpoint, {ckpt} (epoch 1), is kept" in message
    assert "--nonfinite skip" in message
    assert len(saved) == 1 and ckpt.read_bytes() == saved[0]


def test_nonfinite_skip_drops_the_batch_and_goes_on(tmp_path: Path) -> None:
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "nonfinite": "skip"})
    with pytest.warns(RuntimeWarning, match="epoch 2: skipped 1 batches"):
        result = train(
            model, blocks, Faulty(tiny_loader(), 1, 4, "nan"), None, cfg, out_dir=tmp_path,
            progress=False,
        )  # fmt: skip
    assert [row.get("skipped_batches", 0) for row in result.history] == [0, 1, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(torch.tensor(v)) for k, v in result.history[2].items())
    out = model.eval()(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_bad_training_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="nonfinite='ignore'; expected 'stop' or 'skip'"):
        TrainConfig(nonfinite="ignore")
    with pytest.raises(ValueError, match="unknown training options \\['lamda'\\]"):
        TrainConfig.from_dict({"lamda": 1.0})
    assert TrainConfig.same_run({"epochs": 3, "lam": 0.1, "lr": 0.05}, TrainConfig(
        epochs=3, lam=0.1, lr=0.05))  # fmt: skip
    assert not TrainConfig.same_run({"epochs": "x"}, CFG)


def test_dataloader_with_distributed_sampler_is_told_the_epoch(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,)))
    sampler = DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    seen: list[int] = []
    model, blocks = tiny_model()
    cfg = TrainConfig(**{**CFG.to_dict(), "epochs": 2})
    loader = DataLoader(data, batch_size=8, sampler=sampler)
    train(
        model,
        blocks,
        loader,
        None,
        cfg,
        progress=False,
        on_epoch=lambda r: seen.append(sampler.epoch),
    )
    assert seen == [0, 1]
