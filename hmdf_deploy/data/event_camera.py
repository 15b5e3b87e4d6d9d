"""neuro-digits: an event-camera recording of the 8×8 digits, simulated offline (SPEC §8,
DESIGN "Data that works offline").

The simulation follows how N-MNIST was recorded: a static digit is shown to an event sensor
that makes three fast saccades along a triangle, and each pixel emits an ON (p=1) or OFF (p=0)
event whenever its log-intensity has moved by a contrast threshold since its last event.

- Sensor: 32×32 pixels, 2 polarities (``SENSOR_SIZE`` = (W, H, P)); the digit is upsampled
  bilinearly 8 → 24 pixels and placed in the centre, shifted by up to ±1 pixel per sample.
- Motion: three linear saccades of 100 ms each around an equilateral triangle of radius
  2.5 pixels, simulated in 20 sub-steps per saccade (≤ 0.22 pixel per sub-step); intensity is
  rendered by bilinear interpolation, so it changes linearly within a sub-step and event times
  are interpolated exactly inside it (integer µs).
- Sensor non-idealities, drawn per sample: contrast thresholds 0.25 ± 5 % per pixel (fixed
  pattern mismatch), a random initial reference level per pixel (so pixels do not fire in
  lockstep), and background-activity noise events at 0.5 Hz per pixel.
- Network input (``INPUT_SIZE``): 16×16, the 32×32 sensor summed in 2×2 blocks, so a small conv
  net trains in minutes on a laptop CPU.

Randomness comes from one numpy Generator per sample, seeded by (seed, sample index): a sample's
events do not depend on which other samples are simulated with it. Nothing is cached on disk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import EVENT_DTYPE, EventRecording, to_frames

SENSOR_SIZE = (32, 32, 2)  # (W, H, P), Tonic's order
INPUT_SIZE = (16, 16)  # (H, W) of the frames a network sees
DIGIT_PIXELS = 24  # the 8×8 digit upsampled ×3, like N-MNIST's 28 px digits on 34 px
SACCADES = 3
SACCADE_US = 100_000
SUBSTEPS = 20  # per saccade
SACCADE_RADIUS = 2.5  # pixels: the triangle's circumradius
THRESHOLD = 0.25  # log-intensity contrast threshold
THRESHOLD_MISMATCH = 0.05  # relative std of the per-pixel threshold
LOG_EPS = 0.1  # intensity floor: the log of a black background stays finite
NOISE_HZ = 0.5  # background activity per pixel
PLACEMENT_JITTER = 1  # pixels
DURATION_US = SACCADES * SACCADE_US
_MARGIN = 4  # scene border around the sensor view, larger than the saccade radius + 1


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear upsampling matrix (half-pixel centres, edge clamped)."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (src - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), lo), 1 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def _saccade_offsets() -> np.ndarray:
    """(K+1, 2) view offsets (dy, dx) in pixels at every sub-step boundary."""
    angles = np.deg2rad([90.0, 210.0, 330.0, 90.0])
    vertices = SACCADE_RADIUS * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    steps = [vertices[0:1]]
    frac = (np.arange(1, SUBSTEPS + 1) / SUBSTEPS)[:, None]
    for a, b in zip(vertices[:-1], vertices[1:]):
        steps.append(a + frac * (b - a))
    return np.concatenate(steps)


class _Sample:
    """Per-sample random draws: placement, threshold maps, initial reference offsets, noise."""

    def __init__(self, seed: int, index: int):
        rng = np.random.default_rng([seed, index])
        w, h, _ = SENSOR_SIZE
        self.jitter = rng.integers(-PLACEMENT_JITTER, PLACEMENT_JITTER + 1, size=2)
        mismatch = 1 + THRESHOLD_MISMATCH * rng.standard_normal((2, h, w))
        self.thresholds = (THRESHOLD * np.clip(mismatch, 0.5, 1.5)).astype(np.float32)
        self.ref_offset = rng.uniform(-0.5, 0.5, (h, w)).astype(np.float32)
        n = rng.poisson(NOISE_HZ * w * h * DURATION_US * 1e-6)
        self.noise = (rng.integers(0, w, n), rng.integers(0, h, n),
                      rng.integers(0, DURATION_US, n), rng.integers(0, 2, n))


def _scenes(images: np.ndarray, samples: list[_Sample]) -> np.ndarray:
    """(N, H + 2M, W + 2M) scene: upsampled digits placed, with jitter, in a black canvas."""
    w, h, _ = SENSOR_SIZE
    up = _bilinear_matrix(images.shape[-1], DIGIT_PIXELS)
    digits = np.einsum("ij,njk,lk->nil", up, images, up, optimize=True)
    scene = np.zeros((len(images), h + 2 * _MARGIN, w + 2 * _MARGIN), np.float32)
    jitter = np.array([s.jitter for s in samples]).reshape(-1, 2)
    top = _MARGIN + (h - DIGIT_PIXELS) // 2
    # One vectorised copy per distinct (dy, dx): at most 9 passes, not one per sample.
    for dy, dx in {tuple(j) for j in jitter.tolist()}:
        rows = np.flatnonzero((jitter[:, 0] == dy) & (jitter[:, 1] == dx))
        y0, x0 = top + dy, top + dx
        scene[rows, y0:y0 + DIGIT_PIXELS, x0:x0 + DIGIT_PIXELS] = digits[rows]
    return scene


def _view_log(scene: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Log intensity the sensor sees at a sub-pixel offset: bilinear from four shifted slices."""
    w, h, _ = SENSOR_SIZE
    iy, ix = np.floor(offset).astype(int)
    # Python floats keep the arithmetic in float32 (a numpy float64 scalar would upcast).
    fy, fx = (float(v) for v in offset - np.floor(offset))
    y0, x0 = _MARGIN + iy, _MARGIN + ix
    s = lambda dy, dx: scene[:, y0 + dy:y0 + dy + h, x0 + dx:x0 + dx + w]  # noqa: E731
    view = ((1 - fy) * ((1 - fx) * s(0, 0) + fx * s(0, 1))
            + fy * ((1 - fx) * s(1, 0) + fx * s(1, 1)))
    view += LOG_EPS
    return np.log(view, out=view)


def _crossings(ref, lp, ln, thr, sign):
    """Events of one polarity in one sub-step: flat pixel ids and time fractions.

    A pixel whose log-intensity moves from ``lp`` to ``ln`` (linearly in time) fires at each
    level ref + j·thr (j = 1, 2, ...) it passes; the j-th event happens at the fraction of the
    sub-step where the line reaches that level. ``ref`` (flat) is advanced in place. Only the
    few pixels that fire are touched; repeats are expanded with np.repeat, not loops.
    """
    pix = np.flatnonzero(sign * (ln - ref) >= thr)
    ref_p, thr_p, lp_p, ln_p = ref[pix], thr[pix], lp[pix], ln[pix]
    per = np.floor(sign * (ln_p - ref_p) / thr_p).astype(np.int64)
    rep = np.repeat(np.arange(pix.size), per)
    j = np.arange(rep.size) - np.repeat(np.cumsum(per) - per, per) + 1
    level = ref_p[rep] + sign * j * thr_p[rep]
    frac = np.clip((level - lp_p[rep]) / (ln_p[rep] - lp_p[rep]), 0.0, 1.0)
    ref[pix] = ref_p + sign * per * thr_p
    return pix[rep], frac


def simulate_events(images: np.ndarray, indices: Sequence[int], seed: int) -> list[np.ndarray]:
    """Simulate the event sensor over ``images`` (N, 8, 8) in [0, 1]; one stream per image.

    ``indices`` are the images' dataset indices (they seed each sample's randomness). Returns
    `EVENT_DTYPE` arrays sorted by time, on a `SENSOR_SIZE` sensor.
    """
    w, h, _ = SENSOR_SIZE
    samples = [_Sample(seed, int(i)) for i in indices]
    scene = _scenes(images, samples)
    offsets = _saccade_offsets()
    dt = SACCADE_US / SUBSTEPS
    thr = [np.stack([s.thresholds[p] for s in samples]).ravel() for p in (0, 1)]  # OFF, ON
    lp = _view_log(scene, offsets[0]).ravel()
    # |lp - ref| < both thresholds, so no pixel fires before the sensor moves.
    offset = np.stack([s.ref_offset for s in samples]).ravel()
    ref = lp + offset * np.minimum(thr[0], thr[1])
    chunks = []
    for k in range(1, len(offsets)):  # a loop over sub-steps (60); events are vectorised
        ln = _view_log(scene, offsets[k]).ravel()
        for p, sign in ((1, 1.0), (0, -1.0)):
            pix, frac = _crossings(ref, lp, ln, thr[p], sign)
            t = ((k - 1 + frac) * dt).astype(np.int64)
            chunks.append((pix, t, np.full(pix.size, p, np.int8)))
        lp = ln
    return _assemble(chunks, samples, h * w, w)


def _assemble(chunks, samples: list[_Sample], pixels: int, w: int) -> list[np.ndarray]:
    """Merge the sub-step chunks and noise into one time-sorted stream per sample."""
    flat = np.concatenate([c[0] for c in chunks])
    noise_n = [len(s.noise[0]) for s in samples]
    n = np.concatenate([flat // pixels, np.repeat(np.arange(len(samples)), noise_n)])
    pix = flat % pixels
    x = np.concatenate([pix % w] + [s.noise[0] for s in samples])
    y = np.concatenate([pix // w] + [s.noise[1] for s in samples])
    t = np.concatenate([c[1] for c in chunks] + [s.noise[2] for s in samples])
    p = np.concatenate([c[2] for c in chunks] + [s.noise[3] for s in samples])
    # One integer key (sample, time) sorts faster than np.lexsort; stable keeps ties in
    # generation order, so the result is deterministic.
    order = np.argsort(n * DURATION_US + t, kind="stable")
    events = np.empty(order.size, EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x[order], y[order], t[order], p[order]
    bounds = np.cumsum(np.bincount(n, minlength=len(samples)))[:-1]
    return np.split(events, bounds)


def _check_seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HmdfError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def make_neuro_digit_recordings(
    seed: int, indices: Sequence[int] | None = None
) -> list[EventRecording]:
    """Event recordings (with labels) of the digits at ``indices`` (all 1797 when None).

    Deterministic for ``seed``; a sample's events depend only on (seed, its index). Used by
    `load_dataset("neuro-digits")` and to write events.npz files (``hmdf data make-events``).
    """
    from hmdf_deploy.data.digits import digit_images

    seed = _check_seed(seed)
    images, labels = digit_images()
    idx = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(labels))):
        raise HmdfError(f"neuro-digits indices must lie in [0, {len(labels) - 1}].")
    streams = simulate_events(images[idx], idx, seed)
    return [
        EventRecording(ev, SENSOR_SIZE, int(labels[i]), None, f"neuro-digits seed={seed} index={i}")
        for ev, i in zip(streams, idx.tolist())
    ]


def neuro_digit_frames(seed: int, T: int, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames (N, T, 2, 16, 16) float32: each recording binned into T equal time windows."""
    recordings = make_neuro_digit_recordings(seed, indices)
    frames = [to_frames(r.events, r.sensor_size, n_time_bins=T, size=INPUT_SIZE)
              for r in recordings]
    n_pol = SENSOR_SIZE[2]
    return np.stack(frames) if frames else np.zeros((0, T, n_pol, *INPUT_SIZE), np.float32)
