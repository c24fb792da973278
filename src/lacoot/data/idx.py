"""MNIST and Fashion-MNIST from the standard IDX files.

Files (each optionally gzip-compressed, detected from the content, not the name)::

    train-images-idx3-ubyte[.gz]   magic 2051, (60000, 28, 28) uint8
    train-labels-idx1-ubyte[.gz]   magic 2049, (60000,) uint8
    t10k-images-idx3-ubyte[.gz]    magic 2051, (10000, 28, 28) uint8
    t10k-labels-idx1-ubyte[.gz]    magic 2049, (10000,) uint8

IDX headers are big-endian: a 4-byte magic number ``0x00 0x00 <type code> <ndim>`` followed by
``ndim`` 4-byte dimension sizes, then the data in C order.

Checksums. The Fashion-MNIST SHA-256 values below are those of the official ``.gz`` files as
served by Zalando. They were computed, not copied: the Debian package ``dataset-fashion-mnist``
ships the same deflate streams but with normalised gzip headers (file name dropped, mtime reset by
``strip-nondeterminism``), so its files are 23-24 bytes shorter and hash differently; restoring the
original header (name + mtime 2017-08-31) reproduces files whose MD5 equals the published
checksums (torchvision) and whose sizes equal the official ones, and the SHA-256 of those
reconstructed files is recorded here. No MNIST file was available to hash, so MNIST checksums are
unknown and MNIST is never downloaded (place the files by hand).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DatasetError, DatasetNotFoundError, ImageDataset
from .sources import cache_dir, download_file, find_root

__all__ = ["read_idx", "load_idx_dataset", "IDX_SPECS", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC"]

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned byte, 1 dimension

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class IdxSpec:
    """Description of one IDX dataset (files, class names, sources)."""

    name: str
    title: str
    classes: tuple[str, ...]
    #: Mirrors; the file name is appended.
    base_urls: tuple[str, ...]
    #: Official ``.gz`` file name -> SHA-256 of that file (``None``: unknown, never downloaded).
    sha256: dict[str, str | None]
    subdirs: tuple[str, ...]
    system_names: tuple[str, ...]
    hflip: bool
    install_help: str


_FASHION_HELP = (
    "Install the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, files in "
    "/usr/share/datasets/fashion-mnist/), or put the four IDX files (train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, "
    "compressed or not) in a folder and pass it with `--data-dir DIR` (data_dir=DIR) or set "
    "LACOOT_DATA=DIR."
)
_MNIST_HELP = (
    "Download the four MNIST IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ or http://yann.lecun.com/exdb/mnist/ "
    "yourself, put them in a folder and pass it with `--data-dir DIR` (data_dir=DIR) or set "
    "LACOOT_DATA=DIR (a `mnist` subfolder of it also works)."
)

IDX_SPECS: dict[str, IdxSpec] = {
    "fashion-mnist": IdxSpec(
        name="fashion-mnist",
        title="Fashion-MNIST",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        base_urls=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
        subdirs=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        system_names=("fashion-mnist",),
        hflip=True,
        install_help=_FASHION_HELP,
    ),
    "mnist": IdxSpec(
        name="mnist",
        title="MNIST",
        classes=tuple(str(d) for d in range(10)),
        base_urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        # Unknown: no MNIST file could be hashed when this was written. Downloads are refused.
        sha256={
            "train-images-idx3-ubyte.gz": None,
            "train-labels-idx1-ubyte.gz": None,
            "t10k-images-idx3-ubyte.gz": None,
            "t10k-labels-idx1-ubyte.gz": None,
        },
        subdirs=("mnist", "MNIST/raw", "MNIST"),
        system_names=("mnist",),
        hflip=False,
        install_help=_MNIST_HELP,
    ),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read file ({e})") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DatasetError(f"{path}: truncated or corrupted gzip data ({e})") from e
    return raw


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array.

    Parameters
    ----------
    path : path
        The file.
    expected_magic : int, optional
        Required magic number (2051 for image files, 2049 for label files).

    Returns
    -------
    numpy.ndarray
        Array of the shape given by the header, native byte order.

    Raises
    ------
    DatasetError
        Unreadable, truncated or corrupted file, wrong magic number, or trailing data; the
        message names the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetError(f"{path}: truncated IDX file ({len(raw)} bytes, no complete header)")
    magic = int.from_bytes(raw[:4], "big")
    code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {magic} = {magic:#010x})")
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(
            f"{path}: wrong IDX magic number {magic} ({magic:#010x}), expected {expected_magic} "
            f"({expected_magic:#010x})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_TYPES[code]
    count = int(np.prod(dims, dtype=np.int64))
    expected = count * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise DatasetError(
            f"{path}: truncated IDX data ({got} bytes after the header, {expected} expected for "
            f"shape {dims})"
        )
    if got > expected:
        raise DatasetError(
            f"{path}: corrupted IDX file ({got - expected} unexpected bytes after the data of "
            f"shape {dims})"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _split_prefix(split: str) -> str:
    if split == "train":
        return "train"
    if split == "test":
        return "t10k"
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _file_names(prefix: str, kind: str) -> tuple[str, ...]:
    idx = "idx3" if kind == "images" else "idx1"
    stem = f"{prefix}-{kind}-{idx}-ubyte"
    dotted = f"{prefix}-{kind}.{idx}-ubyte"  # spelling used by some redistributions
    return (f"{stem}.gz", stem, f"{dotted}.gz", dotted)


def _find_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        p = folder / n
        if p.is_file():
            return p
    return None


def _probe(prefix: str):
    def probe(folder: Path) -> bool:
        return all(
            _find_file(folder, _file_names(prefix, k)) is not None for k in ("images", "labels")
        )

    return probe


def load_idx_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> ImageDataset:
    """Load MNIST or Fashion-MNIST from IDX files.

    Parameters
    ----------
    name : {"fashion-mnist", "mnist"}
        Dataset.
    split : {"train", "test"}
        ``train``: 60000 images; ``test``: the 10000 ``t10k`` images.
    data_dir : path, optional
        Folder holding the files (or a ``fashion-mnist``/``mnist`` subfolder of it). When
        given it is the only place looked at. Otherwise: ``$LACOOT_DATA`` (and its subfolder),
        ``/usr/share/datasets/<name>/``, the download cache, then a verified download.
    download : bool
        Allow the download step (only datasets with known SHA-256 are ever downloaded).

    Returns
    -------
    ImageDataset
        ``images`` ``uint8 (N, 1, 28, 28)``, ``labels`` ``int64 (N,)``, 10 classes, ``mean``/
        ``std`` computed from the loaded images (units of full scale).
    """
    spec = IDX_SPECS[name]
    prefix = _split_prefix(split)
    probe = _probe(prefix)
    root, tried = find_root(data_dir, probe, spec.subdirs, spec.system_names, cache_name=spec.name)
    if root is None:
        looked = ", ".join(str(p) for p in tried) or "(nowhere)"
        if data_dir is not None:
            raise DatasetNotFoundError(
                f"{spec.title} {split} files ({_file_names(prefix, 'images')[0]}, "
                f"{_file_names(prefix, 'labels')[0]}, compressed or not) not found in {looked}. "
                f"{spec.install_help}"
            )
        if not download:
            raise DatasetNotFoundError(
                f"{spec.title} not found (looked in {looked}) and download=False. "
                f"{spec.install_help}"
            )
        root = cache_dir(spec.name)
        for kind in ("images", "labels"):
            fname = _file_names(prefix, kind)[0]
            if (root / fname).is_file():
                continue
            download_file(
                [u + fname for u in spec.base_urls],
                root / fname,
                spec.sha256[fname],
                help_text=(
                    f"{spec.title} was not found locally (looked in {looked}). {spec.install_help}"
                ),
            )
    img_path = _find_file(root, _file_names(prefix, "images"))
    lab_path = _find_file(root, _file_names(prefix, "labels"))
    assert img_path is not None and lab_path is not None
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lab_path, IDX_LABELS_MAGIC)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"{img_path}: expected unsigned-byte images of shape (N, H, W)")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"label count mismatch: {img_path} holds {images.shape[0]} images but {lab_path} "
            f"holds {labels.shape[0]} labels"
        )
    n_cls = len(spec.classes)
    if labels.size and int(labels.max()) >= n_cls:
        raise DatasetError(
            f"{lab_path}: label {int(labels.max())} out of range for {n_cls} classes"
        )
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        spec.classes,
        name=spec.name,
        split=split,
        root=root,
        hflip=spec.hflip,
    )
