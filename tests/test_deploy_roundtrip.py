"""A DeployModel through the `.hmdf` file (DESIGN.md ".hmdf", SPEC §5.3): `save_hmdf` / `load_hmdf`
are bit-exact for every node type, the file is plain safetensors with packed low-bit weights, and
`from_parts` refuses a malformed graph with one clear HmdfError.

The byte-level container and the packing schemes have their own tests (test_container.py,
test_pack.py); this file is about the graph on top of them.
"""

from __future__ import annotations

import copy
import json
import math
import struct

import pytest
import torch
from nets import randomise_neuron
from safetensors import safe_open
from torch import nn

from hmdf_deploy.deploy import DeployModel, Reference, fold, load_hmdf, save_hmdf
from hmdf_deploy.deploy.graph import NODE_TYPES, SECA, Add, Conv, Flatten, Linear, Neuron, Pool, Synapse
from hmdf_deploy.deploy.hmdf_file import from_parts, to_parts
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, build_model


# ------------------------------------------------------------------------------------- models
def random_fold(cfg: ModelConfig, *, event: bool = False, seed: int = 0, source: dict | None = None) -> DeployModel:
    """Fold a network with random BN statistics, neuron logits, Mem-BN and SECA parameters."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_model(cfg.validate())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))
            else:
                randomise_neuron(m, g, q_shift=0.0)
    return fold(net.eval(), cfg, event=event, source=source)


def hand_model() -> DeployModel:
    """Corner cases fold does not produce: a 1.5bit synapse whose codes are all ±1 (stored as
    sign1), a strided padded conv, a per-step (R = T) affine, max pool with padding."""
    g = torch.Generator().manual_seed(1)
    signs = torch.where(torch.rand(3, 2, 3, 3, generator=g) > 0.5, 1, -1).to(torch.int8)
    trits = torch.randint(-1, 2, (4, 12), generator=g, dtype=torch.int8)
    nodes = [
        Conv("c", ["input"], "1.5bit", signs, torch.rand(2, 3, generator=g), torch.randn(2, 3, generator=g),
             stride=2, padding=1),
        Neuron("n", ["c"], "hmdf", "4bit", torch.rand(2, generator=g), torch.rand(2, 3, generator=g),
               torch.rand(2, 3, generator=g), torch.randn(2, 3, generator=g)),
        Pool("p", ["n"], "max", kernel=3, stride=2, padding=1),
        Pool("p2", ["p"], "avg", kernel=1, stride=1, padding=0),
        SECA("s", ["p2", "p"], torch.randn(5, generator=g), torch.randn(1, generator=g), residual_scale=0.25),
        Add("a", ["s", "p2"]),
        Flatten("f", ["a"]),
        Linear("l", ["f"], "1.5bit", trits, torch.rand(1, 4, generator=g), torch.randn(1, 4, generator=g)),
        Neuron("par", ["l"], "parallel", "4bit", torch.rand(1, generator=g)),
        Linear("out", ["par"], "fp32", torch.randn(3, 4, generator=g), torch.ones(1, 3), torch.zeros(1, 3)),
    ]
    return DeployModel(2, (2, 8, 8), True, 3, nodes, "out", {"note": "hand-made", "n": [1, 2]}).validate()


MODELS = {
    "vgg-1bit-4bit-seca2-membn-max-G": lambda: random_fold(ModelConfig(
        arch="vgg", cfg=[4, 4, "M", 4, "G"], input_size=(8, 8), T=3, weights="1bit", spikes="4bit", seca=2,
        mem_bn=True, pool="max", num_classes=5)),
    "resnet18-1.5bit-parallel-membn-seca2": lambda: random_fold(ModelConfig(
        arch="resnet18", width=4, input_size=(16, 16), T=2, weights="1.5bit", parallel=True,
        mem_bn=True, seca=2, num_classes=5)),
    "resnet34-imagenet-lif-fp32": lambda: random_fold(ModelConfig(
        arch="resnet34", width=4, input_size=(16, 16), T=2, neuron="lif", stem="imagenet", num_classes=5)),
    "resnet19-event-1bit-4bit-membn": lambda: random_fold(ModelConfig(
        arch="resnet19", width=4, in_channels=2, input_size=(16, 16), T=2, weights="1bit", spikes="4bit",
        mem_bn=True, quantize_stem=True,
        num_classes=5), event=True, source={"dataset": "neuro-digits", "run_sha256": "ab" * 32}),
    "hand-made": hand_model,
}


def typed(d: dict) -> dict:
    """attrs with their Python types, so that 1 == 1.0 or (1, 2) == [1, 2] do not pass unnoticed."""
    return {k: (type(v).__name__, v) for k, v in d.items()}


def assert_same_model(a: DeployModel, b: DeployModel) -> None:
    assert (a.T, a.event, a.num_classes, a.output) == (b.T, b.event, b.num_classes, b.output)
    assert tuple(a.input_shape) == tuple(b.input_shape) and all(type(v) is int for v in b.input_shape)
    assert a.source == b.source
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for x, y in zip(a.nodes, b.nodes):
        assert type(x) is type(y), x.name
        assert typed(x.attrs()) == typed(y.attrs()), x.name
        tx, ty = x.tensors(), y.tensors()
        assert sorted(tx) == sorted(ty), x.name
        for key in tx:
            assert tx[key].dtype == ty[key].dtype, f"{x.name}.{key}"
            assert torch.equal(tx[key], ty[key]), f"{x.name}.{key}"


def sample_input(model: DeployModel, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(model.T, batch, *model.input_shape, generator=g) * 2


def read_header(path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


# ----------------------------------------------------------------------------- round trips
def test_models_cover_every_node_type():
    kinds = {n.kind for make in MODELS.values() for n in make().nodes}
    assert kinds == set(NODE_TYPES) - {"node"}
    neurons = {(n.model, n.spikes, n.in_scale is not None) for make in MODELS.values() for n in make().neurons}
    assert {("hmdf", "4bit", True), ("hmdf", "4bit", False), ("parallel", "4bit", False), ("lif", "float", False),
            ("hmdf", "float", True), ("parallel", "float", False)} <= neurons
    schemes = {(n.weights, bool((n.weight != 0).all())) for make in MODELS.values() for n in make().nodes
               if isinstance(n, Synapse)}
    assert {("fp32", True), ("1bit", True), ("1.5bit", False), ("1.5bit", True)} <= schemes


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_is_bit_exact(name, tmp_path):
    model = MODELS[name]()
    path = tmp_path / "m.hmdf"
    save_hmdf(model, path)
    loaded = load_hmdf(path)
    assert_same_model(model, loaded)
    # the loaded model computes exactly what the original does, in both forms
    x = sample_input(model)
    want = Reference(model).run(x)
    assert torch.equal(Reference(loaded).run(x), want)
    assert torch.equal(Reference(loaded).run(x, scan=False), Reference(model).run(x, scan=False))
    ra, rb = Reference(model), Reference(loaded)
    state_a, state_b = ra.initial_state(), rb.initial_state()
    for t in range(model.T):
        oa, state_a = ra.step(x[t], state_a, t)
        ob, state_b = rb.step(x[t], state_b, t)
        assert torch.equal(oa, ob)
    # and saving the loaded model again gives the same bytes
    save_hmdf(loaded, tmp_path / "again.hmdf")
    assert (tmp_path / "again.hmdf").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("name", list(MODELS))
def test_file_opens_with_safetensors_alone(name, tmp_path):
    model = MODELS[name]()
    path = tmp_path / "m.hmdf"
    save_hmdf(model, path)
    tensors, meta = to_parts(model)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == sorted(tensors)
        for key in f.keys():
            t = f.get_tensor(key)
            assert t.dtype == tensors[key].dtype and torch.equal(t, tensors[key]), key
        info = f.metadata()
    assert info["format"] == "hmdf" and info["format_version"] == "1"
    assert info["checksum"].startswith("sha256:")
    assert json.loads(info["hmdf"]) == json.loads(json.dumps(meta))


@pytest.mark.parametrize("name", list(MODELS))
def test_low_bit_weights_are_stored_packed(name, tmp_path):
    """SPEC §5.3: binary weights take 1 bit each, ternary 1.6 (5 trits per byte); only the last
    byte of a tensor may be partly padding. Read the sizes from the raw safetensors header."""
    model = MODELS[name]()
    path = tmp_path / "m.hmdf"
    save_hmdf(model, path)
    header = read_header(path)
    graph = {e["name"]: e for e in json.loads(header["__metadata__"]["hmdf"])["nodes"]}
    synapses = [n for n in model.nodes if isinstance(n, Synapse)]
    for n in synapses:
        entry = header[f"{n.name}.weight"]
        nbytes = entry["data_offsets"][1] - entry["data_offsets"][0]
        numel = n.weight.numel()
        if n.weights == "fp32":
            assert entry["dtype"] == "F32" and nbytes == 4 * numel and "packing" not in graph[n.name]
            continue
        assert entry["dtype"] == "U8" and entry["shape"] == [nbytes]
        packing = graph[n.name]["packing"]
        assert packing["shape"] == list(n.weight.shape)
        bits = 8 * nbytes / numel
        if bool((n.weight != 0).all()):  # every 1-bit layer, and a ternary one without zeros
            assert packing["scheme"] == "sign1"
            assert nbytes == math.ceil(numel / 8) and bits < 1 + 8 / numel
        else:
            assert n.weights == "1.5bit" and packing["scheme"] == "trit5"
            assert nbytes == math.ceil(numel / 5) and bits < 1.6 + 8 / numel
        if n.weights == "1bit":
            assert packing["scheme"] == "sign1"
    # the packed layers make the file small: no int8/float copy of the codes is stored anywhere
    assert all(e["dtype"] in ("U8", "F32") for k, e in header.items() if k != "__metadata__")


def test_big_layers_reach_the_nominal_bits_per_weight(tmp_path):
    """With element counts that divide evenly, exactly 1 and 1.6 bits per weight."""
    g = torch.Generator().manual_seed(0)
    binary = torch.where(torch.rand(16, 10, 3, 3, generator=g) > 0.5, 1, -1).to(torch.int8)  # 1440 = 8·180
    ternary = torch.randint(-1, 2, (16, 10, 3, 3), generator=g, dtype=torch.int8)  # 1440 = 5·288
    ternary[0, 0, 0, 0] = 0
    nodes = [
        Conv("b", ["input"], "1bit", binary, torch.ones(1, 16), torch.zeros(1, 16), padding=1),
        Conv("t", ["input"], "1.5bit", ternary, torch.ones(1, 16), torch.zeros(1, 16), padding=1),
        Add("sum", ["b", "t"]),
        Flatten("flat", ["sum"]),
        Linear("fc", ["flat"], "fp32", torch.ones(2, 16 * 4 * 4), torch.ones(1, 2), torch.zeros(1, 2)),
    ]
    model = DeployModel(1, (10, 4, 4), False, 2, nodes, "fc")
    path = tmp_path / "m.hmdf"
    save_hmdf(model, path)
    header = read_header(path)
    sizes = {k: e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__"}
    assert 8 * sizes["b.weight"] / binary.numel() == 1.0
    assert 8 * sizes["t.weight"] / ternary.numel() == 1.6
    loaded = load_hmdf(path)
    assert torch.equal(loaded.node("b").weight, binary) and torch.equal(loaded.node("t").weight, ternary)


# -------------------------------------------------------------------------------- refusals
@pytest.fixture
def parts():
    """(tensors, meta) of a small VGG with every kind of VGG node."""
    return to_parts(MODELS["vgg-1bit-4bit-seca2-membn-max-G"]())


def entry(meta: dict, name: str) -> dict:
    return next(e for e in meta["nodes"] if e["name"] == name)


def refused(tensors: dict, meta: dict, match: str | None) -> str:
    with pytest.raises(HmdfError, match=match) as info:
        from_parts(tensors, meta)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_parts_round_trip(parts):
    tensors, meta = parts
    assert_same_model(from_parts(tensors, meta), MODELS["vgg-1bit-4bit-seca2-membn-max-G"]())
    names = [e["name"] for e in meta["nodes"]]
    assert "features.1.attn" in names and len(entry(meta, "features.1.attn")["inputs"]) == 2


def test_refuses_a_node_reading_an_undefined_node(parts):
    tensors, meta = parts
    entry(meta, "features.0.act")["inputs"] = ["ghost"]
    refused(tensors, meta, r"'features\.0\.act' reads 'ghost'")


def test_refuses_a_node_reading_a_later_node(parts):
    tensors, meta = parts
    entry(meta, "features.0.conv")["inputs"] = ["classifier"]
    refused(tensors, meta, r"reads 'classifier', which is not defined before it")


def test_refuses_duplicate_names(parts):
    tensors, meta = parts
    entry(meta, "flatten")["name"] = "features.2"  # the max pool's name
    entry(meta, "classifier")["inputs"] = ["features.2"]
    refused(tensors, meta, r"'features\.2' is used twice")


@pytest.mark.parametrize("key", ["features.0.act.threshold", "features.0.conv.shift", "classifier.weight"])
def test_refuses_a_missing_tensor(parts, key):
    tensors, meta = parts
    del tensors[key]
    refused(tensors, meta, repr(key.rsplit(".", 1)[0]))


def test_refuses_a_missing_packed_weight(parts):
    tensors, meta = parts
    del tensors["features.1.conv.weight"]
    refused(tensors, meta, r"'features\.1\.conv\.weight' is missing")


@pytest.mark.parametrize("key", ["ghost.weight", "features.0.act.bias", "features.1.conv.weight.old"])
def test_refuses_an_extra_tensor(parts, key):
    tensors, meta = parts
    tensors[key] = torch.zeros(3)
    message = refused(tensors, meta, None)
    assert "not used by any node" in message or "bad fields" in message


def test_refuses_a_packing_shape_that_does_not_fit_the_bytes(parts):
    tensors, meta = parts
    packing = entry(meta, "features.1.conv")["packing"]
    assert packing["scheme"] == "sign1" and packing["shape"] == [4, 4, 3, 3]
    packing["shape"] = [4, 4, 3, 5]
    refused(tensors, meta, r"'features\.1\.conv\.weight' has 18 bytes")


def test_refuses_a_packing_shape_with_the_wrong_output_channels(parts):
    tensors, meta = parts
    entry(meta, "features.1.conv")["packing"]["shape"] = [2, 8, 3, 3]  # same 144 codes
    refused(tensors, meta, r"'features\.1\.conv'.*scale")


def test_refuses_a_packing_shape_with_the_wrong_input_channels(parts):
    """Same 144 codes and 4 output channels, but 2 input channels and a 6×3 kernel: the file is
    internally consistent byte for byte, yet the conv cannot read the 4-channel map before it.
    Loading must refuse it, not hand a runtime a model that crashes."""
    tensors, meta = parts
    entry(meta, "features.1.conv")["packing"]["shape"] = [4, 2, 6, 3]
    refused(tensors, meta, r"features\.1\.conv")


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda m: m.update(num_classes=7), id="num_classes-differs-from-the-classifier"),
    pytest.param(lambda m: m.update(input_shape=[3, -8, 8]), id="negative-input-size"),
    pytest.param(lambda m: m.update(input_shape=[2, 8, 8]), id="input-channels-differ-from-the-stem"),
])
def test_refuses_a_graph_whose_shapes_do_not_fit(parts, mutate):
    """The graph must be consistent with its input shape, or a runtime crashes on it later."""
    tensors, meta = parts
    mutate(meta)
    refused(tensors, meta, None)


@pytest.mark.parametrize("node, field, value", [
    # values outside the documented sets: each would otherwise be silently run as something else
    ("features.0.act", "model", "izhikevich"),  # run as an HM-DF neuron
    ("features.0.act", "spikes", "8bit"),  # run as float spikes
    ("features.2", "mode", "median"),  # run as a max pool
    ("features.1.conv", "weights", "2bit"),  # runs, but `hmdf inspect` dies on it (KeyError)
    # values of the wrong type or range: each crashes the reference executor with a non-HmdfError
    ("features.1.conv", "stride", "2"),
    ("features.1.conv", "stride", 0),
    ("features.2", "kernel", -1),
    ("features.1.attn", "residual_scale", "x"),
])
def test_refuses_bad_node_attributes(parts, node, field, value):
    tensors, meta = parts
    entry(meta, node)[field] = value
    refused(tensors, meta, None)


def test_refuses_a_lif_neuron_with_4bit_spikes(parts):
    """Training refuses it (binary spikes of height θ are no 4-bit codes); a hand-made file would
    otherwise run with float spikes in the reference but as codes (all 0) in ONNX's integer path."""
    tensors, meta = parts
    entry(meta, "features.1.act")["model"] = "lif"
    refused(tensors, meta, r"node 'features\.1\.act': a lif neuron fires binary spikes .* spikes must be 'float'")
    entry(meta, "features.1.act")["spikes"] = "float"
    from_parts(dict(tensors), copy.deepcopy(meta)).validate()


def test_refuses_a_non_boolean_event_flag(parts):
    """`"event": "no"` must not be read as True (bool of a non-empty string)."""
    tensors, meta = parts
    meta["event"] = "no"
    refused(tensors, meta, "event")


@pytest.mark.parametrize("packing, match", [
    ({"scheme": "trit9", "shape": [4, 4, 3, 3]}, "bad packing"),
    ({"scheme": "sign1"}, "packing must give a scheme and a shape"),
    ({"scheme": "sign1", "shape": [4, -4, 3, 3]}, "bad packing"),
    ({"scheme": "sign1", "shape": "4x4"}, "packing must give a scheme and a shape"),
])
def test_refuses_bad_packing_entries(parts, packing, match):
    tensors, meta = parts
    entry(meta, "features.1.conv")["packing"] = packing
    refused(tensors, meta, match)


def test_refuses_an_unknown_node_type(parts):
    tensors, meta = parts
    entry(meta, "flatten")["type"] = "lstm"
    refused(tensors, meta, r"unknown node type 'lstm'")


def test_refuses_a_node_without_a_type_or_name(parts):
    tensors, meta = parts
    del entry(meta, "flatten")["type"]
    refused(tensors, meta, "has no name or type")


def test_refuses_wrong_arity(parts):
    tensors, meta = parts
    entry(meta, "features.4")["inputs"] = ["features.3.act", "features.1.act"]  # a pool with two inputs
    refused(tensors, meta, r"'features\.4' \(pool\) has 2 inputs")


@pytest.mark.parametrize("mutate, match", [
    (lambda m: m.pop("T"), "metadata is incomplete or malformed"),
    (lambda m: m.update(T="four"), "metadata is incomplete or malformed"),
    (lambda m: m.update(T=0), "T = 0 is out of range"),
    (lambda m: m.pop("nodes"), "metadata is incomplete or malformed"),
    (lambda m: m.pop("output"), "metadata is incomplete or malformed"),
    (lambda m: m.update(input_shape=[3, 8]), r"input_shape \[3, 8\] must be \(C, H, W\)"),
    (lambda m: m.update(input_shape=5), "metadata is incomplete or malformed"),
    (lambda m: m.update(output="nowhere"), "output 'nowhere' is not a node"),
    (lambda m: m.update(nodes="abc"), "has no name or type"),
    (lambda m: m.update(nodes=[["features.0.conv"]]), "has no name or type"),
    (lambda m: entry(m, "features.0.conv").update(inputs="input"), "inputs must be a list"),
    (lambda m: entry(m, "features.0.conv").update(inputs=[0]), "inputs must be a list"),
    (lambda m: entry(m, "features.0.conv").update(stride_x=2), "bad fields"),
])
def test_refuses_malformed_metadata(parts, mutate, match):
    tensors, meta = parts
    mutate(meta)
    refused(tensors, meta, match)


def test_refusals_do_not_depend_on_the_other_parts(parts):
    """Every refusal above started from the same valid parts: check they really are valid."""
    tensors, meta = parts
    from_parts(dict(tensors), copy.deepcopy(meta)).validate()
