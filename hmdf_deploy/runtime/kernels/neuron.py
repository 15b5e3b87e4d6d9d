"""Neuron kernels: the fused step (looped over any number of steps) and the time-parallel scan.

Both read a neuron's input current once and write its spikes once (as uint8 4-bit codes, or
float32), with every per-(t, channel) parameter gathered in registers:

    I' = k_t[c] · I + c_t[c]            the Mem-BN fold left on the neuron (SPEC §3.1), if any
    m  = λ_t[c] · v + I'                 charge (v = 0 before the first step)
    s  = max(m − θ_t, 0), v = min(m, θ_t)   graded spike and PPR (SPEC §1, §2); LIF: s = θ·1[m ≥ θ], v = m − s
    out = clamp(round(4 s), 0, 15)       4-bit code, round half to even (SPEC §1.2 decision)

in the order and with the roundings of `Reference._neuron_step` (no fused multiply-add: kernels
launch with enable_fp_fusion=False), so the loop kernel matches the torch reference bit for bit;
the scan reassociates (SPEC §7: compare it with a tolerance).

Layout: inputs are (T, B, C, *spatial) contiguous; element e of a step is in channel
(e // S) % C with S the spatial size. A per-step parameter is a (R, C') tensor, C' ∈ {1, C},
and step t reads row min(t, R − 1) (graph.py), so streams past T reuse the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from hmdf_deploy.deploy.graph import Neuron
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.runtime.kernels.grid import cdiv

HMDF, LIF, PARALLEL = 0, 1, 2
_MODELS = {"hmdf": HMDF, "lif": LIF, "parallel": PARALLEL}
#: Offsets are int32 inside the kernels.
MAX_NUMEL = 2**31 - 1


@dataclass
class NeuronParams:
    """A Neuron node's tensors on the kernels' device, each per-step one as (R, C') float32."""

    model: int
    codes: bool  # output 4-bit codes (uint8) instead of float32 spikes
    threshold: Tensor  # (R, 1)
    leak: Tensor | None  # (R, C'); None for parallel neurons
    in_scale: Tensor | None  # (R, C')
    in_shift: Tensor | None
    #: SPEC §7: the min-affine scan needs an HM-DF neuron with λ̂ ≥ 0 in every step and channel
    #: (decided once here: on a GPU each look at the values is a wait for the device).
    scannable: bool = False

    @classmethod
    def from_node(cls, n: Neuron, device: torch.device | str) -> "NeuronParams":
        def prep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=torch.float32).reshape(t.shape[0], -1).contiguous()

        k, c = prep(n.in_scale), prep(n.in_shift)
        if k is not None:  # the kernels index both with one (R, C') layout
            k, c = (t.contiguous() for t in torch.broadcast_tensors(k, c))
        return cls(_MODELS[n.model], n.spikes == "4bit",
                   prep(n.threshold), prep(n.leak), k, c, n.model == "hmdf" and bool((n.leak >= 0).all()))


# -------------------------------------------------------------------------------- jit helpers
@triton.jit
def param(ptr, rows, cols, t, ch):
    """Row min(t, rows − 1), column ch (or 0 when the parameter has one column) of a (rows, cols) tensor."""
    r = tl.minimum(t, rows - 1)
    return tl.load(ptr + r * cols + tl.where(cols > 1, ch, 0))


@triton.jit
def spike_code(s):
    """clamp(round(4 s), 0, 15) as uint8, round half to even, without relying on the float rounding mode."""
    x = tl.minimum(tl.maximum(s * 4.0, 0.0), 15.0)
    r = tl.floor(x)
    f = x - r  # exact: x and r are within a factor of two of each other or r = 0
    up = (f > 0.5) | ((f == 0.5) & ((r.to(tl.int32) & 1) == 1))
    return (r + up.to(tl.float32)).to(tl.uint8)


@triton.jit
def neuron_step(x, v, t, ch, th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, aff_rows, aff_cols,
                MODEL: tl.constexpr, AFFINE: tl.constexpr):
    """Step t of a neuron on its input current x from membrane v: returns (spike, membrane)."""
    if AFFINE:
        x = param(k_ptr, aff_rows, aff_cols, t, ch) * x + param(c_ptr, aff_rows, aff_cols, t, ch)
    th = tl.load(th_ptr + tl.minimum(t, th_rows - 1))
    if MODEL == 2:  # parallel: stateless
        s = tl.maximum(x - th, 0.0)
    else:
        m = param(lk_ptr, lk_rows, lk_cols, t, ch) * v + x
        if MODEL == 0:  # HM-DF: graded spike, PPR
            s = tl.maximum(m - th, 0.0)
            v = tl.minimum(m, th)
        else:  # LIF: spike of height θ, subtract reset
            s = tl.where(m >= th, th, 0.0)
            v = m - s
    return s, v


@triton.jit
def spikes_out(s, CODES: tl.constexpr):
    """What is stored of spikes s: their 4-bit codes (uint8), or themselves (float32)."""
    if CODES:  # a constexpr: only one branch is compiled, so `out` has one type
        out = spike_code(s)
    else:
        out = s
    return out


@triton.jit
def store_spikes(ptr, s, mask, CODES: tl.constexpr):
    tl.store(ptr, spikes_out(s, CODES), mask=mask)


@triton.jit
def _compose(a1, b1, c1, a2, b2, c2):
    """(f2 ∘ f1) for f(m) = min(a·m + b, c), a ≥ 0 (SPEC §7); f1 is the earlier step."""
    return a2 * a1, a2 * b1 + b2, tl.minimum(a2 * c1 + b2, c2)


# ------------------------------------------------------------------------------------ kernels
@triton.jit(do_not_specialize=["t0"])  # one compiled kernel for every step of a stream
def _steps_kernel(i_ptr, s_ptr, v_in_ptr, v_out_ptr,
                  th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, aff_rows, aff_cols,
                  N, C, S, T, t0,
                  MODEL: tl.constexpr, CODES: tl.constexpr, AFFINE: tl.constexpr,
                  STATE_IN: tl.constexpr, STATE_OUT: tl.constexpr, BLOCK: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < N
    ch = (e // S) % C
    v = tl.zeros([BLOCK], dtype=tl.float32)
    if STATE_IN:
        v = tl.load(v_in_ptr + e, mask=mask, other=0.0)
    for j in range(T):
        t = t0 + j
        x = tl.load(i_ptr + j * N + e, mask=mask, other=0.0)
        s, v = neuron_step(x, v, t, ch, th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, aff_rows, aff_cols,
                           MODEL, AFFINE)
        store_spikes(s_ptr + j * N + e, s, mask, CODES)
    if STATE_OUT:
        tl.store(v_out_ptr + e, v, mask=mask)


@triton.jit
def _scan_kernel(i_ptr, s_ptr, th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, aff_rows, aff_cols,
                 N, C, S, T,
                 CODES: tl.constexpr, AFFINE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    # m_t = a_t·min(m_{t−1}, θ_{t−1}) + I_t = min(a_t·m_{t−1} + I_t, a_t·θ_{t−1} + I_t): a min-affine
    # map of the previous membrane before reset, so the scan yields m_t, and s_t, v_t follow from it.
    e = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    emask = e < N
    ch = (e // S) % C
    m_prev = tl.zeros([BLOCK_N], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        rel = tl.arange(0, BLOCK_T)[:, None]
        t = t0 + rel
        mask = (t < T) & emask[None, :]
        x = tl.load(i_ptr + t * N + e[None, :], mask=mask, other=0.0)
        if AFFINE:
            x = param(k_ptr, aff_rows, aff_cols, t, ch[None, :]) * x + param(c_ptr, aff_rows, aff_cols, t, ch[None, :])
        th = tl.load(th_ptr + tl.minimum(t, th_rows - 1))
        th_prev = tl.load(th_ptr + tl.minimum(tl.maximum(t - 1, 0), th_rows - 1))
        a = tl.where(t == 0, 0.0, param(lk_ptr, lk_rows, lk_cols, t, ch[None, :]))
        c = tl.where(t == 0, x, a * th_prev + x)
        A, B, Cm = tl.associative_scan((a, x, c), 0, _compose)
        m = tl.minimum(A * m_prev[None, :] + B, Cm)
        store_spikes(s_ptr + t * N + e[None, :], tl.maximum(m - th, 0.0), mask, CODES)
        last = tl.minimum(T - t0, BLOCK_T) - 1
        m_prev = tl.sum(tl.where(rel == last, m, 0.0), axis=0)


# ---------------------------------------------------------------------------------- launchers
def _layout(i: Tensor) -> tuple[int, int, int]:
    """(N, C, S) of a (T, B, C, *spatial) input: elements per step, channels, spatial size."""
    if i.dim() < 3:
        raise ValueError(f"neuron input must be (T, B, C, ...), got shape {tuple(i.shape)}")
    if i.numel() > MAX_NUMEL:
        raise HmdfError(f"{i.numel():,} neuron inputs are more than the triton kernels address (2**31); use a smaller batch")
    S = math.prod(i.shape[3:])
    return i.shape[1] * i.shape[2] * S, i.shape[2], S


def param_args(p: NeuronParams) -> list:
    leak = p.leak if p.leak is not None else p.threshold
    k, c = (p.in_scale, p.in_shift) if p.in_scale is not None else (p.threshold, p.threshold)
    return [p.threshold, p.threshold.shape[0], leak, leak.shape[0], leak.shape[1],
            k, c, k.shape[0], k.shape[1]]


def check_state(v: Tensor | None, shape: tuple[int, ...]) -> None:
    """A membrane passed in must be float32 and of the layer's (B, C, …) shape: the kernels index it blindly."""
    if v is not None and (tuple(v.shape) != tuple(shape) or v.dtype != torch.float32):
        raise ValueError(f"membrane of shape {tuple(v.shape)} ({v.dtype}), expected {tuple(shape)} (torch.float32)")


def _spikes(i: Tensor, p: NeuronParams) -> Tensor:
    return torch.empty(i.shape, dtype=torch.uint8 if p.codes else torch.float32, device=i.device)


def neuron_steps(i: Tensor, p: NeuronParams, t0: int = 0, v: Tensor | None = None,
                 keep_state: bool = True, block: int = 1024) -> tuple[Tensor, Tensor | None]:
    """Steps t0 … t0+T−1 of a neuron on inputs i (T, B, C, …) float32, from membrane v (B, C, …)
    (None: v_{−1} = 0). Returns the spikes (T, B, C, …) and, when `keep_state` and the neuron is
    stateful, the membrane after the last step (a new tensor; v is not modified)."""
    N, C, S = _layout(i)
    check_state(v, i.shape[1:])
    i = i.to(torch.float32).contiguous()
    s = _spikes(i, p)
    stateful = p.model != PARALLEL
    v_out = torch.empty(i.shape[1:], dtype=torch.float32, device=i.device) if keep_state and stateful else None
    if N and i.shape[0]:
        v_in = v.contiguous() if v is not None and stateful else i
        _steps_kernel[(cdiv(N, block),)](
            i, s, v_in, v_out if v_out is not None else i, *param_args(p), N, C, S, i.shape[0], t0,
            MODEL=p.model, CODES=p.codes, AFFINE=p.in_scale is not None,
            STATE_IN=v is not None and stateful, STATE_OUT=v_out is not None, BLOCK=block, enable_fp_fusion=False)
    elif v_out is not None:  # zero steps: the membrane is unchanged
        v_out.copy_(v if v is not None else torch.zeros_like(v_out))
    return s, v_out


def neuron_scan(i: Tensor, p: NeuronParams, block_t: int = 16, block_n: int = 256) -> Tensor:
    """Spikes (T, B, C, …) of an HM-DF neuron over a whole sequence from v_{−1} = 0, by the
    associative scan of SPEC §7 (blocks of `block_t` steps, carried from block to block)."""
    if not p.scannable:
        raise ValueError("the scan needs an HM-DF neuron with a non-negative leak; use neuron_steps")
    N, C, S = _layout(i)
    i = i.to(torch.float32).contiguous()
    s = _spikes(i, p)
    if N and i.shape[0]:
        _scan_kernel[(cdiv(N, block_n),)](
            i, s, *param_args(p), N, C, S, i.shape[0],
            CODES=p.codes, AFFINE=p.in_scale is not None, BLOCK_T=block_t, BLOCK_N=block_n, enable_fp_fusion=False)
    return s
