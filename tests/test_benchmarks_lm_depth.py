"""``benchmarks/lm_depth.py`` runs end to end at tiny sizes (random Llama, generated text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_depth.py"


def test_lm_depth_smoke(tmp_path: Path) -> None:
    args = ["--smoke", "--depths", "1", "2", "--target-depth", "2", "--seq-len", "24",
            "--calib-seqs", "4", "--val-seqs", "4", "--test-seqs", "2", "--prompts", "4",
            "--new-tokens", "3", "--batch-size", "4", "--finetune-steps", "2",
            "--finetune-depth", "2", "--distill-weight", "0.5", "--threads", "1",
            "--out", str(tmp_path / "lm")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                         env=env, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "lm.json").read_text())
    rows = result["rows"]
    assert set(rows) == {"shortgpt", "angular", "replaceme", "msw", "msw_rel", "lacoot_best",
                         "lacoot_finetune", "heal", "dense_finetune", "lacoot_finetune_kd",
                         "heal_kd"}  # fmt: skip
    assert set(rows["angular"]) == {"1", "2"}
    layers = [int(n.rsplit(".", 1)[1]) for n in rows["angular"]["2"]["removed"]]
    assert layers[1] == layers[0] + 1  # a window of consecutive layers
    best = rows["lacoot_best"]["2"]
    candidates = result["lacoot_candidates"]["2"]
    assert best["choice"] == min(candidates, key=candidates.get)  # chosen on validation
    for row in ("heal", "lacoot_finetune", "heal_kd", "lacoot_finetune_kd"):
        assert rows[row]["2"]["removed"] == best["removed"], row
    assert "distilled (w 0.5, T 1.0)" in rows["heal_kd"]["2"]["choice"]
    assert rows["heal_kd"]["2"]["test_ppl"] != rows["heal"]["2"]["test_ppl"]  # the teacher acts
    assert rows["msw"]["2"]["params"] < result["dense"]["params"]
    assert rows["msw"]["2"]["latency_vs_dense"] > 0 and result["latency"]["batch"] == 1
    assert rows["dense_finetune"]["2"]["params"] == result["dense"]["params"]
    assert set(result["dense"]["test_ppl"]) == {"fortunes", "jargon", "debian-reference", "bible"}
    t = result["targets"]
    assert t["hf_roundtrip"] is True and t["depth"] == 2
    assert t["hand_reference_continuations_equal"] is True
    assert isinstance(t["beats_shortgpt"], bool) and isinstance(t["finetune_beats_heal"], bool)
    assert isinstance(t["finetune_kd_beats_heal_kd"], bool)
    assert (tmp_path / "lm.md").read_text().startswith("# Layer removal")
