"""``lacoot score|collapse|export --model hf:FOLDER --dataset text``: a Hugging Face causal LM and
a folder of text files, through the command in a subprocess (tiny random Llama and GPT-2 with a
word-level tokenizer built in the test; no download)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _cli import lacoot_cmd  # noqa: E402
from _lm import save_tiny_lm, write_corpus  # noqa: E402

import lacoot  # noqa: E402
from lacoot.data.text import load_text  # noqa: E402

SMALL = ["--seq-len", "16", "--no-progress", "--latency-repeats", "2", "--calib-samples", "32"]


@pytest.fixture(scope="module")
def lm_work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lm")
    save_tiny_lm(root / "llama", "llama")
    save_tiny_lm(root / "gpt2", "gpt2")
    write_corpus(root / "corpus")
    return root


def _load(folder: Path):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def _perplexity_by_hand(model, chunks: torch.Tensor) -> tuple[float, float]:
    """Perplexity and next-token accuracy (%) over chunks (N, T + 1), one sequence at a time."""
    nll, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for row in chunks:
            logits = model(input_ids=row[None, :-1]).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum"))
            correct += int((logits.argmax(-1) == row[1:]).sum())
            count += row.numel() - 1
    return math.exp(nll / count), 100.0 * correct / count


@pytest.fixture(scope="module")
def collapsed(lm_work: Path) -> Path:
    lacoot_cmd("collapse", "--model", "hf:llama", "--dataset", "text", "--data-dir",
               "corpus", "--blocks", "2", "--repair", "none", "--out", "col", *SMALL,
               cwd=lm_work)  # fmt: skip
    return lm_work / "col"


def test_collapse_reports_perplexity_and_token_accuracy(lm_work, collapsed):
    report = json.loads((collapsed / "report.json").read_text())
    assert report["sweeps"]["msw"]["metric"] == "negative_perplexity"
    assert set(report["sweeps"]) == {"msw", "cosine"}  # a language model's default orders
    full = report["sweeps"]["msw"]["points"][0]
    model, tok = _load(lm_work / "llama")
    splits = load_text(lm_work / "corpus", tok, 16, 0.0, 0.1, seed=0)
    ppl, acc = _perplexity_by_hand(model, splits.test)
    assert -full["test_accuracy"] == pytest.approx(ppl, rel=1e-4)
    assert full["token_accuracy"]["test"] == pytest.approx(acc, abs=1e-9)
    for p in report["sweeps"]["msw"]["points"]:
        assert p["token_accuracy"]["val"] is not None and p["token_accuracy"]["test"] is not None
    md = (collapsed / "report.md").read_text()
    assert "| val perplexity | test perplexity |" in md and "next-token acc %" in md
    assert "acc %  " not in md and "test accuracy" not in md
    assert f"{ppl:.2f}" in md  # shown positive, as read
    assert "model: `hf:llama` (as it is, no lacoot training)" in md


def test_collapsed_folder_reloads_without_lacoot_and_equals_the_collapse(lm_work, collapsed):
    report = json.loads((collapsed / "report.json").read_text())
    removed = report["chosen"]["removed"]
    assert len(removed) == 2
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    code = (
        "import sys, json, torch, transformers\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(collapsed / 'shallow')!r})\n"
        f"t = transformers.AutoTokenizer.from_pretrained({str(collapsed / 'shallow')!r})\n"
        "assert not any(k.startswith('lacoot') for k in sys.modules)\n"
        f"logits = m(input_ids=torch.tensor({ids.tolist()})).logits\n"
        "print(json.dumps([m.config.num_hidden_layers, len(t), logits.flatten().tolist()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    layers, vocab, logits = json.loads(out.stdout.strip().splitlines()[-1])
    model, tok = _load(lm_work / "llama")
    want = lacoot.collapse(model, removed)(input_ids=ids).logits.flatten()
    assert layers == 2 and vocab == len(tok)
    torch.testing.assert_close(torch.tensor(logits), want, rtol=1e-5, atol=1e-5)


def test_score_prints_each_layer_by_each_criterion(lm_work):
    proc = lacoot_cmd("score", "--model", "hf:gpt2", "--data-dir", "corpus", "--criterion",
                      "cosine", "msw", *SMALL[:3], cwd=lm_work)  # fmt: skip
    scores = json.loads(proc.stdout)
    assert set(scores) == {"cosine", "msw"}
    assert sorted(scores["cosine"]) == [f"transformer.h.{i}" for i in range(4)]
    assert all(math.isfinite(v) and v >= 0 for v in scores["msw"].values())


def test_export_hf_folder_and_onnx(lm_work):
    proc = lacoot_cmd("export", "--model", "hf:llama", "--data-dir", "corpus", "--blocks", "1",
                      "--format", "hf", "--output", "one", *SMALL[:2], cwd=lm_work)  # fmt: skip
    assert "exported the model without" in proc.stdout and "pixel" not in proc.stdout
    assert "lacoot [" in proc.stderr  # progress lines
    config = json.loads((lm_work / "one" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert (lm_work / "one" / "tokenizer.json").is_file()
    assert json.loads((lm_work / "one.json").read_text())["input"]["kind"] == "text"
    pytest.importorskip("onnx")
    proc = lacoot_cmd("export", "--model", "hf:gpt2", "--data-dir", "corpus", "--blocks",
                      "transformer.h.1", "--format", "onnx", "--repair", "none", "--output",
                      "g.onnx", *SMALL[:2], cwd=lm_work)  # fmt: skip
    if "onnxruntime is not installed" not in proc.stdout:
        assert "onnxruntime check: max abs difference" in proc.stdout
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(lm_work / "g.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((1, 5), (3, 11)):  # batch and sequence axes are dynamic
        ids = torch.randint(3, 20, shape)
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": (ids * 0 + 1).numpy()})
        model, _ = _load(lm_work / "gpt2")
        want = lacoot.collapse(model, ["transformer.h.1"])(input_ids=ids).logits
        torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "collapse",
                "--model",
                "hf:llama",
                "--repair",
                "linear",
                "--blocks",
                "1",
                "--out",
                "x",
            ],
            "repair 'linear' would put patch modules",
        ),
        (["collapse", "ckpt.pt", "--model", "hf:llama", "--blocks", "1"], "expected one of them"),
        (["collapse", "--blocks", "1"], "needs a checkpoint (written by lacoot train) or --model"),
        (["score", "--model", "hf:nowhere"], "'nowhere' is not a save_pretrained folder"),
        (["score", "--model", "hf:nowhere.gguf"], "no such GGUF file"),
        (["score", "--model", "hf:llama", "--dataset", "cifar10"], "expected --dataset text"),
        (["score", "--model", "hf:llama", "--seq-len", "0"], "--seq-len 0; expected a token"),
        (["score", "--model", "resnet20"], "without a checkpoint; expected hf:FOLDER"),
        (
            [
                "export",
                "--model",
                "hf:llama",
                "--blocks",
                "1",
                "--format",
                "pt",
                "--output",
                "a.pt",
            ],
            "--format 'pt' for --model 'hf:llama', a language model; expected hf",
        ),
        (
            ["collapse", "--model", "hf:llama", "--blocks", "9", "--out", "x"],
            "--blocks 9, but the model has only 4",
        ),
    ],
)
def test_errors_are_one_line_naming_the_flag(lm_work, args, message):
    extra = ["--data-dir", "corpus"] + ([] if "--seq-len" in args else ["--seq-len", "16"])
    proc = lacoot_cmd(*args, *extra, cwd=lm_work, check=2)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("lacoot: error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (lm_work / "x").exists()  # a refused command writes nothing


def _text_splits(lm_work: Path, tok, val_fraction: float):
    return load_text(lm_work / "corpus", tok, 16, val_fraction, 0.1, seed=0)


def test_run_fine_tunes_with_the_penalty_then_collapses_the_checkpoint(lm_work):
    lacoot_cmd("run", "--model", "hf:gpt2", "--data-dir", "corpus", "--epochs", "2",
               "--target-macs", "1", "--fade", "0", "--lr", "1e-3", "--blocks", "1", "--out",
               "ft", *SMALL, cwd=lm_work)  # fmt: skip
    state = torch.load(lm_work / "ft" / "checkpoint.pt", weights_only=True)
    assert state["model_spec"]["name"] == "hf:gpt2" and state["data_spec"]["dataset"] == "text"
    log = json.loads((lm_work / "ft" / "log.json").read_text())
    assert all(f"msw/transformer.h.{i}" in log[-1] for i in range(4))  # every layer penalised
    original, tok = _load(lm_work / "gpt2")
    model, _ = _load(lm_work / "gpt2")
    model.load_state_dict(state["model"])
    assert not torch.equal(model.lm_head.weight, original.lm_head.weight)  # it was trained
    splits = _text_splits(lm_work, tok, 0.1)
    ppl, acc = _perplexity_by_hand(model, splits.val)  # the loop's loss is per token
    assert log[-1]["val_loss"] == pytest.approx(math.log(ppl), rel=1e-4)
    assert log[-1]["val_accuracy"] == pytest.approx(acc, abs=1e-6)
    report = json.loads((lm_work / "ft" / "report.json").read_text())
    assert report["checkpoint"].endswith("checkpoint.pt")
    full = report["sweeps"]["msw"]["points"][0]
    assert -full["test_accuracy"] == pytest.approx(_perplexity_by_hand(model, splits.test)[0],
                                                   rel=1e-4)  # fmt: skip
    assert (lm_work / "ft" / "shallow" / "config.json").is_file()
    lacoot_cmd("export", "ft/checkpoint.pt", "--blocks", "transformer.h.3", "--repair", "none",
               "--format", "hf", "--output", "ft-3", cwd=lm_work)  # fmt: skip
    small, _ = _load(lm_work / "ft-3")
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    want = lacoot.collapse(model, ["transformer.h.3"])(input_ids=ids).logits
    torch.testing.assert_close(small(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)


def test_language_model_training_resumes_after_a_kill_to_the_same_weights(lm_work: Path) -> None:
    import signal

    from _cli import _assert_same_weights, _start_and_signal

    args = ["train", "--model", "hf:gpt2", "--dataset", "text", "--data-dir", "corpus",
            "--epochs", "3", "--lam", "0.5", "--target-macs", "1", "--fade", "0", "--lr", "1e-3",
            "--seq-len", "16", "--no-progress"]  # fmt: skip
    lacoot_cmd(*args, "--out", "lm-full", cwd=lm_work)
    proc = _start_and_signal(lm_work, "lm-killed", signal.SIGKILL, args)
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    lacoot_cmd(*args, "--out", "lm-killed", "--resume", cwd=lm_work)
    full = torch.load(lm_work / "lm-full" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(lm_work / "lm-killed" / "checkpoint.pt", weights_only=True)
    assert len(resumed["history"]) == 3
    _assert_same_weights(full["model"], resumed["model"])


def test_language_model_trains_under_torchrun_as_in_one_process(lm_work: Path) -> None:
    """Two processes (each half of every global batch, gradients averaged by DDP) train a
    language model to the weights one process reaches on the same global batches, penalty
    included (``--global-msw``: the penalty of the whole batch); the checkpoint records both."""
    import os

    args = ["train", "--model", "hf:llama", "--dataset", "text", "--data-dir", "corpus",
            "--epochs", "2", "--lam", "0.5", "--target-macs", "1", "--fade", "0", "--lr", "1e-3",
            "--batch-size", "8", "--seq-len", "16", "--no-progress", "--global-msw"]  # fmt: skip
    lacoot_cmd(*args, "--out", "lm-one", cwd=lm_work)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lacoot", *args, "--out", "lm-two"],
        cwd=lm_work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = torch.load(lm_work / "lm-one" / "checkpoint.pt", weights_only=True)
    two = torch.load(lm_work / "lm-two" / "checkpoint.pt", weights_only=True)
    assert one["world_size"] == 1 and two["world_size"] == 2
    start, _ = _load(lm_work / "llama")
    moved = 0.0
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        moved = max(moved, float((value - start.state_dict()[key]).abs().max()))
    assert moved > 1e-3  # it trained
    assert [r["epoch"] for r in two["history"]] == [1, 2]
    odd = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lacoot", *args[:-4], "--batch-size", "7", "--no-progress", "--out", "lm-odd"],
        cwd=lm_work, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert odd.returncode != 0 and "7 is not divisible by the 2 processes" in odd.stderr


def test_collapse_of_a_gguf_file_saves_a_folder_that_reloads_as_the_layers_deleted_by_hand(
    lm_work: Path,
) -> None:
    """``--model hf:FILE.gguf``: loaded (dequantised), scored, collapsed; the saved folder loads
    in plain ``transformers`` and computes the GGUF model with the chosen layer deleted by hand
    (the layer list cut, the config's count set)."""
    pytest.importorskip("gguf")
    from _lm import write_tiny_gguf

    from lacoot.integrations.hf import from_gguf

    write_tiny_gguf(lm_work / "tiny.gguf")
    lacoot_cmd("collapse", "--model", "hf:tiny.gguf", "--dataset", "text", "--data-dir",
               "corpus", "--blocks", "1", "--repair", "none", "--out", "gg", *SMALL,
               cwd=lm_work)  # fmt: skip
    removed = json.loads((lm_work / "gg" / "report.json").read_text())["chosen"]["removed"]
    assert len(removed) == 1 and removed[0].startswith("model.layers.")
    saved, _ = _load(lm_work / "gg" / "shallow")
    model, tok = from_gguf(lm_work / "tiny.gguf")
    gone = int(removed[0].rsplit(".", 1)[1])
    model.model.layers = torch.nn.ModuleList(
        [m for i, m in enumerate(model.model.layers) if i != gone]
    )
    model.config.num_hidden_layers = 2
    ids = torch.tensor([tok("the cat sat on a mat .")["input_ids"]])
    assert saved.config.num_hidden_layers == 2
    torch.testing.assert_close(saved(input_ids=ids).logits, model(input_ids=ids,
                               use_cache=False).logits, rtol=1e-5, atol=1e-5)  # fmt: skip


def test_language_model_training_starts_from_the_init_weights(lm_work, monkeypatch):
    """``--init`` on a language model: the training starts from the file's weights (every
    one, tied ones included), and records the file's format and digest."""
    from lacoot.config import RunConfig
    from lacoot.init_weights import file_sha256
    from lacoot.lm import lm_training

    monkeypatch.chdir(lm_work)
    model, _ = _load(lm_work / "gpt2")
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(weights, lm_work / "init.pt")
    cfg = RunConfig.from_dict({"model": "hf:gpt2", "dataset": "text", "data_dir": "corpus",
                               "seq_len": 16, "batch_size": 8, "init": "init.pt"})  # fmt: skip
    job = lm_training(cfg, torch.device("cpu"), 0, 1, lambda msg: None)
    got = job.model.state_dict()
    assert got.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(got[k], v), k
    assert job.init == {"path": "init.pt", "format": "state_dict",
                        "sha256": file_sha256(lm_work / "init.pt")}  # fmt: skip


LM_TRAIN = ["train", "--model", "hf:llama", "--dataset", "text", "--data-dir", "corpus",
            "--epochs", "1", "--lam", "0", "--optimizer", "sgd", "--momentum", "0",
            "--weight-decay", "0", "--lr", "0.5", "--batch-size", "16", "--seq-len", "16",
            "--no-progress"]  # fmt: skip


def test_language_model_distils_from_a_teacher_token_by_token(lm_work):
    """``--teacher hf:FOLDER`` on a language model. The model as its own teacher, all weight on
    the soft term: the per-token soft targets are the student's own distributions, so nothing
    moves (a teacher whose logits were misaligned, unflattened or of another model would move
    it). Another teacher moves the weights away from plain training; the checkpoint records it."""
    save_tiny_lm(lm_work / "llama-b", "llama", seed=1)
    lacoot_cmd(*LM_TRAIN, "--teacher", "hf:llama", "--distill-weight", "1", "--out", "kd-self",
               cwd=lm_work)  # fmt: skip
    start, _ = _load(lm_work / "llama")
    state = torch.load(lm_work / "kd-self" / "checkpoint.pt", weights_only=True)
    for k, v in start.state_dict().items():
        torch.testing.assert_close(state["model"][k], v, rtol=0, atol=1e-6)
    assert state["teacher"]["path"] == "hf:llama" and state["teacher"]["format"] == "hf folder"
    assert len(state["teacher"]["sha256"]) == 64
    lacoot_cmd(*LM_TRAIN, "--out", "plain", cwd=lm_work)
    lacoot_cmd(*LM_TRAIN, "--teacher", "hf:llama-b", "--distill-weight", "0.5", "--out",
               "kd-b", cwd=lm_work)  # fmt: skip
    plain = torch.load(lm_work / "plain" / "checkpoint.pt", weights_only=True)["model"]
    taught = torch.load(lm_work / "kd-b" / "checkpoint.pt", weights_only=True)
    w = "lm_head.weight"
    assert not torch.equal(plain[w], start.state_dict()[w])
    assert (taught["model"][w] - plain[w]).abs().max() > 1e-3
    assert taught["teacher"]["sha256"] != state["teacher"]["sha256"]
    # a checkpoint of lacoot train as the teacher, of the weights the training starts from
    lacoot_cmd(*LM_TRAIN, "--init", "plain/checkpoint.pt", "--teacher", "plain/checkpoint.pt",
               "--distill-weight", "1", "--out", "kd-ckpt", cwd=lm_work)  # fmt: skip
    again = torch.load(lm_work / "kd-ckpt" / "checkpoint.pt", weights_only=True)
    for k, v in plain.items():
        torch.testing.assert_close(again["model"][k], v, rtol=0, atol=1e-6)
    assert again["teacher"]["format"] == "lacoot checkpoint"


def test_language_model_teacher_with_another_vocabulary_is_refused(lm_work):
    from _lm import WORDS
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = save_tiny_lm(lm_work / "llama-other", "llama", seed=2)
    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", ".", *reversed(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                         pad_token="[PAD]", eos_token="[EOS]"
                                         ).save_pretrained(folder)  # fmt: skip
    proc = lacoot_cmd(*LM_TRAIN, "--teacher", "hf:llama-other", "--distill-weight", "0.5",
                      "--out", "kd-other", cwd=lm_work, check=2)  # fmt: skip
    last = proc.stderr.strip().splitlines()[-1]
    assert "--teacher 'hf:llama-other' has another vocabulary" in last
    assert "same tokens numbered otherwise" in last and "Traceback" not in proc.stderr
    assert not (lm_work / "kd-other" / "checkpoint.pt").exists()
