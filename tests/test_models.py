"""Architectures of SPEC §11 with the options of §1.1, §3, §5, §9; config validation; HDLIF self-checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, arch_from_name, build_model
from hmdf_deploy.models.config import parse_vgg_cfg
from hmdf_deploy.models.resnet import BasicBlock
from hmdf_deploy.models.vgg import ConvUnit
from hmdf_deploy.neurons import HMDFNeuron, LIFNeuron, ParallelHMDF, StatefulNeuron
from hmdf_deploy.quant import QConv2d, QLinear
from hmdf_deploy.seca import SECA

SMALL_VGG = [8, "M", 8, 16, "G"]

# A covering set (not the full product): every arch, every weight/spike mode, parallel, Mem-BN,
# SECA 0/1/2, both neurons, both ResNet stems, both VGG pools, quantized stem, event input.
CASES = {
    "vgg-fp32-float": dict(arch="vgg", cfg=SMALL_VGG),
    "vgg-1bit-4bit-membn-seca2-max": dict(arch="vgg", cfg=SMALL_VGG, weights="1bit", spikes="4bit", mem_bn=True, seca=2, pool="max"),
    "vgg-1.5bit-lif-seca1": dict(arch="vgg", cfg=[8, 8, "M", 16, "M"], weights="1.5bit", neuron="lif", seca=1),
    "vgg-events-1bit-qstem": dict(arch="vgg", cfg=[8, "M", 16, "M"], in_channels=2, weights="1bit", quantize_stem=True, static=False),
    "resnet18-1bit-parallel": dict(arch="resnet18", weights="1bit", parallel=True),
    "resnet18-1.5bit-4bit-parallel-membn-seca2": dict(arch="resnet18", weights="1.5bit", spikes="4bit", parallel=True, mem_bn=True, seca=2),
    "resnet18-fp32-lif-seca1": dict(arch="resnet18", neuron="lif", seca=1),
    "resnet18-events-1.5bit-qstem": dict(arch="resnet18", in_channels=2, weights="1.5bit", quantize_stem=True, static=False),
    "resnet19-1bit-membn-seca1": dict(arch="resnet19", weights="1bit", mem_bn=True, seca=1),
    "resnet19-1.5bit-4bit-parallel-seca2": dict(arch="resnet19", weights="1.5bit", spikes="4bit", parallel=True, seca=2),
    "resnet34-1.5bit-imagenet": dict(arch="resnet34", weights="1.5bit", stem="imagenet", input_size=(32, 32)),
    "resnet34-1bit-lif-qstem": dict(arch="resnet34", weights="1bit", neuron="lif", quantize_stem=True),
}
T, B, CLASSES = 2, 3, 5


def _make(case: str):
    kw = dict(CASES[case])
    static = kw.pop("static", True)
    kw.setdefault("input_size", (8, 8) if kw["arch"] == "vgg" else (16, 16))
    kw.setdefault("width", 4)
    cfg = ModelConfig(T=T, num_classes=CLASSES, **kw)
    torch.manual_seed(0)
    net = build_model(cfg)
    h, w = cfg.input_size
    x = torch.rand(B, cfg.in_channels, h, w) * 2 if static else (torch.rand(B, T, cfg.in_channels, h, w) < 0.3).float() * 2
    return cfg, net, x, static


@pytest.mark.parametrize("case", list(CASES))
def test_forward_sequence_shape_and_backward(case):
    """SPEC §4, §11: forward_sequence gives (T, B, classes); the summed loss back-propagates everywhere."""
    cfg, net, x, static = _make(case)
    with torch.no_grad():  # low thresholds: every layer is active, so every weight must get a gradient
        for m in net.modules():
            if isinstance(m, (HMDFNeuron, ParallelHMDF, LIFNeuron)):
                m.b.fill_(-2.0)
    out = net.forward_sequence(x, static)
    assert out.shape == (T, B, CLASSES)
    assert torch.isfinite(out).all()
    loss = F.cross_entropy(out.sum(0), torch.arange(B) % CLASSES)
    loss.backward()
    stem = net.features[0].conv if cfg.arch == "vgg" else net.conv1
    head = net.classifier if cfg.arch == "vgg" else net.fc
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    for name, mod in net.named_modules():
        if isinstance(mod, (QConv2d, QLinear)):
            assert mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("case", list(CASES))
def test_eval_is_deterministic_and_reset_state_restarts(case):
    """SPEC §1 (v_{-1} = 0), §4.4: eval outputs repeat exactly; without reset_state the state leaks over."""
    cfg, net, x, static = _make(case)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0  # running statistics = this batch's, so eval-mode neurons do fire
    net.train()
    with torch.no_grad():
        net.forward_sequence(x, static)
    net.eval()
    with torch.no_grad():
        a = net.forward_sequence(x, static)
        b = net.forward_sequence(x, static)
        assert torch.equal(a, b)

        def run():
            return torch.stack([net(x if static else x[:, t], t) for t in range(T)])

        net.reset_state()
        first = run()
        stale = run()  # no reset: every stateful neuron starts from its last membrane
        net.reset_state()
        again = run()
    assert torch.equal(first, a)
    assert torch.equal(again, first)
    assert not torch.equal(stale, first)


def _quant_layers(net: nn.Module) -> dict[str, str]:
    return {n: m.weights for n, m in net.named_modules() if isinstance(m, (QConv2d, QLinear))}


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c].get("weights", "fp32") != "fp32"])
def test_full_precision_stem_and_classifier(case):
    """SPEC §5: only the stem (static input) and the classifier are full precision; all other convs and
    linears, the 1×1 downsample convs included, use the configured weights; the stem too if quantize_stem."""
    cfg, net, _, _ = _make(case)
    layers = _quant_layers(net)
    stem, head = ("features.0.conv", "classifier") if cfg.arch == "vgg" else ("conv1", "fc")
    expected_fp = {head} if cfg.quantize_stem else {stem, head}
    assert {n for n, w in layers.items() if w == "fp32"} == expected_fp
    assert {w for n, w in layers.items() if n not in expected_fp} == {cfg.weights}
    if cfg.arch.startswith("resnet"):
        downsample = [n for n in layers if "downsample" in n]
        assert downsample and all(layers[n] == cfg.weights for n in downsample)
        n_blocks = {"resnet18": 8, "resnet34": 16, "resnet19": 8}[cfg.arch]
        n_down = {"resnet18": 3, "resnet34": 3, "resnet19": 2}[cfg.arch]
        head_linear = 1 if cfg.arch == "resnet19" else 0
        assert len(layers) - len(expected_fp) == 2 * n_blocks + n_down + head_linear + (1 if cfg.quantize_stem else 0)


def test_quantized_stem_changes_the_stem_forward():
    """SPEC §5: a full-precision stem convolves with W itself, a quantized one with α·codes."""
    torch.manual_seed(0)
    for q in (False, True):
        net = build_model(ModelConfig(arch="resnet18", width=4, weights="1bit", quantize_stem=q, input_size=(8, 8)))
        x = torch.randn(2, 3, 8, 8)
        w = net.conv1.weight.detach()
        if q:
            w = w.abs().mean(dim=(1, 2, 3), keepdim=True) * torch.where(w >= 0, 1.0, -1.0)
        assert torch.allclose(net.conv1(x), F.conv2d(x, w, padding=1), atol=1e-6)


# ------------------------------------------------------------------------------------------
# Wiring of blocks (SPEC §9, §11; HDLIF-IMPORT "Forward order")
# ------------------------------------------------------------------------------------------


def _randomise_bns(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)


def _seca_ref(x: torch.Tensor, seca: SECA) -> torch.Tensor:
    """SPEC §9: pool over H, W; 1-D conv (k = 5, zero pad 2, bias) across channels; sigmoid; scale."""
    pooled = x.mean(dim=(2, 3))  # (B, C)
    k = seca.conv.weight.detach().view(5)
    bias = seca.conv.bias.detach().item()
    B_, C = pooled.shape
    gate = torch.empty_like(pooled)
    for c in range(C):
        acc = torch.full((B_,), bias)
        for j in range(5):
            cc = c + j - 2
            if 0 <= cc < C:
                acc = acc + k[j] * pooled[:, cc]
        gate[:, c] = torch.sigmoid(acc)
    return x * gate[:, :, None, None]


def test_seca_matches_definition_and_has_six_parameters():
    """SPEC §9: six parameters, channel attention from a kernel-5 conv over pooled channels."""
    torch.manual_seed(0)
    seca = SECA()
    assert sum(p.numel() for p in seca.parameters()) == 6
    with torch.no_grad():
        seca.conv.weight.copy_(torch.randn(1, 1, 5))
        seca.conv.bias.fill_(0.3)
    x = torch.randn(2, 7, 3, 3)
    assert torch.allclose(seca(x), _seca_ref(x, seca), atol=1e-6)


@pytest.mark.parametrize("seca", [0, 1, 2])
@pytest.mark.parametrize("shape_change", [False, True])
def test_resnet_block_forward_order(seca, shape_change):
    """SPEC §11, §9: h = A1([x +] BN1(C1(N1(x)))); y = A2([h +] BN2(C2(N2(h)))) + shortcut(x);
    the shortcut is BN(1×1 conv(x)) of the real-valued x when the shape changes, else x."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    cin, cout, stride = (4, 8, 2) if shape_change else (4, 4, 1)
    cfg = ModelConfig(arch="resnet18", T=2, weights="1bit", seca=seca)
    block = BasicBlock(cin, cout, stride, cfg).eval()
    _randomise_bns(block, gen)
    x = torch.randn(2, cin, 6, 6, generator=gen)
    with torch.no_grad():
        y = block(x, 0)
        ref_act1 = HMDFNeuron(2)  # fresh neurons, default λ = θ = 0.5: step 0 is max(I − 0.5, 0)
        ref_act2 = HMDFNeuron(2)
        h = block.bn1(block.conv1(ref_act1(x, 0)))
        if seca:
            h = _seca_ref(h + x if seca == 2 and not shape_change else h, block.attn1)
        z = block.bn2(block.conv2(ref_act2(h, 0)))
        if seca:
            z = _seca_ref(z + h if seca == 2 else z, block.attn2)
        if shape_change:
            short = block.downsample[1](F.conv2d(x, block.downsample[0].weight.abs().mean(dim=(1, 2, 3), keepdim=True)
                                                 * torch.where(block.downsample[0].weight >= 0, 1.0, -1.0), stride=2))
        else:
            short = x
        assert torch.allclose(y, z + short, atol=1e-5)


@pytest.mark.parametrize("seca", [0, 1, 2])
def test_vgg_unit_forward_order(seca):
    """SPEC §11, §9: conv → BN → [SECA, II adds the unit's input when the shapes match] → neuron."""
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    cfg = ModelConfig(T=2, seca=seca)
    for cin, cout in ((4, 4), (3, 4)):
        unit = ConvUnit(cin, cout, cfg, weights="fp32").eval()
        _randomise_bns(unit, gen)
        x = torch.rand(2, cin, 5, 5, generator=gen)
        with torch.no_grad():
            i = unit.bn(unit.conv(x))
            if seca:
                i = _seca_ref(i + x if seca == 2 and cin == cout else i, unit.attn)
            expected = torch.clamp(i - 0.5, min=0)
            assert torch.allclose(unit(x, 0), expected, atol=1e-6)


def test_resnet_neuron_kinds():
    """SPEC §1.1: with parallel, each block's second neuron is a Parallel HM-DF (first stays stateful)."""
    net = build_model(ModelConfig(arch="resnet18", width=4, parallel=True))
    assert all(isinstance(b.act2, ParallelHMDF) and isinstance(b.act1, HMDFNeuron) for b in net.blocks)
    net = build_model(ModelConfig(arch="resnet19", width=4, neuron="lif"))
    assert all(isinstance(b.act1, LIFNeuron) and isinstance(b.act2, LIFNeuron) for b in net.blocks)
    assert isinstance(net.head.act, LIFNeuron)


def test_detach_state_reaches_every_neuron_and_cuts_time():
    """SPEC §4.1: detach_state(True) cuts the temporal graph of every stateful neuron of a model."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch="vgg", cfg=[4, "M", 4], in_channels=1, input_size=(4, 4), T=2))
    neurons = [m for m in net.modules() if isinstance(m, StatefulNeuron)]
    assert len(neurons) == 2
    x = torch.rand(3, 2, 1, 4, 4) * 3
    for flag in (False, True):
        net.detach_state(flag)
        assert all(n.detach_state is flag for n in neurons)
        x0 = x[:, 0].clone().requires_grad_()
        net.reset_state()
        net(x0, 0)
        out1 = net(x[:, 1], 1)
        (g,) = torch.autograd.grad(out1.sum(), x0, allow_unused=True)
        # in train mode BN uses batch stats per call, so step 0's input reaches step 1 only via v
        if flag:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            assert g is not None and torch.count_nonzero(g) > 0


# ------------------------------------------------------------------------------------------
# HDLIF-IMPORT.md self-checks
# ------------------------------------------------------------------------------------------


def _resnet18_standard_params(classes: int) -> int:
    """A CIFAR ResNet-18 without neurons: convs (no bias), BN weight+bias, fc weight+bias."""
    conv = lambda i, o, k: i * o * k * k  # noqa: E731
    total = conv(3, 64, 3) + 2 * 64
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for i in range(2):
            total += conv(cin, cout, 3) + conv(cout, cout, 3) + 4 * cout
            if cin != cout:
                total += conv(cin, cout, 1) + 2 * cout
            cin = cout
    return total + 512 * classes + classes


def test_resnet18_cifar100_parameter_count():
    """HDLIF-IMPORT self-check (SPEC §11): ResNet-18 CIFAR-100 has 11,220,228 parameters in the reference code.

    That number is the authors' canonical ternary + parallel model at T = 4: 11,220,132 synaptic/BN/fc
    parameters plus neurons: 8 stateful act1 with v_th and alpha (2·4 each) and 8 parallel act2 with
    v_th only (4 each, of which only v_th[0] is ever used) = 64 + 32 = 96. Our ParallelHMDF stores the
    single θ it uses, so our count is 8·(4 − 1) = 24 lower; without parallel act2 gets its a, b (2·4)
    like act1, 8·4 = 32 more than the reference number.
    """
    doc = 11_220_228
    assert _resnet18_standard_params(100) + 8 * 2 * 4 + 8 * 4 == doc  # the explanation adds up
    for weights in ("1bit", "1.5bit"):
        par = build_model(ModelConfig(arch="resnet18", num_classes=100, T=4, width=64, weights=weights, parallel=True))
        assert sum(p.numel() for p in par.parameters()) == doc - 8 * (4 - 1)
    full = build_model(ModelConfig(arch="resnet18", num_classes=100, T=4, width=64, weights="1bit"))
    assert sum(p.numel() for p in full.parameters()) == doc + 8 * 4


def test_resnet18_binary_key_count():
    """HDLIF-IMPORT self-check (SPEC §11): ResNet-18, T=4, binary without parallel has 154 state_dict keys."""
    net = build_model(ModelConfig(arch="resnet18", num_classes=10, T=4, width=64, weights="1bit"))
    assert len(net.state_dict()) == 154
    # The doc's 165 for ternary + parallel includes one `weight_clip_val` buffer per quantized conv
    # (16 block convs + 3 downsample = 19), which we do not store; a parallel act2 has one key in
    # both (`v_th` there, `b` here), 8 fewer than a stateful one. So ours is 165 − 19 = 154 − 8 = 146.
    tern = build_model(ModelConfig(arch="resnet18", num_classes=10, T=4, width=64, weights="1.5bit", parallel=True))
    assert len(tern.state_dict()) == 165 - 19 == 154 - 8


def test_vgg11_events_keys_and_parameters():
    """HDLIF-IMPORT self-check (SPEC §11): VGG11 on 2×48×48 events, binary, no SECA/Mem-BN, T=10: 66 keys, 9,268,906
    parameters (classifier 4608 → 10)."""
    arch, cfg = arch_from_name("vgg11")
    net = build_model(ModelConfig(arch=arch, cfg=cfg, in_channels=2, input_size=(48, 48), num_classes=10, T=10,
                                  weights="1bit", quantize_stem=True))
    assert len(net.state_dict()) == 66
    assert sum(p.numel() for p in net.parameters()) == 9_268_906
    assert net.classifier.in_features == 4608


# ------------------------------------------------------------------------------------------
# ModelConfig
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(T=0), "T must be at least 1, got 0"),
        (dict(neuron="lif", spikes="4bit"), "LIF baseline has binary spikes"),
        (dict(neuron="lif", parallel=True, arch="resnet18"), "LIF baseline"),
        (dict(neuron="lif", mem_bn=True), "LIF baseline"),
        (dict(parallel=True), "--parallel applies to the second neuron of ResNet blocks"),
        (dict(cfg=[8, "M", "M", "M", "M"], input_size=(8, 8)), "too many M entries for input 8×8"),
        (dict(cfg=["M", "G"]), "has no conv layer"),
        (dict(cfg=[8, "X"]), "bad model cfg entry 'X'"),
        (dict(weights="2bit"), "unknown weights '2bit'"),
        (dict(spikes="8bit"), "unknown spikes '8bit'"),
        (dict(arch="resnet50"), "unknown arch 'resnet50'"),
        (dict(seca=3), "unknown seca 3"),
        (dict(arch="resnet18", width=0), "width and in_channels must be positive"),
        (dict(num_classes=1), "num_classes at least 2"),
        (dict(T=1025), "--T must be at most 1024, got 1025"),
        (dict(arch="resnet18", width=1025), "--width must be at most 1024"),
        (dict(cfg=[8, 8193, "M"]), "bad model cfg entry 8193: a layer of --model has 1 to 8192 channels"),
        (dict(cfg=[8, 0, "M"]), "bad model cfg entry 0"),  # from a config.json: parse_vgg_cfg never saw it
        (dict(cfg=[True, "M"]), "bad model cfg entry True"),
    ],
)
def test_validate_errors(kwargs, message):
    """SPEC §1.1, §7, §11: impossible configurations raise HmdfError with a clear one-line message."""
    cfg = ModelConfig(**kwargs)
    with pytest.raises(HmdfError, match=message.replace("(", r"\(")):
        cfg.validate()
    with pytest.raises(HmdfError):
        build_model(cfg)


def test_valid_edge_configs_pass():
    """SPEC §11: three M on 8×8 is fine (1×1 left); G after M; T = 1."""
    ModelConfig(cfg=[8, "M", "M", "M"], input_size=(8, 8), T=1).validate()
    ModelConfig(cfg=[8, "M", 8, "G"], input_size=(4, 4)).validate()
    ModelConfig(cfg=[8192, "M"], T=1024).validate()  # the documented bounds themselves
    ModelConfig(arch="resnet18", width=1024).validate()


def test_parse_vgg_cfg():
    """SPEC §11: '64,128,M,256' → [64, 128, 'M', 256]; bad entries are named in the error."""
    assert parse_vgg_cfg("64, 128,m,256,G") == [64, 128, "M", 256, "G"]
    for bad, entry in (("64,x,M", "'x'"), ("64,,M", "''"), ("64,0", "'0'"), ("64,-8", "'-8'"), ("64,1.5", "'1.5'")):
        with pytest.raises(HmdfError, match=f"bad model cfg entry {entry}"):
            parse_vgg_cfg(bad)


def test_arch_from_name():
    """SPEC §11: model names and VGG cfg strings."""
    assert arch_from_name("VGG11") == ("vgg", [64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])
    assert arch_from_name("resnet19") == ("resnet19", [])
    assert arch_from_name("16,32,M,32") == ("vgg", [16, 32, "M", 32])
    with pytest.raises(HmdfError, match="unknown model 'alexnet'"):
        arch_from_name("alexnet")
    with pytest.raises(HmdfError, match="bad model cfg entry"):
        arch_from_name("16,M,foo")


@pytest.mark.parametrize("case", ["vgg-1bit-4bit-membn-seca2-max", "resnet34-1.5bit-imagenet", "vgg-events-1bit-qstem"])
def test_config_dict_round_trip(case):
    """SPEC §11 (the config that rebuilds an architecture): to_dict → JSON → from_dict gives back an equal
    config, input_size a tuple again."""
    kw = dict(CASES[case])
    kw.pop("static", None)
    cfg = ModelConfig(T=3, num_classes=7, width=4, **kw)
    d = json.loads(json.dumps(cfg.to_dict()))
    back = ModelConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.input_size, tuple)


def test_from_dict_rejects_unknown_keys_and_invalid_values():
    """SPEC §11 (config storage): unknown keys are named in the error; loaded values are validated."""
    d = ModelConfig().to_dict()
    with pytest.raises(HmdfError, match="unknown keys: colour, depth"):
        ModelConfig.from_dict({**d, "depth": 3, "colour": 1})
    with pytest.raises(HmdfError, match="T must be at least 1"):
        ModelConfig.from_dict({**d, "T": 0})
