"""The Triton kernels (`hmdf_deploy.runtime.kernels`) against torch, one kernel at a time.

Without a GPU they run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set by
conftest.py), which also checks every int32 operation for overflow. Sizes are odd and blocks
small, so every tile has masked lanes at its edges.

- neuron steps: bit-equal to `Reference.step` (same operations in the same order), for every
  neuron model, spike mode, parameter shape, streams past the trained T, state in and out;
- scan: equal to the step loop up to float reassociation (SPEC §7): spikes to 1e-5, 4-bit codes
  identical except within 1e-4 of a rounding boundary;
- synapse: exact on integer 4-bit codes (compared with float64 torch), float32 rounding otherwise,
  for every packing scheme, conv geometry and the linear case, with per-step affine rows;
- synapse + neuron in one kernel: bit-equal to the two kernels it replaces, streaming or whole;
- compiled mode, which the interpreter never exercises: every kernel variant compiles for an H100 /
  H200 (sm_90), the main ones also for an A100 (sm_80), here without a GPU, and the PTX does what
  the design says.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

if sys.platform != "linux":  # triton publishes wheels for Linux only
    pytest.skip("triton is Linux-only", allow_module_level=True)
if not os.environ.get("TRITON_INTERPRET"):  # a CUDA machine: conftest.py leaves the kernels compiled
    pytest.skip("these tests hand CPU tensors to the kernels: run them with TRITON_INTERPRET=1 "
                "(tests/test_triton_backend.py checks the compiled kernels)", allow_module_level=True)

from hmdf_deploy.deploy.graph import DeployModel, Flatten, Neuron
from hmdf_deploy.deploy.pack import unpack
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.runtime.kernels import gemm
from hmdf_deploy.runtime.kernels import (
    NeuronParams, neuron_scan, neuron_steps, pack_weight, synapse, synapse_neuron,
)

# In the interpreter a gather past a tensor's end shows up as garbage that overflows: fail on it.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
SHAPE = (3, 5, 7, 3)  # (B, C, H, W): 315 elements per step, masked lanes in blocks of 64


# ------------------------------------------------------------------------------------ neurons
def neuron(model: str, spikes: str, rows: int, cols: str, affine: bool, g: torch.Generator, C: int = SHAPE[1],
           negative_leak: bool = True) -> Neuron:
    """A Neuron node with random per-step parameters; `cols` "C" (per channel), "1" (shared), or
    "mixed": in_scale (rows, 1) beside in_shift (1, C), as a fold may leave them."""
    width = C if cols == "C" else 1
    low = -0.4 if negative_leak else 0.0

    def draw(lo: float, hi: float, r: int = rows, w: int = width) -> torch.Tensor:
        return torch.empty(r, w).uniform_(lo, hi, generator=g)

    shift_shape = (1, C) if cols == "mixed" else (rows, width)
    return Neuron("n", ["input"], model, spikes,
                  threshold=torch.empty(rows).uniform_(0.3, 1.2, generator=g),
                  leak=None if model == "parallel" else draw(low, 1.1),
                  in_scale=draw(-0.5, 1.5) if affine else None,
                  in_shift=draw(-0.3, 0.6, *shift_shape) if affine else None)


def reference_steps(n: Neuron, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`Reference.step` over x (T, B, C, ...) from v = 0: spikes (T, B, C, ...) and the last state."""
    shape = tuple(x.shape[2:])
    model = DeployModel(T=max(n.threshold.shape[0], 1), input_shape=shape if len(shape) == 3 else (shape[0], 1, 1),
                        event=True, num_classes=math.prod(shape), nodes=[n, Flatten("f", ["n"])], output="f")
    ref, state, outs = Reference(model), {}, []
    for t in range(x.shape[0]):
        xt = x[t] if len(shape) == 3 else x[t].reshape(x.shape[1], shape[0], 1, 1)
        out, state = ref.step(xt, state, t)
        outs.append(out.reshape(x.shape[1:]))
    v = state.get("n")
    return torch.stack(outs), None if v is None else v.reshape(x.shape[1:])


def currents(T: int, g: torch.Generator, shape=SHAPE) -> torch.Tensor:
    return torch.randn(T, *shape, generator=g) * 1.5 + 0.5


MODES = [("hmdf", "float"), ("hmdf", "4bit"), ("lif", "float"), ("parallel", "float"), ("parallel", "4bit")]  # lif: float only (validate)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("rows, cols", [(4, "C"), (1, "C"), (4, "1"), (4, "mixed")])
@pytest.mark.parametrize("model, spikes", MODES)
def test_neuron_step_by_step_equals_reference(model, spikes, rows, cols, affine):
    """One kernel launch per step with the state carried, 7 steps of a T = 4 model (3 past T)."""
    g = torch.Generator().manual_seed(1)
    n = neuron(model, spikes, rows, cols, affine, g)
    p = NeuronParams.from_node(n, "cpu")
    x = currents(7, g)
    want, want_v = reference_steps(n, x)
    v, got = None, []
    for t in range(7):
        s, v_next = neuron_steps(x[t:t + 1], p, t, v, block=64)
        if v is not None:
            before = v.clone()
        got.append(s[0])
        if v is not None:
            assert torch.equal(v, before), "the kernel must not write into the state it was given"
        v = v_next
    got = torch.stack(got)
    codes = spikes == "4bit" and model != "lif"
    assert got.dtype == (torch.uint8 if codes else torch.float32)
    assert torch.equal(got.float(), want), f"max |Δ| {(got.float() - want).abs().max()}"
    assert (v is None) == (model == "parallel")
    if v is not None:
        assert torch.equal(v, want_v)
    assert float((want != 0).float().mean()) > 0.1, "the case should fire"
    if codes:
        assert int(got.max()) >= 3  # graded codes occur


@pytest.mark.parametrize("model, spikes", MODES)
def test_neuron_loop_over_steps_and_resume(model, spikes):
    """All steps in one launch (the sequence form), and a stream resumed from a saved state at t0."""
    g = torch.Generator().manual_seed(2)
    n = neuron(model, spikes, 5, "C", True, g)
    p = NeuronParams.from_node(n, "cpu")
    x = currents(9, g, (4, 5))  # a linear layer's (B, C) output, 9 steps of a T = 5 model
    want, want_v = reference_steps(n, x)
    got, v = neuron_steps(x, p, block=16)
    assert torch.equal(got.float(), want)
    head, v3 = neuron_steps(x[:3], p, block=16)
    tail, v_end = neuron_steps(x[3:], p, t0=3, v=v3, block=16)
    assert torch.equal(torch.cat([head, tail]).float(), want)
    if model != "parallel":
        assert torch.equal(v, want_v) and torch.equal(v_end, want_v)
    _, no_state = neuron_steps(x, p, keep_state=False)
    assert no_state is None


# A LIF neuron at an exact tie (SPEC §1.1: z = 1[m ≥ θ]): θ = σ(0) + 0.5 = 1, leak 1. Channel 0 gets
# 1 at step 0 (m = θ), channel 1 gets .5 then .5 (m = .5 + .5 = θ at step 1). By hand:
# s = [1, 0], v = [0, .5] at step 0; m = [.5, 1] → s = [0, 1], v = [.5, 0] at step 1.
LIF_TIE_X = [[1.0, 0.5], [0.5, 0.5]]
LIF_TIE_S = [[1.0, 0.0], [0.0, 1.0]]
LIF_TIE_V = [[0.0, 0.5], [0.5, 0.0]]


def lif_tie_params() -> NeuronParams:
    return NeuronParams.from_node(Neuron("n", ["input"], "lif", "float", threshold=torch.tensor([1.0]),
                                         leak=torch.ones(1, 1)), "cpu")


def test_lif_fires_at_an_exact_tie():
    """`neuron_steps`, one launch per step and both steps in one launch: a membrane exactly at θ
    spikes θ and resets to 0."""
    p = lif_tie_params()
    x = torch.tensor(LIF_TIE_X).reshape(2, 1, 2)
    v = None
    for t in range(2):
        s, v = neuron_steps(x[t:t + 1], p, t, v)
        assert s.reshape(-1).tolist() == LIF_TIE_S[t] and v.reshape(-1).tolist() == LIF_TIE_V[t], (t, s, v)
    s, v = neuron_steps(x, p)
    assert s.reshape(2, 2).tolist() == LIF_TIE_S and v.reshape(-1).tolist() == LIF_TIE_V[1]


@pytest.mark.parametrize("inputs", ["codes", "float"])
def test_fused_lif_fires_at_an_exact_tie(inputs):
    """`synapse_neuron` on an identity linear layer (ternary weights; codes ×.25 or floats ×1): the
    fused kernel's LIF also fires at m = θ, over the whole sequence and step by step."""
    p = lif_tie_params()
    packed = pack_weight(torch.eye(2, dtype=torch.int8), "1.5bit")
    x = torch.tensor(LIF_TIE_X)
    scale = torch.full((1, 2), 1.0)
    if inputs == "codes":  # codes 4 and 2 → currents 1 and .5
        x, scale = (x * 4).to(torch.uint8), scale / 4
    s, v = synapse_neuron(x, packed, scale, torch.zeros(1, 2), p, steps=2)
    assert s.tolist() == LIF_TIE_S and v.reshape(-1).tolist() == LIF_TIE_V[1]
    v = None
    for t in range(2):
        s, v = synapse_neuron(x[t:t + 1], packed, scale, torch.zeros(1, 2), p, t0=t, v=v)
        assert s.reshape(-1).tolist() == LIF_TIE_S[t] and v.reshape(-1).tolist() == LIF_TIE_V[t], (t, s, v)


def test_spike_codes_round_half_to_even_at_every_boundary():
    """SPEC §1.2 decision: codes are clamp(round(4 s), 0, 15) with torch.round (half to even),
    also one float step either side of each half and far outside [0, 15]."""
    halves = torch.arange(-8, 140, dtype=torch.float32) / 8  # 4s = k/2: every half and integer
    near = torch.cat([torch.nextafter(halves, halves + 1), torch.nextafter(halves, halves - 1)])
    s = torch.cat([halves, near, torch.tensor([1e6, 3.875, 3.874999, 0.125, 1e-30])])
    # a parallel neuron with θ = 0 sends s = relu(x): its code is the quantizer of s itself
    n = Neuron("n", ["input"], "parallel", "4bit", threshold=torch.zeros(1))
    got, _ = neuron_steps(s.reshape(1, 1, -1), NeuronParams.from_node(n, "cpu"), block=64)
    want = torch.clamp(torch.round(torch.relu(s) * 4), 0, 15)
    assert torch.equal(got.reshape(-1).float(), want)
    assert got.dtype == torch.uint8


def test_zero_steps_or_zero_batch():
    g = torch.Generator().manual_seed(3)
    p = NeuronParams.from_node(neuron("hmdf", "4bit", 2, "C", False, g), "cpu")
    v = torch.rand(3, 5, 7, 3, generator=g)
    s, v_out = neuron_steps(torch.zeros(0, *SHAPE), p, 0, v)
    assert s.shape == (0, *SHAPE) and torch.equal(v_out, v)
    s, v_out = neuron_steps(torch.zeros(1, 0, 5, 7, 3), p, 0, None)
    assert s.shape == (1, 0, 5, 7, 3) and v_out.shape == (0, 5, 7, 3)


# --------------------------------------------------------------------------------------- scan
@pytest.mark.parametrize("T, block_t", [(1, 8), (8, 8), (37, 8), (20, 32)])
@pytest.mark.parametrize("rows, cols, affine", [(None, "C", True), (1, "1", False), (None, "mixed", True)])
def test_scan_equals_the_loop(T, block_t, rows, cols, affine):
    """SPEC §7: the scan over blocks of `block_t` steps, carried across blocks, gives the loop's
    spikes up to reassociation; 4-bit codes differ only at rounding boundaries, by one."""
    g = torch.Generator().manual_seed(T)
    n = neuron("hmdf", "float", rows or T, cols, affine, g, negative_leak=False)
    x = currents(T, g, (2, 5, 3, 3))  # 90 elements: a full block of 64 and a masked one
    loop, _ = neuron_steps(x, NeuronParams.from_node(n, "cpu"), keep_state=False)
    scan = neuron_scan(x, NeuronParams.from_node(n, "cpu"), block_t=block_t, block_n=64)
    torch.testing.assert_close(scan, loop, rtol=0, atol=1e-5 * max(1.0, float(loop.abs().max())))
    assert float((loop > 0).float().mean()) > 0.1

    n.spikes = "4bit"
    codes = neuron_scan(x, NeuronParams.from_node(n, "cpu"), block_t=block_t, block_n=64).float()
    want, _ = neuron_steps(x, NeuronParams.from_node(n, "cpu"), keep_state=False)
    differ = codes != want.float()
    assert int((codes - want.float()).abs().max()) <= 1
    boundary = ((4 * loop - torch.floor(4 * loop) - 0.5).abs() < 1e-4) & (4 * loop < 15.5)
    assert not bool((differ & ~boundary).any()), "codes differ away from a rounding boundary"


@pytest.mark.parametrize("model", ["lif", "parallel", "negative-leak"])
def test_scan_refuses_what_it_cannot_compute(model):
    g = torch.Generator().manual_seed(4)
    n = neuron("hmdf" if model == "negative-leak" else model, "float", 3, "C", False, g)
    if model == "negative-leak":
        n.leak[1, 2] = -0.1
    p = NeuronParams.from_node(n, "cpu")
    assert not p.scannable
    with pytest.raises(ValueError, match="non-negative leak"):
        neuron_scan(currents(3, g), p)


# -------------------------------------------------------------------------------------- synapse
def codes_for(weights: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    if weights == "fp32":
        return torch.randn(shape, generator=g)
    if weights == "1bit":
        return (torch.randint(0, 2, shape, generator=g) * 2 - 1).to(torch.int8)
    return torch.randint(-1, 2, shape, generator=g).to(torch.int8)


def activations(kind: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    """uint8 4-bit codes (about half zero, as spikes are) or float graded spikes / images."""
    if kind == "codes":
        return (torch.randint(0, 16, shape, generator=g) * torch.randint(0, 2, shape, generator=g)).to(torch.uint8)
    return torch.relu(torch.randn(shape, generator=g))


def affine_reference(acc: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, t0: int, steps: int) -> torch.Tensor:
    """scale_t ⊙ acc + shift_t in float32, rows of step t = t0 + n // (N / steps) using row min(t, R − 1)."""
    per = acc.shape[0] // steps
    t = torch.clamp(t0 + torch.arange(acc.shape[0]) // per, max=scale.shape[0] - 1)
    extra = [1] * (acc.dim() - 2)
    sc, sh = scale[t].reshape(acc.shape[0], -1, *extra), shift[t].reshape(acc.shape[0], -1, *extra)
    return acc.to(torch.float32) * sc + sh


GEOMETRIES = [  # (C_in, H, W, O, kh, kw, stride, padding)
    (3, 7, 5, 5, 3, 3, 1, 1),
    (19, 9, 9, 37, 3, 3, 2, 1),
    (4, 6, 6, 17, 1, 1, 1, 0),
    (2, 11, 8, 6, 5, 3, 2, 2),
    (3, 13, 13, 8, 7, 7, 2, 3),
    (40, 5, 6, 9, 3, 3, 1, 1),  # K steps tap by tap, two channel blocks at the small tiles
    (5, 1, 1, 7, 3, 3, 1, 1),  # a 1×1 map: a warp's lanes along the channels, as for a linear layer
    (6, 3, 3, 5, 3, 3, 1, 0),  # a 3×3 map to one pixel: along the channels too (consecutive rows are samples)
]
# the interpreter's default tiles, GPU-sized ones (an int8 dot needs K ≥ 32), and those with the K
# steps split over 3 programs (shares of unequal length, some empty where a layer has < 3 steps)
TILES = [None, (16, 16, 32), (16, 16, 32, 4, 3)]
TILE_IDS = ["default-tiles", "small-tiles", "split-tiles"]


@pytest.mark.parametrize("tiles", TILES, ids=TILE_IDS)
@pytest.mark.parametrize("inputs", ["codes", "float"])
@pytest.mark.parametrize("weights", ["1.5bit", "1bit", "fp32"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "c{}-{}x{}-o{}-k{}x{}-s{}-p{}".format(*g))
def test_conv_equals_torch(geometry, weights, inputs, tiles):
    cin, h, w_, o, kh, kw, stride, padding = geometry
    g = torch.Generator().manual_seed(cin * 100 + o)
    steps, batch = 3, 2
    weight = codes_for(weights, (o, cin, kh, kw), g)
    x = activations(inputs, (steps * batch, cin, h, w_), g)
    scale, shift = torch.rand(2, o, generator=g) + 0.1, torch.randn(2, o, generator=g)  # R = 2 < steps
    got = synapse(x, pack_weight(weight, weights), scale, shift, stride=stride, padding=padding,
                  t0=1, steps=steps, tiles=tiles)
    acc = F.conv2d(x.double(), weight.double(), stride=stride, padding=padding)
    want = affine_reference(acc, scale, shift, 1, steps)
    assert got.shape == want.shape and got.dtype == torch.float32
    if inputs == "codes" and weights != "fp32":  # integers: the accumulator is exact
        assert torch.equal(got, want)
    else:
        bound = F.conv2d(x.double().abs(), weight.double().abs(), stride=stride, padding=padding)
        tol = affine_reference(bound, scale, torch.zeros_like(shift), 1, steps) * 1e-6 + 1e-6
        assert bool(((got.double() - want.double()).abs() <= tol).all())


@pytest.mark.parametrize("tiles", TILES, ids=TILE_IDS)
@pytest.mark.parametrize("inputs", ["codes", "float"])
@pytest.mark.parametrize("weights", ["1.5bit", "1bit", "fp32"])
def test_linear_equals_torch(weights, inputs, tiles):
    g = torch.Generator().manual_seed(7)
    weight = codes_for(weights, (37, 203), g)
    x = activations(inputs, (5, 203), g)
    scale, shift = torch.rand(1, 1, generator=g) + 0.1, torch.randn(1, 37, generator=g)  # a shared scale column
    got = synapse(x, pack_weight(weight, weights), scale, shift, tiles=tiles)
    want = affine_reference(x.double() @ weight.double().T, scale.expand(1, 37), shift, 0, 1)
    if inputs == "codes" and weights != "fp32":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights, scheme, per_byte", [("1.5bit", "trit2", 4), ("1bit", "sign1", 8)])
def test_weights_stay_packed(weights, scheme, per_byte):
    """The device holds 2 (trits) or 1 (signs) bits per weight: per output channel a row of 9 taps,
    each tap's 7 channels rounded up to whole bytes."""
    g = torch.Generator().manual_seed(8)
    weight = codes_for(weights, (6, 7, 3, 3), g)  # 7 channels: every tap ends in a partial byte
    packed = pack_weight(weight, weights)
    per_tap = math.ceil(7 / per_byte)
    assert packed.data.dtype == torch.uint8 and packed.data.shape == (6, 9 * per_tap)
    assert packed.tap_channels == per_tap * per_byte and packed.K == 63
    for o in range(6):
        for tap in range(9):
            row = packed.data[o, tap * per_tap:(tap + 1) * per_tap]
            assert torch.equal(unpack(row, per_tap * per_byte, scheme)[:7], weight[o, :, tap // 3, tap % 3])


@pytest.mark.parametrize("tiles", [(16, 16, 32), (16, 16, 256), (16, 16, 32, 4, 3), (16, 16, 32, 4, 16)],
                         ids=["k32", "k256", "k32-split3", "k32-split16"])  # 16 shares: more than the steps
@pytest.mark.parametrize("weights", ["1.5bit", "1bit"])
def test_bytes_read_past_a_step_change_nothing(weights, tiles):
    """K steps read whole bytes unmasked along K: past a tap's last channel (the next tap's codes)
    and past the last row (the slack). With the slack full of nonzero codes instead of zeros, the
    sums are still exact: only zero inputs meet them."""
    g = torch.Generator().manual_seed(12)
    weight = codes_for(weights, (5, 19, 3, 3), g)  # 19 channels: partial bytes and partial K steps
    w = pack_weight(weight, weights)
    whole = torch.empty(0, dtype=torch.uint8).set_(w.data.untyped_storage())  # the packed rows and the slack
    assert whole.numel() == w.data.numel() + gemm.SLACK and not whole[w.data.numel():].any()
    whole[w.data.numel():] = 0xFF
    x = activations("codes", (2, 19, 6, 5), g)
    got = synapse(x, w, torch.ones(1, 5), torch.zeros(1, 5), padding=1, tiles=tiles)
    assert torch.equal(got, F.conv2d(x.double(), weight.double(), padding=1).float())


def test_weights_without_slack_or_odd_k_steps_are_refused():
    g = torch.Generator().manual_seed(13)
    w = pack_weight(codes_for("1.5bit", (4, 3, 3, 3), g), "1.5bit")
    x, scale, shift = torch.zeros(1, 3, 5, 5, dtype=torch.uint8), torch.ones(1, 4), torch.zeros(1, 4)
    bare = gemm.PackedWeight(w.data.clone(), w.scheme, 4, 3, (3, 3), w.tap_channels)  # no bytes after it
    with pytest.raises(ValueError, match="SLACK bytes after them"):
        synapse(x, bare, scale, shift)
    for k in (8, 48, 512):
        with pytest.raises(ValueError, match=f"power of two from 16 to 256, not {k}"):
            synapse(x, w, scale, shift, tiles=(16, 16, k))
    for split in (0, 65):
        with pytest.raises(ValueError, match=f"split over {split} programs: it must be 1 to 64"):
            synapse(x, w, scale, shift, tiles=(16, 16, 32, 4, split))
    for kernel in (synapse, lambda *a, **kw: synapse_neuron(*a, NeuronParams.from_node(
            Neuron("n", ["x"], "parallel", "4bit", torch.zeros(1)), "cpu"), **kw)):
        with pytest.raises(ValueError, match="power of two from 16 to 256, not 8"):  # an empty batch too
            kernel(x[:0], w, scale, shift, tiles=(16, 16, 8))


def test_synapse_errors_and_empty_batch():
    g = torch.Generator().manual_seed(9)
    w = pack_weight(codes_for("1.5bit", (4, 3, 3, 3), g), "1.5bit")
    scale, shift = torch.ones(1, 4), torch.zeros(1, 4)
    with pytest.raises(ValueError, match="input has 2 channels, the weights expect 3"):
        synapse(torch.zeros(1, 2, 5, 5), w, scale, shift)
    with pytest.raises(ValueError, match="5 rows do not split into 2 steps"):
        synapse(torch.zeros(5, 3, 5, 5), w, scale, shift, steps=2)
    assert synapse(torch.zeros(0, 3, 5, 5), w, scale, shift, padding=1).shape == (0, 4, 5, 5)


def test_too_large_for_int32_offsets_is_one_error(monkeypatch):
    import hmdf_deploy.runtime.kernels.gemm as gemm
    import hmdf_deploy.runtime.kernels.neuron as neuron_module

    monkeypatch.setattr(gemm, "MAX_NUMEL", 100)
    monkeypatch.setattr(neuron_module, "MAX_NUMEL", 100)
    w = pack_weight(torch.ones(4, 3, 3, 3, dtype=torch.int8), "1bit")
    with pytest.raises(HmdfError, match="2\\*\\*31.*smaller batch"):
        synapse(torch.zeros(2, 3, 5, 5), w, torch.ones(1, 4), torch.zeros(1, 4))
    monkeypatch.setattr(gemm, "MAX_NUMEL", 40)  # x (27) and the output (36) fit, 2 parts of it (72) do not
    with pytest.raises(HmdfError, match=r"2 partial sums .* \(2\*\*31\); use fewer splits"):
        synapse(torch.zeros(1, 3, 3, 3), w, torch.ones(1, 4), torch.zeros(1, 4), padding=1, tiles=(16, 16, 32, 4, 2))
    p = NeuronParams.from_node(neuron("hmdf", "float", 1, "C", False, torch.Generator().manual_seed(0)), "cpu")
    with pytest.raises(HmdfError, match="2\\*\\*31.*smaller batch"):
        neuron_steps(torch.zeros(1, *SHAPE), p)


# ------------------------------------------------------------------------ synapse + neuron fused
@pytest.mark.parametrize("tiles", TILES, ids=TILE_IDS)
@pytest.mark.parametrize("model, spikes, weights, inputs", [  # each neuron model, weight scheme and input kind once
    ("hmdf", "4bit", "1.5bit", "codes"), ("hmdf", "float", "1bit", "float"),
    ("lif", "float", "1bit", "codes"), ("parallel", "4bit", "fp32", "float")])
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_fused_synapse_neuron_equals_the_two_kernels(layer, model, spikes, weights, inputs, tiles):
    """The fused kernel over a whole sequence, and step by step with the membrane carried, gives
    exactly the spikes and membranes of `synapse` followed by `neuron_steps`."""
    g = torch.Generator().manual_seed(11)
    steps, batch, O = 5, 3, 19
    shape, geometry = ((7, 9, 6), {"stride": 2, "padding": 1}) if layer == "conv" else ((45,), {})
    weight = codes_for(weights, (O, shape[0], 3, 3) if layer == "conv" else (O, shape[0]), g)
    packed = pack_weight(weight, weights)
    x = activations(inputs, (steps * batch, *shape), g)
    scale, shift = torch.rand(steps - 2, O, generator=g) + 0.2, torch.randn(1, O, generator=g)
    n = neuron(model, spikes, 4, "mixed", True, g, C=O)
    p = NeuronParams.from_node(n, "cpu")

    current = synapse(x, packed, scale, shift, steps=steps, tiles=tiles, **geometry)
    want, want_v = neuron_steps(current.reshape(steps, batch, *current.shape[1:]), p)
    got, got_v = synapse_neuron(x, packed, scale, shift, p, steps=steps, tiles=tiles, **geometry)
    assert torch.equal(got, want.reshape(got.shape))
    assert float((want.float() > 0).float().mean()) > 0.05, "the case should fire"

    v, outs = None, []
    for t in range(steps):
        s, v = synapse_neuron(x[t * batch:(t + 1) * batch], packed, scale, shift, p, t0=t, v=v, tiles=tiles, **geometry)
        outs.append(s)
    assert torch.equal(torch.cat(outs), got)
    if model == "parallel":
        assert v is None and got_v is None
    else:
        assert torch.equal(v, want_v) and torch.equal(got_v, want_v)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_split_tiles_give_what_the_fused_kernel_gives(layer):
    """Tiles that split the K steps run as the split synapse and then the neuron kernel: on codes,
    exactly the spikes and membranes of the one fused kernel, over a sequence and step by step."""
    g = torch.Generator().manual_seed(21)
    steps, batch, O = 4, 2, 11
    shape, geometry = ((20, 6, 5), {"padding": 1}) if layer == "conv" else ((70,), {})
    packed = pack_weight(codes_for("1.5bit", (O, shape[0], 3, 3) if layer == "conv" else (O, shape[0]), g), "1.5bit")
    x = activations("codes", (steps * batch, *shape), g)
    scale, shift = torch.rand(steps, O, generator=g) + 0.2, torch.randn(1, O, generator=g)
    p = NeuronParams.from_node(neuron("hmdf", "4bit", 4, "mixed", True, g, C=O), "cpu")
    whole = [synapse_neuron(x, packed, scale, shift, p, steps=steps, tiles=t, **geometry)
             for t in ((16, 16, 32), (16, 16, 32, 4, 3))]
    assert torch.equal(whole[0][0], whole[1][0]) and torch.equal(whole[0][1], whole[1][1])
    assert float((whole[0][0] > 0).float().mean()) > 0.05, "the case should fire"
    v, outs = torch.zeros_like(whole[0][1]), []  # a zero membrane: as none
    for t in range(steps):
        s, v = synapse_neuron(x[t * batch:(t + 1) * batch], packed, scale, shift, p, t0=t, v=v,
                              tiles=(16, 16, 32, 4, 3), **geometry)
        outs.append(s)
    assert torch.equal(torch.cat(outs), whole[0][0]) and torch.equal(v, whole[0][1])


def test_misuse_is_refused_before_a_kernel_runs():
    """Kernels index blindly: a membrane of another shape or no time step must be caught first."""
    g = torch.Generator().manual_seed(13)
    packed = pack_weight(codes_for("1.5bit", (4, 3, 3, 3), g), "1.5bit")
    p = NeuronParams.from_node(neuron("hmdf", "4bit", 1, "C", False, g, C=4), "cpu")
    x, one, zero = torch.zeros(2, 3, 5, 5), torch.ones(1, 4), torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"membrane of shape \(2, 4, 5, 4\) \(torch.float32\), expected \(2, 4, 5, 5\)"):
        synapse_neuron(x, packed, one, zero, p, padding=1, v=torch.zeros(2, 4, 5, 4))
    with pytest.raises(ValueError, match=r"expected \(2, 4, 5, 5\) \(torch.float32\)"):
        neuron_steps(torch.zeros(1, 2, 4, 5, 5), p, v=torch.zeros(2, 4, 5, 5, dtype=torch.float64))
    for fn in (synapse, lambda *a, **k: synapse_neuron(*a[:4], p, **k)):
        with pytest.raises(ValueError, match="2 rows do not split into 0 steps"):
            fn(x, packed, one, zero, padding=1, steps=0)


def test_fused_kernel_reads_no_parameter_past_its_end():
    """Masked output channels (O = 19 in tiles of 16) must not gather per-channel parameters from
    beyond their tensors: each one here sits right before a run of 3e38, which would overflow."""
    import warnings

    g = torch.Generator().manual_seed(14)
    O = 19

    def fenced(values: torch.Tensor) -> torch.Tensor:
        buffer = torch.full((values.numel() + 64,), 3e38)
        buffer[:values.numel()] = values.reshape(-1)
        return buffer[:values.numel()].view(values.shape)

    p = NeuronParams(0, True, threshold=torch.full((1, 1), 0.5), leak=fenced(torch.rand(1, O, generator=g)),
                     in_scale=fenced(torch.rand(1, O, generator=g) + 0.5), in_shift=fenced(torch.zeros(1, O)))
    packed = pack_weight(codes_for("1.5bit", (O, 3, 3, 3), g), "1.5bit")
    x = activations("codes", (4, 3, 6, 6), g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got, _ = synapse_neuron(x, packed, fenced(torch.ones(1, O)), fenced(torch.zeros(1, O)), p, padding=1,
                                steps=2, tiles=(16, 16, 32))
    current = synapse(x, packed, torch.ones(1, O), torch.zeros(1, O), padding=1, steps=2)
    want, _ = neuron_steps(current.reshape(2, 2, O, 6, 6), p)
    assert torch.equal(got, want.reshape(got.shape))


def test_fused_zero_batch_keeps_the_state():
    g = torch.Generator().manual_seed(12)
    packed = pack_weight(codes_for("1.5bit", (4, 3, 3, 3), g), "1.5bit")
    p = NeuronParams.from_node(neuron("hmdf", "4bit", 1, "C", False, g, C=4), "cpu")
    s, v = synapse_neuron(torch.zeros(0, 3, 5, 5), packed, torch.ones(1, 4), torch.zeros(1, 4), p, padding=1)
    assert s.shape == (0, 4, 5, 5) and s.dtype == torch.uint8 and v.shape == (0, 4, 5, 5)


# --------------------------------------------------------------------------- compiled for a GPU
def test_every_kernel_compiles_for_an_nvidia_gpu():
    """Lowered to PTX for sm_90, some also for sm_80 (tests/_compile_kernels.py, in a process
    without the interpreter), the synapse also with each tiling `gemm.blocks` picks on a GPU:
    integer 4-bit codes go through int8 tensor-core MMA, float inputs never through TF32, packed
    weights are read as bytes, 4-bit spikes are stored as bytes, the neuron kernels contain no
    fused multiply-add (so they round like the torch reference), and the synapse tilings `blocks`
    picks spill (next to) no registers (ptxas puts spills on the stack) and load a convolution's
    input with a warp's lanes along consecutive pixels, a linear layer's along its channels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_compile_kernels.py")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = {(v.pop("variant"), v.pop("target")): v for v in map(json.loads, done.stdout.splitlines())}
    assert len(got) == 44 + 5, sorted(got)
    for (name, target), ptx in got.items():
        kind, *rest = name.split("-")
        if target == "sm80":  # an A100 has no wgmma: the integer dot is mma.sync on int8
            assert not any(m.startswith("wgmma") for m in ptx["mma"]), name
        if kind in ("synapse", "fused"):
            scheme, inputs = rest[:2]
            assert ptx["int8_mma"] == (inputs == "int"), name
            assert not ptx["tf32_mma"], name
            assert ptx["byte_loads"] == (scheme != "fp32"), name
            if "rows" in name:  # a tiling `blocks` picks: spills were 112-984 bytes before the
                # row-fast input tiles; ptxas 13 (Triton runs it with --regAllocOptLevel=2) may
                # still park a word or two on the stack at under 100 registers
                assert ptx["stack"] <= 16, (name, ptx["regs"], ptx["stack"])
                if ptx["input_lanes"]:  # a warp loads consecutive pixels of a conv's input (coalesced)
                    assert ptx["input_lanes"] == ("rows" if "-conv-" in name else "channels"), name
        if kind == "fused":
            assert ptx["byte_stores"] == (rest[-1] == "codes"), name
        elif kind != "synapse":
            assert not ptx["fma_f32"], name
            assert ptx["byte_stores"] == (rest[-1] == "codes"), name
    told = [n for (n, _), v in got.items() if "rows" in n and v["input_lanes"]]
    assert len(told) >= 5, told  # the layout check above ran on most picked tilings
