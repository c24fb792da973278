"""The README's usage example runs as written and does what it says."""

from __future__ import annotations

import re
from pathlib import Path

import torch

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
