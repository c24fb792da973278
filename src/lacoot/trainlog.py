"""What training reports: per-epoch sums, log rows, CSV/JSON files, TensorBoard, progress bars."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from . import distributed as dist_
from ._io import atomic_write_text

__all__ = ["EpochSums", "EpochLog", "progress_bar"]


_NO_TQDM_SAID: list[bool] = []  # the missing tqdm is announced once per process


def progress_bar(iterable: Iterable, total: int | None, desc: str, enabled: bool) -> Iterable:
    """``iterable`` wrapped in a tqdm bar when ``enabled``; without tqdm, a line on stderr at
    every quarter of it (and once the line saying how to get the bars)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _NO_TQDM_SAID:
            _NO_TQDM_SAID.append(True)
            print("lacoot: no progress bars, tqdm is not installed (pip install 'lacoot[cli]'); "
                  "a line per quarter epoch instead", file=sys.stderr, flush=True)  # fmt: skip
        return _quarters(iterable, total, desc)
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _quarters(iterable: Iterable, total: int | None, desc: str) -> Iterator[Any]:
    """``iterable``, printing ``desc: k/total batches`` when each quarter is done."""
    marks = {max(1, round(total * q / 4)) for q in range(1, 5)} if total else set()
    for k, item in enumerate(iterable, 1):
        yield item
        if k in marks:
            print(f"lacoot: {desc}: {k}/{total} batches", file=sys.stderr, flush=True)


class EpochSums:
    """Running totals of one epoch on this process (a plain dict, so a checkpoint can hold it).

    Keys: ``loss`` and ``penalty`` (summed over samples), ``correct``, ``seen``, ``skipped``
    (batches), ``seconds``, and per block ``dist`` (summed distances) and ``count`` (steps).
    """

    @staticmethod
    def new(names: Sequence[str]) -> dict[str, Any]:
        return {"loss": 0.0, "penalty": 0.0, "correct": 0, "seen": 0, "skipped": 0,
                "seconds": 0.0, "dist": {n: 0.0 for n in names},
                "count": {n: 0 for n in names}}  # fmt: skip

    @staticmethod
    def add(sums: dict[str, Any], task: float, penalty: float, correct: int, n: int,
            distances: dict[str, torch.Tensor]) -> None:  # fmt: skip
        """One step: mean task loss and penalty over ``n`` samples, and the block distances."""
        sums["loss"] += task * n
        sums["penalty"] += penalty * n
        sums["correct"] += correct
        sums["seen"] += n
        for name, v in distances.items():
            sums["dist"][name] += float(v)
            sums["count"][name] += 1

    @staticmethod
    def reduce(sums: dict[str, Any], names: Sequence[str], dev: torch.device) -> dict[str, Any]:
        """Sum the per-process totals over processes (identity in a single process)."""
        if not dist_.info().distributed:
            return sums
        keys = ("loss", "penalty", "correct", "seen", "skipped")
        flat = [float(sums[k]) for k in keys]
        flat += [sums["dist"][n] for n in names] + [float(sums["count"][n]) for n in names]
        total = dist_.all_reduce(torch.tensor(flat, dtype=torch.float64, device=dev)).tolist()
        out = dict(sums)
        out.update(zip(keys, total[: len(keys)], strict=True))
        m = len(names)
        out["dist"] = dict(zip(names, total[len(keys) : len(keys) + m], strict=True))
        out["count"] = dict(zip(names, total[len(keys) + m :], strict=True))
        return out

    @staticmethod
    def row(total: dict[str, Any], epoch: int, lr: float, seconds: float) -> dict[str, Any]:
        """The log row of a finished epoch (means per sample; ``msw/<block>`` per block)."""
        seen = max(total["seen"], 1)
        row: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": total["loss"] / seen,
            "train_penalty": total["penalty"] / seen,
            "train_accuracy": 100.0 * total["correct"] / seen,
            "seconds": seconds,
        }
        if total["skipped"]:
            row["skipped_batches"] = int(total["skipped"])
        return row

    @staticmethod
    def distances(total: dict[str, Any]) -> dict[str, float]:
        """Mean distance per block over the epoch's steps, keyed ``msw/<block>``."""
        return {
            f"msw/{name}": total["dist"][name] / total["count"][name]
            for name in total["dist"]
            if total["count"][name]
        }


class EpochLog:
    """Writes the history after every epoch: ``log.json``, ``log.csv`` and TensorBoard event
    files in ``out/tensorboard`` (when tensorboard is installed); nothing without ``out`` or
    on a process other than rank 0."""

    def __init__(self, out: Path | None, main: bool) -> None:
        self.out = out if main else None
        self.board = self._tensorboard()

    def _tensorboard(self) -> Any:
        if self.out is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return None
        return SummaryWriter(log_dir=str(self.out / "tensorboard"))

    def write(self, history: list[dict[str, Any]]) -> None:
        """Log the last row of ``history`` and rewrite the files with all of it."""
        row = history[-1]
        if self.board is not None:
            for key, value in row.items():
                if key != "epoch":
                    self.board.add_scalar(key, value, row["epoch"])
            self.board.flush()
        if self.out is None:
            return
        atomic_write_text(self.out / "log.json", json.dumps(history, indent=2))
        keys: list[str] = []
        for r in history:
            keys.extend(k for k in r if k not in keys)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(self.out / "log.csv", buffer.getvalue())

    def close(self) -> None:
        if self.board is not None:
            self.board.close()
