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

4. ``language_model`` (when ``transformers`` is installed): a decoder with SmolLM2-135M's shape
   (30 Llama layers of width 576, random weights; 4 layers of width 64 with ``--quick``) loaded
   with ``device_map="auto"`` (accelerate places it over every visible GPU, or the CPU): MSW
   scores of every layer on random tokens, 8 layers removed with the fused repair, and the
   milliseconds per generated token (batch 1, KV cache) of the full and the collapsed model.
   The fine-tune under ``torchrun`` on several GPUs: ``torchrun --nproc_per_node=N -m lacoot
   train --model hf:FOLDER --dataset text ...`` (see docs/guide/language-models.md).

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
from typing import Any

import collapse_latency
import speed
import torch
from _common import synthetic_images

import lacoot
from lacoot import models as zoo
from lacoot._io import atomic_write_text
from lacoot.data import TensorLoader
from lacoot.device import resolve_device
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
    """Full and ~46%-MACs collapsed model (BN folded) in ONNX Runtime, with the CUDA provider
    where there is one: ``collapse_latency.time_pair``'s figures per batch size."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    model, small, removed, macs_ratio = collapse_latency.collapse_pair(name, seed=0)
    shape = speed.MODELS[name][1]
    example = torch.zeros(2, *shape)
    folded = {"full": fold_batchnorm(model, example), "small": fold_batchnorm(small, example)}
    wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
    providers = [p for p in [*wanted, "CPUExecutionProvider"] if p in ort.get_available_providers()]
    out: dict[str, Any] = {"providers": providers, "removed": removed, "macs_ratio": macs_ratio}
    with tempfile.TemporaryDirectory() as tmp:
        for bs in batches:
            x = torch.randn(bs, *shape)
            runs = [collapse_latency.onnx_runner(folded[t], x, tmp, f"{t}{bs}", providers)
                    for t in ("full", "small")]  # fmt: skip
            timed = collapse_latency.time_pair(*runs, repeats)
            out[str(bs)] = timed | {"fraction_of_macs_limit": timed["speedup"] * macs_ratio}
    return out


def bench_language_model(quick: bool, seed: int) -> dict[str, Any] | str:
    """Score, collapse (fused) and time a random decoder loaded with ``device_map="auto"``."""
    try:
        import transformers
    except ImportError:
        return "transformers is not installed"
    import tempfile

    from lacoot.fuse import fused_linear

    torch.manual_seed(seed)
    width, layers, removed = (64, 4, 2) if quick else (576, 30, 8)
    config = transformers.LlamaConfig(
        vocab_size=1000 if quick else 49152, hidden_size=width, intermediate_size=width * 8 // 3,
        num_hidden_layers=layers, num_attention_heads=4 if quick else 9, num_key_value_heads=
        2 if quick else 3, max_position_embeddings=512,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        transformers.LlamaForCausalLM(config).save_pretrained(tmp)
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp, device_map="auto").eval()
    ids = torch.randint(0, config.vocab_size, (8, 32 if quick else 256))
    calib = [({"input_ids": ids[i : i + 4]}, None) for i in range(0, len(ids), 4)]
    blocks = lacoot.find_blocks(model, calib[0][0])
    started = time.perf_counter()
    scores = lacoot.score_blocks(model, blocks, calib, criterion="msw", seed=seed)
    score_s = time.perf_counter() - started
    names = lacoot.removal_order(blocks, scores)[:removed]
    started = time.perf_counter()
    small = fused_linear(model, names, calib)[0]
    fuse_s = time.perf_counter() - started
    prompt = ids[:1, :16].to(model.device)

    def ms_per_token(m: Any) -> float:
        new = 4 if quick else 32
        m.generate(input_ids=prompt, max_new_tokens=2, do_sample=False)  # warm-up
        t = time.perf_counter()
        m.generate(input_ids=prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        return (time.perf_counter() - t) * 1000 / new

    full_ms, small_ms = ms_per_token(model), ms_per_token(small)
    return {"layers": layers, "width": width, "removed": names,
            "devices": sorted({str(p.device) for p in model.parameters()}),
            "score_seconds": score_s, "fuse_seconds": fuse_s, "full_ms_per_token": full_ms,
            "collapsed_ms_per_token": small_ms, "speedup": full_ms / small_ms}  # fmt: skip


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
                               channels_last=False,
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
    say("language model")
    result["language_model"] = bench_language_model(args.quick, args.seed)
    result["meta"]["seconds"] = time.perf_counter() - started
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    say(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
