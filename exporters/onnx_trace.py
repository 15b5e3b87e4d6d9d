"""Layer by layer: does an exported graph compute each node as the DeployModel says, given that
node's inputs as the graph computed them?

Two float32 executors that accumulate in different orders may round a 4-bit code differently where
4s lies within float32 rounding of a tie k + ½ (SPEC §1.2); one such code moves everything after it
by a whole code level, so the logits alone cannot tell a tie from a wrong graph. Here every node's
output in onnxruntime is compared with the float64 reference of that node fed the graph's own
values of its inputs (teacher forcing): float values within a few times the float32 reference's own
error on those inputs (a node such as SECA, a sigmoid of a mean, can amplify rounding: that error
says by how much); codes exactly, except where the exact 4s is within that error of a tie, where
either neighbour will do; LIF spikes likewise, on m − θ.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from hmdf_deploy.deploy.graph import DeployModel, Neuron, rows
from hmdf_deploy.deploy.reference import Reference, _channels
from hmdf_deploy.neurons import SPIKE_LEVELS, SPIKE_MAX_CODE

#: A node's float32 output may be off its float64 value by this many times the float32 reference's
#: error on the same inputs, plus FLOOR_ULPS float32 epsilons of its largest |value|. The same
#: allowance, on 4s or on m − θ, is how near a tie a spike decision may go either way.
ERROR_FACTOR = 16.0
FLOOR_ULPS = 16


def trace(proto: onnx.ModelProto, model: DeployModel, x: torch.Tensor, emitted: dict[str, str]
          ) -> tuple[str | None, int]:
    """(None, or a sentence naming the first node of `proto`, in graph order, that disagrees with the
    reference given its own inputs; how many spike decisions before it went the other way at a
    tie). `emitted` maps each node to the name of its value in the graph; `x` is (steps, B, C, H, W),
    steps past T running as the continuous policy does."""
    values = _run_traced(proto, model, x, emitted)
    refs = Reference(model), Reference(model, torch.float64)
    ties = 0
    for n in model.nodes:
        got = torch.from_numpy(values[n.name]).double()
        args = [torch.from_numpy(values[i]) for i in n.inputs]
        if isinstance(n, Neuron):
            (s32, m32), (s, m) = (_neuron(ref, n, args[0]) for ref in refs)
            if n.model == "lif":
                problem, flipped = _decisions_differ(got, m, m32, n)
            elif n.spikes == "4bit":
                problem, flipped = _codes_differ(got, s, s32)
            else:
                problem, flipped = _floats_differ(got, s32.double(), s), 0
        else:
            f32, exact = (_stateless(ref, n, args) for ref in refs)
            problem, flipped = _floats_differ(got, f32.double(), exact), 0
        if problem:
            return f"node {n.name} ({n.kind}): {problem}", ties
        ties += flipped
    return None, ties


def _neuron(ref: Reference, n: Neuron, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, m) over the steps of input current `i` (steps, B, …): the spike before any rounding
    (relu(m − θ); LIF: (m ≥ θ)·θ) and the membrane m (Parallel, which keeps none: s)."""
    plain = replace(n, spikes="float")
    i, v, s_all, m_all = i.to(ref.dtype), None, [], []
    for t in range(i.shape[0]):
        s, v_new = ref._neuron_step(plain, i[t], v, t)
        m = s if v_new is None else s + v_new  # HM-DF: relu(m − θ) + min(m, θ); LIF: s + (m − s)
        s_all.append(s)
        m_all.append(m)
        v = v_new
    return torch.stack(s_all), torch.stack(m_all)


def _stateless(ref: Reference, n, args: list[torch.Tensor]) -> torch.Tensor:
    args = [a.to(ref.dtype) for a in args]
    T, B = args[0].shape[:2]
    flat = [a.reshape(T * B, *a.shape[2:]) for a in args]
    out = ref._stateless(n, flat, lambda p: Reference._time_rows(p, T, B), flat[0].dim())
    return out.reshape(T, B, *out.shape[1:])


def _window(f32: torch.Tensor, exact: torch.Tensor) -> float:
    """How far float32 may be from `exact` here: ERROR_FACTOR × the reference's error + a floor."""
    if not exact.numel():
        return 0.0
    floor = FLOOR_ULPS * torch.finfo(torch.float32).eps * float(exact.abs().max())
    return ERROR_FACTOR * float((f32.double() - exact).abs().max()) + floor


def _floats_differ(got: torch.Tensor, f32: torch.Tensor, exact: torch.Tensor) -> str | None:
    if not got.numel():
        return None
    err, allowed = float((got - exact).abs().max()), _window(f32, exact)
    return None if err <= allowed else f"max |Δ| {err:.2e} against the float64 reference (allowed {allowed:.2e})"


def _codes_differ(got: torch.Tensor, s: torch.Tensor, s32: torch.Tensor) -> tuple[str | None, int]:
    """`got` 4-bit codes against relu(m − θ) = `s` computed exactly (`s32` in float32): equal, or
    where 4s is within float32 error of a tie k + ½ below the clamp, either neighbour k or k + 1."""
    exact = s * SPIKE_LEVELS
    want = torch.clamp(torch.round(exact), 0, SPIKE_MAX_CODE)
    k = exact.floor()
    near_tie = ((exact - k - 0.5).abs() <= _window(s32 * SPIKE_LEVELS, exact)) & (exact < SPIKE_MAX_CODE + 0.5)
    other_way = near_tie & ((got == k) | (got == k + 1)) & (got != want)
    bad = (got != want) & ~other_way
    if not bool(bad.any()):
        return None, int(other_way.sum())
    i = tuple(int(j) for j in bad.nonzero()[0])
    return (f"{int(bad.sum())} 4-bit codes differ away from a rounding tie (first at {i}: "
            f"{float(got[i]):g} for 4s = {float(exact[i]):.6f})"), 0


def _decisions_differ(got: torch.Tensor, m: torch.Tensor, m32: torch.Tensor, n: Neuron) -> tuple[str | None, int]:
    """LIF spikes (0 or θ) against the exact membrane `m`: the same decision m ≥ θ, or either one
    where m is within float32 error of θ."""
    theta = torch.stack([_channels(rows(n.threshold, t).to(m.dtype), m.dim() - 1).expand_as(m[t])
                         for t in range(m.shape[0])])
    fired, want, window = got != 0, m >= theta, _window(m32, m)
    near = (m - theta).abs() <= window
    size_ok = torch.where(fired, (got - theta).abs() <= window, got == 0)
    bad = ~size_ok | ((fired != want) & ~near)
    if not bool(bad.any()):
        return None, int((fired != want).sum())
    i = tuple(int(j) for j in bad.nonzero()[0])
    return (f"{int(bad.sum())} LIF spikes differ away from the threshold (first at {i}: {float(got[i]):g} "
            f"for m − θ = {float((m - theta)[i]):.3e})"), 0


def _run_traced(proto: onnx.ModelProto, model: DeployModel, x: torch.Tensor, emitted: dict[str, str]
                ) -> dict[str, np.ndarray]:
    """Every node's value (T, B, …) as `proto` computes it on `x`, and "input"."""
    from .onnx import ort_session

    traced = onnx.ModelProto()
    traced.CopyFrom(proto)
    names = {n.name: f"trace.{n.name}" for n in model.nodes}
    for node, out in names.items():
        traced.graph.node.append(helper.make_node("Identity", [emitted[node]], [out]))
        traced.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    session = ort_session(traced.SerializeToString())
    inputs = {i.name for i in session.get_inputs()}
    T, B = x.shape[:2]
    xs = x.float().numpy()
    outputs = list(names.values())
    if "t" not in inputs:  # sequence graph: nodes hold (T·B, …)
        got = session.run(outputs, {"x": xs})
        values = {node: v.reshape(T, B, *v.shape[1:]) for node, v in zip(names, got)}
    else:  # step graph: carry the states, stack the steps
        state = {i.name: np.zeros([B, *i.shape[1:]], np.float32) for i in session.get_inputs()
                 if i.name.startswith("state_in.")}
        state_out = [f"state_out.{k[len('state_in.'):]}" for k in state]
        steps = []
        for t in range(T):
            got = session.run(outputs + state_out, {"x": xs[t], "t": np.array(t, np.int64), **state})
            steps.append(got[: len(outputs)])
            state = dict(zip(state, got[len(outputs):]))
        values = {node: np.stack([step[k] for step in steps]) for k, node in enumerate(names)}
    values["input"] = xs
    return values
