"""Image files (lacoot.data.folder): Tiny-ImageNet and class-per-folder trees, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import make_image_folder, make_tiny_imagenet, save_image

from lacoot.data import DatasetError, load_dataset

PIL = pytest.importorskip("PIL")


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
