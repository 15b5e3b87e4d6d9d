"""Layer by layer: does an exported graph compute each node as the DeployModel says, given that
node's inputs as the graph computed them?

Two float32 executors that accumulate in different orders may round a 4-bit code differently where
4s lies within float32 rounding of a tie k + ½ (SPEC §1.2); one such code moves everything after it
by a whole code level, so the logits alone cannot tell a tie from a wrong graph. Here every node's
output in onnxruntime is compared with the float64 reference of that node fed the graph's own
values of its inputs (teacher forcing): float values within a few times the float32 reference's own
error on those inputs (a node such as SECA, a sigmoid of a mean, can amplify rounding: that error
says by how much), codes exactly, except a code whose exact 4s is that close to a tie, which may
be off by one.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from hmdf_deploy.deploy.graph import DeployModel, Neuron
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.neurons import SPIKE_LEVELS, SPIKE_MAX_CODE

#: A node's float32 output may be off its float64 value by this many times the float32 reference's
#: error on the same inputs, plus FLOOR_ULPS float32 epsilons of its largest |value|.
ERROR_FACTOR = 16.0
FLOOR_ULPS = 16
#: How near (in code units, relative to the layer's largest 4s) a code's exact 4s may lie to a tie
#: k + ½ and still round either way: the membrane's float32 error over T steps is far below it.
TIE_RTOL = 1e-4


def first_disagreement(proto: onnx.ModelProto, model: DeployModel, x: torch.Tensor, emitted: dict[str, str]
                       ) -> str | None:
    """None when every node of `proto` agrees with the reference given its own inputs; else a
    sentence naming the first node (in graph order) that does not. `emitted` maps each node to the
    name of its value in the graph; `x` is the (T, B, C, H, W) input."""
    values = _run_traced(proto, model, x, emitted)
    refs = Reference(model), Reference(model, torch.float64)
    for n in model.nodes:
        got = torch.from_numpy(values[n.name]).double()
        f32, exact = (_node(ref, n, [torch.from_numpy(values[i]) for i in n.inputs]) for ref in refs)
        if isinstance(n, Neuron) and n.spikes == "4bit":
            problem = _codes_differ(got, exact)
        else:
            problem = _floats_differ(got, f32.double(), exact)
        if problem:
            return f"node {n.name} ({n.kind}): {problem}"
    return None


def _node(ref: Reference, n, args: list[torch.Tensor]) -> torch.Tensor:
    """Node `n` of the reference on (T, B, …) inputs; a neuron gives relu(m − θ) before any rounding."""
    args = [a.to(ref.dtype) for a in args]
    if isinstance(n, Neuron):
        return ref._neuron_sequence(replace(n, spikes="float"), args[0], scan=False)
    T, B = args[0].shape[:2]
    flat = [a.reshape(T * B, *a.shape[2:]) for a in args]
    out = ref._stateless(n, flat, lambda p: Reference._time_rows(p, T, B), flat[0].dim())
    return out.reshape(T, B, *out.shape[1:])


def _floats_differ(got: torch.Tensor, f32: torch.Tensor, exact: torch.Tensor) -> str | None:
    if not got.numel():
        return None
    err = float((got - exact).abs().max())
    floor = FLOOR_ULPS * torch.finfo(torch.float32).eps * float(exact.abs().max())
    allowed = ERROR_FACTOR * float((f32 - exact).abs().max()) + floor
    return None if err <= allowed else f"max |Δ| {err:.2e} against the float64 reference (allowed {allowed:.2e})"


def _codes_differ(got: torch.Tensor, s: torch.Tensor) -> str | None:
    """`got` codes against relu(m − θ) = `s` computed exactly."""
    exact = s * SPIKE_LEVELS
    want = torch.clamp(torch.round(exact), 0, SPIKE_MAX_CODE)
    near_tie = (exact - exact.floor() - 0.5).abs() <= TIE_RTOL * max(1.0, float(exact.abs().max()))
    bad = (got != want) & ~(near_tie & ((got - want).abs() == 1))
    if not bool(bad.any()):
        return None
    i = tuple(int(k) for k in bad.nonzero()[0])
    return (f"{int(bad.sum())} 4-bit codes differ away from a rounding tie (first at {i}: "
            f"{float(got[i]):g} for 4s = {float(exact[i]):.6f})")


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
