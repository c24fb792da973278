"""A tiny Hugging Face causal LM with its own word-level tokenizer, saved as a ``save_pretrained``
folder, and a small text corpus: what ``--model hf:FOLDER --dataset text`` tests run on. Built
offline in the test (no download)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

WORDS = ("the cat dog sat ran on under a mat hat big small red blue and then it was "
         "here there home far near day night").split()  # fmt: skip


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` sentences over :data:`WORDS`, seeded."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " ." for _ in range(n)]


def write_corpus(root: Path, n_files: int = 4, per_file: int = 60) -> Path:
    """A folder of text files in each accepted form: ``.txt``, ``.gz``, no suffix, a nested
    folder; a hidden file and a ``.json`` that must be ignored."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    names = ["a.txt", "b.gz", "c", "sub/d.txt"][:n_files]
    for i, name in enumerate(names):
        text = "\n".join(sentences(per_file, seed=i))
        data = gzip.compress(text.encode()) if name.endswith(".gz") else text.encode()
        (root / name).write_bytes(data)
    (root / ".hidden.txt").write_text("zzz " * 50)
    (root / "notes.json").write_text('{"zzz": 1}')
    return root


def tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over :data:`WORDS` with ``[UNK]``, ``[PAD]``,
    ``[EOS]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "[EOS]", ".", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   eos_token="[EOS]")  # fmt: skip


def save_tiny_lm(folder: Path, arch: str = "llama", layers: int = 4, seed: int = 0) -> Path:
    """A random tiny causal LM (``llama`` or ``gpt2``) and :func:`tokenizer`, saved."""
    import torch
    import transformers

    vocab = len(tokenizer())
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
            bos_token_id=2, eos_token_id=2,
        )  # fmt: skip
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            bos_token_id=2, eos_token_id=2, pad_token_id=1,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config)
    model.eval().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
