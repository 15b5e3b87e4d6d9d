"""VGG-style HM-DF networks built from a cfg list (SPEC §11): conv → BN → [SECA] → neuron."""

from __future__ import annotations

from torch import Tensor, nn

from hmdf_deploy.models.base import SpikingNet
from hmdf_deploy.models.config import ModelConfig
from hmdf_deploy.neurons import make_neuron
from hmdf_deploy.quant import QConv2d, QLinear
from hmdf_deploy.seca import SECA


class ConvUnit(nn.Module):
    """One cfg entry: 3×3 conv, BN, optional SECA (II adds the input when shapes match), neuron."""

    def __init__(self, cin: int, cout: int, config: ModelConfig, *, weights: str) -> None:
        super().__init__()
        self.conv = QConv2d(cin, cout, 3, padding=1, bias=False, weights=weights)
        self.bn = nn.BatchNorm2d(cout)
        self.attn = SECA() if config.seca else None
        self.seca_residual = config.seca == 2 and cin == cout
        self.act = make_neuron(config.neuron, config.T, cout, spikes=config.spikes, mem_bn=config.mem_bn)

    def forward(self, x: Tensor, t: int) -> Tensor:
        i = self.bn(self.conv(x))
        if self.attn is not None:
            i = self.attn(i + x if self.seca_residual else i)
        return self.act(i, t)


def _pool(kind: str) -> nn.Module:
    if kind == "G":
        return nn.AdaptiveAvgPool2d(1)
    return nn.AvgPool2d(2) if kind == "avg" else nn.MaxPool2d(2)


class VGG(SpikingNet):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.T = config.T
        layers: list[nn.Module] = []
        cin, (h, w) = config.in_channels, config.input_size
        first = True
        for c in config.cfg:
            if isinstance(c, int):
                weights = config.weights if (not first or config.quantize_stem) else "fp32"
                layers.append(ConvUnit(cin, c, config, weights=weights))
                cin, first = c, False
            else:
                layers.append(_pool("G" if c == "G" else config.pool))
                h, w = (1, 1) if c == "G" else (h // 2, w // 2)
        self.features = nn.ModuleList(layers)
        self.classifier = QLinear(cin * h * w, config.num_classes)  # full precision (SPEC §5)

    def forward(self, x: Tensor, t: int) -> Tensor:
        for layer in self.features:
            x = layer(x, t) if isinstance(layer, ConvUnit) else layer(x)
        return self.classifier(x.flatten(1))
