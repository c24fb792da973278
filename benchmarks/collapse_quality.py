"""Does a collapsed model keep its accuracy? Penalty variants, orders and repairs, side by side.

Trains, in parallel worker processes (one GPU is shared well by several small trainings):

* screening (``--screen-epochs``, 4 by default): the vanilla model and the penalty variants
  ``raw``/``rel`` (``MSWRegularizer(relative=...)``) x penalised blocks ``all``/``tgt4`` (a budget:
  after one warm-up epoch only the 4 blocks ranked cheapest by ``msw_rel`` are penalised) x three
  lambdas each;
* the main comparison (``--main-epochs``): the vanilla model, the two screening configurations
  whose best collapse keeps the highest validation accuracy at 4 removed blocks (chosen when
  screening ends), the paper-faithful configuration (50 random directions, lambda 5, raw MSW, the
  last block of each stage), penalties aimed at 4 blocks (``spread4-*``: the 4 blocks the
  from-scratch net of ``k = 4`` lacks, by name; ``budget4-*``: a 4-block budget chosen after a
  warm-up epoch), ``lacoot run``'s own MACs budget (``macs0.55-*``, for any depth), and the
  shallow networks at ``k`` = 2, 4, 6 (``--scratch-k``) trained from scratch with the same
  schedule (architecture: blocks removed stage by stage from the deepest, see
  :func:`spread_order`: another net than the LaCoOT models collapse to, with fewer parameters;
  ``benchmarks/headline.py`` trains the same architecture from scratch).

Select jobs with ``--only``; ``--no-eval`` trains only and ``--pack DIR`` writes the trained
weights (two files) so that ``--unpack`` evaluates them on another machine.

Every trained model (except those from scratch) is then collapsed in ``msw``, ``msw_rel``,
``cosine`` and ``greedy`` order at every depth by the pipeline's own sweep (as ``lacoot collapse``:
``greedy`` scored with the sweep's repair), unrepaired and with each repair (``bn``,
``linear``), on the validation split (calibration and choice) and the test split (reported).

Each finished job writes ``WORK/NAME/result.json`` at once and the summary ``OUT.json`` is
rewritten after every job, so an interrupted run keeps what it finished; a rerun skips finished
jobs. ``benchmarks/collapse_quality_report.py`` turns ``OUT.json`` into tables, a plot and
``docs/benchmarks/headline.json``.

    python benchmarks/collapse_quality.py --jobs 8 --device cuda --work runs/cq \\
        --out docs/benchmarks/collapse_quality
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _collapse_jobs import (  # noqa: E402
    add_job_args,
    epoch_seconds,
    job_config,
    spread_order,
    sweep_every_way,
    train_scratch,
)

from lacoot._io import atomic_write_text  # noqa: E402
from lacoot.blocks import Block  # noqa: E402
from lacoot.config import TrainConfig  # noqa: E402
from lacoot.ot import max_sliced_wasserstein  # noqa: E402
from lacoot.pipeline import (  # noqa: E402
    RunConfig,
    build_model,
    environment,
    model_from_checkpoint,
    prepare_data,
    run_training,
)
from lacoot.train import load_checkpoint, resolve_device  # noqa: E402

ORDERS = ("msw", "msw_rel", "cosine", "greedy")  # greedy (the costly one) in the main phase only
REPAIRS = ("bn", "linear")  # each sweep also records the unrepaired figures
SCREEN_LAMS = {
    ("raw", "all"): (0.03, 0.1, 0.3),
    ("rel", "all"): (0.1, 0.3, 1.0),
    ("raw", "tgt4"): (0.1, 0.3, 1.0),
    ("rel", "tgt4"): (0.3, 1.0, 3.0),
}
SCRATCH_K = (2, 4, 6)
SELECT_K = 4  # screening configurations are ranked by their best validation accuracy at this k
ESCALATE = 5e-4  # influence below which a target counts as removed (``escalate`` jobs)
FADE = 0.4  # the share of the training at its end over which ``fade`` jobs fade their targets


@dataclass
class Job:
    name: str
    phase: str  # "screen" or "main"
    epochs: int
    overrides: dict[str, Any] = field(default_factory=dict)
    scratch: list[str] | None = None  # blocks removed before training from scratch
    config: str = ""  # the configuration's name without its phase


# ---------------------------------------------------------------------------------- the plan
def screen_overrides(scale: str, which: str, lam: float) -> dict[str, Any]:
    """``all``: every block penalised (no budget: ``target_macs`` 1 overrides the default one);
    ``tgt4``: a 4-block budget chosen after one warm-up epoch."""
    extra: dict[str, Any] = {"lam": lam, "relative": scale == "rel"}
    if which == "tgt4":
        return extra | {"target_blocks": 4, "target_warmup": 1, "target_criterion": "msw_rel"}
    return extra | {"target_macs": 1.0}


def screening_jobs(epochs: int) -> list[Job]:
    jobs = [Job("screen-vanilla", "screen", epochs, {"lam": 0.0}, config="vanilla")]
    for (scale, which), lams in SCREEN_LAMS.items():
        for lam in lams:
            config = f"{scale}-{which}-{lam:g}"
            jobs.append(
                Job(f"screen-{config}", "screen", epochs, screen_overrides(scale, which, lam),
                    config=config)
            )  # fmt: skip
    faded = screen_overrides("raw", "tgt4", 1.0) | {"fade": 0.6}  # lacoot run's default, faded
    jobs.append(Job("screen-raw-tgt4-1-fade0.6", "screen", epochs, faded,
                    config="raw-tgt4-1-fade0.6"))  # fmt: skip
    for every in (4, 8):  # the same with the penalty on every 4th (8th) step only
        config = f"raw-tgt4-1-fade0.6-lazy{every}"
        jobs.append(Job(f"screen-{config}", "screen", epochs, faded | {"penalty_every": every},
                        config=config))  # fmt: skip
    stopx = faded | {"stop_input_grad": True}  # each block's input a fixed target
    jobs.append(Job("screen-raw-tgt4-1-fade0.6-stopx", "screen", epochs, stopx,
                    config="raw-tgt4-1-fade0.6-stopx"))  # fmt: skip
    return jobs


def main_jobs(
    epochs: int, blocks: list[Block], scratch_k: tuple[int, ...] = SCRATCH_K
) -> list[Job]:
    """The main jobs that do not depend on the screening; the from-scratch nets at ``scratch_k``
    removed blocks."""
    order = spread_order(blocks)
    last_of_stage = order[: len({b.shape for b in blocks})]
    paper = {"lam": 5.0, "method": "random", "n_projections": 50, "penalize": last_of_stage}
    jobs = [
        Job("main-vanilla", "main", epochs, {"lam": 0.0}, config="vanilla"),
        Job("main-paper", "main", epochs, paper, config="paper"),
    ]
    spread4 = {"method": "random", "n_projections": 50, "penalize": order[:SELECT_K]}
    budget4 = {"method": "random", "n_projections": 50, "target_blocks": SELECT_K,
               "target_warmup": 1, "target_criterion": "msw_rel"}  # fmt: skip
    jobs += [
        Job("main-spread4-rnd5", "main", epochs, spread4 | {"lam": 5.0}, config="spread4-rnd5"),
        Job("main-spread4-rnd1", "main", epochs, spread4 | {"lam": 1.0}, config="spread4-rnd1"),
        Job(
            "main-spread4-rnd0.3", "main", epochs, spread4 | {"lam": 0.3}, config="spread4-rnd0.3"
        ),  # fmt: skip
        Job("main-budget4-rnd5", "main", epochs, budget4 | {"lam": 5.0}, config="budget4-rnd5"),
        Job("main-budget4-rnd2", "main", epochs, budget4 | {"lam": 2.0}, config="budget4-rnd2"),
        Job("main-budget4-rnd1", "main", epochs, budget4 | {"lam": 1.0}, config="budget4-rnd1"),
        Job(
            "main-budget4-rnd0.3", "main", epochs, budget4 | {"lam": 0.3}, config="budget4-rnd0.3"
        ),  # fmt: skip
    ]
    for lam in (2.0, 1.0):  # lambda rises over the first half of the training: blocks die later
        jobs.append(
            Job(f"main-budget4-rnd{lam:g}-ramp", "main", epochs, budget4 | {"lam": lam,
                "lam_warmup": epochs / 2}, config=f"budget4-rnd{lam:g}-ramp")
        )  # fmt: skip
    jobs.append(  # the ramp on a 6-block budget (k = 6 is where the targets fail to empty)
        Job("main-budget6-rnd3-ramp", "main", epochs, budget4 | {"target_blocks": 6, "lam": 3.0,
            "lam_warmup": epochs / 2}, config="budget6-rnd3-ramp")
    )  # fmt: skip
    for k, lam in ((6, 3.0), (4, 2.0), (4, 1.0)):  # targets as constraints (escalated weights)
        jobs.append(
            Job(f"main-budget{k}-rnd{lam:g}-esc", "main", epochs, budget4 | {"target_blocks": k,
                "lam": lam, "escalate": ESCALATE}, config=f"budget{k}-rnd{lam:g}-esc")
        )  # fmt: skip
    jobs.append(  # escalated, the budget never empties the two deepest stages
        Job("main-budget6-rnd3-esc-deep", "main", epochs, budget4 | {"target_blocks": 6,
            "lam": 3.0, "escalate": ESCALATE, "target_keep_deep": True},
            config="budget6-rnd3-esc-deep")
    )  # fmt: skip
    faded = ((6, 3.0, ESCALATE, True, FADE), (4, 1.0, ESCALATE, False, FADE),
             (6, 1.0, None, True, 0.6), (4, 1.0, None, False, 0.6),
             (6, 1.0, None, True, FADE))  # fmt: skip  # the last: lambda 1 at the short fade
    for k, lam, esc, deep, fade in faded:  # the targets faded out at the end of the training
        config = (f"budget{k}-rnd{lam:g}{'-esc' if esc else ''}{'-deep' if deep else ''}-fade"
                  f"{'' if fade == FADE else f'{fade:g}'}")  # fmt: skip
        extra = {"target_keep_deep": True} if deep else {}
        jobs.append(
            Job(f"main-{config}", "main", epochs, budget4 | {"target_blocks": k, "lam": lam,
                "escalate": esc, "fade": fade} | extra, config=config)
        )  # fmt: skip
    jobs.append(  # lacoot run's mechanism, each block's input a fixed target of the penalty
        Job("main-budget4-rnd1-fade0.6-stopx", "main", epochs, budget4 | {"target_blocks": 4,
            "lam": 1.0, "fade": 0.6, "stop_input_grad": True}, config="budget4-rnd1-fade0.6-stopx")
    )  # fmt: skip
    run = TrainConfig()  # lacoot run's own configuration: a MACs budget, whatever the depth
    config = f"macs{run.target_macs:g}-rnd{run.lam:g}-fade{run.fade:g}"
    jobs.append(Job(f"main-{config}", "main", epochs, {}, config=config))
    jobs.append(  # the pointwise cosine distance in place of MSW (not the paper's)
        Job("main-budget6-cos3", "main", epochs, budget4 | {"target_blocks": 6, "lam": 3.0,
            "distance": "cosine"}, config="budget6-cos3")
    )  # fmt: skip
    for k, lam in ((2, 1.0), (6, 3.0), (6, 6.0)):  # lambda / k = 0.5 (as budget4-rnd2) or 1
        jobs.append(
            Job(f"main-budget{k}-rnd{lam:g}", "main", epochs,
                budget4 | {"target_blocks": k, "lam": lam}, config=f"budget{k}-rnd{lam:g}")
        )  # fmt: skip
    for k in scratch_k:
        jobs.append(
            Job(f"main-scratch-k{k}", "main", epochs, {"lam": 0.0}, scratch=order[:k],
                config=f"scratch-k{k}")
        )  # fmt: skip
    return jobs


def best_screened(results: dict[str, dict[str, Any]], n: int = 2) -> list[str]:
    """The ``n`` LaCoOT screening configurations with the highest best validation accuracy at
    ``SELECT_K`` removed blocks (any order, any repair)."""
    ranked = []
    for name, res in results.items():
        if not name.startswith("screen-") or res.get("config") == "vanilla" or "sweeps" not in res:
            continue
        ranked.append((best_val_at(res, SELECT_K), res["config"]))
    ranked.sort(reverse=True)
    return [config for _, config in ranked[:n]]


def best_val_at(res: dict[str, Any], k: int) -> float:
    values = []
    for sw in res["sweeps"].values():
        pt = sw["points"][k]
        values += [pt["val_accuracy"], pt["unrepaired"]["val_accuracy"]]
    return max(values)


# ------------------------------------------------------------------------------ one job
def run_config(args: argparse.Namespace, job: Job) -> RunConfig:
    return job_config(
        args,
        args.seed,
        epochs=job.epochs,
        schedule="onecycle",
        out=str(Path(args.work) / job.name),
        amp=args.amp,
        **job.overrides,
    )


def estimator_ratio(model: torch.nn.Module, blocks: list[Block], loader: Any) -> dict[str, Any]:
    """Ascent MSW over the 50-random-direction estimate per block, on the first val batch: how
    lambda converts between the two estimators."""
    values: dict[str, dict[str, float]] = {}

    def on_block(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        X, Y = x.flatten(1).float(), y.flatten(1).float()
        asc = float(max_sliced_wasserstein(X, Y, method="ascent", seed=0))
        rnd = float(max_sliced_wasserstein(X, Y, method="random", n_projections=50, seed=0))
        values[name] = {"ascent": asc, "random50": rnd, "ratio": asc / max(rnd, 1e-30)}

    from lacoot.regularizer import block_io_hooks

    handles = block_io_hooks(model, [b.name for b in blocks], on_block)
    try:
        with torch.no_grad():
            model.eval()
            x, _ = next(iter(loader))
            model(x[:256])
    finally:
        for h in handles:
            h.remove()
    return values


def evaluate_collapses(
    ckpt: Path, device: torch.device, calib: int, seed: int, orders: tuple[str, ...] = ORDERS
) -> dict[str, Any]:
    """The checkpoint's model swept in ``orders`` with each repair of ``REPAIRS`` (every point
    also holds its unrepaired figures) by the pipeline's own sweep, and the estimators' ratio."""
    say = lambda m: print(f"  {ckpt.parent.name}: {m}", flush=True)  # noqa: E731
    res = sweep_every_way(ckpt, str(device), seed, orders, REPAIRS, calib, say=say)
    state = load_checkpoint(ckpt, map_location=device)
    model, blocks, spec = model_from_checkpoint(state, ckpt, device)
    data = prepare_data(spec, device, seed=seed)
    res["blocks"] = [b.to_dict() for b in blocks]
    res["estimators"] = estimator_ratio(model, blocks, data.val)
    return res


def run_job(args: argparse.Namespace, job: Job) -> dict[str, Any]:
    """Train (or reuse) and evaluate one job; returns its result, also written to disk."""
    torch.set_num_threads(args.threads)
    out = Path(args.work) / job.name
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    cfg = run_config(args, job)
    try:
        if job.scratch is not None:
            res = train_scratch(cfg, job.scratch)[1]
        else:
            ckpt = out / "checkpoint.pt"
            if not (ckpt.is_file() and len(load_checkpoint(ckpt)["history"]) == job.epochs):
                ckpt, _ = run_training(cfg, overwrite=True)
            if args.no_eval:
                return {"name": job.name, "trained_only": True,
                        "seconds": time.perf_counter() - t0}  # fmt: skip
            orders = ORDERS if job.phase == "main" else ORDERS[:-1]
            orders = tuple(o for o in orders if args.orders is None or o in args.orders)
            res = evaluate_collapses(
                ckpt, resolve_device(cfg.device), args.calib, args.seed, orders
            )
            res["train_seconds"] = epoch_seconds(res["history"])  # right for a reused checkpoint
    except Exception:
        if args.amp and job.overrides.get("amp") is not False:  # once more without autocast
            print(f"{job.name} failed:\n{traceback.format_exc()}retrying without amp", flush=True)
            return run_job(
                args,
                Job(
                    job.name,
                    job.phase,
                    job.epochs,
                    job.overrides | {"amp": False},
                    job.scratch,
                    job.config,
                ),
            )
        return {"name": job.name, "error": traceback.format_exc()}
    res |= {"name": job.name, "config": job.config, "phase": job.phase, "epochs": job.epochs,
            "overrides": job.overrides, "seconds": time.perf_counter() - t0}  # fmt: skip
    atomic_write_text(done, json.dumps(res, indent=1))
    return res


# ------------------------------------------------------------------------------- the driver
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_job_args(p, device="auto")  # --threads: per worker; default: the cores over --jobs
    p.add_argument("--screen-epochs", type=int, default=4)
    p.add_argument("--main-epochs", type=int, default=15)
    p.add_argument("--scratch-k", type=int, nargs="+", default=list(SCRATCH_K),
                   help="removed blocks of the shallow nets trained from scratch")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="run only these job names")
    p.add_argument("--deadline", type=float, default=None, help="seconds: start no job after")
    p.add_argument("--work", default="runs/collapse_quality")
    p.add_argument("--out", default="docs/benchmarks/collapse_quality", help="output stem")
    p.add_argument("--pack", default=None, help="folder for the packed weights at the end")
    p.add_argument("--orders", nargs="+", default=None, help=f"a subset of {ORDERS}")
    p.add_argument("--no-eval", action="store_true", help="train only (evaluate in a later run)")
    p.add_argument("--unpack", nargs="*", default=[], help="packed weights to start from")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    return args


def write_summary(args: argparse.Namespace, results: dict[str, Any], started: str) -> None:
    summary = {
        "command": " ".join(["python", *sys.argv]),
        "started": started,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seed": args.seed,
        "environment": environment(resolve_device(args.device)),
        "loadavg_start": getattr(args, "load", None),
        "settings": {k: v for k, v in vars(args).items() if k not in ("only",)},
        "results": results,
    }
    path = Path(args.out + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.load = os.getloadavg()[0]
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    spec = {"name": args.model, "num_classes": 10, "in_channels": 1, "kwargs": args.model_args}
    from lacoot.blocks import find_blocks

    probe = build_model(spec)
    blocks = find_blocks(probe, torch.zeros(2, 1, 28, 28))
    queue = main_jobs(args.main_epochs, blocks, tuple(args.scratch_k))
    queue += screening_jobs(args.screen_epochs)
    if args.only is not None:
        queue = [j for j in queue if j.name in args.only]
    for packed in args.unpack:  # trained elsewhere: evaluate here
        for name, state in torch.load(packed, weights_only=True).items():
            (Path(args.work) / name).mkdir(parents=True, exist_ok=True)
            torch.save(state, Path(args.work) / name / "checkpoint.pt")
    results: dict[str, Any] = {}
    waiting_for_screen = args.only is None
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        running: dict[Future, Job] = {}
        while queue or running or waiting_for_screen:
            late = args.deadline is not None and time.perf_counter() - t_start > args.deadline
            while queue and len(running) < args.jobs and not late:
                job = queue.pop(0)
                running[pool.submit(run_job, args, job)] = job
            if not running:
                if late or not waiting_for_screen:
                    break
            finished, _ = wait(list(running), timeout=30, return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                res = fut.result()
                results[job.name] = res
                status = "FAILED\n" + res["error"] if "error" in res else "done"
                print(f"[{time.perf_counter() - t_start:6.0f} s] {job.name}: {status}", flush=True)
                write_summary(args, results, started)
            screening_over = not any(j.phase == "screen" for j in [*queue, *running.values()])
            if waiting_for_screen and screening_over:
                waiting_for_screen = False
                for config in best_screened(results):
                    over = next(
                        r["overrides"] for r in results.values() if r.get("config") == config
                    )
                    queue.insert(0, Job(f"main-{config}", "main", args.main_epochs, over,
                                        config=config))  # fmt: skip
                print(f"best screened: {best_screened(results)}", flush=True)
    write_summary(args, results, started)
    if args.pack:
        pack_weights(Path(args.work), Path(args.pack))
    return 0


def pack_weights(work: Path, dest: Path) -> None:
    """The trained weights and what rebuilds their models, one file per phase (checkpoints
    without optimiser state), for evaluating again elsewhere."""
    keep = ("format", "model", "model_spec", "data_spec", "image_shape", "train_config", "history")
    dest.mkdir(parents=True, exist_ok=True)
    for phase in ("screen", "main"):
        slim = {}
        for ckpt in sorted(work.glob(f"{phase}-*/checkpoint.pt")):
            state = load_checkpoint(ckpt)
            if "model_spec" in state:
                slim[ckpt.parent.name] = {k: state[k] for k in keep} | {
                    "regularizer": {"targets": state["regularizer"].get("targets")}
                }
        torch.save(slim, dest / f"weights_{phase}.pt")


if __name__ == "__main__":
    raise SystemExit(main())
