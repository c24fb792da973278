"""Does a collapse's MACs saving become time? Full against collapsed latency, side by side.

For ``resnet18`` (CIFAR stem) and ``resnet56`` (3x32x32 inputs, 10 classes, random weights with
non-trivial batch-norm statistics), the collapse nearest to 46% of the MACs (the paper's ResNet-18
point) in deepest-first order is timed against the full model at batch 1 and ``--batch``:

* ``eager``: PyTorch as the sweep measures it;
* ``eager, BN folded``: batch norm folded into the convolutions (``lacoot.fold``, what
  ``lacoot export`` writes for inference);
* ``eager, BN folded, channels-last``: the same in NHWC memory format;
* ``TorchScript, optimize_for_inference``: the folded models exported by ``lacoot export
  --format torchscript --optimize`` (frozen), loaded back and passed through
  ``torch.jit.optimize_for_inference``, as a deployment runs them;
* ``onnxruntime``: the folded models exported to ONNX and run on ONNX Runtime's CPU provider.

The two models take turns (one timed pass each per round, ``--repeats`` rounds after a warm-up);
the figure is the speed-up (full / collapsed, median of per-round ratios) against the MACs ratio
(full / collapsed): the target is a speed-up of at least 0.9 times the MACs saving.

Usage::

    python benchmarks/collapse_latency.py [--batch 256] [--repeats 10] [--threads 1] [--seed 0]
        [--out docs/benchmarks/collapse_latency]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import cpu_model, loadavg, write_result
from speed import MODELS as SHAPES
from torch import nn

import lacoot
from lacoot import models as zoo
from lacoot.export import export_onnx, export_torchscript
from lacoot.fold import fold_batchnorm
from lacoot.inputs import channels_last
from lacoot.profile import measure_latency
from lacoot.report import markdown_table

MODELS = ("resnet18", "resnet56")  # constructor arguments and input shapes: speed.MODELS
TARGET = 0.9  # speed-up at least 0.9 x the MACs saving
MACS_POINT = 0.46


def with_statistics(model: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    """Random weights, batch-norm statistics from a few random batches (as after training)."""
    torch.manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, *shape))
    return model.eval()


def collapse_pair(
    name: str, seed: int, macs_point: float = MACS_POINT
) -> tuple[nn.Module, nn.Module, list[str], float]:
    """The full model (CPU, eval) and the collapse, deepest blocks first, nearest
    ``macs_point`` of its MACs (at most 1 point above): ``(full, collapsed, removed, ratio)``."""
    kwargs, shape = SHAPES[name]
    torch.manual_seed(seed)
    model = with_statistics(zoo.create(name, num_classes=10, **kwargs), shape, seed)
    example = torch.zeros(1, *shape)
    blocks = lacoot.find_blocks(model, example)
    order = lacoot.removal_order(blocks, lacoot.score_blocks(model, blocks, criterion="depth"))
    full = lacoot.count_macs(model, example)
    for k in range(1, len(order) + 1):
        small = lacoot.remove_blocks(model, order[:k], example)
        ratio = lacoot.count_macs(small, example) / full
        if ratio <= macs_point + 0.01:
            return model, small, order[:k], ratio
    raise RuntimeError(f"{name}: no collapse reaches {macs_point:.0%} of the MACs")


def time_pair(run_full: Callable[[], Any], run_small: Callable[[], Any], repeats: int) -> dict:
    """Per-round speed-up of the collapsed model, the two timed in turns."""
    for fn in (run_full, run_small):  # warm-up
        fn()
    full, small = [], []
    for rnd in range(repeats):
        pair = [(run_full, full), (run_small, small)]
        for fn, times in pair if rnd % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    speedups = [f / s for f, s in zip(full, small, strict=True)]
    return {"full_ms": statistics.median(full), "collapsed_ms": statistics.median(small),
            "speedup": statistics.median(speedups), "speedups": speedups}  # fmt: skip


def eager(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return model(x)

    return run


def torchscript_runner(model: nn.Module, x: torch.Tensor, folder: str, tag: str) -> Callable:
    """One pass of ``model`` written by ``lacoot export --optimize`` (frozen TorchScript in
    ``folder/tag.pt``), loaded back and optimised for inference, on ``x``."""
    path = Path(folder) / f"{tag}.pt"
    export_torchscript(model, x[:1], path, optimize=True)
    return eager(torch.jit.optimize_for_inference(torch.jit.load(str(path))), x)


def onnx_runner(
    model: nn.Module, x: torch.Tensor, folder: str, tag: str, providers: list[str] | None = None
) -> Callable[[], Any]:
    """One ONNX Runtime pass of ``model`` (exported to ``folder/tag.onnx``) on ``x``; the CPU
    provider, with as many threads as torch, unless ``providers`` are given."""
    import onnxruntime as ort

    path = Path(folder) / f"{tag}.onnx"
    export_onnx(model, x[:1].cpu(), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        str(path), options, providers=providers or ["CPUExecutionProvider"]
    )
    feed = {"input": x.cpu().numpy()}
    return lambda: session.run(None, feed)


def time_shares(
    model: nn.Module, removed: list[str], x: torch.Tensor, repeats: int
) -> dict[str, Any]:
    """Where the full model's time goes: each block of ``removed`` timed alone on the input it
    receives in a forward pass on ``x`` (median of ``repeats``), against the whole model.

    Returns the removed blocks' share of the time and of the MACs: when they run more MACs per
    millisecond than the rest of the model, removing them saves a smaller share of the time than
    of the MACs. (Timed alone, a block may run faster than inside the model: its input is hot
    in cache.)
    """
    inputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(
        lambda m, a, n=n: inputs.__setitem__(n, a[0])) for n in removed]  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()

    def median_ms(module: nn.Module, inputs: torch.Tensor) -> float:
        return measure_latency(module, inputs, warmup=1, repeats=repeats).median_ms

    whole = median_ms(model, x)
    blocks = {n: median_ms(modules[n], inputs[n]) for n in removed}
    macs = {n: lacoot.count_macs(modules[n], inputs[n][:1]) for n in removed}
    full_macs = lacoot.count_macs(model, x[:1])
    return {"batch": x.shape[0], "full_ms": whole, "block_ms": blocks,
            "time_share": sum(blocks.values()) / whole,
            "macs_share": sum(macs.values()) / full_macs}  # fmt: skip


def relative_throughput(share: dict[str, Any]) -> float:
    """MACs per millisecond of the removed blocks over that of the rest of the model."""
    removed = share["macs_share"] / share["time_share"]
    rest = (1 - share["macs_share"]) / (1 - share["time_share"])
    return removed / rest


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, small, removed, macs_ratio = collapse_pair(name, args.seed)
    shape = SHAPES[name][1]
    example = torch.zeros(2, *shape)
    folded = {m: fold_batchnorm(m, example) for m in (model, small)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, args.batch):
            x = torch.randn(batch, *shape)
            xl = x.contiguous(memory_format=torch.channels_last)
            nhwc = {m: f.to(memory_format=torch.channels_last) for m, f in folded.items()}
            variants = {
                "eager": (eager(model, x), eager(small, x)),
                "eager, BN folded": (eager(folded[model], x), eager(folded[small], x)),
                "eager, BN folded, channels-last": (eager(nhwc[model], xl),
                                                    eager(nhwc[small], xl)),
                "TorchScript, optimize_for_inference": (
                    torchscript_runner(folded[model], x, tmp, f"full{batch}"),
                    torchscript_runner(folded[small], x, tmp, f"small{batch}")),
            }  # fmt: skip
            try:
                variants["onnxruntime"] = (
                    onnx_runner(folded[model], x, tmp, f"full{batch}"),
                    onnx_runner(folded[small], x, tmp, f"small{batch}"),
                )
            except ImportError:
                pass
            for variant, (run_full, run_small) in variants.items():
                print(f"{name}, batch {batch}: {variant}", file=sys.stderr, flush=True)
                timed = time_pair(run_full, run_small, args.repeats)
                target = TARGET / macs_ratio
                rows.append({"variant": variant, "batch": batch, **timed,
                             "macs_speedup": 1 / macs_ratio, "target_speedup": target,
                             "fraction_of_macs_limit": timed["speedup"] * macs_ratio,
                             "target_met": timed["speedup"] >= target})  # fmt: skip
    nhwc = fold_batchnorm(model, example).to(memory_format=torch.channels_last)
    shares = [time_shares(nhwc, removed, channels_last(torch.randn(b, *shape)), args.repeats)
              for b in (1, args.batch)]  # fmt: skip
    return {"model": name, "removed": removed, "macs_ratio": macs_ratio, "rows": rows,
            "shares": shares}  # fmt: skip


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    out = [
        "# Collapsed latency against the MACs limit\n",
        f"- command: `{' '.join(meta['argv'])}`; seed {meta['seed']}; {meta['date']}",
        f"- torch {meta['torch']}, {meta['torch_threads']} thread(s), {meta['cpu_model']}; load "
        f"{meta['loadavg_before']} -> {meta['loadavg_after']}; {meta['repeats']} rounds\n",
    ]
    for m in result["models"]:
        limit, target = 1 / m["macs_ratio"], TARGET / m["macs_ratio"]
        out.append(f"## {m['model']}: {len(m['removed'])} blocks removed, "
                   f"{m['macs_ratio']:.1%} of the MACs (speed-up limit {limit:.2f}x, target "
                   f"{target:.2f}x)\n")  # fmt: skip
        rows = [[r["variant"], r["batch"], f"{r['full_ms']:.2f}", f"{r['collapsed_ms']:.2f}",
                 f"{r['speedup']:.2f}x", f"{r['fraction_of_macs_limit']:.0%}",
                 "met" if r["target_met"] else "**not met**"] for r in m["rows"]]  # fmt: skip
        out.append(markdown_table(["variant", "batch", "full ms", "collapsed ms", "speed-up",
                                   "of the MACs limit", "target"], rows))  # fmt: skip
        out.append("Where the time goes (eager, BN folded, channels-last; each removed block "
                   "timed alone on its own input): the removed blocks' share of the MACs "
                   "against their share of the time, and how many more MACs per millisecond "
                   "they run than the rest of the model (above 1: removing them saves less "
                   "time than MACs).\n")  # fmt: skip
        rows = [[sh["batch"], f"{sh['macs_share']:.1%}", f"{sh['time_share']:.1%}",
                 f"{relative_throughput(sh):.2f}x"] for sh in m["shares"]]  # fmt: skip
        out.append(markdown_table(["batch", "removed blocks' MACs share", "their time share",
                                   "their MACs/ms over the rest's"], rows))  # fmt: skip
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/benchmarks/collapse_latency")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    before = loadavg()
    result: dict[str, Any] = {"models": [bench_model(n, args) for n in args.models]}
    result["meta"] = {
        "argv": ["python", "benchmarks/collapse_latency.py",
                 *(sys.argv[1:] if argv is None else argv)],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed, "repeats": args.repeats, "torch": torch.__version__,
        "lacoot": lacoot.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "cpu_model": cpu_model(),
        "loadavg_before": before, "loadavg_after": loadavg(),
    }  # fmt: skip
    write_result(args.out, result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
