"""The ``lacoot`` command as a user runs it: in a subprocess, on tiny data in the real format."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch
from _cli import NARROW, RESUMABLE, TINY, _assert_same_weights, _start_and_signal, lacoot_cmd

import lacoot
from lacoot.train import load_checkpoint, save_checkpoint


def test_help_documents_every_subcommand(work: Path) -> None:
    out = lacoot_cmd("--help", cwd=work).stdout
    for sub in ("train", "score", "collapse", "export", "run"):
        assert sub in out
        assert "usage: lacoot " + sub in lacoot_cmd(sub, "--help", cwd=work).stdout


def test_train_writes_checkpoint_and_logs(trained: Path) -> None:
    run = trained.parent
    history = json.loads((run / "log.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    msw = [k for k in history[0] if k.startswith("msw/")]
    assert len(msw) == 7  # resnet20: 7 collapsible blocks
    assert (run / "log.csv").read_text().splitlines()[0].startswith("epoch,")
    state = load_checkpoint(trained)
    assert state["epoch"] == 2 and state["model_spec"]["name"] == "resnet20"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["seed"] == 0


def test_score_prints_every_block(trained: Path, work: Path) -> None:
    out = lacoot_cmd("score", str(trained), "--criterion", "msw", "cosine", cwd=work).stdout
    scores = json.loads(out)
    assert set(scores) == {"msw", "cosine"}
    assert len(scores["msw"]) == 7 and all(v >= 0 for v in scores["msw"].values())


def test_collapse_writes_report_and_plot(trained: Path, work: Path) -> None:
    proc = lacoot_cmd(
        "collapse", str(trained), "--blocks", "3", "--out", "col", "--compare", "depth",
        "--criterion", "msw", "--latency-batch-sizes", "1", "--latency-repeats", "2", cwd=work,
    )  # fmt: skip
    # the two orders share at least the full model and the all-removed collapse
    hits = re.search(r"(\d+) of (\d+) evaluations were of a collapse already measured",
                     proc.stderr)  # fmt: skip
    assert hits is not None and 0 < int(hits[1]) < int(hits[2])
    report = json.loads((work / "col" / "report.json").read_text())
    assert report["chosen"]["k"] == 3 and len(report["chosen"]["removed"]) == 3
    points = report["sweeps"]["msw"]["points"]
    assert [p["k"] for p in points] == list(range(8))
    assert all(a["macs"] > b["macs"] for a, b in zip(points, points[1:], strict=False))
    assert set(report["sweeps"]) == {"msw", "depth"}
    md = (work / "col" / "report.md").read_text()
    assert "## Sweep" in md and "latency b=1" in md
    # the validation split holds 22 images: the report says 22, not the 2048 asked for
    assert "unrepaired val / test" in md and "repair: `linear`, 22 calibration" in md
    assert report["repair"] == {"method": "linear", "calib_samples": 22, "calib_split": "val"}
    assert all(set(p["unrepaired"]) == {"val_accuracy", "test_accuracy"} for p in points)
    png = (work / "col" / "accuracy_vs_macs.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    shallow = lacoot.load(work / "col" / "shallow.pt")
    assert lacoot.count_macs(shallow, torch.zeros(1, 1, 28, 28)) == report["chosen"]["macs"]
    before = (work / "col" / "report.json").read_bytes()
    err = lacoot_cmd("collapse", str(trained), "--blocks", "1", "--out", "col", cwd=work, check=2)
    assert "already holds results (accuracy_vs_macs.png" in err.stderr
    assert "--overwrite" in err.stderr
    assert (work / "col" / "report.json").read_bytes() == before
    lacoot_cmd(
        "collapse", str(trained), "--max-latency", "0.9", "--out", "lat", "--criterion", "depth",
        "--compare", "depth", "--repair", "none", "--latency-batch-sizes", "1", "4",
        "--latency-repeats", "3", cwd=work,
    )  # fmt: skip
    report = json.loads((work / "lat" / "report.json").read_text())
    full, chosen = report["sweeps"]["depth"]["points"][0], report["chosen"]
    assert report["budget"]["max_latency"] == 0.9
    assert chosen["latency_ms"]["4"] <= 0.9 * full["latency_ms"]["4"]  # the largest batch


def test_sigint_checkpoints_exits_130_and_resumes(work: Path, uninterrupted) -> None:
    proc = _start_and_signal(work, "sigint", signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    state = load_checkpoint(work / "sigint" / "checkpoint.pt")
    assert 1 <= state["epoch"] < 4, "the run was not interrupted; make it slower"
    assert proc.returncode == 130, err
    assert "SIGINT received: stopped" in err and "continue with --resume" in err
    lacoot_cmd(*RESUMABLE, "--out", "sigint", "--resume", cwd=work)
    _assert_same_weights(uninterrupted, load_checkpoint(work / "sigint" / "checkpoint.pt")["model"])


def test_penalty_flags_reach_the_regulariser(work: Path) -> None:
    lacoot_cmd(
        "train", "--epochs", "2", "--out", "tgt", "--relative", "--target-blocks", "2",
        "--target-warmup", "1", "--method", "random", "--lam", "2", "--fade", "0.5",
        "--stop-input-grad", *TINY[:3],
        "--no-progress",
        *NARROW, cwd=work,
    )  # fmt: skip
    state = load_checkpoint(work / "tgt" / "checkpoint.pt")
    tc = state["train_config"]
    assert tc["relative"] is True and tc["target_blocks"] == 2 and tc["method"] == "random"
    assert tc["fade"] == 0.5 and state["history"][-1]["fade"] == 1.0  # faded out by the end
    assert tc["stop_input_grad"] is True
    targets = state["regularizer"]["targets"]
    assert len(targets) == 2
    assert sorted(k for k in state["history"][-1] if k.startswith("msw/")) == sorted(
        f"msw/{t}" for t in targets
    )
    lacoot_cmd(
        "train", "--epochs", "1", "--out", "pat", "--penalize", "layer1.*", *TINY[:3],
        "--no-progress", *NARROW, cwd=work,
    )  # fmt: skip
    row = load_checkpoint(work / "pat" / "checkpoint.pt")["history"][-1]
    assert sorted(k for k in row if k.startswith("msw/")) == [
        "msw/layer1.0", "msw/layer1.1", "msw/layer1.2"
    ]  # fmt: skip


def test_config_file_and_flags(work: Path) -> None:
    (work / "cfg.yaml").write_text("epochs: 1\nlam: 0.5\nbatch-size: 32\nprogress: false\n")
    lacoot_cmd(
        "train", "--config", "cfg.yaml", "--lam", "0.25", "--out", "cfgrun", *NARROW, cwd=work
    )
    saved = json.loads((work / "cfgrun" / "config.json").read_text())
    assert saved["epochs"] == 1 and saved["lam"] == 0.25 and saved["batch_size"] == 32


def test_run_end_to_end(work: Path) -> None:
    lacoot_cmd(
        "run", "--epochs", "1", "--out", "main", "--latency-batch-sizes", "1", *TINY, *NARROW,
        "--max-macs", "0.6", cwd=work,
    )  # fmt: skip
    main = work / "main"
    for name in (
        "checkpoint.pt",
        "report.json",
        "report.md",
        "accuracy_vs_macs.png",
        "config.yaml",
    ):
        assert (main / name).is_file(), name
    report = json.loads((main / "report.json").read_text())
    assert report["chosen"]["macs"] <= 0.6 * report["full_macs"]
    assert report["seed"] == 0
    out = lacoot_cmd("export", "main/checkpoint.pt", "--output", "main-export.pt", cwd=work).stdout
    assert "following main/report.json" in out  # the run's own choice, not a fresh one
    exported = torch.load(work / "main-export.pt", weights_only=True)
    assert exported["removed"] == report["chosen"]["removed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--model", "resnet9", "--out", "x"], "unknown model 'resnet9'; valid names: "),
        (["train", "--dataset", "imagenet21k", "--out", "x"], "unknown dataset 'imagenet21k'"),
        (["train", "--lam", "-1", "--out", "x"], "--lam -1.0; expected"),
        (["train", "--epochs", "0", "--out", "x"], "--epochs 0; expected"),
        (["train", "--nonfinite", "ignore", "--out", "x"], "--nonfinite 'ignore'"),
        (["run", "--criterion", "magnitude", "--out", "x"], "unknown criterion 'magnitude'"),
        (["run", "--compare", "cosine", "entropy", "--out", "x"], "unknown criterion 'entropy'"),
        (["score", "missing.pt"], "does not exist"),
        (["collapse", "missing.pt", "--max-drop", "1"], "does not exist"),
        (["collapse", "missing.pt", "--max-latency", "1.5"], "--max-latency 1.5; expected a"),
        (["collapse", "missing.pt"], "--max-drop, --max-macs, --max-latency or --blocks"),
    ],
)
def test_bad_input_exits_2(work: Path, args: list[str], message: str) -> None:
    proc = lacoot_cmd(*args, cwd=work, check=2)
    assert message in proc.stderr
    assert not (work / "x").exists()


class _CodeCarrier:
    """Unpickling this runs code (creates a file): what weights_only loading must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_bad_files_and_budgets_exit_2(trained: Path, work: Path) -> None:
    (work / "garbage.pt").write_bytes(b"not a checkpoint")
    err = lacoot_cmd("score", "garbage.pt", cwd=work, check=2).stderr
    assert "is not a file torch.save wrote" in err
    truncated = work / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[:5000])
    err = lacoot_cmd("score", str(truncated), cwd=work, check=2).stderr
    assert "or it is truncated" in err
    state = load_checkpoint(trained)
    state["model_spec"] = {**state["model_spec"], "name": "resnet32"}
    save_checkpoint(work / "other.pt", {k: v for k, v in state.items() if k != "format"})
    err = lacoot_cmd("score", str(work / "other.pt"), cwd=work, check=2).stderr
    assert "does not fit model 'resnet32'" in err
    state["model_spec"] = {**state["model_spec"], "name": "resnet20", "num_classes": 7}
    save_checkpoint(work / "classes.pt", {k: v for k, v in state.items() if k != "format"})
    err = lacoot_cmd("score", str(work / "classes.pt"), cwd=work, check=2).stderr
    assert "does not fit model 'resnet20' with 7 classes" in err
    evil = work / "evil.pt"
    torch.save({"format": 1, "model": _CodeCarrier(str(work / "pwned"))}, evil)
    err = lacoot_cmd("collapse", str(evil), "--blocks", "1", cwd=work, check=2).stderr
    assert "holds Python objects" in err and "weights_only" not in err
    assert not (work / "pwned").exists()  # the pickled code never ran
    err = lacoot_cmd(
        "collapse", str(trained), "--max-macs", "0.01", "--compare", "--out", "imp", cwd=work,
        check=2,
    ).stderr  # fmt: skip
    assert "no collapse meets" in err
    err = lacoot_cmd("train", "--epochs", "1", "--out", "run", cwd=work, check=2).stderr
    assert "already holds results" in err and "--overwrite" in err
    (work / "bad.yaml").write_text("epochs: 1\nlamda: 2\n")
    err = lacoot_cmd("train", "--config", "bad.yaml", "--out", "y", cwd=work, check=2).stderr
    assert "unknown options ['lamda']" in err
    (work / "badtype.yaml").write_text("epochs: many\n")
    err = lacoot_cmd("train", "--config", "badtype.yaml", "--out", "y", cwd=work, check=2).stderr
    assert "--epochs 'many'" in err
    # the earlier results are intact
    assert load_checkpoint(trained)["epoch"] == 2
