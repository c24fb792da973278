"""``benchmarks/finetune.py`` at tiny sizes: from a trained model, the LaCoOT fine-tune, heal
and distillation jobs each reach the budget, choose their removal on validation, and the report
states its targets from the jobs present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cli import NARROW, lacoot_cmd
from _data import write_idx_dataset
from test_benchmarks import bench, load


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("finetune")
    write_idx_dataset(tmp / "data", n_train=240, n_test=64)
    lacoot_cmd("train", "--lam", "0", "--epochs", "1", "--batch-size", "32", "--no-progress",
               *NARROW, "--out", "pre", cwd=tmp)  # fmt: skip
    bench("finetune.py", "--smoke", "--threads", "1", "--pretrained", "pre/checkpoint.pt",
          "--data-dir", str(tmp / "data"), "--headline", "none", "--work", "work", "--out",
          "out/finetune", cwd=tmp)  # fmt: skip
    return tmp


def test_finetune_smoke_writes_every_method_within_the_budget(finetuned: Path) -> None:
    jobs = {p.stem: json.loads(p.read_text()) for p in (finetuned / "out/finetune/jobs").glob("*")}
    assert set(jobs) == {"lacoot-e1-s0", "lacoot_fade0.9-e1-s0", "lacoot_fade0.9_kd-e1-s0",
                         "heal-e1-s0", "kd-e1-s0", "scratch-s0"}  # fmt: skip
    scratch = jobs.pop("scratch-s0")  # the fine-tunes' architecture, from scratch
    assert scratch["removed"] == jobs["heal-e1-s0"]["chosen"]["removed"]
    assert scratch["params"] == jobs["heal-e1-s0"]["params"] and len(scratch["history"]) == 1
    assert jobs["lacoot_fade0.9-e1-s0"]["fade"] == 0.9 and jobs["lacoot-e1-s0"]["fade"] == 0.6
    assert jobs["lacoot_fade0.9_kd-e1-s0"]["distill_weight"] == 0.9
    assert not jobs["lacoot_fade0.9-e1-s0"]["distill_weight"]
    for job in jobs.values():
        assert job["macs"] <= 0.55 * job["full_macs"] and job["params"] > 0
        best = max(c["val_accuracy"] for c in job["candidates"])
        assert job["chosen"]["val_accuracy"] == best  # chosen on validation
        assert len(job["history"]) == 1  # E = 1 epoch of fine-tuning
    assert {c["order"] for c in jobs["lacoot-e1-s0"]["candidates"]} >= {"faded", "msw"}
    assert jobs["heal-e1-s0"]["chosen"] == jobs["kd-e1-s0"]["chosen"]  # the same start
    report = json.loads((finetuned / "out/finetune.json").read_text())
    assert report["targets"]["within_half_point"] is None  # no E = 2 job at this size
    md = (finetuned / "out/finetune.md").read_text()
    assert "| removal, then distillation | 1 | [0] |" in md
    assert "| same architecture from scratch (finetune job) | 15 | [0] |" in md


def test_finetune_scratch_is_the_fine_tunes_architecture_never_another(tmp_path: Path) -> None:
    ft = load("finetune")
    head, own = tmp_path / "headline", tmp_path / "jobs"
    head.mkdir()
    own.mkdir()

    def write(path: Path, removed: list[str], test: float) -> None:
        path.write_text(json.dumps({"removed": removed, "test_accuracy": test, "macs": 5,
                                    "params": len(removed),
                                    "history": [{"seconds": 1.0}]}))  # fmt: skip

    write(head / "scratch_same_arch-s0.json", ["a", "b"], 90.0)
    write(head / "scratch_same_arch-s1.json", ["a", "c"], 91.0)  # another net than s1's
    assert [r["source"] for r in ft.scratch_rows(head, own, {0: ["b", "a"], 1: ["a", "b"]})] == [
        "headline"]  # fmt: skip
    write(own / "scratch-s1.json", ["b", "a"], 92.0)
    rows = ft.scratch_rows(head, own, {0: ["b", "a"], 1: ["a", "b"]})
    assert [(r["seed"], r["source"], r["test_accuracy"]) for r in rows] == [
        (0, "headline", 90.0), (1, "finetune", 92.0)]  # fmt: skip


def test_finetune_targets_compare_on_the_seeds_every_method_holds() -> None:
    ft = load("finetune")

    def job(m: str, s: int, test: float, val: float = 90.0) -> dict:
        return {"method": m, "epochs": 2, "seed": s, "test_accuracy": test, "macs": 50,
                "full_macs": 100, "vanilla": {"test_accuracy": 93.0}, "params": 10,
                "chosen": {"val_accuracy": val, "order": "o", "repair": "r", "removed": []},
                "history": [{"seconds": 1.0}], "fade": 0.6}  # fmt: skip

    results = [job("lacoot", 0, 92.6), job("heal", 0, 92.0), job("kd", 0, 92.8),
               job("lacoot", 1, 92.2)]  # seed 1 has no heal or kd: left out  # fmt: skip
    t = ft.targets(results, [{"seed": 0, "test_accuracy": 92.9}])
    assert t["seeds"] == [0] and t["lacoot"] == 92.6 and t["scratch"] == 92.9
    assert t["within_half_point"] is True and t["beats_heal"] is True and t["beats_kd"] is False


def test_finetune_reports_the_lacoot_variant_chosen_on_validation() -> None:
    ft = load("finetune")
    base = {"epochs": 2, "seed": 0, "macs": 50, "full_macs": 100, "params": 10,
            "vanilla": {"test_accuracy": 93.0}}  # fmt: skip

    def job(m: str, fade: float | None, val: float, test: float, secs: float = 1.0) -> dict:
        return base | {"method": m, "fade": fade, "test_accuracy": test,
                       "history": [{"seconds": secs}, {"seconds": secs}],
                       "chosen": {"val_accuracy": val, "order": "o", "repair": "r",
                                  "removed": []}}  # fmt: skip

    results = [job("lacoot", 0.6, 91.0, 93.5), job("lacoot", 0.9, 92.0, 92.0, secs=30.0),
               job("heal", None, 91.5, 92.5), job("kd", None, 91.5, 92.1)]  # fmt: skip
    results[1]["train_seconds"] = 0.0  # what a job reusing its trained checkpoint once recorded
    rep = ft.report(results, [])
    lac = next(r for r in rep["rows"] if r["method"] == "lacoot")
    assert lac["test_mean"] == 92.0 and lac["how"] == ["o/r, fade 0.9"]  # validation decides
    assert lac["train_seconds"] == 60.0  # its two epochs from the log, not the process's time
    assert rep["targets"]["beats_heal"] is False
    assert sorted(v["chosen"] for v in rep["lacoot_variants"]) == [False, True]
