"""The triton backend: a DeployModel on the Triton kernels (`hmdf_deploy.runtime.kernels`).

Synapses run the packed implicit-GEMM kernel (weights stay 1 / 2 bits per code on the device);
in a streaming step a synapse read only by a neuron runs in one kernel with it (`kernels.fused`);
other neurons run the fused step kernel, or the scan of SPEC §7 for whole sequences (`scan=True`). 4-bit
spikes travel between layers as uint8 codes, so a code-fed synapse accumulates exactly in int32.
The small weightless nodes (add, SECA, pooling, flatten) run in torch on the same device.

On a CUDA GPU the kernels compile; on a CPU they run only in Triton's interpreter
(TRITON_INTERPRET=1), which is slow and meant for testing.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hmdf_deploy.deploy.graph import SECA, Conv, DeployModel, Flatten, Neuron, Pool, Synapse
from hmdf_deploy.deploy.reference import weightless
from hmdf_deploy.errors import HmdfError


def interpreted() -> bool:
    """TRITON_INTERPRET is set to a true value (Triton's own reading of the variable)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "yes", "on", "y")


def unavailable() -> str | None:
    """Why the triton backend cannot run on this machine, in one line; None if it can."""
    if importlib.util.find_spec("triton") is None:
        return "the triton backend needs the triton package: pip install 'hmdf[triton]' (Linux)"
    if not (torch.cuda.is_available() or interpreted()):
        return ("the triton backend needs a CUDA GPU and this machine has none; choose --backend torch or "
                "onnxruntime, or set TRITON_INTERPRET=1 to run its kernels on the CPU (slow, for testing)")
    return None


class TritonBackend:
    name = "triton"

    def __init__(self, model: DeployModel, scan: bool = False) -> None:
        """`scan`: run whole sequences (`run`) with the associative scan instead of the step loop;
        exact too, but it rounds differently (SPEC §7), so 4-bit codes may rarely flip by one."""
        why = unavailable()
        if why:
            raise HmdfError(why)
        from hmdf_deploy.runtime import kernels

        self.k = kernels
        self.model = model.validate()
        self.T, self.input_shape = model.T, tuple(model.input_shape)
        self.dataset = model.source.get("dataset")
        self.device = torch.device("cpu" if interpreted() else "cuda")
        self.scan = scan
        self.layers = {n.name: self._prepare(n) for n in model.nodes}
        self.fused = _fusable(model)
        self.state: dict[str, Tensor] = {}
        capture = _capture()
        self.graphs = StepGraphs(self, capture) if capture is not None else None

    def _prepare(self, n):
        """Each node's tensors once, on the device and in the kernels' layouts."""
        f32 = {"device": self.device, "dtype": torch.float32}
        if isinstance(n, Synapse):
            scale, shift = torch.broadcast_tensors(n.scale.to(**f32), n.shift.to(**f32))
            return self.k.pack_weight(n.weight, n.weights, self.device), scale.contiguous(), shift.contiguous()
        if isinstance(n, Neuron):
            return self.k.NeuronParams.from_node(n, self.device)
        if isinstance(n, SECA):
            return n.weight.to(**f32).view(1, 1, -1), n.bias.to(**f32)
        return None

    def reset(self) -> None:
        self.state = {}

    @torch.no_grad()
    def step(self, x_t: np.ndarray, t: int) -> np.ndarray:
        x = torch.as_tensor(x_t, dtype=torch.float32)
        if self.graphs is not None:
            logits, self.state = self.graphs.step(x, t, self.state)
        else:
            logits, self.state = self._forward(x.to(self.device), t, 1, self.state)
        return logits.cpu().numpy()

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (T, B, K) of a whole (T, B, C, H, W) sequence from a fresh state (SPEC §7 form)."""
        self.reset()
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        T, B = x.shape[:2]
        logits, _ = self._forward(x.reshape(T * B, *x.shape[2:]), 0, T, None)
        return logits.reshape(T, B, *logits.shape[1:]).cpu().numpy()

    def _forward(self, x: Tensor, t0: int, steps: int, state: dict | None) -> tuple[Tensor, dict]:
        """The graph on `steps` time steps from t0 of B samples each (x: (steps·B, …), time-major),
        from the membranes in `state` (None: a fresh sequence, whose final state is not kept).
        Returns the logits (steps·B, K) and the new state."""
        values, new_state = {"input": x}, {}
        for n in self.model.nodes:
            if n.name in self.fused:
                continue  # computed with the neuron that reads it, below
            if isinstance(n, Neuron):
                s, v = self._neuron(n, values, t0, steps, state)
                values[n.name] = s
                if v is not None:
                    new_state[n.name] = v
            elif isinstance(n, Synapse):
                w, scale, shift = self.layers[n.name]
                values[n.name] = self.k.synapse(values[n.inputs[0]], w, scale, shift, t0=t0, steps=steps, **_geometry(n))
            else:
                values[n.name] = self._weightless(n, [values[i] for i in n.inputs])
        return values[self.model.output], new_state

    def _neuron(self, n: Neuron, values: dict, t0: int, steps: int, state: dict | None):
        """A neuron's spikes (steps·B, …) and membrane: fused with its synapse when it is the synapse's
        only reader and this is one streaming step, else on the synapse's output; by the scan on
        request when the neuron allows it."""
        p, v = self.layers[n.name], None if state is None else state.get(n.name)
        keep = state is not None
        syn = self.model.node(n.inputs[0]) if n.inputs[0] in self.fused else None
        # Fused, a program loops over the steps itself, so a sequence spreads over T times fewer
        # programs: on an H200 that was slower than the two kernels (RESULTS.md, "GPU kernels").
        if syn is not None and steps == 1:
            w, scale, shift = self.layers[syn.name]
            return self.k.synapse_neuron(values[syn.inputs[0]], w, scale, shift, p, t0=t0, steps=steps,
                                         v=v, keep_state=keep, **_geometry(syn))
        if syn is not None:  # a sequence: the synapse alone, its current through memory
            w, scale, shift = self.layers[syn.name]
            i = self.k.synapse(values[syn.inputs[0]], w, scale, shift, t0=t0, steps=steps, **_geometry(syn))
        else:
            i = values[n.inputs[0]]
        i = i.reshape(steps, -1, *i.shape[1:])
        if self.scan and state is None and p.scannable:  # a whole sequence from v = 0
            s = self.k.neuron_scan(i, p)
        else:
            s, v = self.k.neuron_steps(i, p, t0, v, keep_state=keep)
        return s.reshape(-1, *s.shape[2:]), v

    def _weightless(self, n, args: list[Tensor]) -> Tensor:
        # Flatten and max-pooling keep 4-bit codes as codes (uint8), so the next synapse stays exact
        # in integers; everything else computes in float32.
        codes = args[0].dtype == torch.uint8
        if isinstance(n, Flatten):
            return weightless(n, args)
        if codes and isinstance(n, Pool) and n.mode == "max":
            return weightless(n, [args[0].float()]).to(torch.uint8)
        return weightless(n, [a.float() for a in args], self.layers[n.name])


def _geometry(n: Synapse) -> dict:
    return {"stride": n.stride, "padding": n.padding} if isinstance(n, Conv) else {}


def _fusable(model: DeployModel) -> set[str]:
    """Synapses whose only reader is a neuron (and not the model's output): in a streaming step each
    runs in one kernel with that neuron, so its output current never goes to memory."""
    readers: dict[str, list] = {}
    for n in model.nodes:
        for i in n.inputs:
            readers.setdefault(i, []).append(n)
    synapses = {n.name for n in model.nodes if isinstance(n, Synapse)}
    return {name for name in synapses if name != model.output and len(readers.get(name, [])) == 1
            and isinstance(readers[name][0], Neuron)}


def _capture():
    """How `StepGraphs` records a step on this machine: a CUDA graph, or None (the interpreter:
    nothing to gain; tests put a plain replay of the function here to check the bookkeeping)."""
    return None if interpreted() else _cuda_graph


def _cuda_graph(fn):
    """Record fn's kernels once (fn has just run eagerly, so they are compiled); replaying the graph
    runs them again on whatever the tensors fn reads hold then."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


@dataclass
class _Buffers:
    """What one batch size's recordings read and write: the input, the logits, the membranes."""

    input: Tensor
    logits: Tensor
    membranes: dict[str, Tensor]


class StepGraphs:
    """A streaming step replayed from a recording instead of launched node by node.

    At batch 1 a step's kernels take microseconds each and launching them from Python takes longer,
    so on a GPU each step is recorded once as a CUDA graph and replayed. A recording fixes its
    tensors and its scalars, so there is one per batch size, step row (min(t, T − 1): every
    per-step table has 1 or T rows) and whether a state is carried in; it reads the input and the
    membranes from buffers of its own and writes the logits and the new membranes back into them.
    The first step of each kind runs eagerly (compiling the kernels) and is recorded after. The
    state handed back is those buffers: the next step overwrites it (copy it to keep it).
    """

    MAX_BATCHES = 4  # batch sizes with recordings kept; an older one's are dropped to bound memory

    def __init__(self, backend: TritonBackend, capture) -> None:
        self.backend, self.capture = backend, capture
        self.buffers: dict[int, _Buffers] = {}
        self.replays: dict[tuple[int, int, bool], object] = {}

    def step(self, x: Tensor, t: int, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The logits of step t on the batch x, and the state after it."""
        B, row, carried = len(x), min(t, self.backend.T - 1), bool(state)
        buf = self.buffers.get(B)
        if buf is None:  # this batch size's first step: eager, and its outputs give the buffers' shapes
            x = x.to(self.backend.device, copy=True)  # the buffer: never the caller's own memory
            logits, new = self.backend._forward(x, t, 1, state)
            self._keep(B, _Buffers(x, logits, new))
            return logits, dict(new)
        buf.input.copy_(x)
        for name, v in state.items():
            if v is not buf.membranes[name]:  # a state from elsewhere (another batch's, a caller's)
                buf.membranes[name].copy_(v)
        key = (B, row, carried)
        replay = self.replays.get(key)
        if replay is None:
            fn = self._step_fn(buf, row, carried)
            fn()
            self.replays[key] = self.capture(fn)
        else:
            replay()
        return buf.logits, dict(buf.membranes)

    def _step_fn(self, buf: _Buffers, row: int, carried: bool):
        def fn():
            logits, new = self.backend._forward(buf.input, row, 1, buf.membranes if carried else {})
            buf.logits.copy_(logits)
            for name, v in new.items():
                buf.membranes[name].copy_(v)
        return fn

    def _keep(self, B: int, buf: _Buffers) -> None:
        if len(self.buffers) >= self.MAX_BATCHES:
            oldest = next(iter(self.buffers))
            del self.buffers[oldest]
            self.replays = {k: r for k, r in self.replays.items() if k[0] != oldest}
        self.buffers[B] = buf
