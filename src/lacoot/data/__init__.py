"""Datasets and fast loaders for lacoot (pure torch / numpy / Pillow, no torchvision).

Quick start::

    from lacoot.data import TensorLoader, load_dataset, train_val_split

    full = load_dataset("fashion-mnist", "train")          # uint8 (60000, 1, 28, 28)
    train, val = train_val_split(full, val_fraction=0.1, seed=0)
    test = load_dataset("fashion-mnist", "test").with_stats(train.mean, train.std)
    loader = TensorLoader(train, 128, augment=True, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:   # float32 (B, 1, 28, 28), int64 (B,) on the device
            ...

Nothing here imports training code.
"""

from .augment import crop_flip, default_padding, normalize, sample_augment_params
from .base import (
    DatasetError,
    DatasetNotFoundError,
    ImageDataset,
    channel_stats,
    train_val_split,
)
from .cifar import load_cifar, read_cifar_pickle
from .folder import (
    ImageFileDataset,
    decode_image,
    image_folder_files,
    load_image_folder,
    load_tiny_imagenet,
    scan_image_folder,
    scan_tiny_imagenet,
    tiny_imagenet_files,
)
from .idx import load_idx_dataset, read_idx
from .loaders import StreamingLoader, TensorLoader, collate_uint8, epoch_generator
from .registry import DATASETS, canonical_name, dataset_files, load_dataset

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "ImageFileDataset",
    "StreamingLoader",
    "TensorLoader",
    "canonical_name",
    "channel_stats",
    "collate_uint8",
    "crop_flip",
    "dataset_files",
    "decode_image",
    "default_padding",
    "epoch_generator",
    "image_folder_files",
    "load_cifar",
    "load_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "load_tiny_imagenet",
    "normalize",
    "read_cifar_pickle",
    "read_idx",
    "sample_augment_params",
    "scan_image_folder",
    "scan_tiny_imagenet",
    "tiny_imagenet_files",
    "train_val_split",
]
