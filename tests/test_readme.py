"""The README's usage example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import lacoot

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    model, shallow = namespace["model"], namespace["shallow"]
    assert len(namespace["blocks"]) == 7
    assert set(namespace["scores"]) == {b.name for b in namespace["blocks"]}
    out = shallow(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    n_full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in shallow.parameters()) <= n_full


def test_readme_bring_your_own_model_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class TinyGPT" in b)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert [b.name for b in namespace["blocks"]] == [f"layers.{i}" for i in range(4)]
    sweep = namespace["lm_sweep"]
    assert sweep.metric == "negative_perplexity" and len(sweep.points) == 5
    assert all(p.val_accuracy < -1 for p in sweep.points)  # minus a perplexity
    small, lm = namespace["small"], namespace["lm"]
    assert len(small.layers) == 2  # deleted from the ModuleList: checked to compute the same
    ids = namespace["data"][1][0]
    removed = sweep.points[2].removed
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(ids), lacoot.identity_blocks(lm, removed).eval()(ids)
        )
