"""The triton backend: a DeployModel on the Triton kernels (`hmdf_deploy.runtime.kernels`).

Synapses run the packed implicit-GEMM kernel (weights stay 1 / 2 bits per code on the device),
neurons the fused step kernel, or the scan of SPEC §7 for whole sequences (`scan=True`). 4-bit
spikes travel between layers as uint8 codes, so a code-fed synapse accumulates exactly in int32.
The small weightless nodes (add, SECA, pooling, flatten) run in torch on the same device.

On a CUDA GPU the kernels compile; on a CPU they run only in Triton's interpreter
(TRITON_INTERPRET=1), which is slow and meant for testing.
"""

from __future__ import annotations

import importlib.util
import os

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
        self.device = torch.device("cpu" if interpreted() else "cuda")
        self.scan = scan
        self.layers = {n.name: self._prepare(n) for n in model.nodes}
        self.state: dict[str, Tensor] = {}

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
        x = torch.as_tensor(x_t, dtype=torch.float32).to(self.device)
        state = {}

        def neuron(n: Neuron, i: Tensor) -> Tensor:
            s, v = self.k.neuron_steps(i.unsqueeze(0), self.layers[n.name], t, self.state.get(n.name))
            if v is not None:
                state[n.name] = v
            return s[0]

        logits = self._forward(x, t, 1, neuron)
        self.state = state
        return logits.cpu().numpy()

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (T, B, K) of a whole (T, B, C, H, W) sequence from a fresh state (SPEC §7 form)."""
        self.reset()
        x = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        T, B = x.shape[:2]

        def neuron(n: Neuron, i: Tensor) -> Tensor:
            p, i = self.layers[n.name], i.reshape(T, B, *i.shape[1:])
            s = self.k.neuron_scan(i, p) if self.scan and p.scannable else self.k.neuron_steps(i, p, keep_state=False)[0]
            return s.reshape(T * B, *s.shape[2:])

        logits = self._forward(x.reshape(T * B, *x.shape[2:]), 0, T, neuron)
        return logits.reshape(T, B, *logits.shape[1:]).cpu().numpy()

    def _forward(self, x: Tensor, t0: int, steps: int, neuron) -> Tensor:
        """The graph over N = steps · B rows; `neuron(n, i)` runs a neuron node in the caller's form."""
        values = {"input": x}
        for n in self.model.nodes:
            args = [values[i] for i in n.inputs]
            if isinstance(n, Synapse):
                w, scale, shift = self.layers[n.name]
                conv = {"stride": n.stride, "padding": n.padding} if isinstance(n, Conv) else {}
                values[n.name] = self.k.synapse(args[0], w, scale, shift, t0=t0, steps=steps, **conv)
            elif isinstance(n, Neuron):
                values[n.name] = neuron(n, args[0])
            else:
                values[n.name] = self._weightless(n, args)
        return values[self.model.output]

    def _weightless(self, n, args: list[Tensor]) -> Tensor:
        # Flatten and max-pooling keep 4-bit codes as codes (uint8), so the next synapse stays exact
        # in integers; everything else computes in float32.
        codes = args[0].dtype == torch.uint8
        if isinstance(n, Flatten):
            return weightless(n, args)
        if codes and isinstance(n, Pool) and n.mode == "max":
            return weightless(n, [args[0].float()]).to(torch.uint8)
        return weightless(n, [a.float() for a in args], self.layers[n.name])
