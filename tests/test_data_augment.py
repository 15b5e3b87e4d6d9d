"""augment_batch: random crop (pad 4) + horizontal flip; mix_batch: Mixup / CutMix with soft targets.
Both deterministic per generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hmdf_deploy.data import augment_batch, mix_batch
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


# ----------------------------------------------------------------------------- Mixup / CutMix
def _read_mix(x, out, target):
    """From a batch whose labels are 0..B−1 (so each target row names the sample and its partner),
    which mix `out` is: ("mixup", λ per sample) or ("cutmix", the pasted box), checked pixel by pixel."""
    B = len(x)
    lam = target.diagonal()
    partner = torch.where(lam < 1, (target - torch.diag(lam)).argmax(1), torch.arange(B))
    if all(torch.allclose(out[i], lam[i] * x[i] + (1 - lam[i]) * x[partner[i]], atol=1e-6) for i in range(B)):
        return "mixup", lam
    pasted = torch.stack([(out[i] != x[i]) for i in range(B)]).flatten(0, -3).any(0)  # (H, W) pixels changed
    rows, cols = pasted.any(1).nonzero().flatten(), pasted.any(0).nonzero().flatten()
    box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
    inside = torch.zeros_like(pasted)
    inside[box] = True
    for i in range(B):
        assert torch.equal(out[i][..., inside], x[partner[i]][..., inside])
        assert torch.equal(out[i][..., ~inside], x[i][..., ~inside])
        if partner[i] != i:  # λ is the share of the sample's own pixels
            assert float(lam[i]) == pytest.approx(1 - float(inside.float().mean()), abs=1e-6)
    return "cutmix", inside


@pytest.mark.parametrize("shape", [(6, 2, 8, 8), (6, 3, 2, 8, 8)], ids=["images", "event-frames"])
def test_mix_is_mixup_or_cutmix_with_matching_soft_targets(shape):
    """Each sample is λ·itself + (1 − λ)·its partner (Mixup), or its partner pasted in one box shared
    by the batch and by every time step (CutMix), and the target rows say exactly that; both
    kinds come up, deterministically per generator."""
    kinds = set()
    for seed in range(12):
        x = torch.randn(shape, generator=_gen(100 + seed))
        y = torch.arange(shape[0])
        out, target = mix_batch(x, y, shape[0], _gen(seed))
        again = mix_batch(x, y, shape[0], _gen(seed))
        assert torch.equal(out, again[0]) and torch.equal(target, again[1])
        assert out.shape == x.shape and target.shape == (shape[0], shape[0])
        assert torch.allclose(target.sum(1), torch.ones(shape[0])) and bool((target >= 0).all())
        kind, _ = _read_mix(x, out, target)
        kinds.add(kind)
    assert kinds == {"mixup", "cutmix"}


def test_mix_targets_over_more_classes_than_samples():
    x, y = torch.rand(4, 1, 6, 6, generator=_gen(1)), torch.tensor([7, 7, 2, 9])
    _, target = mix_batch(x, y, 10, _gen(5))
    assert target.shape == (4, 10) and torch.allclose(target.sum(1), torch.ones(4))
    assert bool((target[:, [0, 1, 3, 4, 5, 6, 8]] == 0).all())  # only the batch's labels get weight


def test_mix_refuses_other_shapes():
    with pytest.raises(HmdfError, match=r"\(B, C, H, W\) or \(B, T, C, H, W\)"):
        mix_batch(torch.zeros(4, 4), torch.zeros(4, dtype=torch.long), 2, _gen(0))

