"""Checkpoints and resuming: a run stopped by a signal, by a hard kill or between epochs resumes
to exactly the weights and history of an uninterrupted run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from _cli import RESUMABLE, _assert_same_weights, _start_and_signal, lacoot_cmd
from _faulty import CFG, Faulty, tiny_loader, tiny_model
from _nets import _data, residual_mlp

import lacoot
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


class _Stop(Exception):
    pass


@pytest.mark.parametrize(
    "stop_after, escalate, fade, every",
    [(1, None, 0.0, 1), (2, None, 0.0, 1), (2, 0.0, 0.0, 1), (2, None, 0.6, 1), (2, 0.0, 0.0, 3)],
)  # before and after the targets are chosen; escalated weights (tolerance 0: always rising);
# stopped while the target fades out (blend 0.89 at the resume, 1 at the end); a lazy penalty
def test_targeted_run_resumes_exactly(
    tmp_path, stop_after: int, escalate: float | None, fade: float, every: int
) -> None:
    loader = _data()
    schedule = "constant" if escalate is None else "cosine"  # escalation needs a decaying lr
    cfg = TrainConfig(epochs=3, lam=0.5, target_blocks=1, target_warmup=1, schedule=schedule,
                      lr=0.01, escalate=escalate, fade=fade, penalty_every=every)  # fmt: skip

    def fresh():
        torch.manual_seed(0)
        model = residual_mlp(units=3)
        return model, lacoot.find_blocks(model, loader[0][0][:2])

    model, blocks = fresh()
    train(model, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "a", device="cpu",
          progress=False)  # fmt: skip

    def stop(row):
        if row["epoch"] == stop_after:
            raise _Stop

    part, blocks = fresh()
    with pytest.raises(_Stop):
        train(part, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "b", device="cpu",
              progress=False, on_epoch=stop)  # fmt: skip
    resumed, blocks = fresh()
    train(resumed, blocks, loader, loader[:1], cfg, out_dir=tmp_path / "b", device="cpu",
          progress=False, resume=True)  # fmt: skip
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    targets = [load_checkpoint(tmp_path / d / "checkpoint.pt")["regularizer"]["targets"]
               for d in "ab"]  # fmt: skip
    assert targets[0] == targets[1] and len(targets[0]) == 1
    if escalate is not None:  # the escalated weight is carried across the resume
        weights = [load_checkpoint(tmp_path / d / "checkpoint.pt")["regularizer"]["weights"]
                   for d in "ab"]  # fmt: skip
        assert weights[0] == weights[1] and list(weights[0].values())[0] > 1.0


def test_resume_after_kill_matches_uninterrupted(work: Path, uninterrupted) -> None:
    proc = _start_and_signal(work, "killed", signal.SIGKILL)
    proc.communicate()
    killed_at = load_checkpoint(work / "killed" / "checkpoint.pt")["epoch"]
    assert 1 <= killed_at < 4, "the run was not interrupted; make it slower"
    lacoot_cmd(*RESUMABLE, "--out", "killed", "--resume", cwd=work)
    _assert_same_weights(uninterrupted, load_checkpoint(work / "killed" / "checkpoint.pt")["model"])


def test_resuming_with_other_options_names_them(tmp_path: Path) -> None:
    from lacoot.checkpoint import CheckpointError

    loader = _data()
    cfg = TrainConfig(epochs=2, lam=0.5, target_macs=1.0, schedule="constant", lr=0.01)
    model = residual_mlp(units=3)
    blocks = lacoot.find_blocks(model, loader[0][0][:2])
    train(model, blocks, loader, None, TrainConfig(**{**cfg.to_dict(), "epochs": 1}),
          out_dir=tmp_path, device="cpu", progress=False)  # fmt: skip
    other = TrainConfig(**{**cfg.to_dict(), "epochs": 1, "lam": 0.25})
    with pytest.raises(CheckpointError, match=r"other options: lam=0.5 \(now 0.25\); pass"):
        train(model, blocks, loader, None, other, out_dir=tmp_path, device="cpu",
              progress=False, resume=True)  # fmt: skip
