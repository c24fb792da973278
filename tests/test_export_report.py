"""``lacoot export`` writes what the report chose: the same blocks, the same repair, the same
function (issue 27, item 2); a report of another training, or options that contradict it, are
refused with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _cli import lacoot_cmd

import lacoot
from lacoot.metrics import top1_accuracy
from lacoot.pipeline import checkpoint_subject


@pytest.fixture(scope="module")
def reported(trained: Path, work: Path) -> Path:
    """A copy of the trained checkpoint with a collapse report beside it (collapse/)."""
    folder = work / "reported"
    folder.mkdir(exist_ok=True)
    ckpt = folder / "checkpoint.pt"
    shutil.copy(trained, ckpt)
    lacoot_cmd("collapse", str(ckpt), "--blocks", "3", "--repair", "bn", "--calib-samples",
               "64", "--compare", "depth", "--no-progress", "--latency-repeats", "2",
               cwd=work)  # fmt: skip
    return ckpt


def _report(ckpt: Path) -> dict:
    return json.loads((ckpt.parent / "collapse" / "report.json").read_text())


def test_export_without_blocks_writes_the_reports_chosen_model(reported: Path, work: Path) -> None:
    target = work / "chosen.pt"
    out = lacoot_cmd("export", str(reported), "--output", str(target), "--no-progress",
                     cwd=work).stdout  # fmt: skip
    report = _report(reported)
    assert "following" in out and "collapse/report.json" in out
    saved = torch.load(target, weights_only=True)
    assert saved["removed"] == report["chosen"]["removed"] and len(saved["removed"]) == 3
    assert saved["patched"] == {}  # the report's repair (bn), not the default (linear)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():  # the very function of the collapse's own shallow.pt
        want = lacoot.load(reported.parent / "collapse" / "shallow.pt")(x)
        got = lacoot.load(target)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_export_blocks_n_is_the_reports_kth_point_with_its_accuracy(
    reported: Path, work: Path
) -> None:
    target = work / "k1.pt"
    lacoot_cmd("export", str(reported), "--blocks", "1", "--output", str(target), "--no-progress",
               cwd=work)  # fmt: skip
    report = _report(reported)
    point = report["sweeps"][report["criterion"]]["points"][1]
    assert torch.load(target, weights_only=True)["removed"] == point["removed"]
    sub = checkpoint_subject(reported, torch.device("cpu"), data_dir=str(work / "data"))
    accuracy = top1_accuracy(lacoot.load(target).eval(), sub.test)
    assert accuracy == pytest.approx(point["test_accuracy"], abs=1e-9)


def test_export_options_that_contradict_the_report_are_refused(reported: Path, work: Path) -> None:
    target = work / "contra.pt"
    err = lacoot_cmd("export", str(reported), "--criterion", "cosine", "--output", str(target),
                     cwd=work, check=2).stderr  # fmt: skip
    report = _report(reported)
    assert "--criterion 'cosine', but the report" in err
    assert f"chose with criterion {report['criterion']!r}" in err and "--report none" in err
    assert not target.exists()


def test_export_needs_blocks_or_a_report_made_from_the_checkpoint(
    reported: Path, work: Path
) -> None:
    err = lacoot_cmd("export", str(reported), "--report", "none", "--output", "x.pt", cwd=work,
                     check=2).stderr  # fmt: skip
    assert "no collapse report" in err and "expected --blocks" in err
    other = work / "retrained"  # the same file name, another training: its report does not count
    other.mkdir(exist_ok=True)
    shutil.copy(reported, other / "checkpoint.pt")
    report = _report(reported)
    report["train_history"] = report["train_history"][:-1]
    (other / "report.json").write_text(json.dumps(report))
    err = lacoot_cmd("export", str(other / "checkpoint.pt"), "--output", "y.pt", cwd=work,
                     check=2).stderr  # fmt: skip
    assert "no collapse report" in err
    err = lacoot_cmd("export", str(other / "checkpoint.pt"), "--report", str(other),
                     "--output", "y.pt", cwd=work, check=2).stderr  # fmt: skip
    assert "was not made from" in err and "histories differ" in err
    assert not (work / "x.pt").exists() and not (work / "y.pt").exists()
