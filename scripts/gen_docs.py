"""Generate the parts of the documentation that the code and the results already say.

* the README's results section (between ``<!-- results:start`` and ``<!-- results:end -->``),
  from the committed JSON files it names: ``docs/results/headline/headline.json``
  (``benchmarks/headline.py`` on CPU), a link to the same command's run on a GPU
  (``docs/results/headline-cuda/``) and, until the CPU headline has three seeds of every model,
  the pointer to the older seed-0 figures (``docs/benchmarks/headline.json``);
* ``docs/reference/cli.md``: every subcommand's ``--help``, from the parser the command builds;
* ``docs/reference/api.md``: every name of ``lacoot.__all__``, its signature and the first
  paragraph of its docstring.

    python scripts/gen_docs.py           # rewrite them
    python scripts/gen_docs.py --check   # exit 1 when one is stale (what a test runs)
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NEW = ROOT / "docs" / "results" / "headline" / "headline.json"
GPU = ROOT / "docs" / "results" / "headline-cuda" / "headline.json"
OLD = ROOT / "docs" / "benchmarks" / "headline.json"
START, END = "<!-- results:start", "<!-- results:end -->"
SEEDS = [0, 1, 2]
LABELS = {
    "vanilla": "vanilla, full model",
    "vanilla_best_repair": "vanilla collapsed, best order and repair",
    "lacoot_default": "LaCoOT, `lacoot run`'s defaults",
    "paper": "LaCoOT, the paper's configuration",
    "scratch_same_arch": "the same architecture, trained from scratch",
    "scratch_deepest_first": "deepest-first shallow net, trained from scratch",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _count(params: int | list[int]) -> str:
    """A parameter count, or the range of the seeds' counts where they differ."""
    if not isinstance(params, list):
        return f"{params:,}"
    lo, hi = min(params), max(params)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _test(row: dict[str, Any]) -> str:
    std = f" ± {row['test_std']:.2f}" if row.get("test_std") is not None else ""
    return f"{row['test_mean']:.2f}{std}"


def _one(v: Any) -> Any:
    return v if not isinstance(v, list) else v[0] if all(x == v[0] for x in v) else None


def complete(h: dict[str, Any] | None) -> bool:
    """Whether the headline holds every model at every seed."""
    return h is not None and all(sorted(h["seeds"].get(job, [])) == SEEDS
                                 for job in LABELS if job != "vanilla_best_repair")  # fmt: skip


def new_table(h: dict[str, Any], path: Path) -> list[str]:
    k, env = h["reported_k"], h["environment"]
    machine = env["machine"] if isinstance(env["machine"], str) else " and ".join(env["machine"])
    lines = [
        f"resnet20 on Fashion-MNIST, {h['schedule']['epochs']} epochs, {machine}, "
        f"{env['precision']}, torch {env['torch']} ([`{_rel(path)}`]({_rel(path)})); test "
        "accuracy (%), mean ± std over the seeds shown; every model swept in every order with "
        "every repair, the order and repair chosen on validation:",
        "",
        "| model | blocks removed | parameters | MACs | test accuracy | order / repair | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for job, label in LABELS.items():
        row = next((r for r in h["rows"].get(job, []) if r["k"] == (0 if job == "vanilla" else k)),
                   None)  # fmt: skip
        if row is None:
            continue
        macs = _one(row["macs_fraction"])
        how = "trained" if not row["order"] else "-" if row["k"] == 0 else (
            f"{row['order']} / {row['repair']}")  # fmt: skip
        lines.append(
            f"| {label} | {row['k']} | {_count(row['params'])} | "
            f"{_pct(macs) if macs else 'per seed'} | {_test(row)} | {how} | "
            f"{', '.join(map(str, row['seeds']))} |"
        )
    t = h["targets"]
    names = ("within_1pt_of_vanilla", "near_scratch_same_arch", "above_vanilla_every_k")
    verdicts = []
    for n, fig in zip(names, ("vs_vanilla", "vs_scratch_same_arch", "vs_vanilla_best_repair"),
                      strict=True):  # fmt: skip
        f = t.get(fig, {})
        on = f" (seeds {', '.join(map(str, f['seeds']))}: " if f else ""
        if "gap_by_k" in f:
            ks = sorted(f["gap_by_k"], key=int)
            gaps = ", ".join(f"{f['gap_by_k'][key]:+.2f}" for key in ks)
            on += f"gap at k = {ks[0]}..{ks[-1]}: {gaps})"
        elif f:
            a, b = (v for key, v in f.items() if key not in ("gap", "seeds", "macs_fraction"))
            on += f"{a:.2f} against {b:.2f})"
        verdicts.append(f"`{n}` {'pending' if t[n] is None else t[n]}{on}")
    lines += ["", "Targets, each on the seeds both sides hold: " + "; ".join(verdicts) + "."]
    return lines


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


INTRO = (
    "`python benchmarks/headline.py` trains, in one environment (CPU, float32) and for seeds 0, 1 "
    "and 2: vanilla, `lacoot run`'s defaults, the paper's configuration, the exact architecture "
    "`lacoot run`'s model collapses to trained from scratch, and a deepest-first shallow net; "
    "every model is swept in every order with every repair"
)


def readme_block() -> str:
    cpu, gpu, old = _load(NEW), _load(GPU), json.loads(OLD.read_text())
    where = "([`docs/results/headline/`](docs/results/headline/))"
    if complete(cpu):
        lines = [
            f"{INTRO} {where}; what the targets mean, and what the figures show: "
            "[`docs/results/`](docs/results/README.md).",
            "",
            *new_table(cpu, NEW),
        ]
    else:
        seeds = (cpu or {}).get("seeds", {})
        done = ", ".join(f"{job} (seeds {', '.join(map(str, s))})" for job, s in seeds.items())
        lines = [f"**The three-seed headline is in progress.** {INTRO}. Finished so far on CPU: "
                 f"{done or 'none yet'} {where}."]  # fmt: skip
        shown = next(((h, path, what) for h, path, what in
                      ((cpu, NEW, "on CPU"), (gpu, GPU, "on one GPU"))
                      if h is not None and "lacoot_default" in h["seeds"]), None)  # fmt: skip
        if shown is not None:
            h, path, what = shown
            lines += ["", f"Its partial figures {what} (the models and seeds missing from the "
                      "table have not finished):", "", *new_table(h, path)]  # fmt: skip
        lines += [
            "",
            f"The seed-0 figures shown here before ({old['best']['test']:.2f}% at "
            f"{_pct(old['best']['macs_fraction'])} of the MACs) compared unlike things (another "
            "architecture from scratch, another environment, not LaCoOT's order, a vanilla "
            "baseline without its best repair); [`docs/results/`](docs/results/README.md) keeps "
            "them with those caveats.",
        ]
    if gpu is not None:
        lines += ["", "A partial run of the same command on one GPU (bfloat16, another "
                  "environment, never merged with this one): "
                  f"[`{_rel(GPU.parent)}/`]({_rel(GPU.parent)}/)."]  # fmt: skip
    return "\n".join([START + " (generated by scripts/gen_docs.py; do not edit) -->",
                      *map(_wrap, lines), END])  # fmt: skip


def _wrap(line: str) -> str:
    """A prose line wrapped at 100 columns (tables and blank lines as they are)."""
    if not line or line.startswith("|"):
        return line
    indent = "  " if line.startswith("- ") else ""
    return textwrap.fill(line, 100, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)  # fmt: skip


def readme_text() -> str:
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + readme_block() + tail


# --------------------------------------------------------------------------- reference
def cli_reference() -> str:
    from lacoot.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "# `lacoot` command-line reference",
        "",
        "Generated by `python scripts/gen_docs.py` from the parser the command builds (its "
        "options derive from `lacoot.config`); `lacoot COMMAND --help` prints the same. Options "
        "of `train` and `run` can also come from a YAML file (`--config`), flags overriding it.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    for name, p in sub.choices.items():
        parts += ["", f"## `lacoot {name}`", "", "```text", p.format_help().rstrip(), "```"]
    return "\n".join(parts + experimental_options()) + "\n"


def experimental_options() -> list[str]:
    """The options measured worse than the defaults: accepted by ``train`` and ``run`` (and in
    config files), left out of ``--help``; listed here with their help."""
    from dataclasses import fields

    from lacoot.cli import _help
    from lacoot.config import RunConfig, base_type, default_of, option_spec

    rows = [f for f in fields(RunConfig) if option_spec(f).experimental]
    lines = ["", "## Experimental options", "",
             "Accepted by `lacoot train` and `lacoot run` and in `--config` files, but measured "
             "worse than the defaults on resnet20 / Fashion-MNIST (what was measured: "
             "[`CHANGELOG.md`](../../CHANGELOG.md)), so left out of `--help`:", ""]  # fmt: skip
    for f in rows:
        flag = "--" + f.name.replace("_", "-")
        both = f"`{flag}` / `--no-{flag[2:]}`" if base_type(f) == "bool" else f"`{flag}`"
        lines.append(f"- {both}: {_help(f, default_of(f)).replace('%%', '%')}")
    return lines


def _first_paragraph(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def api_reference() -> str:
    import lacoot

    parts = [
        "# Python API reference",
        "",
        "Generated by `python scripts/gen_docs.py` from `lacoot.__all__`: each public name, its "
        "signature and the first paragraph of its docstring (`help(lacoot.NAME)` has the rest).",
    ]
    for name in lacoot.__all__:
        obj = getattr(lacoot, name)
        if name == "__version__":
            parts += ["", "## `lacoot.__version__`", "", "The installed version, a string."]
            continue
        try:
            sig = str(inspect.signature(obj)) if callable(obj) else ""
        except (TypeError, ValueError):
            sig = ""
        kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "constant"
        parts += ["", f"## `lacoot.{name}`", "", f"{kind}: `{name}{sig}`" if sig else kind]
        doc_of = getattr(obj, name) if inspect.ismodule(obj) else obj  # a callable module
        para = _first_paragraph(doc_of) if kind != "constant" else repr(obj)
        if para:
            parts += ["", para]
    return "\n".join(parts) + "\n"


def outputs() -> dict[Path, str]:
    ref = ROOT / "docs" / "reference"
    return {README: readme_text(), ref / "cli.md": cli_reference(), ref / "api.md": api_reference()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale")
    args = p.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(_rel(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(("stale: " if args.check else "written: ") + ", ".join(stale))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
