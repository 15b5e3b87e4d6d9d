"""Low-bit synapses of SPEC §5: binary (1-bit) and ternary (1.5-bit, TWN) weights.

`weight_codes` is the single definition of the integer form (codes in {−1, 0, +1} and a scale α
per output channel); training uses α·codes with a straight-through gradient, and deployment packs
the codes and folds α into the per-channel affine (SPEC §6). Full-precision layers use
`weights="fp32"` and behave exactly like their torch counterparts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHT_MODES = ("fp32", "1bit", "1.5bit")
#: TWN threshold factor Δ = 0.7 · mean|W_c| (SPEC §5.2).
TERNARY_DELTA = 0.7


def binary_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """SPEC §5.1: signs (sign(0) = +1) and α_o = mean |W[o]| per output channel (shape (O,))."""
    codes = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    alpha = w.abs().flatten(1).mean(dim=1)
    return codes, alpha


def ternary_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """SPEC §5.2: trits from W_c = clip(W, −1, 1), Δ = 0.7·mean|W_c|, one α per layer (shape (O,))."""
    wc = w.clamp(-1.0, 1.0)
    delta = TERNARY_DELTA * wc.abs().mean()
    codes = (wc > delta).to(w.dtype) - (wc < -delta).to(w.dtype)
    kept = wc.abs()[codes != 0]
    alpha = kept.mean() if kept.numel() else wc.new_zeros(())
    return codes, alpha.expand(w.shape[0]).clone()


def weight_codes(w: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Integer codes (float tensor of −1/0/+1, W's shape) and per-output-channel scale α."""
    if mode == "1bit":
        return binary_codes(w)
    if mode == "1.5bit":
        return ternary_codes(w)
    raise ValueError(f"weights {mode!r} have no integer codes; expected '1bit' or '1.5bit'")


def _scaled(codes: Tensor, alpha: Tensor) -> Tensor:
    return codes * alpha.view(-1, *([1] * (codes.dim() - 1)))


class _QuantizeWeight(torch.autograd.Function):
    """α·codes forward (α detached), straight-through backward masked to |W| < 1 (SPEC §5.1-5.2)."""

    @staticmethod
    def forward(ctx, w: Tensor, mode: str) -> Tensor:
        ctx.save_for_backward(w)
        return _scaled(*weight_codes(w, mode))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() < 1).to(grad.dtype), None


def quantize_weight(w: Tensor, mode: str) -> Tensor:
    """The effective weight of a layer in `mode` ("fp32" returns `w` itself)."""
    if mode == "fp32":
        return w
    return _QuantizeWeight.apply(w, mode)


def _check_mode(mode: str) -> str:
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown weight mode {mode!r}; expected one of {', '.join(WEIGHT_MODES)}")
    return mode


class QConv2d(nn.Conv2d):
    """A Conv2d whose forward uses `quantize_weight(self.weight, self.weights)`."""

    def __init__(self, *args, weights: str = "fp32", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weights = _check_mode(weights)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, quantize_weight(self.weight, self.weights), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={self.weights}"


class QLinear(nn.Linear):
    """A Linear whose forward uses `quantize_weight(self.weight, self.weights)`."""

    def __init__(self, *args, weights: str = "fp32", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weights = _check_mode(weights)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, quantize_weight(self.weight, self.weights), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={self.weights}"
