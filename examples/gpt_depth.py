"""Make a small GPT shallower with lacoot: vanilla training against LaCoOT training.

Trains two character-level GPT-style decoders on the fortune cookie files of Debian's ``fortunes``
package (``/usr/share/games/fortunes``, plain text, one fortune between lines holding a single
``%``), with the same seed, batches and schedule:

* vanilla: cross-entropy alone (lambda 0);
* LaCoOT: cross-entropy + ``lacoot.MSWRegularizer(...).penalty()``, lambda times the mean
  Max-Sliced Wasserstein distance between each decoder layer's input and output, added in this
  script's own training loop (the "bring your own loop" API).

Each decoder layer is called as ``layer(x, mask)``, the causal mask passed as a tensor: lacoot
treats the first tensor argument as the one flowing through the block and passes the mask along.
After training, each model's layers are ranked by ``msw`` and ``msw_rel`` (LaCoOT's order) and by
``cosine`` (block influence, as ShortGPT), and removed cumulatively without fine-tuning
(``lacoot.sweep``, with ``lacoot.negative_perplexity`` as the evaluation function). With
``--repair linear`` (the default) each sweep also replaces the removed layers by closed-form
least-squares linear maps on the validation split; the tables show both. Perplexities are on the
held-out test fortunes; scores, orders and patches use the validation fortunes.

Run, after ``scripts/setup.sh``::

    .venv/bin/python examples/gpt_depth.py                                    # ~5 min, 2 cores
    .venv/bin/python examples/gpt_depth.py --steps 60 --layers 4 --width 64   # ~1 min check

On a machine whose cores are busy with other work, pass ``--threads 1``: PyTorch slows down many
times over when it runs more threads than there are free cores.

Without the corpus: ``sudo apt-get install fortunes``, or ``--corpus DIR`` with any folder of
plain-text files. Everything measured goes to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lacoot

DEFAULT_CORPUS = Path("/usr/share/games/fortunes")
VOCAB = 256  # byte-level tokens
CRITERIA = ("msw", "msw_rel", "cosine")
Batch = tuple[Tensor, Tensor]  # (input ids (B, T), next-token ids (B, T))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of fortune files")
    p.add_argument("--steps", type=int, default=300, help="training steps of each model")
    p.add_argument("--layers", type=int, default=6, help="decoder layers")
    p.add_argument("--width", type=int, default=128, help="model width d")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--context", type=int, default=64, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--lam", type=float, default=1.0, help="lambda of the LaCoOT model")
    p.add_argument("--eval-batches", type=int, default=4, help="batches of the val/test splits")
    p.add_argument(
        "--repair",
        choices=("none", "linear"),
        default="linear",
        help="repair of each collapse (linear: also reports the unrepaired one)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--log-every", type=int, default=50, help="training progress every N steps")
    p.add_argument("--out", type=Path, default=Path("runs/gpt_depth.json"), help="result JSON")
    return p.parse_args(argv)


# --- data --------------------------------------------------------------------------------------


def read_fortunes(folder: Path) -> list[bytes]:
    """Every fortune of the plain-text files in ``folder`` (``.dat`` indexes and ``.u8``
    links skipped), as bytes without the ``%`` separator lines."""
    files = sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and not f.is_symlink() and f.suffix not in (".dat", ".u8")
    )
    return [fortune for f in files for fortune in split_fortunes(f.read_bytes())]


def split_fortunes(text: bytes) -> list[bytes]:
    """The non-empty fortunes of one file: the runs of lines between lines holding a single
    ``%``."""
    fortunes, lines = [], []
    for line in [*text.splitlines(keepends=True), b"%"]:
        if line.rstrip(b"\r\n") != b"%":
            lines.append(line)
        elif b"".join(lines).strip():
            fortunes.append(b"".join(lines))
            lines = []
        else:
            lines = []
    return fortunes


def load_corpus(folder: Path) -> list[bytes]:
    """The fortunes of ``folder``, or exit saying how to get them."""
    fortunes = read_fortunes(folder) if folder.is_dir() else []
    if not fortunes:
        sys.exit(
            f"no fortune files in {folder}: install Debian's corpus with "
            "`sudo apt-get install fortunes`, or pass --corpus DIR (a folder of plain-text files, "
            "fortunes separated by lines holding a single '%')"
        )
    return fortunes


def split_streams(fortunes: list[bytes], seed: int, held_out: float = 0.05) -> list[Tensor]:
    """Train, validation and test token streams: the fortunes shuffled (seeded), ``held_out`` of
    them for validation and as many for test, each split's fortunes joined in one stream."""
    order = torch.randperm(len(fortunes), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, int(held_out * len(fortunes)))
    parts = (order[2 * n :], order[:n], order[n : 2 * n])
    return [encode(b"%\n".join(fortunes[i] for i in part)) for part in parts]


def encode(text: bytes) -> Tensor:
    """Byte tokens ``(N,)``, int64."""
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def random_batch(stream: Tensor, context: int, batch_size: int, gen: torch.Generator) -> Batch:
    """``batch_size`` windows at random offsets: inputs and the same shifted by one token."""
    starts = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=gen)
    rows = torch.stack([stream[s : s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def fixed_batches(stream: Tensor, context: int, batch_size: int, max_batches: int) -> list[Batch]:
    """Consecutive non-overlapping windows of ``stream``, at most ``max_batches`` full batches:
    an evaluation split that every model sees identically."""
    n_rows = min((len(stream) - 1) // context, batch_size * max_batches)
    n_rows -= n_rows % batch_size
    if n_rows == 0:
        sys.exit(
            f"a held-out split of {len(stream)} tokens holds no batch of {batch_size} "
            f"sequences of {context}; lower --batch-size or --context"
        )
    x = stream[: n_rows * context].view(n_rows, context)
    y = stream[1 : n_rows * context + 1].view(n_rows, context)
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))


# --- model -------------------------------------------------------------------------------------


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: ``x + attn(norm(x), mask)``, then ``x + mlp(norm(x))``.

    Called as ``layer(x, mask)``: ``x (B, T, D)`` flows through, ``mask (T, T)`` (True where a
    position may attend) is an extra tensor that a collapsed layer ignores.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width={width} is not a multiple of heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, D / heads)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Token + position embeddings, decoder layers, final norm, LM head: ids ``(B, T)`` ->
    logits ``(B, T, V)``."""

    def __init__(self, vocab: int, context: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.layers = nn.ModuleList(DecoderLayer(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.apply(_init_weights)

    def forward(self, ids: Tensor) -> Tensor:
        T = ids.shape[1]
        pos = torch.arange(T, device=ids.device)
        x = self.tokens(ids) + self.positions(pos)
        mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()  # causal
        for layer in self.layers:  # a removed layer is deleted from this list
            x = layer(x, mask)
        return self.head(self.norm(x))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainLog:
    """What one training run printed, and how long it took."""

    lam: float
    steps: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10% of the steps, then cosine decay to 10% of ``peak``."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: GPT,
    blocks: list[lacoot.Block],
    stream: Tensor,
    lam: float,
    args: argparse.Namespace,
    name: str,
) -> TrainLog:
    """Train ``model`` in place on random windows of ``stream``: cross-entropy plus the LaCoOT
    penalty of weight ``lam`` (0: vanilla; the hooks still measure the distances it logs)."""
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)  # the same batches for every model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    log = TrainLog(lam=lam)
    start = time.perf_counter()
    model.train()
    reg = lacoot.MSWRegularizer(
        model, blocks, lam=lam, method="random", n_projections=50, seed=args.seed
    )
    with reg:
        for step in range(args.steps):
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, args.steps, args.lr)
            x, y = (t.to(device) for t in random_batch(stream, args.context, args.batch_size, gen))
            logits = model(x)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            penalty = reg.penalty()  # lam * mean MSW(layer input, layer output), with gradients
            opt.zero_grad(set_to_none=True)
            (ce + penalty).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % args.log_every == 0 or step == args.steps - 1:
                distances = reg.distances()
                entry = {
                    "step": step,
                    "ce": ce.item(),
                    "penalty": penalty.item(),
                    "mean_msw": sum(distances.values()) / len(distances),
                    "seconds": time.perf_counter() - start,
                }
                log.steps.append(entry)
                print(
                    f"  [{name}] step {step:4d}  ce {entry['ce']:.3f}  penalty "
                    f"{entry['penalty']:.3f}  mean MSW {entry['mean_msw']:.3f}  "
                    f"{entry['seconds']:.0f}s",
                    flush=True,
                )
    log.seconds = time.perf_counter() - start
    return log


# --- collapse ----------------------------------------------------------------------------------


def collapse_sweeps(
    model: GPT,
    example: Tensor,
    val: list[Batch],
    test: list[Batch],
    args: argparse.Namespace,
    name: str,
) -> dict[str, Any]:
    """Rank the trained model's layers by every criterion and sweep their removal."""
    blocks = lacoot.find_blocks(model, example)
    out: dict[str, Any] = {"blocks": [b.to_dict() for b in blocks], "scores": {}, "sweeps": {}}
    for criterion in CRITERIA:
        start = time.perf_counter()
        scores = lacoot.score_blocks(model, blocks, val, criterion=criterion, seed=args.seed)
        result = lacoot.sweep(
            model,
            blocks,
            scores,
            val,
            test,
            evaluate=lacoot.negative_perplexity,
            latency_batch_sizes=(),
            repair=args.repair,
            calib_samples=len(val) * args.batch_size,
        )
        out["scores"][criterion] = scores
        out["sweeps"][criterion] = result
        order = ", ".join(n.removeprefix("layers.") for n in result.order)
        print(
            f"  [{name}/{criterion}] removal order: layers {order}  "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        if result.stopped:
            print(f"  [{name}/{criterion}] {result.stopped}")
    return out


def perplexity(point: lacoot.SweepPoint, repaired: bool) -> float:
    """Test perplexity of a sweep point (the metric is minus the perplexity)."""
    value = point.test_accuracy if repaired else point.unrepaired["test_accuracy"]
    assert value is not None
    return -value


def unrepaired_macs(point: lacoot.SweepPoint, blocks: list[dict[str, Any]], full: int) -> int:
    """MACs per sample of the plain collapse: the full model's minus the removed layers'."""
    per_block = {b["name"]: b["macs"] for b in blocks}
    return full - sum(per_block[name] for name in point.removed)


def print_table(results: dict[str, dict[str, Any]], repaired: bool) -> None:
    """Test perplexity against removed layers, one column per (model, order)."""
    columns = [(m, c) for m in results for c in CRITERIA]
    title = "linear patches in place of the removed layers" if repaired else "no repair"
    print(f"\nTest perplexity, {title} (lower is better; MACs per sequence vs the full model)")
    print("  k  " + "".join(f"{f'{m}/{c}':>16}" for m, c in columns) + "     MACs")
    first = results[columns[0][0]]
    depth = max(len(first["sweeps"][c].points) for c in CRITERIA)
    for k in range(depth):
        cells = []
        for m, c in columns:
            points = results[m]["sweeps"][c].points
            cells.append(
                f"{perplexity(points[k], repaired):16.2f}" if k < len(points) else " " * 16
            )
        point = first["sweeps"][columns[0][1]].points[min(k, depth - 1)]
        full = first["sweeps"][columns[0][1]].full.macs
        macs = point.macs if repaired else unrepaired_macs(point, first["blocks"], full)
        print(f"{k:3d}  " + "".join(cells) + f"{macs / full:9.1%}")


# --- main --------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace) -> GPT:
    torch.manual_seed(args.seed)  # the same initial weights for every model
    model = GPT(VOCAB, args.context, args.width, args.layers, args.heads)
    return model.to(args.device)


def to_json(
    results: dict[str, dict[str, Any]],
    logs: dict[str, TrainLog],
    args: argparse.Namespace,
    seconds: float,
) -> dict[str, Any]:
    models = {}
    for name, result in results.items():
        models[name] = {
            "lam": logs[name].lam,
            "train": {"seconds": logs[name].seconds, "log": logs[name].steps},
            "blocks": result["blocks"],
            "scores": result["scores"],
            "sweeps": {c: s.to_dict() for c, s in result["sweeps"].items()},
        }
    return {
        "script": "examples/gpt_depth.py",
        "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "torch": torch.__version__,
        "lacoot": lacoot.__version__,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "metric": "negative_perplexity (test perplexity = minus the value)",
        "seconds": seconds,
        "models": models,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    fortunes = load_corpus(args.corpus)
    train_stream, val_stream, test_stream = split_streams(fortunes, args.seed)
    val = fixed_batches(val_stream, args.context, args.batch_size, args.eval_batches)
    test = fixed_batches(test_stream, args.context, args.batch_size, args.eval_batches)
    print(
        f"{len(fortunes)} fortunes from {args.corpus}: {len(train_stream)} train bytes, "
        f"{len(val)}x{args.batch_size} val and {len(test)}x{args.batch_size} test sequences "
        f"of {args.context}"
    )
    example = val[0][0][:2].to(args.device)
    logs: dict[str, TrainLog] = {}
    results: dict[str, dict[str, Any]] = {}
    for name, lam in (("vanilla", 0.0), ("lacoot", args.lam)):
        model = build_model(args)
        blocks = lacoot.find_blocks(model, example)  # layers.0 ... layers.N-1
        print(
            f"\n{name} (lambda {lam:g}): {lacoot.count_params(model):,} parameters, "
            f"{len(blocks)} blocks: {', '.join(b.name for b in blocks)}"
        )
        logs[name] = train(model, blocks, train_stream, lam, args, name)
        results[name] = collapse_sweeps(model, example, val, test, args, name)
    print_table(results, repaired=False)
    if args.repair == "linear":
        print_table(results, repaired=True)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_json(results, logs, args, seconds), indent=1) + "\n")
    print(f"\n{seconds:.0f}s in all; results in {args.out}")


if __name__ == "__main__":
    main()
