"""The HM-DF recurrence as an associative prefix scan over time (SPEC §7, "beyond the paper").

The step map f_t(v) = min(a_t·v + b_t, c_t) with a_t ≥ 0 is closed under composition:

    f2 ∘ f1 = (a2·a1,  a2·b1 + b2,  min(a2·c1 + b2, c2))

so every v_t = (f_t ∘ … ∘ f_0)(v_{−1} = 0) = min(B_t, C_t) follows from an inclusive scan in
⌈log2 T⌉ rounds (Hillis-Steele). In floating point the scan rounds differently from the loop.
"""

from __future__ import annotations

import torch
from torch import Tensor


def min_affine_scan(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """v_t for all t, from per-step maps min(a_t v + b_t, c_t) applied to v_{−1} = 0. Time is dim 0.

    Needs a ≥ 0 everywhere (the caller checks and falls back to the loop otherwise).
    """
    T = a.shape[0]
    a, b, c = torch.broadcast_tensors(a, b, c)
    shift = 1
    while shift < T:
        # compose each map with the one `shift` steps before it: f_t ∘ f_{t−shift}
        a2, b2, c2 = a[shift:], b[shift:], c[shift:]
        a1, b1, c1 = a[:-shift], b[:-shift], c[:-shift]
        head = (a[:shift], b[:shift], c[:shift])
        a = torch.cat([head[0], a2 * a1])
        b = torch.cat([head[1], a2 * b1 + b2])
        c = torch.cat([head[2], torch.minimum(a2 * c1 + b2, c2)])
        shift *= 2
    return torch.minimum(b, c)


def min_affine_loop(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The same v_t by the plain recurrence (the reference the scan is checked against)."""
    a, b, c = torch.broadcast_tensors(a, b, c)
    v, out = torch.zeros_like(b[0]), []
    for t in range(b.shape[0]):
        v = torch.minimum(a[t] * v + b[t], c[t])
        out.append(v)
    return torch.stack(out)
