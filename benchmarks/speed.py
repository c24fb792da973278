"""What LaCoOT costs in training and what a collapse buys in inference, as measured ratios.

Every figure is a ratio of two variants timed side by side in one run: the variants take turns,
one timed call each per round, in an order rotated every round, so a change of the machine's load
hits them all alike. Each ratio is reported twice: the ratio of the two medians, and the median
and IQR (25th-75th percentile) of the per-round ratios (variant / baseline timed in the same round).

1. Training-step overhead of the penalty. A step is forward, cross-entropy (+ penalty), backward
   and an SGD step (momentum 0.9, lr 0.01, weight decay 5e-4), at ``--batch-size`` on the device,
   on SYNTHETIC inputs (``torch.randn`` images, uniform random labels; a pool of
   ``--batches`` distinct batches cycled, so the batch changes every round as in training):
   ``resnet20`` on the Fashion-MNIST shape 1x28x28 and ``resnet18`` (CIFAR stem) on the CIFAR shape
   3x32x32, 10 classes. Variants, each on its own copy of the same initial weights:

   * ``no penalty`` (the baseline, a model without hooks);
   * ``MSWRegularizer(method="ascent")`` with its defaults (warm-started: the ``--warmup`` untimed
     rounds run first, so every block has a carried direction when timing starts);
   * ``MSWRegularizer(method="random", n_projections=50)``;
   * ``POT max-sliced (50 proj.)``: the paper's penalty, ``ot.max_sliced_wasserstein_distance(X, Y,
     n_projections=50)`` on each block's flattened input/output (torch tensors into POT, so the
     gradient flows), captured with :func:`lacoot.regularizer.block_io_hooks`; new random
     projections on every call, as in the authors' code;
   * ``MSWRegularizer(method="ascent", n_iters=1)``: one ascent step per training step;
   * ``floor``: ``W_2^2`` along one fixed direction per block, the least any sliced penalty
     computes (one projection pass, one sort, one backward pass): what no estimator can undercut
     on a step that computes it;
   * ``random`` every 4 and every 8 steps (``TrainConfig.penalty_every``, lazy regularisation:
     the penalty on one step of each period, weighted by the period, the hooks' captures dropped
     on the others). Their times and ratios are per step, averaged over each period of
     consecutive rounds (:func:`per_period`), the baseline averaged alike.

   All penalties use ``lam = 1`` and the mean over blocks. Target: step time with a penalty at
   most 1.03 x the step without.

2. Collapsed / full latency (eval, no grad) at batch 1 and ``--latency-batch`` for every number
   ``k`` of removed blocks, in the deepest-first order (``score_blocks(criterion="depth")`` then
   ``removal_order``), next to the MACs ratio (``count_macs``), the physical limit. The models take
   turns through :func:`lacoot.profile.compare_latency` (one timed pass each per call, the order
   rotated each round). The paper reports, for ResNet-18 on CIFAR-10, 7.90 ms -> 4.78 ms (ratio
   0.605) for 140.19 M -> 64.69 M MACs (ratio 0.461).

3. With CUDA available: sections 1 and 2 again on the GPU with bfloat16 autocast (as
   ``lacoot.train`` does with ``amp``); otherwise the results say that no GPU was available.

Usage::

    python benchmarks/speed.py [--models resnet20 resnet18] [--batch-size 128] [--repeats 20]
        [--warmup 3] [--seed 0] [--out docs/benchmarks/speed]

writes ``<out>.json`` and ``<out>.md`` (atomically).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ot
import torch
import torch.nn.functional as F
from _common import cpu_model, loadavg, write_result
from torch import Tensor, nn

import lacoot
from lacoot import models as zoo
from lacoot.profile import compare_latency
from lacoot.regularizer import MSWRegularizer, block_io_hooks, flat_pair

TARGET_TRAIN = 1.03
N_PROJ = 50
LAZY = (4, 8)  # default periods of the lazy-penalty variants (TrainConfig.penalty_every)
# name -> (factory kwargs, per-sample input shape); 10 classes everywhere
MODELS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "resnet20": ({"in_channels": 1}, (1, 28, 28)),  # Fashion-MNIST shape
    "resnet18": ({"in_channels": 3, "stem": "cifar"}, (3, 32, 32)),  # CIFAR shape
    "resnet56": ({"in_channels": 3}, (3, 32, 32)),  # CIFAR shape (gpu_check's latency section)
}
PAPER = {
    "model": "ResNet-18, CIFAR-10",
    "latency_ms": (7.90, 4.78),
    "macs_m": (140.19, 64.69),
    "latency_ratio": 4.78 / 7.90,
    "macs_ratio": 64.69 / 140.19,
}


# ------------------------------------------------------------------------------------------------
# statistics
# ------------------------------------------------------------------------------------------------


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def summary(ts: Sequence[float]) -> dict[str, float]:
    q25, med, q75 = _quartiles(ts)
    return {
        "median_ms": med,
        "q25_ms": q25,
        "q75_ms": q75,
        "mean_ms": statistics.fmean(ts),
        "std_ms": statistics.stdev(ts) if len(ts) > 1 else 0.0,
        "min_ms": min(ts),
        "repeats": len(ts),
    }


def ratio_stats(ts: Sequence[float], base: Sequence[float]) -> dict[str, Any]:
    """Ratio of the medians, and median/IQR of the per-round ratios (same round, same load)."""
    per_round = [t / b for t, b in zip(ts, base, strict=True)]
    q25, med, q75 = _quartiles(per_round)
    return {
        "ratio_of_medians": statistics.median(ts) / statistics.median(base),
        "per_round_median": med,
        "per_round_q25": q25,
        "per_round_q75": q75,
        "per_round": per_round,
    }


def per_period(ts: Sequence[float], every: int) -> list[float]:
    """Mean step time over each run of ``every`` consecutive rounds (a lazy penalty's period:
    exactly one of them computes the penalty); an incomplete last run is left out."""
    if len(ts) < every:
        raise ValueError(f"{len(ts)} timed rounds; a penalty every {every} steps needs at least "
                         f"{every} (pass --repeats {every} or more)")  # fmt: skip
    return [statistics.fmean(ts[i : i + every]) for i in range(0, len(ts) - every + 1, every)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# 1. training step
# ------------------------------------------------------------------------------------------------


class HookedPenalty:
    """``lam * mean_b distance(X_b, Y_b)`` of a distance function outside lacoot's regulariser.

    Hooks (:func:`lacoot.regularizer.block_io_hooks`) capture each block's input and output;
    :meth:`penalty` flattens each sample (``X_b, Y_b: (batch, features)``, float32 like lacoot,
    whose activations are bfloat16 under autocast on CUDA) and keeps the graph, so the gradient
    flows into the network.
    """

    def __init__(
        self, model: nn.Module, names: Sequence[str],
        distance: Callable[[str, Tensor, Tensor], Tensor], lam: float = 1.0,
    ) -> None:  # fmt: skip
        self.names = list(names)
        self.lam = lam
        self.distance = distance
        self._captured: dict[str, tuple[Tensor, Tensor]] = {}
        self._handles = block_io_hooks(model, self.names, self._capture)

    def _capture(self, name: str, x: Tensor, y: Tensor) -> None:
        self._captured[name] = (x, y)

    def penalty(self) -> Tensor:
        captured, self._captured = self._captured, {}
        values = []
        for name in self.names:
            x, y = captured[name]
            X, Y = flat_pair(x, y)  # as lacoot flattens: a channels-last batch is not copied
            values.append(self.distance(name, X.float(), Y.float()))
        return self.lam * torch.stack(values).mean()

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def pot_distance(name: str, X: Tensor, Y: Tensor) -> Tensor:
    """The paper's distance: POT's max-sliced distance over 50 new random projections."""
    return ot.max_sliced_wasserstein_distance(X, Y, n_projections=N_PROJ)


class OneFixedDirection:
    """The floor of any sliced penalty: ``W_2^2`` along one fixed unit direction per block (one
    projection pass, one sort, the backward of one pass; no search)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.theta: dict[str, Tensor] = {}

    def __call__(self, name: str, X: Tensor, Y: Tensor) -> Tensor:
        if name not in self.theta:
            g = torch.Generator().manual_seed(self.seed + len(self.theta))
            t = torch.randn(X.shape[1], generator=g)
            self.theta[name] = (t / t.norm()).to(X.device)
        theta = self.theta[name]
        px, py = torch.sort(X @ theta).values, torch.sort(Y @ theta).values
        return (px - py).square().mean()


def _input_batches(
    shape: tuple[int, ...], batch: int, count: int, seed: int, device: torch.device
) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, *shape, generator=g).to(device),
            torch.randint(0, 10, (batch,), generator=g).to(device),
        )
        for _ in range(count)
    ]


def bench_training(
    name: str, args: argparse.Namespace, device: torch.device, amp: bool
) -> dict[str, Any]:
    kwargs, shape = MODELS[name]
    torch.manual_seed(args.seed)
    layout = torch.channels_last if args.channels_last else None
    base = zoo.create(name, num_classes=10, **kwargs).to(device, memory_format=layout)
    blocks = lacoot.find_blocks(base, torch.zeros(2, *shape, device=device))
    names = [b.name for b in blocks]
    data = _input_batches(shape, args.batch_size, args.batches, args.seed + 1, device)
    if layout is not None:  # lacoot.train's default layout (TrainConfig.channels_last)
        data = [(x.contiguous(memory_format=layout), y) for x, y in data]

    makers: dict[str, Callable[[nn.Module], Any]] = {
        "no penalty": lambda m: None,
        "MSWRegularizer ascent (defaults)": lambda m: MSWRegularizer(
            m, blocks, method="ascent", seed=args.seed
        ),
        f"MSWRegularizer random ({N_PROJ} proj.)": lambda m: MSWRegularizer(
            m, blocks, method="random", n_projections=N_PROJ, seed=args.seed
        ),
        "MSWRegularizer ascent (1 step)": lambda m: MSWRegularizer(
            m, blocks, method="ascent", n_iters=1, seed=args.seed
        ),
        f"POT max-sliced ({N_PROJ} proj., paper)": lambda m: HookedPenalty(m, names, pot_distance),
        "floor: W2 along one fixed direction": lambda m: HookedPenalty(
            m, names, OneFixedDirection(args.seed)
        ),
    }
    periods: dict[str, int] = {}  # the lazy variants' periods (1 elsewhere)
    for every in getattr(args, "lazy", ()):
        vname = f"MSWRegularizer random ({N_PROJ} proj.), every {every} steps"
        makers[vname], periods[vname] = makers[f"MSWRegularizer random ({N_PROJ} proj.)"], every
    variants = {}
    for vname, make in makers.items():
        m = copy.deepcopy(base).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        variants[vname] = {"model": m, "opt": opt, "reg": make(m), "loss": None, "penalty": None,
                           "every": periods.get(vname, 1)}  # fmt: skip

    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        if amp
        else (lambda: nullcontext())
    )

    def step(v: dict[str, Any], batch: tuple[Tensor, Tensor], rnd: int) -> None:
        x, y = batch
        with autocast():
            logits = v["model"](x)
        loss = F.cross_entropy(logits.float(), y)
        if v["reg"] is not None and rnd % v["every"]:  # lazy: no penalty on this step
            v["reg"].discard()
        elif v["reg"] is not None:
            v["reg"].lam = float(v["every"])  # lam = 1, weighted by its period (lazy)
            pen = v["reg"].penalty()
            loss = loss + pen
            v["penalty"] = pen.detach()
        v["opt"].zero_grad(set_to_none=True)
        loss.backward()
        v["opt"].step()
        v["loss"] = loss.detach()

    order = list(variants)
    times: dict[str, list[float]] = {v: [] for v in order}
    for rnd in range(args.warmup + args.repeats):
        batch = data[rnd % len(data)]
        shift = rnd % len(order)
        for vname in order[shift:] + order[:shift]:
            _sync(device)
            t0 = time.perf_counter()
            step(variants[vname], batch, rnd)
            _sync(device)
            if rnd >= args.warmup:
                times[vname].append((time.perf_counter() - t0) * 1e3)
        if rnd == args.warmup - 1:
            reg = variants["MSWRegularizer ascent (defaults)"]["reg"]
            missing = set(names) - set(reg.directions)
            if missing:
                raise RuntimeError(f"ascent not warm-started after warm-up: {sorted(missing)}")

    rows = []
    for vname in order:
        v = variants[vname]
        mine, base_times = (per_period(times[k], v["every"]) for k in (vname, "no penalty"))
        row: dict[str, Any] = {"variant": vname, **summary(mine), "every": v["every"]}
        row["final_loss"] = float(v["loss"])
        row["final_penalty"] = None if v["penalty"] is None else float(v["penalty"])
        if vname != "no penalty":
            row.update(ratio_stats(mine, base_times))
            row["target"] = f"step time <= {TARGET_TRAIN} x no penalty (ratio of medians)"
            row["target_met"] = bool(row["ratio_of_medians"] <= TARGET_TRAIN)
        rows.append(row)
        if v["reg"] is not None:
            v["reg"].close()
    return {
        "model": name,
        "input_shape": list(shape),
        "batch_size": args.batch_size,
        "blocks": names,
        "amp_bf16": amp,
        "channels_last": layout is not None,
        "device": str(device),
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------
# 2. collapsed latency
# ------------------------------------------------------------------------------------------------


def bench_latency(
    name: str, args: argparse.Namespace, device: torch.device, amp: bool
) -> dict[str, Any]:
    kwargs, shape = MODELS[name]
    torch.manual_seed(args.seed)
    model = zoo.create(name, num_classes=10, **kwargs).to(device).eval()
    example = torch.zeros(1, *shape, device=device)
    blocks = lacoot.find_blocks(model, example)
    scores = lacoot.score_blocks(model, blocks, criterion="depth")
    order = lacoot.removal_order(blocks, scores)
    nets = [model] + [lacoot.remove_blocks(model, order[:k]) for k in range(1, len(order) + 1)]
    macs = [lacoot.count_macs(m, example) for m in nets]
    params = [lacoot.count_params(m) for m in nets]

    g = torch.Generator().manual_seed(args.seed + 2)
    by_batch: dict[str, Any] = {}
    for bs in (1, args.latency_batch):
        x = torch.randn(bs, *shape, generator=g).to(device)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
        times: list[list[float]] = [[] for _ in nets]
        with ctx:
            compare_latency(nets, x, warmup=args.warmup, repeats=1)  # warm-up, discarded
            for rnd in range(args.repeats):
                shift = rnd % len(nets)
                idx = list(range(shift, len(nets))) + list(range(shift))
                timed = compare_latency([nets[i] for i in idx], x, warmup=0, repeats=1)
                for i, lat in zip(idx, timed, strict=True):
                    times[i].append(lat.median_ms)
        by_batch[str(bs)] = [
            {**summary(t), **(ratio_stats(t, times[0]) if k else {})} for k, t in enumerate(times)
        ]

    rows = []
    for k in range(len(nets)):
        paper_match = abs(macs[k] / 1e6 - PAPER["macs_m"][1]) / PAPER["macs_m"][1] < 0.005
        rows.append(
            {
                "k": k,
                "removed": order[:k],
                "macs": macs[k],
                "macs_ratio": macs[k] / macs[0],
                "params": params[k],
                "matches_paper_macs": bool(name == "resnet18" and paper_match),
                "latency": {bs: by_batch[bs][k] for bs in by_batch},
            }
        )
    return {
        "model": name,
        "input_shape": list(shape),
        "order": order,
        "criterion": "depth (deepest first)",
        "amp_bf16": amp,
        "device": str(device),
        "batch_sizes": [int(b) for b in by_batch],
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------------


def _fmt_ratio(r: dict[str, Any]) -> str:
    return (
        f"{r['ratio_of_medians']:.3f} | {r['per_round_median']:.3f} "
        f"[{r['per_round_q25']:.3f}-{r['per_round_q75']:.3f}]"
    )


def _fmt_time(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.2f} [{r['q25_ms']:.2f}-{r['q75_ms']:.2f}]"


def _training_md(sec: dict[str, Any]) -> list[str]:
    shape = "x".join(str(s) for s in sec["input_shape"])
    lines = [
        f"### {sec['model']} ({shape}, batch {sec['batch_size']}, {len(sec['blocks'])} blocks; "
        f"device `{sec['device']}`{', bf16 autocast' if sec['amp_bf16'] else ''}"
        f"{', channels-last' if sec.get('channels_last') else ''}; "
        f"load average at start {sec['loadavg_start']})",
        "",
        "| variant | step ms, median [IQR] | ratio of medians | per-round ratio, median [IQR] "
        f"| <= {TARGET_TRAIN}x? | final penalty |",
        "|---|---|---|---|---|---|",
    ]
    for r in sec["rows"]:
        if "ratio_of_medians" in r:
            ratio = _fmt_ratio(r)
            met = "**met**" if r["target_met"] else "**not met**"
            pen = f"{r['final_penalty']:.4g}"
        else:
            ratio, met, pen = "1 (baseline) | ", "", ""
        lines.append(f"| {r['variant']} | {_fmt_time(r)} | {ratio} | {met} | {pen} |")
    return [*lines, ""]


def _latency_md(sec: dict[str, Any]) -> list[str]:
    shape = "x".join(str(s) for s in sec["input_shape"])
    head = "| k | removed | MACs (M) | MACs ratio | params ratio |"
    sep = "|---|---|---|---|---|"
    for bs in sec["batch_sizes"]:
        head += f" batch {bs}: ms, median [IQR] | ratio of medians | per-round ratio [IQR] |"
        sep += "---|---|---|"
    lines = [
        f"### {sec['model']} ({shape}; device `{sec['device']}`"
        f"{', bf16 autocast' if sec['amp_bf16'] else ''}; removal order {sec['criterion']}; "
        f"load average at start {sec['loadavg_start']})",
        "",
        head,
        sep,
    ]
    for r in sec["rows"]:
        removed = ", ".join(r["removed"]) if r["removed"] else "(full model)"
        if r["matches_paper_macs"]:
            removed += " **(paper's 64.69 M)**"
        params = r["params"] / sec["rows"][0]["params"]
        line = (
            f"| {r['k']} | {removed} | {r['macs'] / 1e6:.2f} | {r['macs_ratio']:.3f} "
            f"| {params:.3f} |"
        )
        for bs in sec["batch_sizes"]:
            lat = r["latency"][str(bs)]
            if r["k"] == 0:
                line += f" {_fmt_time(lat)} | 1 | (baseline) |"
            else:
                line += f" {_fmt_time(lat)} | {_fmt_ratio(lat)} |"
        lines.append(line)
    return [*lines, ""]


def _statements(result: dict[str, Any]) -> list[str]:
    out = []
    for part, label in (("cpu", "CPU"), ("cuda", "CUDA, bf16 autocast")):
        sec = result.get(part)
        if not sec:
            continue
        for tr in sec["training"]:
            for r in tr["rows"]:
                if "target_met" not in r:
                    continue
                verdict = "met" if r["target_met"] else "not met"
                out.append(
                    f"- Training step, {label}, {tr['model']}, {r['variant']}: "
                    f"{r['ratio_of_medians']:.3f}x (per-round IQR {r['per_round_q25']:.3f}-"
                    f"{r['per_round_q75']:.3f}); target <= {TARGET_TRAIN}x **{verdict}**."
                )
        for lat in sec["latency"]:
            if lat["model"] != "resnet18":
                continue
            for r in lat["rows"]:
                if not r["matches_paper_macs"]:
                    continue
                for bs in lat["batch_sizes"]:
                    q = r["latency"][str(bs)]
                    ratio = q["ratio_of_medians"]
                    side = "at or below" if ratio <= PAPER["latency_ratio"] else "above"
                    out.append(
                        f"- Collapsed ResNet-18 at the paper's MACs ({r['macs'] / 1e6:.2f} M, k = "
                        f"{r['k']}), {label}, batch {bs}: latency ratio {ratio:.3f} "
                        f"vs MACs ratio {r['macs_ratio']:.3f} (paper: "
                        f"{PAPER['latency_ratio']:.3f} vs {PAPER['macs_ratio']:.3f}); {side} the "
                        "paper's latency ratio (a comparison, not a target)."
                    )
    return out


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    mach = meta["machine"]
    lines = [
        "# LaCoOT speed: training overhead of the penalty, latency of collapsed models",
        "",
        f"Generated by `{' '.join(meta['argv'])}` on {meta['date']}.",
        "",
        f"- Machine: {mach['cpu_model']} ({mach['machine']}), {mach['cpu_count']} CPUs, "
        f"{mach['platform']}; torch threads {meta['torch_threads']}; "
        f"GPU: {mach['cuda'] or 'none available in this run'}",
        f"- torch {meta['torch']}, POT {meta['pot']}, lacoot {meta['lacoot']}, Python "
        f"{meta['python']}; seed {meta['seed']}",
        f"- {meta['repeats']} timed rounds after {meta['warmup']} untimed warm-up rounds; in each "
        "round every variant runs once, in an order rotated every round. Times are ms, median "
        "[IQR 25th-75th percentile]. `ratio of medians` = median(variant) / median(baseline); "
        "`per-round ratio` = variant / baseline timed in the same round, median [IQR].",
        f"- Load average (1 min) before / after the run: {meta['loadavg_before']} / "
        f"{meta['loadavg_after']} (other processes on the machine inflate and spread the times; "
        "each section's heading gives the load average when it started). With one torch thread "
        "per core, a second busy process makes the threads wait on each other and times "
        "inflate many-fold; on a shared machine run with `--threads 1`.",
        "",
        "## Targets",
        "",
        *_statements(result),
        "",
        "## 1. Training step with / without the penalty",
        "",
        f"Synthetic data: `torch.randn` images and uniform random labels, a pool of "
        f"{meta['batches']} distinct batches cycled (the same batch for every variant in a "
        "round). Step = forward, cross-entropy (+ penalty with lam = 1, mean over blocks), "
        "backward, SGD (lr 0.01, momentum 0.9, weight decay 5e-4); each variant trains its own "
        "copy of the same initial weights. `ascent` is warm-started (every block holds a carried "
        "direction before timing starts); `POT` is "
        "`ot.max_sliced_wasserstein_distance(X, Y, n_projections=50)` per block on the flattened "
        "input/output, new projections every call, as in the paper's code.",
        "",
    ]
    for tr in result["cpu"]["training"]:
        lines += _training_md(tr)
    lines += [
        "## 2. Collapsed / full model latency (eval, no grad)",
        "",
        'Blocks removed deepest first (`score_blocks(criterion="depth")`, `removal_order`), '
        "physically (`remove_blocks`); MACs per sample from `count_macs` (the physical limit of "
        "the speed-up); timed with `lacoot.profile.compare_latency`, one pass per model per "
        "round, random input. "
        f"Paper ({PAPER['model']}): {PAPER['latency_ms'][0]:.2f} ms -> "
        f"{PAPER['latency_ms'][1]:.2f} ms, "
        f"ratio {PAPER['latency_ratio']:.3f}, for {PAPER['macs_m'][0]} -> {PAPER['macs_m'][1]} "
        f"M MACs, ratio {PAPER['macs_ratio']:.3f}.",
        "",
    ]
    for lat in result["cpu"]["latency"]:
        lines += _latency_md(lat)
    lines += ["## 3. CUDA with AMP (bf16 autocast)", ""]
    if result.get("cuda"):
        for tr in result["cuda"]["training"]:
            lines += _training_md(tr)
        for lat in result["cuda"]["latency"]:
            lines += _latency_md(lat)
    else:
        lines += [
            "No GPU was available in this run (`torch.cuda.is_available()` is False): "
            "not measured.",
            "",
        ]
    return "\n".join(lines)


def run_device(
    args: argparse.Namespace, device: torch.device, amp: bool, label: str
) -> dict[str, Any]:
    out: dict[str, Any] = {"training": [], "latency": []}
    for name in args.models:
        print(f"[{label}] training step, {name} ...", file=sys.stderr, flush=True)
        load = loadavg()
        out["training"].append({**bench_training(name, args, device, amp), "loadavg_start": load})
    for name in [] if args.skip_latency else args.models:
        print(f"[{label}] latency, {name} ...", file=sys.stderr, flush=True)
        load = loadavg()
        out["latency"].append({**bench_latency(name, args, device, amp), "loadavg_start": load})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet18"], choices=MODELS)
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--latency-batch", type=int, default=256, help="large latency batch")
    parser.add_argument("--batches", type=int, default=4, help="distinct synthetic batches")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/speed", help="path without suffix")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--skip-latency", action="store_true", help="section 1 only")
    parser.add_argument(
        "--lazy", type=int, nargs="*", default=list(LAZY),
        help="periods of the lazy-penalty variants (each needs --repeats at least as large)",
    )  # fmt: skip
    parser.add_argument(
        "--channels-last", action="store_true",
        help="section 1 in channels-last layout (model and batches), lacoot train's default",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 1 or args.batch_size < 2 or args.batches < 1:
        parser.error("need --repeats >= 1, --warmup >= 1, --batch-size >= 2, --batches >= 1")
    if any(not 2 <= n <= args.repeats for n in args.lazy):
        parser.error(f"--lazy {args.lazy}: each period must be in [2, --repeats={args.repeats}]")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loadavg_before = loadavg()
    result: dict[str, Any] = {"cpu": run_device(args, torch.device("cpu"), False, "cpu")}
    cuda = torch.cuda.is_available()
    result["cuda"] = run_device(args, torch.device("cuda"), True, "cuda") if cuda else None

    uname = platform.uname()
    result["meta"] = {
        "argv": [Path(sys.executable).name, *(sys.argv if argv is None else [sys.argv[0], *argv])],
        "python_executable": sys.executable,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "batch_size": args.batch_size,
        "latency_batch": args.latency_batch,
        "batches": args.batches,
        "channels_last": args.channels_last,
        "data": "synthetic: torch.randn images, uniform random labels",
        "torch": torch.__version__,
        "pot": ot.__version__,
        "lacoot": lacoot.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "cuda_available": cuda,
        "paper": PAPER,
        "machine": {
            "platform": platform.platform(),
            "machine": uname.machine,
            "cpu_model": cpu_model(),
            "node": uname.node,
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if cuda else None,
        },
    }
    result = {"meta": result.pop("meta"), **result}
    write_result(args.out, result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
