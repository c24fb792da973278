"""Tables, plot and ``docs/benchmarks/headline.json`` from ``collapse_quality.py`` results.

Several result files may be given (models trained on a GPU and evaluated there, others evaluated
on this machine); their ``results`` are merged by job name and written to ``OUT.json``.
Validation accuracy alone chooses the best order at each ``k`` and the headline collapse; test
accuracy is reported.

    python benchmarks/collapse_quality_report.py runs/1/collapse_quality.json \\
        runs/cq/cpu_eval.json --out docs/benchmarks/collapse_quality \\
        --headline docs/benchmarks/headline.json --schedule "15 epochs one-cycle SGD"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lacoot._io import atomic_write_text
from lacoot.report import markdown_table, save_figure

MAX_DROP = 1.0  # points of validation accuracy below the vanilla full model


def load(paths: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    results: dict[str, Any] = {}
    sources = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        for name, res in data["results"].items():
            if "error" not in res and not res.get("trained_only"):
                results[name] = res | {"source": path}
        sources.append({k: data[k] for k in ("command", "started", "seed", "environment")})
    return results, sources


def curves(res: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``(order, repair) -> points`` with ``repair`` in none/bn/linear. The unrepaired points
    come from the ``bn`` sweep, whose MACs are those of the plain collapse (linear patches add
    MACs)."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for key, sw in sorted(res["sweeps"].items(), key=lambda kv: kv[0].endswith("/bn")):
        order, repair = key.split("/")
        out[(order, repair)] = sw["points"]
        out[(order, "none")] = [
            p | {"val_accuracy": p["unrepaired"]["val_accuracy"],
                 "test_accuracy": p["unrepaired"]["test_accuracy"]}
            for p in sw["points"]
        ]  # fmt: skip
    return out


def best_by_val(res: dict[str, Any], repair: str | None = None) -> list[dict[str, Any]]:
    """At each k, the point of the order (and repair, unless given) with the highest validation
    accuracy, labelled with its order and repair."""
    best: list[dict[str, Any]] = []
    for (order, rep), pts in curves(res).items():
        if repair is not None and rep != repair:
            continue
        for p in pts:
            label = p | {"order": order, "repair": rep}
            if len(best) <= p["k"]:
                best.append(label)
            elif p["val_accuracy"] > best[p["k"]]["val_accuracy"]:
                best[p["k"]] = label
    return best


def headline(results: dict[str, Any], schedule: str) -> dict[str, Any]:
    vanilla = results["main-vanilla"]
    full = curves(vanilla)[("msw", "none")][0]
    lacoot_models = [
        n for n, r in results.items()
        if n.startswith("main-") and "sweeps" in r and n != "main-vanilla"
    ]  # fmt: skip
    candidates = []
    for name in lacoot_models:
        for (order, repair), pts in curves(results[name]).items():
            for p in pts:
                if full["val_accuracy"] - p["val_accuracy"] <= MAX_DROP:
                    candidates.append((p["k"], p["val_accuracy"], name, order, repair, p))
    if candidates:
        k, _, name, order, repair, p = max(candidates, key=lambda c: (c[0], c[1]))
        best = {"config": results[name]["config"], "criterion": order, "repair": repair, "k": k,
                "macs_fraction": p["macs"] / full["macs"], "test": p["test_accuracy"]}  # fmt: skip
    else:
        best = None
    scratch = {
        str(len(r["removed"])): r["test_accuracy"]
        for n, r in results.items()
        if n.startswith("main-scratch")
    }
    baseline = {str(p["k"]): p["test_accuracy"] for p in best_by_val(vanilla, "bn")[1:]}
    return {
        "schedule": schedule,
        "vanilla_full_test": full["test_accuracy"],
        "best": best,
        "scratch": dict(sorted(scratch.items(), key=lambda kv: int(kv[0]))),
        "baseline_vanilla_bn": baseline,
    }


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def main_table(results: dict[str, Any]) -> str:
    vanilla = results["main-vanilla"]
    full_macs = curves(vanilla)[("msw", "none")][0]["macs"]
    columns: list[tuple[str, list[dict[str, Any]]]] = [
        ("vanilla, best order + BN re-estimation", best_by_val(vanilla, "bn")),
        ("vanilla, best order + linear repair", best_by_val(vanilla, "linear")),
    ]
    for name, res in results.items():
        if name.startswith("main-") and "sweeps" in res and name != "main-vanilla":
            columns.append((f"{res['config']}, unrepaired", best_by_val(res, "none")))
            columns.append((f"{res['config']}, best repair", best_by_val(res)))
    scratch = {len(r["removed"]): r for n, r in results.items() if n.startswith("main-scratch")}
    rows = []
    n_points = len(columns[0][1])
    for k in range(n_points):
        p0 = columns[0][1][k]
        row = [k, f"{p0['macs'] / full_macs:.1%}"]
        for _, pts in columns:
            p = pts[k]
            row.append(f"{fmt(p['test_accuracy'])} ({p['order']}/{p['repair']})" if k else
                       fmt(p["test_accuracy"]))  # fmt: skip
        row.append(fmt(scratch[k]["test_accuracy"]) if k in scratch else "-")
        rows.append(row)
    headers = ["k", "MACs", *[c for c, _ in columns], "same net from scratch"]
    return markdown_table(headers, rows)


def model_table(res: dict[str, Any]) -> str:
    rows = []
    for (order, repair), pts in sorted(curves(res).items()):
        rows.append([f"{order} / {repair}"] + [
            f"{fmt(p['test_accuracy'])} ({fmt(p['val_accuracy'])})" for p in pts
        ])  # fmt: skip
    k = len(next(iter(curves(res).values())))
    return markdown_table(["order / repair", *[f"k={i}" for i in range(k)]], rows)


def plot(results: dict[str, Any], path: Path, best_config: str | None) -> None:
    """Accuracy against MACs: vanilla with BN re-estimation and with linear repair, every LaCoOT
    model with its best repair, the headline configuration unrepaired too, and from scratch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vanilla = results["main-vanilla"]
    full_macs = curves(vanilla)[("msw", "none")][0]["macs"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [("vanilla + best order + BN re-est.", best_by_val(vanilla, "bn"), "C0", "--")]
    series.append(("vanilla + best order + linear", best_by_val(vanilla, "linear"), "C0", "-"))
    models = [r for n, r in results.items()
              if n.startswith("main-") and "sweeps" in r and n != "main-vanilla"]  # fmt: skip
    for i, res in enumerate(models):
        color = f"C{i + 1}"
        series.append((f"LaCoOT {res['config']}, best repair", best_by_val(res), color, "-"))
        if res["config"] == best_config:
            series.append((f"LaCoOT {res['config']}, unrepaired", best_by_val(res, "none"),
                           color, ":"))  # fmt: skip
    for label, pts, color, style in series:
        ax.plot([p["macs"] / full_macs for p in pts], [p["test_accuracy"] for p in pts],
                style, color=color, marker="o", ms=3, label=label)  # fmt: skip
    scratch = sorted(
        (r["macs"] / full_macs, r["test_accuracy"])
        for n, r in results.items()
        if n.startswith("main-scratch")
    )
    ax.plot(*zip(*scratch, strict=True), "s", color="k", label="same net from scratch")
    ax.set_xlabel("MACs (fraction of the full model)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(50, 96)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", default="docs/benchmarks/collapse_quality")
    p.add_argument("--headline", default="docs/benchmarks/headline.json")
    p.add_argument("--schedule", required=True, help="the main comparison's schedule, in words")
    args = p.parse_args(argv)
    results, sources = load(args.inputs)
    head = headline(results, args.schedule)
    atomic_write_text(args.headline, json.dumps(head, indent=2) + "\n")
    parts = [
        "# Collapse quality: LaCoOT variants, orders and repairs against the alternatives\n",
        f"Schedule of the main comparison: {args.schedule}. Test accuracy (%); in brackets the "
        "order and repair chosen at that k on validation accuracy.\n",
        main_table(results),
        "## Headline (`headline.json`)\n",
        "```json\n" + json.dumps(head, indent=2) + "\n```\n",
        "## Every model: test accuracy (validation in brackets) by order and repair\n",
    ]
    for name, res in sorted(results.items()):
        if "sweeps" in res:
            hist = res["history"][-1]
            parts.append(f"### {name} ({res['epochs']} epochs; overrides {res['overrides']}; "
                         f"final val {hist['val_accuracy']:.2f}%)\n")  # fmt: skip
            if res.get("targets"):
                parts.append(f"Penalised blocks chosen by the budget: {res['targets']}\n")
            parts.append(model_table(res))
    parts.append("## Shallow nets trained from scratch (same schedule, no penalty)\n")
    rows = [[len(r["removed"]), ", ".join(r["removed"]), fmt(r["val_accuracy"]),
             fmt(r["test_accuracy"]), f"{r['macs'] / 1e6:.2f}"]
            for n, r in sorted(results.items()) if n.startswith("main-scratch")]  # fmt: skip
    parts.append(markdown_table(["k", "blocks removed", "val %", "test %", "MACs (M)"], rows))
    parts.append("## Sources\n")
    parts.append("```json\n" + json.dumps(sources, indent=1) + "\n```\n")
    atomic_write_text(args.out + ".md", "\n".join(parts))
    merged = {"sources": sources, "schedule": args.schedule, "results": results}
    atomic_write_text(args.out + ".json", json.dumps(merged, indent=1))
    plot(results, Path(args.out + ".png"), (head["best"] or {}).get("config"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
