"""Tables and plots of a collapse sweep: report.json, report.md and accuracy_vs_macs.png."""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._io import atomic_write_bytes, atomic_write_text
from .metrics import METRICS, metric_text  # noqa: F401 (metric_text: the CLI's)
from .provenance import data_mismatch

__all__ = [
    "markdown_table", "write_report", "plot_sweeps", "render_markdown", "save_figure",
    "metric_text",
]  # fmt: skip

COLUMN = {"top1_accuracy": "acc %", "token_accuracy": "next-token acc %",
          "negative_perplexity": "perplexity"}  # fmt: skip


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed as given (format them first)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _metric(report: dict[str, Any]) -> str:
    return report["sweeps"][report["criterion"]].get("metric", "top1_accuracy")


def _shown(report: dict[str, Any], value: float | None) -> str:
    """A value of the report's metric as read, without its unit (a table cell)."""
    sign = METRICS.get(_metric(report), ("", "", 1.0))[2]
    return _fmt(None if value is None else sign * value)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: the chosen collapse, the sweep, and the other orders."""
    out = _md_header(report) + _md_chosen(report) + _md_sweep(report) + _md_orders(report)
    out += _md_input(report) + _md_latency(report) + _md_reproducibility(report)
    mismatch = data_mismatch(report.get("data_fingerprint"))
    if mismatch is not None:
        out.insert(1, f"**Warning: {mismatch}.**\n")
    out.append("## Block scores\n")
    names = list(report["scores"])
    rows = [
        [b["name"], f"{b['macs'] / 1e6:.2f}"]
        + [f"{report['scores'][n][b['name']]:.4g}" for n in names]
        for b in report["blocks"]
    ]
    out.append(markdown_table(["block", "MACs (M)", *names], rows))
    return "\n".join(out)


def _md_header(report: dict[str, Any]) -> list[str]:
    """Title, provenance, training, repair, penalised blocks, order and budget."""
    env, spec = report["environment"], report["model_spec"]
    out = [
        f"# lacoot report: {spec['name']} on {report['data_spec']['dataset']}\n",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; device: {env['device']}; torch {env['torch']}; "
        f"lacoot {env['lacoot']}; {env['platform']}",
        f"- seed: {report['seed']}; "
        + (
            f"checkpoint: `{report['checkpoint']}`"
            if report.get("checkpoint")
            else f"model: `{spec['name']}` (as it is, no lacoot training)"
        ),
    ]
    tc = report.get("train_config") or {}
    if tc:
        out.append(
            f"- training: {tc['epochs']} epochs, lambda = {tc['lam']}, {tc['optimizer']} "
            f"lr {tc['lr']} ({tc['schedule']}), MSW estimator `{tc['method']}`"
        )
    if _on_train_split(report):
        out.append(
            "- **no validation split** (`--val-fraction 0 --val-from train`): the blocks were "
            "scored, the collapse chosen and the repair calibrated on the training split; the "
            "`train-split` accuracies below are of images the model was trained on"
        )
    rep = report.get("repair") or {"method": "none", "calib_samples": 0}
    split = "training" if _on_train_split(report) else "validation"
    if not report.get("checkpoint") and _samples(report) == "sequences":
        split = "calibration (every sequence not held out for test)"
    out.append(
        f"- repair: `{rep['method']}`"
        + (
            f", {rep['calib_samples']} calibration {_samples(report)} of the {split} split, no "
            "gradient step; figures are of the repaired model, the unrepaired ones beside them"
            if rep["method"] != "none"
            else " (none)"
        )
    )
    if "greedy" in report["sweeps"]:
        n = len(report["blocks"])
        out.append(
            f"- `greedy` order: {n * (n + 1) // 2 - 1} repaired evaluations of the validation "
            f"split for {n} blocks"
        )
    if report.get("penalized"):
        out.append(f"- penalised during training: {', '.join(report['penalized'])}")
    out.extend(_md_faded(report))
    budget = ", ".join(f"{k} = {v}" for k, v in report["budget"].items() if v is not None)
    if report["budget"].get("max_drop") is not None and _metric(report) != "top1_accuracy":
        budget += f" (max_drop in units of {metric_text(_metric(report))[0]})"
    out.append(f"- block order: `{report['criterion']}`; budget: {budget}\n")
    return out


def _samples(report: dict[str, Any]) -> str:
    """What one sample is: an image, or a sequence of tokens."""
    return "sequences" if (report.get("preprocessing") or {}).get("kind") == "text" else "images"


def _on_train_split(report: dict[str, Any]) -> bool:
    """Whether the report scored and chose on the training split (no validation split)."""
    return report.get("val_from") == "train"


def _split_name(report: dict[str, Any]) -> str:
    return "training-split" if _on_train_split(report) else "validation"


def _md_input(report: dict[str, Any]) -> list[str]:
    """The input the checkpoint and ``shallow.pt`` expect (their normalisation)."""
    pre = report.get("preprocessing")
    if not pre:
        return []
    if pre.get("kind") == "text":
        return [
            "## Input\n",
            f"The models take {pre['inputs']} ({pre['tokenizer']}, sequences of "
            f"{pre['seq_len']} tokens here) and give {pre['output']}. The `shallow` folder is a "
            "`save_pretrained` folder with the tokenizer: `transformers` loads it as it is.\n",
        ]
    mean = ", ".join(f"{v:.4f}" for v in pre["mean"])
    std = ", ".join(f"{v:.4f}" for v in pre["std"])
    shape = "x".join(str(v) for v in pre["input_shape"])
    return [
        "## Input\n",
        f"The models take float {pre['layout']} images of {shape} ({pre['channel_order']}), "
        f"scaled as {pre['scale']} and normalised per channel with the training split's mean "
        f"({mean}) and standard deviation ({std}): {pre['normalize']}. `shallow.pt.json` "
        "records it beside `shallow.pt`; `lacoot export --format torchscript` or `onnx` builds "
        "the normalisation into the exported model (its first layer), which then takes "
        "pixel / 255.\n",
    ]


def _md_latency(report: dict[str, Any]) -> list[str]:
    """The conditions the latencies were measured under, flagged when under load."""
    cond = report.get("latency_conditions")
    if not cond:
        return []
    loads = f"{_fmt(cond['load_before'])} before, {_fmt(cond['load_after'])} after"
    out = [
        "## Latency measurement\n",
        f"{cond['measurements']} measurements on {cond['device']} with {cond['torch_threads']} "
        f"torch threads ({cond['cpu_count']} cores); load average {loads}; spread of the "
        f"repeats (interquartile range over median) {cond['median_spread']:.0%} typical, "
        f"{cond['max_spread']:.0%} at worst.\n",
    ]
    if cond["under_load"]:
        out.append(
            f"**Warning: latencies taken under load** ({'; '.join(cond['reasons'])}): the "
            "absolute figures are not to be trusted; the ratios between models, measured in "
            "turn, are more robust. Measure again on an idle machine.\n"
        )
    return out


def _md_reproducibility(report: dict[str, Any]) -> list[str]:
    """What determinism the run had, and when the same seed may differ."""
    from .provenance import REPRODUCIBILITY

    env = report["environment"]
    det = env.get("determinism") or {}
    trained = report.get("train_environment") or {}
    where = trained.get("machine", "?")
    same = trained.get("machine") == env.get("machine") and trained.get("torch") == env.get("torch")
    threads = det.get("torch_threads", env.get("cpu_threads", "?"))
    lines = [
        "## Reproducibility\n",
        f"- this report: machine {env.get('machine', '?')} ({env.get('platform', '?')}), torch "
        f"{env.get('torch', '?')}, {env.get('device', '?')}, {threads} torch threads, "
        f"deterministic algorithms {'on' if det.get('deterministic_algorithms') else 'off'}",
    ]
    if trained:
        tdet = trained.get("determinism") or {}
        lines.append(
            f"- training: machine {where}, torch {trained.get('torch')}, "
            f"{trained.get('device')}, {tdet.get('torch_threads', '?')} torch threads"
            + ("" if same else " (not the machine or torch of this report)")
        )
    return [*lines, f"\n{REPRODUCIBILITY}\n"]


def _md_faded(report: dict[str, Any]) -> list[str]:
    """The blocks the training faded out, and which model a ``max_drop`` is measured from."""
    ref = report.get("reference") or {}
    if not ref.get("faded"):
        return []
    name, show = metric_text(_metric(report))
    return [
        f"- faded out during training (the model trained last computes without them): "
        f"{', '.join(ref['faded'])}; {_split_name(report)} {name} without them "
        f"{show(ref.get('faded_val_accuracy'))}, with them switched back on "
        f"{show(report['sweeps'][report['criterion']]['points'][0]['val_accuracy'])}; "
        f"max_drop is measured from the {ref['model']} ({show(ref['val_accuracy'])})"
    ]


def _points(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """The chosen order's sweep points and the batch sizes at which latency was measured."""
    points = report["sweeps"][report["criterion"]]["points"]
    return points, sorted(points[0]["latency_ms"], key=int)


def _md_chosen(report: dict[str, Any]) -> list[str]:
    points, latencies = _points(report)
    full, chosen = points[0], report["chosen"]
    name, show = metric_text(_metric(report))
    return [
        "## Chosen collapse\n",
        f"{chosen['k']} of {len(points) - 1} blocks removed "
        f"({', '.join(chosen['removed']) or 'none'}): test {name} "
        f"{show(full['test_accuracy'])} -> {show(chosen['test_accuracy'])}, "
        + _token_change(full, chosen)
        + f"MACs {full['macs'] / 1e6:.2f} M -> {chosen['macs'] / 1e6:.2f} M "
        f"({chosen['macs'] / full['macs']:.1%}), parameters {full['params'] / 1e6:.3f} M -> "
        f"{chosen['params'] / 1e6:.3f} M"
        + "".join(
            f", latency at batch {b} {full['latency_ms'][b]:.2f} ms -> "
            f"{chosen['latency_ms'][b]:.2f} ms"
            for b in latencies
        )
        + (
            f". Training-split {name} chose it (no validation split); test {name} is reported.\n"
            if _on_train_split(report)
            else f". Validation {name} chose it; test {name} is reported.\n"
        ),
    ]


def _token_change(full: dict[str, Any], chosen: dict[str, Any]) -> str:
    """``next-token accuracy a% -> b%, `` when the report holds it."""
    if "token_accuracy" not in chosen:
        return ""
    was, now = full["token_accuracy"]["test"], chosen["token_accuracy"]["test"]
    return f"next-token accuracy {_fmt(was)}% -> {_fmt(now)}%, "


def _md_sweep(report: dict[str, Any]) -> list[str]:
    points, latencies = _points(report)
    full = points[0]
    metric = _metric(report)
    unit = COLUMN.get(metric, metric)
    val = "train-split" if _on_train_split(report) else "val"
    headers = ["k", "removed", f"{val} {unit}", f"test {unit}", f"unrepaired {val} / test {unit}"]
    tokens = "token_accuracy" in full
    headers += [f"{val} / test next-token acc %"] if tokens else []
    headers += ["MACs (M)"]
    headers += ["MACs %", "params (M)"]
    headers += [f"latency b={b} (ms)" for b in latencies]
    rows = []
    for p in points:
        row = [
            p["k"],
            p["removed"][-1] if p["removed"] else "-",
            _shown(report, p["val_accuracy"]),
            _shown(report, p["test_accuracy"]),
            f"{_shown(report, p['unrepaired'].get('val_accuracy'))} / "
            f"{_shown(report, p['unrepaired'].get('test_accuracy'))}",
        ]
        if tokens:
            row.append(f"{_fmt(p['token_accuracy']['val'])} / {_fmt(p['token_accuracy']['test'])}")
        row += [
            f"{p['macs'] / 1e6:.2f}",
            f"{p['macs'] / full['macs']:.1%}",
            f"{p['params'] / 1e6:.3f}",
        ]
        row += [f"{p['latency_ms'][b]:.2f}" for b in latencies]
        rows.append(row)
    out = [f"## Sweep (`{report['criterion']}` order)\n", markdown_table(headers, rows)]
    stopped = report["sweeps"][report["criterion"]].get("stopped")
    return out + ([f"The sweep {stopped}\n"] if stopped else [])


def _md_orders(report: dict[str, Any]) -> list[str]:
    """Test accuracy of every order at every k (nothing when one order was swept)."""
    if len(report["sweeps"]) <= 1:
        return []
    points, _ = _points(report)
    names = list(report["sweeps"])
    rows = [
        [k, f"{points[k]['macs'] / 1e6:.2f}"]
        + [_shown(report, report["sweeps"][n]["points"][k]["test_accuracy"]) for n in names]
        for k in range(len(points))
    ]
    name, unit, _ = METRICS.get(_metric(report), (_metric(report), "", 1.0))
    return [
        f"## Test {name}{f' ({unit})' if unit else ''} by block order\n",
        f"MACs are those of the `{report['criterion']}` order; other orders remove other blocks, "
        "so their MACs differ.\n",
        markdown_table(["k", "MACs (M)", *names], rows),
    ]


def plot_sweeps(
    path: str | os.PathLike, sweeps: dict[str, dict[str, Any]], title: str = ""
) -> bool:
    """Accuracy against MACs and against removed blocks, one curve per sweep.

    ``sweeps`` maps a label to a sweep dictionary (:meth:`lacoot.Sweep.to_dict`). Returns
    ``False`` (with a warning) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed: no plot written (pip install 'lacoot[cli]')",
            stacklevel=2,
        )
        return False
    fig, (ax_macs, ax_k) = plt.subplots(1, 2, figsize=(11, 4.2))
    metric = next(iter(sweeps.values()), {}).get("metric", "top1_accuracy")
    name, unit, sign = METRICS.get(metric, (metric, "", 1.0))
    for label, sw in sweeps.items():
        pts = sw["points"]
        acc = [
            sign * (p["test_accuracy"] if p["test_accuracy"] is not None else p["val_accuracy"])
            for p in pts
        ]
        ax_macs.plot([p["macs"] / 1e6 for p in pts], acc, marker="o", ms=3, label=label)
        ax_k.plot([p["k"] for p in pts], acc, marker="o", ms=3, label=label)
    ax_macs.set_xlabel("MACs per sample (M)")
    ax_macs.invert_xaxis()
    ax_k.set_xlabel("blocks removed")
    for ax in (ax_macs, ax_k):
        ax.set_ylabel(f"test {name}" + (f" ({unit})" if unit else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return True


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Lay out a matplotlib figure, write it as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def write_report(out_dir: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write ``report.json``, ``report.md`` and ``accuracy_vs_macs.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", render_markdown(report))
    spec = report["model_spec"]
    plot_sweeps(
        out / "accuracy_vs_macs.png",
        {f"{spec['name']} ({name} order)": sw for name, sw in report["sweeps"].items()},
        title=f"{spec['name']} on {report['data_spec']['dataset']}",
    )
