"""Pre-activation spiking ResNets (SPEC §11): ResNet-18/34 and ResNet-19.

Block: h = BN1(conv1(act1(x))); y = BN2(conv2(act2(h))) + shortcut(x). The residual stream
carries real currents; the shortcut is a quantized 1×1 conv + BN when the shape changes. With
`parallel`, act2 is a Parallel HM-DF neuron (SPEC §1.1). SECA follows each conv+BN; SECA-II adds
a residual current before the attention (SPEC §9): the block input x after the first conv (when the
shapes match) and h after the second, as the paper's reference code does (docs/import-hdlif.md).
"""

from __future__ import annotations

from torch import Tensor, nn

from hmdf_deploy.models.base import SpikingNet
from hmdf_deploy.models.config import ModelConfig
from hmdf_deploy.neurons import make_neuron
from hmdf_deploy.quant import QConv2d, QLinear
from hmdf_deploy.seca import SECA

#: Blocks per stage and the stage widths in units of the base width.
LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), (1, 2, 4, 8)),
    "resnet34": ((3, 4, 6, 3), (1, 2, 4, 8)),
    "resnet19": ((3, 3, 2), (2, 4, 8)),
}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, config: ModelConfig) -> None:
        super().__init__()
        T, q = config.T, config.weights
        neuron = dict(spikes=config.spikes, mem_bn=config.mem_bn)
        self.act1 = make_neuron(config.neuron, T, cin, **neuron)
        self.conv1 = QConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, weights=q)
        self.bn1 = nn.BatchNorm2d(cout)
        self.attn1 = SECA() if config.seca else None
        self.act2 = make_neuron(config.neuron, T, cout, parallel=config.parallel, **neuron)
        self.conv2 = QConv2d(cout, cout, 3, padding=1, bias=False, weights=q)
        self.bn2 = nn.BatchNorm2d(cout)
        self.attn2 = SECA() if config.seca else None
        self.seca_residual = config.seca == 2
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                QConv2d(cin, cout, 1, stride=stride, bias=False, weights=q), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor, t: int) -> Tensor:
        h = self.bn1(self.conv1(self.act1(x, t)))
        if self.attn1 is not None:
            h = self.attn1(h + x if self.seca_residual and self.downsample is None else h)
        y = self.bn2(self.conv2(self.act2(h, t)))
        if self.attn2 is not None:
            y = self.attn2(y + h if self.seca_residual else y)
        return y + (x if self.downsample is None else self.downsample(x))


class ResNet(SpikingNet):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.T = config.T
        depths, mults = LAYOUTS[config.arch]
        widths = [config.width * m for m in mults]
        stem_weights = config.weights if config.quantize_stem else "fp32"
        if config.stem == "imagenet":
            self.conv1 = QConv2d(config.in_channels, widths[0], 7, stride=2, padding=3, bias=False, weights=stem_weights)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = QConv2d(config.in_channels, widths[0], 3, padding=1, bias=False, weights=stem_weights)
            self.maxpool = None
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for stage, (depth, cout) in enumerate(zip(depths, widths)):
            for i in range(depth):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(BasicBlock(cin, cout, stride, config))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = ResNet19Head(cin, config) if config.arch == "resnet19" else None
        self.fc = QLinear(cin // 2 if self.head else cin, config.num_classes)  # full precision (SPEC §5)

    def forward(self, x: Tensor, t: int) -> Tensor:
        x = self.bn1(self.conv1(x))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for block in self.blocks:
            x = block(x, t)
        x = self.pool(x).flatten(1)
        if self.head is not None:
            x = self.head(x, t)
        return self.fc(x)


class ResNet19Head(nn.Module):
    """ResNet-19's head before the classifier: quantized Linear(C, C/2) → neuron."""

    def __init__(self, cin: int, config: ModelConfig) -> None:
        super().__init__()
        self.linear = QLinear(cin, cin // 2, weights=config.weights)
        self.act = make_neuron(config.neuron, config.T, cin // 2, spikes=config.spikes,
                               mem_bn=config.mem_bn, spatial=False)

    def forward(self, x: Tensor, t: int) -> Tensor:
        return self.act(self.linear(x), t)
