"""Training throughput: ``lacoot.train`` against a plain hand-written PyTorch loop.

Both train the same model from the same weights on the same in-memory data (synthetic
Fashion-MNIST-shaped uint8 images through ``lacoot.data.TensorLoader``: batch 128, random crop and
flip on the batch), with the same optimiser (SGD, momentum 0.9, Nesterov, weight decay 5e-4) and
one-cycle schedule, no penalty (lambda 0), no validation, no checkpoint. The variants take turns,
one epoch each per round, so the machine's load hits them alike; the figure is images per second
and each variant's ratio to the plain loop in the same round (median over rounds).

Variants: ``plain loop``; ``lacoot.train``; ``lacoot.train --channels-last``; ``lacoot.train
--compile`` (torch.compile, inductor; its first epoch, which compiles, is not timed).

Usage::

    python benchmarks/train_speed.py [--model resnet20] [--images 5120] [--rounds 5] [--seed 0]
        [--threads N] [--out docs/benchmarks/train_speed]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import platform
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_model, loadavg, synthetic_images, write_result

import lacoot
from lacoot import models as zoo
from lacoot.data import TensorLoader
from lacoot.report import markdown_table

TARGET = 1.05  # lacoot.train at most 5% slower than the plain loop


def make_loader(images: int, batch: int, seed: int) -> TensorLoader:
    data = synthetic_images(images, (1, 28, 28), seed, "synthetic-fashion-mnist")
    return TensorLoader(data, batch, shuffle=True, augment=True, seed=seed, drop_last=True)


def plain_epoch(model: torch.nn.Module, loader: TensorLoader, cfg: lacoot.TrainConfig) -> None:
    """What a user writes: the loop ``lacoot.train`` replaces."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                          weight_decay=cfg.weight_decay)  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=len(loader))
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def lacoot_epoch(model: torch.nn.Module, loader: TensorLoader, cfg: lacoot.TrainConfig) -> None:
    lacoot.train(model, [], loader, None, cfg, device="cpu", progress=False)


def run(args: argparse.Namespace) -> dict[str, Any]:
    loader = make_loader(args.images, args.batch_size, args.seed)
    torch.manual_seed(args.seed)
    base = zoo.create(args.model, num_classes=10, in_channels=1)
    # channels-first, as the plain loop; the channels-last variant below is the default since
    # this benchmark measured it faster
    cfg = lacoot.TrainConfig(epochs=1, lam=0.0, target_macs=1.0, seed=args.seed,
                             channels_last=False)  # fmt: skip
    variants = {
        "plain loop": (plain_epoch, cfg),
        "lacoot.train": (lacoot_epoch, cfg),
        "lacoot.train --channels-last": (lacoot_epoch, lacoot.TrainConfig(
            **{**cfg.to_dict(), "channels_last": True})),
        "lacoot.train --compile": (lacoot_epoch, lacoot.TrainConfig(
            **{**cfg.to_dict(), "compile": True})),
    }  # fmt: skip
    if args.skip_compile:
        variants.pop("lacoot.train --compile")
    models = {name: copy.deepcopy(base) for name in variants}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for rnd in range(args.rounds + 1):  # round 0 warms up (and compiles)
        names = list(variants)
        names = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in names:
            epoch, c = variants[name]
            start = time.perf_counter()
            epoch(models[name], loader, c)
            if rnd:
                seconds[name].append(time.perf_counter() - start)
        print(f"round {rnd}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()
                                           if s), file=sys.stderr, flush=True)  # fmt: skip
    n = len(loader) * args.batch_size
    plain = seconds["plain loop"]
    rows = []
    for name, s in seconds.items():
        ratios = [t / b for t, b in zip(s, plain, strict=True)]
        rows.append({"variant": name, "images_per_s": n / statistics.median(s),
                     "seconds": s, "time_ratio_median": statistics.median(ratios),
                     "time_ratios": ratios})  # fmt: skip
    return {"rows": rows, "images_per_epoch": n}


def to_markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    rows = [[r["variant"], f"{r['images_per_s']:.0f}", f"{r['time_ratio_median']:.3f}"]
            for r in result["rows"]]  # fmt: skip
    lacoot_ratio = next(r for r in result["rows"] if r["variant"] == "lacoot.train")
    met = lacoot_ratio["time_ratio_median"] <= TARGET
    return "\n".join([
        "# Training throughput: lacoot.train against a plain loop\n",
        f"- command: `{' '.join(meta['argv'])}`; seed {meta['seed']}; {meta['date']}",
        f"- {meta['model']}, batch {meta['batch_size']}, {result['images_per_epoch']} synthetic "
        f"images per epoch, {meta['rounds']} rounds; torch {meta['torch']}, "
        f"{meta['torch_threads']} threads, {meta['cpu_model']}; load "
        f"{meta['loadavg_before']} -> {meta['loadavg_after']}\n",
        markdown_table(["variant", "images/s", "time / plain loop (median of rounds)"], rows),
        f"Target (lacoot.train at most {TARGET}x the plain loop's time): "
        + ("**met**." if met else "**not met**."),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=5120)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", default="docs/benchmarks/train_speed")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    before = loadavg()
    result = run(args)
    result["meta"] = {
        "argv": ["python", "benchmarks/train_speed.py", *(sys.argv[1:] if argv is None else argv)],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed, "model": args.model, "batch_size": args.batch_size,
        "rounds": args.rounds, "torch": torch.__version__, "lacoot": lacoot.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(), "loadavg_before": before, "loadavg_after": loadavg(),
    }  # fmt: skip
    write_result(args.out, result, to_markdown(result))
    return result


if __name__ == "__main__":
    main()
