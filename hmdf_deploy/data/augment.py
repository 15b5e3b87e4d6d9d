"""Batch-wise data augmentation on tensors (no torchvision dependency)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hmdf_deploy.errors import HmdfError

AUGMENTATIONS = ("crop-flip",)
CROP_PAD = 4
#: Beta(α, α) for the mixing weight: the common DeiT / timm setting, Mixup or CutMix half and half.
MIXUP_ALPHA, CUTMIX_ALPHA = 0.8, 1.0


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


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (SPEC §4.5), one of the two per batch with equal odds: each sample is mixed
    with another of the batch (a random pairing), and its target becomes λ·onehot(y) + (1 − λ)·onehot(y'),
    λ ~ Beta(α, α) (CutMix: the share of the sample's own pixels in the box-cut image).

    Returns the mixed float batch and the (B, num_classes) soft targets. Works on (B, C, H, W) and
    (B, T, C, H, W); all the steps of a sample get the same mix. All random draws come from
    `generator`, so a run resumes exactly.
    """
    if x.dim() not in (4, 5):
        raise HmdfError(f"mix_batch needs (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}.")
    x = x.float()
    pair = torch.randperm(len(y), generator=generator, device=generator.device).to(x.device)
    cut = bool(torch.rand((), generator=generator, device=generator.device) < 0.5)
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    lam = float(np.random.default_rng(seed).beta(*(2 * [CUTMIX_ALPHA if cut else MIXUP_ALPHA])))
    if cut:
        x, lam = _cutmix(x, pair, lam, generator)
    else:
        x = lam * x + (1 - lam) * x[pair]
    onehot = F.one_hot(y, num_classes).float()
    return x, lam * onehot + (1 - lam) * onehot[pair]


def _cutmix(x: torch.Tensor, pair: torch.Tensor, lam: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Paste a box of area about (1 − λ)·H·W from each sample's pair; λ recomputed from the box as
    clipped at the image's edges."""
    h, w = x.shape[-2:]
    dev = generator.device
    cy, cx = (int(torch.randint(n, (), generator=generator, device=dev)) for n in (h, w))
    half_h, half_w = int(h * (1 - lam) ** 0.5) // 2, int(w * (1 - lam) ** 0.5) // 2
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, h)
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, w)
    x = x.clone()
    x[..., y0:y1, x0:x1] = x[pair][..., y0:y1, x0:x1]
    return x, 1 - (y1 - y0) * (x1 - x0) / (h * w)
