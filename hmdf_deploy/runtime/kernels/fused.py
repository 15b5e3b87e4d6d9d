"""A synapse and the neuron that reads it, in one kernel: the current never goes to memory.

For a conv / linear layer followed by its neuron (the common case in every architecture here),
each program computes a tile of the synapse (`gemm.synapse_tile`: packed weights, exact int32 on
4-bit codes, per-(t, channel) affine) and runs the neuron step on it in registers (`neuron.neuron_step`),
storing only the spikes (uint8 codes or float32) and, at the end, the membrane. Steps loop inside
the program with the membrane in registers, so the same kernel serves one streaming step (T = 1,
membrane in and out) and a whole sequence (T steps from v = 0).

Per element and step that is 1 byte of codes written, against 4 + 4 bytes of a float32 current
written by the synapse and read back by a separate neuron kernel, and one launch instead of two.
It computes exactly what `synapse` then `neuron_steps` compute, operation for operation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from hmdf_deploy.runtime.kernels.gemm import (
    SCHEMES, PackedWeight, Tiles, blocks, check_tiles, conv_geometry, gather, integer_dot, lanes_along_rows, nchw,
    scatter, synapse, synapse_tile, taps,
)
from hmdf_deploy.runtime.kernels.grid import cdiv
from hmdf_deploy.runtime.kernels.neuron import (
    PARALLEL, NeuronParams, check_state, neuron_step, neuron_steps, param_args, spikes_out,
)


@triton.jit(do_not_specialize=["t0"])
def _synapse_neuron_kernel(x_ptr, w_ptr, sc_ptr, sh_ptr, s_ptr, v_in_ptr, v_out_ptr,
                           th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, in_rows, in_cols,
                           M, O, Cin, Cp, H, W, Ho, Wo, stride, pad, row_len, aff_rows, aff_cols, T, t0,
                           KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr,
                           TAPS: tl.constexpr,
                           MODEL: tl.constexpr, CODES: tl.constexpr, AFFINE: tl.constexpr,
                           STATE_IN: tl.constexpr, STATE_OUT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           PIXELS: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, omask = m < M, o < O
    mask = mmask[:, None] & omask[None, :]
    P = Ho * Wo
    here = nchw(m, o, O, P)  # offsets in (B, O, Ho, Wo)
    x_step = (M // P) * Cin * H * W  # one step's input (B, C, H, W) and output (B, O, Ho, Wo)
    out_step = M * O
    ch = tl.minimum(o, O - 1)[None, :]  # masked columns still read an existing channel's parameters
    v = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if STATE_IN:
        v = gather(v_in_ptr, here, mask, PIXELS)
    for j in range(T):
        t = t0 + j
        i = synapse_tile(x_ptr + j * x_step, w_ptr, sc_ptr, sh_ptr, m, o, mmask, omask, t + m * 0,
                         Cin, Cp, H, W, Ho, Wo, stride, pad, row_len, aff_rows, aff_cols,
                         KH, KW, SCHEME, INT, TAPS, BLOCK_M, BLOCK_N, BLOCK_K, PIXELS)
        s, v = neuron_step(i, v, t, ch, th_ptr, th_rows, lk_ptr, lk_rows, lk_cols, k_ptr, c_ptr, in_rows, in_cols,
                           MODEL, AFFINE)
        scatter(s_ptr + j * out_step, here, spikes_out(s, CODES), mask, PIXELS)
    if STATE_OUT:
        scatter(v_out_ptr, here, v, mask, PIXELS)


def synapse_neuron(x: Tensor, w: PackedWeight, scale: Tensor, shift: Tensor, p: NeuronParams, *,
                   stride: int = 1, padding: int = 0, t0: int = 0, steps: int = 1, v: Tensor | None = None,
                   keep_state: bool = True, tiles: Tiles | None = None) -> tuple[Tensor, Tensor | None]:
    """`neuron_steps(synapse(x, …), p, t0, v)` in one kernel. x holds `steps` consecutive time steps
    of B samples ((steps·B, C, H, W) or (steps·B, K)), starting at step t0; v is the membrane
    (B, O, Ho, Wo) before them (None: 0). Returns the spikes (steps·B, O, …) (uint8 codes or float32)
    and, when `keep_state` and the neuron is stateful, the membrane after the last step. Tiles that
    split the K steps run as the two kernels: a neuron needs whole sums."""
    g = conv_geometry(x, w, stride, padding, steps)
    B, stateful = g.N // steps, p.model != PARALLEL
    check_state(v, (B, *g.out_shape[1:]))
    M = B * g.Ho * g.Wo
    tiles = Tiles(*(tiles or blocks(M, w, x.device.type == "cpu")))
    check_tiles(w, tiles)
    if tiles.split > 1:  # the neuron needs whole sums: the split synapse, then the neuron kernel
        i = synapse(x, w, scale, shift, stride=stride, padding=padding, t0=t0, steps=steps, tiles=tiles)
        s, v_out = neuron_steps(i.reshape(steps, B, *i.shape[1:]), p, t0, v, keep_state)
        return s.reshape(i.shape), v_out
    spikes = torch.empty(g.out_shape, dtype=torch.uint8 if p.codes else torch.float32, device=x.device)
    v_out = torch.empty((B, *g.out_shape[1:]), dtype=torch.float32, device=x.device) if keep_state and stateful else None
    if M == 0:
        if v_out is not None:
            v_out.copy_(v if v is not None else torch.zeros_like(v_out))
        return spikes, v_out
    scale, shift = (t.contiguous() for t in torch.broadcast_tensors(scale, shift))
    v_in = v.contiguous() if v is not None and stateful else spikes
    _synapse_neuron_kernel[(cdiv(M, tiles.m), cdiv(w.out_channels, tiles.n))](
        x.contiguous(), w.data, scale, shift, spikes, v_in, v_out if v_out is not None else spikes,
        *param_args(p), M, w.out_channels, g.Cin, w.tap_channels, g.H, g.W, g.Ho, g.Wo, stride, padding,
        w.data.shape[1],
        scale.shape[0], scale.shape[1], steps, t0,
        KH=w.kernel[0], KW=w.kernel[1], SCHEME=SCHEMES[w.scheme], INT=integer_dot(x, w), TAPS=taps(w),
        MODEL=p.model, CODES=p.codes, AFFINE=p.in_scale is not None,
        STATE_IN=v is not None and stateful, STATE_OUT=v_out is not None,
        BLOCK_M=tiles.m, BLOCK_N=tiles.n, BLOCK_K=tiles.k, PIXELS=lanes_along_rows(g), num_warps=tiles.warps,
        enable_fp_fusion=False)
    return spikes, v_out
