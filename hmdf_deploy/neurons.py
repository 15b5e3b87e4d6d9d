"""Spiking neurons of SPEC §1-§3: pure step functions and thin `nn.Module` wrappers.

The maths lives in the functions (`hmdf_step`, `lif_step`, `quantize_spikes`); a module only owns
its learnable logits and its state, and calls the function. A sequence is the *same* step applied
T times (`SpikingNet.forward_sequence`), never a copy of it.

State is explicit: a stateful neuron keeps its membrane in `self.v` between calls and
`reset()` (or `SpikingNet.reset_state()`) clears it. The step index `t` is passed in by the caller;
steps past the trained T reuse the last step's parameters (the "continuous" streaming policy).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn

SPIKE_MODES = ("float", "4bit")
#: 4-bit spikes carry codes 0..15 for the levels {0, 0.25, ..., 3.75} (SPEC §1.2).
SPIKE_LEVELS = 4.0
SPIKE_MAX_CODE = 15


# --------------------------------------------------------------------------------------------
# Functional core
# --------------------------------------------------------------------------------------------


def spike_codes(s: Tensor) -> Tensor:
    """Integer 4-bit codes c = clamp(round(4 s), 0, 15) (SPEC §1.2), half to even like torch.round."""
    return torch.clamp(torch.round(s * SPIKE_LEVELS), 0, SPIKE_MAX_CODE)


class _SpikeQuantizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: Tensor) -> Tensor:
        return spike_codes(s) / SPIKE_LEVELS

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad  # straight-through (SPEC §1.2)


def quantize_spikes(s: Tensor, mode: str) -> Tensor:
    """The output map Q of SPEC §1: identity for "float", Q4 with a straight-through gradient for "4bit"."""
    return _SpikeQuantizer.apply(s) if mode == "4bit" else s


class HMDFParams(NamedTuple):
    """Parameters of one HM-DF step, already through the sigmoid; broadcastable to the membrane."""

    leak: Tensor  # λ_t = σ(a_t)
    threshold: Tensor  # θ_t = σ(b_t)


def hmdf_fire(m: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Graded spike and Precise-Positioning Reset (SPEC §1, §2).

    s = max(m − θ, 0) sends the whole excess; v = min(m, θ) pins a firing membrane exactly at θ.
    Gradients: ds/dm = 1[m > θ], dv/dm = 1[m ≤ θ] (SPEC §2), also at a tie m = θ, where
    torch.minimum would split the gradient in halves; no surrogate is needed.
    """
    return torch.relu(m - threshold), torch.where(m > threshold, threshold, m)


def hmdf_step(
    i_t: Tensor,
    v: Tensor | None,
    p: HMDFParams,
    membrane_norm: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """One HM-DF step (SPEC §1): charge, optional Mem-BN (§3), fire, reset. Returns (s_t, v_t).

    `v=None` is the state before the first step (v_{-1} = 0). The spike is unquantized; apply
    `quantize_spikes` for the output, the reset always uses the unquantized spike (SPEC §1.2).
    """
    m = i_t if v is None else p.leak * v + i_t
    if membrane_norm is not None:
        m = membrane_norm(m)
    return hmdf_fire(m, p.threshold)


class _TriangleSpike(torch.autograd.Function):
    """Heaviside forward, triangle surrogate backward: dz/dx = max(γ − |x|, 0)/γ², γ = 1 (SPEC §1.1)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(1.0 - x.abs(), min=0.0)


def lif_step(i_t: Tensor, v: Tensor | None, p: HMDFParams) -> tuple[Tensor, Tensor]:
    """LIF baseline step (SPEC §1.1): binary spike of height θ, subtract reset. Returns (s_t, v_t)."""
    m = i_t if v is None else p.leak * v + i_t
    s = _TriangleSpike.apply(m - p.threshold) * p.threshold
    return s, m - s


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class StatefulNeuron(nn.Module):
    """Base of the neurons that carry a membrane from one step to the next."""

    def __init__(self, T: int) -> None:
        super().__init__()
        self.T = T
        self.v: Tensor | None = None
        # Online training detaches the carried state, sg(v_{t-1}) in SPEC §1 / §4.1.
        self.detach_state = False

    def reset(self) -> None:
        self.v = None

    def _previous_state(self) -> Tensor | None:
        if self.v is None or not self.detach_state:
            return self.v
        return self.v.detach()

    def _index(self, t: int) -> int:
        return min(t, self.T - 1)


class MembraneNorm(nn.Module):
    """Mem-BN (SPEC §3): m̂_t = σ(p_t)·BN_t(m_t) + σ(q_t)·m_t, one affine BatchNorm per step."""

    def __init__(self, T: int, channels: int, spatial: bool) -> None:
        super().__init__()
        bn = nn.BatchNorm2d if spatial else nn.BatchNorm1d
        self.bn = nn.ModuleList(bn(channels) for _ in range(T))
        self.p = nn.Parameter(torch.zeros(T))
        self.q = nn.Parameter(torch.zeros(T))

    def forward(self, m: Tensor, t: int) -> Tensor:
        return torch.sigmoid(self.p[t]) * self.bn[t](m) + torch.sigmoid(self.q[t]) * m


class HMDFNeuron(StatefulNeuron):
    """HM-DF neuron (SPEC §1): per-step leak and threshold logits `a`, `b` (init 0 → 0.5 each).

    `spikes="4bit"` quantizes the output (SPEC §1.2); `mem_bn=True` adds Mem-BN (SPEC §3), which
    needs the channel count and whether the input is spatial (B, C, H, W) or flat (B, C).
    """

    def __init__(
        self,
        T: int,
        channels: int | None = None,
        *,
        spikes: str = "float",
        mem_bn: bool = False,
        spatial: bool = True,
    ) -> None:
        super().__init__(T)
        self.spikes = spikes
        self.a = nn.Parameter(torch.zeros(T))
        self.b = nn.Parameter(torch.zeros(T))
        self.norm = None
        if mem_bn:
            if channels is None:
                raise ValueError("Mem-BN needs the channel count")
            self.norm = MembraneNorm(T, channels, spatial)

    def params(self, t: int) -> HMDFParams:
        k = self._index(t)
        return HMDFParams(torch.sigmoid(self.a[k]), torch.sigmoid(self.b[k]))

    def forward(self, i_t: Tensor, t: int) -> Tensor:
        k = self._index(t)
        norm = None if self.norm is None else (lambda m: self.norm(m, k))
        s, self.v = hmdf_step(i_t, self._previous_state(), self.params(t), norm)
        return quantize_spikes(s, self.spikes)


class ParallelHMDF(nn.Module):
    """Parallel HM-DF (SPEC §1.1): stateless, o_t = Q(max(I_t − θ, 0)) with one θ = σ(b) per layer."""

    def __init__(self, *, spikes: str = "float") -> None:
        super().__init__()
        self.spikes = spikes
        self.b = nn.Parameter(torch.zeros(1))

    def forward(self, i_t: Tensor, t: int) -> Tensor:
        s, _ = hmdf_fire(i_t, torch.sigmoid(self.b[0]))
        return quantize_spikes(s, self.spikes)


class LIFNeuron(StatefulNeuron):
    """LIF baseline (SPEC §1.1): θ_t = σ(b_t) + 0.5 (init 1.0), triangle surrogate, subtract reset."""

    def __init__(self, T: int) -> None:
        super().__init__(T)
        self.a = nn.Parameter(torch.zeros(T))
        self.b = nn.Parameter(torch.zeros(T))

    def params(self, t: int) -> HMDFParams:
        k = self._index(t)
        return HMDFParams(torch.sigmoid(self.a[k]), torch.sigmoid(self.b[k]) + 0.5)

    def forward(self, i_t: Tensor, t: int) -> Tensor:
        s, self.v = lif_step(i_t, self._previous_state(), self.params(t))
        return s


def make_neuron(
    kind: str,
    T: int,
    channels: int,
    *,
    spikes: str = "float",
    mem_bn: bool = False,
    parallel: bool = False,
    spatial: bool = True,
) -> nn.Module:
    """The neuron a model config asks for. `parallel` selects ParallelHMDF (no state, no Mem-BN)."""
    if kind == "lif":
        return LIFNeuron(T)
    if parallel:
        return ParallelHMDF(spikes=spikes)
    return HMDFNeuron(T, channels, spikes=spikes, mem_bn=mem_bn, spatial=spatial)
