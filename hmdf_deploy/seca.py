"""SECA, efficient channel attention shared across time steps (SPEC §9)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SECA_KERNEL = 5


class SECA(nn.Module):
    """Pool over (H, W), a 1-D conv over channels (kernel 5, padding 2, bias), sigmoid, rescale.

    Six parameters; no state, so one module serves every time step. SECA-II is not a different
    module: the caller adds the layer's input current to `x` before calling it (SPEC §9).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 1, SECA_KERNEL, padding=SECA_KERNEL // 2, bias=True)

    def gate(self, x: Tensor) -> Tensor:
        """Per-(sample, channel) attention weights in (0, 1), shape (B, C)."""
        return torch.sigmoid(self.conv(x.mean(dim=(2, 3)).unsqueeze(1)).squeeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)[:, :, None, None]
