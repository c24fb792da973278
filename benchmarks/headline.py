"""The headline, from one command: LaCoOT against like-for-like baselines, in one environment.

Trains, for each seed, one job after the other (each a fresh training with the same schedule):

* ``vanilla``: the model without any penalty;
* ``lacoot_default``: ``lacoot run``'s training configuration as it is (``TrainConfig()``'s
  defaults, only the epochs and the seed set);
* ``scratch_same_arch``: the exact architecture ``lacoot_default`` collapses to at its reported
  ``k`` (the number of blocks its budget aimed at; the blocks its validation-chosen order and
  repair remove), trained from scratch;
* ``paper``: the paper's configuration: the MSW penalty (50 random directions, lambda 5) on the
  last block of each stage, no budget, no fade;
* ``scratch_deepest_first`` (after every seed of the others): a second shallow baseline of the
  same ``k``, one block removed per stage from the deepest stage (another net: fewer parameters).

Every trained model is swept k = 0..K in every order (all of :func:`lacoot.list_criteria`,
``msw`` and ``msw_rel`` included) with every repair (none, bn, linear), through the pipeline's
own sweep; for each model and ``k`` the order and the repair are chosen on validation accuracy
(mean over the seeds present) and the test accuracy of that choice is reported.

Each (job, seed) writes ``OUT/jobs/JOB-sSEED.json`` when it finishes and a rerun skips it, so
the command resumes where it stopped (trainings themselves resume from ``WORK/JOB-sSEED/``).
The weights of the vanilla and from-scratch models are copied to ``OUT/models/`` (``lacoot.load``
reads them). ``OUT/headline.json`` and ``OUT/headline.md`` are regenerated from the job files
after every job (``--report-only``: only that); results from different devices, torch versions or
precisions are refused, never merged (each job's machine and commit are recorded and listed).

    OMP_NUM_THREADS=1 python benchmarks/headline.py --threads 1     # CPU, float32
    python benchmarks/headline.py --device cuda                      # GPU (bfloat16 autocast)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
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
    model_spec,
    spread_order,
    sweep_every_way,
    train_resumably,
    train_scratch,
)

from lacoot._io import atomic_write_text  # noqa: E402
from lacoot.blocks import find_blocks  # noqa: E402
from lacoot.checkpoint import load_checkpoint  # noqa: E402
from lacoot.config import DEFAULT_TARGET_MACS, RunConfig  # noqa: E402
from lacoot.device import resolve_device  # noqa: E402
from lacoot.export import save_model  # noqa: E402
from lacoot.pipeline import build_model, model_from_checkpoint  # noqa: E402

SEEDS = (0, 1, 2)
PER_SEED = ("vanilla", "lacoot_default", "scratch_same_arch", "paper")
LAST = ("scratch_deepest_first",)
SWEPT = ("vanilla", "lacoot_default", "paper")
SCRATCH = ("scratch_same_arch", "scratch_deepest_first")
# results that differ here never merge: they decide the arithmetic. The machine (CPU or GPU model)
# and the commit are recorded with every job and listed in the headline: another CPU of the same
# device type, torch and precision trains the same schedule to within rounding, and a benchmark
# that runs for days on 2 cores spans sessions on other machines
ENV_KEYS = ("device", "torch", "precision")
SCHEDULE_KEYS = ("epochs", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                 "batch_size", "augment", "val_fraction", "channels_last")  # fmt: skip
NEAR_SCRATCH = 0.3  # points: the target "near the same architecture trained from scratch"
NEAR_VANILLA = 1.0  # points: the target "within 1 point of vanilla"


# ------------------------------------------------------------------------------ the plan
def plan(seeds: list[int]) -> list[tuple[str, int]]:
    """(job, seed) in the order they run: each seed's jobs, then the deepest-first nets."""
    return [(j, s) for s in seeds for j in PER_SEED] + [(j, s) for j in LAST for s in seeds]


def overrides(job: str, blocks: list[Any]) -> dict[str, Any]:
    """The training options of ``job`` on top of ``TrainConfig``'s defaults."""
    if job == "lacoot_default":
        return {}
    if job == "paper":
        n_stages = len({b.shape for b in blocks})
        return {"lam": 5.0, "method": "random", "n_projections": 50, "target_macs": None,
                "fade": 0.0, "penalize": spread_order(blocks)[:n_stages]}  # fmt: skip
    return PLAIN  # vanilla and the from-scratch nets


def run_config(args: argparse.Namespace, job: str, seed: int, blocks: list[Any]) -> RunConfig:
    return job_config(
        args,
        seed,
        epochs=args.epochs,
        out=str(Path(args.work) / f"{job}-s{seed}"),
        **overrides(job, blocks),
    )


# ------------------------------------------------------------------------------ one job
def reported_k(res: dict[str, Any]) -> int:
    """The ``k`` a swept result is reported at: the number of blocks its budget aimed at, else
    the fewest blocks whose removal (unrepaired) brings the MACs to the default budget."""
    if res.get("targets"):
        return len(res["targets"])
    plain = next(sw for key, sw in res["sweeps"].items() if key.endswith("/none"))
    for pt in plain["points"]:
        if pt["macs"] <= DEFAULT_TARGET_MACS * res["full_macs"]:
            return pt["k"]
    return len(res["blocks"])


def chosen_blocks(res: dict[str, Any], k: int) -> list[str]:
    """The blocks a swept result removes at ``k`` in the order and repair with the best
    validation accuracy there."""
    pts = [sw["points"][k] for sw in res["sweeps"].values() if len(sw["points"]) > k]
    return list(max(pts, key=lambda p: p["val_accuracy"])["removed"])


def run_job(args: argparse.Namespace, job: str, seed: int, jobs_dir: Path) -> dict[str, Any] | None:
    """Train and measure one (job, seed); ``None`` when it waits for ``lacoot_default``."""
    probe = build_model({"name": args.model, "num_classes": 10, "in_channels": args.in_channels,
                         "kwargs": dict(args.model_args)})  # fmt: skip
    blocks = find_blocks(probe, torch.zeros(2, args.in_channels, args.size, args.size))
    cfg = run_config(args, job, seed, blocks)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"job": job, "seed": seed, "environment": job_environment(args),
                           "run_config": cfg.to_dict()}  # fmt: skip
    models = Path(args.out) / "models"
    models.mkdir(parents=True, exist_ok=True)
    if job in SCRATCH:
        base = jobs_dir / f"lacoot_default-s{seed}.json"
        if not base.is_file():
            print(f"{job} s{seed}: waits for lacoot_default s{seed}", flush=True)
            return None
        lac = json.loads(base.read_text())
        k = reported_k(lac)
        names = [b.name for b in blocks]
        removed = chosen_blocks(lac, k) if job == "scratch_same_arch" else spread_order(blocks)[:k]
        removed = sorted(removed, key=names.index)
        model, figures = train_scratch(cfg, removed)
        spec = model_spec(cfg, 10, args.in_channels)
        save_model(models / f"{job}-s{seed}.pt", model.cpu(), spec, removed)
        res |= figures | {"k": k}
    else:
        ckpt = train_resumably(cfg)
        say = lambda m: print(f"  {job} s{seed}: {m}", flush=True)  # noqa: E731
        res |= sweep_every_way(ckpt, args.device, seed, args.orders, calib_samples=args.calib,
                               say=say)  # fmt: skip
        if job == "vanilla":
            dev = resolve_device(args.device)
            state = load_checkpoint(ckpt, map_location=dev)
            model, _, _ = model_from_checkpoint(state, ckpt, dev)
            save_model(models / f"vanilla-s{seed}.pt", model.cpu(), state["model_spec"], [])
    res["train_seconds"] = epoch_seconds(res["history"])
    res["seconds"] = time.perf_counter() - t0  # this process only: resumed jobs count less
    return res


# ------------------------------------------------------------------------- the headline
def _mean(xs: list[float]) -> float:
    return round(statistics.fmean(xs), 4)


def _std(xs: list[float]) -> float | None:
    return round(statistics.stdev(xs), 4) if len(xs) > 1 else None


def _same(values: list[Any]) -> Any:
    """The value all seeds share, else the list of them."""
    return values[0] if all(v == values[0] for v in values) else values


def swept_rows(results: list[dict[str, Any]], ks: list[int] | None = None) -> list[dict]:
    """For each ``k``: the order and repair with the best mean validation accuracy over the
    seeds' ``results``, and that choice's test accuracy (mean, std, per seed)."""
    keys = sorted(set.intersection(*(set(r["sweeps"]) for r in results)))
    n_points = min(len(r["sweeps"][key]["points"]) for r in results for key in keys)
    rows = []
    for k in ks if ks is not None else range(n_points):
        best = None
        for key in keys:
            pts = [r["sweeps"][key]["points"][k] for r in results]
            val = statistics.fmean(p["val_accuracy"] for p in pts)
            if best is None or val > best[0]:
                best = (val, key, pts)
        assert best is not None
        val, key, pts = best
        order, repair = key.split("/")
        per_seed = [
            {"seed": r["seed"], "blocks": p["removed"], "params": p["params"],
             "macs_fraction": round(p["macs"] / r["full_macs"], 4),
             "val": p["val_accuracy"], "test": p["test_accuracy"]}
            for r, p in zip(results, pts, strict=True)
        ]  # fmt: skip
        rows.append(row(k, per_seed, order, repair))
    return rows


def row(k: int, per_seed: list[dict], order: str | None, repair: str | None) -> dict[str, Any]:
    tests = [s["test"] for s in per_seed]
    return {
        "k": k,
        "blocks": _same([s["blocks"] for s in per_seed]),
        "params": _same([s["params"] for s in per_seed]),
        "macs_fraction": _same([s["macs_fraction"] for s in per_seed]),
        "val_mean": _mean([s["val"] for s in per_seed]),
        "test_mean": _mean(tests),
        "test_std": _std(tests),
        "seeds": [s["seed"] for s in per_seed],
        "per_seed": per_seed,
        "order": order,
        "repair": repair,
    }


def scratch_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``k`` of the shallow nets trained from scratch (no order, no repair)."""
    by_k: dict[int, list[dict]] = {}
    for r in results:
        by_k.setdefault(r["k"], []).append(
            {"seed": r["seed"], "blocks": r["removed"], "params": r["params"],
             "macs_fraction": round(r["macs"] / r["full_macs"], 4),
             "val": r["val_accuracy"], "test": r["test_accuracy"]}
        )  # fmt: skip
    return [row(k, seeds, None, None) for k, seeds in sorted(by_k.items())]


def check_mergeable(results: list[dict[str, Any]]) -> None:
    """Refuse results from different environments, or one job trained two ways."""
    first = results[0]
    for r in results[1:]:
        for key in ENV_KEYS:
            if r["environment"][key] != first["environment"][key]:
                raise SystemExit(
                    f"refusing to merge: {r['job']} s{r['seed']} ran with {key}="
                    f"{r['environment'][key]!r}, {first['job']} s{first['seed']} with "
                    f"{first['environment'][key]!r}; rerun it in one environment (another "
                    "--out for the other)"
                )
    configs: dict[str, dict] = {}
    for r in results:
        cfg = {k: v for k, v in r["run_config"].items() if k not in ("seed", "out")}
        if configs.setdefault(r["job"], cfg) != cfg:
            diff = sorted(k for k in cfg if cfg[k] != configs[r["job"]].get(k))
            raise SystemExit(f"refusing to merge: {r['job']} s{r['seed']} was trained with "
                             f"other options than its other seeds ({', '.join(diff)})")  # fmt: skip


def headline(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``headline.json`` from the per-job results present."""
    check_mergeable(results)
    by_job: dict[str, list[dict]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        by_job.setdefault(r["job"], []).append(r)
    rows: dict[str, list[dict]] = {}
    if "vanilla" in by_job:
        plain = [{**r, "sweeps": {k: v for k, v in r["sweeps"].items() if k.endswith("/none")}}
                 for r in by_job["vanilla"]]  # fmt: skip
        rows["vanilla"] = swept_rows(plain, [0])
        rows["vanilla_best_repair"] = swept_rows(by_job["vanilla"])
    for job in ("lacoot_default", "paper"):
        if job in by_job:
            rows[job] = swept_rows(by_job[job])
    for job in SCRATCH:
        if job in by_job:
            rows[job] = scratch_rows(by_job[job])
    # the reported k: the number of blocks lacoot_default's budget aimed at; until it has a
    # result, the fewest blocks whose plain removal reaches the default MACs budget
    base = by_job.get("lacoot_default") or by_job.get("vanilla") or by_job.get("paper")
    k = Counter(reported_k(r) for r in base).most_common(1)[0][0] if base else None
    env = dict(results[0]["environment"])
    env["commit"] = sorted({r["environment"]["commit"] for r in results})
    env["machine"] = sorted({r["environment"]["machine"] for r in results})
    env["machines_per_job"] = {f"{r['job']}-s{r['seed']}": r["environment"]["machine"]
                               for r in results}  # fmt: skip
    env.pop("date", None)
    first_cfg = results[0]["run_config"]
    return {
        "command": "python benchmarks/headline.py",
        "environment": env,
        "seeds": {job: [r["seed"] for r in rs] for job, rs in by_job.items()},
        "schedule": {key: first_cfg[key] for key in SCHEDULE_KEYS if key in first_cfg}
        | {
            "model": first_cfg["model"],
            "model_args": first_cfg["model_args"],
            "dataset": first_cfg["dataset"],
        },  # fmt: skip
        "reported_k": k,
        "rows": rows,
        "targets": targets(rows, k),
    }


def _max(v: float | list[float]) -> float:
    return max(v) if isinstance(v, list) else v


def _at(rows: list[dict] | None, k: int | None) -> dict | None:
    return next((r for r in rows or [] if r["k"] == k), None)


def paired(a: dict, b: dict) -> tuple[float, float, list[int]] | None:
    """Mean test accuracy of rows ``a`` and ``b`` over the seeds both hold (a comparison of
    means over different seeds would mix seed noise into the gap); ``None`` when none."""
    ta = {s["seed"]: s["test"] for s in a["per_seed"]}
    tb = {s["seed"]: s["test"] for s in b["per_seed"]}
    seeds = sorted(set(ta) & set(tb))
    if not seeds:
        return None
    return _mean([ta[s] for s in seeds]), _mean([tb[s] for s in seeds]), seeds


def targets(rows: dict[str, list[dict]], k: int | None) -> dict[str, Any]:
    """The project's three targets on ``lacoot_default``, each on the seeds both sides hold,
    with the figures behind them (a target whose figures are missing is ``None``)."""
    lac, van = _at(rows.get("lacoot_default"), k), _at(rows.get("vanilla"), 0)
    scr = _at(rows.get("scratch_same_arch"), k)
    out: dict[str, Any] = {"k": k}
    pair = paired(lac, van) if lac and van else None
    if lac and pair:
        gap = round(pair[0] - pair[1], 4)
        macs = _max(lac["macs_fraction"])
        out["within_1pt_of_vanilla"] = gap >= -NEAR_VANILLA and macs <= DEFAULT_TARGET_MACS
        out["vs_vanilla"] = {"lacoot": pair[0], "vanilla": pair[1], "gap": gap,
                             "macs_fraction": lac["macs_fraction"], "seeds": pair[2]}  # fmt: skip
    else:
        out["within_1pt_of_vanilla"] = None
    pair = paired(lac, scr) if lac and scr else None
    if pair:
        gap = round(pair[0] - pair[1], 4)
        out["near_scratch_same_arch"] = gap >= -NEAR_SCRATCH
        out["vs_scratch_same_arch"] = {"lacoot": pair[0], "scratch": pair[1], "gap": gap,
                                       "seeds": pair[2]}  # fmt: skip
    else:
        out["near_scratch_same_arch"] = None
    best = rows.get("vanilla_best_repair")
    gaps: dict[str, float] = {}
    seeds: list[int] = []
    for r in rows.get("lacoot_default", []) if best else []:
        v = _at(best, r["k"])
        pair = paired(r, v) if r["k"] > 0 and v is not None else None
        if pair:
            gaps[str(r["k"])], seeds = round(pair[0] - pair[1], 4), pair[2]
    out["above_vanilla_every_k"] = all(g > 0 for g in gaps.values()) if gaps else None
    if gaps:
        out["vs_vanilla_best_repair"] = {"gap_by_k": gaps, "seeds": seeds}
    return out


LABELS = {
    "vanilla": "vanilla (full model)",
    "vanilla_best_repair": "vanilla, best order + repair",
    "lacoot_default": "LaCoOT, `lacoot run` defaults",
    "paper": "LaCoOT, paper's configuration",
    "scratch_same_arch": "same architecture, from scratch",
    "scratch_deepest_first": "deepest-first shallow net, from scratch",
}


def _cell(row: dict) -> str:
    std = f" ± {row['test_std']:.2f}" if row["test_std"] is not None else ""
    return f"{row['test_mean']:.2f}{std}"


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if not isinstance(v, list) else "/".join(format(x, fmt) for x in v)


def markdown(h: dict[str, Any]) -> str:
    env, k = h["environment"], h["reported_k"]
    lines = [
        "# Headline: resnet20-style collapse against like-for-like baselines",
        "",
        f"Generated by `{h['command']}` from `jobs/*.json`. Environment: "
        f"{' and '.join(env['machine'])} (per job in `headline.json`), "
        f"{env['device']}, torch {env['torch']}, {env['precision']}; commits "
        f"{', '.join(c[:10] for c in env['commit'])}. Schedule: "
        + ", ".join(f"{key} {v}" for key, v in h["schedule"].items())
        + ".",
        "",
        "Seeds present: " + "; ".join(f"{j} {s}" for j, s in h["seeds"].items()) + ".",
        "Test accuracy (%), mean ± std over those seeds; order and repair chosen on validation.",
        "",
        f"## At k = {k} ("
        + (
            "the blocks `lacoot run`'s budget aims at)"
            if "lacoot_default" in h["seeds"]
            else "the fewest blocks that bring the MACs to the default budget)"
        ),  # fmt: skip
        "",
        "| model | blocks removed | params | MACs | test | order / repair |",
        "|---|---|---|---|---|---|",
    ]
    for job in LABELS:
        r = _at(h["rows"].get(job), 0 if job == "vanilla" else k)
        if r is not None:
            blocks = ", ".join(r["blocks"]) if r["blocks"] and isinstance(r["blocks"][0], str) \
                else ("per seed" if r["blocks"] else "none")  # fmt: skip
            how = "trained" if not r["order"] else "full model" if r["k"] == 0 else (
                f"{r['order']} / {r['repair']}")  # fmt: skip
            lines.append(f"| {LABELS[job]} | {blocks} | {_num(r['params'], ',')} | "
                         f"{_num(r['macs_fraction'], '.1%')} | {_cell(r)} | {how} |")  # fmt: skip
    ks = [r["k"] for r in h["rows"].get("lacoot_default", h["rows"].get("vanilla_best_repair", []))]
    lines += ["", "## Every k", "", "| model | " + " | ".join(f"k={k}" for k in ks) + " |"]
    ncols = lines[-1].count("|") - 1
    lines.append("|---" * ncols + "|")
    for job in ("lacoot_default", "paper", "vanilla_best_repair"):
        if job in h["rows"]:
            cells = [f"{_cell(r)} ({r['order']}/{r['repair']})" for r in h["rows"][job]]
            lines.append(f"| {LABELS[job]} | " + " | ".join(cells) + " |")
    t = h["targets"]
    lines += ["", "## Targets", ""]
    for name in ("within_1pt_of_vanilla", "near_scratch_same_arch", "above_vanilla_every_k"):
        lines.append(f"- `{name}`: {t[name]}")
    for name in ("vs_vanilla", "vs_scratch_same_arch", "vs_vanilla_best_repair"):
        if name in t:
            lines.append(f"- {name}: {json.dumps(t[name])}")
    return "\n".join(lines) + "\n"


def write_headline(out: Path) -> dict[str, Any] | None:
    files = sorted((out / "jobs").glob("*.json"))
    if not files:
        return None
    h = headline([json.loads(f.read_text()) for f in files])
    atomic_write_text(out / "headline.json", json.dumps(h, indent=1) + "\n")
    atomic_write_text(out / "headline.md", markdown(h))
    return h


# ----------------------------------------------------------------------------- the driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_args(p)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--orders", nargs="+", default=None, help="default: every criterion")
    p.add_argument("--only", nargs="+", default=None, help="run only these jobs")
    p.add_argument("--work", default="runs/headline", help="checkpoints and logs")
    p.add_argument("--out", default="docs/results/headline", help="results (committed)")
    p.add_argument("--report-only", action="store_true", help="regenerate headline.json/md")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (1 epoch, a narrow resnet20, order msw, 64 "
                   "calibration images, seed 0): what the test runs")  # fmt: skip
    args = p.parse_args(argv)
    if args.smoke:
        args.epochs, args.calib, args.seeds = 1, 64, [0]
        args.orders = args.orders or ["msw"]
        args.model_args = args.model_args or {"widths": [4, 8, 8]}
    args.in_channels, args.size = 1, 28  # the image datasets of the headline: 1 x 28 x 28
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    jobs_dir = out / "jobs"
    if not args.report_only:
        jobs_dir.mkdir(parents=True, exist_ok=True)
        for job, seed in plan(args.seeds):
            done = jobs_dir / f"{job}-s{seed}.json"
            if done.is_file() or (args.only and job not in args.only):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {job} s{seed}: start", flush=True)
            res = run_job(args, job, seed, jobs_dir)
            if res is None:
                continue
            earlier = sorted(jobs_dir.glob("*.json"))
            if earlier:  # checked before writing: a folder never holds two environments
                check_mergeable([json.loads(earlier[0].read_text()), res])
            atomic_write_text(done, json.dumps(res, indent=1) + "\n")
            print(f"[{time.strftime('%H:%M:%S')}] {job} s{seed}: done in "
                  f"{res['seconds']:.0f} s", flush=True)  # fmt: skip
            write_headline(out)
    h = write_headline(out)
    if h is not None:
        print(markdown(h))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
