"""The ONNX exporter (DESIGN.md "ONNX", SPEC §1.2, §6, §7): `hmdf_deploy.exporters.onnx`.

Every exported graph is run in stock onnxruntime and compared with the reference executor of the
DeployModel it came from (`Reference(model).run`), never with numbers copied from an earlier run.
The networks are random but non-trivial: BN statistics are calibrated on real inputs and then
perturbed, and neuron logits, Mem-BN and SECA weights are drawn at random, so that every layer
fires (checked through `record=`) and a wrong leak, threshold, affine, row index or code would
change the logits.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import nets
import numpy as np
from nets import inputs, make_deploy, resnet, vgg
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

import hmdf_deploy
import hmdf_deploy.exporters.onnx as onnx_exporter
from hmdf_deploy import exporters
from hmdf_deploy.deploy import DeployModel, Reference, fold, save_hmdf
from hmdf_deploy.deploy.graph import Conv, Flatten, Linear, Neuron, Synapse
from hmdf_deploy.deploy.reference import state_shapes
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.exporters.onnx import MAX_OPSET, build_onnx, check_onnx, export, run_sequence
from hmdf_deploy.models import ModelConfig, build_model

GRAPHS = ("step", "sequence")
PATHS = ("lowbit", "integer", "float")


# ------------------------------------------------------------------------------------- helpers


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    """A CPU session as a receiver who does not read docs/onnx.md makes one: onnxruntime's defaults,
    ConvMulFusion / ConvAddFusion included (hmdf's own `ort_session` turns those two off)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def op_counts(proto: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in proto.graph.node)


def dims(value_info) -> list:
    return [d.dim_param if d.dim_param else d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------------- the models
# id → (config, event input, ConvInteger count on the integer path, seed). Seeds are chosen so that
# every layer fires (checked in test_cases_are_not_trivial).
# The integer counts are worked out by hand from the architecture: a quantized synapse runs on
# integers exactly when it reads 4-bit codes directly or through a max pool / flatten (an average
# pool or a residual stream carries fractions), and the stem / classifier stay fp32 (SPEC §5).
CASES = {
    "vgg-avg-fp32-float": (vgg([8, "M", 16, "G"], T=2), False, 0, 0),
    # conv features.2 reads max-pooled codes, features.3 reads codes: both integer
    "vgg-max-1.5bit-4bit-seca1": (vgg([8, "M", 16, 16, "G"], pool="max", weights="1.5bit", spikes="4bit", seca=1, T=3),
                                  False, 2, 0),
    # features.1 reads codes (integer); features.3 reads an average pool (float)
    "vgg-G-1bit-4bit-seca2-membn": (vgg([8, 8, "M", 16, "G"], weights="1bit", spikes="4bit", seca=2, mem_bn=True, T=3),
                                    False, 1, 1),
    "vgg-lif-1bit-seca1": (vgg([8, "M", 16, "G"], neuron="lif", weights="1bit", seca=1, T=2), False, 0, 3),
    # event input: the quantized stem reads counts (float), features.2 reads max-pooled codes
    "vgg-event-1.5bit-4bit-max": (vgg([8, "M", 16, "G"], in_channels=2, pool="max", weights="1.5bit", spikes="4bit",
                                      quantize_stem=True, T=4), True, 1, 0),
    "vgg-event-1bit-float-membn-seca2": (vgg([8, 8, "M", 16], in_channels=2, weights="1bit", mem_bn=True, seca=2,
                                             quantize_stem=True, T=2), True, 0, 0),
    # every block: conv1 reads act1's codes, conv2 reads the Parallel act2's codes; downsamples read currents
    "resnet18-1.5bit-4bit-parallel-membn-seca2": (resnet("resnet18", weights="1.5bit", spikes="4bit", parallel=True,
                                                         mem_bn=True, seca=2, T=2), False, 16, 0),
    "resnet18-1bit-float-membn-seca1": (resnet("resnet18", weights="1bit", mem_bn=True, seca=1, T=3), False, 0, 2),
    "resnet18-lif-1.5bit": (resnet("resnet18", neuron="lif", weights="1.5bit", T=2), False, 0, 0),
    # 8 blocks × 2 convs; the head Linear reads a global average pool (float)
    "resnet19-1bit-4bit-membn-seca1": (resnet("resnet19", weights="1bit", spikes="4bit", mem_bn=True, seca=1, T=2),
                                       False, 16, 0),
    "resnet19-event-1.5bit-float-parallel-seca2": (resnet("resnet19", in_channels=2, weights="1.5bit", parallel=True,
                                                          seca=2, quantize_stem=True, T=2), True, 0, 0),
    # T = 1 on an odd, non-square map (9×7 → max pool → 4×3): features.2 reads max-pooled codes
    "vgg-T1-9x7-1.5bit-4bit-max": (vgg([8, "M", 16, "G"], input_size=(9, 7), pool="max", weights="1.5bit",
                                       spikes="4bit", T=1), False, 1, 0),
    # the ImageNet stem (7×7/2 conv, 3/2 max pool padded by 1) on 13×11 events; 16 blocks × 2 convs read codes
    "resnet34-imagenet-stem-13x11-event-1.5bit-4bit-membn-seca2": (
        resnet("resnet34", in_channels=2, input_size=(13, 11), stem="imagenet", weights="1.5bit", spikes="4bit",
               mem_bn=True, seca=2, T=2), True, 32, 0),
}
FOUR_BIT = [k for k, (cfg, _, _, _) in CASES.items() if cfg.spikes == "4bit"]

_CACHE: dict = {}


def case(name: str):
    """(deploy model, input sequence (T, 3, ...), reference logits, recorded node outputs), built once."""
    if name not in _CACHE:
        cfg, event, _, seed = CASES[name]
        deploy = make_deploy(cfg, event, seed=seed)
        g = torch.Generator().manual_seed(100)
        x = inputs(cfg, event, 3, g)
        record: dict = {}
        want = Reference(deploy).run(x, record=record)
        _CACHE[name] = (deploy, x, want, record)
    return _CACHE[name]


_TRUTH: dict = {}


def truth(name: str) -> nets.Truth:
    """The reference logits of `case(name)` in float32 and float64: what every graph is held to."""
    if name not in _TRUTH:
        deploy, x, _, _ = case(name)
        _TRUTH[name] = nets.reference_truth(deploy, x)
    return _TRUTH[name]


# ------------------------------------------------------------------- outputs equal the reference
@pytest.mark.parametrize("name", list(CASES))
def test_cases_are_not_trivial(name):
    """The comparisons below mean something: every neuron layer fires, and the logits vary."""
    deploy, x, want, record = case(name)
    cfg, event, _, _ = CASES[name]
    assert deploy.event is event and deploy.T == cfg.T
    fired = {n.name: float((record[n.name] != 0).float().mean()) for n in deploy.neurons}
    assert fired and min(fired.values()) > 0.01, f"a layer is (almost) silent: {fired}"
    assert sum(fired.values()) / len(fired) > 0.1, f"too few spikes to test anything: {fired}"
    assert float(want.std()) > 1e-2 and float(want.abs().max()) > 0.1
    if cfg.spikes == "4bit":
        for n in deploy.neurons:
            codes = record[n.name]
            assert torch.equal(codes, codes.round()) and float(codes.min()) >= 0 and float(codes.max()) <= 15
        # codes above 1 occur: the 4-bit grading (and its 1/4 folded into the next scale) is exercised
        assert max(float(record[n.name].max()) for n in deploy.neurons) >= 2
    assert any(n.model == "parallel" for n in deploy.neurons) == cfg.parallel
    assert all(n.model == "lif" for n in deploy.neurons) == (cfg.neuron == "lif")
    if cfg.weights != "fp32":
        assert any(isinstance(n, Synapse) and n.weights != "fp32" for n in deploy.nodes)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("name", list(CASES))
def test_onnxruntime_equals_reference(name, graph, path):
    deploy, x, _, _ = case(name)
    if path == "integer" and not CASES[name][2]:  # nothing to run in integers: refused, not mislabelled
        with pytest.raises(HmdfError, match="no synapse of this model reads 4-bit codes.*--path lowbit"):
            build_onnx(deploy, graph, path)
        return
    proto = build_onnx(deploy, graph, path)
    onnx.checker.check_model(proto, full_check=True)
    sess = session(proto)
    if graph == "sequence":
        assert [i.name for i in sess.get_inputs()] == ["x"]
        got = sess.run(["logits"], {"x": x.numpy()})[0]
    else:
        assert [i.name for i in sess.get_inputs()][:2] == ["x", "t"]
        got = run_sequence(sess, x.numpy())  # state carried from step to step
    truth(name).check(got, f"{name} {graph} {path}")
    counts = op_counts(proto)
    expected_int = CASES[name][2] if path == "integer" else 0
    assert counts["ConvInteger"] == expected_int, counts
    assert counts["MatMulInteger"] == 0, counts


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("graph", GRAPHS)
def test_spike_codes_round_half_to_even_at_every_boundary(graph, path):
    """SPEC §1.2 decision: codes are clamp(round(4 s), 0, 15) with round half to even (ONNX Round,
    as torch.round), at every half, one float step either side of it, and far outside [0, 15]. A
    parallel neuron with θ = 0 codes s = relu(x) itself; an identity ternary layer hands the codes
    out as logits, exactly."""
    halves = torch.arange(-8, 140, dtype=torch.float32) / 8  # 4s = k/2: every half and integer
    near = torch.cat([torch.nextafter(halves, halves + 1), torch.nextafter(halves, halves - 1)])
    s = torch.cat([halves, near, torch.tensor([1e6, 3.875, 3.874999, 0.125, 1e-30])])
    n = len(s)
    nodes = [Flatten("f", ["input"]), Neuron("codes", ["f"], "parallel", "4bit", torch.zeros(1)),
             Linear("out", ["codes"], "1.5bit", torch.eye(n, dtype=torch.int8), torch.ones(1, n), torch.zeros(1, n))]
    model = DeployModel(2, (1, 1, n), False, n, nodes, "out", {}).validate()
    x = s.reshape(1, 1, 1, 1, n).expand(2, 1, 1, 1, n).contiguous()
    want = torch.clamp(torch.round(torch.relu(s) * 4), 0, 15).expand(2, 1, n).numpy()
    sess = session(build_onnx(model, graph, path))
    got = run_sequence(sess, x.numpy()) if graph == "step" else sess.run(["logits"], {"x": x.numpy()})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", FOUR_BIT)
def test_step_graph_streams_state_like_reference_step(name):
    """4-bit models: the step graph fed one step at a time with its own state_out as the next
    state_in reproduces `Reference.step` step by step: logits and every membrane."""
    deploy, x, want, _ = case(name)
    sess = session(build_onnx(deploy, "step", "lowbit"))
    ref, ref64 = Reference(deploy), Reference(deploy, torch.float64)
    stream = nets.reference_truth(deploy, x, stream=True)
    stateful = [n.name for n in deploy.neurons if n.stateful]
    outputs = [o.name for o in sess.get_outputs()]
    state = {f"state_in.{k}": np.zeros((x.shape[1], *s), np.float32) for k, s in state_shapes(deploy).items()}
    ref_state, ref64_state = ref.initial_state(), ref64.initial_state()
    membranes: list = []  # (ONNX, float32 reference, float64 reference), flattened
    for t in range(deploy.T):
        out = dict(zip(outputs, sess.run(outputs, {"x": x[t].numpy(), "t": np.array(t, np.int64), **state})))
        stream[t].check(out["logits"], f"{name} step {t}")
        truth(name)[t].check(out["logits"], f"{name} step {t} vs run")
        _, ref_state = ref.step(x[t], ref_state, t)
        _, ref64_state = ref64.step(x[t].double(), ref64_state, t)
        for k in stateful:  # the samples whose codes are not at a tie
            assert out[f"state_out.{k}"].shape == tuple(ref_state[k].shape), k
            keep = stream.keep
            membranes.append([torch.from_numpy(out[f"state_out.{k}"])[keep].flatten(), ref_state[k][keep].flatten(),
                              ref64_state[k][keep].flatten()])
        state = {f"state_in.{k}": out[f"state_out.{k}"] for k in stateful}
    # Like the logits of all steps, every membrane of every step is one tensor: a single layer's,
    # mostly pinned at θ, holds too few rounding errors to measure float32 by (it once put a
    # legitimate ONNX membrane at 9× the float32 reference's error on it, and 2.9× on all of them).
    if membranes:
        nets.assert_float_close(*(torch.cat(m) for m in zip(*membranes)), f"{name} membranes")
    # the state really matters: replaying the last step from zero state changes the logits
    zero = {k: np.zeros_like(v) for k, v in state.items()}
    last = deploy.T - 1
    fresh = sess.run(["logits"], {"x": x[last].numpy(), "t": np.array(last, np.int64), **zero})[0]
    assert deploy.T == 1 or float(np.abs(fresh - want[last].numpy()).max()) > 1e-3


def test_step_graph_past_T_reuses_the_last_step():
    """A stream longer than T: the step graph clamps the row index like `Reference.step` (graph.py:
    step t reads row min(t, R − 1)), so a continuous stream keeps agreeing."""
    deploy, _, _, _ = case("vgg-event-1.5bit-4bit-max")
    cfg = CASES["vgg-event-1.5bit-4bit-max"][0]
    x = inputs(cfg, True, 2, torch.Generator().manual_seed(7), steps=deploy.T + 3)
    got = run_sequence(session(build_onnx(deploy, "step", "integer")), x.numpy())
    nets.reference_truth(deploy, x, stream=True).check(got, "past T")



def test_lif_fires_at_an_exact_tie():
    """SPEC §1.1: a LIF neuron spikes when m ≥ θ, so a membrane exactly at θ fires (GreaterOrEqual,
    not Greater) in both graphs. θ = σ(0) + 0.5 = 1, leak 1, the input goes straight to the neuron:
    channel 0 gets 1 at step 0, channel 1 gets .5 then .5. By hand: s = [1, 0], v = [0, .5] at
    step 0; m = [.5, 1] → s = [0, 1], v = [.5, 0] at step 1."""
    nodes = [Neuron("lif", ["input"], "lif", "float", torch.tensor([1.0]), torch.ones(1, 1)), Flatten("flat", ["lif"])]
    deploy = DeployModel(2, (2, 1, 1), True, 2, nodes, "flat").validate()
    x = np.array([[1.0, 0.5], [0.5, 0.5]], np.float32).reshape(2, 1, 2, 1, 1)
    want_s, want_v = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.5], [0.5, 0.0]]
    sess = session(build_onnx(deploy, "step"))
    state = np.zeros((1, 2, 1, 1), np.float32)
    for t in range(2):
        logits, state = sess.run(["logits", "state_out.lif"], {"x": x[t], "t": np.array(t, np.int64), "state_in.lif": state})
        assert logits.tolist() == [want_s[t]], (t, logits)
        assert state.reshape(-1).tolist() == want_v[t], (t, state)
    assert run_sequence(session(build_onnx(deploy, "sequence")), x).reshape(2, 2).tolist() == want_s


# ------------------------------------------------------------------------------ state tensors
@pytest.mark.parametrize("name", ["resnet18-1.5bit-4bit-parallel-membn-seca2", "resnet19-1bit-4bit-membn-seca1",
                                  "vgg-lif-1bit-seca1"])
def test_state_tensors_are_the_stateful_neurons(name):
    deploy, _, _, _ = case(name)
    shapes = state_shapes(deploy)
    stateful = [n.name for n in deploy.neurons if n.stateful]
    parallel = [n.name for n in deploy.neurons if not n.stateful]
    assert list(shapes) == stateful
    if "parallel" in name:
        assert parallel, "the case should have Parallel neurons"
    proto = build_onnx(deploy, "step", "lowbit")
    ins = {i.name: dims(i) for i in proto.graph.input}
    outs = {o.name: dims(o) for o in proto.graph.output}
    assert ins.pop("x") == ["batch", *deploy.input_shape]
    assert ins.pop("t") == []
    assert proto.graph.input[1].type.tensor_type.elem_type == TensorProto.INT64
    assert outs.pop("logits") == ["batch", deploy.num_classes]
    assert ins == {f"state_in.{k}": ["batch", *shapes[k]] for k in stateful}
    assert outs == {f"state_out.{k}": ["batch", *shapes[k]] for k in stateful}
    for p in parallel:
        assert f"state_in.{p}" not in ins and f"state_out.{p}" not in outs
    assert json.loads(props(proto)["hmdf.states"]) == {k: list(s) for k, s in shapes.items()}
    # the sequence graph has no state at all
    seq = build_onnx(deploy, "sequence", "lowbit")
    assert [dims(i) for i in seq.graph.input] == [[deploy.T, "batch", *deploy.input_shape]]
    assert [(o.name, dims(o)) for o in seq.graph.output] == [("logits", [deploy.T, "batch", deploy.num_classes])]


@pytest.mark.parametrize("graph", GRAPHS)
def test_one_file_runs_with_batch_1_and_7(graph, tmp_path):
    name = "resnet18-1.5bit-4bit-parallel-membn-seca2"
    deploy, _, _, _ = case(name)
    cfg, event, _, _ = CASES[name]
    out = tmp_path / f"m.{graph}.onnx"
    assert export(deploy, out, graph=graph, path="integer") == [out]
    sess = session(onnx.load(str(out)))
    g = torch.Generator().manual_seed(11)
    for batch in (1, 7):
        x = inputs(cfg, event, batch, g)
        got = run_sequence(sess, x.numpy())
        assert got.shape == (deploy.T, batch, deploy.num_classes)
        nets.reference_truth(deploy, x).check(got, f"{graph} batch {batch}")


# ----------------------------------------------------------------------------------- metadata
@pytest.mark.parametrize("graph", GRAPHS)
def test_metadata_props(graph):
    name = "resnet19-1bit-4bit-membn-seca1"
    deploy, _, _, _ = case(name)
    checksum = "sha256:" + "ab" * 32
    model = DeployModel(deploy.T, deploy.input_shape, deploy.event, deploy.num_classes, deploy.nodes,
                        deploy.output, {"model": {}, "checksum": checksum})
    meta = props(build_onnx(model, graph, "lowbit"))
    for key in ("hmdf.T", "hmdf.spikes", "hmdf.graph", "hmdf.states", "hmdf.version", "hmdf.source_checksum"):
        assert key in meta, key
    assert meta["hmdf.T"] == str(deploy.T) == "2"
    assert meta["hmdf.spikes"] == "4bit"
    assert meta["hmdf.graph"] == graph
    assert meta["hmdf.version"] == hmdf_deploy.__version__
    assert meta["hmdf.source_checksum"] == checksum
    assert json.loads(meta["hmdf.states"]) == {k: list(v) for k, v in state_shapes(deploy).items()}
    assert json.loads(meta["hmdf.event"]) is False
    assert json.loads(meta["hmdf.input_shape"]) == list(deploy.input_shape)
    # a model folded from a run records the run's weights digest instead
    run = DeployModel(deploy.T, deploy.input_shape, deploy.event, deploy.num_classes, deploy.nodes,
                      deploy.output, {"run_sha256": "cd" * 32})
    assert props(build_onnx(run, graph, "float"))["hmdf.source_checksum"] == "cd" * 32


def test_metadata_of_float_spike_and_event_models():
    deploy, _, _, _ = case("vgg-event-1bit-float-membn-seca2")
    meta = props(build_onnx(deploy, "sequence", "float"))
    assert meta["hmdf.spikes"] == "float" and meta["hmdf.graph"] == "sequence" and meta["hmdf.T"] == "2"
    assert json.loads(meta["hmdf.event"]) is True
    assert meta["hmdf.source_checksum"] == ""  # fold's default source has no digest


def test_export_records_the_given_checksum(tmp_path):
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    out = tmp_path / "m.onnx"
    export(deploy, out, checksum="sha256:" + "0f" * 32)
    meta = props(onnx.load(str(out)))
    assert meta["hmdf.source_checksum"] == "sha256:" + "0f" * 32
    assert meta["hmdf.graph"] == "step"


# ---------------------------------------------------------------------------- low-bit storage
def _initializers(proto: onnx.ModelProto) -> list:
    return list(proto.graph.initializer)


def _numel(init) -> int:
    return math.prod(init.dims)


@pytest.mark.parametrize("path", ["lowbit", "integer"])
@pytest.mark.parametrize("name", ["vgg-max-1.5bit-4bit-seca1", "vgg-G-1bit-4bit-seca2-membn",
                                  "vgg-event-1.5bit-4bit-max", "resnet19-1bit-4bit-membn-seca1",
                                  "resnet18-1.5bit-4bit-parallel-membn-seca2"])
def test_weights_stay_low_bit(name, path):
    """Ternary weights are INT2 initializers (the exact codes), binary weights are 8 signs per uint8
    byte (the exact signs); no float32 initializer holds a quantized weight."""
    deploy, _, _, _ = case(name)
    proto = build_onnx(deploy, "step", path)
    inits = _initializers(proto)
    quantized = [n for n in deploy.nodes if isinstance(n, Synapse) and n.weights != "fp32"]
    assert quantized
    for n in quantized:
        codes = n.weight.flatten().numpy().astype(np.int64)
        mine = [i for i in inits if i.name.startswith(f"{n.name}.weight")]
        assert len(mine) == 1, (n.name, [i.name for i in mine])
        init = mine[0]
        if bool((n.weight == 0).any()):  # ternary: INT2, 2-bit two's complement, 4 per byte
            assert init.data_type == TensorProto.INT2, n.name
            assert list(init.dims) == list(n.weight.shape)
            raw = np.frombuffer(init.raw_data, np.uint8)
            assert raw.size == math.ceil(codes.size / 4)
            fields = ((raw[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3).reshape(-1)[: codes.size].astype(np.int64)
            assert np.array_equal(np.where(fields == 3, -1, fields), codes), n.name
        else:  # binary: signs, 8 per byte, bit j of byte i is element 8i + j
            assert init.data_type == TensorProto.UINT8, n.name
            packed = numpy_helper.to_array(init).reshape(-1)
            assert packed.size == math.ceil(codes.size / 8)
            bits = np.unpackbits(packed, bitorder="little")[: codes.size]
            assert np.array_equal(np.where(bits == 1, 1, -1), codes), n.name
    floats = [i for i in inits if i.data_type == TensorProto.FLOAT]
    # no float32 initializer has the shape of a quantized weight ...
    shapes = {tuple(n.weight.shape) for n in quantized}
    assert not [i.name for i in floats if tuple(i.dims) in shapes]
    # ... and all float32 data together is the fp32 layers' weights plus the per-channel parameters
    # (affines, leaks, thresholds, SECA taps: each emitted once in a step graph) and a few scalars
    fp32_weights = sum(n.weight.numel() for n in deploy.nodes if isinstance(n, Synapse) and n.weights == "fp32")
    params = sum(t.numel() for n in deploy.nodes for k, t in n.tensors().items()
                 if not (isinstance(n, Synapse) and k == "weight"))
    assert sum(_numel(i) for i in floats) <= fp32_weights + params + 64
    if name.startswith("vgg"):
        # here no float32 initializer is even as large as the smallest quantized weight tensor, but
        # the fp32 stem and classifier
        smallest = min(n.weight.numel() for n in quantized)
        fp32 = [n.weight.numel() for n in deploy.nodes if isinstance(n, Synapse) and n.weights == "fp32"]
        assert [_numel(i) for i in floats if _numel(i) >= smallest and _numel(i) not in fp32] == []
    # the float path, by contrast, holds the quantized weights as float32 (the check can see them)
    float_inits = [i for i in _initializers(build_onnx(deploy, "step", "float")) if i.data_type == TensorProto.FLOAT]
    assert {n.weight.numel() for n in quantized} <= {_numel(i) for i in float_inits}


def test_ternary_weights_go_through_dequantize_linear():
    deploy, _, _, _ = case("resnet18-1.5bit-4bit-parallel-membn-seca2")
    ternary = [n for n in deploy.nodes if isinstance(n, Synapse) and n.weights == "1.5bit"]
    proto = build_onnx(deploy, "sequence", "lowbit")
    assert op_counts(proto)["DequantizeLinear"] == len(ternary)
    assert proto.opset_import[0].version >= 25


SIZE_MODEL = dict(arch="vgg", cfg=[64, 128, "M", 128, "G"], in_channels=3, input_size=(16, 16), num_classes=10,
                  T=4, spikes="4bit")


@pytest.mark.parametrize("weights, graph", [("1.5bit", "step"), ("1.5bit", "sequence"), ("1bit", "step")])
def test_lowbit_file_is_about_as_small_as_hmdf(weights, graph, tmp_path):
    """Weights dominate this model (~220k quantized weights): the lowbit ONNX file (INT2 = 2 bits
    per trit, 1 bit per sign) stays within 1.3× the .hmdf file (1.6 bits per trit), and far below
    the float path."""
    cfg = ModelConfig(**SIZE_MODEL, weights=weights).validate()
    torch.manual_seed(0)
    deploy = fold(build_model(cfg).eval(), cfg, event=False)
    save_hmdf(deploy, tmp_path / "m.hmdf")
    [low] = export(deploy, tmp_path / "low.onnx", graph=graph, path="lowbit")
    [flt] = export(deploy, tmp_path / "flt.onnx", graph=graph, path="float")
    hmdf_bytes, low_bytes, float_bytes = (os.path.getsize(p) for p in (tmp_path / "m.hmdf", low, flt))
    ratio = low_bytes / hmdf_bytes
    print(f"\n{weights} {graph}: onnx lowbit {low_bytes} B, .hmdf {hmdf_bytes} B, ratio {ratio:.3f}; "
          f"onnx float {float_bytes} B")
    assert ratio <= 1.3, f"lowbit ONNX is {ratio:.2f}× the .hmdf file"
    assert float_bytes >= 8 * low_bytes


# --------------------------------------------------------------------------------- integer path
def _codes_model(kind: str) -> DeployModel:
    """input → Parallel 4-bit neuron (θ = 0: codes = clamp(round(4x), 0, 15)) → a quantized synapse
    with scale 1, shift 0 on those codes: the logits are the integer accumulations themselves."""
    g = torch.Generator().manual_seed(3)
    code = Neuron("codes", ["input"], "parallel", "4bit", torch.zeros(1))
    if kind == "conv":
        w = torch.randint(-1, 2, (3, 4, 3, 3), generator=g).to(torch.int8)
        conv = Conv("conv", ["codes"], "1.5bit", w, torch.ones(1, 3), torch.zeros(1, 3), stride=2, padding=1)
        nodes = [code, conv, Flatten("flat", ["conv"])]
        return DeployModel(2, (4, 5, 5), True, 27, nodes, "flat").validate()
    w = (torch.randint(0, 2, (7, 12), generator=g) * 2 - 1).to(torch.int8)  # signs: packed 8 per byte
    nodes = [code, Flatten("flat", ["codes"]), Linear("fc", ["flat"], "1bit", w, torch.ones(1, 7), torch.zeros(1, 7))]
    return DeployModel(2, (12, 1, 1), True, 7, nodes, "fc").validate()


def _exact(model: DeployModel, x: np.ndarray) -> np.ndarray:
    """The accumulations in int64 numpy, independent of torch and onnxruntime."""
    codes = np.clip(np.round(4 * np.maximum(x, 0)), 0, 15).astype(np.int64)  # (T, B, C, H, W)
    syn = [n for n in model.nodes if isinstance(n, (Conv, Linear))][0]
    w = syn.weight.numpy().astype(np.int64)
    T, B = codes.shape[:2]
    if isinstance(syn, Linear):
        return codes.reshape(T, B, -1) @ w.T
    s, p = syn.stride, syn.padding
    padded = np.pad(codes, [(0, 0)] * 3 + [(p, p), (p, p)])
    H = (codes.shape[3] + 2 * p - 3) // s + 1
    out = np.zeros((T, B, w.shape[0], H, H), np.int64)
    for i in range(H):
        for j in range(H):
            patch = padded[:, :, :, i * s:i * s + 3, j * s:j * s + 3]
            out[..., i, j] = np.einsum("tbchw,ochw->tbo", patch, w)
    return out.reshape(T, B, -1)


@pytest.mark.parametrize("graph", GRAPHS)
@pytest.mark.parametrize("kind, op", [("conv", "ConvInteger"), ("linear", "MatMulInteger")])
def test_integer_path_is_exact(kind, op, graph):
    model = _codes_model(kind)
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(model.T, 4, *model.input_shape, generator=g) * 4.5 - 0.3).numpy()
    want = _exact(model, x)
    assert np.abs(want).max() >= 20  # large accumulations, many codes
    proto = build_onnx(model, graph, "integer")
    counts = op_counts(proto)
    assert counts[op] == 1 and counts["Conv"] == 0 and counts["MatMul"] == 0, counts
    got = run_sequence(session(proto), x)
    assert np.array_equal(got, want.astype(np.float32)), float(np.abs(got - want).max())
    assert np.array_equal(Reference(model).run(torch.from_numpy(x)).numpy(), want.astype(np.float32))
    # the lowbit path computes the same numbers with float ops
    lowbit = build_onnx(model, graph, "lowbit")
    assert op_counts(lowbit)[op] == 0
    assert np.array_equal(run_sequence(session(lowbit), x), want.astype(np.float32))


@pytest.mark.parametrize("name", ["vgg-max-1.5bit-4bit-seca1", "resnet18-1.5bit-4bit-parallel-membn-seca2",
                                  "resnet19-1bit-4bit-membn-seca1"])
def test_integer_path_replaces_exactly_the_code_convs(name):
    """The integer path swaps the convs on codes for ConvInteger (uint8 codes × int8 weights, int32
    accumulation) and leaves every other conv alone; its logits are as close to the reference's as
    the lowbit path's."""
    deploy, x, _, _ = case(name)
    low, integer = build_onnx(deploy, "sequence", "lowbit"), build_onnx(deploy, "sequence", "integer")
    n_int = CASES[name][2]
    assert op_counts(integer)["ConvInteger"] == n_int > 0
    assert op_counts(low)["Conv"] - op_counts(integer)["Conv"] == n_int
    for node in integer.graph.node:
        if node.op_type == "ConvInteger":
            producers = {o: n for n in integer.graph.node for o in n.output}
            x_in, w_in = (producers[i] for i in node.input[:2])
            assert x_in.op_type == "Cast" and x_in.attribute[0].i == TensorProto.UINT8
            assert w_in.op_type == "Cast" and w_in.attribute[0].i == TensorProto.INT8
    for what, proto in (("lowbit", low), ("integer", integer)):
        truth(name).check(session(proto).run(["logits"], {"x": x.numpy()})[0], what)


# ------------------------------------------------------------------------------ check_onnx
def _scale_inits(proto: onnx.ModelProto) -> list:
    """The per-channel affine initializers (scale and shift rows of the synapses) in graph order."""
    return [i for i in proto.graph.initializer if i.name.startswith("p__") and i.data_type == TensorProto.FLOAT]


@pytest.mark.parametrize("graph", GRAPHS)
def test_check_onnx_accepts_a_good_graph_and_refuses_a_corrupt_scale(graph):
    name = "vgg-max-1.5bit-4bit-seca1"
    deploy, x, _, _ = case(name)
    proto = build_onnx(deploy, graph, "lowbit")
    assert check_onnx(proto, deploy) >= 0
    # it returns max |Δ| to the float32 reference, itself `error` away from float64
    assert check_onnx(proto, deploy, samples=x) <= truth(name).bound + truth(name).error
    # the classifier is the last synapse: its scale is the second-to-last affine row initializer
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    target = _scale_inits(bad)[-2]
    values = numpy_helper.to_array(target)
    target.CopyFrom(numpy_helper.from_array((values * 1.01).astype(np.float32), target.name))
    with pytest.raises(HmdfError, match="disagrees with the reference"):
        check_onnx(bad, deploy, samples=x)
    with pytest.raises(HmdfError):
        check_onnx(bad, deploy)


def test_check_onnx_refuses_a_graph_that_fails_the_checker():
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    proto = build_onnx(deploy, "step", "float")
    del proto.graph.node[0]  # a dangling input
    with pytest.raises(HmdfError, match="onnx.checker"):
        check_onnx(proto, deploy)


# ------------------------------------------------------------------------------------ export()
def test_export_both_writes_step_and_sequence(tmp_path):
    name = "vgg-G-1bit-4bit-seca2-membn"
    deploy, x, _, _ = case(name)
    out = tmp_path / "net.onnx"
    written = export(deploy, out, graph="both")
    assert written == [tmp_path / "net.step.onnx", tmp_path / "net.sequence.onnx"]
    assert sorted(os.listdir(tmp_path)) == ["net.sequence.onnx", "net.step.onnx"]
    for path, graph in zip(written, GRAPHS):
        proto = onnx.load(str(path))
        assert props(proto)["hmdf.graph"] == graph
        truth(name).check(run_sequence(session(proto), x.numpy()), str(path))


def test_export_via_the_format_registry(tmp_path):
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    assert exporters.get("onnx") is export
    assert exporters.get("onnx")(deploy, tmp_path / "a.onnx") == [tmp_path / "a.onnx"]
    with pytest.raises(HmdfError, match="unknown format"):
        exporters.get("nir2")


@pytest.mark.parametrize("kw, message", [
    (dict(graph="diagonal"), "unknown graph 'diagonal'.*step, sequence or both"),
    (dict(graph=""), "unknown graph"),
    (dict(path="int4"), "unknown weight path 'int4'.*lowbit, integer, float"),
    (dict(opset=17), "opset 17"),
    (dict(opset=99), "opset 99"),
    (dict(opset=24), "opset 24.*25"),  # INT2 needs opset 25
    (dict(opset=24, path="integer"), "opset 24"),
])
def test_export_refuses_bad_options(kw, message, tmp_path):
    deploy, _, _, _ = case("vgg-max-1.5bit-4bit-seca1")  # ternary weights
    with pytest.raises(HmdfError, match=message):
        export(deploy, tmp_path / "m.onnx", **kw)
    assert os.listdir(tmp_path) == []


def test_low_opsets(tmp_path):
    """--path float needs only opset 18 even with ternary weights; binary weights (no INT2) run
    the lowbit path below 25 as well."""
    ternary, x, _, _ = case("vgg-max-1.5bit-4bit-seca1")
    [out] = export(ternary, tmp_path / "t.onnx", path="float", opset=18)
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 18
    truth("vgg-max-1.5bit-4bit-seca1").check(run_sequence(session(proto), x.numpy()), "float opset 18")
    binary, xb, _, _ = case("vgg-G-1bit-4bit-seca2-membn")
    for opset, path in ((24, "lowbit"), (18, "integer")):
        [out] = export(binary, tmp_path / f"b{opset}.onnx", path=path, opset=opset)
        proto = onnx.load(str(out))
        assert proto.opset_import[0].version == opset
        truth("vgg-G-1bit-4bit-seca2-membn").check(run_sequence(session(proto), xb.numpy()), f"binary opset {opset}")


@pytest.mark.parametrize("graph", ["step", "both"])
def test_failed_check_leaves_no_file(graph, tmp_path, monkeypatch):
    deploy, _, _, _ = case("vgg-avg-fp32-float")

    def failing(proto, model, samples=None, batch=3):
        raise HmdfError("forced mismatch")

    monkeypatch.setattr(onnx_exporter, "check_onnx", failing)
    with pytest.raises(HmdfError, match="forced mismatch"):
        export(deploy, tmp_path / "m.onnx", graph=graph)
    assert os.listdir(tmp_path) == []


def test_failed_check_keeps_an_existing_file(tmp_path, monkeypatch):
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    monkeypatch.setattr(onnx_exporter, "check_onnx", lambda *a, **k: (_ for _ in ()).throw(HmdfError("no")))
    with pytest.raises(HmdfError):
        export(deploy, out)
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["m.onnx"]


def test_both_fails_as_a_whole_when_the_second_graph_fails(tmp_path, monkeypatch):
    """--graph both is one export: when the sequence graph fails its check, the step graph that
    passed must not be left behind on its own."""
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    real = onnx_exporter.check_onnx

    def fail_sequence(proto, model, samples=None, batch=3):
        if props(proto)["hmdf.graph"] == "sequence":
            raise HmdfError("forced mismatch in the sequence graph")
        return real(proto, model, samples, batch)

    monkeypatch.setattr(onnx_exporter, "check_onnx", fail_sequence)
    with pytest.raises(HmdfError, match="sequence graph"):
        export(deploy, tmp_path / "m.onnx", graph="both")
    assert os.listdir(tmp_path) == []


def test_export_into_a_missing_folder_is_an_error(tmp_path):
    deploy, _, _, _ = case("vgg-avg-fp32-float")
    with pytest.raises(HmdfError, match="does not exist"):
        export(deploy, tmp_path / "nope" / "m.onnx")
    assert not (tmp_path / "nope").exists()


def test_written_file_is_the_checked_graph(tmp_path):
    """What lands on disk is a complete ONNX model that passes the full checker and matches the
    reference, for each path."""
    name = "resnet18-1.5bit-4bit-parallel-membn-seca2"
    deploy, x, _, _ = case(name)
    for path in PATHS:
        [out] = export(deploy, tmp_path / f"{path}.onnx", graph="sequence", path=path)
        proto = onnx.load(str(out))
        onnx.checker.check_model(proto, full_check=True)
        assert props(proto)["hmdf.path"] == path
        truth(name).check(session(proto).run(["logits"], {"x": x.numpy()})[0], path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["float.onnx", "integer.onnx", "lowbit.onnx"]


@pytest.mark.parametrize("opset", range(18, onnx.defs.onnx_opset_version() + 1))
def test_every_opset_onnx_knows_exports_or_is_refused(opset, tmp_path):
    """Each opset up to onnx's newest either exports a graph that onnxruntime runs and that matches,
    or is refused with an HmdfError; an onnxruntime exception must not escape `export`."""
    deploy, x, _, _ = case("vgg-max-1.5bit-4bit-seca1")  # ternary weights: INT2 needs opset ≥ 25
    out = tmp_path / "m.onnx"
    try:
        export(deploy, out, opset=opset)
    except HmdfError as e:
        assert opset < 25 or opset > MAX_OPSET, f"opset {opset} refused: {e}"
        assert f"opset {opset}" in str(e) and not out.exists()
        return
    assert 25 <= opset <= MAX_OPSET
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == opset
    truth("vgg-max-1.5bit-4bit-seca1").check(run_sequence(session(proto), x.numpy()), f"opset {opset}")


@pytest.mark.parametrize("graph", GRAPHS)
def test_export_bytes_are_deterministic(graph, tmp_path):
    """The same model gives the same file, byte for byte (names come from a counter, not ids)."""
    deploy, _, _, _ = case("resnet19-1bit-4bit-membn-seca1")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export(deploy, a, graph=graph, path="integer")
    export(deploy, b, graph=graph, path="integer")
    assert a.read_bytes() == b.read_bytes()
    first, second = (build_onnx(deploy, graph, "lowbit").SerializeToString() for _ in range(2))
    assert first == second
