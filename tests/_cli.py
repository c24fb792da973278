"""Run the ``lacoot`` command as a user does: in a subprocess, on tiny data in the real format.

Test modules import these helpers; the fixtures built on them (``work``, ``trained``,
``uninterrupted``) are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

# A narrow resnet20 (4/4/8 channels) keeps every command to seconds on two CPU cores.
NARROW = ["--model-arg", "widths=[4, 4, 8]"]
TINY = ["--batch-size", "32", "--no-progress", "--latency-repeats", "2"]
RESUMABLE = ["train", "--epochs", "4", "--lr", "0.05", *TINY[:3], "--schedule", "cosine", *NARROW]


def lacoot_cmd(*args: str, cwd: Path, check: int | None = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "LACOOT_DATA": str(cwd / "data"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lacoot.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


def _start_and_signal(
    work: Path, out: str, sig: int, args: list[str] = RESUMABLE
) -> subprocess.Popen:
    """Start a training run (``args``) and send ``sig`` once its first epoch is logged."""
    env = {**os.environ, "LACOOT_DATA": str(work / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lacoot.cli", *args, "--out", out],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = work / out / "log.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(json.loads(log.read_text() or "[]")) >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    return proc


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
