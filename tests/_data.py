"""Tiny datasets in the real file formats (IDX, image folders, Tiny-ImageNet) and small
in-memory image datasets, for the data, pipeline and command-line tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from lacoot.data import ImageDataset


def write_idx_dataset(folder: Path, n_train: int = 192, n_test: int = 64, seed: int = 0) -> Path:
    """Fashion-MNIST-format IDX files (gzip) with learnable classes: class k is a bright
    horizontal band at row 2k+4 of a noisy 28x28 image. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
        with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return folder


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 + arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, magic: int | None = None, gz: bool = False) -> Path:
    data = idx_bytes(arr, magic)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_folder(
    folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, seed: int = 0, hw=(5, 7)
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *hw), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{sfx}", images, gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{sfx}", labels, gz=gz)
        out[prefix] = images
        out[prefix + "_labels"] = labels
    return out


def save_image(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
    from PIL import Image  # Pillow is optional: only the tests that write images import it

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def make_tiny_imagenet(root: Path, wnids=("n02", "n01", "n03"), per_class: int = 2) -> Path:
    ti = root / "tiny-imagenet-200"
    ti.mkdir(parents=True)
    (ti / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, w in enumerate(wnids):
        for j in range(per_class):
            colour = np.full((8, 8, 3), (40 * k + 20, 10 * j + 50, 200), dtype=np.uint8)
            save_image(ti / "train" / w / "images" / f"{w}_{j}.JPEG", colour, "JPEG")
        (ti / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for j, w in enumerate(wnids):
        colour = np.full((8, 8, 3), (30 * j, 100, 150), dtype=np.uint8)
        save_image(ti / "val" / "images" / f"val_{j}.JPEG", colour, "JPEG")
        lines.append(f"val_{j}.JPEG\t{w}\t0\t0\t7\t7")
    (ti / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return ti


def make_image_folder(root: Path, n_per_class=(3, 2), size=(6, 5), splits=True) -> dict:
    """PNG class-per-folder tree; pixel (0, 0) encodes (class, index)."""
    rng = np.random.default_rng(2)
    expected = {}
    for split in ("train", "test") if splits else ("",):
        for c, n in zip(("cat", "dog"), n_per_class, strict=True):
            for j in range(n):
                arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                p = (root / split / c if split else root / c) / f"img{j}.png"
                save_image(p, arr)
                expected[str(p)] = arr
    return expected


def indexed_dataset(n: int, c: int = 1, hw=(4, 4), classes: int = 3) -> ImageDataset:
    """Images whose first two pixels encode their index (to track samples through loaders)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, *hw), generator=g, dtype=torch.uint8)
    ar = torch.arange(n)
    images[:, 0, 0, 0] = (ar % 256).to(torch.uint8)
    images[:, 0, 0, 1] = (ar // 256).to(torch.uint8)
    return ImageDataset(images, ar % classes, [f"c{i}" for i in range(classes)], name="toy")


def sample_ids(images_uint8: torch.Tensor) -> list[int]:
    return (images_uint8[:, 0, 0, 0].long() + 256 * images_uint8[:, 0, 0, 1].long()).tolist()
