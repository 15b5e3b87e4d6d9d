"""Fold a trained network into a DeployModel (SPEC §3.1, §5, §6).

Per synapse: the weight becomes integer codes and α, and α, the conv BN, the 1/4 of 4-bit input
codes and any bias merge into one affine (scale, shift). Per neuron: λ_t, θ_t through their
sigmoids, and Mem-BN folded exactly (SPEC §3.1): k_t = σ(p_t)·g_t + σ(q_t), c_t = σ(p_t)·h_t,
λ̂_t = k_t·λ_t, input k_t·I_t + c_t, threshold unchanged. The input affine (k, c) then merges
into the synapse before the neuron wherever that synapse feeds nothing else (`merge_input_affines`).

Folding is done in float64 (α included) and stored in float32, or kept in float64 (`dtype`) so
that `hmdf quantize` can check the fold itself exactly before it is rounded for storage.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from hmdf_deploy.deploy.graph import (
    SECA, Add, Conv, DeployModel, Flatten, Linear, Neuron, Node, Pool, Synapse,
)
from hmdf_deploy.models import ModelConfig, SpikingNet
from hmdf_deploy.models.resnet import BasicBlock, ResNet
from hmdf_deploy.models.vgg import VGG, ConvUnit
from hmdf_deploy.neurons import HMDFNeuron, LIFNeuron, ParallelHMDF, SPIKE_LEVELS
from hmdf_deploy.quant import QConv2d, QLinear, weight_codes
from hmdf_deploy.seca import SECA as SECAModule

F64 = torch.float64


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode BN as g·x + h per channel: g = γ/√(var+ε), h = β − g·μ (SPEC §3.1)."""
    g = bn.weight.detach().to(F64) / torch.sqrt(bn.running_var.to(F64) + bn.eps)
    return g, bn.bias.detach().to(F64) - g * bn.running_mean.to(F64)


class _Builder:
    """Emits nodes in execution order and remembers the value scale of each output (1 or 1/4)."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.scale: dict[str, float] = {"input": 1.0}

    def add(self, node: Node, scale: float | None = None) -> str:
        self.nodes.append(node)
        self.scale[node.name] = self.scale[node.inputs[0]] if scale is None else scale
        return node.name

    def synapse(self, name: str, layer: QConv2d | QLinear, src: str, bn: nn.Module | None = None) -> str:
        """acc = W_int ⊛ x; scale = α·g·s_in, shift = h (+ g·bias)."""
        w = layer.weight.detach()
        if layer.weights == "fp32":
            weight, alpha = w.to(F64).clone(), torch.ones(w.shape[0], dtype=F64)
        else:  # α in float64, as the check computes the trained network (quantize.check_equivalence)
            codes, alpha = weight_codes(w.to(F64), layer.weights)
            weight, alpha = codes.to(torch.int8), alpha.detach().to(F64)
        bias = layer.bias.detach().to(F64) if layer.bias is not None else torch.zeros(w.shape[0], dtype=F64)
        g, h = bn_affine(bn) if bn is not None else (torch.ones_like(bias), torch.zeros_like(bias))
        scale = (alpha * g * self.scale[src]).unsqueeze(0)
        shift = (g * bias + h).unsqueeze(0)
        if isinstance(layer, QConv2d):
            node = Conv(name, [src], layer.weights, weight, scale, shift, stride=layer.stride[0], padding=layer.padding[0])
        else:
            node = Linear(name, [src], layer.weights, weight, scale, shift)
        return self.add(node, 1.0)

    def neuron(self, name: str, module: nn.Module, src: str, T: int) -> str:
        node = fold_neuron(name, module, src, T)
        return self.add(node, 1.0 / SPIKE_LEVELS if node.spikes == "4bit" else 1.0)

    def seca(self, name: str, module: SECAModule, src: str, residual: str | None) -> str:
        node = SECA(name, [src] if residual is None else [src, residual],
                    module.conv.weight.detach().to(F64).reshape(-1).clone(),
                    module.conv.bias.detach().to(F64).clone(),
                    residual_scale=1.0 if residual is None else self.scale[residual])
        return self.add(node, 1.0)


def fold_neuron(name: str, module: nn.Module, src: str, T: int) -> Neuron:
    """One trained neuron as a deploy Neuron, Mem-BN folded into (λ̂, k, c) (SPEC §3.1)."""
    if isinstance(module, ParallelHMDF):
        theta = torch.sigmoid(module.b.detach().to(F64))
        return Neuron(name, [src], "parallel", module.spikes, theta)
    if isinstance(module, LIFNeuron):
        leak = torch.sigmoid(module.a.detach().to(F64)).unsqueeze(1)
        theta = torch.sigmoid(module.b.detach().to(F64)) + 0.5
        return Neuron(name, [src], "lif", "float", theta, leak)
    if not isinstance(module, HMDFNeuron):
        raise TypeError(f"cannot fold neuron {name!r} of type {type(module).__name__}")
    leak = torch.sigmoid(module.a.detach().to(F64)).unsqueeze(1)  # (T, 1)
    theta = torch.sigmoid(module.b.detach().to(F64))
    node = Neuron(name, [src], "hmdf", module.spikes, theta, leak)
    if module.norm is not None:
        p = torch.sigmoid(module.norm.p.detach().to(F64))
        q = torch.sigmoid(module.norm.q.detach().to(F64))
        gh = [bn_affine(bn) for bn in module.norm.bn]
        k = torch.stack([p[t] * g + q[t] for t, (g, _) in enumerate(gh)])  # (T, C)
        c = torch.stack([p[t] * h for t, (_, h) in enumerate(gh)])
        node.leak, node.in_scale, node.in_shift = k * leak, k, c
    return node


def fold(model: SpikingNet, config: ModelConfig, *, event: bool, source: dict | None = None,
         dtype: torch.dtype = torch.float32) -> DeployModel:
    """The deployment form of a trained network (BN folded with its running statistics), its
    parameters computed in float64 and rounded once to `dtype`.

    `event`: the input is one frame per step (else a static image repeated at every step).
    `source`: provenance kept in the model and its files; its "dataset" decides how `hmdf run` bins
    recordings and what exported files say about preparing the input (`hmdf_deploy.data.input_spec`).
    `quantize_run` fills it in from a run directory.
    """
    b = _Builder()
    with torch.no_grad():
        if isinstance(model, VGG):
            out = _fold_vgg(b, model, config.T)
        elif isinstance(model, ResNet):
            out = _fold_resnet(b, model, config.T)
        else:
            raise TypeError(f"cannot fold a {type(model).__name__}")
    deploy = DeployModel(config.T, (config.in_channels, *config.input_size), event, config.num_classes, b.nodes, out, source or {"model": config.to_dict()})
    merge_input_affines(deploy)
    return with_dtype(deploy, dtype).validate()


def with_dtype(model: DeployModel, dtype: torch.dtype) -> DeployModel:
    """`model` with its floating-point tensors in `dtype`: new nodes; the integer weight codes, and
    tensors already in `dtype`, are shared rather than copied."""
    nodes = [replace(n, inputs=list(n.inputs),
                     **{k: t.to(dtype) for k, t in n.tensors().items() if t.is_floating_point()}) for n in model.nodes]
    return replace(model, nodes=nodes, source=dict(model.source))


def _fold_vgg(b: _Builder, model: VGG, T: int) -> str:
    src = "input"
    for i, layer in enumerate(model.features):
        name = f"features.{i}"
        if isinstance(layer, ConvUnit):
            x = src
            src = b.synapse(f"{name}.conv", layer.conv, x, layer.bn)
            if layer.attn is not None:
                src = b.seca(f"{name}.attn", layer.attn, src, x if layer.seca_residual else None)
            src = b.neuron(f"{name}.act", layer.act, src, T)
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            src = b.add(Pool(name, [src], "global"))
        else:
            mode = "avg" if isinstance(layer, nn.AvgPool2d) else "max"
            src = b.add(Pool(name, [src], mode, layer.kernel_size, layer.stride, layer.padding))
    src = b.add(Flatten("flatten", [src]))
    return b.synapse("classifier", model.classifier, src)


def _fold_resnet(b: _Builder, model: ResNet, T: int) -> str:
    src = b.synapse("conv1", model.conv1, "input", model.bn1)
    if model.maxpool is not None:
        src = b.add(Pool("maxpool", [src], "max", 3, 2, 1))
    for i, block in enumerate(model.blocks):
        src = _fold_block(b, block, f"blocks.{i}", src, T)
    src = b.add(Pool("pool", [src], "global"))
    src = b.add(Flatten("flatten", [src]))
    if model.head is not None:
        src = b.synapse("head.linear", model.head.linear, src)
        src = b.neuron("head.act", model.head.act, src, T)
    return b.synapse("fc", model.fc, src)


def _fold_block(b: _Builder, block: BasicBlock, name: str, x: str, T: int) -> str:
    h = b.synapse(f"{name}.conv1", block.conv1, b.neuron(f"{name}.act1", block.act1, x, T), block.bn1)
    if block.attn1 is not None:
        residual = x if block.seca_residual and block.downsample is None else None
        h = b.seca(f"{name}.attn1", block.attn1, h, residual)
    y = b.synapse(f"{name}.conv2", block.conv2, b.neuron(f"{name}.act2", block.act2, h, T), block.bn2)
    if block.attn2 is not None:
        y = b.seca(f"{name}.attn2", block.attn2, y, h if block.seca_residual else None)
    shortcut = x
    if block.downsample is not None:
        shortcut = b.synapse(f"{name}.downsample", block.downsample[0], x, block.downsample[1])
    return b.add(Add(f"{name}.add", [y, shortcut]), 1.0)


def merge_input_affines(model: DeployModel) -> None:
    """Move a neuron's Mem-BN input affine (k, c) into the synapse before it (SPEC §6: one affine
    per layer) when that synapse feeds nothing else; elsewhere (after SECA, on the residual
    stream) the neuron keeps it."""
    readers: dict[str, int] = {}
    for n in model.nodes:
        for src in n.inputs:
            readers[src] = readers.get(src, 0) + 1
    by_name = {n.name: n for n in model.nodes}
    for n in model.neurons:
        syn = by_name.get(n.inputs[0])
        if n.in_scale is None or not isinstance(syn, Synapse) or readers[syn.name] != 1:
            continue
        k, c, dtype = n.in_scale.to(F64), n.in_shift.to(F64), syn.scale.dtype
        syn.scale = (k * syn.scale.to(F64)).to(dtype)
        syn.shift = (k * syn.shift.to(F64) + c).to(dtype)
        n.in_scale = n.in_shift = None
