"""How the penalty flattens channels-last features: a view in memory order against a copy.

``lacoot train`` keeps the model and its batches channels-last by default (``--channels-last``).
``x.flatten(1)`` on such a batch copies it (and its gradient back) for every penalised block on
every step; :func:`lacoot.regularizer.flat_pair` views it in memory order instead (the distances
do not depend on the order of the coordinates). This script times, side by side in one run
(variants taking turns, the order rotated every round, as ``speed.py``), a resnet20 training step
on Fashion-MNIST-shaped synthetic batches (1x28x28, batch 128) without a penalty and with
``MSWRegularizer`` (``random``, 50 directions; ``ascent``, 1 step), each flattening both ways.

    python benchmarks/flatten_ab.py [--repeats 12] [--threads 1] [--out runs/flatten_ab]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import speed
import torch
import torch.nn.functional as F
from _common import cpu_model, loadavg, write_result
from torch import Tensor

import lacoot
import lacoot.regularizer as reg_module
from lacoot import models as zoo

LayoutOf = Callable[[Tensor, Tensor], "reg_module.Layout | None"]
# how the regulariser reads a block's layout: as it does (features viewed in memory order, the
# directions moved into it), or never (every batch flattened in logical order: copied)
FLATTEN: dict[str, LayoutOf] = {
    "view (flat_pair)": reg_module.Layout.of,
    "copy (flatten)": lambda x, y: None,
}


def variants(base: torch.nn.Module, blocks: list) -> dict[str, dict[str, Any]]:
    """name -> model copy, optimiser, regulariser (or None) and flattening (or None)."""
    out: dict[str, dict[str, Any]] = {}
    plans = [("no penalty", None, None)] + [
        (f"{method}, {how}", method, fn)
        for method in ("random (50 proj.)", "ascent (1 step)")
        for how, fn in FLATTEN.items()
    ]
    for name, method, fn in plans:
        m = copy.deepcopy(base).train()
        kind = None if method is None else method.split()[0]
        reg = None if kind is None else reg_module.MSWRegularizer(m, blocks, method=kind, n_iters=1,
                                                                  seed=0)  # fmt: skip
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        out[name] = {"model": m, "opt": opt, "reg": reg, "flatten": fn}
    return out


def step(v: dict[str, Any], x: Tensor, y: Tensor) -> None:
    if v["flatten"] is not None:
        reg_module.Layout.of = staticmethod(v["flatten"])  # type: ignore[method-assign]
    loss = F.cross_entropy(v["model"](x), y)
    if v["reg"] is not None:
        loss = loss + v["reg"].penalty()
    v["opt"].zero_grad(set_to_none=True)
    loss.backward()
    v["opt"].step()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/flatten_ab")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    layout = torch.channels_last
    base = zoo.create("resnet20", num_classes=10, in_channels=1).to(memory_format=layout)
    blocks = lacoot.find_blocks(base, torch.zeros(2, 1, 28, 28))
    g = torch.Generator().manual_seed(args.seed + 1)
    bs = args.batch_size
    data = [(torch.randn(bs, 1, 28, 28, generator=g).contiguous(memory_format=layout),
             torch.randint(0, 10, (bs,), generator=g)) for _ in range(4)]  # fmt: skip
    runs = variants(base, blocks)
    order, times = list(runs), {k: [] for k in runs}
    load_before = loadavg()
    try:
        for rnd in range(args.warmup + args.repeats):
            x, y = data[rnd % len(data)]
            shift = rnd % len(order)
            for name in order[shift:] + order[:shift]:
                t0 = time.perf_counter()
                step(runs[name], x, y)
                if rnd >= args.warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        reg_module.Layout.of = staticmethod(FLATTEN["view (flat_pair)"])  # type: ignore
    rows = [{"variant": k, **speed.summary(v)} for k, v in times.items()]
    for row in rows[1:]:
        row.update(speed.ratio_stats(times[row["variant"]], times["no penalty"]))
    result = {
        "meta": {
            "argv": ["flatten_ab.py", *(sys.argv[1:] if argv is None else argv)],
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": args.seed, "threads": args.threads, "repeats": args.repeats,
            "batch_size": args.batch_size,
            "warmup": args.warmup, "loadavg_before": load_before, "loadavg_after": loadavg(),
            "torch": torch.__version__, "lacoot": lacoot.__version__,
            "python": platform.python_version(), "cpu_model": cpu_model(),
        },
        "rows": rows,
    }  # fmt: skip
    write_result(args.out, result, to_markdown(result))
    return result


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        "# Penalty on channels-last features: view in memory order against copy",
        "",
        f"`python benchmarks/{' '.join(meta['argv'])}` on {meta['date']}; {meta['cpu_model']}, "
        f"torch {meta['torch']}, {meta['threads']} thread(s), seed {meta['seed']}; load average "
        f"before / after {meta['loadavg_before']} / {meta['loadavg_after']}. resnet20, "
        f"channels-last, synthetic 1x28x28 batches of {meta.get('batch_size', 128)}; "
        "one SGD step per call; "
        f"{meta['repeats']} timed rounds after {meta['warmup']} untimed, variants rotated.",
        "",
        "| variant | step ms, median [IQR] | ratio of medians | per-round ratio, median [IQR] |",
        "|---|---|---|---|",
    ]
    for r in result["rows"]:
        ratio = speed._fmt_ratio(r) if "ratio_of_medians" in r else "1 (baseline) | "
        lines.append(f"| {r['variant']} | {speed._fmt_time(r)} | {ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
