"""`hmdf import --from hdlif`: checkpoints of the paper's reference code (docs/import-hdlif.md).

The checkpoints here are synthetic: built from the documented reference key layout (HDLIF-IMPORT
notes, "Modules and their keys") with random values, at full size. The imported network is then
compared with an INDEPENDENT re-implementation of the documented reference forward, written below
as plain torch functions over the reference state_dict (conv, BN, the neuron with σ(v_th), σ(alpha),
PPR and Mem-BN, SECA, the reference quantizers with sign(0) = 0). Nothing in this re-implementation
comes from hmdf. BN statistics are first measured on the test input (so currents are of order 1 and
neurons fire), and the comparison checks that they do. Comparisons run in float64, so 4-bit codes
and LIF spikes cannot flip on float rounding.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from hmdf_deploy.cli.importer import import_checkpoint
from hmdf_deploy.cli.main import app as hmdf_app
from hmdf_deploy.data import load_dataset
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.importers import hdlif
from hmdf_deploy.training import load_run_config, load_trained

runner = CliRunner()
app = typer.Typer()
app.command("import")(import_checkpoint)


@app.callback()
def _root() -> None:
    """A small app around the command, as `hmdf` registers it."""


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ============================================================================ the reference layout
STAGES = {  # blocks per stage layer1..layer4 and widths
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)),
    "resnet34": ((3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet19": ((0, 3, 3, 2), (128, 128, 256, 512)),
}
VGG11 = ((64,), (128, "M"), (256, 256, "M"), (512, 512, "M"), (512, 512, "M"))


class Layout:
    """Builds a reference state_dict key by key, in the reference modules' registration order."""

    def __init__(self, T: int, *, ternary: bool, fp: bool = False, lif: bool = False, mem_bn: bool = False,
                 seed: int = 0) -> None:
        self.T, self.ternary, self.fp, self.lif, self.mem_bn = T, ternary, fp, lif, mem_bn
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, torch.Tensor] = {}
        self.quantized: set[str] = set()  # prefixes of quantized convs / linears

    def randn(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g)

    def conv(self, prefix: str, cout: int, cin: int, k: int, quantized: bool = True) -> None:
        w = self.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
        w[w == 0] = 1e-3  # torch's normal sampler returns an exact 0 about once in 2^24 draws
        self.sd[f"{prefix}.weight"] = w
        if quantized and not self.fp:
            self.quantized.add(prefix)
            if self.ternary:
                w.view(-1)[:3] = torch.tensor([1.5, -2.0, 1.2])  # exercise the clip to [-1, 1]
                self.sd[f"{prefix}.weight_clip_val"] = torch.tensor([-1.0, 1.0])

    def linear(self, prefix: str, cout: int, cin: int, quantized: bool = False, bias: bool = True) -> None:
        w = self.randn(cout, cin) / cin ** 0.5
        w[w == 0] = 1e-3
        self.sd[f"{prefix}.weight"] = w
        if quantized and not self.fp:
            self.quantized.add(prefix)
            if self.ternary:
                self.sd[f"{prefix}.weight_clip_val"] = torch.tensor([-1.0, 1.0])
        if bias:
            self.sd[f"{prefix}.bias"] = 0.1 * self.randn(cout)

    def bn(self, prefix: str, c: int) -> None:
        self.sd[f"{prefix}.weight"] = torch.empty(c).uniform_(0.5, 1.1, generator=self.g)
        self.sd[f"{prefix}.bias"] = 0.3 * self.randn(c) + 0.2
        self.sd[f"{prefix}.running_mean"] = torch.zeros(c)
        self.sd[f"{prefix}.running_var"] = torch.ones(c)
        self.sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100, dtype=torch.int64)

    def neuron(self, prefix: str, c: int, parallel: bool = False) -> None:
        if self.lif:  # LIFNeuron: alpha, then v_th
            self.sd[f"{prefix}.alpha"] = self.randn(self.T)
            self.sd[f"{prefix}.v_th"] = 0.5 * self.randn(self.T)
            return
        self.sd[f"{prefix}.v_th"] = 0.5 * self.randn(self.T)
        if parallel:  # v_th[1:] stay at their initial 0: the reference never uses them
            self.sd[f"{prefix}.v_th"][1:] = 0
            return
        self.sd[f"{prefix}.alpha"] = self.randn(self.T)
        if self.mem_bn:
            self.sd[f"{prefix}.bn_ratio"] = self.randn(self.T)
            self.sd[f"{prefix}.mem_ratio"] = self.randn(self.T)
            for t in range(self.T):
                self.bn(f"{prefix}.bn.{t}", c)

    def seca(self, prefix: str) -> None:
        self.sd[f"{prefix}.conv.weight"] = 0.5 * self.randn(1, 1, 5)
        self.sd[f"{prefix}.conv.bias"] = 0.2 * self.randn(1)


def resnet_checkpoint(net: str, classes: int, T: int, *, ternary: bool, parallel: bool = False, mem_bn: bool = False,
                      seca: bool = False, fp: bool = False, lif: bool = False, in_channels: int = 3,
                      stem: int = 3, seed: int = 0) -> Layout:
    L = Layout(T, ternary=ternary, fp=fp, lif=lif, mem_bn=mem_bn, seed=seed)
    depths, widths = STAGES[net]
    L.conv("conv1", widths[0], in_channels, stem, quantized=False)
    L.bn("bn1", widths[0])
    cin = widths[0]
    for s, (depth, cout) in enumerate(zip(depths, widths)):
        for j in range(depth):
            p = f"layer{s + 1}.{j}"
            L.neuron(f"{p}.act1", cin)
            L.conv(f"{p}.conv1.0", cout, cin, 3)
            L.bn(f"{p}.conv1.1", cout)
            if seca:
                L.seca(f"{p}.attn1")
            L.neuron(f"{p}.act2", cout, parallel=parallel)
            L.conv(f"{p}.conv2.0", cout, cout, 3)
            L.bn(f"{p}.conv2.1", cout)
            if seca:
                L.seca(f"{p}.attn2")
            if cin != cout:
                L.conv(f"{p}.downsample.0", cout, cin, 1)
                L.bn(f"{p}.downsample.1", cout)
            cin = cout
    if net == "resnet19":
        L.linear("fc.0", cin // 2, cin, quantized=True)
        L.neuron("fc.1", cin // 2)
        L.linear("fc.2", classes, cin // 2)
    else:
        L.linear("fc", classes, cin)
    return L


def vgg_checkpoint(T: int, *, ternary: bool, mem_bn: bool = False, seca: bool = False, seed: int = 0) -> Layout:
    L = Layout(T, ternary=ternary, mem_bn=mem_bn, seed=seed)
    cin = 2
    for s, stage in enumerate(VGG11):
        i = 0
        for entry in stage:
            p = f"layer{s + 1}"
            if entry == "M":
                i += 1
                continue
            L.conv(f"{p}.{i}", entry, cin, 3)  # quantized, the first one too (event input)
            L.bn(f"{p}.{i + 1}", entry)
            if seca:
                L.seca(f"{p}.{i + 2}")
            n = i + 3 if seca else i + 2
            L.neuron(f"{p}.{n}", entry)
            i, cin = n + 1, entry
    L.linear("classifier", 10, 512 * 3 * 3)
    return L


# ============================================================================ the reference forward
class ReferenceForward:
    """The documented eval-mode forward of the reference code, over its own state_dict.

    `calibrate=True` sets each BN's running statistics from the data the first time the BN is
    reached (then perturbs them), writing into the state_dict, so that the random network runs in
    a sensible range. Every BN is fixed before its first use, so the same pass is already the
    eval-mode forward of the final state_dict.
    """

    def __init__(self, L: Layout, *, spikes4: bool, seca_variant: int = 0, calibrate: bool = False) -> None:
        self.sd, self.L, self.T = L.sd, L, L.T
        self.spikes4, self.seca_variant, self.calibrate = spikes4, seca_variant, calibrate
        self.g = torch.Generator().manual_seed(99)
        self.v: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}  # quantized once: the weights are constant in eval
        self.calibrated: set[str] = set()
        self.fired = self.seen = 0

    # -------------------------------------------------------------- layers
    def weight(self, prefix: str) -> torch.Tensor:
        if prefix not in self.weights:
            self.weights[prefix] = self.quantize(prefix)
        return self.weights[prefix]

    def quantize(self, prefix: str) -> torch.Tensor:
        w = self.sd[f"{prefix}.weight"].double()
        if prefix not in self.L.quantized:
            return w
        clip = self.sd.get(f"{prefix}.weight_clip_val")
        if clip is None:  # binary: per output channel α = mean|W[o]|, sign(0) = 0
            alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
            return alpha * torch.sign(w)
        wc = torch.clamp(w, float(clip[0]), float(clip[1]))  # ternary TWN, one α per layer
        delta = 0.7 * wc.abs().mean()
        pos, neg = (wc > delta).double(), (wc < -delta).double()
        alpha = (wc.abs() * (pos + neg)).sum() / (pos + neg).sum()
        return alpha * (pos - neg)

    def bn(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        sd = self.sd
        if self.calibrate and prefix not in self.calibrated:
            self.calibrated.add(prefix)
            dims = [d for d in range(x.dim()) if d != 1]
            mean, var = x.mean(dim=dims), x.var(dim=dims)
            c = mean.numel()
            noise = torch.randn(c, generator=self.g, dtype=x.dtype)
            sd[f"{prefix}.running_mean"] = (mean + 0.1 * var.sqrt() * noise).float()
            scale = torch.empty(c, dtype=x.dtype).uniform_(0.8, 1.25, generator=self.g)
            sd[f"{prefix}.running_var"] = (var * scale).float()
        return F.batch_norm(x, sd[f"{prefix}.running_mean"].double(), sd[f"{prefix}.running_var"].double(),
                            sd[f"{prefix}.weight"].double(), sd[f"{prefix}.bias"].double(), False, 0.0, 1e-5)

    def conv(self, x, prefix, stride=1, padding=1):
        return F.conv2d(x, self.weight(prefix), stride=stride, padding=padding)

    def seca(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3)).unsqueeze(1)
        gate = torch.sigmoid(F.conv1d(pooled, self.sd[f"{prefix}.conv.weight"].double(),
                                      self.sd[f"{prefix}.conv.bias"].double(), padding=2))
        return x * gate.squeeze(1)[:, :, None, None]

    def neuron(self, prefix: str, i: torch.Tensor, t: int) -> torch.Tensor:
        sd, sig = self.sd, torch.sigmoid
        v_th = sd[f"{prefix}.v_th"].double()
        if self.L.lif:  # θ = σ(v_th)+0.5, binary spike of height θ, subtract reset
            theta = sig(v_th[t]) + 0.5
            m = i if prefix not in self.v else sig(sd[f"{prefix}.alpha"].double()[t]) * self.v[prefix] + i
            s = (m >= theta).double() * theta
            self.v[prefix] = m - s
        elif f"{prefix}.alpha" not in sd:  # parallel: the step counter never advances → v_th[0]
            s = torch.relu(i - sig(v_th[0]))
        else:
            m = i if prefix not in self.v else sig(sd[f"{prefix}.alpha"].double()[t]) * self.v[prefix] + i
            if f"{prefix}.bn_ratio" in sd:  # Mem-BN: σ(bn_ratio)·BN_t(m) + σ(mem_ratio)·m
                m = (sig(sd[f"{prefix}.bn_ratio"].double()[t]) * self.bn(m, f"{prefix}.bn.{t}")
                     + sig(sd[f"{prefix}.mem_ratio"].double()[t]) * m)
            s = torch.relu(m - sig(v_th[t]))
            self.v[prefix] = m - s  # PPR: min(m, θ); the reset uses the unquantized spike
        if self.spikes4 and not self.L.lif:
            s = torch.clamp(torch.round(4 * s), 0, 15) / 4
        self.fired += int((s != 0).sum())
        self.seen += s.numel()
        return s

    # -------------------------------------------------------------- networks
    def resnet(self, net: str, x: torch.Tensor, t: int) -> torch.Tensor:
        sd = self.sd
        stem = sd["conv1.weight"]
        x = self.bn(F.conv2d(x, stem.double(), stride=2 if stem.shape[-1] == 7 else 1,
                             padding=stem.shape[-1] // 2), "bn1")
        if stem.shape[-1] == 7:
            x = F.max_pool2d(x, 3, 2, 1)
        depths, _ = STAGES[net]
        first = next(s for s, d in enumerate(depths) if d)
        for s, depth in enumerate(depths):
            for j in range(depth):
                p = f"layer{s + 1}.{j}"
                stride = 2 if (j == 0 and s > first) else 1
                down = f"{p}.downsample.0.weight" in sd
                h = self.bn(self.conv(self.neuron(f"{p}.act1", x, t), f"{p}.conv1.0", stride), f"{p}.conv1.1")
                if f"{p}.attn1.conv.weight" in sd:
                    h = self.seca(x + h if self.seca_variant == 2 and not down else h, f"{p}.attn1")
                y = self.bn(self.conv(self.neuron(f"{p}.act2", h, t), f"{p}.conv2.0"), f"{p}.conv2.1")
                if f"{p}.attn2.conv.weight" in sd:
                    y = self.seca(h + y if self.seca_variant == 2 else y, f"{p}.attn2")
                short = self.bn(self.conv(x, f"{p}.downsample.0", stride, 0), f"{p}.downsample.1") if down else x
                x = y + short
        x = x.mean(dim=(2, 3))
        if "fc.0.weight" in sd:
            x = F.linear(x, self.weight("fc.0"), sd["fc.0.bias"].double())
            x = self.neuron("fc.1", x, t)
            return F.linear(x, self.weight("fc.2"), sd["fc.2.bias"].double())
        return F.linear(x, self.weight("fc"), sd["fc.bias"].double())

    def vgg(self, x: torch.Tensor, t: int) -> torch.Tensor:
        for s, stage in enumerate(VGG11):
            i = 0
            for entry in stage:
                p = f"layer{s + 1}"
                if entry == "M":
                    x, i = F.avg_pool2d(x, 2), i + 1
                    continue
                x = self.bn(self.conv(x, f"{p}.{i}"), f"{p}.{i + 1}")
                has_seca = f"{p}.{i + 2}.conv.weight" in self.sd
                if has_seca:
                    x = self.seca(x, f"{p}.{i + 2}")
                n = i + 3 if has_seca else i + 2
                x = self.neuron(f"{p}.{n}", x, t)
                i = n + 1
        return F.linear(x.flatten(1), self.sd["classifier.weight"].double(), self.sd["classifier.bias"].double())

    def run(self, net: str, x: torch.Tensor, static: bool) -> torch.Tensor:
        """(steps, B, classes): one call per step, state reset first; T steps for static input, one
        per frame of x (B, steps, ...) for events."""
        self.v.clear()
        outs = []
        for t in range(self.T if static else x.shape[1]):
            xt = (x if static else x[:, t]).double()
            outs.append(self.vgg(xt, t) if net == "vgg11" else self.resnet(net, xt, t))
        return torch.stack(outs)


# ============================================================================ helpers
#: Event frames fed to the full-size VGG-11 (T = 10): 48×48 convs cost about 1.4 GMAC per step, so
#: the forward check runs the first steps only; they use v_th[t], alpha[t], bn.<t> like any step.
VGG_STEPS = 2


def inputs(net: str, T: int, batch: int = 4, size: int = 8, seed: int = 1):
    """ResNets: a static image (B, 3, size, size), repeated over T; VGG-11: event counts (B, steps, 2, 48, 48)."""
    g = torch.Generator().manual_seed(seed)
    if net == "vgg11":
        return torch.poisson(torch.full((1, VGG_STEPS, 2, 48, 48), 0.3), generator=g), False
    return torch.randn(batch, 3, size, size, generator=g), True


def reference_logits(L: Layout, net: str, x, static: bool, *, spikes4: bool, seca_variant: int = 0):
    """Calibrate BN statistics on x while running the reference forward; asserts the neurons fire."""
    ref = ReferenceForward(L, spikes4=spikes4, seca_variant=seca_variant, calibrate=True)
    out = ref.run(net, x, static)
    rate = ref.fired / ref.seen
    assert 0.02 < rate < 0.9, f"firing rate {rate:.3f}: the comparison would say little"
    return out


def assert_matches(model, x, static: bool, want: torch.Tensor, rtol: float = 1e-6) -> None:
    got = model.double().forward_sequence(x.double(), static=static).detach()
    scale = float(want.abs().max())
    assert scale > 0.1
    assert float((got - want).abs().max()) <= rtol * max(1.0, scale), float((got - want).abs().max())


def save_checkpoint(path: Path, sd: dict, *, container: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {"model": sd, "snn_optimizer": {"state": {}, "param_groups": [{"lr": 0.01}]},
           "snn_scheduler": {"last_epoch": 3}, "snn_epoch": 299, "snn_max_acc1": 0.7861} if container else sd
    torch.save(obj, path)
    return path


def dirname(dataset="cifar100", arch="resnet18", eca=0, mem_bn=False, parallel=False, T=4, ter=True, mode="vanilla"):
    return (f"{dataset}-{arch}-eca_{eca}_mem-bn_{mem_bn}-parallel_{parallel}-T{T}-B64-use_ter_{ter}-{mode}")


def invoke(*args):
    return runner.invoke(app, ["import", *map(str, args)])


def assert_user_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout.strip() == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def convert(L: Layout, **options):
    return hdlif.convert_checkpoint(dict(L.sd), **options)


# ============================================================================ layout self-checks
def test_key_and_parameter_counts_match_the_reference_self_checks(canonical):
    """HDLIF-IMPORT self-checks: 165 / 154 / 66 keys, 11,220,228 and 9,268,906 parameters."""
    L, inferred, model, converted = canonical.L, canonical.inferred, canonical.model, canonical.converted
    assert len(L.sd) == 165
    assert converted.reference_keys == 165 and converted.reference_params == 11_220_228
    c = inferred.config
    assert (c.arch, c.T, c.num_classes, c.weights, c.parallel, c.mem_bn, c.seca, c.stem, c.spikes) == \
        ("resnet18", 4, 100, "1.5bit", True, False, 0, "cifar", "float")
    assert inferred.dataset == "cifar100" and inferred.sources["weights"] == "keys"
    # hmdf's ParallelHMDF holds one threshold logit where the reference stores T: 8 × 3 fewer
    assert sum(p.numel() for p in model.parameters()) == 11_220_228 - 8 * 3
    assert_fixed_points(model, ternary=True)

    binary = resnet_checkpoint("resnet18", 100, 4, ternary=False)
    assert len(binary.sd) == 154
    inferred, model, converted = convert(binary, mode="vanilla", arch="resnet18")
    assert converted.reference_keys == 154 and inferred.config.weights == "1bit"
    assert sum(p.numel() for p in model.parameters()) == converted.reference_params == 11_220_260
    assert_fixed_points(model, ternary=False)

    vgg = vgg_checkpoint(10, ternary=False)
    assert len(vgg.sd) == 66
    inferred, model, converted = convert(vgg, mode="vanilla", arch="vgg11")
    assert converted.reference_keys == 66 and converted.reference_params == 9_268_906
    assert sum(p.numel() for p in model.parameters()) == 9_268_906
    c = inferred.config
    assert (c.arch, c.T, c.in_channels, tuple(c.input_size), c.quantize_stem, inferred.dataset) == \
        ("vgg", 10, 2, (48, 48), True, "dvs-cifar10")


def assert_fixed_points(model, ternary: bool) -> None:
    """The stored 1-bit / ternary weights are the reference's effective weights, and hmdf's own
    quantizer (sign(0) = +1) maps them to themselves."""
    from hmdf_deploy.quant import QConv2d, QLinear, quantize_weight

    layers = [m for m in model.modules() if isinstance(m, (QConv2d, QLinear)) and m.weights != "fp32"]
    assert layers
    for m in layers:
        w = m.weight.detach()
        assert torch.allclose(quantize_weight(w, m.weights), w, rtol=1e-6, atol=0)
        assert len(w.unique()) <= (3 if ternary else 2 * w.shape[0])


# ============================================================================ forward equivalence
def write_cifar100(root: Path, n: int = 2) -> Path:
    """A tiny CIFAR-100 in the python-pickle layout `hmdf_deploy.data` reads (random images)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("train", "test"):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [1] * n}
        (folder / name).write_bytes(pickle.dumps(batch))
    return root


@pytest.fixture(scope="module")
def canonical(_one_thread, tmp_path_factory):
    """The authors' canonical run: ResNet-18, CIFAR-100, ternary, parallel, T=4 (float spikes).

    Its parallel neurons get non-zero v_th[1:], which the reference never reads (its parallel
    neurons use v_th[0] at every step): the import must ignore them too. The inputs are the test
    split of a tiny CIFAR-100 on disk, as `hmdf_deploy.data` loads it, so that `hmdf quantize`
    later checks the network on the very images its BN statistics were measured on. (Float spikes:
    with 4-bit spikes, `hmdf quantize`'s float32 check of a full-size random ResNet-18 sees 4-bit
    codes flip at rounding ties and cascade; the trained network in float32 differs as much from
    itself in float64. The 4-bit forward is checked in float64 below.)
    """
    L = resnet_checkpoint("resnet18", 100, 4, ternary=True, parallel=True, seed=1)
    for k in [k for k in L.sd if k.endswith("act2.v_th")]:
        L.sd[k][1:] = L.randn(3)
    data = write_cifar100(tmp_path_factory.mktemp("cifar"))
    _, test, _ = load_dataset("cifar100", T=4, data_dir=data)
    want = reference_logits(L, "resnet18", test.x, True, spikes4=False)
    inferred, model, converted = convert(L, mode="vanilla")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return SimpleNamespace(L=L, x=test.x, want=want, data=data, inferred=inferred, model=model,
                           converted=converted, weights=weights)


def test_canonical_ternary_parallel_reproduces_the_reference_forward(canonical):
    L, model, converted = canonical.L, canonical.model, canonical.converted
    assert [w for w in converted.warnings if "v_th[1:]" in w] == converted.warnings != []
    assert model.blocks[0].act2.b.shape == (1,)
    assert model.blocks[0].act2.b.item() == L.sd["layer1.0.act2.v_th"][0].item()
    assert_matches(copy.deepcopy(model), canonical.x, True, canonical.want)


CASES = {
    # name: (builder, options, 4-bit spikes, SECA variant)
    "resnet18-ternary-parallel-4bit": (
        lambda: resnet_checkpoint("resnet18", 100, 4, ternary=True, parallel=True, seed=18),
        dict(mode="compression"), True, 0),
    "resnet18-binary-membn-seca2": (
        lambda: resnet_checkpoint("resnet18", 10, 4, ternary=False, mem_bn=True, seca=True, seed=2),
        dict(mode="vanilla", seca=2, arch="resnet18"), False, 2),
    "resnet19-ternary-parallel-membn-seca1-4bit": (
        lambda: resnet_checkpoint("resnet19", 100, 3, ternary=True, parallel=True, mem_bn=True, seca=True, seed=3),
        dict(mode="compression", seca=1), True, 1),
    "resnet18-lif-baseline": (
        lambda: resnet_checkpoint("resnet18", 10, 4, ternary=False, fp=True, lif=True, seed=4),
        dict(mode="vanilla", arch="resnet18_lif"), False, 0),
    "vgg11-binary": (
        lambda: vgg_checkpoint(10, ternary=False, seed=5), dict(mode="vanilla", arch="vgg11"), False, 0),
    "vgg11-ternary-membn-seca1-4bit": (
        lambda: vgg_checkpoint(10, ternary=True, mem_bn=True, seca=True, seed=6),
        dict(mode="compression", seca=1), True, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_imported_network_reproduces_the_reference_forward(case):
    build, options, spikes4, variant = CASES[case]
    L = build()
    net = "vgg11" if case.startswith("vgg") else case.split("-")[0]
    x, static = inputs(net, L.T)
    if case == "resnet18-binary-membn-seca2":  # a whole 1-bit channel of zeros is exact (α = 0)
        L.sd["layer2.0.conv1.0.weight"][5].zero_()
    want = reference_logits(L, net, x, static, spikes4=spikes4, seca_variant=variant)
    inferred, model, converted = convert(L, **options)
    assert converted.reference_keys == len(L.sd)
    assert converted.warnings == []
    assert_matches(model, x, static, want)


# ============================================================================ sign(0)
def test_binary_zero_weights_are_refused_or_imported_inexactly_on_request():
    L = resnet_checkpoint("resnet18", 10, 4, ternary=False, seed=9)
    L.sd["layer1.1.conv2.0.weight"][3, 0, 1, 1] = 0.0
    L.sd["layer1.1.conv2.0.weight"][3, 7, 0, 2] = 0.0
    refusal = r"2 latent 1-bit weights are exactly 0 .*layer1\.1\.conv2\.0\.weight.*--allow-sign-zero"
    with pytest.raises(HmdfError, match=refusal):
        convert(L, mode="vanilla", arch="resnet18")
    x, static = inputs("resnet18", 4)
    want = reference_logits(L, "resnet18", x, static, spikes4=False)
    _, model, converted = convert(L, mode="vanilla", arch="resnet18", allow_sign_zero=True)
    assert any("imported as +α" in w for w in converted.warnings)
    w = model.blocks[1].conv2.weight.detach()
    alpha = L.sd["layer1.1.conv2.0.weight"][3].abs().mean()
    assert torch.isclose(w[3, 0, 1, 1], alpha)  # +α where the reference has 0
    got = model.double().forward_sequence(x.double(), static=static).detach()
    assert 0 < float((got - want).abs().max()) < 0.1 * float(want.abs().max())  # close, not exact


# ============================================================================ run directory, fold, CLI
def test_cli_import_then_hmdf_quantize(canonical, tmp_path, assert_same_weights):
    """`hmdf import` writes an ordinary run directory: `hmdf quantize` folds and checks it unchanged."""
    L = canonical.L
    src = save_checkpoint(tmp_path / dirname(parallel=True) / "cifar100_snn_best_checkpoint.pth",
                          {f"module.{k}": v for k, v in L.sd.items()})
    out, data = tmp_path / "run", canonical.data
    result = invoke(src, "--from", "hdlif", "-o", out, "--data-dir", data, "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: 8 parallel neurons have non-zero v_th[1:]")
    report = json.loads(result.stdout)
    assert report["reference_keys"] == 165 and report["reference_params"] == 11_220_228
    assert report["epoch"] == 299 and report["max_acc1"] == pytest.approx(0.7861)
    assert report["inferred"]["spikes"] == "directory name" and report["model"]["spikes"] == "float"
    config = json.loads((out / "config.json").read_text())
    assert set(config) >= {"hmdf_version", "model", "train", "data"}
    assert config["train"]["dataset"] == "cifar100" and config["train"]["data_dir"] == str(data)
    assert config["data"]["num_classes"] == 100 and config["import"]["from"] == "hdlif"
    model_config, train_config = load_run_config(out)
    assert train_config.dataset == "cifar100" and model_config.parallel and model_config.weights == "1.5bit"
    # the very weights whose forward matched the reference (canonical test)
    assert_same_weights(load_trained(out).state_dict(), canonical.weights)

    quantized = runner.invoke(hmdf_app, ["quantize", str(out), "--calib", "2", "--json"])
    assert quantized.exit_code == 0, quantized.output
    check = json.loads(quantized.stdout)["check"]
    assert check["passed"] and check["prediction_agreement"] == 1.0 and check["samples"] == 2
    assert (out / "model.hmdf").is_file()

    again = invoke(src, "--from", "hdlif", "-o", out)
    assert_user_error(again, "already holds a run")


def test_cli_human_output_and_data_dir(tmp_path):
    L = vgg_checkpoint(10, ternary=False, seed=11)
    folder = tmp_path / dirname("CIFAR10DVS", "vgg11", T=10, ter=False)
    src = save_checkpoint(folder / "x_snn_best_checkpoint.pth", L.sd)
    result = invoke(src, "--from", "hdlif", "-o", tmp_path / "run", "--data-dir", tmp_path / "dvs")
    assert result.exit_code == 0, result.output
    assert "66 keys" in result.stdout and "9,268,906" in result.stdout and "next: hmdf quantize" in result.stdout
    _, train_config = load_run_config(tmp_path / "run")
    assert train_config.dataset == "dvs-cifar10" and train_config.data_dir == str(tmp_path / "dvs")


# ============================================================================ refusals
@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """Checkpoint files shared by the refusal tests (ResNet-18 binary and ternary with SECA)."""
    root = tmp_path_factory.mktemp("ckpt")
    binary = resnet_checkpoint("resnet18", 10, 4, ternary=False, seed=12)
    seca = resnet_checkpoint("resnet18", 10, 4, ternary=True, seca=True, seed=13)
    return {
        "binary": save_checkpoint(root / "plain" / "binary.pth", binary.sd, container=False),
        "seca": save_checkpoint(root / "plain" / "seca.pth", seca.sd),
        "named": save_checkpoint(root / dirname("cifar10", ter=False) / "a_snn_best_checkpoint.pth", binary.sd),
        "binary_sd": binary.sd,
        "root": root,
    }


@pytest.mark.parametrize("args, fragments", [
    (("binary",), ("--mode vanilla or --mode compression", "--arch resnet18", "--arch resnet18_fp")),
    (("seca",), ("--mode", "--seca 1 or --seca 2")),
    (("seca", "--mode", "vanilla"), ("--seca 1 or --seca 2",)),
    (("binary", "--mode", "vanilla", "--arch", "resnet34"), ("--arch resnet34 contradicts", "resnet18")),
    (("binary", "--mode", "vanilla", "--arch", "resnet18", "--seca", "2"), ("--seca 2 contradicts", "no SECA")),
    (("seca", "--mode", "vanilla", "--arch", "resnet18_fp", "--seca", "1"), ("full-precision", "ternary")),
    (("binary", "--mode", "fast", "--arch", "resnet18"), ("--mode 'fast'",)),
    (("binary", "--mode", "vanilla", "--arch", "resnet18", "--dataset", "cifar100"), ("cifar100", "10 classes")),
    (("binary", "--mode", "vanilla", "--arch", "alexnet"), ("--arch 'alexnet'",)),
    (("named", "--mode", "compression"), ("--mode compression contradicts the directory name",)),
    (("named", "--arch", "resnet18_lif"), ("--arch resnet18_lif contradicts the directory name",)),
])
def test_missing_or_contradicting_options_are_one_line_errors(small_files, tmp_path, args, fragments):
    result = invoke(small_files[args[0]], "--from", "hdlif", "-o", tmp_path / "run", *args[1:])
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_directory_name_contradicting_the_keys_is_an_error(small_files):
    sd = small_files["binary_sd"]
    src = save_checkpoint(small_files["root"] / dirname("cifar10", T=4, ter=True) / "b_snn_best_checkpoint.pth", sd)
    assert_user_error(invoke(src, "--from", "hdlif", "-o", src.parent / "run"), "use_ter True", "show False")
    src = save_checkpoint(small_files["root"] / dirname("cifar10", T=6, ter=False) / "c_snn_best_checkpoint.pth", sd)
    assert_user_error(invoke(src, "--from", "hdlif", "-o", src.parent / "run"), "says T 6")


def test_unknown_source_and_wrong_architecture_are_refused(small_files, tmp_path):
    assert_user_error(invoke(small_files["binary"], "--from", "spikingjelly", "-o", tmp_path / "r"),
                      "--from 'spikingjelly'")
    g = torch.Generator().manual_seed(0)
    other = save_checkpoint(tmp_path / "other.pth",
                            {f"encoder.{i}.weight": torch.randn(4, 4, generator=g) for i in range(5)})
    assert_user_error(invoke(other, "--from", "hdlif", "-o", tmp_path / "r", "--mode", "vanilla"),
                      "not an HD_LIF checkpoint", "encoder.0.weight")


def test_missing_and_unexpected_keys_are_all_named(small_files, tmp_path):
    sd = dict(small_files["binary_sd"])
    del sd["layer3.1.act1.alpha"], sd["layer4.0.downsample.1.running_var"]
    sd["layer3.1.extra.weight"] = torch.zeros(3)
    sd["layer1.0.conv1.0.weight"] = torch.zeros(64, 64, 1, 1)
    src = save_checkpoint(tmp_path / "broken.pth", sd)
    result = invoke(src, "--from", "hdlif", "-o", tmp_path / "r", "--mode", "vanilla", "--arch", "resnet18")
    line = assert_user_error(result, "missing 2", "layer3.1.act1.alpha", "layer4.0.downsample.1.running_var",
                             "unexpected 1", "layer3.1.extra.weight", "wrong shape 1", "layer1.0.conv1.0.weight")
    assert "ResNet-18 1-bit" in line
    many = {k: v for k, v in small_files["binary_sd"].items() if not k.startswith("layer2.")}
    with pytest.raises(HmdfError, match=r"blocks in layer1..layer4"):
        hdlif.convert_checkpoint(many, mode="vanilla", arch="resnet18")
    partial = {k: v for k, v in small_files["binary_sd"].items() if not k.endswith("num_batches_tracked")}
    with pytest.raises(HmdfError, match=r"missing 20: .*\(\+14 more\)"):
        hdlif.convert_checkpoint(partial, mode="vanilla", arch="resnet18")


def test_truncated_and_code_carrying_files_are_refused(small_files, tmp_path):
    data = small_files["binary"].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 3])
    assert_user_error(invoke(truncated, "--from", "hdlif", "-o", tmp_path / "r"), "not a readable PyTorch checkpoint")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert_user_error(invoke(empty, "--from", "hdlif", "-o", tmp_path / "r"), "not a readable PyTorch checkpoint")
    assert_user_error(invoke(tmp_path / "absent.pth", "--from", "hdlif", "-o", tmp_path / "r"), "not found")

    custom = tmp_path / "custom.pth"
    torch.save({"model": _Custom()}, custom)
    assert_user_error(invoke(custom, "--from", "hdlif", "-o", tmp_path / "r"),
                      "not a weights-only checkpoint", "_Custom")

    marker = tmp_path / "pwned"
    for name, dump in (("evil.pth", lambda p: torch.save({"model": _Evil(marker)}, p)),
                       ("evil.pkl", lambda p: p.write_bytes(pickle.dumps({"model": _Evil(marker)}, protocol=2)))):
        path = tmp_path / name
        dump(path)
        assert_user_error(invoke(path, "--from", "hdlif", "-o", tmp_path / "r"),
                          "not a weights-only checkpoint", "system")
    assert not marker.exists()  # nothing from the file ran
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, holds", [
    (lambda: torch.zeros(3), "a single tensor of shape (3,)"),  # a tensor has no truth value
    (lambda: {"model": {}}, "an empty dict"),
    (lambda: [torch.zeros(1)], "a list"),
    (lambda: {"conv.weight": torch.zeros(1), "epoch": 3}, "a dict whose values are not all tensors"),
], ids=["tensor", "empty-model", "list", "mixed-dict"])
def test_a_file_without_a_state_dict_is_one_line(tmp_path, content, holds):
    path = tmp_path / "t.pth"
    torch.save(content(), path)
    line = assert_user_error(invoke(path, "--from", "hdlif", "-o", tmp_path / "r"))
    assert line == (f"error: {path} is neither the reference's checkpoint (a dict with a 'model' state_dict) "
                    f"nor a bare state_dict of tensors: it holds {holds}")
    assert not (tmp_path / "r").exists()


class _Custom:
    def __init__(self) -> None:
        self.weight = torch.zeros(2)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ============================================================================ inference, library level
def test_inference_sources_and_refusals():
    L = resnet_checkpoint("resnet34", 1000, 2, ternary=True, stem=7, seed=14)
    inferred = hdlif.infer(L.sd, mode="vanilla")
    c = inferred.config
    assert (c.arch, c.stem, tuple(c.input_size), inferred.dataset) == ("resnet34", "imagenet", (224, 224), "imagenet")
    assert any("no imagenet loader" in n for n in inferred.notes)

    dn = hdlif.parse_dir_name(dirname("cifar100", "resnet19", eca=2, mem_bn=True, parallel=True, mode="compression"))
    assert (dn.arch, dn.eca, dn.mem_bn, dn.parallel, dn.T, dn.ternary, dn.mode) == \
        ("resnet19", 2, True, True, 4, True, "compression")
    assert hdlif.parse_dir_name("my-run") is None
    assert hdlif.parse_arch("ResNet18_LIF_stbp") == ("resnet18", "lif") and hdlif.parse_arch("vgg11") == ("vgg11", None)

    lif = resnet_checkpoint("resnet18", 10, 4, ternary=True, lif=True, seed=15)
    with pytest.raises(HmdfError, match="alpha before v_th.*--arch"):
        hdlif.infer(lif.sd, mode="vanilla")
    assert hdlif.infer(lif.sd, mode="vanilla", arch="resnet18_lif").config.neuron == "lif"
    with pytest.raises(HmdfError, match="LIF baseline in compression mode"):
        hdlif.infer(lif.sd, mode="compression", arch="resnet18_lif")

    vgg = vgg_checkpoint(10, ternary=True, seca=True, seed=16)
    with pytest.raises(HmdfError, match="SECA-II in the reference VGG-11 is not documented"):
        hdlif.infer(vgg.sd, mode="vanilla", seca=2)
    bad_clip = resnet_checkpoint("resnet18", 10, 4, ternary=True, seed=17)
    bad_clip.sd["layer2.1.conv2.0.weight_clip_val"] = torch.tensor([-0.5, 0.5])
    with pytest.raises(HmdfError, match=r"layer2\.1\.conv2\.0\.weight_clip_val is \(-0.5, 0.5\)"):
        convert(bad_clip, mode="vanilla")
