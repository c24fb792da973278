"""The shallow model saved and exported (lacoot.export): pt, TorchScript and ONNX files compute
what the collapsed model computes, and a repaired model reloads with its patches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _cli import lacoot_cmd

import lacoot
from lacoot.pipeline import model_from_checkpoint
from lacoot.train import load_checkpoint


@pytest.mark.parametrize("fmt", ["pt", "torchscript", "onnx"])
def test_export_round_trip(trained: Path, work: Path, fmt: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
    target = work / f"shallow.{fmt}"
    out = lacoot_cmd(
        "export", str(trained), "--blocks", "layer1.1,layer3.2", "--format", fmt,
        "--output", str(target), "--repair", "none", cwd=work,
    ).stdout  # fmt: skip
    assert target.is_file()
    assert ("batch norm folded" in out) == (fmt != "pt")  # inference formats fold by default
    assert "M MACs per sample" in out and "ms per sample" in out
    written = target.read_bytes()
    again = lacoot_cmd(
        "export", str(trained), "--blocks", "1", "--format", fmt, "--output", str(target),
        cwd=work, check=2,
    )  # fmt: skip
    assert "already exists; pass --overwrite" in again.stderr
    assert target.read_bytes() == written
    state = load_checkpoint(trained)
    model, _, _ = model_from_checkpoint(state, trained, torch.device("cpu"))
    expected_model = lacoot.remove_blocks(model, ["layer1.1", "layer3.2"]).eval()
    pixels = torch.rand(4, 1, 28, 28)  # pixel / 255
    pre = state["preprocessing"]
    x = (pixels - pre["mean"][0]) / pre["std"][0]
    # the inference formats normalise their input themselves (their first layer); a pt file
    # is the zoo model, which takes normalised input; the sidecar says which
    sidecar = json.loads(target.with_name(target.name + ".json").read_text())
    assert sidecar["input"]["mean"] == pre["mean"] and sidecar["input"]["std"] == pre["std"]
    assert sidecar["output"]["class_names"] == pre["class_names"]
    assert ("first layer" in sidecar["input"]["normalization_applied"]) == (fmt != "pt")
    feed = x if fmt == "pt" else pixels
    with torch.no_grad():
        want = expected_model(x)
        if fmt == "pt":
            got = lacoot.load(target)(feed)
        elif fmt == "torchscript":
            got = torch.jit.load(str(target))(feed)
        else:
            ort = pytest.importorskip("onnxruntime")
            assert "onnxruntime check" in out
            sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
            got = torch.from_numpy(sess.run(None, {"input": feed.numpy()})[0])
    assert got.shape == (4, 10) and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_export_repaired_model_reloads_with_its_patches(trained: Path, work: Path) -> None:
    state = load_checkpoint(trained)
    faded = state["faded"]  # the default training fades its budget's targets out
    kept = [b["name"] for b in state["blocks"] if b["name"] not in faded]
    removed = [kept[-1], *faded[:1]]
    files = {}
    for fmt in ("pt", "torchscript"):
        files[fmt] = work / f"patched.{fmt}"
        lacoot_cmd(
            "export", str(trained), "--blocks", ",".join(removed), "--format", fmt,
            "--output", str(files[fmt]), "--calib-samples", "64", cwd=work,
        )  # fmt: skip
    saved = torch.load(files["pt"], weights_only=True)
    assert faded and saved["patched"] == {kept[-1]: saved["patched"][kept[-1]]}  # linear
    # repair by default, and no patch in place of a block the training faded out
    reloaded = lacoot.load(files["pt"])
    assert isinstance(reloaded.get_submodule(kept[-1]), lacoot.LinearPatch)
    model, _, _ = model_from_checkpoint(load_checkpoint(trained), trained, torch.device("cpu"))
    pixels = torch.rand(4, 1, 28, 28)
    x = (pixels - state["preprocessing"]["mean"][0]) / state["preprocessing"]["std"][0]
    with torch.no_grad():  # the TorchScript file normalises its input itself
        got, traced = reloaded(x), torch.jit.load(str(files["torchscript"]))(pixels)
        plain = lacoot.remove_blocks(model, removed).eval()(x)
    torch.testing.assert_close(got, traced, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the patches and new statistics count


def test_a_model_file_without_a_zoo_specification_is_refused_on_save_and_load(tmp_path) -> None:
    model = lacoot.models.create("resnet20", num_classes=3, in_channels=1, widths=[4, 4, 8])
    with pytest.raises(ValueError, match=r"spec \{\} lacks \['name', 'num_classes'"):
        lacoot.save_model(tmp_path / "m.pt", model, {}, ["layer1.0"])
    assert not (tmp_path / "m.pt").exists()
    torch.save({"kind": "lacoot-model", "format": 1, "model_spec": {}, "removed": [],
                "state_dict": {}}, tmp_path / "bad.pt")  # fmt: skip
    with pytest.raises(ValueError, match="bad.pt.*specification"):
        lacoot.load(tmp_path / "bad.pt")


def test_a_checked_collapse_reloads_with_the_same_function(tmp_path) -> None:
    spec = {"name": "resnet20", "num_classes": 3, "in_channels": 1,
            "kwargs": {"widths": [4, 4, 8]}}  # fmt: skip
    torch.manual_seed(0)
    model = lacoot.models.create(spec["name"], num_classes=3, in_channels=1, **spec["kwargs"])
    x = torch.randn(2, 1, 8, 8)
    shallow = lacoot.collapse(model, ["layer1.1", "layer3.2"], x).eval()
    lacoot.save_model(tmp_path / "s.pt", shallow, spec, ["layer1.1", "layer3.2"])
    torch.testing.assert_close(lacoot.load(tmp_path / "s.pt")(x), shallow(x))


def test_no_fold_bn_keeps_the_batch_norms_of_an_inference_export(trained: Path, work: Path) -> None:
    graphs = {}
    for flag in ("--fold-bn", "--no-fold-bn"):
        target = work / f"kept{flag}.torchscript"
        lacoot_cmd("export", str(trained), "--blocks", "layer1.1", "--format", "torchscript",
                   "--output", str(target), "--repair", "none", flag, cwd=work)  # fmt: skip
        graphs[flag] = str(torch.jit.load(str(target)).inlined_graph)
    assert "batch_norm" in graphs["--no-fold-bn"] and "batch_norm" not in graphs["--fold-bn"]
    err = lacoot_cmd("export", str(trained), "--blocks", "1", "--format", "pt", "--fold-bn",
                     "--output", str(work / "f.pt"), cwd=work, check=2).stderr  # fmt: skip
    assert "fold_bn=True needs an inference format" in err


def test_optimized_torchscript_export_computes_the_collapsed_model(
    trained: Path, work: Path
) -> None:
    target = work / "fast.torchscript"
    out = lacoot_cmd("export", str(trained), "--blocks", "layer1.1", "--format", "torchscript",
                     "--optimize", "--output", str(target), "--repair", "none",
                     "--no-embed-normalization", cwd=work).stdout  # fmt: skip
    assert "frozen" in out and "(batch 1, TorchScript, after torch.jit.optimize_for_inf" in out
    state = load_checkpoint(trained)
    model, _, _ = model_from_checkpoint(state, trained, torch.device("cpu"))
    shallow = lacoot.remove_blocks(model, ["layer1.1"]).eval()
    x = torch.randn(8, 1, 28, 28)
    loaded = torch.jit.load(str(target))
    assert not list(loaded.parameters())  # frozen: the weights are constants of the graph
    deployed = torch.jit.optimize_for_inference(loaded)
    with torch.no_grad():  # oneDNN convolutions sum in another order: float32 rounding only
        torch.testing.assert_close(loaded(x), shallow(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(deployed(x), shallow(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="optimize=True for format='onnx'; expected format "):
        lacoot.export.export_model(shallow, work / "x.onnx", "onnx", x[:1], {}, [],
                                   optimize=True)  # fmt: skip


def test_export_refuses_existing_output_before_loading(tmp_path: Path) -> None:
    """An existing ``--output``, or the checkpoint itself as the output, is refused before the
    checkpoint and its data are loaded (the checkpoint here does not even exist or is no
    checkpoint), and is left as it was."""
    from lacoot.pipeline import run_export

    target = tmp_path / "shallow.pt"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        run_export(tmp_path / "missing-checkpoint.pt", target, blocks=1)
    assert target.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="is the checkpoint itself"):
        run_export(target, target, blocks=1, overwrite=True)
    assert target.read_bytes() == b"keep"
