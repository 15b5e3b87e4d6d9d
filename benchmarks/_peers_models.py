"""The peer networks of `benchmarks/peers.py`: the same layer shapes as the hmdf model, built in
SpikingJelly (LIF, multi-step or single-step), snnTorch (`snn.Leaky`, explicit membranes) and
plain PyTorch (ReLU, the dense-convolution floor).

Every network is cfg-driven like `hmdf_deploy.models.vgg.VGG`: an int is conv3×3 (no bias) →
BatchNorm2d → neuron; "M" a 2×2 pool (`pool` = "max" or "avg"); "G" a global average pool; then
flatten → Linear(·, classes). Weights are fp32 and randomly initialised; all run in eval mode.

Only `torch` is needed to import this module; SpikingJelly and snnTorch are imported when one of
their networks is built (they are benchmark-only dependencies, see benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: LIF constants shared by the peers: SpikingJelly's defaults (τ = 2, V_th = 1, hard reset to 0);
#: snnTorch's Leaky with β = 1 − 1/τ = 0.5, threshold 1 and its default subtract reset.
SJ_TAU = 2.0
SNNTORCH_BETA = 0.5


@dataclass(frozen=True)
class NetSpec:
    """One benchmark network: the layer list and its input."""

    name: str
    cfg: tuple
    in_channels: int
    input_size: tuple[int, int]
    T: int
    pool: str  # "max" or "avg" for the "M" entries
    event: bool  # one frame per step (else a static image repeated T times)
    num_classes: int = 10

    def flat_features(self) -> int:
        h, w = self.input_size
        c = self.in_channels
        for item in self.cfg:
            if item == "M":
                h, w = h // 2, w // 2
            elif item == "G":
                h, w = 1, 1
            else:
                c = item
        return c * h * w

    def scaled(self, div: int) -> "NetSpec":
        """The same network with every width divided by `div` (the --quick mode)."""
        if div == 1:
            return self
        cfg = tuple(c if isinstance(c, str) else max(1, c // div) for c in self.cfg)
        return NetSpec(f"{self.name} (widths/{div})", cfg, self.in_channels, self.input_size, self.T,
                       self.pool, self.event, self.num_classes)


def _layers(spec: NetSpec, conv, bn, act, maxpool, avgpool, gap, flatten, linear) -> list[nn.Module]:
    layers: list[nn.Module] = []
    cin = spec.in_channels
    for item in spec.cfg:
        if item == "M":
            layers.append(maxpool(2) if spec.pool == "max" else avgpool(2))
        elif item == "G":
            layers.append(gap(1))
        else:
            layers += [conv(cin, item, 3, padding=1, bias=False), bn(item), act()]
            cin = item
    layers += [flatten(), linear(spec.flat_features(), spec.num_classes)]
    return layers


# ------------------------------------------------------------------------------ plain PyTorch
def ann_net(spec: NetSpec) -> nn.Module:
    """The ANN of the same shape (ReLU instead of a neuron): no state, no time."""
    return nn.Sequential(*_layers(spec, nn.Conv2d, nn.BatchNorm2d, lambda: nn.ReLU(inplace=True),
                                  nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear))


# ------------------------------------------------------------------------------ SpikingJelly
def sj_net(spec: NetSpec, step_mode: str) -> nn.Module:
    """SpikingJelly (activation_based) network; `step_mode` "m": input (T, B, …) → (T, B, K);
    "s": input (B, …) → (B, K) per step, state kept in the LIF nodes until `functional.reset_net`.

    On CPU, SpikingJelly's LIF runs its torch implementation (no CuPy, no Triton).
    """
    from spikingjelly.activation_based import layer, neuron

    def lif():
        return neuron.LIFNode(tau=SJ_TAU, v_threshold=1.0, v_reset=0.0, step_mode=step_mode)

    def wrap(cls):
        return lambda *a, **k: cls(*a, step_mode=step_mode, **k)

    return nn.Sequential(*_layers(spec, wrap(layer.Conv2d), wrap(layer.BatchNorm2d), lif,
                                  wrap(layer.MaxPool2d), wrap(layer.AvgPool2d), wrap(layer.AdaptiveAvgPool2d),
                                  wrap(layer.Flatten), wrap(layer.Linear)))


def sj_reset(net: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(net)


# ------------------------------------------------------------------------------ snnTorch
class SnnTorchNet(nn.Module):
    """snnTorch network stepped by hand with explicit membranes (the snnTorch tutorials' form):
    `step(x_t, mems) -> (logits_t, mems)`; `init_state()` gives the membranes of a new sample.

    Explicit membranes rather than `init_hidden=True`: snnTorch's `utils.reset` clears the hidden
    state of every Leaky instance ever created in the process (a class-level list), not only
    this network's.
    """

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        import snntorch as snn

        self.layers = nn.ModuleList(_layers(spec, nn.Conv2d, nn.BatchNorm2d,
                                            lambda: snn.Leaky(beta=SNNTORCH_BETA, threshold=1.0),
                                            nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear))
        self.leaky = [m for m in self.layers if isinstance(m, snn.Leaky)]
        self._is_leaky = [isinstance(m, snn.Leaky) for m in self.layers]

    def init_state(self) -> list[Tensor]:
        # An empty membrane: Leaky replaces it by zeros of the input's shape on the first step.
        return [torch.zeros(0) for _ in self.leaky]

    def step(self, x: Tensor, mems: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        new, k = [], 0
        for layer, is_leaky in zip(self.layers, self._is_leaky):
            if is_leaky:
                x, m = layer(x, mems[k])
                new.append(m)
                k += 1
            else:
                x = layer(x)
        return x, new

    def forward(self, x_seq: Tensor) -> Tensor:
        """(T, B, …) → (T, B, K) from a fresh state."""
        mems, outs = self.init_state(), []
        for t in range(x_seq.shape[0]):
            o, mems = self.step(x_seq[t], mems)
            outs.append(o)
        return torch.stack(outs)


def randomise_bn(net: nn.Module, seed: int) -> None:
    """Non-trivial BN running statistics (as benchmarks/sequence_speed.py does for hmdf) so that
    neurons fire; the dense peers' speed does not depend on it, agreement checks do."""
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.02, 0.1, generator=gen)
