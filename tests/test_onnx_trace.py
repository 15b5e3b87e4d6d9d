"""The export gate tells a tie from a wrong graph (exporters/onnx_trace.py): an exported graph whose
logits differ from the reference only because a float32 4-bit code rounded the other way at a tie
(SPEC §1.2) is written; a wrong graph is refused, naming its first wrong node."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters.onnx import _Emitter, _sample, build_onnx, check_onnx, ort_session, run_sequence
from exporters.onnx_trace import _codes_differ, first_disagreement
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.errors import HmdfError
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
    assert first_disagreement(proto, tied, x, emitter.values) is None
    diff = check_onnx(build_onnx(tied, graph), tied)  # before: refused, "max |Δ logits| 4.83e-02"
    want = Reference(tied).run(x).numpy()
    got = run_sequence(ort_session(proto.SerializeToString()), x.numpy())
    assert diff == pytest.approx(float(np.abs(got - want).max()))


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


def test_codes_may_differ_by_one_only_at_a_tie():
    s = torch.tensor([0.375 + 1e-9, 0.375 + 0.01, 1.125 - 1e-9, 2.0], dtype=torch.float64)  # 4s = 1.5+, 1.54, 4.5-, 8
    assert _codes_differ(torch.tensor([1.0, 2.0, 5.0, 8.0], dtype=torch.float64), s) is None  # ties go either way
    assert _codes_differ(torch.tensor([2.0, 2.0, 4.0, 8.0], dtype=torch.float64), s) is None
    assert "1 4-bit codes differ" in _codes_differ(torch.tensor([2.0, 1.0, 4.0, 8.0], dtype=torch.float64), s)
    assert "1 4-bit codes differ" in _codes_differ(torch.tensor([2.0, 2.0, 4.0, 9.0], dtype=torch.float64), s)
    assert "(first at (0,): 0 for 4s" in _codes_differ(torch.tensor([0.0, 2.0, 4.0, 8.0], dtype=torch.float64), s)
