"""augment_batch: random crop (pad 4) + horizontal flip, deterministic per generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmdf_deploy.data import augment_batch
from hmdf_deploy.errors import HmdfError


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _candidates(img):
    """Every crop-flip of one (C, H, W) image."""
    h, w = img.shape[-2:]
    padded = F.pad(img, (4, 4, 4, 4))
    for dy in range(9):
        for dx in range(9):
            crop = padded[..., dy:dy + h, dx:dx + w]
            yield crop
            yield crop.flip(-1)


def test_shapes_and_determinism():
    x = torch.randn(8, 3, 12, 10)
    a = augment_batch(x, "crop-flip", _gen(0))
    b = augment_batch(x, "crop-flip", _gen(0))
    c = augment_batch(x, "crop-flip", _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_each_sample_is_a_padded_crop_possibly_flipped():
    x = torch.randn(6, 2, 8, 8)
    out = augment_batch(x, "crop-flip", _gen(3))
    for i in range(len(x)):
        assert any(torch.equal(out[i], cand) for cand in _candidates(x[i]))


def test_time_steps_share_the_crop():
    frame = torch.randn(5, 2, 8, 8)
    x = frame[:, None].expand(5, 4, 2, 8, 8).contiguous()  # (B, T, C, H, W), equal steps
    out = augment_batch(x, "crop-flip", _gen(0))
    assert out.shape == x.shape
    for t in range(1, 4):
        assert torch.equal(out[:, t], out[:, 0])
    # and the crop is the one the 4-D call draws with the same generator state
    assert torch.equal(out[:, 0], augment_batch(frame, "crop-flip", _gen(0)))


def test_flips_and_shifts_both_happen():
    x = torch.arange(64.0).reshape(1, 1, 8, 8).repeat(64, 1, 1, 1)
    out = augment_batch(x, "crop-flip", _gen(0))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 20


def test_bad_arguments():
    with pytest.raises(HmdfError, match="unknown augmentation 'rotate'"):
        augment_batch(torch.zeros(1, 1, 4, 4), "rotate", _gen(0))
    with pytest.raises(HmdfError, match=r"\(B, C, H, W\) or \(B, T, C, H, W\)"):
        augment_batch(torch.zeros(4, 4), "crop-flip", _gen(0))
