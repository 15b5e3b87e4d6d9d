"""SpikingNet: the single-step interface every hmdf model shares."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hmdf_deploy.neurons import StatefulNeuron


class SpikingNet(nn.Module):
    """A network called once per time step: `forward(x_t, t) -> logits_t`.

    Stateful neurons keep their membranes between calls; `reset_state()` starts a new sample.
    Static images are passed unchanged at every step (direct encoding, SPEC §4).
    """

    T: int

    def reset_state(self) -> None:
        for m in self.modules():
            if isinstance(m, StatefulNeuron):
                m.reset()

    def detach_state(self, flag: bool) -> None:
        """Online training cuts the temporal graph at every neuron (SPEC §4.1); STBP does not."""
        for m in self.modules():
            if isinstance(m, StatefulNeuron):
                m.detach_state = flag

    def forward_sequence(self, x: Tensor, static: bool) -> Tensor:
        """Reset, then run every step: x is (B, ...) if `static` else (B, T, ...). Returns (T, B, classes)."""
        self.reset_state()
        steps = self.T if static else x.shape[1]
        return torch.stack([self(x if static else x[:, t], t) for t in range(steps)])
