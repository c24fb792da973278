"""Plain-text corpora (lacoot.data.text): files found, read, tokenised, chunked, split, batched."""

from __future__ import annotations

import gzip

import pytest
import torch
from _lm import write_corpus

from lacoot.data import DatasetError, DatasetNotFoundError, epoch_generator
from lacoot.data.text import (
    TextLoader,
    chunk_tokens,
    load_text,
    read_text,
    split_chunks,
    text_files,
    tokenize_corpus,
)


class CharTokenizer:
    """One token per character (its code point); ``eos_token_id`` 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False  # the corpus adds no special tokens inside a text
        return {"input_ids": [ord(c) for c in text]}


def test_text_files_takes_txt_gz_and_suffixless_recursively(tmp_path):
    root = write_corpus(tmp_path / "corpus")
    (root / "img.png").write_bytes(b"\x89PNG")
    found = [p.relative_to(root).as_posix() for p in text_files(root)]
    assert found == ["a.txt", "b.gz", "c", "sub/d.txt"]  # sorted; hidden, .json, .png skipped


def test_text_files_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="'.*nowhere' does not exist"):
        text_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.csv").write_text("a,b")
    with pytest.raises(DatasetNotFoundError, match="holds no .txt, .gz or suffix-less file"):
        text_files(tmp_path / "empty")


def test_read_text_gunzips_and_refuses_other_encodings(tmp_path):
    (tmp_path / "a.gz").write_bytes(gzip.compress("héllo".encode()))
    assert read_text(tmp_path / "a.gz") == "héllo"
    (tmp_path / "b.txt").write_bytes("héllo".encode("latin-1"))
    with pytest.raises(DatasetError, match="b.txt' is not UTF-8"):
        read_text(tmp_path / "b.txt")
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetError, match="cannot read text file"):
        read_text(tmp_path / "c.gz")


def test_tokenize_corpus_joins_files_with_eos(tmp_path):
    (tmp_path / "a.txt").write_text("ab")
    (tmp_path / "b.txt").write_text("c")
    ids = tokenize_corpus(text_files(tmp_path), CharTokenizer())
    assert ids.tolist() == [97, 98, 0, 99]


def test_chunks_do_not_overlap_and_drop_the_tail():
    chunks = chunk_tokens(torch.arange(11), seq_len=2)  # chunks of 3 tokens
    assert chunks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError, match="seq_len=0"):
        chunk_tokens(torch.arange(11), 0)


def test_split_is_a_seeded_partition():
    train, val, test = split_chunks(50, 0.2, 0.1, seed=3)
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(50))
    again = split_chunks(50, 0.2, 0.1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    assert not torch.equal(test, split_chunks(50, 0.2, 0.1, seed=4)[2])


def test_loader_yields_inputs_and_next_token_targets():
    chunks = torch.arange(5 * 4).reshape(5, 4)  # seq_len 3
    loader = TextLoader(chunks, 2)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and loader.n == 5
    inputs, targets = batches[0]
    assert inputs["input_ids"].tolist() == [[0, 1, 2], [4, 5, 6]]
    assert targets.tolist() == [[1, 2, 3], [5, 6, 7]]
    assert inputs["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1]]
    assert len(TextLoader(chunks, 2, drop_last=True)) == 2


def test_shuffled_loader_depends_on_seed_and_epoch_only():
    chunks = torch.arange(40 * 3).reshape(40, 3)
    a, b = TextLoader(chunks, 8, shuffle=True, seed=1), TextLoader(chunks, 8, shuffle=True, seed=1)
    first = [t for _, t in a]
    assert all(torch.equal(x, y) for x, y in zip(first, [t for _, t in b], strict=True))
    a.set_epoch(1)
    assert not torch.equal(first[0], next(iter(a))[1])
    seen = torch.cat([t[:, 0] for t in first]).sort().values  # every chunk once per epoch
    assert torch.equal(seen, chunks[:, 1])


def test_load_text_counts_and_fingerprint(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("x" * 99)
    splits = load_text(tmp_path, CharTokenizer(), 9, 0.2, 0.2, seed=0)
    assert splits.tokens == 3 * 99 + 2  # two end-of-sequence tokens between the files
    assert splits.counts() == {"train": 17, "val": 6, "test": 6}  # 299 // 10 = 29 chunks
    assert splits.train.shape[1] == 10
    again = load_text(tmp_path, CharTokenizer(), 9, 0.2, 0.2, seed=0)
    assert again.fingerprint == splits.fingerprint
    (tmp_path / "0.txt").write_text("y" * 99)
    assert (
        load_text(tmp_path, CharTokenizer(), 9, 0.2, 0.2, seed=0).fingerprint != splits.fingerprint
    )


def test_load_text_too_short_says_how_many_tokens(tmp_path):
    (tmp_path / "a.txt").write_text("abc")
    with pytest.raises(DatasetError, match=r"has 3 tokens: 0 chunks of seq_len=8"):
        load_text(tmp_path, CharTokenizer(), 8, 0.0, 0.1, seed=0)


def test_ranks_shard_each_global_batch_disjointly():
    """Two ranks with half the batch: together, batch by batch, exactly one process's batches
    (41 chunks: one left out per epoch so that the shards are equal)."""
    chunks = torch.arange(41 * 3).reshape(41, 3)
    ranks = [TextLoader(chunks, 4, shuffle=True, seed=2, drop_last=True, rank=r, world_size=2)
             for r in (0, 1)]  # fmt: skip
    for loader in ranks:
        loader.set_epoch(3)
    assert [r.n for r in ranks] == [20, 20] and len(ranks[0]) == len(ranks[1]) == 5
    together = []
    for a, b in zip(*ranks, strict=True):
        ta, tb = a[1][:, 0], b[1][:, 0]
        assert not set(ta.tolist()) & set(tb.tolist())  # disjoint halves
        together.append(sorted(ta.tolist() + tb.tolist()))
    perm = torch.randperm(41, generator=epoch_generator(2, 3))[:40]
    want = [sorted(chunks[perm[i : i + 8], 1].tolist()) for i in range(0, 40, 8)]
    assert together == want
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        TextLoader(chunks, 4, rank=2, world_size=2)
