"""IDX files (MNIST, Fashion-MNIST; lacoot.data.idx): the format, its errors, the recorded
checksums, and the real Debian dataset when it is installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import idx_bytes, make_idx_folder, write_idx

from lacoot.data import DatasetError, load_dataset, read_idx
from lacoot.data import idx as idx_mod

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(isolated, gz):
    folder = isolated / "fm"
    ref = make_idx_folder(folder, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("fashion-mnist", split, data_dir=folder)
        n = ref[prefix].shape[0]
        assert ds.images.shape == (n, 1, 5, 7) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(ref[prefix]))
        assert ds.labels.tolist() == ref[prefix + "_labels"].tolist()
        assert ds.classes[0] == "T-shirt/top" and len(ds.classes) == 10
        assert ds.root == folder and ds.hflip
    mn = load_dataset("mnist", data_dir=folder)
    assert mn.classes == [str(i) for i in range(10)] and not mn.hflip
    # the statistics are those of the pixels, in units of full scale
    pix = ref["train"].astype(np.float64) / 255
    tr = load_dataset("fashion-mnist", "train", data_dir=folder)
    assert tr.mean[0] == pytest.approx(pix.mean()) and tr.std[0] == pytest.approx(pix.std())


def test_idx_header_is_big_endian(tmp_path):
    p = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((2, 3, 4), np.uint8))
    assert p.read_bytes()[:16] == bytes.fromhex("00000803 00000002 00000003 00000004")
    assert read_idx(p, 2051).shape == (2, 3, 4)


def test_idx_wrong_magic(isolated):
    folder = isolated / "fm"
    make_idx_folder(folder)
    # a label file where the image file should be
    bad = folder / "train-images-idx3-ubyte.gz"
    write_idx(bad, np.zeros(6, np.uint8), gz=True)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*magic number 2049"):
        load_dataset("fashion-mnist", data_dir=folder)
    write_idx(bad, np.zeros((6, 5, 7), np.uint8), magic=0x12345678, gz=True)
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*not an IDX file"):
        load_dataset("fashion-mnist", data_dir=folder)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(isolated, gz):
    folder = isolated / "fm"
    make_idx_folder(folder, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    p = folder / name
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=f"{name}.*truncated"):
        load_dataset("fashion-mnist", data_dir=folder)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match=f"{name}.*truncated"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_idx_corrupted_gzip_and_trailing_bytes(isolated):
    folder = isolated / "fm"
    make_idx_folder(folder, gz=True)
    p = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[12:20] = b"\xff" * 8  # damage the deflate stream
    p.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*corrupted"):
        load_dataset("fashion-mnist", "test", data_dir=folder)
    p.write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8)) + b"junk"))
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz.*unexpected bytes"):
        load_dataset("fashion-mnist", "test", data_dir=folder)


def test_idx_label_count_mismatch_and_range(isolated):
    folder = isolated / "fm"
    make_idx_folder(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8), gz=True)
    with pytest.raises(DatasetError, match="mismatch.*train-images.*6 images.*train-labels.*5"):
        load_dataset("fashion-mnist", data_dir=folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(6, 10, np.uint8), gz=True)
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz.*out of range"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_fashion_checksums_match_debian_content():
    """The recorded SHA-256 values are of the official .gz files (64 hex digits each)."""
    for name in ("fashion-mnist", "mnist"):
        spec = idx_mod.IDX_SPECS[name]
        assert len(spec.sha256) == 4
    for h in idx_mod.IDX_SPECS["fashion-mnist"].sha256.values():
        assert h is not None and len(h) == 64 and int(h, 16) >= 0
    assert all(h is None for h in idx_mod.IDX_SPECS["mnist"].sha256.values())


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("LACOOT_DATA", raising=False)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert train.image_shape == (1, 28, 28) and len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert train.mean[0] == pytest.approx(0.2860, abs=1e-3)
    assert train.std[0] == pytest.approx(0.3530, abs=1e-3)
