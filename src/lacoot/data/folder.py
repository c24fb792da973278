"""Image-file datasets: class-per-folder trees (ImageFolder layout) and Tiny-ImageNet-200.

Images are decoded with Pillow and converted to RGB ``uint8``. Two ways to use them:

* :func:`load_image_folder` / :func:`load_tiny_imagenet` decode everything into an in-memory
  :class:`~lacoot.data.base.ImageDataset` (Tiny-ImageNet train: 100000 x 3 x 64 x 64 bytes =
  1.2 GB);
* :class:`ImageFileDataset` decodes lazily, one file per ``__getitem__``, for
  :class:`~lacoot.data.loaders.StreamingLoader` with worker processes.

ImageFolder layout: ``root/<class name>/**/<image>`` with classes sorted by folder name. Tiny-
ImageNet layout: ``wnids.txt`` (one WordNet id per line), ``train/<wnid>/images/*.JPEG`` and
``val/images/*.JPEG`` + ``val/val_annotations.txt`` (tab-separated: file name, wnid, box). Its
classes are the wnids in sorted order (the order an ImageFolder over ``train/`` would give).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .base import DatasetError, DatasetNotFoundError, ImageDataset, channel_stats

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "decode_image",
    "scan_image_folder",
    "scan_tiny_imagenet",
    "load_image_folder",
    "load_tiny_imagenet",
    "find_tiny_imagenet_root",
    "image_folder_files",
    "tiny_imagenet_files",
]

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

Sample = tuple[str, int]


def decode_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to an RGB ``uint8`` array.

    Parameters
    ----------
    path : path
        Image file (any format Pillow reads).
    size : (height, width), optional
        Resize to this size (bilinear) when the image differs.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(H, W, 3)``.

    Raises
    ------
    DatasetError
        Unreadable, truncated or corrupt image; the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
            if size is not None and (rgb.height, rgb.width) != tuple(size):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: corrupt or unreadable image file ({e})") from e


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p))


def scan_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[list[Sample], list[str]]:
    """List the images of a class-per-folder tree.

    Parameters
    ----------
    root : path
        Folder with one subfolder per class (hidden folders ignored); images are found
        recursively inside each class folder, in sorted path order.
    classes : sequence of str, optional
        Expected class names (for example those of the training tree when scanning the test
        tree). Every one must exist as a folder, and no other class folder may exist.

    Returns
    -------
    samples : list of (str, int)
        ``(file path, label)`` pairs, grouped by class.
    classes : list of str
        Class names; label ``k`` is ``classes[k]``.

    Raises
    ------
    DatasetError
        Missing root, no class folders, a missing or unexpected class folder, or an empty class;
        the message names the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"{root}: image folder does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        if not found:
            raise DatasetError(f"{root}: no class folders (expected root/<class>/<image>)")
        classes = found
    else:
        classes = [str(c) for c in classes]
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetError(f"{root / missing[0]}: missing class folder (class {missing[0]!r})")
        extra = [c for c in found if c not in classes]
        if extra:
            raise DatasetError(f"{root / extra[0]}: unexpected class folder {extra[0]!r}")
    samples: list[Sample] = []
    for label, c in enumerate(classes):
        files = _images_under(root / c)
        if not files:
            raise DatasetError(f"{root / c}: empty class folder (no image files)")
        samples += [(str(f), label) for f in files]
    return samples, list(classes)


def _read_wnids(root: Path) -> list[str]:
    path = root / "wnids.txt"
    try:
        wnids = [w.strip() for w in path.read_text().splitlines() if w.strip()]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    if not wnids:
        raise DatasetError(f"{path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path}: duplicate class ids")
    return sorted(wnids)


def scan_tiny_imagenet(
    root: str | os.PathLike, split: str = "train"
) -> tuple[list[Sample], list[str]]:
    """List the images of a Tiny-ImageNet-200 split.

    Parameters
    ----------
    root : path
        The ``tiny-imagenet-200`` folder (holding ``wnids.txt``, ``train/``, ``val/``).
    split : {"train", "test", "val"}
        ``train``: ``train/<wnid>/images/*``; ``test`` or ``val``: the labelled validation set
        ``val/images/*`` with labels from ``val/val_annotations.txt`` (the official test set has
        no labels).

    Returns
    -------
    samples : list of (str, int)
        ``(file path, label)`` pairs.
    classes : list of str
        Sorted wnids.

    Raises
    ------
    DatasetError
        Missing class folder, empty class, malformed annotation line, a wnid in
        ``val_annotations.txt`` that is not in ``wnids.txt``, or an annotated image that does
        not exist; the message names the file.
    """
    root = Path(root)
    classes = _read_wnids(root)
    index = {w: i for i, w in enumerate(classes)}
    samples: list[Sample] = []
    if split == "train":
        for w in classes:
            folder = root / "train" / w
            if not folder.is_dir():
                raise DatasetError(f"{folder}: missing class folder for wnid {w!r}")
            img_dir = folder / "images" if (folder / "images").is_dir() else folder
            files = sorted(p for p in img_dir.iterdir() if _is_image(p))
            if not files:
                raise DatasetError(f"{img_dir}: empty class folder (no image files)")
            samples += [(str(f), index[w]) for f in files]
    elif split in ("test", "val"):
        ann = root / "val" / "val_annotations.txt"
        try:
            lines = ann.read_text().splitlines()
        except OSError as e:
            raise DatasetError(f"{ann}: cannot read ({e})") from e
        img_dir = root / "val" / "images"
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) < 2:
                raise DatasetError(f"{ann}: line {lineno}: expected '<file>\\t<wnid>...'")
            fname, wnid = parts[0].strip(), parts[1].strip()
            if wnid not in index:
                raise DatasetError(
                    f"{ann}: line {lineno}: wnid {wnid!r} is not listed in {root / 'wnids.txt'}"
                )
            f = img_dir / fname
            if not f.is_file():
                raise DatasetError(f"{ann}: line {lineno}: image {f} does not exist")
            samples.append((str(f), index[wnid]))
        if not samples:
            raise DatasetError(f"{ann}: no annotated images")
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return samples, classes


def find_tiny_imagenet_root(data_dir: str | os.PathLike | None) -> Path:
    """Locate the ``tiny-imagenet-200`` folder (``data_dir`` itself or a subfolder of it, else
    ``$LACOOT_DATA`` and its subfolders)."""
    from .sources import find_root

    def probe(p: Path) -> bool:
        return (p / "wnids.txt").is_file() and ((p / "train").is_dir() or (p / "val").is_dir())

    root, tried = find_root(data_dir, probe, ("tiny-imagenet-200", "tiny-imagenet"))
    if root is None:
        looked = ", ".join(str(p) for p in tried) or "(nowhere: no data_dir and LACOOT_DATA unset)"
        raise DatasetNotFoundError(
            f"Tiny-ImageNet-200 not found (looked in {looked}). Download "
            "http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass the "
            "tiny-imagenet-200 folder or its parent with `--data-dir DIR` (data_dir=DIR) or set "
            "LACOOT_DATA=DIR."
        )
    return root


class ImageFileDataset(Dataset):
    """Lazily decoded image files, for streaming loaders.

    ``__getitem__`` returns ``(image, label)`` with ``image`` a ``uint8`` tensor ``(3, H, W)``
    and ``label`` an ``int``; decoding happens in the caller's process (a DataLoader worker).

    Parameters
    ----------
    samples : sequence of (path, int)
        Image files and labels.
    classes : sequence of str
        Class names.
    image_size : (height, width), optional
        Required size. Inferred from the first image when omitted.
    resize : bool
        Resize images of another size to ``image_size`` (bilinear) instead of raising.
    mean, std : sequence of float, optional
        Normalisation statistics (units of full scale); see :meth:`estimate_stats`.
    name, split : str
        Informational.
    hflip : bool
        Whether horizontal flipping preserves labels (loaders' default ``flip``).
    root : path, optional
        Folder the files come from (informational).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, int]],
        classes: Sequence[str],
        *,
        image_size: tuple[int, int] | None = None,
        resize: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        name: str = "imagefolder",
        split: str = "train",
        hflip: bool = True,
        root: str | os.PathLike | None = None,
    ) -> None:
        if not samples:
            raise ValueError("no samples")
        self.paths = [str(p) for p, _ in samples]
        self.labels = torch.tensor([int(lab) for _, lab in samples], dtype=torch.int64)
        self.classes = [str(c) for c in classes]
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes):
            raise ValueError("labels out of range of classes")
        if image_size is None:
            first = decode_image(self.paths[0])
            image_size = (first.shape[0], first.shape[1])
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.resize = bool(resize)
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)
        self.name = name
        self.split = split
        self.hflip = bool(hflip)
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(3, H, W)`` of one image."""
        return 3, self.image_size[0], self.image_size[1]

    def load(self, index: int) -> np.ndarray:
        """Decode sample ``index`` to a ``uint8`` array ``(H, W, 3)`` of the required size."""
        path = self.paths[index]
        arr = decode_image(path, self.image_size if self.resize else None)
        if arr.shape[:2] != self.image_size:
            raise DatasetError(
                f"{path}: image size {arr.shape[0]}x{arr.shape[1]} differs from "
                f"{self.image_size[0]}x{self.image_size[1]} (pass resize=True or image_size)"
            )
        return arr

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        arr = self.load(index)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), int(self.labels[index])

    def estimate_stats(
        self, max_images: int = 1000, seed: int = 0
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean/std (units of full scale) from up to ``max_images`` random images."""
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=gen)[:max_images].sort().values.tolist()
        batch = torch.stack([self[i][0] for i in idx])
        return channel_stats(batch)

    def to_memory(self, num_threads: int | None = None) -> ImageDataset:
        """Decode every image into an in-memory :class:`ImageDataset` (threads decode in
        parallel; Pillow releases the GIL while decoding)."""
        n = len(self)
        h, w = self.image_size
        out = np.empty((n, h, w, 3), dtype=np.uint8)

        def work(i: int) -> None:
            out[i] = self.load(i)

        workers = num_threads or min(8, os.cpu_count() or 1)
        if workers <= 1 or n < 64:
            for i in range(n):
                work(i)
        else:
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(work, range(n), chunksize=64))
        images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return ImageDataset(
            images,
            self.labels.clone(),
            self.classes,
            self.mean,
            self.std,
            name=self.name,
            split=self.split,
            root=self.root,
            hflip=self.hflip,
        )


def _folder_split_root(root: Path, split: str) -> tuple[Path, Path | None]:
    """Return (split tree, train tree) for an ImageFolder root with optional split folders."""
    names = {"train": ("train",), "test": ("test", "val")}[split]
    if (root / "train").is_dir():
        for n in names:
            if (root / n).is_dir():
                return root / n, root / "train"
        raise DatasetNotFoundError(
            f"{root}: no {' or '.join(repr(n) for n in names)} folder for split {split!r}"
        )
    if split != "train":
        raise DatasetNotFoundError(
            f"{root}: no train/ and test/ (or val/) subfolders, so split {split!r} does not exist "
            "(a tree without split folders is the training set)"
        )
    return root, None


def image_folder_files(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    image_size: tuple[int, int] | None = None,
    resize: bool = False,
) -> ImageFileDataset:
    """Streaming :class:`ImageFileDataset` over a class-per-folder tree.

    ``data_dir`` is either the tree itself (training split only) or a folder with ``train/``
    and ``test/`` (or ``val/``) trees; the test tree must have exactly the training classes.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tree, train_tree = _folder_split_root(Path(data_dir), split)
    classes = None
    if train_tree is not None and tree != train_tree:
        classes = sorted(
            p.name for p in train_tree.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    samples, classes = scan_image_folder(tree, classes)
    return ImageFileDataset(
        samples,
        classes,
        image_size=image_size,
        resize=resize,
        name="imagefolder",
        split=split,
        root=data_dir,
    )


def tiny_imagenet_files(
    data_dir: str | os.PathLike | None = None, split: str = "train"
) -> ImageFileDataset:
    """Streaming :class:`ImageFileDataset` over Tiny-ImageNet-200 (64x64 RGB, 200 classes).

    The image size is taken from the first image (64x64 for the real data) and every other image
    must match it.
    """
    root = find_tiny_imagenet_root(data_dir)
    samples, classes = scan_tiny_imagenet(root, split)
    return ImageFileDataset(samples, classes, name="tiny-imagenet", split=split, root=root)


def load_image_folder(
    data_dir: str | os.PathLike,
    split: str = "train",
    *,
    image_size: tuple[int, int] | None = None,
    resize: bool = False,
    num_threads: int | None = None,
) -> ImageDataset:
    """Decode a class-per-folder tree into memory (see :func:`image_folder_files`).

    Returns
    -------
    ImageDataset
        ``images`` ``uint8 (N, 3, H, W)`` (all images must share one size unless ``resize``),
        ``labels`` ``int64 (N,)``, classes sorted by folder name.
    """
    return image_folder_files(data_dir, split, image_size=image_size, resize=resize).to_memory(
        num_threads
    )


def load_tiny_imagenet(
    data_dir: str | os.PathLike | None = None,
    split: str = "train",
    *,
    num_threads: int | None = None,
) -> ImageDataset:
    """Decode Tiny-ImageNet-200 into memory.

    Returns
    -------
    ImageDataset
        ``train``: 100000 images, ``test`` (the labelled ``val`` set): 10000 images, all
        ``uint8 (3, 64, 64)``; 200 classes (sorted wnids).
    """
    return tiny_imagenet_files(data_dir, split).to_memory(num_threads)
