"""Every benchmark script runs at tiny sizes (so none rots unnoticed), and the headline's
aggregation chooses on validation, averages over seeds and refuses mixed environments.

``collapse_quality_report.py``, ``gpu_check.py`` and a script ``NAME.py`` with a
``tests/test_benchmarks_NAME.py`` have their own tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _data import write_idx_dataset

import lacoot

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
TESTED_ELSEWHERE = {"collapse_quality_report.py", "gpu_check.py", "lm_depth.py"}


def load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("fmnist"), n_train=240, n_test=64)


SMOKE = {  # script -> arguments at tiny sizes (the output stem is appended)
    "collapse_latency.py": ["--models", "resnet20", "--batch", "2", "--repeats", "1",
                            "--threads", "1"],
    "data_speed.py": ["--batches", "2", "--repeats", "1", "--workers", "0", "--batch-size", "16"],
    "flatten_ab.py": ["--repeats", "1", "--warmup", "0", "--threads", "1", "--batch-size", "4"],
    "msw_speed.py": ["--sizes", "16x64", "--repeats", "1", "--warmup", "0", "--warm-steps", "1"],
    "speed.py": ["--models", "resnet20", "--batch-size", "4", "--latency-batch", "2",
                 "--batches", "1", "--repeats", "2", "--warmup", "1", "--lazy", "2",
                 "--threads", "1"],
    "train_speed.py": ["--images", "64", "--rounds", "1", "--skip-compile", "--batch-size", "32",
                       "--threads", "1"],
}  # fmt: skip


def test_every_script_has_a_smoke_test() -> None:
    covered = set(SMOKE) | {"collapse_quality.py", "headline.py"} | TESTED_ELSEWHERE
    covered |= {s for s in SCRIPTS if (ROOT / "tests" / f"test_benchmarks_{s[:-3]}.py").is_file()}
    assert set(SCRIPTS) <= covered, f"no smoke test for {sorted(set(SCRIPTS) - covered)}"


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_script_runs_at_tiny_sizes(script: str, data: Path, tmp_path: Path) -> None:
    pytest.importorskip("ot") if script in ("msw_speed.py", "speed.py") else None
    args = [*SMOKE[script], "--out", str(tmp_path / "out")]
    if script == "data_speed.py":
        args += ["--data-dir", str(data)]
    bench(script, *args, cwd=tmp_path)
    result = json.loads((tmp_path / "out.json").read_text())
    assert result  # a result written, with its Markdown beside it
    assert (tmp_path / "out.md").read_text().strip()


def test_collapse_quality_uses_the_pipeline_sweep(data: Path, tmp_path: Path) -> None:
    bench("collapse_quality.py", "--only", "main-vanilla", "main-scratch-k2", "--main-epochs", "1",
          "--scratch-k", "2", "--model-args", '{"widths": [4, 8, 8]}', "--data-dir", str(data),
          "--orders", "msw", "--calib", "32", "--jobs", "1", "--threads", "1",
          "--device", "cpu", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "cq"),
          cwd=tmp_path)  # fmt: skip
    results = json.loads((tmp_path / "cq.json").read_text())["results"]
    vanilla, scratch = results["main-vanilla"], results["main-scratch-k2"]
    assert set(vanilla["sweeps"]) == {"msw/bn", "msw/linear"}  # unrepaired figures inside
    assert set(vanilla["scores"]) == set(vanilla["sweeps"])
    assert scratch["removed"] == ["layer3.2", "layer2.2"]  # deepest stage first
    assert 0 < scratch["params"] < scratch["full_params"]  # parameters recorded
    assert vanilla["train_seconds"] == round(sum(e["seconds"] for e in vanilla["history"]), 1) > 0


@pytest.fixture(scope="module")
def headline_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("headline")
    bench("headline.py", "--smoke", "--threads", "1", "--data-dir", str(data), "--work",
          str(tmp / "work"), "--out", str(tmp / "out"), cwd=tmp)  # fmt: skip
    return tmp


def test_headline_smoke_writes_every_job_and_the_headline(headline_run: Path) -> None:
    out = headline_run / "out"
    jobs = {p.stem for p in (out / "jobs").glob("*.json")}
    assert jobs == {"vanilla-s0", "lacoot_default-s0", "scratch_same_arch-s0", "paper-s0",
                    "scratch_deepest_first-s0"}  # fmt: skip
    lac = json.loads((out / "jobs" / "lacoot_default-s0.json").read_text())
    assert set(lac["sweeps"]) == {f"{o}/{r}" for o in ("msw",)
                                  for r in ("none", "bn", "linear")}  # fmt: skip
    assert lac["run_config"]["lam"] == lacoot.TrainConfig().lam  # lacoot run's defaults
    paper = json.loads((out / "jobs" / "paper-s0.json").read_text())
    assert paper["run_config"]["penalize"] == ["layer3.2", "layer2.2", "layer1.2"]
    assert paper["run_config"]["fade"] == 0 and paper["run_config"]["target_macs"] is None

    h = json.loads((out / "headline.json").read_text())
    assert set(h["environment"]) >= {"machine", "device", "torch", "precision", "commit"}
    assert h["environment"]["precision"] == "float32" and h["seeds"]["vanilla"] == [0]
    assert set(h["rows"]) == {"vanilla", "vanilla_best_repair", "lacoot_default", "paper",
                              "scratch_same_arch", "scratch_deepest_first"}  # fmt: skip
    k = h["reported_k"]
    same = h["rows"]["scratch_same_arch"][0]
    assert same["k"] == k
    lac_row = next(r for r in h["rows"]["lacoot_default"] if r["k"] == k)
    assert sorted(same["blocks"]) == sorted(lac_row["blocks"])  # the architecture LaCoOT keeps
    deep = h["rows"]["scratch_deepest_first"][0]
    deepest_first = ["layer3.2", "layer2.2", "layer1.2", "layer3.1", "layer2.1", "layer1.1"]
    assert sorted(deep["blocks"]) == sorted(deepest_first[:k])
    for rows in h["rows"].values():
        for r in rows:
            assert {"k", "blocks", "params", "macs_fraction", "test_mean", "test_std",
                    "per_seed", "order", "repair"} <= set(r)  # fmt: skip
            assert 0 < r["macs_fraction"] <= 1 and r["params"] > 0
    for name in ("within_1pt_of_vanilla", "near_scratch_same_arch", "above_vanilla_every_k"):
        assert isinstance(h["targets"][name], bool)
    assert "| LaCoOT, `lacoot run` defaults |" in (out / "headline.md").read_text()
    shallow = lacoot.load(out / "models" / "scratch_same_arch-s0.pt")  # the weights reload
    assert sum(p.numel() for p in shallow.parameters()) == same["params"]


def test_headline_resumes_and_refuses_mixed_environments(headline_run: Path) -> None:
    out = headline_run / "out"
    again = bench("headline.py", "--smoke", "--work", str(headline_run / "work"), "--out",
                  str(out), cwd=headline_run)  # fmt: skip
    assert ": start" not in again.stdout  # every job's result found: nothing trained again
    first = json.loads((out / "jobs" / "vanilla-s0.json").read_text())
    (out / "jobs" / "vanilla-s0.json").unlink()  # swept again from its complete checkpoint
    bench("headline.py", "--smoke", "--only", "vanilla", "--work", str(headline_run / "work"),
          "--out", str(out), cwd=headline_run)  # fmt: skip
    second = json.loads((out / "jobs" / "vanilla-s0.json").read_text())
    epochs = round(sum(e["seconds"] for e in second["history"]), 1)
    assert second["train_seconds"] == epochs == first["train_seconds"] > 0  # from the log
    job = out / "jobs" / "paper-s0.json"
    res = json.loads(job.read_text())
    res["environment"]["precision"] = "bfloat16 autocast"
    job.write_text(json.dumps(res))
    refused = bench("headline.py", "--report-only", "--out", str(out), cwd=headline_run,
                    check=False)  # fmt: skip
    assert refused.returncode != 0 and "refusing to merge" in refused.stderr
    assert "precision" in refused.stderr


def fake(job: str, seed: int, val_test: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """A swept result: ``val_test[order/repair]`` gives (val, test) at k = 0, 1."""
    sweeps = {
        key: {"points": [{"k": k, "removed": ["b1"][:k], "params": 100 - 40 * k,
                          "macs": 100 - 50 * k, "val_accuracy": v, "test_accuracy": t}
                         for k, (v, t) in enumerate(pts)]}
        for key, pts in val_test.items()
    }  # fmt: skip
    return {"job": job, "seed": seed, "full_macs": 100, "sweeps": sweeps, "targets": ["b1"],
            "environment": {"machine": "m", "device": "cpu", "torch": "t", "precision": "float32",
                            "commit": "c"},
            "run_config": {"seed": seed, "out": "x", "model": "m", "model_args": {},
                           "dataset": "d", "epochs": 1}}  # fmt: skip


def test_headline_chooses_on_validation_and_averages_over_seeds() -> None:
    hl = load("headline")
    results = [
        fake(
            "lacoot_default",
            s,
            {
                "msw/none": [(90, 90), (80, 99)],  # best test, worse val
                "cosine/bn": [(90, 90), (85, 70 + s)],
            },
        )  # fmt: skip
        for s in (0, 1, 2)
    ]
    results += [fake("vanilla", s, {"msw/none": [(91, 92 + s), (50, 50)]}) for s in (0, 1)]
    h = hl.headline(results)
    row = h["rows"]["lacoot_default"][1]
    assert (row["order"], row["repair"]) == ("cosine", "bn")  # validation decides, not test
    assert row["test_mean"] == 71.0 and row["test_std"] == 1.0
    assert row["macs_fraction"] == 0.5 and row["params"] == 60
    assert h["rows"]["vanilla"][0]["test_mean"] == 92.5 and h["seeds"]["vanilla"] == [0, 1]
    assert h["reported_k"] == 1
    t = h["targets"]
    assert t["within_1pt_of_vanilla"] is False  # compared on the seeds both hold: 0 and 1
    assert t["vs_vanilla"] == {"lacoot": 70.5, "vanilla": 92.5, "gap": -22.0,
                               "macs_fraction": 0.5, "seeds": [0, 1]}  # fmt: skip
    assert t["above_vanilla_every_k"] is True and t["near_scratch_same_arch"] is None
    other = fake("lacoot_default", 0, {"msw/none": [(1, 1), (1, 1)]})
    other["run_config"]["epochs"] = 2
    with pytest.raises(SystemExit, match="other options than its other seeds"):
        hl.headline([other, *results[1:]])


def test_headline_merges_other_cpus_and_lists_them_but_never_other_precisions() -> None:
    hl = load("headline")
    results = [fake("vanilla", s, {"msw/none": [(91, 92), (50, 50)]}) for s in (0, 1)]
    results[1]["environment"]["machine"] = "another CPU"
    h = hl.headline(results)
    assert h["environment"]["machine"] == ["another CPU", "m"]
    assert h["environment"]["machines_per_job"] == {"vanilla-s0": "m", "vanilla-s1": "another CPU"}
    assert "another CPU and m" in hl.markdown(h)
    results[1]["environment"]["torch"] = "other"
    with pytest.raises(SystemExit, match="torch='other'"):
        hl.headline(results)
