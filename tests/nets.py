"""Random folded networks that really spike: shared by the ONNX, runtime and CLI tests."""

from __future__ import annotations

import torch
from torch import nn

from hmdf_deploy.deploy.fold import fold
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.models import ModelConfig, build_model
from hmdf_deploy.neurons import HMDFNeuron, LIFNeuron, MembraneNorm, ParallelHMDF
from hmdf_deploy.seca import SECA as SECAModule


def randomise(net: nn.Module, calib: torch.Tensor, static: bool, g: torch.Generator) -> None:
    """BN statistics measured on `calib` then perturbed; γ, β, neuron logits, Mem-BN and SECA
    weights drawn at random (so the fold is not an identity and the neurons fire)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    with torch.no_grad():
        net.forward_sequence(calib, static=static)
        for bn in bns:
            c = bn.num_features
            std = bn.running_var.sqrt()
            bn.running_mean.add_(0.2 * std * torch.randn(c, generator=g))
            bn.running_var.mul_(torch.empty(c).uniform_(0.5, 2.0, generator=g))
            bn.weight.copy_(torch.empty(c).uniform_(0.6, 1.6, generator=g))
            bn.bias.copy_(0.3 * torch.randn(c, generator=g) + 0.2)
        for m in net.modules():
            if isinstance(m, (HMDFNeuron, LIFNeuron)):
                m.a.copy_(torch.randn(m.a.shape, generator=g))
                m.b.copy_(torch.randn(m.b.shape, generator=g))
            elif isinstance(m, ParallelHMDF):
                m.b.copy_(torch.randn(1, generator=g))
            elif isinstance(m, MembraneNorm):
                m.p.copy_(torch.randn(m.p.shape, generator=g))
                m.q.copy_(torch.randn(m.q.shape, generator=g) - 1.0)
                for bn in m.bn:
                    gain = torch.empty(bn.num_features).uniform_(0.1, 0.6, generator=g)
                    bn.weight.copy_(gain * (bn.running_var + bn.eps).sqrt())
                    bn.bias.copy_(torch.empty(bn.num_features).uniform_(0.2, 0.8, generator=g))
            elif isinstance(m, SECAModule):
                m.conv.weight.copy_(torch.randn(m.conv.weight.shape, generator=g))
                m.conv.bias.copy_(torch.randn(1, generator=g))
    net.eval()


def inputs(cfg: ModelConfig, event: bool, batch: int, g: torch.Generator, steps: int | None = None) -> torch.Tensor:
    """A (steps, B, C, H, W) sequence: a static image in [0, 2) repeated, or Poisson event counts."""
    c, (h, w) = cfg.in_channels, cfg.input_size
    steps = steps or cfg.T
    if event:
        return torch.poisson(torch.rand(steps, batch, c, h, w, generator=g) * 1.5, generator=g)
    return (torch.rand(batch, c, h, w, generator=g) * 2.0).unsqueeze(0).expand(steps, batch, c, h, w).contiguous()


def make_deploy(cfg: ModelConfig, event: bool, seed: int = 0, source: dict | None = None) -> DeployModel:
    cfg.validate()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build_model(cfg)
    calib = inputs(cfg, event, 8, g).transpose(0, 1)  # (B, T, ...) for event, static (B, ...) below
    randomise(net, calib if event else calib[:, 0], not event, g)
    return fold(net, cfg, event=event, source=source)
