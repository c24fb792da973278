"""Measure what a collapse buys: MACs, parameters, latency, accuracy.

MACs come from torch's own :class:`torch.utils.flop_counter.FlopCounterMode` (one multiply-add of a
matrix product or convolution counts as two FLOPs there, so MACs = FLOPs / 2). Latency is wall-clock
time measured after warm-up, with the device synchronised around every repeat, reported as the
median of the repeats, with their spread (interquartile range over the median). A caller that
wants every measurement taken inside some code (a report's latencies, measured deep inside a
sweep) collects them with :func:`recording_latencies`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ._flops import flop_counter
from .inputs import batch_size, call_model, model_device
from .metrics import top1_accuracy

__all__ = [
    "count_macs",
    "count_params",
    "measure_latency",
    "compare_latency",
    "evaluate_accuracy",
    "model_device",
    "Latency",
    "recording_latencies",
]

_RECORDERS: list[list[Latency]] = []  # open recording_latencies() blocks, innermost last


@torch.no_grad()
def count_macs(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulate operations of one forward pass on ``example_input`` (batch included).

    Counted by torch's FLOP counter in eval mode; operations it does not count (element-wise
    activations, normalisation) are not included, as in the paper's figures.
    """
    was_training = model.training
    model.eval()
    try:
        with flop_counter() as counter:
            call_model(model, example_input)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass(frozen=True)
class Latency:
    """Latency of one forward pass, in milliseconds."""

    median_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    repeats: int
    batch_size: int
    max_ms: float = 0.0
    spread: float = 0.0  # interquartile range of the repeats over their median

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    model: nn.Module, example_input: Any, warmup: int = 5, repeats: int = 20
) -> Latency:
    """Wall-clock time of ``model(example_input)`` in eval mode.

    ``warmup`` untimed passes come first; each of the ``repeats`` timed passes is bracketed by a
    device synchronisation, so asynchronous CUDA kernels are included. To compare models, use
    :func:`compare_latency`, which interleaves them.
    """
    return compare_latency([model], example_input, warmup=warmup, repeats=repeats)[0]


@torch.no_grad()
def compare_latency(
    models: Sequence[nn.Module], example_input: Any, warmup: int = 3, repeats: int = 10
) -> list[Latency]:
    """Latency of several models on one input, measured side by side.

    The models take turns (one timed pass each per round, ``repeats`` rounds, after ``warmup``
    untimed rounds), so a change in the machine's load affects them all alike and their ratios
    stay meaningful on a shared, noisy machine.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}"
        )
    modes = [getattr(m, "training", None) for m in models]  # None: frozen TorchScript, no mode
    for m, mode in zip(models, modes, strict=True):
        if mode is not None:
            m.eval()
    device = model_device(models[0]) if models else torch.device("cpu")
    times: list[list[float]] = [[] for _ in models]
    try:
        for round_ in range(warmup + repeats):
            for i, m in enumerate(models):
                _sync(device)
                start = time.perf_counter()
                call_model(m, example_input)
                _sync(device)
                if round_ >= warmup:
                    times[i].append((time.perf_counter() - start) * 1e3)
    finally:
        for m, mode in zip(models, modes, strict=True):
            if mode is not None:
                m.train(mode)
    batch = batch_size(example_input)
    done = [_summary(t, batch) for t in times]
    for recorder in _RECORDERS:
        recorder.extend(done)
    return done


@contextmanager
def recording_latencies() -> Iterator[list[Latency]]:
    """Collect every :class:`Latency` measured inside the ``with`` block (by
    :func:`measure_latency` and :func:`compare_latency`, wherever they are called)."""
    recorded: list[Latency] = []
    _RECORDERS.append(recorded)
    try:
        yield recorded
    finally:
        _RECORDERS.remove(recorded)


def _summary(times: list[float], batch_size: int) -> Latency:
    median = statistics.median(times)
    iqr = 0.0
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q3 - q1
    return Latency(
        median_ms=median,
        mean_ms=statistics.fmean(times),
        std_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
        min_ms=min(times),
        repeats=len(times),
        batch_size=batch_size,
        max_ms=max(times),
        spread=iqr / median if median > 0 else 0.0,
    )


evaluate_accuracy = top1_accuracy  # the name lacoot has always exported
