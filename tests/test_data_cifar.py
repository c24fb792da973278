"""CIFAR-10 and CIFAR-100 pickles (lacoot.data.cifar), written here in the real format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lacoot.data import DatasetError, DatasetNotFoundError, load_dataset


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
