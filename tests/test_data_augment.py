"""Augmentation and normalisation (lacoot.data.augment) against a direct reference."""

from __future__ import annotations

import torch

from lacoot.data import crop_flip, normalize


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
