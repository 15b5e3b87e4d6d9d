"""Batch-wise data augmentation on tensors (no torchvision dependency)."""

from __future__ import annotations

import torch

from hmdf_deploy.errors import HmdfError

AUGMENTATIONS = ("crop-flip",)
CROP_PAD = 4


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch: ``"crop-flip"`` = random 4-pixel-padded crop + random horizontal flip.

    Works on (B, C, H, W) and on (B, T, C, H, W); in the latter, every time step of a sample
    gets the same crop and flip (the scene does not jump between steps). Zero padding, like
    torchvision's RandomCrop(32, padding=4). Deterministic for a given generator state: all
    random draws come from ``generator`` (on its own device), none from the global RNG.
    """
    if kind not in AUGMENTATIONS:
        raise HmdfError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}.")
    if x.dim() not in (4, 5):
        raise HmdfError(
            f"augment_batch needs (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}."
        )
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-2], shape[-1])  # (B, T·C, H, W): one crop per sample
    return _crop_flip(flat, generator).reshape(shape)


def _crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    b, c, h, w = x.shape
    dev = generator.device
    dy = torch.randint(0, 2 * CROP_PAD + 1, (b,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * CROP_PAD + 1, (b,), generator=generator, device=dev).to(x.device)
    flip = (torch.rand(b, generator=generator, device=dev) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (CROP_PAD,) * 4)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (B, H)
    # A flipped sample reads its crop's columns right to left: crop and flip in one gather.
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
