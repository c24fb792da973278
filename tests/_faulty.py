"""A tiny training setup and a loader that injects faults (signals, NaN batches)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch

import lacoot
from lacoot.data import ImageDataset, TensorLoader
from lacoot.models import create
from lacoot.train import TrainConfig


def tiny_loader(rank: int = 0, world_size: int = 1) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (96,), generator=g)
    data = ImageDataset(images, labels, classes=["a", "b", "c"])
    return TensorLoader(
        data, 16 // world_size, shuffle=True, augment=True, seed=0, drop_last=True, rank=rank,
        world_size=world_size,
    )  # fmt: skip


def tiny_model() -> tuple[torch.nn.Module, list[lacoot.Block]]:
    torch.manual_seed(0)
    model = create("resnet20", num_classes=3, in_channels=1, widths=[4, 4, 8])
    return model, lacoot.find_blocks(model, torch.zeros(2, 1, 8, 8))


# every block penalised by the ascent estimator (the library's defaults aim a random-direction
# penalty at a MACs budget; these tests are about faults and resuming, not targeting)
CFG = TrainConfig(epochs=3, lam=0.1, lr=0.05, schedule="cosine", amp=False, method="ascent",
                  target_macs=1.0)  # fmt: skip


class Faulty:
    """Wraps a loader: at (epoch, batch) it sends a signal to this process, or makes the
    batch's images NaN."""

    def __init__(self, loader: TensorLoader, epoch: int, batch: int, fault: str | int) -> None:
        self.loader, self.at, self.fault = loader, (epoch, batch), fault
        self.epoch = self.start = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch
        self.loader.set_epoch(epoch, start_batch=start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k, (x, y) in enumerate(self.loader, start=self.start):
            if (self.epoch, k) == self.at:
                if self.fault == "nan":
                    x = torch.full_like(x, float("nan"))
                else:
                    signal.raise_signal(int(self.fault))
            yield x, y
