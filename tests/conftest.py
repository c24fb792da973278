"""Fixtures shared by several test modules.

- ``setup``: a residual MLP, its blocks and a two-batch loader (criteria and collapse tests);
- ``isolated``: a data environment in which the network is never touched (the URL opener is
  replaced) and only files written by the test are found (``lacoot.data`` tests);
- ``work``, ``trained``, ``uninterrupted``: a folder with tiny Fashion-MNIST files, a model
  trained there by the ``lacoot`` command, and the weights of an uninterrupted resumable run
  (command-line, export and checkpoint tests; built once per session).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _data import write_idx_dataset
from _nets import residual_mlp

import lacoot
from lacoot.data import sources
from lacoot.train import load_checkpoint

# the helpers' assertions get pytest's detailed failure messages, as in a test module
pytest.register_assert_rewrite("_cli")

from _cli import NARROW, RESUMABLE, lacoot_cmd  # noqa: E402


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = residual_mlp()
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    loader = [(x[:32], y[:32]), (x[32:], y[32:])]
    return model, lacoot.find_blocks(model, x[:4]), loader


@pytest.fixture()
def isolated(monkeypatch, tmp_path):
    """No LACOOT_DATA, an empty system folder and a private cache; the network is forbidden."""
    monkeypatch.delenv("LACOOT_DATA", raising=False)
    monkeypatch.setenv("LACOOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")

    def no_network(*a, **k):
        raise AssertionError("the network must not be used in tests")

    monkeypatch.setattr(sources, "_urlopen", no_network)
    return tmp_path


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_idx_dataset(root / "data", n_train=224, n_test=64)
    return root


@pytest.fixture(scope="session")
def trained(work: Path) -> Path:
    lacoot_cmd(
        "train", "--epochs", "2", "--out", "run", "--lr", "0.05", "--batch-size", "32",
        "--no-progress", *NARROW, cwd=work,
    )  # fmt: skip
    return work / "run" / "checkpoint.pt"


@pytest.fixture(scope="session")
def uninterrupted(work: Path) -> dict[str, torch.Tensor]:
    lacoot_cmd(*RESUMABLE, "--out", "full", cwd=work)
    return load_checkpoint(work / "full" / "checkpoint.pt")["model"]
