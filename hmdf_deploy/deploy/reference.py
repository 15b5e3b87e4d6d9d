"""The reference executor of a DeployModel, in plain torch (SPEC §6, §7).

Two forms that must agree:
- `step(x_t, state, t)`: one time step, state carried by the caller (streaming);
- `run(x)`: a whole (T, B, ...) sequence in the parallel form of SPEC §7: every stateless node
  runs once on a T·B batch, Parallel neurons need no recurrence, and stateful HM-DF neurons use
  the loop, or the associative scan (`scan=True`; not with a negative leak, nor for LIF).

Every other runtime and exported file is checked against this executor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hmdf_deploy.deploy.graph import (
    SECA, Add, Conv, DeployModel, Flatten, Linear, Neuron, Node, Pool, Synapse, per_step, rows,
)
from hmdf_deploy.deploy.scan import min_affine_scan
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.neurons import SPIKE_LEVELS, SPIKE_MAX_CODE

State = dict[str, Tensor]


def spike_output(s: Tensor, spikes: str) -> Tensor:
    """Float spikes unchanged; 4-bit spikes as integer codes clamp(round(4s), 0, 15) (SPEC §1.2)."""
    return torch.clamp(torch.round(s * SPIKE_LEVELS), 0, SPIKE_MAX_CODE) if spikes == "4bit" else s


def _channels(t: Tensor, ndim: int) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast over (B, C, ...) of `ndim` dims."""
    return t.reshape(1, -1, *([1] * (ndim - 2)))


class Reference:
    """The DeployModel's maths in plain torch on the CPU: `step` (streaming) and `run` (a sequence).

    Inputs are time first: (B, C, H, W) per step, (T, B, C, H, W) per sequence, as tensors or numpy
    arrays. The state of `step` is a dict {neuron: membrane (B, …)}; {} is the zero state.
    """

    def __init__(self, model: DeployModel, dtype: torch.dtype | None = None) -> None:
        """`dtype` of the computation: by default the model's own (float32, or float64 for a fold made
        to check without rounding noise)."""
        self.model = model.validate()
        dtype = dtype or next((n.scale.dtype for n in model.nodes if isinstance(n, Synapse)), torch.float32)
        self.dtype = dtype
        # Codes become floats once, and every per-step parameter is promoted on use.
        self.weights = {n.name: n.weight.to(dtype) for n in model.nodes if isinstance(n, Synapse)}
        self.seca = {n.name: (n.weight.to(dtype).view(1, 1, -1), n.bias.to(dtype)) for n in model.nodes if isinstance(n, SECA)}

    # ---------------------------------------------------------------- streaming form
    def initial_state(self) -> State:
        """Membranes before the first step: absent means v_{−1} = 0 (shapes follow the batch)."""
        return {}

    def step(self, x_t: Tensor, state: State, t: int) -> tuple[Tensor, State]:
        """Logits of step t (0, 1, …; past the model's T the last step's parameters) for input x_t
        (B, C, H, W), and the new state."""
        if t < 0:
            raise HmdfError(f"the step index t counts from 0, got {t}")
        values = {"input": torch.as_tensor(x_t, dtype=self.dtype)}
        new_state = dict(state)
        for n in self.model.nodes:
            args = [values[i] for i in n.inputs]
            if isinstance(n, Neuron):
                values[n.name], v = self._neuron_step(n, args[0], state.get(n.name), t)
                if v is not None:
                    new_state[n.name] = v
            else:
                values[n.name] = self._stateless(n, args, lambda p: rows(p, t), values["input"].dim())
        return values[self.model.output], new_state

    def _neuron_step(self, n: Neuron, i: Tensor, v: Tensor | None, t: int) -> tuple[Tensor, Tensor | None]:
        d = i.dim()
        if n.in_scale is not None:
            i = _channels(rows(n.in_scale, t), d) * i + _channels(rows(n.in_shift, t), d)
        theta = rows(n.threshold, t)
        if n.model == "parallel":
            return spike_output(torch.relu(i - theta), n.spikes), None
        m = i if v is None else _channels(rows(n.leak, t), d) * v + i
        if n.model == "lif":
            s = (m >= theta).to(m.dtype) * theta
            return s, m - s
        return spike_output(torch.relu(m - theta), n.spikes), torch.minimum(m, theta)

    # ---------------------------------------------------------------- parallel form
    def run(self, x: Tensor, *, scan: bool = False, record: dict | None = None) -> Tensor:
        """Logits (T, B, classes) for a (T, B, C, H, W) sequence; time-batched (SPEC §7).

        `record`, if given, receives every node's output (and "input") as (T, B, ...). The scan
        is exact too but does O(T log T) full-size work: on a CPU the loop over the neurons'
        recurrence is faster at every size measured (benchmarks/RESULTS.md §5), so it is the default.
        """
        x = torch.as_tensor(x, dtype=self.dtype)
        T, B = x.shape[:2]
        values = {"input": x.reshape(T * B, *x.shape[2:])}
        for n in self.model.nodes:
            args = [values[i] for i in n.inputs]
            if isinstance(n, Neuron):
                out = self._neuron_sequence(n, args[0].reshape(T, B, *args[0].shape[1:]), scan)
                values[n.name] = out.reshape(T * B, *out.shape[2:])
            else:
                values[n.name] = self._stateless(n, args, lambda p: self._time_rows(p, T, B), x.dim() - 1)
        if record is not None:
            record.update({k: v.reshape(T, B, *v.shape[1:]) for k, v in values.items()})
        out = values[self.model.output]
        return out.reshape(T, B, *out.shape[1:])

    @staticmethod
    def _time_rows(p: Tensor, T: int, B: int) -> Tensor:
        """A per-step (R, C) tensor as (T·B, C): row t for every sample of step t."""
        return per_step(p, T).repeat_interleave(B, dim=0)

    def _neuron_sequence(self, n: Neuron, i: Tensor, scan: bool) -> Tensor:
        T, d = i.shape[0], i.dim()

        def steps(p: Tensor) -> Tensor:  # (R, C) or (R,) → broadcastable to (T, B, C, ...)
            p = per_step(p, T)
            return p.reshape(T, 1, *p.shape[1:], *([1] * (d - 1 - p.dim())))

        if n.in_scale is not None:
            i = steps(n.in_scale) * i + steps(n.in_shift)
        theta = steps(n.threshold)
        if n.model == "parallel":
            return spike_output(torch.relu(i - theta), n.spikes)
        leak = steps(n.leak)
        if n.model == "lif" or not scan or bool((leak < 0).any()):
            return self._loop(n, i)
        v = min_affine_scan(leak, i, theta)
        v_prev = torch.cat([torch.zeros_like(v[:1]), v[:-1]])
        return spike_output(torch.relu(leak * v_prev + i - theta), n.spikes)

    def _loop(self, n: Neuron, i: Tensor) -> Tensor:
        # The input affine is already applied: run the step without it.
        plain = Neuron(n.name, n.inputs, n.model, n.spikes, n.threshold, n.leak)
        v, outs = None, []
        for t in range(i.shape[0]):
            o, v = self._neuron_step(plain, i[t], v, t)
            outs.append(o)
        return torch.stack(outs)

    # ---------------------------------------------------------------- stateless nodes
    def _stateless(self, n: Node, args: list[Tensor], at, ndim: int) -> Tensor:
        """Nodes without state; `at(p)` picks the per-step rows of a (R, C) parameter."""
        x = args[0]
        if isinstance(n, Conv):
            acc = F.conv2d(x, self.weights[n.name], stride=n.stride, padding=n.padding)
            return _affine(acc, at(n.scale), at(n.shift))
        if isinstance(n, Linear):
            return _affine(F.linear(x, self.weights[n.name]), at(n.scale), at(n.shift))
        return weightless(n, args, self.seca.get(n.name))


def weightless(n: Node, args: list[Tensor], seca: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Add, SECA, Pool and Flatten on (N, ...) tensors: no state, no per-step parameters, so the
    step and the time-batched forms are the same. `seca` is the node's (kernel (1, 1, k), bias),
    already on the input's device and dtype. Shared by every executor built on torch."""
    x = args[0]
    if isinstance(n, Add):
        return x + args[1]
    if isinstance(n, SECA):
        y = x if len(args) == 1 else x + n.residual_scale * args[1]  # SECA-II adds its residual
        pooled = y.mean(dim=(2, 3)).unsqueeze(1)
        w, b = seca
        gate = torch.sigmoid(F.conv1d(pooled, w, b, padding=w.shape[-1] // 2))
        return y * gate.squeeze(1)[:, :, None, None]
    if isinstance(n, Pool):
        if n.mode == "global":
            return x.mean(dim=(2, 3), keepdim=True)
        pool = F.avg_pool2d if n.mode == "avg" else F.max_pool2d
        return pool(x, n.kernel, n.stride, n.padding)
    if isinstance(n, Flatten):
        return x.flatten(1)
    raise TypeError(f"no reference implementation for node type {n.kind!r}")


def _affine(acc: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """scale ⊙ acc + shift with (N, C) or (C,) parameters broadcast over (N, C, ...)."""
    extra = [1] * (acc.dim() - 2)
    if scale.dim() == 1:
        scale, shift = scale.unsqueeze(0), shift.unsqueeze(0)
    return acc * scale.reshape(*scale.shape, *extra) + shift.reshape(*shift.shape, *extra)


def state_shapes(model: DeployModel) -> dict[str, tuple[int, ...]]:
    """Per-sample membrane shape of every stateful neuron, in graph order (the streaming state)."""
    shapes = model.shapes()
    return {n.name: shapes[n.name] for n in model.neurons if n.stateful}
