"""lacoot.report: the Markdown table, the rendered report and the files written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lacoot.report import markdown_table, render_markdown, write_report


def _point(k: int, removed: list[str], val: float, test: float, macs: float) -> dict[str, Any]:
    return {"k": k, "removed": removed, "val_accuracy": val, "test_accuracy": test, "macs": macs,
            "params": 1e6 - 1e5 * k, "latency_ms": {"1": 2.0 - 0.5 * k},
            "unrepaired": {"val_accuracy": val - 5, "test_accuracy": test - 5}}  # fmt: skip


def _report(orders: tuple[str, ...] = ("msw", "cosine")) -> dict[str, Any]:
    points = [_point(0, [], 90.0, 89.5, 4e7), _point(1, ["b1"], 89.0, 88.25, 3e7),
              _point(2, ["b1", "b0"], 70.0, 69.0, 2e7)]  # fmt: skip
    return {
        "environment": {"command": "lacoot collapse x", "date": "2026-11-28", "device": "cpu",
                        "torch": "2.13", "lacoot": "0.1.0", "platform": "linux"},
        "checkpoint": "x.pt", "seed": 3, "model_spec": {"name": "tiny"},
        "data_spec": {"dataset": "fashion-mnist"},
        "train_config": {"epochs": 2, "lam": 1.0, "optimizer": "sgd", "lr": 0.1,
                         "schedule": "onecycle", "method": "random"},
        "criterion": orders[0], "budget": {"max_drop": 1.0, "max_macs": None, "blocks": None},
        "repair": {"method": "linear", "calib_samples": 256}, "penalized": ["b1"],
        "blocks": [{"name": "b0", "macs": 1e7}, {"name": "b1", "macs": 1e7}],
        "scores": {o: {"b0": 0.5, "b1": 0.25} for o in orders},
        "sweeps": {o: {"points": points} for o in orders}, "chosen": points[1],
    }  # fmt: skip


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row() -> None:
    text = markdown_table(["a", "b"], [[1, "x"], [2.5, None]])
    assert text == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |\n"


def test_render_markdown_states_the_choice_the_repair_and_every_order() -> None:
    text = render_markdown(_report())
    assert text.startswith("# lacoot report: tiny on fashion-mnist\n")
    assert "- seed: 3; checkpoint: `x.pt`" in text
    assert "- repair: `linear`, 256 calibration images" in text
    assert "- penalised during training: b1" in text
    assert "- block order: `msw`; budget: max_drop = 1.0" in text
    assert (
        "1 of 2 blocks removed (b1): test accuracy 89.50% -> 88.25%, MACs 40.00 M -> 30.00 M "
        "(75.0%), parameters 1.000 M -> 0.900 M, latency at batch 1 2.00 ms -> 1.50 ms" in text
    )
    assert "| 1 | b1 | 89.00 | 88.25 | 84.00 / 83.25 | 30.00 | 75.0% | 0.900 | 1.50 |" in text
    assert "## Test accuracy (%) by block order" in text
    assert "| k | MACs (M) | msw | cosine |" in text and "| 2 | 20.00 | 69.00 | 69.00 |" in text
    assert "| b0 | 10.00 | 0.5 | 0.5 |" in text


def test_faded_blocks_and_the_reference_of_the_budget_are_stated() -> None:
    report = _report()
    assert "faded out" not in render_markdown(report)
    report["reference"] = {"model": "model without the faded blocks", "val_accuracy": 91.0,
                           "faded": ["b1"], "faded_val_accuracy": 91.0}  # fmt: skip
    assert (
        "- faded out during training (the model trained last computes without them): b1; "
        "validation accuracy without them 91.00%, with them switched back on 90.00%; max_drop is "
        "measured from the model without the faded blocks (91.00%)" in render_markdown(report)
    )


def test_one_order_and_no_repair_render_without_the_comparison() -> None:
    report = _report(("cosine",))
    report["repair"] = {"method": "none", "calib_samples": 0}
    text = render_markdown(report)
    assert "- repair: `none` (none)" in text
    assert "by block order" not in text
    report["sweeps"]["cosine"]["metric"] = "negative_perplexity"  # the sweep's own metric
    report["sweeps"]["cosine"]["points"][0]["test_accuracy"] = -12.5  # minus the perplexity
    text = render_markdown(report)
    assert "| k | removed | val perplexity | test perplexity |" in text
    assert "test perplexity 12.50 -> " in text and "accuracy" not in text.split("## Input")[0]


def test_write_report_writes_json_markdown_and_the_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_report(tmp_path / "out", _report())
    assert json.loads((tmp_path / "out" / "report.json").read_text())["seed"] == 3
    assert (tmp_path / "out" / "report.md").read_text() == render_markdown(_report())
    assert (tmp_path / "out" / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"
