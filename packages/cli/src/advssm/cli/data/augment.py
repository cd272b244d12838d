"""Batch augmentations as the paper uses them: RandomCrop with zero padding + horizontal flip.

An augmentation is a callable ``augment(x, generator) -> x`` over a batch (B, C, H, W), so the
trainer can apply it on the device with its own seeded generator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class CropFlip:
    """Random crop of the zero-padded image back to its size, then a horizontal flip with probability 1/2.

    Args:
        padding: pixels of zero padding on every side (the paper: 4).
        flip: whether to flip horizontally.
    """

    def __init__(self, padding: int = 4, flip: bool = True):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CropFlip expects images (B, C, H, W), got shape {tuple(x.shape)}")
        b, _, h, w = x.shape
        p = self.padding
        dev = x.device
        # draw on the generator's device so a CPU generator serves a batch on any device
        gen_device = generator.device if generator is not None else "cpu"
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=gen_device)
        flips = torch.rand(b, generator=generator, device=gen_device) < 0.5
        offsets, flips = offsets.to(dev), flips.to(dev)
        padded = F.pad(x, (p, p, p, p))
        rows = offsets[0, :, None] + torch.arange(h, device=dev)  # (B, H)
        cols = offsets[1, :, None] + torch.arange(w, device=dev)  # (B, W)
        if self.flip:
            # flipping the crop equals reading its columns backwards
            cols = torch.where(flips[:, None], cols.flip(-1), cols)
        batch = torch.arange(b, device=dev)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, flip={self.flip})"
