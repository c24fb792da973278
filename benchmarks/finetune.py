"""From a trained model to a shallow one at <= 55% of the MACs: LaCoOT fine-tune against
remove-then-heal, remove-then-distil and the shallow net trained from scratch.

From a pretrained vanilla model (a model file of ``lacoot export`` or a checkpoint; by default
the headline's
``docs/results/headline/models/vanilla-sSEED.pt``), for each ``E`` in ``--epochs``:

* ``lacoot``: ``E`` epochs of LaCoOT fine-tune from the pretrained weights (``--init``): the
  penalty aimed at the MACs budget (its targets chosen at the start from the pretrained model,
  ``target_warmup 0``) and faded out, then removed training-free; one run per variant of
  ``--variants`` (its fade; with or without distillation from the pretrained model), the one
  with the best validation accuracy reported;
* ``heal``: the best training-free removal of the pretrained model within the budget, then
  ``E`` epochs of plain fine-tuning (cross-entropy);
* ``kd``: the same removal, then ``E`` epochs of fine-tuning with distillation from the
  pretrained model (``--distill-weight``, ``--distill-temperature``).

The three share the schedule (``FINETUNE``: SGD, one-cycle, lr 0.01) and the tools of the
training-free removal: every order of ``ORDERS`` with every repair of ``REPAIRS``, each at the
fewest blocks that bring the repaired model (a linear repair's patches count) within the budget,
chosen on validation accuracy (LaCoOT's own order, the blocks its training faded out first, is
one more candidate for it). ``scratch``: the architecture those removals reach, trained from
scratch for ``--scratch-epochs`` (15, the headline's schedule): the headline's
``scratch_same_arch`` job (``docs/results/headline/jobs``) when it removed the same blocks, else
this script's own ``scratch-sSEED`` job (the headline's net is the one ``lacoot run``'s default
collapses to, which may be another).

Each (method, E, seed) writes ``OUT/jobs/METHOD-eE-sSEED.json`` and a rerun skips it;
``OUT/../finetune.{json,md,png}`` are regenerated after every job (``--report-only``: only that).

    OMP_NUM_THREADS=1 python benchmarks/finetune.py --threads 1 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _collapse_jobs import (  # noqa: E402
    PLAIN,
    add_job_args,
    epoch_seconds,
    job_config,
    job_environment,
    train_resumably,
    train_scratch,
)

from lacoot._io import atomic_write_text  # noqa: E402
from lacoot.blocks import find_blocks, remove_blocks  # noqa: E402
from lacoot.checkpoint import faded_blocks, load_checkpoint  # noqa: E402
from lacoot.collapse import removal_order  # noqa: E402
from lacoot.config import DEFAULT_FADE, RunConfig, TrainConfig  # noqa: E402
from lacoot.criteria import score_blocks  # noqa: E402
from lacoot.device import resolve_device  # noqa: E402
from lacoot.distill import load_teacher  # noqa: E402
from lacoot.metrics import Memoized, top1_accuracy  # noqa: E402
from lacoot.pipeline import model_from_checkpoint, prepare_data  # noqa: E402
from lacoot.profile import count_macs, count_params  # noqa: E402
from lacoot.repair import repair  # noqa: E402
from lacoot.train import train  # noqa: E402

METHODS = ("lacoot", "heal", "kd")
ORDERS = ("msw", "msw_rel", "cosine", "angular", "depth")
REPAIRS = ("none", "bn", "linear")
BUDGET = 0.55  # fraction of the full model's MACs
FINETUNE = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True,
            "weight_decay": 5e-4, "schedule": "onecycle"}  # fmt: skip
TARGET_EPOCHS = 2  # the targets' E
HALF_POINT = 0.5


# ------------------------------------------------------------------------- removal at budget
def within_budget(model: torch.nn.Module, order: list[str], how: str, data: Any,
                  example: torch.Tensor, calib: int,
                  faded: list[str]) -> tuple[list[str], torch.nn.Module]:  # fmt: skip
    """The fewest first blocks of ``order`` whose removal, repaired by ``how``, brings the MACs
    within the budget (a linear repair's patches count), and that repaired model."""
    full = count_macs(model, example)
    for k in range(1, len(order) + 1):
        if count_macs(remove_blocks(model, order[:k], example), example) > BUDGET * full:
            continue  # not even the plain removal is within it
        shallow = repair(model, order[:k], data.val, how, calib, identities=faded).eval()
        if count_macs(shallow, example) <= BUDGET * full:
            return order[:k], shallow
    raise ValueError(f"no removal in order {order} reaches {BUDGET:.0%} of the MACs")


def best_removal(
    model: torch.nn.Module, data: Any, example: torch.Tensor, seed: int, calib: int,
    extra: dict[str, list[str]] | None = None, faded: list[str] | None = None,
) -> tuple[dict[str, Any], torch.nn.Module]:  # fmt: skip
    """Every order of :data:`ORDERS` (and ``extra``'s orders) with every repair of
    :data:`REPAIRS`, each at the fewest blocks within the budget after its repair: the one with
    the best validation accuracy and every candidate's validation accuracy, and the repaired
    model of the best (the first of equals)."""
    blocks = find_blocks(model, example)
    memo = Memoized(top1_accuracy)
    orders = dict(extra or {})
    for name in ORDERS:
        orders[name] = removal_order(blocks, score_blocks(model, blocks, data.val,
                                                          criterion=name, seed=seed))  # fmt: skip
    tried, best = [], None
    for name, order in orders.items():
        for how in REPAIRS:
            removed, shallow = within_budget(model, order, how, data, example, calib, faded or [])
            tried.append({"order": name, "repair": how, "removed": removed,
                          "macs": count_macs(shallow, example),
                          "val_accuracy": memo(shallow, data.val)})  # fmt: skip
            if best is None or tried[-1]["val_accuracy"] > best[0]["val_accuracy"]:
                best = (tried[-1], shallow)
    assert best is not None
    return {"chosen": best[0], "candidates": tried}, best[1]


def figures(model: torch.nn.Module, data: Any, example: torch.Tensor) -> dict[str, Any]:
    model.eval()
    return {"val_accuracy": top1_accuracy(model, data.val),
            "test_accuracy": top1_accuracy(model, data.test),
            "macs": count_macs(model, example), "params": count_params(model)}  # fmt: skip


# ----------------------------------------------------------------------------------- one job
def run_config(args: argparse.Namespace, seed: int, **values: Any) -> RunConfig:
    return job_config(args, seed, **FINETUNE | values)


def variant(text: str | None) -> tuple[float, bool]:
    """A LaCoOT fine-tune variant of ``--variants``: ``F`` (its fade) or ``F+kd`` (with
    distillation from the pretrained model); ``None``: the default fade, no distillation."""
    if text is None:
        return DEFAULT_FADE, False
    fade, _, kd = text.partition("+")
    if kd not in ("", "kd"):
        raise SystemExit(f"variant {text!r}; expected FADE or FADE+kd, such as 0.9+kd")
    return float(fade), kd == "kd"


def job_name(method: str, epochs: int, seed: int, text: str | None = None) -> str:
    """``METHOD-eE-sSEED``; a LaCoOT variant other than the default names its fade and ``kd``."""
    fade, kd = variant(text)
    tag = "" if fade == DEFAULT_FADE else f"_fade{fade:g}"
    return f"{method}{tag}{'_kd' if kd else ''}-e{epochs}-s{seed}"


def run_job(args: argparse.Namespace, method: str, epochs: int, seed: int,
            text: str | None = None) -> dict[str, Any]:  # fmt: skip
    dev = resolve_device(args.device)
    pretrained = args.pretrained.format(seed=seed)
    cfg = run_config(args, seed, epochs=epochs)
    data = prepare_data(cfg.data_spec(), dev, seed=seed)
    example = torch.zeros(1, *data.image_shape, device=dev)
    vanilla, _ = load_teacher(pretrained, dev, data.preprocessing)  # normalisation checked
    full = figures(vanilla, data, example)
    t0 = time.perf_counter()
    if method == "lacoot":
        fade, kd = variant(text)
        out = Path(args.work) / job_name(method, epochs, seed, text)
        teach = {"teacher": pretrained, "distill_weight": args.distill_weight,
                 "distill_temperature": args.distill_temperature} if kd else {}  # fmt: skip
        cfg = run_config(args, seed, epochs=epochs, init=pretrained, target_warmup=0, fade=fade,
                         out=str(out), **teach)  # fmt: skip
        ckpt = train_resumably(cfg)
        state = load_checkpoint(ckpt, map_location=dev)
        model, _, _ = model_from_checkpoint(state, ckpt, dev)
        faded = faded_blocks(state)
        rest = [b.name for b in find_blocks(model, example) if b.name not in faded]
        extra = {"faded": [*faded, *rest]} if faded else {}  # the faded blocks first
        choice, shallow = best_removal(model, data, example, seed, args.calib, extra, faded)
        history = state["history"]
    else:
        choice, shallow = best_removal(vanilla, data, example, seed, args.calib)
        kd = {"distill_weight": args.distill_weight, "distill_temperature":
              args.distill_temperature} if method == "kd" else {}  # fmt: skip
        plain = run_config(args, seed, epochs=epochs, **PLAIN).train_config().to_dict()
        tcfg = TrainConfig.from_dict(plain | kd)
        result = train(shallow, [], data.train, data.val, tcfg, device=dev, progress=False,
                       teacher=vanilla if method == "kd" else None)  # fmt: skip
        history, faded = result.history, []
    return {"method": method, "epochs": epochs, "seed": seed, "pretrained": pretrained,
            "fade": cfg.fade if method == "lacoot" else None,
            "distill_weight": cfg.distill_weight if method == "lacoot" else None,
            "vanilla": full, "chosen": choice["chosen"], "candidates": choice["candidates"],
            "faded": list(faded), **figures(shallow, data, example),
            "full_macs": full["macs"], "train_seconds": epoch_seconds(history),
            "seconds": time.perf_counter() - t0, "history": history,
            "finetune": FINETUNE, "environment": job_environment(args)}  # fmt: skip


def removals(results: list[dict[str, Any]]) -> dict[int, list[str]]:
    """Per seed, the blocks heal and distillation remove (the same training-free choice)."""
    return {r["seed"]: list(r["chosen"]["removed"]) for r in results
            if r["method"] in ("heal", "kd")}  # fmt: skip


def load_jobs(jobs: Path) -> list[dict[str, Any]]:
    """Every job file of ``jobs``, fine-tunes and scratch nets."""
    return [json.loads(f.read_text()) for f in sorted(jobs.glob("*.json"))]


def removal_of(args: argparse.Namespace, seed: int) -> list[str]:
    """The blocks heal and distillation remove at ``seed`` (their job files, else chosen anew)."""
    known = removals(load_jobs(Path(args.out) / "jobs"))
    if seed in known:
        return known[seed]
    dev = resolve_device(args.device)
    data = prepare_data(run_config(args, seed).data_spec(), dev, seed=seed)
    example = torch.zeros(1, *data.image_shape, device=dev)
    vanilla, _ = load_teacher(args.pretrained.format(seed=seed), dev, data.preprocessing)
    return list(best_removal(vanilla, data, example, seed, args.calib)[0]["chosen"]["removed"])


def run_scratch(args: argparse.Namespace, seed: int, removed: list[str]) -> dict[str, Any]:
    """``removed``'s architecture trained from scratch as the headline trains its nets."""
    cfg = job_config(
        args,
        seed,
        epochs=args.scratch_epochs,
        out=str(Path(args.work) / f"scratch-s{seed}"),
        **PLAIN,
    )
    _, figs = train_scratch(cfg, removed)
    return {"method": "scratch", "seed": seed, "epochs": args.scratch_epochs, **figs,
            "run_config": cfg.to_dict(), "train_seconds": epoch_seconds(figs["history"]),
            "environment": job_environment(args)}  # fmt: skip


# ----------------------------------------------------------------------------------- report
def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def scratch_rows(
    headline_jobs: Path, jobs: Path, removal: dict[int, list[str]]
) -> list[dict[str, Any]]:
    """For each seed of ``removal`` (the blocks the fine-tunes' nets lack), that architecture
    trained from scratch: this script's job, else the headline's same-architecture job when it
    removed the same blocks (none when neither has run)."""
    rows = []
    for s, removed in sorted(removal.items()):
        own, theirs = jobs / f"scratch-s{s}.json", headline_jobs / f"scratch_same_arch-s{s}.json"
        for f, source in ((own, "finetune"), (theirs, "headline")):
            r = json.loads(f.read_text()) if f.is_file() else None
            if r is not None and set(r["removed"]) == set(removed):
                rows.append({"seed": s, "test_accuracy": r["test_accuracy"], "macs": r["macs"],
                             "params": r["params"], "removed": r["removed"], "source": source,
                             "train_seconds": epoch_seconds(r["history"])})  # fmt: skip
                break
    return rows


def choose_variants(results: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """One LaCoOT fine-tune per (E, seed): of its variants (fade, distillation), the one whose
    chosen removal has the best validation accuracy; and every variant's figures."""
    lacoot: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        if r["method"] == "lacoot":
            lacoot.setdefault((r["epochs"], r["seed"]), []).append(r)
    chosen = [max(rs, key=lambda r: r["chosen"]["val_accuracy"]) for rs in lacoot.values()]
    variants = [{"epochs": r["epochs"], "seed": r["seed"], "fade": r.get("fade", DEFAULT_FADE),
                 "distill_weight": r.get("distill_weight") or 0.0,
                 "val_accuracy": r["chosen"]["val_accuracy"], "test_accuracy": r["test_accuracy"],
                 "chosen": any(r is c for c in chosen)}
                for rs in lacoot.values() for r in rs]  # fmt: skip
    return [r for r in results if r["method"] != "lacoot"] + chosen, variants


def _variant_text(r: dict[str, Any]) -> str:
    kd = r.get("distill_weight") or 0.0
    return f", fade {r.get('fade', DEFAULT_FADE):g}" + (f", distilled (w {kd:g})" if kd else "")


def report(results: list[dict[str, Any]], scratch: list[dict[str, Any]]) -> dict[str, Any]:
    results, variants = choose_variants(results)
    rows = []
    for m in METHODS:
        for e in sorted({r["epochs"] for r in results}):
            rs = sorted((r for r in results if r["method"] == m and r["epochs"] == e),
                        key=lambda r: r["seed"])  # fmt: skip
            if rs:
                rows.append({"method": m, "epochs": e, "seeds": [r["seed"] for r in rs],
                             "test_mean": _mean([r["test_accuracy"] for r in rs]),
                             "per_seed": [r["test_accuracy"] for r in rs],
                             "macs_fraction": _mean([r["macs"] / r["full_macs"] for r in rs]),
                             "params": [r["params"] for r in rs],
                             "removed": [r["chosen"]["removed"] for r in rs],
                             "how": [f"{r['chosen']['order']}/{r['chosen']['repair']}"
                                     + (_variant_text(r) if m == "lacoot" else "")
                                     for r in rs],
                             "train_seconds": _mean([epoch_seconds(r["history"])
                                                     for r in rs])})  # fmt: skip
    vanilla = {r["seed"]: r["vanilla"]["test_accuracy"] for r in results}
    return {"rows": rows, "vanilla": vanilla, "scratch": scratch, "lacoot_variants": variants,
            "targets": targets(results, scratch)}  # fmt: skip


def targets(results: list[dict[str, Any]], scratch: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets at E = 2, on the seeds every method holds."""
    at = [r for r in results if r["epochs"] == TARGET_EPOCHS]
    seeds = sorted(set.intersection(*[{r["seed"] for r in at if r["method"] == m}
                                      for m in METHODS]) if at else set())  # fmt: skip
    pick = {m: [r for r in at if r["method"] == m and r["seed"] in seeds] for m in METHODS}
    t: dict[str, Any] = {"epochs": TARGET_EPOCHS, "seeds": seeds}
    if not seeds:
        return t | {"within_half_point": None, "beats_heal": None, "beats_kd": None}
    mean = {m: _mean([r["test_accuracy"] for r in pick[m]]) for m in METHODS}
    t["vanilla"] = _mean([r["vanilla"]["test_accuracy"] for r in pick["lacoot"]])
    t |= mean
    t["macs_fraction"] = {m: _mean([r["macs"] / r["full_macs"] for r in pick[m]])
                          for m in METHODS}  # fmt: skip
    sc = [r["test_accuracy"] for r in scratch if r["seed"] in seeds]
    t["scratch"] = _mean(sc) if len(sc) == len(seeds) else None
    t["within_half_point"] = mean["lacoot"] >= t["vanilla"] - HALF_POINT
    t["beats_heal"] = mean["lacoot"] > mean["heal"]
    t["beats_kd"] = mean["lacoot"] > mean["kd"]
    return t


LABELS = {"lacoot": "LaCoOT fine-tune, then removal", "heal": "removal, then fine-tune (heal)",
          "kd": "removal, then distillation"}  # fmt: skip


def markdown(rep: dict[str, Any], envs: list[dict[str, Any]], command: str) -> str:
    machines = sorted({e["machine"] for e in envs})
    lines = [
        "# Fine-tune from a trained model: LaCoOT against heal and distillation",
        "",
        f"Generated by `{command}` from `finetune/jobs/*.json`. Machines: {', '.join(machines)}; "
        f"threads {sorted({e['threads'] for e in envs})}; commits "
        f"{', '.join(sorted({e['commit'][:10] for e in envs}))}; dates "
        f"{min(e['date'] for e in envs)} to {max(e['date'] for e in envs)}; load at the start "
        f"of each job {sorted({e['load_at_start'] for e in envs})}.",
        f"Budget: at most {BUDGET:.0%} of the MACs. Fine-tune schedule: "
        + ", ".join(f"{k} {v}" for k, v in FINETUNE.items())
        + ". Removal: for each order x repair the fewest blocks within the budget after the "
        "repair, the pair chosen on validation. `train s`: the seconds the training epochs "
        "took, summed from each job's training log (set-up, validation passes and the removal's "
        "choice not counted); one CPU thread, another job running beside it. LaCoOT had its "
        "variants (below) chosen on validation; heal and distillation one configuration each "
        "(their removal chosen over the same orders and repairs): more tuning for LaCoOT.",
        "",
        "Pretrained vanilla test accuracy: "
        + ", ".join(f"seed {s}: {v:.2f}%" for s, v in sorted(rep["vanilla"].items())),
        "",
        "| method | E | seeds | test (mean) | per seed | MACs | params | order/repair | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        lines.append(
            f"| {LABELS[r['method']]} | {r['epochs']} | {r['seeds']} | {r['test_mean']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in r['per_seed'])} | {r['macs_fraction']:.1%} | "
            f"{', '.join(f'{p:,}' for p in r['params'])} | {', '.join(r['how'])} | "
            f"{r['train_seconds']:.0f} |"
        )
    for s in rep["scratch"]:
        lines.append(f"| same architecture from scratch ({s['source']} job) | 15 | "
                     f"[{s['seed']}] | {s['test_accuracy']:.2f} | - | - | {s['params']:,} | "
                     f"{', '.join(s['removed'])} | {s['train_seconds'] or 0:.0f} |")  # fmt: skip
    if not rep["scratch"]:
        lines.append("| same architecture from scratch | - | pending: no job of it has run "
                     "on these seeds | | | | | | |")  # fmt: skip
    lines += [
        "",
        "LaCoOT fine-tune variants (fade, distillation weight; one per E and seed chosen on "
        "validation):",
        "",
        "| E | seed | fade | distillation | val | test | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    order = lambda v: (v["epochs"], v["seed"], v["fade"], v["distill_weight"])  # noqa: E731
    for v in sorted(rep["lacoot_variants"], key=order):
        lines.append(f"| {v['epochs']} | {v['seed']} | {v['fade']:g} | {v['distill_weight']:g} | "
                     f"{v['val_accuracy']:.2f} | "
                     f"{v['test_accuracy']:.2f} | {'yes' if v['chosen'] else ''} |")  # fmt: skip
    t = rep["targets"]
    lines += ["", f"## Targets (E = {t['epochs']}, seeds {t['seeds']})", ""]
    for name in ("within_half_point", "beats_heal", "beats_kd"):
        lines.append(f"- `{name}`: {t[name]}")
    if t.get("vanilla") is not None:
        lines.append(f"- means: vanilla {t['vanilla']:.2f}, lacoot {t['lacoot']:.2f}, heal "
                     f"{t['heal']:.2f}, kd {t['kd']:.2f}, scratch "
                     f"{'-' if t['scratch'] is None else format(t['scratch'], '.2f')}")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rep: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in METHODS:
        rs = [r for r in rep["rows"] if r["method"] == m]
        if rs:
            ax.plot([r["epochs"] for r in rs], [r["test_mean"] for r in rs], "o-",
                    label=LABELS[m])  # fmt: skip
    for s in rep["vanilla"].values():
        ax.axhline(s, color="gray", ls="--", lw=0.8)
    for s in rep["scratch"]:
        ax.axhline(s["test_accuracy"], color="k", ls=":", lw=0.8)
    ax.set_xlabel("fine-tune epochs E")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"<= {BUDGET:.0%} MACs (dashed: vanilla; dotted: from scratch)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(args: argparse.Namespace) -> dict[str, Any] | None:
    jobs = Path(args.out) / "jobs"
    loaded = load_jobs(jobs)
    if not loaded:
        return None
    results = [r for r in loaded if r["method"] in METHODS]  # scratch jobs: scratch_rows
    rep = report(results, scratch_rows(Path(args.headline) / "jobs", jobs, removals(results)))
    command = "python benchmarks/finetune.py " + " ".join(sys.argv[1:])
    rep |= {"command": command, "budget": BUDGET, "finetune": FINETUNE,
            "environments": [r["environment"] for r in loaded]}  # fmt: skip
    stem = Path(args.out).parent / Path(args.out).name
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rep, indent=1) + "\n")
    atomic_write_text(stem.with_suffix(".md"), markdown(rep, rep["environments"], command))
    plot(rep, stem.with_suffix(".png"))
    return rep


# ----------------------------------------------------------------------------------- driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_args(p)
    p.add_argument("--pretrained", default="docs/results/headline/models/vanilla-s{seed}.pt",
                   help="the pretrained model of each seed ({seed} replaced)")  # fmt: skip
    p.add_argument("--headline", default="docs/results/headline",
                   help="the headline's output (its same-architecture scratch jobs)")  # fmt: skip
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 1, 4])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=[*METHODS, "scratch"],
                   choices=[*METHODS, "scratch"],
                   help="scratch: the fine-tunes' architecture from scratch, once per seed, "
                   "unless the headline's same-architecture job is that net")  # fmt: skip
    p.add_argument("--scratch-epochs", type=int, default=15)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["0.6", "0.9", "0.9+kd"],
        help="the LaCoOT fine-tune's variants: FADE, or FADE+kd (distilled from the pretrained "
        "model with --distill-weight); one chosen per E and seed on validation",
    )
    p.add_argument("--distill-weight", type=float, default=0.9)
    p.add_argument("--distill-temperature", type=float, default=4.0)
    p.add_argument("--work", default="runs/finetune", help="checkpoints")
    p.add_argument("--out", default="docs/benchmarks/finetune",
                   help="job results in OUT/jobs; the report as OUT.json/.md/.png")  # fmt: skip
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (E = 1, seed 0, a narrow "
                   "resnet20, 64 calibration images): what the test runs")  # fmt: skip
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds, args.calib, args.scratch_epochs = [1], [0], 64, 1
        args.model_args = args.model_args or {"widths": [4, 4, 8]}
    return args


def run_scratch_once(args: argparse.Namespace, seed: int) -> None:
    """The ``scratch`` job of ``seed`` unless it, or the headline's same net, exists."""
    jobs = Path(args.out) / "jobs"
    if not Path(args.pretrained.format(seed=seed)).is_file():
        return
    removed = removal_of(args, seed)
    if scratch_rows(Path(args.headline) / "jobs", jobs, {seed: removed}):
        return
    print(f"[{time.strftime('%H:%M:%S')}] scratch-s{seed}: start ({', '.join(removed)})",
          flush=True)  # fmt: skip
    res = run_scratch(args, seed, removed)
    atomic_write_text(jobs / f"scratch-s{seed}.json", json.dumps(res, indent=1) + "\n")
    print(f"[{time.strftime('%H:%M:%S')}] scratch-s{seed}: test {res['test_accuracy']:.2f}%",
          flush=True)  # fmt: skip
    write_report(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    jobs = Path(args.out) / "jobs"
    if not args.report_only:
        jobs.mkdir(parents=True, exist_ok=True)
        for e in args.epochs:
            for s in args.seeds:
                todo = [(m, f) for m in args.methods if m in METHODS
                        for f in (args.variants if m == "lacoot" else [None])]  # fmt: skip
                for m, f in todo:
                    name = job_name(m, e, s, f)
                    done = jobs / f"{name}.json"
                    if done.is_file() or not Path(args.pretrained.format(seed=s)).is_file():
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {name}: start", flush=True)
                    res = run_job(args, m, e, s, f)
                    atomic_write_text(done, json.dumps(res, indent=1) + "\n")
                    print(f"[{time.strftime('%H:%M:%S')}] {name}: test "
                          f"{res['test_accuracy']:.2f}% at {res['macs'] / res['full_macs']:.1%} "
                          f"MACs in {res['seconds']:.0f} s", flush=True)  # fmt: skip
                    write_report(args)
        if "scratch" in args.methods:
            for s in args.seeds:
                run_scratch_once(args, s)
    rep = write_report(args)
    if rep is not None:
        print(json.dumps(rep["targets"], indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
