"""The export gate tells a tie from a wrong graph (exporters/onnx_trace.py): an exported graph whose
logits differ from the reference only because a float32 4-bit code rounded the other way at a tie
(SPEC §1.2) is written; a wrong graph is refused, naming its first wrong node."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters.onnx import _Emitter, _sample, build_onnx, check_onnx, ort_session, run_sequence
from exporters.onnx_trace import _codes_differ, trace
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.errors import HmdfError, HmdfWarning
from hmdf_deploy.models import ModelConfig
from tests.nets import make_deploy, vgg


@pytest.fixture(scope="module")
def tied():
    """A random ResNet-18 (1-bit, 4-bit spikes, Mem-BN, SECA-I) whose check inputs hold codes within
    float32 rounding of a tie: onnxruntime rounds some the other way than torch, and the logits then
    differ by a whole code level's effect (4.8e-2 here; onnxruntime 1.32 on x86-64)."""
    cfg = ModelConfig(arch="resnet18", in_channels=3, input_size=(32, 32), T=4, num_classes=10, weights="1bit",
                      spikes="4bit", mem_bn=True, seca=1, width=32).validate()
    return make_deploy(cfg, event=False, seed=0)


@pytest.mark.parametrize("graph", ["step", "sequence"])
def test_a_graph_that_differs_only_at_ties_is_accepted(tied, graph):
    emitter = _Emitter(tied, graph, "lowbit", 25)
    proto = emitter.build()
    x = _sample(tied, 3)
    problem, _ = trace(proto, tied, x, emitter.values)
    assert problem is None
    with warnings.catch_warnings(record=True) as caught:  # before: refused, "max |Δ logits| 4.83e-02"
        warnings.simplefilter("always")
        diff = check_onnx(build_onnx(tied, graph), tied)
    want = Reference(tied).run(x).numpy()
    got = run_sequence(ort_session(proto.SerializeToString()), x.numpy())
    if graph == "sequence":
        assert diff == pytest.approx(float(np.abs(got - want).max()))
    if diff > 1e-4 * float(np.abs(want).max()):  # onnxruntime rounded ties the other way: it says so
        message = [str(w.message) for w in caught if w.category is HmdfWarning][0]
        assert "every node agrees with the float64 reference given its inputs: spikes at rounding ties" in message


@pytest.mark.parametrize("wrong", [
    dict(leak=1.001),  # each a bug that moves 4s by less than a code
    dict(threshold=1 + 2e-4),
])
def test_slightly_wrong_neurons_are_refused_even_among_ties(tied, monkeypatch, wrong):
    real = _Emitter.neuron_step

    def off(self, n, *args):
        return real(self, replace(n, **{k: getattr(n, k) * f for k, f in wrong.items()}), *args)

    monkeypatch.setattr(_Emitter, "neuron_step", off)
    with pytest.raises(HmdfError, match=r"node blocks.0.act1 \(neuron\): \d+ 4-bit codes differ away from a rounding tie"):
        check_onnx(build_onnx(tied), tied)


def test_a_step_graph_that_carries_the_wrong_state_is_refused(monkeypatch):
    """T = 1: the state only matters after the window, so the check runs the step graph 2T steps."""
    model = make_deploy(vgg([8, "M", 16], in_channels=2, input_size=(8, 8), T=1, weights="1.5bit", spikes="4bit",
                            quantize_stem=True), event=True, seed=1)
    real = _Emitter.neuron_step

    def no_reset(self, n, i, v, t, step, rank):  # a PPR bug: the membrane is kept whole after a spike
        out, _ = real(self, n, i, v, t, step, rank)
        m = i if v is None else self.b.op("Add", [self.b.op("Mul", [v, self.rows(n.leak, rank, t)]), i])
        return out, m

    assert check_onnx(build_onnx(model), model) >= 0
    monkeypatch.setattr(_Emitter, "neuron_step", no_reset)
    with pytest.raises(HmdfError, match=r"the ONNX step graph disagrees with the reference executor: node features.0.act"):
        check_onnx(build_onnx(model), model)


SMALL = vgg([8, "M", 16], in_channels=2, input_size=(8, 8), T=3, weights="1.5bit", spikes="4bit", quantize_stem=True)


@pytest.fixture(scope="module")
def small():
    return make_deploy(SMALL, event=True, seed=1)


def test_a_wrong_synapse_is_named(small, monkeypatch):
    real = _Emitter.synapse

    def off(self, n, x, t):
        return real(self, replace(n, scale=n.scale * 1.01) if n.name == "features.2.conv" else n, x, t)

    monkeypatch.setattr(_Emitter, "synapse", off)
    with pytest.raises(HmdfError, match=r"disagrees with the reference executor: node features.2.conv \(conv\): "
                                        r"max \|Δ\| .* against the float64 reference \(allowed .*\); nothing was written"):
        check_onnx(build_onnx(small), small)


def test_codes_rounded_the_wrong_way_are_named(small, monkeypatch):
    def floor_codes(self, s, n):  # a rounding bug: floor, not half to even
        if n.spikes != "4bit":
            return s
        codes = self.b.op("Floor", [self.b.op("Mul", [s, self.b.f32(4.0)])])
        return self.b.op("Clip", [codes, self.b.f32(0.0), self.b.f32(15.0)])

    monkeypatch.setattr(_Emitter, "spikes", floor_codes)
    with pytest.raises(HmdfError, match=r"node features.0.act \(neuron\): \d+ 4-bit codes differ away from a "
                                        r"rounding tie"):
        check_onnx(build_onnx(small, "sequence"), small)


def test_a_graph_changed_after_it_was_built_is_refused_on_its_logits(small):
    proto = build_onnx(small)
    init = max(proto.graph.initializer, key=lambda i: numpy_helper.to_array(i).size
               if numpy_helper.to_array(i).dtype == np.float32 else 0)
    bumped = numpy_helper.to_array(init) * np.float32(1.5)
    init.CopyFrom(numpy_helper.from_array(bumped, init.name))
    onnx.checker.check_model(proto)
    with pytest.raises(HmdfError, match=r"max \|Δ logits\| .*; nothing was written"):
        check_onnx(proto, small)


def test_codes_may_go_either_way_only_at_a_tie():
    def check(got, s):
        s = torch.tensor(s, dtype=torch.float64)
        return _codes_differ(torch.tensor(got, dtype=torch.float64), s, s.float() + 1e-7)  # float32 off by 1e-7

    s = [0.375 + 1e-9, 0.385, 1.125 - 1e-9, 2.0, 3.875 + 1e-9]  # 4s: a tie 1.5, 1.54, a tie 4.5, 8, 15.5
    assert check([1, 2, 5, 8, 15], s) == (None, 2)  # ties went the other way twice
    assert check([2, 2, 4, 8, 15], s) == (None, 0)
    assert "1 4-bit codes differ" in check([2, 1, 4, 8, 15], s)[0]  # 1.54 is no tie
    assert "1 4-bit codes differ" in check([2, 2, 4, 9, 15], s)[0]
    assert "(first at (0,): 3 for 4s" in check([3, 2, 4, 8, 15], s)[0]  # a tie's codes are 1 and 2 only
    assert "1 4-bit codes differ" in check([2, 2, 4, 8, 14], s)[0]  # above the clamp both sides give 15
    assert "1 4-bit codes differ" in check([2, 2, 6, 8, 15], s)[0]


def test_lif_spikes_may_go_either_way_only_at_the_threshold():
    from exporters.onnx_trace import _decisions_differ
    from hmdf_deploy.deploy.graph import Neuron

    theta = 0.75
    n = Neuron("lif", ["x"], "lif", "float", torch.tensor([theta], dtype=torch.float64), torch.tensor([[0.5]]))
    m = torch.tensor([[[theta + 1e-9], [theta + 0.1], [theta - 0.1]]], dtype=torch.float64)  # (T=1, B=3, C=1)
    m32 = m + 1e-7

    def check(*spikes):
        return _decisions_differ(torch.tensor([[[s] for s in spikes]], dtype=torch.float64), m, m32, n)

    assert check(theta, theta, 0.0) == (None, 0)
    assert check(0.0, theta, 0.0) == (None, 1)  # at the threshold: either decision
    assert "1 LIF spikes differ away from the threshold" in check(theta, 0.0, 0.0)[0]
    assert "1 LIF spikes differ" in check(theta, theta, theta)[0]
    assert "1 LIF spikes differ" in check(theta, 0.7, 0.0)[0]  # a spike is θ, nothing else
