"""The spiking neurons of SPEC §1-§3, checked step by step against numbers worked out by hand.

Every expected value below was computed on paper from the SPEC formulas (dyadic inputs and
parameters, so most comparisons are exact), never copied from the code's output.
"""

from __future__ import annotations

import math

import pytest
import torch
from nets import D, t64
from torch import nn

from hmdf_deploy.neurons import (HMDFNeuron, HMDFParams, LIFNeuron, MembraneNorm, ParallelHMDF, hmdf_fire, hmdf_step,
                                 lif_step, make_neuron, quantize_spikes, spike_codes)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# A four-step hand trajectory with per-step leak and threshold (SPEC §1, §2).
# λ_0 never matters (v_{-1} = 0).
LEAK = [0.5, 0.25, 0.75, 0.5]
THETA = [0.5, 0.75, 0.25, 0.625]
# Three neurons (columns). Rows are steps.
CURRENT = [
    [0.25, 1.0, -0.5],
    [0.5, 1.0625, 0.25],
    [0.125, -0.5, 0.5],
    [0.25, 1.0, 0.5],
]
# Worked by hand: m_t = λ_t v_{t-1} + I_t;  s_t = max(m_t − θ_t, 0);  v_t = min(m_t, θ_t).
# neuron 0: m = .25, .5625, .546875, .375      -> sub-threshold, sub, FIRE (θ=.25), sub (leak of θ)
# neuron 1: m = 1, 1.1875, .0625, 1.03125      -> FIRE, FIRE (from pinned .5), sub, FIRE
# neuron 2: m = -.5, .125, .59375, .625        -> negative membrane, sub, FIRE, exactly at θ (no spike)
EXPECTED_M = [
    [0.25, 1.0, -0.5],
    [0.5625, 1.1875, 0.125],
    [0.546875, 0.0625, 0.59375],
    [0.375, 1.03125, 0.625],
]
EXPECTED_S = [
    [0.0, 0.5, 0.0],
    [0.0, 0.4375, 0.0],
    [0.296875, 0.0, 0.34375],
    [0.0, 0.40625, 0.0],
]
EXPECTED_V = [
    [0.25, 0.5, -0.5],
    [0.5625, 0.75, 0.125],
    [0.25, 0.0625, 0.25],
    [0.375, 0.625, 0.625],
]


def test_hmdf_step_hand_trajectory_exact():
    """SPEC §1, §2: charge with the leak, graded spike = excess, membrane pinned at θ, θ leaks next step."""
    v = None
    for t in range(4):
        p = HMDFParams(t64(LEAK[t]), t64(THETA[t]))
        s, v = hmdf_step(t64(CURRENT[t]), v, p)
        assert torch.equal(s, t64(EXPECTED_S[t])), f"step {t}: spikes {s.tolist()}"
        assert torch.equal(v, t64(EXPECTED_V[t])), f"step {t}: membrane {v.tolist()}"
        # s + v = m at every step: the spike removes exactly the excess (SPEC §2)
        assert torch.equal(s + v, t64(EXPECTED_M[t]))


def test_hmdf_first_step_has_no_leak_term():
    """SPEC §1: v_{-1} = 0, so m_0 = I_0 whatever λ_0 is."""
    i = t64([0.25, 0.75, -1.0])
    for leak in (0.1, 0.5, 0.9):
        s, v = hmdf_step(i, None, HMDFParams(t64(leak), t64(0.5)))
        assert torch.equal(s, t64([0.0, 0.25, 0.0]))
        assert torch.equal(v, t64([0.25, 0.5, -1.0]))


def test_ppr_pins_membrane_exactly_at_non_dyadic_threshold():
    """SPEC §2: after a spike the membrane is set to exactly θ_t (bit-exact, not m − (m − θ))."""
    theta = torch.sigmoid(t64(0.3))  # not a dyadic number
    m = t64([0.7, 1.3, 2.9, 10.1, 0.6000000001])
    s, v = hmdf_fire(m, theta)
    assert (s > 0).all()
    assert torch.equal(v, theta.expand_as(m))
    # float32 too
    theta32 = torch.sigmoid(torch.tensor(0.3))
    s32, v32 = hmdf_fire(m.float(), theta32)
    assert torch.equal(v32, theta32.expand(5))


def test_hmdf_step_leaks_the_pinned_threshold():
    """SPEC §1, §2: after firing, v = θ_t, so the next charge is λ_{t+1}·θ_t + I_{t+1}."""
    theta0 = torch.sigmoid(t64(0.7))
    s0, v0 = hmdf_step(t64([3.0]), None, HMDFParams(t64(0.5), theta0))
    assert torch.equal(v0, theta0.reshape(1))
    lam1, theta1 = t64(0.8), t64(0.95)
    s1, v1 = hmdf_step(t64([0.1]), v0, HMDFParams(lam1, theta1))
    expected_m1 = 0.8 * theta0.item() + 0.1  # = 0.6671... < 0.95: silent, v = m
    assert s1.item() == 0.0
    assert v1.item() == pytest.approx(expected_m1, abs=1e-15)


def test_hmdf_fire_gradients_away_from_threshold():
    """SPEC §1, §2: ds/dm = 1[m > θ] and dv/dm = 1[m ≤ θ]; no surrogate."""
    m = t64([-1.0, 0.2, 0.49, 0.51, 0.9, 4.0]).requires_grad_()
    s, v = hmdf_fire(m, t64(0.5))
    (ds,) = torch.autograd.grad(s.sum(), m, retain_graph=True)
    (dv,) = torch.autograd.grad(v.sum(), m)
    assert torch.equal(ds, t64([0, 0, 0, 1, 1, 1]))
    assert torch.equal(dv, t64([1, 1, 1, 0, 0, 0]))


def test_hmdf_fire_gradient_at_exact_threshold_tie():
    """SPEC §2: ∂v_t/∂m_t = 1[m_t ≤ θ_t] and ∂s_t/∂m_t = 1[m_t > θ_t]; at m = θ these are 1 and 0.

    Since v + s = m, the two derivatives must sum to 1 everywhere, the tie included.
    """
    theta = t64(0.5)
    m = t64([0.5, 0.25]).requires_grad_()
    s, v = hmdf_fire(m, theta)
    (ds,) = torch.autograd.grad(s.sum(), m, retain_graph=True)
    (dv,) = torch.autograd.grad(v.sum(), m)
    assert torch.equal(ds, t64([0.0, 0.0]))
    assert torch.equal(ds + dv, t64([1.0, 1.0])), f"ds/dm + dv/dm = {(ds + dv).tolist()} at the tie"
    assert torch.equal(dv, t64([1.0, 1.0]))


# ------------------------------------------------------------------------------------------
# 4-bit spikes (SPEC §1.2)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s, code",
    [
        (0.0, 0),
        (0.1, 0),  # 0.4 -> 0
        (0.125, 0),  # 0.5 -> 0   (half to even)
        (0.2, 1),  # 0.8 -> 1
        (0.25, 1),
        (0.375, 2),  # 1.5 -> 2   (half to even)
        (0.625, 2),  # 2.5 -> 2   (half to even)
        (0.875, 4),  # 3.5 -> 4   (half to even)
        (1.125, 4),  # 4.5 -> 4   (half to even)
        (3.75, 15),
        (3.8, 15),  # 15.2 -> 15
        (3.875, 15),  # 15.5 -> 16 -> clamp 15
        (9.0, 15),  # clamp
        (-0.3, 0),  # never negative
    ],
)
def test_q4_codes_and_levels(s, code):
    """SPEC §1.2: c = clamp(round(4 s), 0, 15) with round half to even; Q4(s) = c / 4."""
    x = torch.tensor([s], dtype=torch.float32)
    assert spike_codes(x).item() == code
    assert quantize_spikes(x, "4bit").item() == code / 4
    assert quantize_spikes(x, "float").item() == pytest.approx(s)


def test_q4_has_exactly_sixteen_levels():
    """SPEC §1.2: the levels are {0, 0.25, ..., 3.75}."""
    s = torch.linspace(-1, 6, 7001)
    levels = torch.unique(quantize_spikes(s, "4bit"))
    assert torch.equal(levels, torch.arange(16, dtype=torch.float32) / 4)


def test_q4_straight_through_gradient_is_identity():
    """SPEC §1.2: backward is straight-through (identity), also where the code is clamped."""
    s = t64([0.0, 0.125, 0.3, 1.7, 3.875, 12.0]).requires_grad_()
    g = t64([1.0, -2.0, 3.0, 0.5, 7.0, -1.5])
    (grad,) = torch.autograd.grad((quantize_spikes(s, "4bit") * g).sum(), s)
    assert torch.equal(grad, g)


def test_4bit_neuron_output_is_q4_but_reset_uses_unquantized_spike():
    """SPEC §1.2: o_t = Q4(s_t) while v_t = min(m_t, θ_t) uses the unquantized s (residual dropped)."""
    n = HMDFNeuron(4, spikes="4bit").double()
    with torch.no_grad():
        n.a.copy_(t64([logit(x) for x in LEAK]))
        n.b.copy_(t64([logit(x) for x in THETA]))
    # Q4 of the hand spikes:  .296875 -> 4s = 1.1875 -> 1 -> .25;  .34375 -> 1.375 -> 1 -> .25;
    # .5 -> 2 -> .5;  .4375 -> 1.75 -> 2 -> .5;  .40625 -> 1.625 -> 2 -> .5
    expected_o = [
        [0.0, 0.5, 0.0],
        [0.0, 0.5, 0.0],
        [0.25, 0.0, 0.25],
        [0.0, 0.5, 0.0],
    ]
    for t in range(4):
        o = n(t64(CURRENT[t]), t)
        assert torch.allclose(o, t64(expected_o[t]), atol=0), f"step {t}: {o.tolist()}"
        # the state follows the unquantized trajectory exactly as in float mode
        assert torch.allclose(n.v, t64(EXPECTED_V[t]), atol=1e-12), f"step {t}: {n.v.tolist()}"


# ------------------------------------------------------------------------------------------
# HMDFNeuron module
# ------------------------------------------------------------------------------------------


def _hand_neuron(**kw) -> HMDFNeuron:
    n = HMDFNeuron(4, **kw).double()
    with torch.no_grad():
        n.a.copy_(t64([logit(x) for x in LEAK]))
        n.b.copy_(t64([logit(x) for x in THETA]))
    return n


def test_hmdf_module_defaults():
    """SPEC §1: a, b of length T initialised to 0, so λ_t = θ_t = 0.5."""
    n = HMDFNeuron(5)
    assert n.a.shape == (5,) and n.b.shape == (5,)
    assert torch.equal(n.a.detach(), torch.zeros(5)) and torch.equal(n.b.detach(), torch.zeros(5))
    p = n.params(3)
    assert p.leak.item() == 0.5 and p.threshold.item() == 0.5


def test_hmdf_module_matches_hand_trajectory():
    """SPEC §1: the module with λ_t = σ(a_t), θ_t = σ(b_t) set by logits follows the hand trajectory."""
    n = _hand_neuron()
    for t in range(4):
        s = n(t64(CURRENT[t]), t)
        assert torch.allclose(s, t64(EXPECTED_S[t]), atol=1e-12), f"step {t}: {s.tolist()}"
        assert torch.allclose(n.v, t64(EXPECTED_V[t]), atol=1e-12), f"step {t}: {n.v.tolist()}"
    # the PPR pin is exact: neuron 1 fired at t = 3, its membrane is θ_3 = σ(b_3) bit for bit
    assert n.v[1].item() == torch.sigmoid(n.b[3]).item()


def test_steps_past_T_reuse_last_step_parameters():
    """SPEC §1 (streaming policy of the toolkit): steps t ≥ T use λ_{T-1}, θ_{T-1}."""
    n = _hand_neuron()
    for t in range(4):
        n(t64(CURRENT[t]), t)
    # v_3 = [.375, .625, .625]; λ_3 = .5, θ_3 = .625
    # t = 4: I = [.5, 0, .5]  -> m = [.6875, .3125, .8125] -> s = [.0625, 0, .1875], v = [.625, .3125, .625]
    s4 = n(t64([0.5, 0.0, 0.5]), 4)
    assert torch.allclose(s4, t64([0.0625, 0.0, 0.1875]), atol=1e-12)
    assert torch.allclose(n.v, t64([0.625, 0.3125, 0.625]), atol=1e-12)
    # t = 9: I = [0, .5, -1] -> m = [.3125, .65625, -.6875] -> s = [0, .03125, 0]
    s9 = n(t64([0.0, 0.5, -1.0]), 9)
    assert torch.allclose(s9, t64([0.0, 0.03125, 0.0]), atol=1e-12)
    assert torch.allclose(n.v, t64([0.3125, 0.625, -0.6875]), atol=1e-12)


def test_reset_restarts_from_zero_membrane():
    """SPEC §1: v_{-1} = 0 at the start of every sample; reset() restores it."""
    n = _hand_neuron()
    first = [n(t64(CURRENT[t]), t) for t in range(4)]
    assert n.v is not None
    n.reset()
    assert n.v is None
    second = [n(t64(CURRENT[t]), t) for t in range(4)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    # without a reset the next sample starts from v_3 = [.375, .625, .625] and differs at step 0:
    # m = .5·v_3 + I_0 = [.4375, 1.3125, −.1875] -> s = [0, .8125, 0] instead of [0, .5, 0]
    stale = n(t64(CURRENT[0]), 0)
    assert torch.allclose(stale, t64([0.0, 0.8125, 0.0]), atol=1e-12)


def test_detach_state_cuts_gradient_to_earlier_steps():
    """SPEC §1 / §4.1: online training uses sg(v_{t-1}); BPTT keeps the path λ_1·∂s_1/∂m_1 to I_0."""
    for detach, expected in ((False, 0.5), (True, 0.0)):
        n = HMDFNeuron(2).double()  # λ = θ = 0.5
        n.detach_state = detach
        i0 = t64([0.25]).requires_grad_()  # silent at t = 0: v_0 = .25
        n(i0, 0)
        s1 = n(t64([0.5]), 1)  # m_1 = .125 + .5 = .625 > .5: fires, s_1 = .125
        assert s1.item() == pytest.approx(0.125, abs=1e-15)
        (g,) = torch.autograd.grad(s1.sum(), i0, allow_unused=True)
        got = 0.0 if g is None else g.item()
        # BPTT: ds_1/dI_0 = 1[m_1 > θ] · λ_1 · 1[m_0 ≤ θ] = 0.5
        assert got == expected


def test_hmdf_gradients_to_leak_and_threshold_logits():
    """SPEC §1: ds_1/da_1 = v_0·σ'(a_1), ds_1/db_1 = −σ'(b_1) when firing (autograd of the formula)."""
    n = HMDFNeuron(2).double()
    n(t64([0.25]), 0)
    s1 = n(t64([0.5]), 1)
    s1.sum().backward()
    dsig = 0.25  # σ'(0) = σ(0)(1 − σ(0))
    assert n.a.grad.tolist() == pytest.approx([0.0, 0.25 * dsig], abs=1e-15)
    assert n.b.grad.tolist() == pytest.approx([0.0, -dsig], abs=1e-15)


# ------------------------------------------------------------------------------------------
# Parallel HM-DF (SPEC §1.1)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spikes", ["float", "4bit"])
def test_parallel_hmdf_is_stateless_with_one_threshold(spikes):
    """SPEC §1.1: o_t = Q(max(I_t − θ, 0)), one θ = σ(b) per layer, no state, same map at every t."""
    n = ParallelHMDF(spikes=spikes).double()
    assert n.b.numel() == 1
    with torch.no_grad():
        n.b.fill_(math.log(3.0))  # θ = 0.75
    i = t64([-1.0, 0.5, 0.75, 0.875, 1.25, 2.0, 5.0])
    excess = [0.0, 0.0, 0.0, 0.125, 0.5, 1.25, 4.25]
    # 4-bit: 4·excess = 0, 0, 0, .5 -> 0, 2 -> .5, 5 -> 1.25, 17 -> clamp 15 -> 3.75
    expected = excess if spikes == "float" else [0.0, 0.0, 0.0, 0.0, 0.5, 1.25, 3.75]
    outs = [n(i, t) for t in (0, 1, 2, 7, 0)]
    for o in outs:
        assert torch.allclose(o, t64(expected), atol=1e-12)
    n(t64([9.0] * 7), 3)  # an unrelated call in between changes nothing
    assert torch.allclose(n(i, 2), t64(expected), atol=1e-12)
    assert list(dict(n.named_buffers())) == []


def test_make_neuron_selects_the_family_member():
    """SPEC §1.1: make_neuron returns LIF, Parallel HM-DF or stateful HM-DF (with Mem-BN when asked)."""
    assert isinstance(make_neuron("lif", 4, 8), LIFNeuron)
    assert isinstance(make_neuron("hmdf", 4, 8, parallel=True), ParallelHMDF)
    n = make_neuron("hmdf", 4, 8, spikes="4bit", mem_bn=True)
    assert isinstance(n, HMDFNeuron) and n.spikes == "4bit" and isinstance(n.norm, MembraneNorm)
    assert make_neuron("hmdf", 4, 8).norm is None


# ------------------------------------------------------------------------------------------
# LIF baseline (SPEC §1.1)
# ------------------------------------------------------------------------------------------


def test_lif_module_hand_trajectory():
    """SPEC §1.1: θ = σ(0) + 0.5 = 1, λ = 0.5; z = 1[m ≥ θ]; s = z·θ (binary height); v = m − s."""
    n = LIFNeuron(4).double()
    currents = [[0.75, 1.0], [0.75, 0.0], [0.75, 0.25], [2.5, 0.0]]
    # neuron 0: m = .75, 1.125, .8125, 2.90625 -> s = 0, 1, 0, 1 ; v = .75, .125, .8125, 1.90625
    # neuron 1: m = 1 (= θ fires), 0, .25, .125  -> s = 1, 0, 0, 0 ; v = 0, 0, .25, .125
    exp_s = [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]
    exp_v = [[0.75, 0.0], [0.125, 0.0], [0.8125, 0.25], [1.90625, 0.125]]
    for t in range(4):
        s = n(t64(currents[t]), t)
        assert torch.equal(s, t64(exp_s[t])), f"step {t}: {s.tolist()}"
        assert torch.equal(n.v, t64(exp_v[t])), f"step {t}: {n.v.tolist()}"


def test_lif_spike_height_is_threshold():
    """SPEC §1.1: s_t = z_t θ_t with θ_t = σ(b_t) + 0.5 (here b = ln 3, θ = 1.25), subtract reset."""
    n = LIFNeuron(1).double()
    with torch.no_grad():
        n.b.fill_(math.log(3.0))
    s = n(t64([1.0, 1.3, 3.0]), 0)
    assert torch.allclose(s, t64([0.0, 1.25, 1.25]), atol=1e-12)
    assert torch.allclose(n.v, t64([1.0, 0.05, 1.75]), atol=1e-12)


def test_lif_triangle_surrogate_gradient():
    """SPEC §1.1: dz/dm = max(γ − |m − θ|, 0)/γ², γ = 1; s = zθ so ds/dm = θ·that."""
    theta = 1.25
    m = t64([1.25, 1.75, 1.0, 2.75, 0.25, 0.5, 1.5]).requires_grad_()
    s, v = lif_step(m, None, HMDFParams(t64(0.5), t64(theta)))
    # x = m − θ = 0, .5, −.25, 1.5, −1, −.75, .25  -> triangle = 1, .5, .75, 0, 0, .25, .75
    tri = [1.0, 0.5, 0.75, 0.0, 0.0, 0.25, 0.75]
    (ds,) = torch.autograd.grad(s.sum(), m, retain_graph=True)
    assert torch.allclose(ds, theta * t64(tri), atol=1e-15)
    (dv,) = torch.autograd.grad(v.sum(), m)
    assert torch.allclose(dv, 1 - theta * t64(tri), atol=1e-15)
    assert torch.equal(s.detach(), t64([1.25, 1.25, 0, 1.25, 0, 0, 1.25]))


def test_lif_reset_and_detach():
    """SPEC §1.1 / §4.1: LIF also restarts from v = 0 and can be trained online (detached v)."""
    n = LIFNeuron(2).double()
    n.detach_state = True
    i0 = t64([0.75]).requires_grad_()
    n(i0, 0)
    s1 = n(t64([0.5]), 1)  # m = .375 + .5 = .875, x = −.125: surrogate .875
    (g,) = torch.autograd.grad(s1.sum(), i0, allow_unused=True)
    assert g is None or g.item() == 0.0
    n.reset()
    assert n.v is None
    n.detach_state = False
    i0 = t64([0.75]).requires_grad_()
    n(i0, 0)
    s1 = n(t64([0.5]), 1)
    (g,) = torch.autograd.grad(s1.sum(), i0)
    # ds_1/dI_0 = θ·tri(m_1 − θ) · λ_1 · dv_0/dm_0,  dv_0/dm_0 = 1 − θ·tri(.75 − 1) = 1 − .75
    #          = 1 · .875 · .5 · .25
    assert g.item() == pytest.approx(0.109375, abs=1e-15)


# ------------------------------------------------------------------------------------------
# Mem-BN (SPEC §3)
# ------------------------------------------------------------------------------------------


def _randomise_mem_bn(norm: MembraneNorm, gen: torch.Generator) -> None:
    with torch.no_grad():
        for bn in norm.bn:
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=D))
            bn.running_var.copy_(torch.rand(c, generator=gen, dtype=D) + 0.3)
            bn.weight.copy_(torch.randn(c, generator=gen, dtype=D))
            bn.bias.copy_(torch.randn(c, generator=gen, dtype=D) * 0.5)
        norm.p.copy_(torch.randn(norm.p.shape, generator=gen, dtype=D))
        norm.q.copy_(torch.randn(norm.q.shape, generator=gen, dtype=D))


@pytest.mark.parametrize("spatial", [True, False])
def test_mem_bn_eval_equals_algebraic_form(spatial):
    """SPEC §3, §3.1: in eval, m̂ = σ(p)(g·m + h) + σ(q)·m with g = γ/√(var+ε), h = β − gμ."""
    gen = torch.Generator().manual_seed(0)
    T, C = 3, 5
    norm = MembraneNorm(T, C, spatial).double().eval()
    _randomise_mem_bn(norm, gen)
    shape = (2, C, 3, 3) if spatial else (4, C)
    view = (1, C, 1, 1) if spatial else (1, C)
    m = torch.randn(shape, generator=gen, dtype=D)
    for t in range(T):
        bn = norm.bn[t]
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        h = bn.bias - g * bn.running_mean
        expected = torch.sigmoid(norm.p[t]) * (g.view(view) * m + h.view(view)) + torch.sigmoid(norm.q[t]) * m
        assert torch.allclose(norm(m, t), expected, atol=1e-12, rtol=1e-12)


def test_mem_bn_neuron_matches_folded_recurrence():
    """SPEC §3.1: m̂_t = (k_t λ_t)·v_{t-1} + (k_t I_t + c_t), k = σ(p)g + σ(q), c = σ(p)h; state = v of m̂."""
    gen = torch.Generator().manual_seed(1)
    T, C = 4, 3
    n = HMDFNeuron(T, C, mem_bn=True).double().eval()
    _randomise_mem_bn(n.norm, gen)
    with torch.no_grad():
        n.a.copy_(torch.randn(T, generator=gen, dtype=D))
        n.b.copy_(torch.randn(T, generator=gen, dtype=D))
    x = torch.randn(T + 1, 2, C, 2, 2, generator=gen, dtype=D)  # one step past T
    v = torch.zeros(2, C, 2, 2, dtype=D)
    fired = silent = 0
    for t in range(T + 1):
        k_idx = min(t, T - 1)
        bn = n.norm.bn[k_idx]
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        h = bn.bias - g * bn.running_mean
        k = (torch.sigmoid(n.norm.p[k_idx]) * g + torch.sigmoid(n.norm.q[k_idx])).view(1, C, 1, 1)
        c = (torch.sigmoid(n.norm.p[k_idx]) * h).view(1, C, 1, 1)
        lam, theta = torch.sigmoid(n.a[k_idx]), torch.sigmoid(n.b[k_idx])
        m_hat = k * lam * v + (k * x[t] + c)
        s_exp = torch.clamp(m_hat - theta, min=0)
        v = torch.where(m_hat > theta, theta, m_hat)
        s = n(x[t], t)
        assert torch.allclose(s, s_exp, atol=1e-12), f"step {t}"
        assert torch.allclose(n.v, v, atol=1e-12), f"step {t}"
        fired += int((s_exp > 0).sum())
        silent += int((s_exp == 0).sum())
    assert fired > 0 and silent > 0  # both branches exercised


def test_mem_bn_parameters_initialised_to_zero():
    """SPEC §3: p_t, q_t init 0 (σ = 0.5 each), one BatchNorm per step."""
    n = HMDFNeuron(3, 7, mem_bn=True)
    assert torch.equal(n.norm.p.detach(), torch.zeros(3)) and torch.equal(n.norm.q.detach(), torch.zeros(3))
    assert len(n.norm.bn) == 3 and all(isinstance(b, nn.BatchNorm2d) and b.num_features == 7 for b in n.norm.bn)


def test_mem_bn_requires_channels():
    """SPEC §3: Mem-BN is channel-wise, so the neuron needs the channel count."""
    with pytest.raises(ValueError, match="channel count"):
        HMDFNeuron(2, None, mem_bn=True)
