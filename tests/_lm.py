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


def write_tiny_gguf(path: Path, layers: int = 3, seed: int = 0) -> Path:
    """A random tiny Llama written as a float32 GGUF file with a character-level tokenizer
    (``▁`` and a-z, ``.``): what ``--model hf:FILE.gguf`` tests load (``gguf`` package)."""
    import gguf
    import numpy as np
    import torch

    vocab, width, ffn, heads, kv = 64, 32, 64, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(width)
    writer.add_feed_forward_length(ffn)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    tokens = ["<unk>", "<s>", "</s>", "\u2581", *"abcdefghijklmnopqrstuvwxyz."]
    tokens += [f"<x{i}>" for i in range(vocab - len(tokens))]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> np.ndarray:
        return (torch.randn(*shape, generator=g) * 0.1).numpy().astype(np.float32)

    ones = np.ones(width, np.float32)
    writer.add_tensor("token_embd.weight", rand(vocab, width))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", rand(vocab, width))
    head = width // heads
    for i in range(layers):
        for name, shape in (("attn_q", (width, width)), ("attn_k", (kv * head, width)),
                            ("attn_v", (kv * head, width)), ("attn_output", (width, width)),
                            ("ffn_gate", (ffn, width)), ("ffn_up", (ffn, width)),
                            ("ffn_down", (width, ffn))):  # fmt: skip
            writer.add_tensor(f"blk.{i}.{name}.weight", rand(*shape))
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
