"""Accuracy against removed blocks and MACs: LaCoOT against vanilla, other orders, from scratch.

What is measured, on the test split (validation accuracy is recorded beside it and is the only
thing used to choose):

* the vanilla model (``lam = 0``) and a LaCoOT model per ``lam > 0``, all trained with one fixed
  schedule (:func:`lacoot.pipeline.run_training`), each collapsed block by block in ``msw`` order;
* the same models collapsed in ``cosine``, ``depth`` and ``random`` order (random: mean and sample
  standard deviation over ``--random-seeds`` seeded orders, the same orders for every model);
* from scratch: the shallow architectures that the best LaCoOT model's ``msw`` order leaves after
  ``k`` removals (``--scratch-k``), trained plainly (no penalty) with the same schedule and data;
* healing (optional): the best LaCoOT model collapsed at ``k`` and fine-tuned for
  ``--heal-epochs`` epochs at a small learning rate without the penalty.

The best ``lam`` is chosen on validation accuracy only: the LaCoOT model whose ``msw`` collapse
reaches the fewest MACs while its validation accuracy stays within 1.0 point of the vanilla full
model's; ties (or no such point) go to the higher mean validation accuracy over ``k``.

Every training run has its own folder under ``--work`` and is skipped when its final checkpoint
exists and was trained with this configuration (a partial one is resumed exactly); finished
vanilla/LaCoOT checkpoints of an identical configuration under ``--reuse`` (the folders of
``benchmarks/lambda_choice.py``) are used instead of training again.

Every curve is one :func:`lacoot.collapse.sweep` (unrepaired: ``repair="none"``, no latency), its
points :meth:`lacoot.collapse.SweepPoint.to_dict`; the from-scratch and healed models are measured
by the same sweep over no blocks. Sweeps are cached in ``--work``/sweep_cache.json, keyed by data,
checkpoint content and removal order.

    python benchmarks/tradeoff.py --lams 0 0.1 1.0 --epochs 4
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lacoot._io import atomic_write_text
from lacoot.blocks import Block, remove_blocks
from lacoot.collapse import Sweep, SweepPoint, removal_order, sweep
from lacoot.criteria import score_blocks
from lacoot.data.sources import sha256_file
from lacoot.pipeline import (
    Data,
    RunConfig,
    build_model,
    environment,
    model_from_checkpoint,
    prepare_data,
    run_training,
)
from lacoot.report import _fmt as _f
from lacoot.report import markdown_table, save_figure
from lacoot.train import CheckpointError, TrainConfig, load_checkpoint, resolve_device, train

MAX_DROP = 1.0  # points of test accuracy below the vanilla full model (the goal)
MAX_MACS = 0.5  # fraction of the full model's MACs (the goal: at least half removed)
ORDERS = ("msw", "msw_rel", "cosine", "depth")  # deterministic orders; "random" apart
REPAIR = "none"  # every measurement is of the plain collapse (no training-free repair)


# ----------------------------------------------------------------------------------- arguments
def _kv(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        import yaml

        return key.strip(), yaml.safe_load(value)
    except ImportError:
        try:
            return key.strip(), json.loads(value)
        except json.JSONDecodeError:
            return key.strip(), value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="folder of the dataset files")
    p.add_argument(
        "--model-args",
        "--model-arg",
        dest="model_args",
        type=_kv,
        action="append",
        default=[],
        help="extra model constructor argument KEY=VALUE (repeatable), e.g. widths=[4,4,8]",
    )
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=RunConfig.batch_size)
    p.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.1, 1.0], help="0 = vanilla")
    p.add_argument("--random-seeds", type=int, default=5, help="random orders per model")
    p.add_argument("--scratch-k", type=int, nargs="*", default=[2, 4, 6])
    p.add_argument("--heal-epochs", type=int, default=1, help="0 disables healing")
    p.add_argument("--heal-k", type=int, nargs="*", default=None, help="default: --scratch-k")
    p.add_argument("--heal-lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default="runs/tradeoff", help="folder of the training runs")
    p.add_argument(
        "--reuse",
        default="runs/lambda_choice",
        help="folder of lam_<lam>/checkpoint.pt to reuse when identical ('' disables)",
    )
    p.add_argument("--out", default="docs/benchmarks/tradeoff", help="output path stem")
    args = p.parse_args(argv)
    args.model_args = dict(args.model_args)
    if 0.0 not in args.lams or not any(lam > 0 for lam in args.lams):
        p.error("--lams needs 0 (the vanilla model) and at least one lambda > 0")
    if len(set(args.lams)) != len(args.lams) or any(lam < 0 for lam in args.lams):
        p.error("--lams must be distinct and >= 0")
    if args.random_seeds < 1:
        p.error("--random-seeds must be >= 1")
    if args.heal_epochs < 0:
        p.error("--heal-epochs must be >= 0")
    if args.heal_k is None:
        args.heal_k = list(args.scratch_k)
    return args


# ------------------------------------------------------------------------------------ helpers
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def checkpoint_status(path: Path, train_config: dict[str, Any], meta: dict[str, Any]) -> str:
    """``final``, ``partial`` (same configuration, fewer epochs), ``missing`` or ``mismatch: ...``.

    Only ``final`` is used as is; a ``partial`` run is resumed.
    """
    if not path.is_file():
        return "missing"
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        return f"mismatch: {exc}"
    if not TrainConfig.same_run(state.get("train_config"), TrainConfig.from_dict(train_config)):
        return "mismatch: trained with another train_config"
    for key, value in meta.items():
        if state.get(key) != value:
            return f"mismatch: another {key}"
    if int(state.get("epoch", 0)) < int(train_config["epochs"]):
        return "partial"
    return "final"


def run_config(args: argparse.Namespace, lam: float) -> RunConfig:
    """The main job's defaults but for the options of this script (as lambda_choice.py)."""
    return RunConfig(
        model=args.model,
        model_args=dict(args.model_args),
        dataset=args.dataset,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        device=args.device,
        epochs=args.epochs,
        lam=lam,
        seed=args.seed,
        out=str(Path(args.work) / f"lam_{lam:g}"),
        compare=[],
        latency_batch_sizes=[1],
        progress=False,
    )


class SweepCache:
    """:func:`lacoot.collapse.sweep` of a model (unrepaired, no latency), cached on disk by data,
    weights and removal order; the points as :meth:`lacoot.collapse.SweepPoint.to_dict`."""

    def __init__(self, path: Path, data: Data, example: torch.Tensor, data_key: str) -> None:
        self.path = path
        self.data = data
        self.example = example
        self.data_key = data_key
        self.cache: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.cache = json.loads(path.read_text())
            except json.JSONDecodeError:
                self.cache = {}
        self.dirty = False

    def curve(
        self,
        model: nn.Module,
        source: str,
        blocks: Sequence[Block],
        scores: Mapping[str, float],
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """The removal order of ``scores`` and its points ``k = 0..K`` (the first ``k`` blocks
        removed); ``source`` identifies the weights (a checkpoint digest)."""
        order = removal_order(blocks, scores)
        key = f"{self.data_key}|{REPAIR}|{source}|{','.join(order)}"
        if key not in self.cache:
            measured = sweep(
                model,
                blocks,
                scores,
                self.data.val,
                self.data.test,
                example_input=self.example,
                latency_batch_sizes=(),
                repair=REPAIR,
            )
            self.cache[key] = measured.to_dict()
            self.dirty = True
        return order, copy.deepcopy(self.cache[key]["points"])

    def measure(self, model: nn.Module, source: str) -> dict[str, Any]:
        """The model as it is (a sweep over no blocks: its point ``k = 0``)."""
        return self.curve(model, source, [], {})[1][0]

    def save(self) -> None:
        if self.dirty:
            atomic_write_text(self.path, json.dumps(self.cache, indent=1, sort_keys=True))
            self.dirty = False


def as_sweep(points: Sequence[dict[str, Any]]) -> Sweep:
    """A curve of the record (:meth:`SweepPoint.to_dict` points) as a :class:`Sweep` again."""
    pts = tuple(
        SweepPoint(
            **{
                **p,
                "removed": tuple(p["removed"]),
                "latency_ms": {int(b): t for b, t in p["latency_ms"].items()},
            }
        )
        for p in points
    )
    return Sweep(order=pts[-1].removed, points=pts, repair=REPAIR)


def random_summary(seed_curves: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per k: mean and sample standard deviation over the random orders."""
    out = []
    for k in range(len(seed_curves[0])):
        row: dict[str, Any] = {"k": k}
        for key in ("val_accuracy", "test_accuracy", "macs", "params"):
            values = [c[k][key] for c in seed_curves]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{key}_min"] = min(values)
            row[f"{key}_max"] = max(values)
        out.append(row)
    return out


def rebuild_shallow(model_spec: dict[str, Any], removed: Sequence[str], seed: int) -> nn.Module:
    torch.manual_seed(seed)  # as run_training does before building its model
    model = build_model(model_spec)
    return remove_blocks(model, removed) if removed else model


# ------------------------------------------------------------------------------------- steps
def train_lam(
    args: argparse.Namespace, lam: float, model_spec: dict[str, Any], data_spec: dict[str, Any]
) -> tuple[Path, str]:
    """The vanilla/LaCoOT checkpoint at ``lam``: found final, reused, resumed or trained."""
    cfg = run_config(args, lam)
    assert cfg.data_spec() == data_spec
    tc = cfg.train_config().to_dict()
    meta = {"model_spec": model_spec, "data_spec": data_spec}
    own = Path(cfg.out) / "checkpoint.pt"
    own_status = checkpoint_status(own, tc, meta)
    if own_status == "final":
        return own, "existing"
    if args.reuse:
        other = Path(args.reuse) / f"lam_{lam:g}" / "checkpoint.pt"
        other_status = checkpoint_status(other, tc, meta)
        if other_status == "final":
            return other, "reused"
        log(f"lam {lam:g}: not reusing {other} ({other_status})")
    resume = own_status == "partial"
    log(f"lam {lam:g}: {'resuming' if resume else 'training'} into {cfg.out} ({args.epochs} ep)")
    ckpt, _ = run_training(cfg, overwrite=True, resume=resume)
    return ckpt, "resumed" if resume else "trained"


def train_and_measure(
    args: argparse.Namespace,
    sweeps: SweepCache,
    folder: Path,
    model: nn.Module,
    tc: TrainConfig,
    meta: dict[str, Any],
    device: torch.device,
    k: int,
    removed: list[str],
) -> dict[str, Any]:
    """Train a shallow model (from scratch or healing) with :func:`train_shallow`, then measure
    it; the point records where it came from and its training history."""
    model, ckpt, source = train_shallow(args, folder, model, tc, meta, device)
    state = load_checkpoint(ckpt)
    point = sweeps.measure(model, sha256_file(ckpt))
    point.update(
        k=k,
        removed=removed,
        checkpoint=str(ckpt),
        source=source,
        train_seconds=sum(r["seconds"] for r in state["history"]),
        history=state["history"],
    )
    sweeps.save()
    return point


def train_shallow(
    args: argparse.Namespace,
    folder: Path,
    model: nn.Module,
    tcfg: TrainConfig,
    meta: dict[str, Any],
    device: torch.device,
) -> tuple[nn.Module, Path, str]:
    """Train ``model`` (already shallow) into ``folder`` unless a matching final run is there."""
    ckpt = folder / "checkpoint.pt"
    status = checkpoint_status(ckpt, tcfg.to_dict(), meta)
    if status == "final":
        model.load_state_dict(load_checkpoint(ckpt)["model"])
        return model.to(device).eval(), ckpt, "existing"
    resume = status == "partial"
    log(f"{'resuming' if resume else 'training'} {folder} ({tcfg.epochs} ep, lr {tcfg.lr:g})")
    data = prepare_data(meta["data_spec"], device, seed=args.seed)  # a fresh, identical stream
    folder.mkdir(parents=True, exist_ok=True)
    train(
        model,
        [],  # lam = 0: no penalty, so no blocks to hook (vanilla's zero-weighted MSW is skipped)
        data.train,
        data.val,
        tcfg,
        out_dir=folder,
        device=device,
        resume=resume,
        meta=meta,
        progress=False,
    )
    return model.eval(), ckpt, "resumed" if resume else "trained"


def select_best(results: list[dict[str, Any]], vanilla: dict[str, Any]) -> dict[str, Any]:
    """The LaCoOT run chosen on validation accuracy (see the module docstring)."""
    ref = vanilla["curves"]["msw"][0]["val_accuracy"]

    def key(r: dict[str, Any]) -> tuple[float, float]:
        pts = r["curves"]["msw"]
        ok = [p["macs"] / pts[0]["macs"] for p in pts if p["val_accuracy"] >= ref - MAX_DROP]
        mean_val = statistics.fmean(p["val_accuracy"] for p in pts)
        r["selection"] = {
            "min_macs_fraction_within_val_budget": min(ok) if ok else None,
            "mean_val_accuracy": mean_val,
        }
        return (min(ok) if ok else math.inf, -mean_val)

    return min((r for r in results if r["lam"] > 0), key=key)


def judge(
    best: dict[str, Any], vanilla: dict[str, Any], healed: list[dict[str, Any]]
) -> dict[str, Any]:
    """The goal, measured: part 1 (MACs at accuracy) and part 2 (better at every depth)."""
    ref_test = vanilla["curves"]["msw"][0]["test_accuracy"]
    floor = ref_test - MAX_DROP
    pts = best["curves"]["msw"]
    full_macs = pts[0]["macs"]
    half = [p for p in pts if p["macs"] <= MAX_MACS * full_macs]
    # the library's budgeted choice: best validation accuracy within the MACs, fewer MACs on ties
    chosen = pts[as_sweep(pts).best(max_macs=MAX_MACS).k] if half else None
    oracle = [p for p in half if p["test_accuracy"] >= floor - 1e-9]
    part1 = {
        "vanilla_full_test_accuracy": ref_test,
        "test_accuracy_floor": floor,
        "full_macs": full_macs,
        "val_chosen": None
        if chosen is None
        else {
            "k": chosen["k"],
            "test_accuracy": chosen["test_accuracy"],
            "val_accuracy": chosen["val_accuracy"],
            "macs_fraction": chosen["macs"] / full_macs,
        },
        "met": chosen is not None and chosen["test_accuracy"] >= floor - 1e-9,
        "test_curve_points_meeting": [p["k"] for p in oracle],
        "healed_points_meeting": [
            h["k"]
            for h in healed
            if h["macs"] <= MAX_MACS * full_macs and h["test_accuracy"] >= floor - 1e-9
        ],
    }
    rows = []
    for k, p in enumerate(pts):
        rivals = {f"vanilla {o}": vanilla["curves"][o][k]["test_accuracy"] for o in ORDERS}
        for s, c in zip(vanilla["random_seeds"], vanilla["curves"]["random"], strict=True):
            rivals[f"vanilla random seed {s}"] = c[k]["test_accuracy"]
        best_name = max(rivals, key=rivals.get)
        mean_random = vanilla["curves"]["random_mean"][k]["test_accuracy"]
        strict_rivals = [rivals[f"vanilla {o}"] for o in ORDERS] + [mean_random]
        rows.append(
            {
                "k": k,
                "lacoot": p["test_accuracy"],
                "best_vanilla_order": best_name,
                "best_vanilla": rivals[best_name],
                "margin": p["test_accuracy"] - rivals[best_name],
                "wins": p["test_accuracy"] > rivals[best_name],
                "wins_vs_random_mean": p["test_accuracy"] > max(strict_rivals),
            }
        )
    part2 = {
        "per_k": rows,
        "met": all(r["wins"] for r in rows),
        "met_vs_random_mean": all(r["wins_vs_random_mean"] for r in rows),
        "failing_k": [r["k"] for r in rows if not r["wins"]],
    }
    return {"part1": part1, "part2": part2, "met": part1["met"] and part2["met"]}


# ------------------------------------------------------------------------------------ output
def plot(path: Path, record: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot")
        return False

    fig, (ax_macs, ax_k) = plt.subplots(1, 2, figsize=(14, 5.5))
    styles = {
        "msw": "-", "msw_rel": (0, (6, 1.5, 1, 1.5, 1, 1.5)), "cosine": "--", "depth": ":",
        "random": "-.",
    }  # fmt: skip
    colors = ["tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:cyan"]
    lacoot = [r for r in record["models"] if r["lam"] > 0]
    for r in record["models"]:
        color = "0.35" if r["lam"] == 0 else colors[lacoot.index(r) % len(colors)]
        name = "vanilla" if r["lam"] == 0 else f"LaCoOT lam={r['lam']:g}"
        if r["lam"] == record["best_lam"]:
            name += " (best, val)"
        for order in (*ORDERS, "random"):
            pts = r["curves"]["random_mean" if order == "random" else order]
            acc = [p["test_accuracy"] for p in pts]
            macs = [p["macs"] / 1e6 for p in pts]
            ks = [p["k"] for p in pts]
            label = f"{name}, {order}" + (
                f" (mean±std, {len(r['random_seeds'])})" if order == "random" else ""
            )
            width = 2.2 if order in ("msw", "msw_rel") and r["lam"] > 0 else 1.2
            for ax, x in ((ax_macs, macs), (ax_k, ks)):
                ax.plot(x, acc, linestyle=styles[order], color=color, lw=width, marker="o",
                        ms=2.5, label=label if ax is ax_k else None)  # fmt: skip
                if order == "random":
                    std = [p["test_accuracy_std"] for p in pts]
                    lo = [a - s for a, s in zip(acc, std, strict=True)]
                    hi = [a + s for a, s in zip(acc, std, strict=True)]
                    ax.fill_between(x, lo, hi, color=color, alpha=0.12, lw=0)
    extra = (
        ("scratch", "from scratch (msw-order shapes)", "*", "tab:red"),
        ("healed", f"healed ({record['config']['heal_epochs']} ep)", "D", "tab:green"),
    )
    for key, label, marker, color in extra:
        pts = record[key]
        if not pts:
            continue
        acc = [p["test_accuracy"] for p in pts]
        ax_macs.plot([p["macs"] / 1e6 for p in pts], acc, marker=marker, color=color, ls="-",
                     lw=1.5, ms=8)  # fmt: skip
        ax_k.plot([p["k"] for p in pts], acc, marker=marker, color=color, ls="-", lw=1.5, ms=8,
                  label=label)  # fmt: skip
    floor = record["goal"]["part1"]["test_accuracy_floor"]
    full = record["goal"]["part1"]["full_macs"] / 1e6
    ax_macs.axhline(floor, color="k", lw=0.8, ls=(0, (1, 3)))
    ax_macs.axvline(MAX_MACS * full, color="k", lw=0.8, ls=(0, (1, 3)))
    ax_macs.set_xlabel("MACs per image (M); dotted: goal (half the MACs, 1 point below vanilla)")
    ax_macs.invert_xaxis()
    ax_k.set_xlabel("blocks removed")
    for ax in (ax_macs, ax_k):
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    ax_k.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    cfg = record["config"]
    fig.suptitle(f"{cfg['model']} on {cfg['dataset']}, {cfg['epochs']} epochs, seed {cfg['seed']}")
    save_figure(fig, path)
    return True


def render_markdown(record: dict[str, Any]) -> str:
    """The Markdown report of a record (:func:`main`'s JSON)."""
    out = [
        *_md_header(record),
        *_md_goal(record),
        *_md_lambda_choice(record),
        *_md_curves(record),
        *_md_shallow(record),
        f"Full data in `{Path(record['config']['out']).name}.json` (per point: removed blocks, "
        "validation and test accuracy, MACs, parameters; block scores; training histories).\n",
    ]
    return "\n".join(out)


def _model(record: dict[str, Any], lam: float) -> dict[str, Any]:
    return next(r for r in record["models"] if r["lam"] == lam)


def _md_header(record: dict[str, Any]) -> list[str]:
    cfg, env, tc = record["config"], record["environment"], record["train_config"]
    return [
        f"# Accuracy against depth and MACs: LaCoOT, vanilla, block orders, from scratch "
        f"({cfg['model']}, {cfg['dataset']})\n",
        f"- command: `{record['command']}`",
        f"- date: {env['date']}; device {env['device']}, {env['cpu_threads']} threads; "
        f"torch {env['torch']}; lacoot {env['lacoot']}; {env['platform']}",
        f"- seed {cfg['seed']}; every model trained {cfg['epochs']} epochs with one schedule "
        f"({tc['optimizer']} lr {tc['lr']}, {tc['schedule']}, batch {cfg['batch_size']}); the "
        "vanilla model is lambda = 0",
        f"- random order: mean ± sample std over seeds {_model(record, 0)['random_seeds']} (the "
        "same orders for every model)",
        "- from scratch: the architecture left by the best LaCoOT model's `msw` order at k, "
        "trained from initialisation without penalty, same schedule and data",
        f"- healed: the best LaCoOT model collapsed at k, fine-tuned {cfg['heal_epochs']} "
        f"epoch(s) at lr {cfg['heal_lr']:g} (cosine), no penalty"
        if record["healed"]
        else "- healing: off",
        "",
    ]


def _ks(ks: Sequence[int]) -> str:
    return ", ".join(map(str, ks))


def _md_goal(record: dict[str, Any]) -> list[str]:
    goal = record["goal"]
    p1, p2, chosen = goal["part1"], goal["part2"], goal["part1"]["val_chosen"]
    yes = {True: "**MET**", False: "**NOT MET**"}
    part1 = (
        "No collapse of the best LaCoOT model reaches half the MACs."
        if chosen is None
        else f"Among its `msw` collapses with <= {MAX_MACS:.0%} of the MACs, validation accuracy "
        f"picks k = {chosen['k']} ({chosen['macs_fraction']:.1%} of the MACs): test accuracy "
        f"{chosen['test_accuracy']:.2f}%."
    )
    return [
        "## Goal\n",
        f"With LaCoOT: (1) at least half of the MACs removed for at most {MAX_DROP:.1f} point "
        "below the vanilla full-depth test accuracy, and (2) higher test accuracy than the "
        "vanilla model collapsed in any order, at every depth. The LaCoOT model is the "
        f"validation-chosen lambda = {record['best_lam']:g}; test accuracy is reported.\n",
        f"- **Overall: {yes[goal['met']].strip('*')}.**",
        f"- Part 1: {yes[p1['met']]}. Vanilla full-depth test accuracy "
        f"{p1['vanilla_full_test_accuracy']:.2f}%, floor {p1['test_accuracy_floor']:.2f}%. "
        f"{part1} Points of its test curve meeting part 1 (k): "
        f"{_ks(p1['test_curve_points_meeting']) or 'none'}; healed points meeting it (k): "
        f"{_ks(p1['healed_points_meeting']) or 'none'}.",
        f"- Part 2: {yes[p2['met']]} against the best vanilla order at each k, counting every "
        "random seed as an order"
        + ("" if p2["met"] else f" (fails at k = {_ks(p2['failing_k'])})")
        + f"; {yes[p2['met_vs_random_mean']]} when random counts by its mean.",
        "",
        markdown_table(
            ["k", "LaCoOT msw", "best vanilla (order)", "margin"],
            [
                [
                    r["k"],
                    f"{r['lacoot']:.2f}",
                    f"{r['best_vanilla']:.2f} ({r['best_vanilla_order'].removeprefix('vanilla ')})",
                    f"{r['margin']:+.2f}",
                ]
                for r in p2["per_k"]
            ],
        ),
    ]


def _md_lambda_choice(record: dict[str, Any]) -> list[str]:
    headers = [
        "lambda", "full val %", "full test %", "fewest MACs within budget (val)",
        "mean val % over k", "checkpoint", "training",
    ]  # fmt: skip
    rows = []
    for r in record["models"]:
        full, selection = r["curves"]["msw"][0], r.get("selection") or {}
        rows.append(
            [
                f"{r['lam']:g}" + (" (best)" if r["lam"] == record["best_lam"] else ""),
                f"{full['val_accuracy']:.2f}",
                f"{full['test_accuracy']:.2f}",
                _f(selection.get("min_macs_fraction_within_val_budget"), ".1%"),
                _f(selection.get("mean_val_accuracy")),
                f"`{r['checkpoint']}` ({r['source']})",
                f"{r['train_seconds'] / 60:.1f} min",
            ]
        )
    return [
        "## Choice of lambda (validation only)\n",
        "The LaCoOT model whose `msw` collapse reaches the fewest MACs with validation accuracy "
        f"within {MAX_DROP:.1f} point of the vanilla full model's "
        f"({_model(record, 0)['curves']['msw'][0]['val_accuracy']:.2f}%); ties or no such point: "
        "higher mean validation accuracy over k.\n",
        markdown_table(headers, rows),
    ]


def _columns(record: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]], bool]]:
    """The curves of the big tables: (name, points by k, is random), the best model first."""
    columns = []
    for r in sorted(record["models"], key=lambda r: (r["lam"] != record["best_lam"], r["lam"])):
        name = "vanilla" if r["lam"] == 0 else f"λ={r['lam']:g}"
        for order in (*ORDERS, "random"):
            pts = r["curves"]["random_mean" if order == "random" else order]
            columns.append((f"{name} {order}", pts, order == "random"))
    return columns


def _md_curves(record: dict[str, Any]) -> list[str]:
    """The big tables: rows k, columns curves (test accuracy, then MACs)."""
    columns = _columns(record)
    best = _model(record, record["best_lam"])["curves"]["msw"]
    full = best[0]["macs"]
    by_k = {key: {p["k"]: p for p in record[key]} for key in ("scratch", "healed")}
    headers = ["k", f"MACs (M), λ={record['best_lam']:g} msw", "MACs %"]
    headers += [c[0] for c in columns] + ["from scratch", "healed"]
    rows = []
    for k, point in enumerate(best):
        row = [k, f"{point['macs'] / 1e6:.2f}", f"{point['macs'] / full:.1%}"]
        for _, pts, is_random in columns:
            p = pts[k]
            row.append(
                f"{p['test_accuracy']:.2f} ± {p['test_accuracy_std']:.2f}"
                if is_random
                else f"{p['test_accuracy']:.2f}"
            )
        for key in ("scratch", "healed"):
            row.append(_f(by_k[key][k]["test_accuracy"]) if k in by_k[key] else "-")
        rows.append(row)
    return [
        "## Test accuracy (%) after removing k blocks\n",
        "Columns are model and block order (random: mean ± std). The MACs column is that of the "
        "best LaCoOT model's `msw` order (the from-scratch and healed models have the same "
        "architecture); other orders remove other blocks, see the next table.\n",
        markdown_table(headers, rows),
        "## MACs (% of the full model) after removing k blocks\n",
        markdown_table(
            ["k", *[c[0] for c in columns]],
            [[k] + [f"{c[1][k]['macs'] / full:.1%}" for c in columns] for k in range(len(best))],
        ),
    ]


def _md_shallow(record: dict[str, Any]) -> list[str]:
    """The from-scratch and healed models beside the collapsed LaCoOT model (none: nothing)."""
    best = _model(record, record["best_lam"])["curves"]["msw"]
    rows = [
        [
            kind,
            p["k"],
            f"{p['val_accuracy']:.2f}",
            f"{p['test_accuracy']:.2f}",
            f"{best[p['k']]['test_accuracy']:.2f}",
            f"{p['macs'] / 1e6:.2f}",
            f"{p['params'] / 1e3:.1f}",
            f"{p['train_seconds'] / 60:.1f}",
        ]
        for kind in ("scratch", "healed")
        for p in record[kind]
    ]
    if not rows:
        return []
    headers = [
        "model", "k", "val %", "test %", "collapsed LaCoOT test %", "MACs (M)", "params (k)",
        "training (min)",
    ]  # fmt: skip
    return ["## From scratch and healed\n", markdown_table(headers, rows)]


# --------------------------------------------------------------------------------------- main
@dataclass
class Setup:
    """What every step shares: where, on what data, which model, the measurements."""

    device: torch.device
    work: Path
    data_spec: dict[str, Any]
    model_spec: dict[str, Any]
    data: Data
    sweeps: SweepCache
    train_config: TrainConfig  # the vanilla/LaCoOT schedule (lam = 0), also from scratch


def setup(args: argparse.Namespace) -> Setup:
    device = resolve_device(args.device)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = run_config(args, 0.0)
    data_spec = base.data_spec()
    data = prepare_data(data_spec, device, seed=args.seed)
    if data.val is None:
        raise SystemExit("no validation split: the choices here need one")
    model_spec = {
        "name": args.model,
        "num_classes": data.num_classes,
        "in_channels": data.image_shape[0],
        "kwargs": dict(args.model_args),
    }
    example = torch.zeros(1, *data.image_shape, device=device)
    data_key = hashlib.sha256(json.dumps(data_spec, sort_keys=True).encode()).hexdigest()[:16]
    sweeps = SweepCache(work / "sweep_cache.json", data, example, data_key)
    return Setup(device, work, data_spec, model_spec, data, sweeps, base.train_config())


def sweep_orders(
    args: argparse.Namespace, st: Setup, model: nn.Module, blocks: list[Block], digest: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Scores, removal orders and curves of one model: every order of ``ORDERS`` and
    ``--random-seeds`` random orders (each curve and the random mean)."""
    scores = {
        c: score_blocks(model, blocks, st.data.val, criterion=c, seed=args.seed) for c in ORDERS
    }
    orders: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for c in ORDERS:
        orders[c], curves[c] = st.sweeps.curve(model, digest, blocks, scores[c])
        st.sweeps.save()
    orders["random"], curves["random"] = [], []
    for s in range(args.random_seeds):
        sc = score_blocks(model, blocks, None, criterion="random", seed=s)
        order, points = st.sweeps.curve(model, digest, blocks, sc)
        orders["random"].append(order)
        curves["random"].append(points)
        st.sweeps.save()
    curves["random_mean"] = random_summary(curves["random"])
    return scores, orders, curves


def measure_lam(
    args: argparse.Namespace, st: Setup, lam: float
) -> tuple[dict[str, Any], tuple[nn.Module, str]]:
    """Train (or find) the model at ``lam`` and sweep it in every order; its record entry and
    (model, checkpoint digest)."""
    ckpt, source = train_lam(args, lam, st.model_spec, st.data_spec)
    state = load_checkpoint(ckpt, map_location=st.device)
    model, blocks, _ = model_from_checkpoint(state, ckpt, st.device)
    digest = sha256_file(ckpt)
    log(f"lam {lam:g}: {source} {ckpt}; scoring and sweeping {len(blocks)} blocks")
    scores, orders, curves = sweep_orders(args, st, model, blocks, digest)
    pts = curves["msw"]
    log(
        f"lam {lam:g}: msw test acc by k "
        + " ".join(f"{p['test_accuracy']:.1f}" for p in pts)
        + f"; MACs {pts[0]['macs'] / 1e6:.2f}M -> {pts[-1]['macs'] / 1e6:.2f}M"
    )
    result = {
        "lam": lam,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": digest,
        "source": source,
        "train_config": state["train_config"],
        "train_seconds": sum(r["seconds"] for r in state["history"]),
        "history": state["history"],
        "blocks": [b.to_dict() for b in blocks],
        "scores": scores,
        "random_seeds": list(range(args.random_seeds)),
        "orders": orders,
        "curves": curves,
    }
    return result, (model, digest)


def run_shallow(
    args: argparse.Namespace,
    st: Setup,
    kind: str,
    best: dict[str, Any],
    model: nn.Module,
    digest: str,
    tc: TrainConfig,
) -> list[dict[str, Any]]:
    """The shallow models at each k, trained with ``tc``: ``kind="scratch"``, the architectures
    that the best LaCoOT model's ``msw`` order leaves (``--scratch-k``) from initialisation;
    ``"heal"``, that model (``model``, checkpoint ``digest``) collapsed so (``--heal-k``)."""
    order = best["orders"]["msw"]
    points = []
    for k in sorted(set(args.scratch_k if kind == "scratch" else args.heal_k)):
        if not 0 <= k <= len(order):
            log(f"{kind} k={k} skipped: the model has {len(order)} blocks")
            continue
        removed = list(order[:k])
        meta = {
            "kind": kind,
            "model_spec": st.model_spec,
            "data_spec": st.data_spec,
            "removed": removed,
        }
        if kind == "scratch":
            shallow = rebuild_shallow(st.model_spec, removed, args.seed)
            folder = st.work / f"scratch_k{k}"
        else:
            meta["source_sha256"] = digest
            shallow = remove_blocks(model, removed)
            folder = st.work / f"heal_lam{best['lam']:g}_k{k}"
        point = train_and_measure(args, st.sweeps, folder, shallow, tc, meta, st.device, k, removed)
        points.append(point)
        log(f"{kind} k={k}: test {point['test_accuracy']:.2f}% ({point['source']})")
    return points


def heal_config(args: argparse.Namespace, st: Setup) -> TrainConfig | None:
    """The fine-tuning schedule of healing (``None``: healing off)."""
    if args.heal_epochs == 0:
        return None
    return TrainConfig.from_dict(
        {
            **st.train_config.to_dict(),
            "epochs": args.heal_epochs,
            "lr": args.heal_lr,
            "lam": 0.0,
            "schedule": "cosine",
        }
    )


def make_record(
    args: argparse.Namespace,
    argv: Sequence[str] | None,
    st: Setup,
    heal_tc: TrainConfig | None,
    best_lam: float,
    goal: dict[str, Any],
    models: list[dict[str, Any]],
    scratch: list[dict[str, Any]],
    healed: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON record, but for its ``seconds``."""
    return {
        "command": " ".join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "seed": args.seed,
        "config": {k: v for k, v in vars(args).items()},
        "environment": environment(st.device),
        "model_spec": st.model_spec,
        "data_spec": st.data_spec,
        "train_config": st.train_config.to_dict(),
        "heal_train_config": None if heal_tc is None else heal_tc.to_dict(),
        "sweep_repair": REPAIR,
        "goal_definition": {
            "max_drop_points": MAX_DROP,
            "max_macs_fraction": MAX_MACS,
            "text": "with LaCoOT: at least half of the MACs removed for at most 1.0 point below "
            "vanilla full-depth test accuracy; higher accuracy than vanilla + any order at every "
            "depth",
        },
        "selection_rule": "LaCoOT lambda whose msw collapse reaches the fewest MACs with "
        "validation accuracy within 1.0 point of the vanilla full model's; ties or none: higher "
        "mean validation accuracy over k",
        "best_lam": best_lam,
        "goal": goal,
        "models": models,
        "scratch": scratch,
        "healed": healed,
    }


def write_outputs(out: Path, record: dict[str, Any]) -> None:
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2))
    atomic_write_text(out.with_suffix(".md"), render_markdown(record))
    plot(out.with_suffix(".png"), record)
    goal = record["goal"]
    p1, p2 = goal["part1"], goal["part2"]
    log(
        f"goal {'MET' if goal['met'] else 'NOT MET'}: part 1 {'met' if p1['met'] else 'not met'} "
        f"(val-chosen {p1['val_chosen']}), part 2 {'met' if p2['met'] else 'not met'} "
        f"(failing k {p2['failing_k']}); wrote {out}.json/.md/.png "
        f"in {record['seconds'] / 60:.1f} min"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    st = setup(args)
    results: list[dict[str, Any]] = []
    loaded: dict[float, tuple[nn.Module, str]] = {}
    for lam in args.lams:
        result, loaded[lam] = measure_lam(args, st, lam)
        results.append(result)
    vanilla = next(r for r in results if r["lam"] == 0)
    best = select_best(results, vanilla)
    log(f"best lambda on validation: {best['lam']:g} ({best['selection']})")
    model, digest = loaded[best["lam"]]
    scratch = run_shallow(args, st, "scratch", best, model, digest, st.train_config)
    heal_tc = heal_config(args, st)
    healed = [] if heal_tc is None else run_shallow(args, st, "heal", best, model, digest, heal_tc)
    goal = judge(best, vanilla, healed)
    record = make_record(args, argv, st, heal_tc, best["lam"], goal, results, scratch, healed)
    record["seconds"] = time.perf_counter() - started
    write_outputs(Path(args.out), record)
    return record


if __name__ == "__main__":
    main()
