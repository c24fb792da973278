"""Tables, targets, plot and ``docs/benchmarks/headline.json`` from ``collapse_quality.py`` results.

Several result files may be given (models trained on a GPU and evaluated there, others evaluated
on this machine, other seeds). Each result is keyed by its file's top-level ``seed`` and its job
name (a later file's job replaces an earlier one of the same name and seed). The tables, the
targets, the headline and the plot use the results of ``--seed`` only; configurations trained at
several seeds are compared in the section "Other seeds". ``OUT.json`` holds every result
(``results``: those of ``--seed``; ``other_seed_results``: seed -> results) and the targets'
verdicts. Validation accuracy alone chooses the order, the repair, the model at each ``k`` and
the headline collapse; test accuracy is reported.

    python benchmarks/collapse_quality_report.py runs/1/collapse_quality.json \\
        runs/cq/cpu_eval.json runs/cq_s1/cpu_budget2_seed1.json [--seed 0] \\
        --out docs/benchmarks/collapse_quality --headline docs/benchmarks/headline.json \\
        --schedule "15 epochs one-cycle SGD"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lacoot._io import atomic_write_text
from lacoot.report import markdown_table, save_figure

MAX_DROP = 1.0  # points below the vanilla full model (validation: headline; test: target 1)
MACS_TARGET = 0.55  # target 1: at most this fraction of the full model's MACs
SCRATCH_GAP = 1.0  # target 3: test points below the same net trained from scratch
SEED_KS = (2, 4, 6)  # the depths compared across seeds
VANILLA = "main-vanilla"
SELECT_K = 4  # the screening ranks its configurations by validation accuracy at this k

Results = dict[str, dict[str, Any]]  # job name -> result
Point = dict[str, Any]


def display_path(path: str) -> str:
    """``path`` relative to the working directory, else to the project holding it (the nearest
    folder above it with a ``pyproject.toml``), else its file name: no machine path is kept."""
    file = Path(path).resolve()
    roots = [Path.cwd().resolve()]
    roots += [a for a in file.parents if (a / "pyproject.toml").exists()][:1]
    for root in roots:
        if file.is_relative_to(root):
            return file.relative_to(root).as_posix()
    return file.name


def load(paths: list[str]) -> tuple[dict[int, Results], list[dict[str, Any]]]:
    """``seed -> job name -> result`` (failed and train-only jobs left out) and the provenance of
    every file. A report's own merged JSON may be given: its results and sources are read back,
    so a new result is added to the committed ones without the files they came from."""
    by_seed: dict[int, Results] = {}
    sources: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        shown = display_path(path)
        runs = {int(data["seed"]): data["results"]}
        if "sources" in data:  # an earlier report's merged JSON: its results keep their source
            sources += [s for s in data["sources"] if s not in sources]
            runs |= {int(s): r for s, r in data.get("other_seed_results", {}).items()}
        else:
            keys = ("command", "started", "seed", "environment")
            sources.append({"file": shown} | {k: data[k] for k in keys})
        for seed, got in runs.items():
            results = by_seed.setdefault(seed, {})
            for name, res in got.items():
                if "error" not in res and not res.get("trained_only"):
                    results[name] = {"source": shown} | res
    return by_seed, sources


def curves(res: dict[str, Any]) -> dict[tuple[str, str], list[Point]]:
    """``(order, repair) -> points`` with ``repair`` in none/bn/linear. The unrepaired points
    come from the ``bn`` sweep, whose MACs are those of the plain collapse (linear patches add
    MACs)."""
    out: dict[tuple[str, str], list[Point]] = {}
    for key, sw in sorted(res["sweeps"].items(), key=lambda kv: kv[0].endswith("/bn")):
        order, repair = key.split("/")
        out[(order, repair)] = sw["points"]
        out[(order, "none")] = [
            p | {"val_accuracy": p["unrepaired"]["val_accuracy"],
                 "test_accuracy": p["unrepaired"]["test_accuracy"]}
            for p in sw["points"]
        ]  # fmt: skip
    return out


def best_by_val(res: dict[str, Any], repair: str | None = None) -> list[Point]:
    """At each k, the point of the order (and repair, unless given) with the highest validation
    accuracy, labelled with its order and repair."""
    best: list[Point] = []
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


def full_point(res: dict[str, Any]) -> Point:
    """The full model (k = 0, unrepaired), with the MACs of the plain network."""
    return best_by_val(res, "none")[0]


def lacoot_models(results: Results) -> list[str]:
    """Job names of the LaCoOT models of the main comparison, sorted."""
    return sorted(
        n for n, r in results.items() if n.startswith("main-") and "sweeps" in r and n != VANILLA
    )


def scratch_nets(results: Results) -> dict[int, dict[str, Any]]:
    """``k -> result`` of the shallow nets trained from scratch."""
    nets = {len(r["removed"]): r for n, r in results.items() if n.startswith("main-scratch")}
    return dict(sorted(nets.items()))


def chosen_at(results: Results, names: list[str], k: int) -> Point | None:
    """At ``k``, the point with the highest validation accuracy among the models ``names``, each
    at its validation-best order and repair, labelled with its configuration; None if none."""
    best = None
    for name in names:
        pts = best_by_val(results[name])
        if k < len(pts) and (best is None or pts[k]["val_accuracy"] > best["val_accuracy"]):
            best = pts[k] | {"config": results[name]["config"]}
    return best


def deepest_within(results: Results, max_macs: float | None = None) -> Point | None:
    """The headline rule: among the collapses of every LaCoOT model (any order and repair) within
    ``MAX_DROP`` validation points of the vanilla full model (and, given ``max_macs``, at most
    that fraction of its MACs), the deepest: the most blocks removed, then the fewest MACs (a
    linear patch is a layer put back: at equal ``k`` an unpatched collapse within the band is
    the shallower one), then the highest validation accuracy; labelled with its configuration,
    order and repair. None if there is none."""
    full = full_point(results[VANILLA])

    def rank(p: Point) -> tuple[int, float, float]:
        return p["k"], -p["macs"], p["val_accuracy"]

    best = None
    for name in lacoot_models(results):
        for (order, repair), pts in curves(results[name]).items():
            for p in pts:
                ok = full["val_accuracy"] - p["val_accuracy"] <= MAX_DROP
                ok = ok and (max_macs is None or p["macs"] <= max_macs * full["macs"])
                if ok and (best is None or rank(p) > rank(best)):
                    best = p | {"config": results[name]["config"], "order": order,
                                "repair": repair}  # fmt: skip
    return best


def headline(results: Results, schedule: str) -> dict[str, Any]:
    """``headline.json``: the collapse :func:`deepest_within` chooses (any MACs), the
    from-scratch nets and the vanilla model with BN re-estimation."""
    vanilla = results[VANILLA]
    full = full_point(vanilla)
    p = deepest_within(results)
    best = p and {"config": p["config"], "criterion": p["order"], "repair": p["repair"],
                  "k": p["k"], "macs_fraction": p["macs"] / full["macs"],
                  "test": p["test_accuracy"]}  # fmt: skip
    scratch = {str(k): r["test_accuracy"] for k, r in scratch_nets(results).items()}
    baseline = {str(p["k"]): p["test_accuracy"] for p in best_by_val(vanilla, "bn")[1:]}
    return {
        "schedule": schedule,
        "vanilla_full_test": full["test_accuracy"],
        "best": best,
        "scratch": scratch,
        "baseline_vanilla_bn": baseline,
    }


def verdict(met: bool) -> str:
    """``met`` or ``not met``."""
    return "met" if met else "not met"


def summary(p: Point | None, full_macs: float) -> dict[str, Any] | None:
    """The configuration, order, repair, MACs fraction and test accuracy of a labelled point."""
    if p is None:
        return None
    return {"config": p["config"], "order": p["order"], "repair": p["repair"], "k": p["k"],
            "macs_fraction": p["macs"] / full_macs, "test": p["test_accuracy"]}  # fmt: skip


def target_1(results: Results, head: dict[str, Any]) -> dict[str, Any]:
    """At most ``MACS_TARGET`` of the MACs within ``MAX_DROP`` test points of the vanilla full
    model: the collapse the headline rule chooses among those within the MACs budget; the
    headline collapse itself and the best test at k = 4 of any LaCoOT model (order and repair
    chosen on validation per model) beside it, for information."""
    vanilla_test = head["vanilla_full_test"]
    full_macs = full_point(results[VANILLA])["macs"]
    chosen = summary(deepest_within(results, MACS_TARGET), full_macs)
    met = chosen is not None and chosen["test"] >= vanilla_test - MAX_DROP
    at_4 = [chosen_at(results, [n], 4) for n in lacoot_models(results)]
    top = max((p for p in at_4 if p), key=lambda p: p["test_accuracy"], default=None)
    info = summary(top, full_macs)
    for point in (chosen, info):
        if point:
            point["drop"] = vanilla_test - point["test"]
    return {"target": f"at most {MACS_TARGET:.0%} of the MACs within {MAX_DROP} test point of "
                      "the vanilla full model",
            "verdict": verdict(met), "vanilla_full_test": vanilla_test, "chosen": chosen,
            "best": head["best"], "best_test_at_k4": info}  # fmt: skip


def target_2(results: Results) -> dict[str, Any]:
    """At every k >= 1 the LaCoOT model chosen on validation beats (test) the vanilla model in
    its best order with BN re-estimation."""
    base = best_by_val(results[VANILLA], "bn")
    full_macs = base[0]["macs"]
    rows = []
    for k in range(1, len(base)):
        p = summary(chosen_at(results, lacoot_models(results), k), full_macs)
        diff = None if p is None else p["test"] - base[k]["test_accuracy"]
        rows.append({"k": k, "lacoot": p, "vanilla_bn_test": base[k]["test_accuracy"],
                     "difference": diff,
                     "verdict": verdict(diff is not None and diff > 0)})  # fmt: skip
    return {"target": "above vanilla + best order + BN re-estimation (test) at every k >= 1",
            "verdict": verdict(all(r["verdict"] == "met" for r in rows)), "rows": rows}  # fmt: skip


def target_3(results: Results) -> dict[str, Any]:
    """At each k with a from-scratch net, the LaCoOT model chosen on validation is within
    ``SCRATCH_GAP`` test points of it; the model aimed at that k (``budget{k}-*``, chosen on
    validation if several) is shown beside it."""
    full_macs = full_point(results[VANILLA])["macs"]
    names = lacoot_models(results)
    rows = []
    for k, net in scratch_nets(results).items():
        aimed = [n for n in names if results[n]["config"].startswith(f"budget{k}-")]
        row: dict[str, Any] = {"k": k, "scratch_test": net["test_accuracy"]}
        for key, group in (("lacoot", names), ("aimed", aimed)):
            p = summary(chosen_at(results, group, k), full_macs)
            row[key] = p and (p | {"gap": p["test"] - net["test_accuracy"]})
        row["verdict"] = verdict(row["lacoot"] is not None and row["lacoot"]["gap"] >= -SCRATCH_GAP)
        rows.append(row)
    return {"target": f"within {SCRATCH_GAP} test point of the same net trained from scratch",
            "verdict": verdict(bool(rows) and all(r["verdict"] == "met" for r in rows)),
            "rows": rows}  # fmt: skip


def fmt(v: float | None, sign: str = "") -> str:
    """Two decimals (``sign="+"``: signed), or ``-`` for None."""
    return "-" if v is None else f"{v:{sign}.2f}"


def point_label(p: dict[str, Any] | None) -> str:
    """``config order/repair`` of a summarised point, or ``-``."""
    return "-" if p is None else f"{p['config']} {p['order']}/{p['repair']}"


def md_targets(t: dict[str, Any]) -> list[str]:
    """The section "Targets": one verdict per target, with its numbers."""
    head = (f"Seed {t['seed']}; the model and schedule above, one LaCoOT training, no gradient "
            "step after it. "
            "Orders, repairs and models chosen on validation accuracy; test accuracy reported. "
            "MACs: those of the chosen point (linear patches add some).\n")  # fmt: skip
    return ["## Targets\n", head, *md_target_1(t["T1"]), *md_target_2(t["T2"]),
            *md_target_3(t["T3"])]  # fmt: skip


def md_target_1(t1: dict[str, Any]) -> list[str]:
    """Target 1's verdict, the collapse chosen within the MACs budget, the headline collapse and
    the best test at k = 4."""
    chosen, best, info = t1["chosen"], t1["best"], t1["best_test_at_k4"]
    vanilla = t1["vanilla_full_test"]
    out = [f"**T1, {t1['target']}: {t1['verdict']}.** Vanilla {fmt(vanilla)}%: needs >= "
           f"{fmt(vanilla - MAX_DROP)}% test at <= {MACS_TARGET:.1%} of the MACs."]  # fmt: skip
    if chosen:
        out.append(f"Chosen by the headline rule among collapses within the MACs budget: "
                   f"{point_label(chosen)}, k = {chosen['k']}, {fmt(chosen['test'])}% at "
                   f"{chosen['macs_fraction']:.1%} of the MACs "
                   f"({-chosen['drop']:+.2f}).")  # fmt: skip
    else:
        out.append(f"No collapse within the MACs budget is within {MAX_DROP} validation point.")
    if best:
        out.append(f"The headline collapse (any MACs): {best['config']} {best['criterion']}/"
                   f"{best['repair']}, k = {best['k']}, {fmt(best['test'])}% at "
                   f"{best['macs_fraction']:.1%} of the MACs.")  # fmt: skip
    if info:
        out.append(f"Best test at k = 4 of any LaCoOT model (order and repair chosen on "
                   f"validation per model): {point_label(info)}, {fmt(info['test'])}% at "
                   f"{info['macs_fraction']:.1%} of the MACs ({-info['drop']:+.2f}).")  # fmt: skip
    return [" ".join(out) + "\n"]


def md_target_2(t2: dict[str, Any]) -> list[str]:
    """Target 2's verdict and table."""
    rows = [[r["k"], f"{r['lacoot']['macs_fraction']:.1%}" if r["lacoot"] else "-",
             point_label(r["lacoot"]), fmt(r["lacoot"] and r["lacoot"]["test"]),
             fmt(r["vanilla_bn_test"]), fmt(r["difference"], "+"), r["verdict"]]
            for r in t2["rows"]]  # fmt: skip
    headers = ["k", "MACs", "best LaCoOT model", "test %", "vanilla + BN %", "difference",
               "verdict"]  # fmt: skip
    return [f"**T2, {t2['target']}: {t2['verdict']}.**\n", markdown_table(headers, rows)]


def md_target_3(t3: dict[str, Any]) -> list[str]:
    """Target 3's verdict and table."""
    rows = []
    for r in t3["rows"]:
        lac, aim = r["lacoot"] or {}, r["aimed"] or {}
        rows.append([r["k"], f"{lac['macs_fraction']:.1%}" if lac else "-", fmt(r["scratch_test"]),
                     point_label(r["lacoot"]), fmt(lac.get("test")), fmt(lac.get("gap"), "+"),
                     r["verdict"], point_label(r["aimed"]), fmt(aim.get("test")),
                     fmt(aim.get("gap"), "+")])  # fmt: skip
    headers = ["k", "MACs", "scratch %", "best LaCoOT model", "test %", "gap", "verdict",
               "aimed at k (`budget{k}-*`)", "its test %", "its gap"]  # fmt: skip
    return [f"**T3, {t3['target']}: {t3['verdict']}.**\n", markdown_table(headers, rows)]


def table_rows(results: Results, repair: str | None) -> list[tuple[str, list[Point]]]:
    """Rows of a main table: the vanilla references, then every LaCoOT model at its
    validation-best order (and repair, unless ``repair`` is given)."""
    vanilla = results[VANILLA]
    rows = [("vanilla + BN re-estimation", best_by_val(vanilla, "bn")),
            ("vanilla + linear repair", best_by_val(vanilla, "linear"))]  # fmt: skip
    if repair == "none":
        rows.insert(0, ("vanilla, unrepaired", best_by_val(vanilla, "none")))
    rows += [(results[n]["config"], best_by_val(results[n], repair))
             for n in lacoot_models(results)]  # fmt: skip
    return rows


def cell(pts: list[Point], k: int) -> str:
    """``test (order/repair)`` at ``k``; the test accuracy alone at k = 0."""
    if k >= len(pts):
        return "-"
    p = pts[k]
    return fmt(p["test_accuracy"]) + (f" ({p['order']}/{p['repair']})" if k else "")


def main_table(results: Results, repair: str | None) -> str:
    """Rows = models, columns = k (with the MACs fraction of the plain collapse)."""
    base = best_by_val(results[VANILLA], "bn")
    headers = ["model", *[f"k={p['k']} ({p['macs'] / base[0]['macs']:.1%})" for p in base]]
    rows = [[label, *[cell(pts, k) for k in range(len(base))]]
            for label, pts in table_rows(results, repair)]  # fmt: skip
    scratch = scratch_nets(results)
    rows.append(["same net from scratch", *[
        fmt(scratch[k]["test_accuracy"]) if k in scratch else "-" for k in range(len(base))
    ]])  # fmt: skip
    return markdown_table(headers, rows)


def seed_values(name: str, res: dict[str, Any]) -> list[float | None]:
    """The full model's test accuracy and, for a LaCoOT model, the test accuracy at each of
    ``SEED_KS`` of the validation-best order and repair."""
    if "sweeps" not in res:
        return [res["test_accuracy"], *[None for _ in SEED_KS]]
    pts = best_by_val(res)
    lacoot = name != VANILLA
    return [pts[0]["test_accuracy"], *[
        pts[k]["test_accuracy"] if lacoot and k < len(pts) else None for k in SEED_KS
    ]]  # fmt: skip


def other_seeds(by_seed: dict[int, Results]) -> list[dict[str, Any]]:
    """Every main-comparison job at more than one seed: its values per seed, mean and spread
    (max - min)."""
    names = sorted({n for r in by_seed.values() for n in r if n.startswith("main-")})
    groups = []
    for name in names:
        seeds = sorted(s for s, r in by_seed.items() if name in r)
        if len(seeds) < 2:
            continue
        values = {str(s): seed_values(name, by_seed[s][name]) for s in seeds}
        columns = [[v for v in col if v is not None] for col in zip(*values.values(), strict=True)]
        groups.append({"job": name, "config": by_seed[seeds[0]][name]["config"],
                       "columns": ["full", *[f"k={k}" for k in SEED_KS]], "test_by_seed": values,
                       "mean": [sum(c) / len(c) if c else None for c in columns],
                       "spread": [max(c) - min(c) if c else None for c in columns]})  # fmt: skip
    return groups


def md_other_seeds(groups: list[dict[str, Any]], by_seed: dict[int, Results], seed: int) -> str:
    """The section "Other seeds"."""
    out = ["## Other seeds\n"]
    alone = [f"{n} (seed {s})" for s, r in by_seed.items() if s != seed for n in r
             if not any(n in r2 for s2, r2 in by_seed.items() if s2 != s)]  # fmt: skip
    if not groups:
        out.append(f"No configuration was run at a seed other than {seed} as well.\n")
    else:
        out.append("Configurations run at several seeds: test accuracy (%) of the full model "
                   "(for a from-scratch net: of that net) and, for LaCoOT models, at k = "
                   f"{', '.join(map(str, SEED_KS))} of the order and repair chosen on validation;"
                   " mean and spread (max - min) over seeds.\n")  # fmt: skip
        rows = []
        for g in groups:
            rows += [[g["config"], s, *map(fmt, v)] for s, v in g["test_by_seed"].items()]
            rows.append([g["config"], "**mean**", *[f"**{fmt(v)}**" for v in g["mean"]]])
            rows.append([g["config"], "spread", *map(fmt, g["spread"])])
        out.append(markdown_table(["config", "seed", *groups[0]["columns"]], rows))
    if alone:
        out.append(f"Only at one seed other than {seed}: {', '.join(alone)}.\n")
    return "\n".join(out)


def screening(results: Results) -> list[dict[str, Any]]:
    """The short screening (jobs ``screen-*``), one :func:`screen_row` per model: the vanilla
    model first, then the LaCoOT configurations by their best validation accuracy at
    ``SELECT_K``."""
    rows = [screen_row(name, res) for name, res in results.items()
            if name.startswith("screen-") and "sweeps" in res]  # fmt: skip
    rows.sort(key=lambda r: (r["config"] != "vanilla", -r["select_val"]))
    return rows


def screen_row(name: str, res: dict[str, Any]) -> dict[str, Any]:
    """One screened model: the test accuracy of the full model, at each of ``SEED_KS`` (order
    and repair chosen on validation), unrepaired at ``SELECT_K``, and at ``SELECT_K`` for each
    order (its validation-best repair)."""
    best, plain = best_by_val(res), best_by_val(res, "none")
    macs = plain[0]["macs"]
    orders: dict[str, Point] = {}
    for (order, repair), pts in curves(res).items():
        p = pts[SELECT_K] | {"order": order, "repair": repair}
        if order not in orders or p["val_accuracy"] > orders[order]["val_accuracy"]:
            orders[order] = p

    def short(p: Point) -> dict[str, Any] | None:
        return summary(p | {"config": res["config"]}, macs)

    return {"job": name, "config": res["config"], "epochs": res["epochs"],
            "targets": res.get("targets"), "full": plain[0]["test_accuracy"],
            "at_k": {str(k): short(best[k]) for k in SEED_KS},
            "unrepaired": short(plain[SELECT_K]),
            "by_order": {o: short(p) for o, p in orders.items()},
            "select_val": best[SELECT_K]["val_accuracy"]}  # fmt: skip


def md_screening(rows: list[dict[str, Any]]) -> list[str]:
    """The section "Screening" (nothing without screening results)."""
    if not rows:
        return []
    orders = sorted({o for r in rows for o in r["by_order"]})
    headers = ["config", "penalised", "full", *[f"k={k}" for k in SEED_KS],
               f"k={SELECT_K} unrepaired", *[f"k={SELECT_K} `{o}`" for o in orders]]  # fmt: skip
    table = []
    for r in rows:
        at = [f"{fmt(p['test'])} ({p['order']}/{p['repair']})"
              for p in (r["at_k"][str(k)] for k in SEED_KS)]  # fmt: skip
        by = [f"{fmt(r['by_order'][o]['test'])} ({r['by_order'][o]['repair']})"
              if o in r["by_order"] else "-" for o in orders]  # fmt: skip
        aimed = ", ".join(r["targets"] or []) or ("-" if r["config"] == "vanilla" else "all")
        table.append([r["config"], aimed, fmt(r["full"]), *at, fmt(r["unrepaired"]["test"]), *by])
    epochs = ", ".join(str(e) for e in sorted({r["epochs"] for r in rows}))
    return [
        f"## Screening ({epochs} epochs)\n",
        "Test accuracy (%). Vanilla first, then the LaCoOT configurations ranked by validation "
        f"accuracy at k = {SELECT_K} (any order and repair). At each k the order/repair chosen "
        "on validation; for each order, the repair chosen on validation; `-`: not swept in that "
        "order.\n",
        markdown_table(headers, table),
    ]


def md_models(by_seed: dict[int, Results], seed: int) -> list[str]:
    """Every model of every seed (``seed`` first): test accuracy (validation in brackets) by
    order and repair."""
    out = ["## Every model: test accuracy (validation in brackets) by order and repair\n"]
    for s in sorted(by_seed, key=lambda s: (s != seed, s)):
        for name, res in sorted(by_seed[s].items()):
            if "sweeps" not in res:
                continue
            hist = res["history"][-1]
            out.append(f"### {name} (seed {s}; {res['epochs']} epochs; overrides "
                       f"{res['overrides']}; final val {hist['val_accuracy']:.2f}%)\n")  # fmt: skip
            if res.get("targets"):
                out.append(f"Penalised blocks chosen by the budget: {res['targets']}\n")
            out.append(model_table(res))
    return out


def model_table(res: dict[str, Any]) -> str:
    """One model: a row per order and repair, test (validation) at each k."""
    rows = []
    for (order, repair), pts in sorted(curves(res).items()):
        rows.append([f"{order} / {repair}"] + [
            f"{fmt(p['test_accuracy'])} ({fmt(p['val_accuracy'])})" for p in pts
        ])  # fmt: skip
    k = len(next(iter(curves(res).values())))
    return markdown_table(["order / repair", *[f"k={i}" for i in range(k)]], rows)


def md_scratch(by_seed: dict[int, Results], seed: int) -> list[str]:
    """The shallow nets trained from scratch, every seed (``seed`` first)."""
    rows = [[s, k, ", ".join(r["removed"]), fmt(r["val_accuracy"]), fmt(r["test_accuracy"]),
             f"{r['macs'] / 1e6:.2f}"]
            for s in sorted(by_seed, key=lambda s: (s != seed, s))
            for k, r in scratch_nets(by_seed[s]).items()]  # fmt: skip
    headers = ["seed", "k", "blocks removed", "val %", "test %", "MACs (M)"]
    return ["## Shallow nets trained from scratch (same schedule, no penalty)\n",
            markdown_table(headers, rows)]  # fmt: skip


Series = tuple[str, list[Point], str, dict[str, Any]]  # label, points, style, plot options


def plot_series(results: Results, best_config: str | None) -> list[Series]:
    """The plot's curves: vanilla with BN re-estimation, the headline configuration repaired and
    not, the paper-faithful one, and the best model at each k (a wide band beneath the others)."""
    vanilla = results[VANILLA]
    models = {results[n]["config"]: results[n] for n in lacoot_models(results)}
    series: list[Series] = [
        ("vanilla + best order + BN re-est.", best_by_val(vanilla, "bn"), "C0--", {})
    ]
    if best_config in models:
        res = models[best_config]
        label = f"LaCoOT {best_config} (headline)"
        series.append((f"{label}, best repair", best_by_val(res), "C1-", {}))
        series.append((f"{label}, unrepaired", best_by_val(res, "none"), "C1:", {}))
    if "paper" in models and best_config != "paper":
        paper = best_by_val(models["paper"])
        series.append(("LaCoOT paper-faithful, best repair", paper, "C2-", {}))
    n = len(best_by_val(vanilla, "bn"))
    envelope = [chosen_at(results, lacoot_models(results), k) for k in range(n)]
    series.append(("best LaCoOT model at each k (chosen on validation)",
                   [p for p in envelope if p is not None], "C3-",
                   {"lw": 6, "alpha": 0.3, "zorder": 1, "marker": None}))  # fmt: skip
    return series


def plot(results: Results, path: Path, best_config: str | None) -> None:
    """Accuracy against MACs: at most 6 curves (:func:`plot_series` and the from-scratch nets);
    the points of the best-at-each-k band that are not the headline configuration's are
    annotated with their configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full_macs = full_point(results[VANILLA])["macs"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = plot_series(results, best_config)
    for label, pts, style, options in series:
        xy = [(p["macs"] / full_macs, p["test_accuracy"]) for p in pts]
        ax.plot(*zip(*xy, strict=True), style, label=label, **({"marker": "o", "ms": 3} | options))
    for p in series[-1][1]:  # the best model at each k
        if p["config"] != best_config:
            ax.annotate(p["config"], (p["macs"] / full_macs, p["test_accuracy"]), fontsize=6,
                        color="C3", xytext=(4, -10), textcoords="offset points")  # fmt: skip
    scratch = [(r["macs"] / full_macs, r["test_accuracy"]) for r in scratch_nets(results).values()]
    if scratch:
        ax.plot(*zip(*scratch, strict=True), "s", color="k", label="same net from scratch")
    ax.set_xlabel("MACs (fraction of the full model)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(50, 96)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def render(by_seed: dict[int, Results], seed: int, schedule: str, head: dict[str, Any],
           targets: dict[str, Any], groups: list[dict[str, Any]], screen: list[dict[str, Any]],
           sources: list[dict[str, Any]]) -> str:  # fmt: skip
    """The Markdown report."""
    results = by_seed[seed]
    parts = [
        "# Collapse quality: LaCoOT variants, orders and repairs against the alternatives\n",
        f"Schedule of the main comparison: {schedule}. Seed {seed} (other seeds: "
        "[below](#other-seeds)). Test accuracy (%); in brackets the order and repair chosen at "
        "that k on validation accuracy. The MACs in the header are those of the plain collapse "
        "(linear patches add some).\n",
        "## Best repair (order and repair chosen on validation at each k)\n",
        main_table(results, None),
        "## Unrepaired (order chosen on validation at each k)\n",
        main_table(results, "none"),
        *md_targets(targets),
        *md_screening(screen),
        "## Headline (`headline.json`)\n",
        "```json\n" + json.dumps(head, indent=2) + "\n```\n",
        md_other_seeds(groups, by_seed, seed),
        *md_models(by_seed, seed),
        *md_scratch(by_seed, seed),
        "## Sources\n",
        "```json\n" + json.dumps(sources, indent=1) + "\n```\n",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+")
    p.add_argument("--seed", type=int, default=0, help="the seed of the tables and headline")
    p.add_argument("--out", default="docs/benchmarks/collapse_quality")
    p.add_argument("--headline", default="docs/benchmarks/headline.json")
    p.add_argument("--schedule", required=True, help="the main comparison's schedule, in words")
    args = p.parse_args(argv)
    by_seed, sources = load(args.inputs)
    results = by_seed.get(args.seed, {})
    if VANILLA not in results:
        p.error(f"no {VANILLA} result at seed {args.seed}")
    head = headline(results, args.schedule)
    targets = {"seed": args.seed, "T1": target_1(results, head), "T2": target_2(results),
               "T3": target_3(results)}  # fmt: skip
    groups, screen = other_seeds(by_seed), screening(results)
    atomic_write_text(args.headline, json.dumps(head, indent=2) + "\n")
    md = render(by_seed, args.seed, args.schedule, head, targets, groups, screen, sources)
    atomic_write_text(args.out + ".md", md)
    merged = {"sources": sources, "schedule": args.schedule, "seed": args.seed,
              "targets": targets, "other_seeds": groups, "screening": screen,
              "results": results,
              "other_seed_results": {str(s): r for s, r in sorted(by_seed.items())
                                     if s != args.seed}}  # fmt: skip
    atomic_write_text(args.out + ".json", json.dumps(merged, indent=1))
    plot(results, Path(args.out + ".png"), (head["best"] or {}).get("config"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
