"""The deployment contract (SPEC §1.2, §3.1, §6, §7): a folded DeployModel reproduces the trained
network in eval mode, and its three execution forms agree with each other.

For every layer kind and option, a random network whose BN running statistics and affines, neuron
logits (a, b), Mem-BN (p, q and per-step BN statistics) and SECA weights are all randomised (so the
fold is never an identity), is compared in four ways on the same inputs:

    trained `forward_sequence`  ==  `Reference.run` (scan)  ==  `Reference.run(scan=False)`
                                ==  a `Reference.step` loop

The trained network is the independent reference: it runs the un-folded modules (BN, Mem-BN,
α·codes weights, Q4 spikes) and knows nothing of the deployment form. The comparison is made
non-vacuous by checking that the neurons actually fire, and 4-bit codes are compared code by code.
Logits and float spikes are compared with the trained network run in float64, each within a small
multiple of the trained network's own float32 error (nets.float_bound).
"""

from __future__ import annotations

import importlib
import math

import nets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nets import expected_codes, step_loop, trained_truth, vgg

import hmdf_deploy.deploy.reference as reference_module
from hmdf_deploy.deploy import DeployModel, Reference, fold
from hmdf_deploy.deploy.fold import merge_input_affines
from hmdf_deploy.deploy.graph import SECA, Add, Conv, Flatten, Linear, Neuron, Pool
from hmdf_deploy.deploy.inputs import sequence_input
from hmdf_deploy.deploy.quantize import check_equivalence
from hmdf_deploy.deploy.scan import min_affine_loop, min_affine_scan
from hmdf_deploy.models import ModelConfig, build_model

#: The trained network's own float32 error (against float64) must stay small, or comparing within
#: a multiple of it (nets.float_bound) would say nothing.
MAX_FLOAT_ERROR = 5e-5


def resnet(arch, **kw) -> ModelConfig:
    return nets.resnet(arch, **{"input_size": (16, 16), **kw})


# ------------------------------------------------------------------------------------- helpers
def make_case(cfg: ModelConfig, *, event: bool, batch: int, seed: int, steps: int | None = None):
    """A randomised network in eval mode and an input batch: static (B, C, H, W) with values in
    [0, 2), or event counts (B, steps, C, H, W). BN statistics are calibrated on 8 other samples."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_model(cfg)
    c, (h, w) = cfg.in_channels, cfg.input_size

    def inputs(n: int, length: int) -> torch.Tensor:
        if event:
            return torch.poisson(torch.rand(n, length, c, h, w, generator=g) * 1.5, generator=g)
        return torch.rand(n, c, h, w, generator=g) * 2.0

    nets.randomise(net, inputs(8, cfg.T), not event, g, nets.TAME)
    return net, inputs(batch, steps or cfg.T)


def compare_neurons(deploy: DeployModel, trained: dict, trained64: dict, record: dict) -> torch.Tensor:
    """Compare every neuron's output (T, B, ...) with the trained network's: 4-bit codes and binary
    spikes one by one with its float32 run, float spikes within nets.float_bound of its float64
    run. Return which of the B samples have a 4-bit code (off by ±1) or a binary spike that differs:
    few, at rounding ties."""
    flips = total = 0
    flipped = None
    for n in deploy.neurons:
        want, want64, got = trained[n.name], trained64[n.name], record[n.name]
        assert got.shape == want.shape, n.name
        differ = None
        if n.spikes == "4bit":
            diff = (got - expected_codes(want)).abs()
            assert float(diff.max()) <= 1, f"{n.name}: a 4-bit code is off by more than 1"
            differ = diff > 0
        elif n.model == "lif":
            # binary spikes of height θ_t: a tie could only flip a whole spike
            differ = (got != 0) != (want != 0)
            nets.assert_float_close(*(torch.where(differ, 0.0, v) for v in (got, want, want64)), n.name)
        else:
            nets.assert_float_close(got, want, want64, n.name)
        if differ is not None:
            flips, total = flips + int(differ.sum()), total + differ.numel()
            per_sample = differ.reshape(*differ.shape[:2], -1).any(-1).any(0)
            flipped = per_sample if flipped is None else flipped | per_sample
    assert flips <= nets.MAX_FLIP_SHARE * max(1, total), f"{flips} of {total} spike codes differ"
    batch = next(iter(record.values())).shape[1]
    return torch.zeros(batch, dtype=torch.bool) if flipped is None else flipped


def check_case(cfg: ModelConfig, *, event: bool = False, batch: int = 3, seed: int = 0) -> DeployModel:
    cfg.validate()
    net, x = make_case(cfg, event=event, batch=batch, seed=seed)
    static = not event
    deploy = fold(net, cfg, event=event)
    truth, trained, trained64 = trained_truth(net, deploy, x, static)
    want = truth.f32
    ref = Reference(deploy)
    seq = sequence_input(x, cfg.T, static)
    assert seq.shape[:2] == (cfg.T, batch)

    rec_scan: dict = {}
    rec_loop: dict = {}
    by_scan = ref.run(seq, scan=True, record=rec_scan)
    by_loop = ref.run(seq, scan=False, record=rec_loop)
    by_step = step_loop(ref, seq)

    # non-vacuous: the neurons fire (every layer some, and a healthy share overall)
    fired = [float((rec_scan[n.name] != 0).float().mean()) for n in deploy.neurons]
    assert fired, "no neurons in the deployment model"
    assert min(fired) > 0, f"a layer is silent: {fired}"
    assert sum(fired) / len(fired) > 0.1, f"too few spikes to test anything: {fired}"
    assert float(want.abs().max()) > 0.05 and float(want.std()) > 1e-3

    scale = float(want.abs().max())
    assert truth.error <= MAX_FLOAT_ERROR * scale, "the random network is too ill-conditioned to test anything"
    # a (rare, allowed) code flip moves its sample's logits by a whole level: compare the others
    flipped = (compare_neurons(deploy, trained, trained64, rec_scan)
               | compare_neurons(deploy, trained, trained64, rec_loop))
    truth = nets.Truth(truth.f32, truth.exact, truth.keep & ~flipped)
    for name, got in (("scan", by_scan), ("loop", by_loop), ("step", by_step)):
        assert got.shape == want.shape == (cfg.T, batch, cfg.num_classes), name
        truth.check(got, name)
    return deploy


# --------------------------------------------------------------------------- the core contract
CASES = [
    # VGG: pools, global pool, SECA 0/1/2, weights, spikes, Mem-BN, LIF, static and event input
    pytest.param(vgg([4, "M", 4, 4], T=2), False, 3, id="vgg-avg-fp32-float"),
    pytest.param(vgg([4, "M", 4], pool="max", weights="1.5bit", spikes="4bit", seca=1, T=5), False, 1,
                 id="vgg-max-1.5bit-4bit-seca1"),
    pytest.param(vgg([4, 4, "M", 4, "G"], weights="1bit", spikes="4bit", seca=2, mem_bn=True, T=5), False, 3,
                 id="vgg-G-1bit-4bit-seca2-membn"),
    pytest.param(vgg([4, 4, "G"], weights="1.5bit", seca=2, mem_bn=True, T=1), False, 3,
                 id="vgg-G-1.5bit-float-seca2-membn-T1"),
    pytest.param(vgg([4, "M", 4], pool="max", weights="1.5bit", mem_bn=True, T=2), False, 3,
                 id="vgg-max-1.5bit-float-membn"),
    pytest.param(vgg([4, 4, "M", 4], neuron="lif", T=3), False, 3, id="vgg-lif-fp32"),
    pytest.param(vgg([4, "M", 4], neuron="lif", weights="1bit", seca=1, T=2), False, 1, id="vgg-lif-1bit-seca1"),
    pytest.param(vgg([4, "M", 4], weights="1.5bit", spikes="4bit", quantize_stem=True, T=2), False, 3,
                 id="vgg-quantized-stem-static"),
    pytest.param(vgg([4, "M", 4], in_channels=2, weights="1bit", spikes="4bit", seca=1, quantize_stem=True, T=5),
                 True, 3, id="vgg-event-1bit-4bit-seca1"),
    pytest.param(vgg([4, 4, "M", 4, "M"], in_channels=2, input_size=(16, 16), weights="1.5bit", mem_bn=True,
                     seca=2, quantize_stem=True, T=2), True, 1, id="vgg-event-16x16-1.5bit-membn-seca2"),
    # ResNets (width 4): every weight mode, both spike modes, Parallel, Mem-BN, SECA, LIF, stems
    pytest.param(resnet("resnet18", T=2), False, 3, id="resnet18-fp32-float"),
    pytest.param(resnet("resnet18", weights="1.5bit", spikes="4bit", parallel=True, mem_bn=True, seca=2, T=2),
                 False, 3, id="resnet18-1.5bit-4bit-parallel-membn-seca2"),
    pytest.param(resnet("resnet18", weights="1bit", parallel=True, seca=1, T=5), False, 1,
                 id="resnet18-1bit-float-parallel-seca1"),
    pytest.param(resnet("resnet18", neuron="lif", weights="1.5bit", T=3), False, 3, id="resnet18-lif"),
    pytest.param(resnet("resnet19", weights="1bit", mem_bn=True, seca=1, T=5), False, 3,
                 id="resnet19-1bit-float-membn-seca1"),
    pytest.param(resnet("resnet19", weights="1.5bit", spikes="4bit", parallel=True, seca=2, T=1), False, 3,
                 id="resnet19-1.5bit-4bit-parallel-seca2-T1"),
    pytest.param(resnet("resnet34", stem="imagenet", spikes="4bit", parallel=True, T=2), False, 1,
                 id="resnet34-imagenet-stem-fp32-4bit-parallel"),
    pytest.param(resnet("resnet34", weights="1.5bit", mem_bn=True, T=2), False, 1, id="resnet34-1.5bit-membn"),
    pytest.param(resnet("resnet18", in_channels=2, weights="1bit", spikes="4bit", mem_bn=True, quantize_stem=True,
                        T=5), True, 3, id="resnet18-event-1bit-4bit-membn"),
    pytest.param(resnet("resnet19", in_channels=2, weights="1.5bit", parallel=True, seca=2, quantize_stem=True,
                        T=2), True, 1, id="resnet19-event-1.5bit-parallel-seca2"),
]


@pytest.mark.parametrize("cfg, event, batch", CASES)
def test_deploy_matches_trained_network(cfg, event, batch):
    deploy = check_case(cfg, event=event, batch=batch)
    assert deploy.event is event
    # the fold is not trivial: the affines carry BN (and α), not ones and zeros
    synapses = [n for n in deploy.nodes if isinstance(n, (Conv, Linear))]
    assert any(float((n.scale - 1).abs().max()) > 1e-3 for n in synapses)
    assert any(float(n.shift.abs().max()) > 1e-3 for n in synapses)
    if cfg.weights != "fp32":
        quantized = [n for n in synapses if n.weights != "fp32"]
        assert quantized and all(n.weight.dtype == torch.int8 for n in quantized)
        assert all(set(n.weight.unique().tolist()) <= {-1, 0, 1} for n in quantized)
    if cfg.spikes == "4bit":
        assert deploy.spikes == "4bit"


@pytest.mark.parametrize("cfg, event, batch", CASES)
def test_the_fold_kept_in_float64_is_exact(cfg, event, batch):
    """What `hmdf quantize` checks: the fold before float32 rounds it agrees with the trained
    network (both in float64) to float64 rounding, every 4-bit code included. Rounded to float32
    first, parameters (α among them) differ by ~1e-7 relative, enough to move a code at a tie; and
    the stored float32 model is that fold rounded once."""
    cfg.validate()
    net, x = make_case(cfg, event=event, batch=batch, seed=0)
    exact = fold(net, cfg, event=event, dtype=torch.float64)
    check = check_equivalence(net, exact, x)
    assert check.max_abs_diff <= 1e-9 * max(1.0, check.logit_scale), check
    assert check.code_flips == 0 and check.prediction_agreement == 1.0
    shapes = exact.shapes()  # every 4-bit code of every neuron was compared, none left out
    assert check.codes == sum(cfg.T * len(x) * math.prod(shapes[n.name]) for n in exact.neurons if n.spikes == "4bit")
    stored = fold(net, cfg, event=event)
    for a, b in zip(exact.nodes, stored.nodes):
        for key, t in a.tensors().items():
            want = t.to(torch.float32) if t.is_floating_point() else t
            assert torch.equal(b.tensors()[key], want), (a.name, key)


def _bn_affine_without_eps(bn):
    g = bn.weight.detach().double() / bn.running_var.double().sqrt()
    return g, bn.bias.detach().double() - g * bn.running_mean.double()


def _bn_affine_in_float32(bn):
    g = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return g.double(), (bn.bias.detach() - g * bn.running_mean).double()


@pytest.mark.parametrize("wrong_bn_affine", [_bn_affine_without_eps, _bn_affine_in_float32], ids=["no-eps", "float32"])
@pytest.mark.parametrize("cfg, event", [
    (vgg([4, "M", 8], weights="1.5bit", spikes="float", T=2), False),
    (resnet("resnet18", weights="1bit", mem_bn=True, T=2), True),
], ids=["vgg-float", "resnet18-membn-events"])
def test_the_quantize_check_refuses_a_slightly_wrong_fold(cfg, event, wrong_bn_affine, monkeypatch):
    """A fold that drops BN's ε (1e-5 next to variances of order 1), or computes BN's affine in
    float32, moves float-spike logits by 3e-4 or ~1e-7 relative: too little to change accuracy,
    far more than float64 rounding (~1e-15); `hmdf quantize` must refuse both."""
    cfg.validate()
    net, x = make_case(cfg, event=event, batch=3, seed=0)
    assert check_equivalence(net, fold(net, cfg, event=event, dtype=torch.float64), x).passed
    monkeypatch.setattr(importlib.import_module("hmdf_deploy.deploy.fold"), "bn_affine", wrong_bn_affine)
    check = check_equivalence(net, fold(net, cfg, event=event, dtype=torch.float64), x)
    assert not check.passed and check.code_flips == 0, check


@pytest.mark.parametrize("T", [1, 2, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_deploy_matches_for_every_T_and_batch(T, batch):
    cfg = vgg([4, "M", 8], weights="1.5bit", spikes="4bit", mem_bn=True, T=T)
    check_case(cfg, batch=batch, seed=10 * T + batch)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_deploy_matches_across_seeds(seed):
    check_case(resnet("resnet18", weights="1bit", spikes="4bit", mem_bn=True, seca=1, T=3), seed=seed)


def test_codes_are_compared_not_just_logits():
    """The per-neuron code comparison really sees 4-bit codes: a deliberately broken fold (one
    threshold nudged by half a code level) produces code mismatches and is caught."""
    cfg = vgg([4, "M", 4], weights="1.5bit", spikes="4bit", T=3)
    net, x = make_case(cfg, event=False, batch=3, seed=5)
    deploy = fold(net, cfg, event=False)
    _, trained, trained64 = trained_truth(net, deploy, x, static=True)
    first = deploy.neurons[0]
    first.threshold = first.threshold + 0.125
    record: dict = {}
    Reference(deploy).run(sequence_input(x, cfg.T, True), record=record)
    with pytest.raises(AssertionError):
        compare_neurons(deploy, trained, trained64, record)


# ------------------------------------------------------------------- Mem-BN with a negative k
def test_negative_mem_bn_k_falls_back_to_the_loop(monkeypatch):
    """SPEC §7: the scan needs λ̂ ≥ 0; a negative Mem-BN gain k makes λ̂ < 0 in that channel, so the
    reference must run the loop there, and the result still equals the trained network."""
    cfg = vgg([4, "M", 4], mem_bn=True, T=4)
    net, x = make_case(cfg, event=False, batch=3, seed=7)
    act = net.features[0].act
    with torch.no_grad():
        act.norm.p.fill_(4.0)  # σ(p) ≈ 0.98
        act.norm.q.fill_(-4.0)  # σ(q) ≈ 0.02
        for bn in act.norm.bn:  # channel 0: g = −1.5, so k = σ(p)·g + σ(q) < 0
            bn.weight[0] = -1.5 * float((bn.running_var[0] + bn.eps).sqrt())
    deploy = fold(net, cfg, event=False)
    truth, trained, trained64 = trained_truth(net, deploy, x, static=True)
    neg = deploy.node("features.0.act")
    assert float(neg.leak[:, 0].max()) < 0 and float(neg.leak[:, 1:].min()) >= 0
    assert float(deploy.node("features.2.act").leak.min()) >= 0

    calls: list[str] = []
    real_scan = reference_module.min_affine_scan

    def checked_scan(a, b, c):
        assert bool((a >= 0).all()), "the scan was used with a negative leak"
        calls.append("scan")
        return real_scan(a, b, c)

    monkeypatch.setattr(reference_module, "min_affine_scan", checked_scan)
    seq = sequence_input(x, cfg.T, True)
    record: dict = {}
    got = Reference(deploy).run(seq, scan=True, record=record)
    assert calls == ["scan"], "the non-negative neuron should still use the scan, the negative one not"
    truth.check(got, "scan")
    assert not compare_neurons(deploy, trained, trained64, record).any()
    truth.check(step_loop(Reference(deploy), seq), "step")
    # the channel with k < 0 fires (so the sign flip matters) ...
    assert float((record["features.0.act"][:, :, 0] != 0).float().mean()) > 0.05
    # ... and the fallback is needed: the scan itself is wrong for a negative leak
    current = record[neg.inputs[0]][:, :, 0].double()
    leak = neg.leak[:, 0].double().view(-1, 1, 1, 1)
    theta = neg.threshold.double().view(-1, 1, 1, 1)
    assert not torch.allclose(min_affine_scan(leak, current, theta), min_affine_loop(leak, current, theta))


# ----------------------------------------------------------------- steps past T, by hand
def _tiny_model(model: str = "hmdf", spikes: str = "float") -> DeployModel:
    """input (2, 1, 1) → flatten → ternary Linear 2→2 with per-step affine → one neuron (T = 2)."""
    nodes = [
        Flatten("flat", ["input"]),
        Linear("fc", ["flat"], "1.5bit", torch.tensor([[1, -1], [0, 1]], dtype=torch.int8),
               torch.tensor([[0.5, 1.0], [2.0, 0.25]]), torch.tensor([[0.1, 0.0], [0.0, -0.2]])),
        Neuron("act", ["fc"], model, spikes, torch.tensor([0.3, 0.6]), torch.tensor([[0.9], [0.5]])),
    ]
    return DeployModel(2, (2, 1, 1), True, 2, nodes, "act").validate()


def _by_hand(model: str, steps: int) -> list[list[float]]:
    """The neuron's outputs, computed in plain Python: step t uses row min(t, 1) (T = 2)."""
    W = [[1, -1], [0, 1]]
    scale, shift = [[0.5, 1.0], [2.0, 0.25]], [[0.1, 0.0], [0.0, -0.2]]
    theta, leak = [0.3, 0.6], [0.9, 0.5]
    x = [1.0, 0.5]
    v = [0.0, 0.0]
    out = []
    for t in range(steps):
        r = min(t, 1)
        acc = [W[o][0] * x[0] + W[o][1] * x[1] for o in range(2)]
        i = [scale[r][o] * acc[o] + shift[r][o] for o in range(2)]
        m = [i[o] if t == 0 else leak[r] * v[o] + i[o] for o in range(2)]
        if model == "lif":
            s = [theta[r] if m[o] >= theta[r] else 0.0 for o in range(2)]
            v = [m[o] - s[o] for o in range(2)]
        else:
            s = [max(m[o] - theta[r], 0.0) for o in range(2)]
            v = [min(m[o], theta[r]) for o in range(2)]
        out.append(s)
    return out


@pytest.mark.parametrize("model", ["hmdf", "lif"])
def test_steps_past_T_reuse_the_last_step(model):
    deploy = _tiny_model(model)
    ref = Reference(deploy)
    x = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1)
    state, got = ref.initial_state(), []
    for t in range(6):
        out, state = ref.step(x, state, t)
        got.append(out[0].tolist())
    want = _by_hand(model, 6)
    for t in range(6):
        assert got[t] == pytest.approx(want[t], abs=1e-6), t
    if model == "hmdf":
        # spelled out: t=0 uses row 0, t≥1 row 1; the membrane of channel 0 is pinned at θ
        assert want[0] == pytest.approx([0.05, 0.2])
        assert want[1] == pytest.approx([0.55, 0.0])
        assert want[2] == want[3] == want[4] == want[5] == pytest.approx([0.7, 0.0])
    # within T the parallel form agrees with the step form
    seq = x.unsqueeze(0).expand(2, 1, 2, 1, 1)
    by_run = ref.run(seq).squeeze(1).tolist()
    assert by_run[0] == pytest.approx(want[0], abs=1e-6) and by_run[1] == pytest.approx(want[1], abs=1e-6)


def test_steps_past_T_with_4bit_codes():
    ref = Reference(_tiny_model("hmdf", "4bit"))
    x = torch.tensor([1.0, 0.5]).view(1, 2, 1, 1)
    state, codes = ref.initial_state(), []
    for t in range(5):
        out, state = ref.step(x, state, t)
        codes.append(out[0].tolist())
    # codes = clamp(round(4 s)): s = [0.05, 0.2], [0.55, 0], then [0.7, 0] for ever
    assert codes == [[0.0, 1.0], [2.0, 0.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]]


def test_event_stream_longer_than_T_step_form_matches_trained():
    """The continuous policy: the trained network and `Reference.step` both reuse the last step's
    parameters (including Mem-BN's per-step BN) for frames past T."""
    cfg = vgg([4, "M", 4], in_channels=2, weights="1bit", spikes="4bit", mem_bn=True, T=2)
    net, x = make_case(cfg, event=True, batch=3, seed=3, steps=5)
    deploy = fold(net, cfg, event=True)
    truth, _, _ = trained_truth(net, deploy, x, static=False)
    assert truth.exact.shape[0] == 5
    truth.check(step_loop(Reference(deploy), x.transpose(0, 1)), "step")


def test_event_stream_longer_than_T_parallel_form_matches_step_form():
    """`Reference.run` must follow the same row rule as `step` (graph.py: step t reads row
    min(t, R − 1)) for a sequence longer than T, as the step form and the trained network do."""
    cfg = vgg([4, "M", 4], in_channels=2, weights="1bit", spikes="4bit", mem_bn=True, T=2)
    net, x = make_case(cfg, event=True, batch=3, seed=3, steps=5)
    deploy = fold(net, cfg, event=True)
    truth, _, _ = trained_truth(net, deploy, x, static=False)
    ref, seq = Reference(deploy), x.transpose(0, 1)
    truth.check(ref.run(seq), "run")
    truth.check(ref.run(seq, scan=True), "scan")


# ------------------------------------------------------------------------ merge_input_affines
def test_merge_moves_the_input_affine_into_the_synapse_by_hand():
    k = torch.tensor([[2.0, 0.5], [-1.0, 3.0]])
    c = torch.tensor([[0.1, -0.2], [0.3, 0.0]])
    scale, shift = torch.tensor([[0.5, 1.5]]), torch.tensor([[0.25, -0.5]])
    nodes = [
        Flatten("flat", ["input"]),
        Linear("fc", ["flat"], "fp32", torch.tensor([[1.0, 2.0], [-1.0, 0.5]]), scale.clone(), shift.clone()),
        Neuron("act", ["fc"], "hmdf", "float", torch.tensor([0.2, 0.4]), torch.tensor([[0.5, 0.7], [0.2, -0.3]]),
               k.clone(), c.clone()),
    ]
    deploy = DeployModel(2, (2, 1, 1), True, 2, nodes, "act").validate()
    seq = torch.tensor([[1.0, -0.5], [0.25, 2.0], [-1.0, 1.0]]).view(3, 1, 2, 1, 1)[:2]
    before = Reference(deploy).run(seq, scan=False)
    merge_input_affines(deploy)
    fc, act = deploy.node("fc"), deploy.node("act")
    assert act.in_scale is None and act.in_shift is None
    torch.testing.assert_close(fc.scale, k * scale)  # (T, C): the affine is now per step
    torch.testing.assert_close(fc.shift, k * shift + c)
    assert fc.scale.shape == (2, 2)
    torch.testing.assert_close(Reference(deploy).run(seq, scan=False), before, rtol=0, atol=1e-6)


def test_merge_keeps_the_affine_when_the_synapse_has_other_readers_or_after_seca():
    k, c = torch.tensor([[2.0, 0.5]]), torch.tensor([[0.1, -0.2]])
    w = torch.ones(2, 2, 1, 1)
    one, zero = torch.ones(1, 2), torch.zeros(1, 2)
    nodes = [
        Conv("conv", ["input"], "fp32", w, one, zero),
        Neuron("act", ["conv"], "hmdf", "float", torch.tensor([0.5]), torch.tensor([[0.5]]), k, c),
        Add("add", ["act", "conv"]),  # `conv` also feeds the residual add
        SECA("attn", ["add"], torch.ones(5), torch.zeros(1)),
        Neuron("act2", ["attn"], "hmdf", "float", torch.tensor([0.5]), torch.tensor([[0.5]]), k, c),
        Pool("gap", ["act2"], "global"),
        Flatten("flat", ["gap"]),
        Linear("fc", ["flat"], "fp32", torch.ones(2, 2), one, zero),
    ]
    deploy = DeployModel(1, (2, 2, 2), False, 2, nodes, "fc").validate()
    merge_input_affines(deploy)
    assert deploy.node("act").in_scale is not None and deploy.node("act2").in_scale is not None
    assert torch.equal(deploy.node("conv").scale, one)


def _count(deploy: DeployModel):
    kept = [n.name for n in deploy.neurons if n.in_scale is not None]
    merged = [n.name for n in deploy.neurons if n.in_scale is None]
    return kept, merged


def test_merge_in_folded_vgg():
    # conv → BN → neuron: every Mem-BN affine moves into the conv
    net = build_model(vgg([4, "M", 4, 4], mem_bn=True, T=2)).eval()
    kept, merged = _count(fold(net, vgg([4, "M", 4, 4], mem_bn=True, T=2), event=False))
    assert kept == [] and len(merged) == 3
    # with SECA between conv and neuron the neuron keeps its affine
    cfg = vgg([4, "M", 4, 4], mem_bn=True, seca=1, T=2)
    kept, merged = _count(fold(build_model(cfg).eval(), cfg, event=False))
    assert len(kept) == 3 and merged == []


def test_merge_in_folded_resnet():
    cfg = resnet("resnet18", mem_bn=True, T=2)
    deploy = fold(build_model(cfg).eval(), cfg, event=False)
    kept, merged = _count(deploy)
    # act1 reads the residual stream (the stem conv or an Add, which has other readers): kept;
    # act2 reads conv1+BN of its block, which feeds only it: merged
    assert sorted(kept) == sorted(f"blocks.{i}.act1" for i in range(8))
    assert sorted(merged) == sorted(f"blocks.{i}.act2" for i in range(8))
    cfg19 = resnet("resnet19", mem_bn=True, seca=1, T=2)
    kept, merged = _count(fold(build_model(cfg19).eval(), cfg19, event=False))
    # with SECA after every conv+BN only the ResNet-19 head (Linear → neuron) can merge
    assert merged == ["head.act"] and len(kept) == 16


# ------------------------------------------------------------------------------------ the scan
@settings(max_examples=150, deadline=None)
@given(data=st.data(), T=st.integers(1, 40), width=st.integers(1, 4))
def test_scan_equals_loop_in_float64(data, T, width):
    floats = lambda lo, hi: st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)  # noqa: E731
    shape = (T, width)

    def draw(lo, hi):
        values = data.draw(st.lists(floats(lo, hi), min_size=T * width, max_size=T * width))
        return torch.tensor(values, dtype=torch.float64).view(shape)

    a, b, c = draw(0.0, 1.25), draw(-3.0, 3.0), draw(-1.0, 2.0)
    loop = min_affine_loop(a, b, c)
    scan = min_affine_scan(a, b, c)
    assert scan.shape == loop.shape == shape
    bound = 1e-12 * max(1.0, float(loop.abs().max()))
    assert float((scan - loop).abs().max()) <= bound


def test_scan_loop_by_hand_and_broadcasting():
    # v0 = min(1, 0.5) = 0.5; v1 = min(0.5·0.5 + 1, 2) = 1.25; v2 = min(2·1.25 − 1, 0.75) = 0.75
    a = torch.tensor([0.3, 0.5, 2.0], dtype=torch.float64).view(3, 1)
    b = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64).view(3, 1)
    c = torch.tensor([0.5, 2.0, 0.75], dtype=torch.float64).view(3, 1)
    want = torch.tensor([[0.5], [1.25], [0.75]], dtype=torch.float64)
    assert torch.equal(min_affine_loop(a, b, c), want)
    torch.testing.assert_close(min_affine_scan(a, b, c), want, rtol=0, atol=1e-15)
    # per-step scalars broadcast against a (T, B, C) current, as the reference uses them
    g = torch.Generator().manual_seed(0)
    current = torch.randn(7, 3, 5, generator=g, dtype=torch.float64)
    leak = torch.rand(7, 1, 5, generator=g, dtype=torch.float64)
    theta = torch.rand(7, 1, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(min_affine_scan(leak, current, theta), min_affine_loop(leak, current, theta),
                               rtol=0, atol=1e-12)
    assert math.isclose(float(min_affine_scan(leak, current, theta)[0, 0, 0]),
                        min(float(current[0, 0, 0]), float(theta[0, 0, 0])))
