"""The synapse kernel: an implicit-GEMM convolution (a linear layer is its 1×1 case) over packed weights.

    out[n, o, y, x] = scale_t[o] · Σ_k X[n, k; y, x] · W[o, k] + shift_t[o]      (SPEC §6)

with k = (c, dy, dx) running over the receptive field; the input patch is gathered straight from
the (N, C, H, W) tensor (no im2col copy). Weights stay packed in memory, one row of K = C·kh·kw
codes per output channel:

- "trit2": 1.5-bit codes, 4 per byte, 2-bit two's complement (the layout of `pack.pack_trits_2bit`);
- "sign1": 1-bit codes, 8 per byte, bit = 1 ⇔ +1 (`pack.pack_signs`);
- "fp32": dense float32 (layers left unquantized).

Each tile of packed bytes is loaded once and decoded in registers with shifts and masks. When the
input is uint8 4-bit codes and the weights are codes, the products go through an int8 dot with an
int32 accumulator: exact, whatever the order (SPEC §6 "additions only"). Otherwise the dot runs in
float32 ("ieee", no TF32) so results match the torch reference to float rounding.
The epilogue applies the per-(t, channel) affine: rows n of step t = t0 + n // rows_per_step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from hmdf_deploy.deploy.pack import pack
from hmdf_deploy.errors import HmdfError

SCHEMES = {"fp32": 0, "sign1": 1, "trit2": 2}
_SCHEME_OF = {"fp32": "fp32", "1bit": "sign1", "1.5bit": "trit2"}
_PAD_CODE = {"sign1": 1, "trit2": 0}  # padding codes; their products are masked to zero anyway
_PER_BYTE = {"sign1": 8, "trit2": 4}
MAX_NUMEL = 2**31 - 1


@dataclass
class PackedWeight:
    """A synapse's weights in the kernel's layout: one packed row per output channel."""

    data: Tensor  # (O, row_bytes) uint8, or (O, K) float32 for "fp32"
    scheme: str
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]  # (kh, kw); (1, 1) for a linear layer

    @property
    def K(self) -> int:
        return self.in_channels * self.kernel[0] * self.kernel[1]


def pack_weight(weight: Tensor, weights: str, device: torch.device | str = "cpu") -> PackedWeight:
    """Pack a Synapse's `weight` ((O, C, kh, kw) or (O, K); int8 codes or float32) for `synapse`.

    `weights` is the Synapse's "fp32", "1bit" or "1.5bit". Rows are padded to whole bytes.
    """
    scheme = _SCHEME_OF[weights]
    O = weight.shape[0]
    kernel = tuple(weight.shape[2:]) if weight.dim() == 4 else (1, 1)
    flat = weight.reshape(O, -1)
    if scheme == "fp32":
        data = flat.to(torch.float32)
    else:
        per = _PER_BYTE[scheme]
        padded = torch.nn.functional.pad(flat.to(torch.int8), (0, -flat.shape[1] % per), value=_PAD_CODE[scheme])
        data = pack(padded, scheme).view(O, -1)
    return PackedWeight(data.contiguous().to(device), scheme, O, weight.shape[1], kernel)


@triton.jit
def _unpacked_tile(w_ptr, o, k, omask, kmask, K, row_bytes, SCHEME: tl.constexpr):
    """The (BLOCK_K, BLOCK_N) tile W[o, k]ᵀ decoded in registers (codes as int32, or float32)."""
    mask = kmask[:, None] & omask[None, :]
    if SCHEME == 0:
        w = tl.load(w_ptr + o[None, :] * K + k[:, None], mask=mask, other=0.0)
    elif SCHEME == 1:  # bit j of byte k // 8 is element k: 1 ⇔ +1
        byte = tl.load(w_ptr + o[None, :] * row_bytes + (k // 8)[:, None], mask=mask, other=0).to(tl.int32)
        w = 2 * ((byte >> (k % 8)[:, None]) & 1) - 1
    else:  # bits 2j..2j+1 of byte k // 4: 00 → 0, 01 → +1, 11 → −1
        byte = tl.load(w_ptr + o[None, :] * row_bytes + (k // 4)[:, None], mask=mask, other=0).to(tl.int32)
        field = (byte >> (2 * (k % 4))[:, None]) & 3
        w = tl.where(field == 3, -1, field)
    return w


@triton.jit
def synapse_tile(x_ptr, w_ptr, sc_ptr, sh_ptr, m, o, mmask, omask, step,
                 O, K, Cin, H, W, Ho, Wo, stride, pad, row_bytes, aff_rows, aff_cols,
                 KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) tile scale_t ⊙ (W ⊛ x) + shift_t, float32, for output rows m (sample,
    y, x) and channels o, with `step` (BLOCK_M,) the time step of each row."""
    P = Ho * Wo
    n, p = m // P, m % P
    ih0 = (p // Wo) * stride - pad
    iw0 = (p % Wo) * stride - pad
    if INT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        c, r = k // (KH * KW), k % (KH * KW)
        ih = ih0[:, None] + (r // KW)[None, :]
        iw = iw0[:, None] + (r % KW)[None, :]
        xmask = mmask[:, None] & kmask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = tl.load(x_ptr + ((n[:, None] * Cin + c[None, :]) * H + ih) * W + iw, mask=xmask, other=0)
        wt = _unpacked_tile(w_ptr, o, k, omask, kmask, K, row_bytes, SCHEME)
        if INT:
            acc += tl.dot(xt.to(tl.int8), wt.to(tl.int8))
        else:
            acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    row = tl.minimum(step, aff_rows - 1)[:, None]
    col = tl.where(aff_cols > 1, o, 0)[None, :]
    mask = mmask[:, None] & omask[None, :]
    scale = tl.load(sc_ptr + row * aff_cols + col, mask=mask, other=0.0)
    shift = tl.load(sh_ptr + row * aff_cols + col, mask=mask, other=0.0)
    return acc.to(tl.float32) * scale + shift


@triton.jit(do_not_specialize=["t0"])  # one compiled kernel for every step of a stream
def _synapse_kernel(x_ptr, w_ptr, sc_ptr, sh_ptr, out_ptr,
                    M, O, K, Cin, H, W, Ho, Wo, stride, pad, row_bytes,
                    rows_per_step, t0, aff_rows, aff_cols,
                    KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, omask = m < M, o < O
    y = synapse_tile(x_ptr, w_ptr, sc_ptr, sh_ptr, m, o, mmask, omask, t0 + m // rows_per_step,
                     O, K, Cin, H, W, Ho, Wo, stride, pad, row_bytes, aff_rows, aff_cols,
                     KH, KW, SCHEME, INT, BLOCK_M, BLOCK_N, BLOCK_K)
    P = Ho * Wo
    out = out_ptr + ((m // P)[:, None] * O + o[None, :]) * P + (m % P)[:, None]
    tl.store(out, y, mask=mmask[:, None] & omask[None, :])


def blocks(M: int, O: int, K: int, interpreted: bool = False) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K) for M output rows (samples × pixels), O channels, K = C·kh·kw.

    On a GPU, from a sweep on an H200 (benchmarks/triton_tiles.py, RESULTS.md "GPU kernels"): large
    tiles for many rows; for few rows (batch 1) narrower ones, so the layer still spreads over the
    SMs, and with very few rows (8×8 maps, linear layers) a long K step. The interpreter runs each
    program in Python, so there the largest tiles (fewest programs) are fastest."""
    def fit(n: int, high: int) -> int:  # tl.dot needs at least 16
        return max(16, min(high, triton.next_power_of_2(max(n, 1))))

    if interpreted:
        return fit(M, 256), fit(O, 128), fit(K, 128)
    if M >= 2048:
        return 64, fit(O, 64), 64 if M >= 4096 else 32
    if M >= 128:
        return 32, fit(O, 64), 64
    return 16, 16, 128


class Geometry(NamedTuple):
    """A synapse call's sizes: N input rows of (Cin, H, W) (a linear layer: (K, 1, 1)) → (Ho, Wo)."""

    N: int
    Cin: int
    H: int
    W: int
    Ho: int
    Wo: int
    out_shape: tuple[int, ...]


def conv_geometry(x: Tensor, w: PackedWeight, stride: int, padding: int, steps: int) -> Geometry:
    """Check x against w and `steps`, and size the output ((N, O, Ho, Wo), or (N, O) for a linear layer)."""
    linear = x.dim() == 2
    N = x.shape[0]
    Cin, H, W = (x.shape[1], 1, 1) if linear else x.shape[1:]
    if Cin != w.in_channels:
        raise ValueError(f"input has {Cin} channels, the weights expect {w.in_channels}")
    if steps < 1 or N % steps:
        raise ValueError(f"{N} rows do not split into {steps} steps")
    (KH, KW), O = w.kernel, w.out_channels
    Ho, Wo = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    if max(x.numel(), N * O * Ho * Wo) > MAX_NUMEL:
        raise HmdfError("a layer's input or output has more elements than the triton kernels address (2**31); "
                        "use a smaller batch")
    return Geometry(N, Cin, H, W, Ho, Wo, (N, O) if linear else (N, O, Ho, Wo))


def synapse(x: Tensor, w: PackedWeight, scale: Tensor, shift: Tensor, *, stride: int = 1, padding: int = 0,
            t0: int = 0, steps: int = 1, tiles: tuple[int, int, int] | None = None) -> Tensor:
    """scale_t ⊙ (W ⊛ x) + shift_t for x (N, C, H, W) (conv) or (N, K) (linear), float32 or uint8 codes.

    The N rows are `steps` consecutive time steps of N / steps samples each, starting at step t0;
    `scale`/`shift` are each (R, O) or (R, 1), R ∈ {1, T}, and step t reads row min(t, R − 1).
    Returns float32 (N, O, Ho, Wo) or (N, O). `tiles` overrides the block sizes of `blocks`.
    """
    g = conv_geometry(x, w, stride, padding, steps)
    out = torch.empty(g.out_shape, dtype=torch.float32, device=x.device)
    M = g.N * g.Ho * g.Wo
    if M == 0:
        return out
    # one (R, O') layout for both (no copy when they already share it, as the backend's do)
    scale, shift = (t.contiguous() for t in torch.broadcast_tensors(scale, shift))
    BM, BN, BK = tiles or blocks(M, w.out_channels, w.K, x.device.type == "cpu")
    _synapse_kernel[(triton.cdiv(M, BM), triton.cdiv(w.out_channels, BN))](
        x.contiguous(), w.data, scale, shift, out,
        M, w.out_channels, w.K, g.Cin, g.H, g.W, g.Ho, g.Wo, stride, padding, w.data.shape[1],
        M // steps, t0, scale.shape[0], scale.shape[1],
        KH=w.kernel[0], KW=w.kernel[1], SCHEME=SCHEMES[w.scheme], INT=integer_dot(x, w),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK,
        enable_fp_fusion=False)  # the epilogue rounds like torch: a multiply, then an add
    return out


def integer_dot(x: Tensor, w: PackedWeight) -> bool:
    """uint8 inputs are 4-bit codes (0..15): with code weights the int8 dot is exact."""
    return x.dtype == torch.uint8 and w.scheme != "fp32"
