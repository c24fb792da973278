"""The in-memory dataset (lacoot.data.base): its API, channel statistics and the train/val split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import indexed_dataset, sample_ids

from lacoot.data import ImageDataset, channel_stats, train_val_split


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
