"""What a result depends on besides its options: the machine, the software, the threads, the
determinism the run had, and the conditions its latencies were measured under.

Reports record these so that a reader can tell how far a figure can be trusted and repeated.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .outdir import command_line

__all__ = [
    "environment",
    "determinism",
    "load_average",
    "latency_conditions",
    "MAX_SPREAD",
    "REPRODUCIBILITY",
    "data_mismatch",
]

MAX_SPREAD = 0.2  # a latency whose repeats spread more than this (IQR / median) is flagged

REPRODUCIBILITY = (
    "The same command and seed repeat the same result on the same machine, torch version, "
    "device and thread count. Elsewhere (another CPU or GPU, another torch or BLAS, another "
    "thread count) floating-point sums run in another order, so the training can end at other "
    "weights and a budget can aim at, and remove, other blocks; compare runs by their figures, "
    "not their block lists."
)


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the system does not tell it)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def determinism(device: torch.device) -> dict[str, Any]:
    """The determinism settings of this process: threads, deterministic algorithms, cuDNN."""
    info: dict[str, Any] = {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if device.type == "cuda":
        info["cudnn_deterministic"] = bool(torch.backends.cudnn.deterministic)
        info["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    return info


def environment(device: torch.device) -> dict[str, Any]:
    """What a result depends on besides its configuration."""
    env = {
        "command": command_line(),
        "cwd": str(Path.cwd()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "lacoot": __version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "determinism": determinism(device),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def latency_conditions(
    spreads: Sequence[float], before: float | None, after: float | None, device: torch.device
) -> dict[str, Any]:
    """How the latencies of a report were measured, and whether to trust them.

    ``spreads`` are the relative spreads (interquartile range over the median) of every timed
    measurement; ``before``/``after`` the load averages around them. The figures are flagged
    (``under_load``) when the load exceeded the core count (CPU timing) or a spread exceeded
    :data:`MAX_SPREAD`; ``reasons`` says which.
    """
    cores = os.cpu_count() or 1
    loads = [v for v in (before, after) if v is not None]
    worst = max(spreads, default=0.0)
    reasons = []
    if device.type == "cpu" and loads and max(loads) > cores:
        reasons.append(f"load average {max(loads):.2f} above the {cores} cores")
    if worst > MAX_SPREAD:
        reasons.append(f"repeats spread up to {worst:.0%} (interquartile range over median, "
                       f"above {MAX_SPREAD:.0%})")  # fmt: skip
    return {
        "device": str(device), "torch_threads": torch.get_num_threads(), "cpu_count": cores,
        "load_before": before, "load_after": after, "measurements": len(spreads),
        "max_spread": worst, "median_spread": statistics.median(spreads) if spreads else 0.0,
        "under_load": bool(reasons), "reasons": reasons,
    }  # fmt: skip


def data_mismatch(fingerprints: dict[str, Any] | None) -> str | None:
    """What differs between the data a checkpoint was trained and tested on and the data a
    later command read (``{"checkpoint": {...}, "now": {...}}``, split -> fingerprint, as a
    report records them), as one sentence; ``None`` when nothing that both record differs."""
    then = (fingerprints or {}).get("checkpoint") or {}
    now = (fingerprints or {}).get("now") or {}
    splits = [s for s in ("train", "test") if s in then and s in now and then[s] != now[s]]
    if not splits:
        return None
    return (
        f"the {' and '.join(splits)} data differ from those the checkpoint was trained and "
        f"tested with (fingerprints {', '.join(f'{s} {then[s]} -> {now[s]}' for s in splits)}): "
        "scores, the choice and the accuracies are of other data than its training's"
    )
