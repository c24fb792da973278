"""Choose the default lambda of `lacoot run`: the main job at several lambdas, side by side.

Each lambda runs the whole pipeline (train, score with `msw`, sweep, collapse) with the main job's
other defaults; the table reports, per lambda, the full model's test accuracy and the test accuracy
after removing k blocks in `msw` order, with the MACs left.

    python benchmarks/lambda_choice.py --lams 0 0.1 1.0 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from lacoot._io import atomic_write_text
from lacoot.pipeline import RunConfig, environment, run_all
from lacoot.report import markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.1, 1.0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/lambda_choice", help="folder of the runs")
    parser.add_argument("--out", default="docs/benchmarks/lambda_choice")
    args = parser.parse_args()

    results = []
    for lam in args.lams:
        cfg = RunConfig(
            model=args.model,
            dataset=args.dataset,
            epochs=args.epochs,
            lam=lam,
            seed=args.seed,
            out=str(Path(args.work) / f"lam_{lam:g}"),
            compare=[],
            blocks=None,
            latency_batch_sizes=[1],
            progress=False,
        )
        start = time.perf_counter()
        report = run_all(cfg, overwrite=True)
        points = report["sweeps"]["msw"]["points"]
        results.append(
            {
                "lam": lam,
                "seconds": time.perf_counter() - start,
                "train_seconds": sum(r["seconds"] for r in report["train_history"]),
                "full_macs": report["full_macs"],
                "points": [
                    {
                        "k": p["k"],
                        "removed": p["removed"],
                        "val_accuracy": p["val_accuracy"],
                        "test_accuracy": p["test_accuracy"],
                        "macs": p["macs"],
                    }
                    for p in points
                ],
                "chosen_k": report["chosen"]["k"],
            }
        )
        print(f"lambda {lam:g}: full {points[0]['test_accuracy']:.2f}%", flush=True)

    out = Path(args.out)
    record = {
        "command": " ".join(["python", *sys.argv]),
        "seed": args.seed,
        "epochs": args.epochs,
        "model": args.model,
        "dataset": args.dataset,
        "environment": environment(torch.device("cpu")),
        "results": results,
    }
    atomic_write_text(out.with_suffix(".json"), json.dumps(record, indent=2))
    ks = range(len(results[0]["points"]))
    rows = []
    for r in results:
        row = [f"{r['lam']:g}", f"{r['train_seconds'] / 60:.1f}"]
        row += [f"{r['points'][k]['test_accuracy']:.2f}" for k in ks]
        row.append(r["chosen_k"])
        rows.append(row)
    macs = [f"k={k}" for k in ks]
    md = [
        f"# Default lambda of `lacoot run` ({args.model}, {args.dataset}, {args.epochs} epochs)\n",
        f"Command: `{record['command']}`  ",
        f"Date: {record['environment']['date']}; seed {args.seed}; "
        f"{record['environment']['platform']}, {record['environment']['cpu_threads']} threads.\n",
        "Test accuracy (%) after removing k blocks in `msw` order (validation-chosen k with the "
        "1-point budget in the last column).\n",
        markdown_table(["lambda", "train (min)", *macs, "chosen k"], rows),
    ]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md))


if __name__ == "__main__":
    main()
