"""The synapse kernel: an implicit-GEMM convolution (a linear layer is its 1×1 case) over packed weights.

    out[n, o, y, x] = scale_t[o] · Σ_k X[n, k; y, x] · W[o, k] + shift_t[o]      (SPEC §6)

with k = (dy, dx, c) running over the receptive field; the input patch is gathered straight from
the (N, C, H, W) tensor (no im2col copy). Weights stay packed in memory, one row per output channel
holding kh·kw taps of C' ≥ C codes each (C rounded up to whole bytes, so every tap starts on a byte):

- "trit2": 1.5-bit codes, 4 per byte, 2-bit two's complement (the layout of `pack.pack_trits_2bit`);
- "sign1": 1-bit codes, 8 per byte, bit = 1 ⇔ +1 (`pack.pack_signs`);
- "fp32": dense float32 (layers left unquantized).

Each byte of packed codes is loaded once, unmasked along K so that the loads vectorize (what lies
past a step's codes meets zero inputs; `SLACK` bytes after the last row keep it in bounds), and
decoded in registers with shifts and masks. With 16 or more input channels a K step stays inside
one tap (dy, dx): the input rows' offsets and padding masks are worked out once per step and the
channels are a plain stride. Fewer channels (a network's first layer) run over the taps' padded
codes as one flat K instead, so that a K step is not mostly masked. A warp loads the input tile
with its lanes along the rows (consecutive output pixels, whose inputs lie a stride apart, so the
loads coalesce; see `gather`), or along the channels for a linear layer. Each step's loads are
issued one step ahead. When the input is uint8 4-bit codes and the weights are codes, the products
go through an int8 dot with an int32 accumulator: exact, whatever the order (SPEC §6 "additions
only"). Otherwise the dot runs in float32 ("ieee", no TF32) so results match the torch reference
to float rounding.
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
from hmdf_deploy.runtime.kernels.grid import cdiv, next_power_of_2

SCHEMES = {"fp32": 0, "sign1": 1, "trit2": 2}
_SCHEME_OF = {"fp32": "fp32", "1bit": "sign1", "1.5bit": "trit2"}
_PAD_CODE = {"sign1": 1, "trit2": 0}  # padding codes; their products are masked to zero anyway
_PER_BYTE = {"sign1": 8, "trit2": 4}
MAX_NUMEL = 2**31 - 1
MAX_BLOCK_K = 256
MAX_SPLIT = 64  # programs sharing one tile's K steps; the sum kernel unrolls one load per share
#: Zero bytes kept after packed weights: a K step's byte loads run unmasked along K (so they
#: vectorize), and the last row's steps, with the one prefetched past the end, read up to
#: 2 · MAX_BLOCK_K / 4 bytes beyond it.
SLACK = 2 * MAX_BLOCK_K // 4


@dataclass
class PackedWeight:
    """A synapse's weights in the kernel's layout: one packed row per output channel."""

    data: Tensor  # (O, kh·kw·C' / codes per byte) uint8, or (O, kh·kw·C) float32 for "fp32"
    scheme: str
    out_channels: int
    in_channels: int
    kernel: tuple[int, int]  # (kh, kw); (1, 1) for a linear layer
    tap_channels: int  # C': in_channels rounded up to whole bytes of codes (equal for "fp32")

    @property
    def K(self) -> int:
        """Weights per output channel (padding excluded)."""
        return self.in_channels * self.kernel[0] * self.kernel[1]


def pack_weight(weight: Tensor, weights: str, device: torch.device | str = "cpu") -> PackedWeight:
    """Pack a Synapse's `weight` ((O, C, kh, kw) or (O, K); int8 codes or float32) for `synapse`.

    `weights` is the Synapse's "fp32", "1bit" or "1.5bit". Each tap's codes are padded to whole bytes.
    """
    scheme = _SCHEME_OF[weights]
    O, C = weight.shape[:2]
    kernel = tuple(weight.shape[2:]) if weight.dim() == 4 else (1, 1)
    by_tap = weight.reshape(O, C, -1).transpose(1, 2)  # (O, kh·kw, C): a tap's channels side by side
    if scheme == "fp32":
        return PackedWeight(by_tap.reshape(O, -1).to(device, torch.float32).contiguous(), scheme, O, C, kernel, C)
    cp = C + -C % _PER_BYTE[scheme]
    data = pack(torch.nn.functional.pad(by_tap.to(torch.int8), (0, cp - C), value=_PAD_CODE[scheme]), scheme)
    buffer = torch.zeros(data.numel() + SLACK, dtype=torch.uint8, device=device)  # see SLACK
    buffer[:data.numel()] = data.reshape(-1)
    return PackedWeight(buffer[:data.numel()].view(O, -1), scheme, O, C, kernel, cp)


def check_tiles(w: PackedWeight, tiles: Tiles) -> None:
    """Tiles the kernels can run, on weights with room after them: a K loop reads up to
    2 · BLOCK_K / (codes per byte) ≤ SLACK bytes past the last packed row."""
    if not 16 <= tiles.k <= MAX_BLOCK_K or tiles.k != next_power_of_2(tiles.k):
        raise ValueError(f"BLOCK_K must be a power of two from 16 to {MAX_BLOCK_K}, not {tiles.k}")
    if not 1 <= tiles.split <= MAX_SPLIT:
        raise ValueError(f"the K steps split over {tiles.split} programs: it must be 1 to {MAX_SPLIT}")
    if w.scheme != "fp32":
        room = w.data.untyped_storage().nbytes() - w.data.storage_offset() - w.data.numel()
        if not w.data.is_contiguous() or room < SLACK:
            raise ValueError("packed weights need SLACK bytes after them in memory: make them with pack_weight")


@triton.jit
def gather(ptr, off, mask, PIXELS: tl.constexpr):
    """The (BLOCK_M, n) tile at offsets `off` from ptr (0 where masked off), rows m = (sample,
    output pixel). Each lane of a warp loads one element, and which of the tile's two axes the
    lanes run along decides whether a warp's loads coalesce. PIXELS (see `lanes_along_rows`):
    along the rows, consecutive output pixels, which lie a stride apart in NCHW memory; the tile
    is loaded as its transpose for that, which also leaves each thread one row's offsets and masks
    to hold rather than all BLOCK_M of them (sm_90: the `synapse` tilings `blocks` picks take up to
    half the registers and no longer spill). Otherwise (a linear layer) along the channels."""
    if PIXELS:
        return tl.trans(tl.load(ptr + tl.trans(off), mask=tl.trans(mask), other=0))
    return tl.load(ptr + off, mask=mask, other=0)


@triton.jit
def scatter(ptr, off, value, mask, PIXELS: tl.constexpr):
    """Store the (BLOCK_M, BLOCK_N) tile `value` at offsets `off` from ptr, lanes laid as in `gather`."""
    if PIXELS:
        tl.store(ptr + tl.trans(off), tl.trans(value), mask=tl.trans(mask))
    else:
        tl.store(ptr + off, value, mask=mask)


@triton.jit
def nchw(m, o, O, P):
    """Offsets of rows m = (sample, pixel) and channels o in an (N, O, P pixels) tensor."""
    return ((m // P)[:, None] * O + o[None, :]) * P + (m % P)[:, None]


@triton.jit
def _operands(x_ptr, x_row, w_ptr, s, steps, ih0, iw0, mmask, o, omask, Cin, Cp, H, W, row_len,
              KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, TAPS: tl.constexpr, BLOCK_K: tl.constexpr,
              PIXELS: tl.constexpr):
    """K step s's input tile (BLOCK_M, BLOCK_K) and its weights as stored: (BLOCK_K / codes per byte,
    BLOCK_N) bytes of packed codes, or (BLOCK_K, BLOCK_N) float32. For s ≥ steps the input tile and
    float32 weights are masked off; packed bytes are not (see below).
    TAPS: BLOCK_K channels of one tap; otherwise BLOCK_K consecutive codes of the padded taps, each
    element its own tap. Either way a step's codes are consecutive in the packed row from k0 on, and
    k0 falls on a byte boundary, so each byte is loaded once."""
    HW = H * W
    live_c = tl.where(s < steps, Cin, 0)  # (a scalar bool in a mask trips the interpreter)
    if TAPS:  # tap (dy, dx) = divmod(r, KW): row offsets and masks once per row, channels a stride
        c_blocks = tl.cdiv(Cin, BLOCK_K)
        r = s // c_blocks
        c0 = (s - r * c_blocks) * BLOCK_K
        c = c0 + tl.arange(0, BLOCK_K)
        kmask = c < live_c
        ih, iw = ih0 + r // KW, iw0 + r % KW
        rmask = mmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = gather(x_ptr, (x_row + ih * W + iw)[:, None] + (c * HW)[None, :], rmask[:, None] & kmask[None, :], PIXELS)
        k0, k_live = r * Cp + c0, r * Cp + live_c  # codes k0 … k_live − 1 of the row are this step's
    else:
        k = s * BLOCK_K + tl.arange(0, BLOCK_K)
        r, c = k // Cp, k % Cp
        kmask = (r < KH * KW) & (c < live_c)
        ih = ih0[:, None] + (r // KW)[None, :]
        iw = iw0[:, None] + (r % KW)[None, :]
        xmask = mmask[:, None] & kmask[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = gather(x_ptr, x_row[:, None] + (c * HW)[None, :] + ih * W + iw, xmask, PIXELS)
        k0, k_live = s * BLOCK_K, tl.where(s < steps, KH * KW * Cp, 0)
    if SCHEME == 0:
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + o[None, :] * row_len + k[:, None], mask=(k < k_live)[:, None] & omask[None, :], other=0)
    else:
        # Bytes past this step's codes (the next tap's, or the slack after the last row) are read
        # unmasked so the loads vectorize: whatever codes they hold meet zero inputs, masked above.
        PER: tl.constexpr = 8 if SCHEME == 1 else 4
        kb = k0 // PER + tl.arange(0, BLOCK_K // PER)
        w = tl.load(w_ptr + o[None, :] * row_len + kb[:, None], mask=omask[None, :], other=0)
    return xt, w


@triton.jit
def _decoded(w, SCHEME: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Weights as stored → a (BLOCK_K, BLOCK_N) tile of codes (int32) or float32. Each byte of codes
    is expanded in registers: code j of a byte sits at bit j (sign1) or bits 2j..2j+1 (trit2)."""
    if SCHEME == 1:  # bit j: 1 ⇔ +1
        bits = (w.to(tl.int32)[:, None, :] >> tl.arange(0, 8)[None, :, None]) & 1
        codes = tl.reshape(2 * bits - 1, (BLOCK_K, BLOCK_N))
    elif SCHEME == 2:  # bits 2j..2j+1: 00 → 0, 01 → +1, 11 → −1
        field = (w.to(tl.int32)[:, None, :] >> (2 * tl.arange(0, 4))[None, :, None]) & 3
        codes = tl.reshape(tl.where(field == 3, -1, field), (BLOCK_K, BLOCK_N))
    else:
        codes = w
    return codes


@triton.jit
def k_steps(Cin, Cp, KH: tl.constexpr, KW: tl.constexpr, TAPS: tl.constexpr, BLOCK_K: tl.constexpr):
    """How many K steps of BLOCK_K a synapse takes (see `_operands`)."""
    return KH * KW * tl.cdiv(Cin, BLOCK_K) if TAPS else tl.cdiv(KH * KW * Cp, BLOCK_K)


@triton.jit
def _accumulate(x_ptr, w_ptr, m, o, mmask, omask, first, last,
                Cin, Cp, H, W, Ho, Wo, stride, pad, row_len,
                KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr, TAPS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PIXELS: tl.constexpr):
    """Σ x ⋅ W over K steps first ≤ s < last (last ≤ the synapse's steps) for output rows m
    (sample, y, x) and channels o: an exact int32 (BLOCK_M, BLOCK_N) tile on integer codes, else
    float32."""
    P = Ho * Wo
    n, p = m // P, m % P
    ih0 = (p // Wo) * stride - pad
    iw0 = (p % Wo) * stride - pad
    x_row = n * Cin * H * W  # (BLOCK_M,) offsets of each row's sample (int32: see MAX_NUMEL)
    if INT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    # Each step's loads are issued a step early, the tiles waiting in registers: byte loads are too
    # narrow for the asynchronous copies of Triton's own pipelining, so this hides their latency.
    xt, wt = _operands(x_ptr, x_row, w_ptr, first, last, ih0, iw0, mmask, o, omask, Cin, Cp, H, W, row_len,
                       KH, KW, SCHEME, TAPS, BLOCK_K, PIXELS)
    for s in range(first, last):
        x_next, w_next = _operands(x_ptr, x_row, w_ptr, s + 1, last, ih0, iw0, mmask, o, omask, Cin, Cp, H, W,
                                   row_len, KH, KW, SCHEME, TAPS, BLOCK_K, PIXELS)
        w = _decoded(wt, SCHEME, BLOCK_K, BLOCK_N)
        if INT:
            acc += tl.dot(xt.to(tl.int8), w.to(tl.int8))
        else:
            acc += tl.dot(xt.to(tl.float32), w.to(tl.float32), input_precision="ieee")
        xt, wt = x_next, w_next
    return acc


@triton.jit
def synapse_tile(x_ptr, w_ptr, sc_ptr, sh_ptr, m, o, mmask, omask, step,
                 Cin, Cp, H, W, Ho, Wo, stride, pad, row_len, aff_rows, aff_cols,
                 KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr, TAPS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PIXELS: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) tile scale_t ⊙ (W ⊛ x) + shift_t, float32, for output rows m (sample,
    y, x) and channels o, with `step` (BLOCK_M,) the time step of each row."""
    acc = _accumulate(x_ptr, w_ptr, m, o, mmask, omask, 0, k_steps(Cin, Cp, KH, KW, TAPS, BLOCK_K),
                      Cin, Cp, H, W, Ho, Wo, stride, pad, row_len,
                      KH, KW, SCHEME, INT, TAPS, BLOCK_M, BLOCK_N, BLOCK_K, PIXELS)
    return _affine(acc, sc_ptr, sh_ptr, o, mmask, omask, step, aff_rows, aff_cols)


@triton.jit
def _affine(acc, sc_ptr, sh_ptr, o, mmask, omask, step, aff_rows, aff_cols):
    """scale_t ⊙ acc + shift_t in float32, `step` (BLOCK_M,) the time step of each row."""
    row = tl.minimum(step, aff_rows - 1)[:, None]
    col = tl.where(aff_cols > 1, o, 0)[None, :]
    mask = mmask[:, None] & omask[None, :]
    scale = tl.load(sc_ptr + row * aff_cols + col, mask=mask, other=0.0)
    shift = tl.load(sh_ptr + row * aff_cols + col, mask=mask, other=0.0)
    return acc.to(tl.float32) * scale + shift


@triton.jit(do_not_specialize=["t0"])  # one compiled kernel for every step of a stream
def _synapse_kernel(x_ptr, w_ptr, sc_ptr, sh_ptr, out_ptr, part_ptr,
                    M, O, Cin, Cp, H, W, Ho, Wo, stride, pad, row_len,
                    rows_per_step, t0, aff_rows, aff_cols,
                    KH: tl.constexpr, KW: tl.constexpr, SCHEME: tl.constexpr, INT: tl.constexpr, TAPS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PIXELS: tl.constexpr,
                    SPLIT: tl.constexpr):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, omask = m < M, o < O
    if SPLIT == 1:
        y = synapse_tile(x_ptr, w_ptr, sc_ptr, sh_ptr, m, o, mmask, omask, t0 + m // rows_per_step,
                         Cin, Cp, H, W, Ho, Wo, stride, pad, row_len, aff_rows, aff_cols,
                         KH, KW, SCHEME, INT, TAPS, BLOCK_M, BLOCK_N, BLOCK_K, PIXELS)
        scatter(out_ptr, nchw(m, o, O, Ho * Wo), y, mmask[:, None] & omask[None, :], PIXELS)
    else:  # this program's share of the K steps, added to the others' by `_split_sum_kernel`
        steps = k_steps(Cin, Cp, KH, KW, TAPS, BLOCK_K)
        share = tl.cdiv(steps, SPLIT)
        first = tl.minimum(tl.program_id(2) * share, steps)  # a share past the end is empty, its loads masked
        acc = _accumulate(x_ptr, w_ptr, m, o, mmask, omask, first, tl.minimum(first + share, steps),
                          Cin, Cp, H, W, Ho, Wo, stride, pad, row_len,
                          KH, KW, SCHEME, INT, TAPS, BLOCK_M, BLOCK_N, BLOCK_K, PIXELS)
        part = part_ptr + (tl.program_id(2) * M + m[:, None]) * O + o[None, :]
        tl.store(part, acc, mask=mmask[:, None] & omask[None, :])


@triton.jit(do_not_specialize=["t0"])
def _split_sum_kernel(part_ptr, sc_ptr, sh_ptr, out_ptr, M, O, P, rows_per_step, t0, aff_rows, aff_cols,
                      SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PIXELS: tl.constexpr):
    """The (SPLIT, M, O) partial sums added in a fixed order (exact on int32), then the epilogue."""
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask, omask = m < M, o < O
    mask = mmask[:, None] & omask[None, :]
    here = m[:, None] * O + o[None, :]
    acc = tl.load(part_ptr + here, mask=mask, other=0)
    for j in tl.static_range(1, SPLIT):
        acc += tl.load(part_ptr + j * M * O + here, mask=mask, other=0)
    y = _affine(acc, sc_ptr, sh_ptr, o, mmask, omask, t0 + m // rows_per_step, aff_rows, aff_cols)
    scatter(out_ptr, nchw(m, o, O, P), y, mask, PIXELS)


class Tiles(NamedTuple):
    """A synapse launch's block sizes (BLOCK_M rows × BLOCK_N channels, K steps of BLOCK_K), warps
    per program (ignored by the interpreter), and over how many programs a tile's K steps are split
    (`synapse`: each adds up its share, a second small kernel adds the shares; meant for layers with
    few rows, whose K loop is otherwise long and their programs few, but `blocks` picks 1 until it
    is timed on a GPU)."""

    m: int
    n: int
    k: int
    warps: int = 4
    split: int = 1


def taps(w: PackedWeight) -> bool:
    """Whether K steps go tap by tap (16+ input channels fill a dot's K) or flat over the padded taps."""
    return w.in_channels >= 16


def blocks(M: int, w: PackedWeight, interpreted: bool = False) -> Tiles:
    """The tiles for M output rows (samples × pixels) of the synapse `w`.

    On a GPU, from two sweeps on an H200 (benchmarks/triton_tiles.py, RESULTS.md "GPU kernels"):
    wide tiles with 8 warps for many rows; for few rows (batch 1) small tiles with long K steps, so
    the layer still spreads over the SMs. Unpacked float32 weights (a network's first layer) keep
    the 64×64×32 tiles of the first measurements (the wide ones made them 12× slower), on 8 warps,
    and K steps of 32 when few rows: their float dot holds a copy of its operands per thread, and
    it spilled registers on 4 warps (680 bytes a thread, sm_90; none on 8) and at K = 128 (248).
    The interpreter runs each program in Python, so there the largest tiles (fewest programs) are
    fastest."""
    def fit(n: int, high: int, low: int = 16) -> int:  # tl.dot needs 16+ rows and columns, an int8 one K ≥ 32
        return max(low, min(high, next_power_of_2(max(n, 1))))

    O = w.out_channels
    per_step = w.in_channels if taps(w) else w.kernel[0] * w.kernel[1] * w.tap_channels  # what a K loop runs over
    if interpreted:
        return Tiles(fit(M, 256), fit(O, 128), fit(per_step, 128, 32))
    if w.scheme == "fp32":  # their tiles take 4-32× the registers of packed bytes
        return Tiles(64, fit(O, 64), 32, warps=8) if M >= 128 else Tiles(16, 16, 32)
    if M >= 4096:
        return Tiles(64, fit(O, 128), fit(per_step, 64, 32), warps=8)
    if M >= 2048:
        return Tiles(128, fit(O, 64), fit(per_step, 64, 32), warps=8)
    if M >= 128:
        return Tiles(32, fit(O, 32), fit(per_step, 128, 32))
    return Tiles(16, 16, fit(per_step, 128, 32))


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


def lanes_along_rows(g: Geometry) -> bool:
    """The kernels' PIXELS: whether a warp's lanes run along a tile's rows (output pixels: when a
    sample has more than one, consecutive rows are neighbouring pixels in memory) or along its
    channels (one pixel per sample, as in a linear layer: then the channels are the neighbours)."""
    return g.Ho * g.Wo > 1


def synapse(x: Tensor, w: PackedWeight, scale: Tensor, shift: Tensor, *, stride: int = 1, padding: int = 0,
            t0: int = 0, steps: int = 1, tiles: Tiles | None = None) -> Tensor:
    """scale_t ⊙ (W ⊛ x) + shift_t for x (N, C, H, W) (conv) or (N, K) (linear), float32 or uint8 codes.

    The N rows are `steps` consecutive time steps of N / steps samples each, starting at step t0;
    `scale`/`shift` are each (R, O) or (R, 1), R ∈ {1, T}, and step t reads row min(t, R − 1).
    Returns float32 (N, O, Ho, Wo) or (N, O). `tiles` overrides `blocks`' choice.
    """
    g = conv_geometry(x, w, stride, padding, steps)
    out = torch.empty(g.out_shape, dtype=torch.float32, device=x.device)
    M = g.N * g.Ho * g.Wo
    tiles = Tiles(*(tiles or blocks(M, w, x.device.type == "cpu")))
    check_tiles(w, tiles)  # before the empty batch's return, as `synapse_neuron`: a bad choice fails alike
    if M == 0:
        return out
    # one (R, O') layout for both (no copy when they already share it, as the backend's do)
    scale, shift = (t.contiguous() for t in torch.broadcast_tensors(scale, shift))
    integer, pixels = integer_dot(x, w), lanes_along_rows(g)
    if tiles.split * M * w.out_channels > MAX_NUMEL:  # the parts' offsets are int32 too
        raise HmdfError(f"a layer's {tiles.split} partial sums have more elements than the triton kernels "
                        "address (2**31); use fewer splits or a smaller batch")
    # split: the parts (split, M, O), int32 on codes (exact whatever the order), else float32
    part = torch.empty((tiles.split, M, w.out_channels), dtype=torch.int32 if integer else torch.float32,
                       device=x.device) if tiles.split > 1 else out
    _synapse_kernel[(cdiv(M, tiles.m), cdiv(w.out_channels, tiles.n), tiles.split)](
        x.contiguous(), w.data, scale, shift, out, part,
        M, w.out_channels, g.Cin, w.tap_channels, g.H, g.W, g.Ho, g.Wo, stride, padding, w.data.shape[1],
        M // steps, t0, scale.shape[0], scale.shape[1],
        KH=w.kernel[0], KW=w.kernel[1], SCHEME=SCHEMES[w.scheme], INT=integer, TAPS=taps(w),
        BLOCK_M=tiles.m, BLOCK_N=tiles.n, BLOCK_K=tiles.k, PIXELS=pixels, SPLIT=tiles.split, num_warps=tiles.warps,
        enable_fp_fusion=False)  # the epilogue rounds like torch: a multiply, then an add
    if tiles.split > 1:
        _split_sum_kernel[(cdiv(M, 32), cdiv(w.out_channels, 32))](
            part, scale, shift, out, M, w.out_channels, g.Ho * g.Wo, M // steps, t0, scale.shape[0], scale.shape[1],
            SPLIT=tiles.split, BLOCK_M=32, BLOCK_N=32, PIXELS=pixels, enable_fp_fusion=False)
    return out


def integer_dot(x: Tensor, w: PackedWeight) -> bool:
    """uint8 inputs are 4-bit codes (0..15): with code weights the int8 dot is exact."""
    return x.dtype == torch.uint8 and w.scheme != "fp32"
