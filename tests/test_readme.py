"""The README and the guides say what is true: every Python snippet runs, every result figure is
generated from the committed JSON it cites, and the reference covers every option and name."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

import lacoot

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# language-models.md loads models from the Hugging Face Hub: tests/test_integrations_hf.py tests it
GUIDES = sorted(p for p in (ROOT / "docs" / "guide").glob("*.md") if p.name != "language-models.md")


def gen_docs() -> Any:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snippets(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run(code: str, where: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(where), "exec"), namespace)
    return namespace


def test_readme_library_example_runs_and_does_what_it_says() -> None:
    ns = run(next(s for s in snippets(README) if "MSWRegularizer" in s), README)
    model, shallow, repaired = ns["model"], ns["shallow"], ns["repaired"]
    assert len(ns["blocks"]) == 7
    assert set(ns["scores"]) == {b.name for b in ns["blocks"]}
    assert len(ns["sweep"].points) == 8
    x = torch.randn(3, 1, 28, 28)
    for net in (shallow, repaired):
        out = net.eval()(x)
        assert out.shape == (3, 10) and torch.isfinite(out).all()
    n_full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in shallow.parameters()) <= n_full


@pytest.mark.parametrize("path", [README, *GUIDES], ids=lambda p: p.name)
def test_every_python_snippet_runs(path: Path) -> None:
    for code in snippets(path):
        run(code, path)


def test_lacoot_repair_is_callable_and_still_the_module(setup) -> None:
    from lacoot.repair import linear_patch, repair  # the module's names still import

    model, blocks, loader = setup
    names = [blocks[0].name]
    by_call = lacoot.repair(model, names, loader, method="linear", n_samples=64)
    by_function = repair(model, names, loader, method="linear", n_samples=64)
    x = loader[0][0]
    torch.testing.assert_close(by_call.eval()(x), by_function.eval()(x))
    assert lacoot.repair.linear_patch is linear_patch
    for name in ("repair", "run_all", "RunConfig", "CollapseConfig", "TrainConfig"):
        assert name in lacoot.__all__
    assert lacoot.__all__ == sorted(lacoot.__all__)


def test_readme_results_are_generated_from_the_json_they_cite() -> None:
    gd = gen_docs()
    text = README.read_text()
    assert gd.readme_text() == text, "README results are stale: run python scripts/gen_docs.py"
    block = text[text.index(gd.START) : text.index(gd.END)]
    for cited in re.findall(r"\]\((docs/[^)]+\.json)\)", block):
        assert (ROOT / cited).is_file(), f"README cites {cited}, which does not exist"


@pytest.mark.parametrize("missing", [None, "paper"])
def test_readme_results_say_in_progress_until_every_model_has_every_seed(
    monkeypatch: pytest.MonkeyPatch, missing: str | None
) -> None:
    gd = gen_docs()
    h = json.loads(gd.NEW.read_text())
    h["seeds"] = {job: list(gd.SEEDS) for job in gd.LABELS if job != "vanilla_best_repair"}
    if missing:
        h["seeds"][missing] = gd.SEEDS[:1]
    load = gd._load
    monkeypatch.setattr(gd, "_load", lambda path: h if path == gd.NEW else load(path))
    block = gd.readme_block()
    assert ("in progress" in block) == bool(missing)
    assert "python benchmarks/headline.py" in block  # the one command, either way
    rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + sum(1 for job in gd.LABELS if h["rows"].get(job))  # header + rows


def test_no_hand_written_figures_outside_the_generated_results() -> None:
    gd = gen_docs()
    text = README.read_text()
    outside = text[: text.index(gd.START)] + text[text.index(gd.END) :]
    outside = re.sub(r"```.*?```", "", outside, flags=re.S)
    figures = re.findall(r"\d+(?:\.\d+)?\s?%|\d+\.\d+ points?\b", outside)
    assert not figures, f"README figures outside the generated results: {figures}"
    assert len(text.splitlines()) <= 160


def test_reference_covers_every_option_and_public_name() -> None:
    from lacoot.cli import build_parser

    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and a.choices)
    for name, p in sub.choices.items():
        assert f"## `lacoot {name}`" in cli
        for action in p._actions:
            for flag in action.option_strings:
                assert flag in cli, f"{flag} of lacoot {name} missing: run scripts/gen_docs.py"
    api = (ROOT / "docs" / "reference" / "api.md").read_text()
    for name in lacoot.__all__:
        assert f"## `lacoot.{name}`" in api, f"{name} missing: run scripts/gen_docs.py"


def test_your_model_guide_language_model_collapses_exactly() -> None:
    guide = ROOT / "docs" / "guide" / "your-model.md"
    ns = run(next(s for s in snippets(guide) if "class TinyGPT" in s), guide)
    assert [b.name for b in ns["blocks"]] == [f"layers.{i}" for i in range(4)]
    sweep = ns["lm_sweep"]
    assert sweep.metric == "negative_perplexity" and len(sweep.points) == 5
    assert all(p.val_accuracy < -1 for p in sweep.points)  # minus a perplexity
    small, lm = ns["small"], ns["lm"]
    assert len(small.layers) == 2  # deleted from the ModuleList: checked to compute the same
    ids = ns["data"][1][0]
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(ids), lacoot.identity_blocks(lm, sweep.points[2].removed).eval()(ids)
        )
