"""``lacoot train|run --init PATH`` and ``--model timm:NAME`` / ``torchvision:NAME``, through the
command in process (a stand-in timm module in ``sys.modules``: the real libraries are not needed)
and in a subprocess for the real import failure."""

from __future__ import annotations

import hashlib
import sys

import pytest
import torch
from _cli import lacoot_cmd
from test_model_source import TinyNet, fake_timm

from lacoot import cli
from lacoot.checkpoint import load_checkpoint

TRAIN = ["--batch-size", "32", "--no-progress", "--val-fraction", "0.25", "--target-macs", "1"]


@pytest.fixture
def in_work(work, monkeypatch, tmp_path):
    """Run the command in a folder of its own on ``work``'s tiny Fashion-MNIST, with the
    stand-in timm importable."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LACOOT_DATA", str(work / "data"))
    monkeypatch.setitem(sys.modules, "timm", fake_timm())
    return tmp_path


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _init_weights(path, fmt: str) -> dict[str, torch.Tensor]:
    """Weights of a TinyNet for Fashion-MNIST (1 channel, 10 classes), far from a fresh one's."""
    torch.manual_seed(123)
    weights = {k: torch.randn_like(v) for k, v in TinyNet(10, 1).state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save(weights, path)
    return weights


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_train_starts_from_init_and_records_its_sha256(in_work, fmt):
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    init = in_work / f"init_{fmt}.{fmt}"
    weights = _init_weights(init, fmt)
    out = f"init_{fmt}"
    code = cli.main(["train", "--model", "timm:tinynet", "--init", str(init), "--epochs", "1",
                     "--lr", "1e-9", "--out", out, *TRAIN])  # fmt: skip
    assert code == 0
    state = load_checkpoint(in_work / out / "checkpoint.pt")
    assert state["init"] == {"path": str(init), "format": "safetensors" if fmt == "safetensors"
                             else "state_dict", "sha256": _sha256(init)}  # fmt: skip
    assert state["model_spec"]["name"] == "timm:tinynet"
    for key in ("stem.weight", "units.0.conv.weight", "head.weight"):  # lr 1e-9: still the init
        torch.testing.assert_close(state["model"][key], weights[key], rtol=0, atol=1e-6)


def test_init_from_a_lacoot_checkpoint_and_a_timm_run_collapses(in_work, capsys):
    first = ["train", "--model", "timm:tinynet", "--epochs", "1", "--lr", "0.05", *TRAIN]
    assert cli.main([*first, "--out", "base"]) == 0
    base = load_checkpoint(in_work / "base" / "checkpoint.pt")
    code = cli.main(["run", "--model", "timm:tinynet", "--init", "base/checkpoint.pt", "--epochs",
                     "1", "--lr", "1e-9", "--out", "again", "--blocks", "1", "--repair", "none",
                     "--compare", "--latency-repeats", "2", *TRAIN])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    state = load_checkpoint(in_work / "again" / "checkpoint.pt")
    assert state["init"]["format"] == "lacoot checkpoint"
    torch.testing.assert_close(state["model"]["head.weight"], base["model"]["head.weight"],
                               rtol=0, atol=1e-6)  # fmt: skip
    import lacoot

    shallow = lacoot.load(in_work / "again" / "shallow.pt")  # rebuilt by the stand-in timm
    assert len(shallow.units) == 1


def test_init_that_does_not_fit_names_the_keys(in_work, capsys):
    weights = TinyNet(10, 1).state_dict()
    weights["extra.weight"] = weights.pop("head.weight")
    torch.save(weights, in_work / "bad.pt")
    code = cli.main(["train", "--model", "timm:tinynet", "--init", "bad.pt", "--epochs", "1",
                     "--out", "bad", *TRAIN])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--init 'bad.pt' does not fit model 'timm:tinynet'" in err[0]
    assert (
        "1 weights missing: head.weight" in err[0]
        and "1 weights unexpected: extra.weight" in err[0]
    )
    assert not (in_work / "bad").exists()  # refused before anything is written
    torch.save({"not": "weights"}, in_work / "odd.pt")
    assert cli.main(["train", "--model", "timm:tinynet", "--init", "odd.pt", "--out", "odd",
                     *TRAIN]) == 2  # fmt: skip
    assert "holds neither a lacoot checkpoint nor a state_dict" in capsys.readouterr().err
    assert cli.main(["train", "--init", "missing.pt", "--out", "odd", *TRAIN]) == 2
    assert "--init 'missing.pt' does not exist" in capsys.readouterr().err


def test_torchvision_that_cannot_be_imported_is_one_line(work):
    """The real torchvision here: missing, or a build that does not fit torch (RuntimeError);
    where it imports, Fashion-MNIST's one channel is refused. Exit 2, one line, either way."""
    proc = lacoot_cmd("train", "--model", "torchvision:resnet18", "--out", "tv_refused", *TRAIN,
                      cwd=work, check=2)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lacoot: error: --model 'torchvision:resnet18'")
    assert "pip install torchvision" in lines[0] or "3-channel images" in lines[0]


def test_train_from_a_collapsed_model_keeps_its_architecture(in_work, trained, capsys):
    """``--init shallow.pt`` (a collapsed model file, linear patches included) trains the
    collapsed architecture (heal; with ``--teacher``, distillation), and that checkpoint scores,
    collapses further and exports like any other: the exported file computes the trained shallow
    model without the block removed by hand."""
    from _cli import NARROW

    import lacoot
    from lacoot.pipeline import model_from_checkpoint

    common = ["--no-progress", "--batch-size", "32", *NARROW]
    assert cli.main(["export", str(trained), "--blocks", "layer1.1,layer3.2", "--repair",
                     "linear", "--report", "none", "--output", "shallow.pt"]) == 0  # fmt: skip
    shallow = lacoot.load(in_work / "shallow.pt")
    code = cli.main(["train", "--init", "shallow.pt", "--epochs", "1", "--lr", "1e-9", "--lam",
                     "0", "--teacher", str(trained), "--distill-weight", "0.9", "--out", "heal",
                     *common])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    state = load_checkpoint(in_work / "heal" / "checkpoint.pt")
    assert [s["removed"] for s in state["model_spec"]["shallow"]] == [["layer1.1", "layer3.2"]]
    model, blocks, _ = model_from_checkpoint(state, "heal", torch.device("cpu"))
    params = dict(shallow.named_parameters())
    assert [n for n, _ in model.named_parameters()] == list(params)  # the same architecture
    for name, p in model.named_parameters():  # lr 1e-9: where it started
        torch.testing.assert_close(p, params[name], rtol=0, atol=1e-6)
    assert not {"layer1.1", "layer3.2"} & {b.name for b in blocks}  # stand-ins are no blocks
    gone = blocks[0].name
    assert cli.main(["export", "heal/checkpoint.pt", "--blocks", gone, "--repair", "none",
                     "--report", "none", "--output", "again.pt"]) == 0  # fmt: skip
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = lacoot.remove_blocks(model, [gone]).eval()(x)
        torch.testing.assert_close(lacoot.load(in_work / "again.pt")(x), want)
    code = cli.main(["train", "--model", "resnet56", "--init", "shallow.pt", "--epochs", "1",
                     "--out", "other", *common])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "is a collapsed {'name': 'resnet20'" in err and "'name': 'resnet56'" in err
