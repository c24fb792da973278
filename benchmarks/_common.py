"""Helpers shared by the benchmark scripts: what the machine was doing while they ran."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The processor's marketing name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> float | None:
    """One-minute load average, or ``None`` where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def write_result(out: str, result: dict, markdown: str) -> None:
    """``<out>.json`` and ``<out>.md`` written atomically; the Markdown also printed."""
    import json
    from pathlib import Path

    from lacoot._io import atomic_write_text

    path = Path(out)
    atomic_write_text(path.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(path.with_suffix(".md"), markdown + "\n")
    print(markdown)


def synthetic_images(n: int, shape: tuple[int, int, int], seed: int, name: str):
    """``n`` random uint8 images of ``shape`` with 10 random labels, as a lacoot ImageDataset."""
    import torch

    from lacoot.data import ImageDataset

    g = torch.Generator().manual_seed(seed)
    return ImageDataset(
        torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
        torch.randint(0, 10, (n,), generator=g),
        classes=[str(c) for c in range(10)],
        name=name,
    )
