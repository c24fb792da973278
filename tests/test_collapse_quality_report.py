"""benchmarks/collapse_quality_report.py on two tiny synthetic result files (seeds 0 and 1): the
headline, the seed separation, the section "Other seeds" and the targets' verdicts."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "collapse_quality_report.py"


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("collapse_quality_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model(config: str, bn: Callable[[int], float], linear: Callable[[int], float],
          none: Callable[[int], float]) -> dict[str, Any]:  # fmt: skip
    """A trained model swept in `cosine` order, k = 0..7; validation = test + 0.2; each block
    12% of the MACs, linear patches 1% more."""

    def point(k: int, test: float, extra: float) -> dict[str, Any]:
        return {"k": k, "removed": [f"b{i}" for i in range(k)], "test_accuracy": round(test, 2),
                "val_accuracy": round(test + 0.2, 2), "macs": 100 - 12 * k + extra * (k > 0),
                "unrepaired": {"test_accuracy": round(none(k), 2),
                               "val_accuracy": round(none(k) + 0.2, 2)}}  # fmt: skip

    sweeps = {
        "cosine/linear": {"points": [point(k, linear(k), 1) for k in range(8)]},
        "cosine/bn": {"points": [point(k, bn(k), 0) for k in range(8)]},
    }
    return {"config": config, "epochs": 2, "overrides": {}, "targets": [],
            "history": [{"val_accuracy": bn(0) + 0.2}], "sweeps": sweeps}  # fmt: skip


def scratch(k: int, test: float) -> dict[str, Any]:
    return {"config": f"scratch-k{k}", "removed": [f"b{i}" for i in range(k)],
            "val_accuracy": test + 0.2, "test_accuracy": test, "macs": 100 - 12 * k}  # fmt: skip


def vanilla(full: float) -> dict[str, Any]:
    return model("vanilla", lambda k: full - 5 * k, lambda k: full - 4 * k,
                 lambda k: full - 10 * k)  # fmt: skip


def budget(full: float) -> dict[str, Any]:
    """Aimed at 4 blocks: almost free up to k = 4 with BN re-estimation, 10 points a block after."""

    def bn(k: int) -> float:
        return full - 0.1 * k if k <= 4 else full - 0.4 - 10 * (k - 4)

    return model("budget4-a", bn, lambda k: bn(k) - 0.5, lambda k: bn(k) - (k > 0))


def write(path: Path, seed: int, results: dict[str, Any]) -> str:
    data = {"command": "synthetic", "started": "now", "seed": seed, "environment": {},
            "settings": {}, "results": results}  # fmt: skip
    path.write_text(json.dumps(data))
    return str(path)


def test_report_seeds_headline_and_targets(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    seed0 = write(tmp_path / "seed0.json", 0, {
        "main-vanilla": vanilla(94.0), "main-budget4-a": budget(93.5),
        "main-paper": model("paper", *[lambda k: 92.0 - 2 * k] * 3),
        "main-scratch-k2": scratch(2, 93.0), "main-scratch-k4": scratch(4, 93.0),
        "main-scratch-k6": scratch(6, 92.0),
    })  # fmt: skip
    seed1 = write(tmp_path / "seed1.json", 1,
                  {"main-vanilla": vanilla(90.5), "main-budget4-a": budget(95.5)})  # fmt: skip
    out, head_path = tmp_path / "cq", tmp_path / "headline.json"
    argv = [seed0, seed1, "--out", str(out), "--headline", str(head_path), "--schedule", "2 ep"]
    assert load_script().main(argv) == 0

    head = json.loads(head_path.read_text())
    assert list(head) == ["schedule", "vanilla_full_test", "best", "scratch",
                          "baseline_vanilla_bn"]  # fmt: skip
    assert head["vanilla_full_test"] == 94.0  # not seed 1's 90.5
    assert head["best"] == {"config": "budget4-a", "criterion": "cosine", "repair": "bn", "k": 4,
                            "macs_fraction": 0.52, "test": 93.1}  # fmt: skip
    assert head["scratch"] == {"2": 93.0, "4": 93.0, "6": 92.0}
    assert head["baseline_vanilla_bn"]["4"] == 74.0

    merged = json.loads(out.with_suffix(".json").read_text())
    assert set(merged["other_seed_results"]) == {"1"}
    assert merged["results"]["main-vanilla"]["sweeps"]["cosine/bn"]["points"][0][
        "test_accuracy"] == 94.0  # fmt: skip
    assert [s["file"] for s in merged["sources"]] == ["seed0.json", "seed1.json"]
    targets = merged["targets"]
    assert [targets[t]["verdict"] for t in ("T1", "T2", "T3")] == ["met", "met", "not met"]
    assert [r["verdict"] for r in targets["T3"]["rows"]] == ["met", "met", "not met"]
    assert targets["T3"]["rows"][2]["lacoot"]["config"] == "paper"  # 80.0 beats 73.1 at k = 6
    assert targets["T3"]["rows"][1]["aimed"]["config"] == "budget4-a"

    md = out.with_suffix(".md").read_text()
    main_part, other = md.split("## Other seeds")[0], md.split("## Other seeds")[1]
    assert "95.50" not in main_part and "90.50" not in main_part  # seed 1's full models
    assert "| budget4-a | 93.50 | 93.40 (cosine/bn) |" in main_part
    other = other.split("## Every model")[0]
    assert "| vanilla | **mean** | **92.25** |" in other  # (94 + 90.5) / 2
    assert "| budget4-a | **mean** | **94.50** | **94.30** | **94.10** |" in other
    assert "| budget4-a | spread | 2.00 |" in other
    assert "**T1, " in md and ": met.**" in md and ": not met.**" in md
    assert out.with_suffix(".png").stat().st_size > 0

    # the merged JSON read back alone gives the same report: new results add to committed ones
    again, head_again = tmp_path / "again", tmp_path / "headline_again.json"
    argv = [str(out.with_suffix(".json")), "--out", str(again), "--headline", str(head_again),
            "--schedule", "2 ep"]  # fmt: skip
    assert load_script().main(argv) == 0
    assert json.loads(again.with_suffix(".json").read_text()) == merged
    assert again.with_suffix(".md").read_text() == md
    assert json.loads(head_again.read_text()) == head


def test_headline_prefers_the_shallower_collapse_and_target_1_keeps_to_the_budget() -> None:
    """At equal k the headline rule takes the BN-repaired collapse (52% of the MACs) over the
    linear patch (53%, a layer put back) when both are within the band, whatever their
    validation order; the patch only when it alone is. With a 52.5% budget target 1 then finds
    the BN collapse, or nothing."""
    script = load_script()
    script.MACS_TARGET = 0.525

    def acc(top: float) -> Callable[[int], float]:
        return lambda k: top if k <= 4 else 50.0

    results = {"main-vanilla": vanilla(94.0),
               "main-x": model("x", bn=acc(93.5), linear=acc(93.6), none=acc(93.0))}  # fmt: skip
    head = script.headline(results, "2 ep")
    assert (head["best"]["repair"], head["best"]["macs_fraction"]) == ("bn", 0.52)
    t1 = script.target_1(results, head)
    assert (t1["chosen"]["repair"], t1["chosen"]["k"], t1["chosen"]["test"]) == ("bn", 4, 93.5)
    assert t1["verdict"] == "met"  # 93.5 >= 94.0 - 1

    results["main-x"] = model("x", bn=acc(92.0), linear=acc(93.6), none=acc(91.0))
    head = script.headline(results, "2 ep")  # BN 2 validation points below: out of the band
    assert (head["best"]["repair"], head["best"]["k"], head["best"]["macs_fraction"]) == (
        "linear", 4, 0.53)  # fmt: skip
    t1 = script.target_1(results, head)
    assert t1["chosen"] is None and t1["verdict"] == "not met"


def test_screening_ranks_configurations_on_validation_at_select_k() -> None:
    """Vanilla first whatever its accuracy, then the LaCoOT models by validation accuracy at
    k = 4; each order's figure is that order's validation-best repair."""
    script = load_script()

    def flat(top: float) -> Callable[[int], float]:
        return lambda k: top - k

    weak = model("rel-all-0.1", bn=flat(80.0), linear=flat(81.0), none=flat(70.0))
    strong = model("raw-tgt4-1", bn=flat(90.0), linear=flat(89.0), none=flat(85.0))
    strong["targets"] = ["b0", "b1", "b2", "b3"]
    results = {"screen-rel-all-0.1": weak, "screen-raw-tgt4-1": strong,
               "screen-vanilla": vanilla(91.0), "main-vanilla": vanilla(94.0)}  # fmt: skip
    rows = script.screening(results)
    assert [r["config"] for r in rows] == ["vanilla", "raw-tgt4-1", "rel-all-0.1"]
    top = rows[1]
    assert top["full"] == 85.0  # k = 0 is the unrepaired full model
    assert (top["at_k"]["4"]["repair"], top["at_k"]["4"]["test"]) == ("bn", 86.0)
    assert top["unrepaired"]["test"] == 81.0
    assert top["by_order"]["cosine"]["repair"] == "bn"
    assert rows[2]["by_order"]["cosine"] == rows[2]["at_k"]["4"]  # linear wins: 77.0
    assert rows[2]["at_k"]["4"]["test"] == 77.0
    md = "\n".join(script.md_screening(rows))
    assert "## Screening (2 epochs)" in md
    assert "| raw-tgt4-1 | b0, b1, b2, b3 | 85.00 |" in md
    assert "| rel-all-0.1 | all |" in md
    assert script.md_screening([]) == []
