"""The GPU figures of lacoot in one short run, for the day a GPU is lent (CPU fallback otherwise).

Writes one JSON with:

1. ``penalty``: the training-step overhead of the penalty on ``resnet18`` (CIFAR stem) at batch
   256 with bfloat16 autocast (on CUDA): no penalty, ``MSWRegularizer`` ``ascent`` and ``random``
   (50 directions) and POT's max-sliced (50 directions), timed side by side
   (``benchmarks/speed.py``'s ``bench_training``);
2. ``epoch``: the wall time of one CIFAR-sized training epoch (50,000 synthetic 3x32x32 images,
   batch 256, ``lacoot.train`` with the default penalty: 50 random directions, lambda 1, every
   block) and its images per second;
3. ``latency``: collapsed / full latency of ``resnet18`` (CIFAR stem) and ``resnet56`` at batch 1
   and 256 for every number of removed blocks (deepest first), next to the MACs ratio
   (``bench_latency``), in eager PyTorch; and the same for the full model and the collapse nearest
   46% of the MACs in ONNX Runtime (with the CUDA provider where installed, else the CPU one).

``--quick`` shrinks everything (a few images, batch 8, 2 repeats) so that the CPU fallback runs in
seconds: the tests run it. Usage::

    benchmarks/gpu_check.sh                  # on a GPU machine, within about 8 minutes
    python benchmarks/gpu_check.py --quick --device cpu --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import speed
import torch
from _common import synthetic_images

import lacoot
from lacoot import models as zoo
from lacoot._io import atomic_write_text
from lacoot.data import TensorLoader
from lacoot.device import resolve_device
from lacoot.export import export_onnx
from lacoot.fold import fold_batchnorm


def bench_epoch(device: torch.device, images: int, batch: int, seed: int) -> dict[str, Any]:
    """One epoch of ``lacoot.train`` on synthetic CIFAR-shaped data (penalty on)."""
    data = synthetic_images(images, (3, 32, 32), seed, "synthetic-cifar")
    loader = TensorLoader(data, batch, shuffle=True, augment=True, seed=seed, drop_last=True,
                          device=device)  # fmt: skip
    torch.manual_seed(seed)
    model = zoo.create("resnet18", num_classes=10, stem="cifar")
    blocks = lacoot.find_blocks(model, torch.zeros(2, 3, 32, 32))
    cfg = lacoot.TrainConfig(epochs=1, target_macs=1.0, seed=seed)  # every block penalised
    start = time.perf_counter()
    result = lacoot.train(model, blocks, loader, None, cfg, device=device, progress=False)
    seconds = time.perf_counter() - start
    return {"images": images, "batch_size": batch, "seconds": seconds,
            "images_per_s": len(loader) * batch / seconds, "config": cfg.to_dict(),
            "train_seconds_logged": result.history[-1]["seconds"]}  # fmt: skip


def onnx_latency(name: str, device: torch.device, batches: list[int], repeats: int) -> Any:
    """Full and ~46%-MACs collapsed model in ONNX Runtime: median ms per batch size."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    kwargs, shape = speed.MODELS[name]
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=10, **kwargs).eval()
    example = torch.zeros(1, *shape)
    blocks = lacoot.find_blocks(model, example)
    order = lacoot.removal_order(blocks, lacoot.score_blocks(model, blocks, criterion="depth"))
    full_macs = lacoot.count_macs(model, example)
    nets = {0: model}
    for k in range(1, len(order) + 1):
        nets[k] = lacoot.remove_blocks(model, order[:k])
        if lacoot.count_macs(nets[k], example) <= 0.46 * full_macs:
            break
    nets = {0: nets[0], max(nets): nets[max(nets)]}
    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    providers = [p for p in [*wanted, "CPUExecutionProvider"] if p in ort.get_available_providers()]
    macs_ratio = lacoot.count_macs(nets[max(nets)], example) / full_macs
    out: dict[str, Any] = {"providers": providers, "k": list(nets), "macs_ratio": macs_ratio}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for k, net in nets.items():
            path = Path(tmp) / f"{k}.onnx"
            export_onnx(fold_batchnorm(net, example), example, path)
            sessions[k] = ort.InferenceSession(str(path), providers=providers)
        for bs in batches:
            x = torch.randn(bs, *shape).numpy()
            times: dict[int, list[float]] = {k: [] for k in sessions}
            for rnd in range(repeats + 1):
                for k, sess in sessions.items():
                    t0 = time.perf_counter()
                    sess.run(None, {"input": x})
                    if rnd:
                        times[k].append((time.perf_counter() - t0) * 1e3)
            med = {k: sorted(t)[len(t) // 2] for k, t in times.items()}
            out[str(bs)] = {"median_ms": med, "latency_ratio": med[max(med)] / med[0]}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU fallback test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    amp = device.type == "cuda"
    big = 8 if args.quick else 256
    bench = argparse.Namespace(batch_size=big, batches=2 if args.quick else 4, seed=args.seed,
                               repeats=2 if args.quick else 20, warmup=1 if args.quick else 3,
                               latency_batch=big)  # fmt: skip
    started = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"meta": {
        "argv": sys.argv if argv is None else ["gpu_check.py", *argv], "seed": args.seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device), "gpu": torch.cuda.get_device_name(0) if amp else None,
        "torch": torch.__version__, "lacoot": lacoot.__version__, "quick": args.quick,
        "python": platform.python_version(), "bf16_autocast": amp,
    }}  # fmt: skip
    say("penalty overhead, resnet18")
    result["penalty"] = speed.bench_training("resnet18", bench, device, amp)
    say("one training epoch")
    result["epoch"] = bench_epoch(device, 64 if args.quick else 50_000, big, args.seed)
    result["latency"] = {}
    for name in ("resnet18", "resnet56"):
        say(f"latency, {name}")
        result["latency"][name] = {
            "eager": speed.bench_latency(name, bench, device, amp),
            "onnxruntime": onnx_latency(name, device, [1, big], bench.repeats),
        }
    result["meta"]["seconds"] = time.perf_counter() - started
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
