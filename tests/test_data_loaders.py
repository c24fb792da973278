"""The loaders (lacoot.data.loaders): TensorLoader batches, normalisation, augmentation,
determinism, resuming and sharding; StreamingLoader against TensorLoader and on corrupt files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _data import indexed_dataset, make_image_folder, make_tiny_imagenet, sample_ids

from lacoot.data import (
    DatasetError,
    ImageDataset,
    StreamingLoader,
    TensorLoader,
    dataset_files,
    load_dataset,
)

PIL = pytest.importorskip("PIL")


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
