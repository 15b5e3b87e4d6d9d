"""Low-bit synapses of SPEC §5: binary and ternary codes, their scales, STE gradients, QConv2d/QLinear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import D, t64
from torch import nn

from hmdf_deploy.quant import QConv2d, QLinear, binary_codes, quantize_weight, ternary_codes, weight_codes


# ------------------------------------------------------------------------------------------
# Independent reference formulas (written from the SPEC, not from the code)
# ------------------------------------------------------------------------------------------


def ref_binary(w: torch.Tensor) -> torch.Tensor:
    """SPEC §5.1: α_o = mean|W[o]|, W_b = α_o·sign(W) with sign(0) = +1."""
    out = torch.empty_like(w)
    for o in range(w.shape[0]):
        alpha = w[o].abs().sum() / w[o].numel()
        sign = torch.ones_like(w[o])
        sign[w[o] < 0] = -1
        out[o] = alpha * sign
    return out


def ref_ternary(w: torch.Tensor) -> torch.Tensor:
    """SPEC §5.2: W_c = clip(W, −1, 1); Δ = 0.7·mean|W_c|; α = mean|W_c| over |W_c| > Δ."""
    wc = torch.clamp(w, -1, 1)
    delta = 0.7 * wc.abs().sum() / wc.numel()
    pos, neg = wc > delta, wc < -delta
    kept = wc.abs()[pos | neg]
    alpha = kept.sum() / kept.numel() if kept.numel() else torch.zeros((), dtype=w.dtype)
    return alpha * (pos.to(w.dtype) - neg.to(w.dtype))


REF = {"1bit": ref_binary, "1.5bit": ref_ternary}


# ------------------------------------------------------------------------------------------
# Hand-made tensors
# ------------------------------------------------------------------------------------------


def test_binary_codes_by_hand():
    """SPEC §5.1: per-output-channel α = mean|W[o]|, codes = sign(W), sign(0) = +1."""
    w = t64([[0.5, -0.25, 0.0], [-1.5, 0.75, -0.75]])
    codes, alpha = binary_codes(w)
    assert torch.equal(codes, t64([[1, -1, 1], [-1, 1, -1]]))
    assert torch.equal(alpha, t64([0.25, 1.0]))  # .75/3 and 3/3
    assert torch.equal(quantize_weight(w, "1bit"), t64([[0.25, -0.25, 0.25], [-1.0, 1.0, -1.0]]))


def test_binary_alpha_per_output_channel_conv_shape():
    """SPEC §5.1: for a conv weight (O, I, k, k), α_o averages over I·k·k."""
    w = torch.zeros(3, 2, 2, 2, dtype=D)
    w[0] = 0.5
    w[1, 0] = -2.0  # half the entries are −2, the rest 0 (sign +1)
    codes, alpha = binary_codes(w)
    assert torch.equal(alpha, t64([0.5, 1.0, 0.0]))
    assert torch.equal(codes[1, 0], -torch.ones(2, 2, dtype=D))
    assert torch.equal(codes[1, 1], torch.ones(2, 2, dtype=D))
    assert torch.equal(codes[2], torch.ones(2, 2, 2, dtype=D))  # sign(0) = +1


def test_ternary_codes_by_hand():
    """SPEC §5.2: clip to [−1, 1], Δ = 0.7·mean|W_c|, α = mean|W_c| over kept entries, one α per layer."""
    w = t64([[0.9, -0.05, 0.3, -2.0], [0.1, 0.6, -0.4, 0.0]])
    # |W_c| = .9 .05 .3 1(clipped) .1 .6 .4 0 -> mean = 3.35/8 = .41875 -> Δ = .293125
    # kept: .9, .3, −1, .6, −.4 -> α = (.9 + .3 + 1 + .6 + .4)/5 = .64
    codes, alpha = ternary_codes(w)
    assert torch.equal(codes, t64([[1, 0, 1, -1], [0, 1, -1, 0]]))
    assert alpha.shape == (2,)
    assert torch.allclose(alpha, t64([0.64, 0.64]), atol=1e-15)
    assert torch.allclose(quantize_weight(w, "1.5bit"), 0.64 * codes, atol=1e-15)


def test_ternary_codes_second_hand_example():
    """SPEC §5.2: zeros stay zero, an entry just under Δ is dropped, α averages only the kept |W_c|."""
    w = t64([[1.0, 1.0, 0.0, 0.0], [-0.7, 0.7, 0.35, 0.0]])
    # mean|W| = 3.75/8 = .46875 -> Δ = .328125: .35 is kept!  α = (1+1+.7+.7+.35)/5 = .75
    codes, alpha = ternary_codes(w)
    assert torch.equal(codes, t64([[1, 1, 0, 0], [-1, 1, 1, 0]]))
    assert torch.allclose(alpha, t64([0.75, 0.75]), atol=1e-15)
    w = t64([[1.0, 1.0, 0.0, 0.0], [-0.7, 0.7, 0.3, 0.5]])
    # mean|W| = 4.2/8 = .525 -> Δ = .3675: .3 dropped, .5 kept; α = (1+1+.7+.7+.5)/5 = .78
    codes, alpha = ternary_codes(w)
    assert torch.equal(codes, t64([[1, 1, 0, 0], [-1, 1, 0, 1]]))
    assert torch.allclose(alpha, t64([0.78, 0.78]), atol=1e-15)


def test_weight_codes_dispatch_and_errors():
    """SPEC §5: weight_codes has codes for 1bit and 1.5bit only; fp32 has none."""
    w = t64([[0.5, -0.25]])
    assert torch.equal(weight_codes(w, "1bit")[0], binary_codes(w)[0])
    assert torch.equal(weight_codes(w, "1.5bit")[0], ternary_codes(w)[0])
    with pytest.raises(ValueError, match="no integer codes"):
        weight_codes(w, "fp32")


@pytest.mark.parametrize("mode", ["1bit", "1.5bit"])
def test_ste_gradient_masked_to_unit_box(mode):
    """SPEC §5.1-5.2: backward is straight-through, zero where |W| ≥ 1 (|W| = 1 included)."""
    w = t64([[0.3, -0.99, 1.0, -1.0], [1.5, -2.0, 0.0, 0.999]]).requires_grad_()
    g = t64([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    (quantize_weight(w, mode) * g).sum().backward()
    mask = t64([[1, 1, 0, 0], [0, 0, 1, 1]])
    assert torch.equal(w.grad, g * mask)


def test_fp32_is_plain():
    """SPEC §5: full-precision layers use W itself, with its ordinary gradient."""
    w = torch.randn(3, 4, dtype=D, requires_grad=True)
    assert quantize_weight(w, "fp32") is w


def test_unknown_weight_mode_rejected():
    """SPEC §5: only fp32, 1bit and 1.5bit exist."""
    with pytest.raises(ValueError, match="unknown weight mode '2bit'"):
        QLinear(3, 2, weights="2bit")
    with pytest.raises(ValueError, match="unknown weight mode"):
        QConv2d(3, 2, 3, weights="ternary")


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["1bit", "1.5bit"])
def test_qconv2d_forward_equals_conv_with_quantized_weight(mode):
    """SPEC §5, §6: QConv2d = conv2d(x, α·codes) (+ bias), stride/padding honoured."""
    torch.manual_seed(0)
    layer = QConv2d(3, 5, 3, stride=2, padding=1, bias=True, weights=mode).double()
    x = torch.randn(2, 3, 7, 7, dtype=D)
    expected = F.conv2d(x, REF[mode](layer.weight.detach()), layer.bias, stride=2, padding=1)
    assert torch.allclose(layer(x), expected, atol=1e-12)
    codes, alpha = weight_codes(layer.weight.detach(), mode)
    assert torch.allclose(layer(x), F.conv2d(x, codes * alpha.view(-1, 1, 1, 1), layer.bias, stride=2, padding=1), atol=1e-12)


@pytest.mark.parametrize("mode", ["1bit", "1.5bit"])
def test_qlinear_forward_equals_linear_with_quantized_weight(mode):
    """SPEC §5, §6: QLinear = linear(x, α·codes) + bias."""
    torch.manual_seed(1)
    layer = QLinear(6, 4, weights=mode).double()
    x = torch.randn(5, 6, dtype=D)
    expected = F.linear(x, REF[mode](layer.weight.detach()), layer.bias)
    assert torch.allclose(layer(x), expected, atol=1e-12)


@pytest.mark.parametrize("mode", ["1bit", "1.5bit"])
def test_qlinear_weight_gradient_is_ste(mode):
    """SPEC §5: dL/dW = (dL/dW_q)·1[|W| < 1] where W_q = α·codes is treated as the weight."""
    torch.manual_seed(2)
    layer = QLinear(4, 3, bias=False, weights=mode).double()
    with torch.no_grad():
        layer.weight[0, 0] = 1.5  # outside the box: no gradient
        layer.weight[1, 2] = -1.0
    x = torch.randn(5, 4, dtype=D)
    target = torch.randn(5, 3, dtype=D)
    ((layer(x) - target) ** 2).sum().backward()
    wq = REF[mode](layer.weight.detach()).requires_grad_()
    ((F.linear(x, wq) - target) ** 2).sum().backward()
    expected = wq.grad * (layer.weight.detach().abs() < 1)
    assert torch.allclose(layer.weight.grad, expected, atol=1e-12)
    assert layer.weight.grad[0, 0] == 0 and layer.weight.grad[1, 2] == 0


def test_fp32_layers_equal_torch_layers():
    """SPEC §5: weights='fp32' behaves exactly like nn.Conv2d / nn.Linear (forward and gradient)."""
    torch.manual_seed(3)
    q = QConv2d(2, 3, 3, padding=1, weights="fp32")
    ref = nn.Conv2d(2, 3, 3, padding=1)
    ref.load_state_dict(q.state_dict())
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(q(x), ref(x))
    q(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert torch.equal(q.weight.grad, ref.weight.grad)
    ql = QLinear(4, 2)  # default weights="fp32"
    assert ql.weights == "fp32"
    refl = nn.Linear(4, 2)
    refl.load_state_dict(ql.state_dict())
    xl = torch.randn(3, 4)
    assert torch.equal(ql(xl), refl(xl))


def test_state_dict_has_only_latent_weight():
    """SPEC §5 (HDLIF import): a quantized layer stores its latent float weight, no codes or scale."""
    assert set(QConv2d(2, 3, 3, bias=False, weights="1bit").state_dict()) == {"weight"}
    assert set(QLinear(2, 3, weights="1.5bit").state_dict()) == {"weight", "bias"}


# ------------------------------------------------------------------------------------------
# Properties on random shapes
# ------------------------------------------------------------------------------------------

shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 7)),
    st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
)


def _weights(shape, seed, scale, zeros):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=D) * scale
    if zeros:
        w[torch.rand(shape, generator=gen) < 0.3] = 0.0
    return w


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.01, 0.3, 1.0, 3.0]), zeros=st.booleans())
def test_binary_properties(shape, seed, scale, zeros):
    """SPEC §5.1 on random shapes: codes ∈ {−1, +1}, α = mean|W[o]| ≥ 0, α·codes = reference; idempotent."""
    w = _weights(shape, seed, scale, zeros)
    codes, alpha = binary_codes(w)
    assert codes.shape == w.shape and alpha.shape == (shape[0],)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(codes[w == 0], torch.ones_like(w[w == 0]))
    assert torch.equal(codes[w < 0], -torch.ones_like(w[w < 0]))
    assert torch.allclose(quantize_weight(w, "1bit"), ref_binary(w), atol=1e-12)
    wq = quantize_weight(w, "1bit")
    codes2, alpha2 = binary_codes(wq)
    assert torch.equal(codes2, codes)
    assert torch.allclose(alpha2, alpha, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.01, 0.3, 1.0, 3.0]), zeros=st.booleans())
def test_ternary_properties(shape, seed, scale, zeros):
    """SPEC §5.2 on random shapes: codes ∈ {−1, 0, 1}, one α per layer in [0, 1], reference match; idempotent."""
    w = _weights(shape, seed, scale, zeros)
    codes, alpha = ternary_codes(w)
    assert codes.shape == w.shape and alpha.shape == (shape[0],)
    assert set(codes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.all(alpha == alpha[0]) and 0 <= alpha[0].item() <= 1
    if (w != 0).any():
        assert (codes != 0).any()  # the largest |W_c| always exceeds 0.7·mean
    assert torch.allclose(quantize_weight(w, "1.5bit"), ref_ternary(w), atol=1e-12)
    wq = quantize_weight(w, "1.5bit")
    codes2, alpha2 = ternary_codes(wq)
    assert torch.equal(codes2, codes)
    assert torch.allclose(alpha2, alpha, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["1bit", "1.5bit"]))
def test_ste_mask_property(shape, seed, mode):
    """SPEC §5.1-5.2 on random shapes: the weight gradient is the upstream gradient where |W| < 1, else 0."""
    w = _weights(shape, seed, 1.2, False).requires_grad_()
    g = _weights(shape, seed + 1, 1.0, False)
    (quantize_weight(w, mode) * g).sum().backward()
    assert torch.equal(w.grad, torch.where(w.detach().abs() < 1, g, torch.zeros_like(g)))
