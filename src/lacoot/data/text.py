"""Plain-text corpora for language models: files read, tokenised, cut into chunks, split, batched.

A corpus is a folder of text files (searched recursively: ``.txt``, ``.gz`` holding text, or
files without a suffix; hidden files skipped), read in sorted path order as UTF-8. Each file is
tokenised on its own by the model's tokenizer (no special tokens added), the files joined by the
tokenizer's end-of-sequence token when it has one, and the stream cut into non-overlapping chunks
of ``seq_len + 1`` tokens (the last token of a chunk is the next-token target of the one before
it; the tail shorter than a chunk is dropped). Chunks, not tokens, are split between train,
validation and test (seeded), so no token is in two splits. A batch is
``({"input_ids": (B, T), "attention_mask": (B, T)}, targets: (B, T))``, ``T = seq_len``.

Nothing here imports training code or ``transformers``: the tokenizer is any callable that maps a
string to ``{"input_ids": [...]}`` (a Hugging Face tokenizer is one).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .base import DatasetError, DatasetNotFoundError
from .loaders import epoch_generator

__all__ = [
    "TEXT_SUFFIXES", "TextSplits", "TextLoader", "text_files", "read_text", "tokenize_corpus",
    "chunk_tokens", "split_chunks", "load_text",
]  # fmt: skip

TEXT_SUFFIXES = ("", ".txt", ".gz")  # ``.txt.gz`` ends in ``.gz``


def text_files(root: str | os.PathLike) -> list[Path]:
    """The text files under ``root`` (recursive, sorted): suffix ``.txt``, ``.gz`` or none;
    hidden files and folders are skipped. A missing folder or one without such files is a
    :class:`DatasetNotFoundError` naming it."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetNotFoundError(f"text folder {str(base)!r} does not exist; expected a "
                                   "folder of .txt, .gz or suffix-less text files")  # fmt: skip
    found = []
    for path in sorted(base.rglob("*")):
        parts = path.relative_to(base).parts
        if path.is_file() and not any(p.startswith(".") for p in parts):
            if path.suffix.lower() in TEXT_SUFFIXES:
                found.append(path)
    if not found:
        raise DatasetNotFoundError(f"text folder {str(base)!r} holds no .txt, .gz or "
                                   "suffix-less file")  # fmt: skip
    return found


def read_text(path: str | os.PathLike) -> str:
    """A text file's contents (gunzipped when it ends in ``.gz``), as UTF-8; other bytes are a
    :class:`DatasetError` naming the file."""
    path = Path(path)
    try:
        raw = (
            gzip.decompress(path.read_bytes())
            if path.suffix.lower() == ".gz"
            else path.read_bytes()
        )
        return raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"cannot read text file {str(path)!r} ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"text file {str(path)!r} is not UTF-8 ({exc.reason} at byte {exc.start}); "
            "expected UTF-8 text"
        ) from None


Tokenizer = Callable[..., Any]


def tokenize_corpus(
    files: list[Path], tokenizer: Tokenizer, progress: Callable[[str], None] | None = None
) -> Tensor:
    """The token ids ``(N,)`` (int64) of ``files`` in order, each tokenised without special
    tokens, joined by the tokenizer's ``eos_token_id`` when it has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pieces: list[Tensor] = []
    for i, path in enumerate(files):
        ids = tokenizer(read_text(path), add_special_tokens=False)["input_ids"]
        if pieces and eos is not None:
            pieces.append(torch.tensor([int(eos)], dtype=torch.long))
        pieces.append(torch.as_tensor(ids, dtype=torch.long).reshape(-1))
        if progress is not None and (i + 1) % 100 == 0:
            progress(f"tokenised {i + 1} of {len(files)} files")
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def chunk_tokens(ids: Tensor, seq_len: int) -> Tensor:
    """Non-overlapping chunks ``(N, seq_len + 1)`` of the token stream ``ids: (L,)``; the tail
    shorter than a chunk is dropped."""
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r}; expected a sequence length >= 1")
    n = ids.numel() // (seq_len + 1)
    return ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)


def split_chunks(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Indices of the train, validation and test chunks among ``n``: a seeded permutation, its
    first ``round(n * test_fraction)`` test, the next ``round(n * val_fraction)`` validation,
    the rest train (each sorted)."""
    perm = torch.randperm(n, generator=epoch_generator(seed, 0x7E57))
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    return train.sort().values, val.sort().values, test.sort().values


class TextLoader:
    """Batches ``({"input_ids", "attention_mask"}, targets)`` of token chunks ``(N, T + 1)`` on
    ``device``; every token is real (the mask is all ones). Shuffled with ``shuffle`` (a seeded
    permutation per epoch: call :meth:`set_epoch`), the last short batch dropped with
    ``drop_last``. ``flat_targets`` yields the targets as ``(B * T,)``, for a model whose
    logits are flattened to ``(B * T, V)`` (a classification loss per token).

    With ``world_size > 1`` the loader yields rank ``rank``'s shard, as the image loaders do:
    positions ``rank, rank + world_size, ...`` of the epoch's permutation (the same on every rank)
    cut to a multiple of ``world_size``; ``batch_size`` is then the per-rank batch, and the
    ranks' batches together are one process's batches of ``batch_size * world_size`` chunks,
    in the same order (up to ``world_size - 1`` chunks left out per epoch). ``n`` is the number
    of sequences this loader yields per epoch (before ``drop_last``)."""

    def __init__(
        self, chunks: Tensor, batch_size: int, *, shuffle: bool = False, seed: int = 0,
        drop_last: bool = False, device: str | torch.device = "cpu", flat_targets: bool = False,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}; expected an integer >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}, world_size={world_size!r}; expected "
                             "0 <= rank < world_size")  # fmt: skip
        self.chunks = chunks.to(device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.drop_last, self.epoch, self.start_batch = drop_last, 0, 0
        self.rank, self.world_size = rank, world_size
        self.n, self.flat_targets = int(chunks.shape[0]) // world_size, flat_targets

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch ``epoch``'s order, starting at its batch ``start_batch``."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        total = int(self.chunks.shape[0])
        order = torch.arange(total)
        if self.shuffle:
            order = torch.randperm(total, generator=epoch_generator(self.seed, self.epoch))
        order = order[: self.n * self.world_size][self.rank :: self.world_size]
        for b in range(self.start_batch, len(self)):
            rows = self.chunks[order[b * self.batch_size : (b + 1) * self.batch_size].to(
                self.chunks.device)]  # fmt: skip
            ids = rows[:, :-1]  # (B, T)
            targets = rows[:, 1:].reshape(-1) if self.flat_targets else rows[:, 1:]
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, targets


@dataclass
class TextSplits:
    """The chunks of a corpus split three ways, with what describes them."""

    train: Tensor  # (N_train, seq_len + 1) int64
    val: Tensor
    test: Tensor
    seq_len: int
    files: int
    tokens: int
    fingerprint: str  # sha256 of every chunk's token ids, in corpus order

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_text(
    data_dir: str | os.PathLike, tokenizer: Tokenizer, seq_len: int, val_fraction: float,
    test_fraction: float, seed: int, progress: Callable[[str], None] | None = None,
) -> TextSplits:  # fmt: skip
    """Read, tokenise, chunk and split the corpus in ``data_dir`` (see the module docstring).
    A corpus too short for one chunk in each of the test and the other splits is a
    :class:`DatasetError` saying how many tokens it has and needs."""
    say = progress if progress is not None else (lambda message: None)
    files = text_files(data_dir)
    say(f"tokenising {len(files)} text files in {data_dir}")
    ids = tokenize_corpus(files, tokenizer, say)
    chunks = chunk_tokens(ids, seq_len)
    train, val, test = split_chunks(len(chunks), val_fraction, test_fraction, seed)
    if len(test) == 0 or len(train) + len(val) == 0:
        raise DatasetError(
            f"text folder {str(data_dir)!r} has {ids.numel()} tokens: {len(chunks)} chunks of "
            f"seq_len={seq_len} + 1, too few for a test split (test_fraction={test_fraction}) "
            "and a calibration split; expected more text, or a smaller seq_len"
        )
    digest = hashlib.sha256(chunks.numpy().tobytes()).hexdigest()[:16]
    split = f"{len(train)} train, " + (f"{len(val)} validation, " if val_fraction else "")
    say(f"{ids.numel()} tokens in {len(chunks)} chunks of {seq_len} + 1: {split}{len(test)} test")
    return TextSplits(chunks[train], chunks[val], chunks[test], seq_len, len(files), ids.numel(),
                      digest)  # fmt: skip
