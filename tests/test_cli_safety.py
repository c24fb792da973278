"""Nothing lost, nothing silently wrong (issue 26): the ``lacoot`` command as a user runs it, on
tiny data, in a subprocess.

Output folders (one rule, a lock, a manifest, refused commands write nothing), resume guards,
the validation split, deployable inputs, latency and reproducibility in the report, and one
clear line (no traceback) for every user error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _cli import NARROW, TINY, lacoot_cmd
from _data import write_idx_dataset

from lacoot.outdir import LOCK_NAME, MANIFEST_NAME, OutputFolder
from lacoot.provenance import latency_conditions
from lacoot.train import load_checkpoint, save_checkpoint

FAST = ["--epochs", "1", *TINY[:3], *NARROW]  # one epoch, narrow resnet20, no progress bars
COLLAPSE = ["--latency-batch-sizes", "1", "--latency-repeats", "2", "--compare", "--calib-samples",
            "32"]  # fmt: skip


def _error(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command (no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lacoot: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(work: Path) -> Path:
    """A finished two-epoch training folder of this module."""
    lacoot_cmd("train", "--out", "safe", "--epochs", "2", *FAST[2:], cwd=work)
    return work / "safe"


# ------------------------------------------------------------------------------- data lost
def test_score_out_is_a_folder_and_never_replaces_a_file(finished: Path, work: Path) -> None:
    ckpt = finished / "checkpoint.pt"
    (work / "report.json").write_text('{"mine": 1}')
    before = ckpt.read_bytes()
    for target in ("report.json", str(ckpt)):
        err = _error(lacoot_cmd("score", str(ckpt), "--out", target, cwd=work, check=2))
        assert "is a file; expected a folder" in err and "--out" in err
    assert ckpt.read_bytes() == before and (work / "report.json").read_text() == '{"mine": 1}'
    lacoot_cmd("score", str(ckpt), "--out", "scored", cwd=work)
    scores = json.loads((work / "scored" / "scores.json").read_text())
    assert set(scores) == {"msw"} and len(scores["msw"]) == 7
    err = _error(lacoot_cmd("score", str(ckpt), "--out", "scored", cwd=work, check=2))
    assert "already holds results (scores.json)" in err and "--overwrite" in err
    lacoot_cmd("score", str(ckpt), "--out", "scored", "--overwrite", cwd=work)


def test_a_refused_resume_rewrites_nothing_and_lists_every_difference(
    finished: Path, work: Path
) -> None:
    before = _snapshot(finished)
    proc = lacoot_cmd("train", "--out", "safe", "--resume", "--epochs", "3", "--lr", "0.2",
                      "--no-progress", cwd=work, check=2)  # fmt: skip
    err = _error(proc)
    assert "--epochs 2 (now 3)" in err and "--lr 0.1 (now 0.2)" in err
    assert _snapshot(finished) == before  # config.json, checkpoint and logs as they were
    # --resume alone continues with the recorded options (here: nothing left to do)
    out = lacoot_cmd("train", "--out", "safe", "--resume", cwd=work).stdout
    assert "for 2 epochs" in out
    assert load_checkpoint(finished / "checkpoint.pt")["epoch"] == 2


def test_resume_on_other_data_is_refused_the_same_data_elsewhere_is_not(
    finished: Path, work: Path
) -> None:
    write_idx_dataset(work / "other", n_train=224, n_test=64, seed=1)
    err = _error(lacoot_cmd("train", "--out", "safe", "--resume", "--data-dir", "other",
                            cwd=work, check=2))  # fmt: skip
    assert "the training data (fingerprint" in err and "other images" in err
    shutil.copytree(work / "data", work / "moved")
    lacoot_cmd("train", "--out", "safe", "--resume", "--data-dir", "moved", cwd=work)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--val-fraction", "0"], "--val-fraction 0 holds out no validation split"),
        (["--target-blocks", "100"], "--target-blocks 100, but model 'resnet20' has only 7"),
        (["--lr", "1e30", "--target-macs", "1"], "non-finite loss at epoch 1"),
    ],
)
def test_a_refused_training_writes_nothing(work: Path, args: list[str], message: str) -> None:
    (work / "mine").mkdir(exist_ok=True)
    (work / "mine" / "notes.txt").write_text("keep me")
    for out in ("fresh", "mine"):
        err = _error(lacoot_cmd("train", "--out", out, *FAST, *args, cwd=work, check=2))
        assert message in err
    assert not (work / "fresh").exists()  # not even the folder
    assert _snapshot(work / "mine") == {"notes.txt": b"keep me"}


def test_the_corrected_command_is_not_refused_after_a_refusal(work: Path) -> None:
    lacoot_cmd("train", "--out", "fixed", *FAST, "--target-blocks", "100", cwd=work, check=2)
    lacoot_cmd("train", "--out", "fixed", *FAST, "--target-blocks", "2", cwd=work)
    manifest = json.loads((work / "fixed" / MANIFEST_NAME).read_text())
    assert {"checkpoint.pt", "config.json", "log.json"} <= set(manifest["files"])
    assert not (work / "fixed" / LOCK_NAME).exists()  # released


def test_a_locked_folder_is_refused_naming_its_holder(finished: Path, work: Path) -> None:
    ckpt = str(finished / "checkpoint.pt")
    with OutputFolder.open(work / "held", "pytest holder"):
        err = _error(lacoot_cmd("score", ckpt, "--out", "held", cwd=work, check=2))
        assert f"in use by another lacoot run (pid {os.getpid()}" in err and "pytest holder" in err
        assert not (work / "held" / "scores.json").exists()
    stale = work / "stale"
    stale.mkdir()
    (stale / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": "gone",
                                               "command": "dead", "started": "then"}))  # fmt: skip
    lacoot_cmd("score", ckpt, "--out", "stale", cwd=work)  # a dead process's lock is taken over
    assert (stale / "scores.json").is_file() and not (stale / LOCK_NAME).exists()


def test_two_trainings_into_one_folder_one_is_refused(work: Path) -> None:
    env = {**os.environ, "LACOOT_DATA": str(work / "data")}
    cmd = [sys.executable, "-m", "lacoot.cli", "train", "--out", "race", *FAST, "--epochs", "3"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = [subprocess.Popen([*cmd, "--seed", str(s)], cwd=work, env=env, **pipes)
             for s in (0, 1)]  # fmt: skip
    done = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in done) == [0, 2], done
    refused = next(err for code, err in done if code == 2)
    assert "is in use by another lacoot run" in refused
    seed = json.loads((work / "race" / "config.json").read_text())["seed"]
    state = load_checkpoint(work / "race" / "checkpoint.pt")
    assert json.loads(state["run_config"])["seed"] == seed  # one run's files, all of them


def test_overwrite_clears_what_lacoot_wrote_not_the_users_files(work: Path) -> None:
    lacoot_cmd("run", "--out", "ow", *FAST, *COLLAPSE, "--max-macs", "0.9", cwd=work)
    lacoot_cmd("collapse", "ow/checkpoint.pt", "--blocks", "1", *COLLAPSE, "--no-progress",
               cwd=work)  # fmt: skip
    (work / "ow" / "notes.txt").write_text("mine")
    assert (work / "ow" / "collapse" / "report.md").is_file()
    err = _error(lacoot_cmd("train", "--out", "ow", *FAST, cwd=work, check=2))
    assert "already holds results" in err
    lacoot_cmd("train", "--out", "ow", *FAST, "--seed", "3", "--overwrite", cwd=work)
    left = {p.name for p in (work / "ow").iterdir()}
    assert left == {"checkpoint.pt", "config.json", "log.json", "log.csv", "notes.txt",
                    MANIFEST_NAME} | ({"tensorboard"} & left)  # fmt: skip
    assert json.loads((work / "ow" / "config.json").read_text())["seed"] == 3


# ----------------------------------------------------------------------- silently wrong
def test_run_reports_its_input_latency_conditions_and_reproducibility(work: Path) -> None:
    lacoot_cmd("run", "--out", "prov", *FAST, *COLLAPSE, "--max-macs", "0.9", cwd=work)
    report = json.loads((work / "prov" / "report.json").read_text())
    state = load_checkpoint(work / "prov" / "checkpoint.pt")
    pre = state["preprocessing"]
    assert report["preprocessing"] == pre and pre["input_shape"] == [1, 28, 28]
    assert len(pre["class_names"]) == 10 and pre["channel_order"] == "grayscale"
    side = json.loads((work / "prov" / "shallow.pt.json").read_text())
    assert side["input"]["mean"] == pre["mean"] and "by the caller" in side["input"][
        "normalization_applied"]  # fmt: skip
    assert torch.load(work / "prov" / "shallow.pt", weights_only=True)["preprocessing"] == pre
    cond = report["latency_conditions"]
    assert cond["torch_threads"] >= 1 and cond["cpu_count"] == os.cpu_count()
    assert {"load_before", "load_after", "max_spread", "under_load"} <= set(cond)
    assert cond["measurements"] >= 1
    md = (work / "prov" / "report.md").read_text()
    assert f"{pre['mean'][0]:.4f}" in md and "## Latency measurement" in md
    assert ("latencies taken under load" in md) == cond["under_load"]
    assert "## Reproducibility" in md and "deterministic algorithms off" in md
    assert "a budget can aim at, and remove, other blocks" in md
    assert report["environment"]["determinism"]["deterministic_algorithms"] is False


def test_latency_figures_are_flagged_under_load_or_spread() -> None:
    calm = latency_conditions([0.01, 0.05], 0.1, 0.2, torch.device("cpu"))
    assert calm["under_load"] is False and calm["reasons"] == []
    loaded = latency_conditions([0.01], 99.0, 0.1, torch.device("cpu"))
    assert loaded["under_load"] and "load average 99.00" in loaded["reasons"][0]
    spread = latency_conditions([0.01, 0.35], None, None, torch.device("cpu"))
    assert spread["under_load"] and "spread up to 35%" in spread["reasons"][0]


def test_val_fraction_0_is_refused_unless_the_training_split_is_stated(work: Path) -> None:
    err = _error(lacoot_cmd("run", "--out", "nv", *FAST, "--val-fraction", "0", cwd=work,
                            check=2))  # fmt: skip
    assert "--val-from 'train'" in err and not (work / "nv").exists()
    lacoot_cmd("run", "--out", "nv", *FAST, *COLLAPSE, "--val-fraction", "0", "--val-from",
               "train", "--max-macs", "0.9", cwd=work)  # fmt: skip
    md = (work / "nv" / "report.md").read_text()
    assert "no validation split" in md and "train-split acc %" in md and "val acc" not in md
    report = json.loads((work / "nv" / "report.json").read_text())
    assert report["repair"]["calib_split"] == "train" and report["repair"]["calib_samples"] == 32
    for cmd in (["score"], ["collapse", "--blocks", "1", "--out", "nvc"]):
        err = _error(lacoot_cmd(cmd[0], "nv/checkpoint.pt", *cmd[1:], cwd=work, check=2))
        assert "--val-fraction 0" in err and "--val-from 'train'" in err
    assert not (work / "nvc").exists()
    lacoot_cmd("score", "nv/checkpoint.pt", "--val-from", "train", cwd=work)


# --------------------------------------------------------------------------------- errors
TRAIN = ["train", "--out", "nothing", "--no-progress", *NARROW]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*TRAIN, "--lr", "inf"], "--lr inf; expected a finite learning rate"),
        ([*TRAIN, "--model-args", "foo=1"], "'foo': 1} do not fit model 'resnet20'"),
        ([*TRAIN, "--batch-size", "100000"], "--batch-size 100000 is larger than the training"),
        ([*TRAIN, "--config", "."], "--config '.' is a folder"),
        ([*TRAIN, "--resume", "--overwrite"], "--resume and --overwrite"),
        (["score", ".", "--out", "nothing"], "checkpoint '.' is a folder"),
    ],
)
def test_user_errors_are_one_line_naming_the_flag(
    work: Path, args: list[str], message: str
) -> None:
    proc = lacoot_cmd(*args, cwd=work, check=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (work / "nothing").exists()


def test_debug_shows_the_traceback(work: Path) -> None:
    proc = lacoot_cmd("train", "--lr", "inf", "--out", "dbg", "--debug", cwd=work, check=1)
    assert "Traceback" in proc.stderr and "ValueError" in proc.stderr


def test_foreign_checkpoints_get_one_clear_line(finished: Path, work: Path) -> None:
    (work / "notes.pt").write_text("some text\n")
    err = _error(lacoot_cmd("score", "notes.pt", cwd=work, check=2))
    assert "is not a file torch.save wrote" in err
    torch.save(torch.nn.Linear(2, 2), work / "whole.pt")
    err = _error(lacoot_cmd("score", "whole.pt", cwd=work, check=2))
    assert "holds Python objects (torch.nn.modules.linear.Linear)" in err
    assert "weights_only" not in err and "\x1b[" not in err
    state = load_checkpoint(finished / "checkpoint.pt")
    state["model_spec"] = {**state["model_spec"], "name": "resnet32"}
    save_checkpoint(work / "r32.pt", {k: v for k, v in state.items() if k != "format"})
    err = _error(lacoot_cmd("score", "r32.pt", cwd=work, check=2))
    assert "weights missing: " in err and " more" in err


def test_a_closed_pipe_is_no_traceback(work: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lacoot.cli", "models"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()  # the reader goes away before the first line (`| head -0`)
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in proc.stderr.read()


BASE = "import sys\nfor m in ('yaml', 'tqdm', 'matplotlib'): sys.modules[m] = None\n"


def _base_install(work: Path, *args: str) -> subprocess.CompletedProcess:
    """The command in an interpreter where pyyaml, tqdm and matplotlib cannot be imported."""
    code = BASE + "from lacoot.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "LACOOT_DATA": str(work / "data")}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=work, env=env, text=True,
                          capture_output=True, timeout=600)  # fmt: skip


def test_a_base_install_runs_to_its_report_or_names_the_install_line(work: Path) -> None:
    proc = _base_install(work, "run", "--out", "base", *FAST[:4], *NARROW, *COLLAPSE,
                         "--max-macs", "0.9")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("tqdm is not installed (pip install 'lacoot[cli]')") == 1
    assert "matplotlib is not installed: no plot written (pip install 'lacoot[cli]')" in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    assert (work / "base" / "report.md").is_file()
    saved = json.loads((work / "base" / "config.yaml").read_text())  # JSON: YAML reads it too
    assert saved["model_args"] == {"widths": [4, 4, 8]}  # --model-args read without yaml
    (work / "opts.yaml").write_text("epochs: 1\n")
    proc = _base_install(work, "train", "--config", "opts.yaml", "--out", "base2")
    assert proc.returncode == 2 and "needs pyyaml: pip install 'lacoot[cli]'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (work / "base2").exists()
    (work / "opts.json").write_text('{"epochs": 0}')  # JSON needs no pyyaml: its value is read
    proc = _base_install(work, "train", "--config", "opts.json", "--out", "base2")
    assert proc.returncode == 2 and "--epochs 0; expected an integer > 0" in proc.stderr


def test_scoring_on_other_data_than_the_checkpoints_is_said(trained: Path, work: Path) -> None:
    other = write_idx_dataset(work / "other-data", n_train=224, n_test=64, seed=5)
    proc = lacoot_cmd("collapse", str(trained), "--blocks", "1", "--data-dir", str(other),
                      "--repair", "none", "--out", "other-col", "--no-progress",
                      "--latency-repeats", "2", cwd=work)  # fmt: skip
    assert (
        "lacoot: warning:" in proc.stderr and "data differ from those the checkpoint" in proc.stderr
    )
    assert "train and test data differ" in proc.stderr
    md = (work / "other-col" / "report.md").read_text()
    assert "**Warning: the train and test data differ" in md
    same = lacoot_cmd("collapse", str(trained), "--blocks", "1", "--repair", "none", "--out",
                      "same-col", "--no-progress", "--latency-repeats", "2", cwd=work)  # fmt: skip
    assert "data differ" not in same.stderr
    assert "Warning: the" not in (work / "same-col" / "report.md").read_text()
