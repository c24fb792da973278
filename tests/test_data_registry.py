"""The dataset registry (lacoot.data.registry): names and argument errors."""

from __future__ import annotations

import pytest

from lacoot.data import DATASETS, DatasetNotFoundError, load_dataset


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
        "text",
    }
    with pytest.raises(ValueError, match="tokenised by a language model's tokenizer"):
        load_dataset("text")
    with pytest.raises(ValueError, match="needs data_dir"):
        load_dataset("imagefolder")
    with pytest.raises(ValueError, match="split"):
        load_dataset("mnist", "validation")
    with pytest.raises(DatasetNotFoundError, match="Tiny-ImageNet-200 not found"):
        load_dataset("tiny-imagenet")
