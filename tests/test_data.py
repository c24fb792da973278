"""Tests of lacoot.data: file formats, lookup, errors, splits and loaders.

Every format is exercised on tiny files written here in the real on-disk format; the network is
never touched (the URL opener is replaced).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from lacoot.data import (
    DATASETS,
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    StreamingLoader,
    TensorLoader,
    channel_stats,
    crop_flip,
    dataset_files,
    load_dataset,
    normalize,
    read_idx,
    sources,
    train_val_split,
)
from lacoot.data import idx as idx_mod

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------------------------
# writers of the real formats


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


def write_cifar_batch(path: Path, data: np.ndarray, labels, label_key=b"labels", protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(
            {
                b"batch_label": b"testing batch",
                label_key: list(int(v) for v in labels),
                b"data": data,
                b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
            },
            f,
            protocol=protocol,
        )


def make_cifar10(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    rng = np.random.default_rng(1)
    all_data, all_labels = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch)
        write_cifar_batch(folder / f"data_batch_{i}", data, labels, protocol=2 if i % 2 else 4)
        all_data.append(data)
        all_labels.append(labels)
    test = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, [3, 9])
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
    names += [b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_cases_per_batch": per_batch}, f, protocol=2)
    return np.concatenate(all_data), np.concatenate(all_labels)


def save_image(path: Path, arr: np.ndarray, fmt: str | None = None) -> None:
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


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)


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


def test_lookup_order(isolated, monkeypatch):
    explicit, env, system = isolated / "explicit", isolated / "env", isolated / "system"
    make_idx_folder(explicit, n_train=3)
    make_idx_folder(env / "fashion-mnist", n_train=4)  # subfolder of LACOOT_DATA
    make_idx_folder(system / "fashion-mnist", n_train=5)  # Debian package folder
    monkeypatch.setenv("LACOOT_DATA", str(env))
    assert len(load_dataset("fashion-mnist", data_dir=explicit)) == 3
    assert len(load_dataset("fashion-mnist")) == 4
    monkeypatch.setenv("LACOOT_DATA", str(env / "fashion-mnist"))  # the folder itself
    assert len(load_dataset("fashion-mnist")) == 4
    monkeypatch.setenv("LACOOT_DATA", str(isolated / "nothing-here"))  # falls through
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 5 and ds.root == system / "fashion-mnist"
    monkeypatch.delenv("LACOOT_DATA")
    assert len(load_dataset("fashion-mnist")) == 5
    # an explicit folder is authoritative: no fallback when it lacks the files
    with pytest.raises(DatasetNotFoundError, match="empty-dir.*--data-dir"):
        load_dataset("fashion-mnist", data_dir=isolated / "empty-dir")


def test_download_offline_error(isolated, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources, "_urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "LACOOT_DATA" in msg and "no network" in msg
    assert calls and all(u.startswith(("https://", "http://")) for u in calls)
    cache = isolated / "cache" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial file left
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("fashion-mnist", download=False)


def test_mnist_download_refused_without_checksum(isolated, monkeypatch):
    monkeypatch.setattr(sources, "_urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DatasetNotFoundError, match="no verified SHA-256.*--data-dir"):
        load_dataset("mnist")


def test_verified_download_is_atomic(isolated, monkeypatch):
    """A fake server: good files land in the cache, a wrong checksum leaves nothing."""
    served = {}
    src = isolated / "served"
    make_idx_folder(src, n_train=7)
    for p in src.iterdir():
        served[p.name] = p.read_bytes()

    class Resp(io.BytesIO):
        pass

    def fake_open(url, timeout=None):
        return Resp(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources, "_urlopen", fake_open)
    spec = idx_mod.IDX_SPECS["fashion-mnist"]
    good = {k: hashlib.sha256(v).hexdigest() for k, v in served.items()}
    bad = dict(good, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    monkeypatch.setitem(idx_mod.IDX_SPECS, "fashion-mnist", dataclasses.replace(spec, sha256=bad))
    with pytest.raises(DatasetNotFoundError, match="SHA-256 mismatch"):
        load_dataset("fashion-mnist")
    cache = isolated / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz"]
    monkeypatch.setitem(idx_mod.IDX_SPECS, "fashion-mnist", dataclasses.replace(spec, sha256=good))
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 7 and ds.root == cache
    assert (cache / "train-labels-idx1-ubyte.gz").read_bytes() == served[
        "train-labels-idx1-ubyte.gz"
    ]
    # the cache is now found without downloading
    monkeypatch.setattr(sources, "_urlopen", lambda *a, **k: pytest.fail("cached"))
    assert len(load_dataset("fashion-mnist")) == 7


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


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10(isolated, use_parent):
    data, labels = make_cifar10(isolated)
    d = isolated if use_parent else isolated / "cifar-10-batches-py"
    ds = load_dataset("cifar10", "train", data_dir=d)
    assert ds.images.shape == (15, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == labels.tolist()
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major
    i, c, y, x = 7, 2, 5, 30
    assert int(ds.images[i, c, y, x]) == int(data[i, c * 1024 + y * 32 + x])
    assert torch.equal(ds.images.reshape(15, -1), torch.from_numpy(data))
    assert ds.classes[:2] == ["airplane", "automobile"] and len(ds.classes) == 10
    test = load_dataset("cifar-10", "test", data_dir=d)
    assert len(test) == 2 and test.labels.tolist() == [3, 9]


def test_cifar100(isolated, monkeypatch):
    folder = isolated / "data" / "cifar-100-python"
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    write_cifar_batch(folder / "train", data, [0, 99, 5, 42], label_key=b"fine_labels")
    write_cifar_batch(folder / "test", data[:2], [1, 2], label_key=b"fine_labels")
    names = [f"class{i}".encode() for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": names[:20]}, f, 2)
    monkeypatch.setenv("LACOOT_DATA", str(isolated / "data"))
    ds = load_dataset("cifar100")
    assert ds.labels.tolist() == [0, 99, 5, 42] and ds.classes[99] == "class99"
    assert torch.equal(ds.images.reshape(4, -1), torch.from_numpy(data))
    assert len(load_dataset("cifar100", "test")) == 2


def test_cifar_errors(isolated):
    make_cifar10(isolated)
    folder = isolated / "cifar-10-batches-py"
    p = folder / "data_batch_3"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DatasetError, match="data_batch_3.*truncated or corrupted"):
        load_dataset("cifar10", data_dir=isolated)
    write_cifar_batch(p, np.zeros((3, 3072), np.uint8), [1, 2])
    with pytest.raises(DatasetError, match="data_batch_3.*label count mismatch"):
        load_dataset("cifar10", data_dir=isolated)
    write_cifar_batch(p, np.zeros((3, 100), np.uint8), [1, 2, 3])
    with pytest.raises(DatasetError, match=r"data_batch_3.*\(N, 3072\)"):
        load_dataset("cifar10", data_dir=isolated)
    # a pickle that would run code is refused
    p.write_bytes(pickle.dumps({b"data": print}, protocol=2))
    with pytest.raises(DatasetError, match="data_batch_3.*not allowed"):
        load_dataset("cifar10", data_dir=isolated)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 train.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=isolated)


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet and ImageFolder


def test_tiny_imagenet(isolated):
    ti = make_tiny_imagenet(isolated)
    for d in (isolated, ti):
        ds = load_dataset("tiny-imagenet", "train", data_dir=d, num_threads=2)
        assert ds.images.shape == (6, 3, 8, 8) and ds.images.dtype == torch.uint8
        assert ds.classes == ["n01", "n02", "n03"]  # sorted wnids
        assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    # JPEG is lossy: solid colours come back within a few levels
    first_n01 = ds.images[0].to(torch.int32)  # n01 is wnid index 1 in the file: red = 60
    assert (first_n01[0] - 60).abs().max() <= 3 and (first_n01[2] - 200).abs().max() <= 3
    val = load_dataset("tiny-imagenet", "test", data_dir=ti)
    assert len(val) == 3 and val.labels.tolist() == [1, 0, 2]  # val_j has wnid wnids[j]


def test_tiny_imagenet_errors(isolated):
    ti = make_tiny_imagenet(isolated)
    ann = ti / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99\t0\t0\t7\t7\n")
    with pytest.raises(DatasetError, match="val_annotations.txt: line 4: wnid 'n99'.*wnids.txt"):
        load_dataset("tiny-imagenet", "test", data_dir=ti)
    (ti / "wnids.txt").write_text("n01\nn02\nn03\nn04\n")
    with pytest.raises(DatasetError, match="n04.*missing class folder"):
        load_dataset("tiny-imagenet", data_dir=ti)
    (ti / "train" / "n04" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="n04.*empty class"):
        load_dataset("tiny-imagenet", data_dir=ti)
    (ti / "train" / "n04" / "images" / "bad.JPEG").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match="bad.JPEG.*corrupt"):
        load_dataset("tiny-imagenet", data_dir=ti)
    good = ti / "train" / "n01" / "images" / "n01_0.JPEG"
    (ti / "train" / "n04" / "images" / "bad.JPEG").write_bytes(good.read_bytes()[:60])
    with pytest.raises(DatasetError, match="bad.JPEG.*corrupt"):  # truncated JPEG
        load_dataset("tiny-imagenet", data_dir=ti)


def test_image_folder(isolated):
    root = isolated / "tree"
    expected = make_image_folder(root)
    ds = load_dataset("imagefolder", "train", data_dir=root)
    assert ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 6, 5)
    files = sorted(p for p in expected if "/train/" in p)
    for i, p in enumerate(files):  # PNG is lossless: exact pixels
        assert torch.equal(ds.images[i], torch.from_numpy(expected[p]).permute(2, 0, 1))
    test = load_dataset("imagefolder", "test", data_dir=root)
    assert len(test) == 5 and test.classes == ds.classes
    # a tree without split folders is the training set
    flat = isolated / "flat"
    make_image_folder(flat, splits=False)
    assert len(load_dataset("imagefolder", data_dir=flat)) == 5
    # grayscale images are converted to RGB
    gray = isolated / "gray" / "only"
    save_image(gray / "g.png", np.full((4, 4), 77, np.uint8))
    g = load_dataset("imagefolder", data_dir=gray.parent)
    assert g.images.shape == (1, 3, 4, 4) and int(g.images.min()) == int(g.images.max()) == 77


def test_image_folder_errors(isolated):
    root = isolated / "tree"
    make_image_folder(root)
    for p in (root / "test" / "dog").iterdir():
        p.unlink()
    (root / "test" / "dog").rmdir()
    with pytest.raises(DatasetError, match="test/dog: missing class folder"):
        load_dataset("imagefolder", "test", data_dir=root)
    (root / "test" / "dog").mkdir()
    with pytest.raises(DatasetError, match="test/dog: empty class"):
        load_dataset("imagefolder", "test", data_dir=root)
    save_image(root / "test" / "dog" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(DatasetError, match="big.png: image size 9x9 differs"):
        load_dataset("imagefolder", "test", data_dir=root)
    assert load_dataset("imagefolder", "test", data_dir=root, image_size=(6, 5), resize=True)
    (root / "test" / "dog" / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="big.png.*corrupt"):
        load_dataset("imagefolder", "test", data_dir=root, image_size=(6, 5), resize=True)


def test_registry_errors(isolated):
    with pytest.raises(ValueError, match="valid names: fashion-mnist, mnist, cifar10"):
        load_dataset("imagenet")
    assert set(DATASETS) == {
        "fashion-mnist",
        "mnist",
        "cifar10",
        "cifar100",
        "tiny-imagenet",
        "imagefolder",
    }
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("imagefolder")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation")
    with pytest.raises(DatasetNotFoundError, match="Tiny-ImageNet-200 not found"):
        load_dataset("tiny-imagenet")


# --------------------------------------------------------------------------------------------
# dataset object and split


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


def test_channel_stats_and_dataset_api():
    ds = indexed_dataset(50, c=3)
    x = ds.images.numpy().astype(np.float64) / 255
    assert np.allclose(ds.mean, x.mean(axis=(0, 2, 3)))
    assert np.allclose(ds.std, x.std(axis=(0, 2, 3)))
    assert np.allclose(channel_stats(ds.images, chunk=7)[1], ds.std)
    img, lab = ds[3]
    assert img.shape == (3, 4, 4) and lab == 0
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(ds.images, torch.full((50,), 3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="50 images but 49 labels"):
        ImageDataset(ds.images, ds.labels[:49], ds.classes)


def test_train_val_split():
    ds = indexed_dataset(1000)
    tr, va = train_val_split(ds, 0.1, seed=0)
    assert len(tr) == 900 and len(va) == 100
    ids_tr, ids_va = set(sample_ids(tr.images)), set(sample_ids(va.images))
    assert not ids_tr & ids_va and ids_tr | ids_va == set(range(1000))
    assert tr.labels.tolist() == [i % 3 for i in sorted(ids_tr)]  # labels follow images
    tr2, va2 = train_val_split(ds, 0.1, seed=0)
    assert torch.equal(va.images, va2.images) and torch.equal(tr.labels, tr2.labels)
    _, va3 = train_val_split(ds, 0.1, seed=1)
    assert set(sample_ids(va3.images)) != ids_va
    assert va.mean == tr.mean and va.std == tr.std and va.split == "val"
    with pytest.raises(ValueError):
        train_val_split(ds, 1.0)


# --------------------------------------------------------------------------------------------
# augmentation and TensorLoader


def reference_crop_flip(img: torch.Tensor, dy: int, dx: int, flip: bool, pad: int):
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad : pad + h, pad : pad + w] = img
    out = padded[:, dy : dy + h, dx : dx + w]
    return out.flip(-1) if flip else out


def test_crop_flip_matches_reference():
    img = torch.arange(1, 2 * 5 * 6 + 1, dtype=torch.int64).reshape(1, 2, 5, 6).to(torch.uint8)
    pad = 2
    cases = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)]
    batch = img.expand(len(cases), -1, -1, -1).contiguous()
    offsets = torch.tensor([[dy, dx] for dy, dx, _ in cases])
    flips = torch.tensor([f for _, _, f in cases])
    out = crop_flip(batch, offsets, flips, pad)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    for k, (dy, dx, f) in enumerate(cases):
        assert torch.equal(out[k], reference_crop_flip(img[0], dy, dx, f, pad)), (dy, dx, f)
    # centre offset without flip is the identity; flip alone mirrors columns
    assert torch.equal(crop_flip(img, torch.tensor([[2, 2]]), torch.tensor([False]), 2), img)
    flipped = crop_flip(img, torch.tensor([[0, 0]]), torch.tensor([True]), 0)
    assert torch.equal(flipped, img.flip(-1))
    # shift down-right by one: first row/column become zero padding
    shifted = crop_flip(img, torch.tensor([[1, 1]]), torch.tensor([False]), 2)
    assert shifted[0, :, 0].sum() == 0 and shifted[0, :, :, 0].sum() == 0
    assert torch.equal(shifted[0, :, 1:, 1:], img[0, :, :-1, :-1])


def test_normalize():
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    y = normalize(x, (0.5, 0.2), (0.5, 0.1))
    assert torch.allclose(y[0, 0, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(y[0, 1, 0], torch.tensor([0.0, 2.0]), atol=1e-6)


def test_tensor_loader_shapes_len_drop_last():
    ds = indexed_dataset(10, c=3, hw=(8, 8))
    loader = TensorLoader(ds, batch_size=4, seed=0)
    batches = list(loader)
    assert len(loader) == 3 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    dl = TensorLoader(ds, batch_size=4, drop_last=True)
    assert len(dl) == 2 and [b[0].shape[0] for b in dl] == [4, 4]
    # every sample exactly once per epoch, labels aligned with images
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    raw = images * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)
    ids = sample_ids((raw * 255).round().to(torch.uint8))
    assert sorted(ids) == list(range(10)) and labels.tolist() == [i % 3 for i in ids]
    ordered = TensorLoader(ds, batch_size=4, shuffle=False)
    assert torch.equal(torch.cat([b[1] for b in ordered]), ds.labels)


def test_tensor_loader_normalisation():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(500, 2, 6, 6, generator=g) * torch.tensor([100.0, 250.0]).view(1, 2, 1, 1)
    ds = ImageDataset(images.to(torch.uint8), torch.zeros(500, dtype=torch.int64), ["x"])
    x = torch.cat([b[0] for b in TensorLoader(ds, batch_size=64)])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-2)


def test_tensor_loader_augmentation_changes_images():
    ds = indexed_dataset(64, c=3, hw=(8, 8))
    plain = torch.cat([b[0] for b in TensorLoader(ds, 16, shuffle=False)])
    aug = torch.cat([b[0] for b in TensorLoader(ds, 16, shuffle=False, augment=True, pad=2)])
    assert aug.shape == plain.shape
    changed = (aug != plain).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.8
    # the zero padding appears as the normalised value of pixel 0
    zero = torch.tensor([-m / s for m, s in zip(ds.mean, ds.std, strict=True)])
    assert torch.isclose(aug, zero.view(1, 3, 1, 1)).any()
    # MNIST-like datasets do not flip by default; flip can be forced
    assert TensorLoader(ds, augment=True).flip is True
    mn = ImageDataset(ds.images, ds.labels, ds.classes, hflip=False)
    assert TensorLoader(mn, augment=True).flip is False
    assert TensorLoader(mn, augment=True, flip=True).flip is True
    assert TensorLoader(mn, augment=True).pad == 2  # 8x8 < 32 pixels
    assert TensorLoader(indexed_dataset(4, hw=(32, 32)), augment=True).pad == 4
    assert TensorLoader(mn, augment=False, pad=3).pad == 0


def epoch_batches(loader, epoch, start_batch=0):
    loader.set_epoch(epoch, start_batch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(batches_a, batches_b) -> bool:
    if len(batches_a) != len(batches_b):
        return False
    return all(
        torch.equal(xa, xb) and torch.equal(ya, yb)
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True)
    )


def test_tensor_loader_determinism_and_resume():
    ds = indexed_dataset(100, c=3, hw=(8, 8))
    kw = dict(batch_size=16, augment=True, seed=7)
    a, b = TensorLoader(ds, **kw), TensorLoader(ds, **kw)
    ea, eb = epoch_batches(a, 3), epoch_batches(b, 3)
    assert same(ea, eb) and same(ea, epoch_batches(a, 3))
    e4 = epoch_batches(a, 4)
    assert not torch.equal(ea[0][1], e4[0][1])  # another order in another epoch
    fixed = TensorLoader(ds, **dict(kw, shuffle=False))  # same order, new augmentation
    assert not same(epoch_batches(fixed, 0), epoch_batches(fixed, 1))
    assert same(epoch_batches(fixed, 1), epoch_batches(fixed, 1))
    other_seed = epoch_batches(TensorLoader(ds, **dict(kw, seed=8)), 3)
    assert not torch.equal(ea[0][1], other_seed[0][1])
    # resuming in the middle of epoch 3 reproduces the remaining batches exactly
    resumed = epoch_batches(b, 3, start_batch=4)
    assert len(resumed) == len(ea) - 4 and same(ea[4:], resumed)
    assert len(list(b)) == len(b)  # start_batch applies to one iteration only
    # the intra-op thread setting used for CPU batches changes nothing but speed, and is restored
    before = torch.get_num_threads()
    threaded = TensorLoader(ds, **dict(kw, cpu_threads=None))
    two = TensorLoader(ds, **dict(kw, cpu_threads=2))
    assert same(ea, epoch_batches(threaded, 3)) and same(ea, epoch_batches(two, 3))
    assert torch.get_num_threads() == before


def test_tensor_loader_sharding():
    ds = indexed_dataset(103, c=1, hw=(4, 4))
    world = 4
    shards = []
    for rank in range(world):
        loader = TensorLoader(ds, 10, seed=1, rank=rank, world_size=world)
        loader.set_epoch(2)
        assert loader.num_samples == 25 and len(loader) == 3
        ids = []
        for x, _ in loader:
            raw = x * ds.std[0] + ds.mean[0]
            ids += sample_ids((raw * 255).round().to(torch.uint8))
        assert ids == loader.epoch_indices().tolist()
        shards.append(set(ids))
        assert len(ids) == 25
    union = set().union(*shards)
    assert len(union) == 100 and sum(len(s) for s in shards) == 100  # disjoint, equal size
    other = TensorLoader(ds, 10, seed=1, rank=0, world_size=world)
    other.set_epoch(3)
    assert set(other.epoch_indices().tolist()) != shards[0]
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(ds, rank=4, world_size=4)


# --------------------------------------------------------------------------------------------
# streaming loader


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_loader_matches_tensor_loader(isolated, num_workers):
    root = isolated / "tree"
    make_image_folder(root, n_per_class=(7, 6), size=(8, 8))
    files = dataset_files("imagefolder", "train", data_dir=root)
    memory = load_dataset("imagefolder", "train", data_dir=root)
    assert len(files) == 13 and files.image_shape == (3, 8, 8)
    kw = dict(batch_size=5, augment=True, seed=3, mean=memory.mean, std=memory.std)
    stream = StreamingLoader(files, num_workers=num_workers, **kw)
    tensor = TensorLoader(memory, **kw)
    for epoch in (0, 1):
        s, t = epoch_batches(stream, epoch), epoch_batches(tensor, epoch)
        assert [x.shape[0] for x, _ in s] == [5, 5, 3]
        for (xs, ys), (xt, yt) in zip(s, t, strict=True):
            assert torch.equal(xs, xt) and torch.equal(ys, yt)
    # default statistics are estimated from the images
    est = StreamingLoader(files, batch_size=4)
    assert est.mean == pytest.approx(memory.mean, abs=1e-6)


def test_streaming_loader_corrupt_file(isolated):
    ti = make_tiny_imagenet(isolated)
    files = dataset_files("tiny-imagenet", "train", data_dir=ti)
    assert files.image_shape == (3, 8, 8) and files.num_classes == 3
    Path(files.paths[3]).write_bytes(b"garbage")
    loader = StreamingLoader(files, batch_size=2, shuffle=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(DatasetError, match=r"n02_1\.JPEG.*corrupt"):
        list(loader)
