"""benchmarks/gpu_check.py: its CPU fallback runs and writes every section of its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_cpu_fallback_writes_its_json(tmp_path: Path) -> None:
    pytest.importorskip("ot")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "gpu_check.py", "--quick", "--device", "cpu", "--out", str(out)],
        cwd=BENCHMARKS, env=env, check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["meta"]["device"] == "cpu" and result["meta"]["quick"] is True
    rows = {r["variant"]: r for r in result["penalty"]["rows"]}
    assert rows["no penalty"]["median_ms"] > 0 and len(rows) == 6
    assert all(r["ratio_of_medians"] > 0 for v, r in rows.items() if v != "no penalty")
    assert result["epoch"]["images_per_s"] > 0
    for name in ("resnet18", "resnet56"):
        eager = result["latency"][name]["eager"]
        assert eager["rows"][0]["k"] == 0 and eager["rows"][-1]["macs_ratio"] < 0.5
        ort = result["latency"][name]["onnxruntime"]
        assert isinstance(ort, str) or (ort["macs_ratio"] <= 0.47 and ort["8"]["speedup"] > 0)
    lm = result["language_model"]
    assert isinstance(lm, str) or (len(lm["removed"]) == 2 and lm["speedup"] > 0
                                   and lm["devices"] == ["cpu"])  # fmt: skip
