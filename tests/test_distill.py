"""Knowledge distillation (lacoot.distill, ``--teacher``/``--distill-weight``): the loss against
a hand computation, its gradient, the training loop with a teacher, and the command's checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _cli import NARROW, lacoot_cmd
from _nets import residual_mlp

from lacoot.config import TrainConfig
from lacoot.distill import distillation_loss
from lacoot.train import load_checkpoint, train


def _by_hand(s: np.ndarray, t: np.ndarray, hard: float, w: float, temp: float) -> float:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z / temp
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lp_s, lp_t = log_softmax(s), log_softmax(t)
    kl = (np.exp(lp_t) * (lp_t - lp_s)).sum(axis=1).mean()
    return (1 - w) * hard + w * temp**2 * kl


@pytest.mark.parametrize(("w", "temp"), [(0.0, 4.0), (0.5, 4.0), (1.0, 1.0), (0.9, 2.5)])
def test_distillation_loss_matches_a_hand_computation(w: float, temp: float) -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=g) * 3, torch.randn(7, 5, generator=g) * 3
    hard = torch.tensor(1.7)
    got = float(distillation_loss(s, t, hard, w, temp))
    assert got == pytest.approx(_by_hand(s.double().numpy(), t.double().numpy(), 1.7, w, temp),
                                rel=1e-5, abs=1e-6)  # float32 against float64  # fmt: skip
    same = float(distillation_loss(t, t, hard, w, temp))  # the student is the teacher: no KL
    assert same == pytest.approx((1 - w) * 1.7, abs=1e-5)


def test_distillation_loss_gradient() -> None:
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 3, generator=g, dtype=torch.float64)

    def soft(x: torch.Tensor) -> torch.Tensor:  # the loss in float64 (it upcasts to float32)
        lp_s, lp_t = torch.log_softmax(x / 2.0, 1), torch.log_softmax(t / 2.0, 1)
        return 4.0 * (lp_t.exp() * (lp_t - lp_s)).sum(1).mean()

    assert torch.autograd.gradcheck(soft, (s,))
    got = torch.autograd.grad(distillation_loss(s, t, torch.zeros(()), 1.0, 2.0), s)[0]
    want = torch.autograd.grad(soft(s), s)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, check_dtype=False)


def _data(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 6, generator=g)
    return [(x[i : i + 32], torch.randint(0, 3, (32,), generator=g)) for i in (0, 32, 64)]


def _student_and_teacher() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = residual_mlp()
    torch.manual_seed(1)
    return student, residual_mlp()


def _kl(student: torch.nn.Module, teacher: torch.nn.Module, batches: list) -> float:
    with torch.no_grad():
        return sum(float(distillation_loss(student(x), teacher(x), torch.zeros(()), 1.0, 1.0))
                   for x, _ in batches)  # fmt: skip


CFG = {"epochs": 4, "lam": 0.0, "target_macs": None, "fade": 0.0, "lr": 0.05,
       "schedule": "constant", "channels_last": False, "distill_temperature": 1.0}  # fmt: skip


def test_training_with_a_teacher_follows_it_and_ignores_the_labels_at_weight_1() -> None:
    batches = _data()
    student, teacher = _student_and_teacher()
    before = _kl(student.eval(), teacher.eval(), batches)
    cfg = TrainConfig(**CFG, distill_weight=1.0)
    train(student, [], batches, None, cfg, device="cpu", progress=False, teacher=teacher)
    assert _kl(student.eval(), teacher, batches) < 0.5 * before
    other = _student_and_teacher()[0]  # the same run with other labels: the same weights
    shuffled = [(x, (y + 1) % 3) for x, y in batches]
    train(other, [], shuffled, None, cfg, device="cpu", progress=False, teacher=teacher)
    for a, b in zip(student.state_dict().values(), other.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    half = _student_and_teacher()[0]  # at weight 0.5 the labels count
    train(half, [], shuffled, None, TrainConfig(**CFG, distill_weight=0.5), device="cpu",
          progress=False, teacher=teacher)  # fmt: skip
    assert not torch.allclose(half[0].weight, student[0].weight)


def test_a_teacher_is_given_exactly_when_the_weight_is_above_zero() -> None:
    student, teacher = _student_and_teacher()
    with pytest.raises(ValueError, match="distill_weight=0.5 with teacher=None"):
        train(student, [], _data(), None, TrainConfig(**CFG, distill_weight=0.5), device="cpu",
              progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="distill_weight=0.0 with teacher=Sequential"):
        train(student, [], _data(), None, TrainConfig(**CFG), device="cpu", progress=False,
              teacher=teacher)  # fmt: skip


def test_the_command_distils_records_the_teacher_and_refuses_a_mismatch(
    trained: Path, work: Path
) -> None:
    base = ["train", "--epochs", "1", "--batch-size", "32", "--no-progress", "--lam", "0",
            *NARROW]  # fmt: skip
    lacoot_cmd(*base, "--teacher", str(trained), "--distill-weight", "0.7", "--out", "kd",
               cwd=work)  # fmt: skip
    state = load_checkpoint(work / "kd" / "checkpoint.pt")
    assert state["teacher"]["format"] == "lacoot checkpoint"
    assert len(state["teacher"]["sha256"]) == 64
    assert json.loads(state["run_config"])["distill_weight"] == 0.7
    err = lacoot_cmd(*base, "--teacher", str(trained), "--out", "kd2", cwd=work, check=2).stderr
    assert "expected both (--teacher PATH --distill-weight W, W > 0) or neither" in err
    other = work / "other-teacher.pt"  # trained on other inputs: another normalisation
    shutil.copy(trained, other)
    saved = torch.load(other, weights_only=True)
    saved["preprocessing"]["mean"] = [m + 0.1 for m in saved["preprocessing"]["mean"]]
    torch.save(saved, other)
    err = lacoot_cmd(*base, "--teacher", str(other), "--distill-weight", "0.5", "--out", "kd3",
                     cwd=work, check=2).stderr  # fmt: skip
    assert "expects inputs normalised with mean" in err and "same data" in err
    assert not (work / "kd2").exists() and not (work / "kd3" / "config.json").exists()


def test_resuming_with_another_teacher_file_is_a_difference(trained: Path) -> None:
    from lacoot.pipeline import RunConfig, resume_differences

    state = load_checkpoint(trained)
    cfg = RunConfig.from_dict(json.loads(state["run_config"]))
    data = SimpleNamespace(fingerprint=state["data_fingerprint"])
    same = {"sha256": "a" * 64}
    assert resume_differences({**state, "teacher": same}, cfg, data, same) == []  # type: ignore[arg-type]
    diffs = resume_differences({**state, "teacher": same}, cfg, data,  # type: ignore[arg-type]
                               {"sha256": "b" * 64})  # fmt: skip
    assert diffs == [f"the teacher None (sha256 {'a' * 12}..., now {'b' * 12}...): another file"]
