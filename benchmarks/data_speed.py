"""Throughput of lacoot's TensorLoader vs a plain per-image Dataset + DataLoader pipeline.

Both pipelines produce the same thing from the real Fashion-MNIST training set: batches of
``--batch-size`` images, randomly shuffled, random crop with 2 pixels of zero padding, random
horizontal flip, converted to float32 and normalised with the dataset's mean/std, plus int64
labels. The baseline does the augmentation per image in ``__getitem__`` with torch ops and uses
the default collate, with 0 and 2 worker processes; the TensorLoader does it on whole batches.

All pipelines are measured side by side in one run: one warm-up pass each (discarded), then
``--repeats`` rounds in which every pipeline draws ``--batches`` batches (or ``--epochs``
epochs) in turn; the figure reported is each pipeline's median images per second. The load
average of the machine before and after is recorded, since a busy CPU distorts the figures.
Results go to ``<out>.json`` (command, seed, versions, platform, date, all timings) and
``<out>.md`` (a table), both written atomically.

Usage::

    python benchmarks/data_speed.py --batch-size 128 --batches 200 --seed 0 \
        --out docs/benchmarks/data_speed
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import lacoot
from lacoot._io import atomic_write_text
from lacoot.data import ImageDataset, TensorLoader, load_dataset


class PerImageAugment(Dataset):
    """The usual pipeline: one image at a time, torch ops in ``__getitem__``.

    Random crop with zero padding, random horizontal flip, float conversion and normalisation,
    drawn from the (per-worker seeded) global torch RNG.
    """

    def __init__(self, ds: ImageDataset, pad: int, flip: bool) -> None:
        self.images = ds.images
        self.labels = ds.labels
        self.pad = pad
        self.flip = flip
        self.mean = torch.tensor(ds.mean).view(-1, 1, 1)
        self.std = torch.tensor(ds.std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]  # uint8 (C, H, W)
        _, h, w = img.shape
        p = self.pad
        padded = F.pad(img, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = padded[:, dy : dy + h, dx : dx + w]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        x = (img.float() / 255.0 - self.mean) / self.std
        return x, int(self.labels[i])


def time_batches(make_iter, n_batches: int) -> float:
    """Seconds to create an iterator and draw ``n_batches`` batches from it."""
    t0 = time.perf_counter()
    it = make_iter()
    for _ in range(n_batches):
        x, y = next(it)
    t1 = time.perf_counter()
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    return t1 - t0


def summarise(name: str, times: list[float], n_batches: int, batch_size: int) -> dict:
    med = statistics.median(times)
    ips = n_batches * batch_size / med
    print(f"{name:32s} {ips:12,.0f} images/s (median of {len(times)}: {med * 1e3:.1f} ms)")
    return {
        "pipeline": name,
        "images_per_s": ips,
        "median_s": med,
        "times_s": times,
        "batches": n_batches,
        "images": n_batches * batch_size,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--batches", type=int, default=200, help="batches per timed repeat")
    ap.add_argument("--epochs", type=float, default=None, help="epochs per repeat (overrides)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pad", type=int, default=2)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="docs/benchmarks/data_speed")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    ds = load_dataset("fashion-mnist", "train", args.data_dir)
    flip = not args.no_flip
    bs = args.batch_size
    per_epoch = len(ds) // bs
    n_batches = args.batches if args.epochs is None else max(1, round(args.epochs * per_epoch))
    n_batches = min(n_batches, per_epoch)  # stay inside one epoch for every pipeline
    print(f"{ds}  batch {bs}, {n_batches} batches x {args.repeats} repeats")

    loader = TensorLoader(ds, bs, augment=True, pad=args.pad, flip=flip, seed=args.seed)
    epoch = [0]

    def tensor_iter():
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        return iter(loader)

    pipelines = {"TensorLoader (cpu)": tensor_iter}
    for w in args.workers:
        dl = DataLoader(
            PerImageAugment(ds, args.pad, flip),
            batch_size=bs,
            shuffle=True,
            num_workers=w,
            persistent_workers=w > 0,
            generator=torch.Generator().manual_seed(args.seed),
        )
        pipelines[f"Dataset+DataLoader (workers={w})"] = lambda dl=dl: iter(dl)

    load_before = os.getloadavg()
    for make_iter in pipelines.values():  # warm-up: worker start, caches, allocator
        time_batches(make_iter, n_batches)
    # interleaved repeats, so that a transient load on the machine hits every pipeline alike
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, make_iter in pipelines.items():
            times[name].append(time_batches(make_iter, n_batches))
    load_after = os.getloadavg()
    results = [summarise(name, t, n_batches, bs) for name, t in times.items()]
    del pipelines

    fast = results[0]["images_per_s"]
    for r in results[1:]:
        r["tensorloader_speedup"] = fast / r["images_per_s"]
    best_baseline = max(r["images_per_s"] for r in results[1:])
    report = {
        "benchmark": "data_speed",
        "command": sys.argv if argv is None else [sys.argv[0], *argv],
        "seed": args.seed,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "lacoot": lacoot.__version__,
        },
        "platform": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "loadavg_1_5_15_before": list(load_before),
            "loadavg_1_5_15_after": list(load_after),
        },
        "config": {
            "dataset": "fashion-mnist train",
            "data_root": str(ds.root),
            "num_images": len(ds),
            "batch_size": bs,
            "batches_per_repeat": n_batches,
            "repeats": args.repeats,
            "warmup_repeats": 1,
            "repeat_order": "interleaved (one repeat of each pipeline in turn)",
            "pad": args.pad,
            "flip": flip,
            "workers": args.workers,
            "statistic": "median images/s over repeats",
        },
        "results": results,
        "speedup_vs_best_baseline": fast / best_baseline,
        "target_speedup": 10.0,
        "target_met": fast / best_baseline >= 10.0,
    }
    out = Path(args.out)
    atomic_write_text(Path(f"{out}.json"), json.dumps(report, indent=2) + "\n")
    lines = [
        "# Data loading throughput: TensorLoader vs per-image DataLoader",
        "",
        f"Fashion-MNIST train ({len(ds)} images, 1x28x28), batch {bs}, random crop (pad "
        f"{args.pad}) + {'horizontal flip + ' if flip else ''}normalise, float32 output, CPU.",
        f"Median of {args.repeats} interleaved repeats of {n_batches} batches after one warm-up "
        f"pass; load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f}.",
        "",
        "| pipeline | images/s | TensorLoader speedup |",
        "|---|---:|---:|",
    ]
    for r in results:
        sp = r.get("tensorloader_speedup")
        sp_text = "-" if sp is None else f"{sp:.1f}x"
        lines.append(f"| {r['pipeline']} | {r['images_per_s']:,.0f} | {sp_text} |")
    lines += [
        "",
        f"Speedup over the best baseline: **{fast / best_baseline:.1f}x** (target: 10x).",
        "",
        f"Command: `{' '.join(report['command'])}`  ",
        f"Date (UTC): {report['date_utc']}; seed {args.seed}; python "
        f"{report['versions']['python']}, torch {torch.__version__}, numpy {np.__version__}; "
        f"{report['platform']['platform']}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads.",
        "",
    ]
    atomic_write_text(Path(f"{out}.md"), "\n".join(lines))
    print(f"speedup vs best baseline: {fast / best_baseline:.1f}x -> {out}.json, {out}.md")
    return report


if __name__ == "__main__":
    main()
