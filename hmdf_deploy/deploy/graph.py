"""The deployment model (SPEC §6, DESIGN.md "The hub"): plain dataclasses, no torch modules.

A `DeployModel` is an ordered list of nodes; each node names the nodes it reads (`inputs`,
"input" is the network input) and holds its parameters as tensors. Everything after training
goes through this one object: `fold` builds it, `.hmdf` and ONNX write it, the runtimes execute it.

Conventions:
- Per-(t, channel) tensors have shape (R, C) with R = T, or R = 1 when they do not change with t;
  step t reads row min(t, R − 1), so steps past T reuse the last step's values.
- A 4-bit neuron outputs integer codes c (SPEC §1.2); the 1/4 is already folded into the `scale`
  of every synapse that reads them (and into `residual_scale` of a SECA-II that adds them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import Tensor

from hmdf_deploy.errors import HmdfError

NODE_TYPES: dict[str, type["Node"]] = {}


@dataclass(eq=False)
class Node:
    name: str
    inputs: list[str]

    kind: ClassVar[str] = "node"
    tensor_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        NODE_TYPES[cls.kind] = cls

    def attrs(self) -> dict:
        """The JSON-able fields (everything but the tensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.tensor_fields}

    def tensors(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.tensor_fields if getattr(self, k) is not None}


@dataclass(eq=False)
class Synapse(Node):
    """acc = W ⊛ x;  I_t = scale_t ⊙ acc + shift_t  (SPEC §6).

    `weights` is "1bit"/"1.5bit" (weight holds int8 codes in {−1, 0, +1}; α, BN, Mem-BN, the 1/4
    of 4-bit inputs and any bias live in scale/shift) or "fp32" (weight holds float32 values).
    """

    weights: str
    weight: Tensor
    scale: Tensor  # (R, O)
    shift: Tensor  # (R, O)

    tensor_fields: ClassVar[tuple[str, ...]] = ("weight", "scale", "shift")

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]


@dataclass(eq=False)
class Conv(Synapse):
    stride: int = 1
    padding: int = 0
    kind: ClassVar[str] = "conv"


@dataclass(eq=False)
class Linear(Synapse):
    kind: ClassVar[str] = "linear"


@dataclass(eq=False)
class Neuron(Node):
    """A spiking neuron (SPEC §1, §3.1 folded): m̂_t = λ̂_t v_{t−1} + (k_t I_t + c_t).

    `model` is "hmdf" (PPR, graded spikes), "parallel" (stateless, SPEC §1.1) or "lif" (binary
    spike θ_t, subtract reset). `in_scale`/`in_shift` (k, c) are the Mem-BN fold when it could not
    be merged into the synapse before (e.g. after SECA or on the residual stream); None otherwise.
    """

    model: str
    spikes: str
    threshold: Tensor  # (R,)
    leak: Tensor | None = None  # (R, C) or (R, 1); None for parallel
    in_scale: Tensor | None = None  # (R, C)
    in_shift: Tensor | None = None  # (R, C)

    kind: ClassVar[str] = "neuron"
    tensor_fields: ClassVar[tuple[str, ...]] = ("threshold", "leak", "in_scale", "in_shift")

    @property
    def stateful(self) -> bool:
        return self.model != "parallel"


@dataclass(eq=False)
class SECA(Node):
    """SPEC §9: x · σ(conv1d_k5(mean_hw(x + residual_scale · r))). `inputs` = [x] or [x, r] (SECA-II)."""

    weight: Tensor  # (5,)
    bias: Tensor  # (1,)
    residual_scale: float = 1.0

    kind: ClassVar[str] = "seca"
    tensor_fields: ClassVar[tuple[str, ...]] = ("weight", "bias")


@dataclass(eq=False)
class Add(Node):
    kind: ClassVar[str] = "add"


@dataclass(eq=False)
class Pool(Node):
    """mode "avg" / "max" with kernel, stride, padding; "global" averages over H and W to 1×1."""

    mode: str
    kernel: int = 2
    stride: int = 2
    padding: int = 0
    kind: ClassVar[str] = "pool"


@dataclass(eq=False)
class Flatten(Node):
    kind: ClassVar[str] = "flatten"


@dataclass(eq=False)
class DeployModel:
    T: int
    input_shape: tuple[int, int, int]  # (C, H, W) of one time step
    event: bool  # True: one frame per step; False: the static input repeats at every step
    num_classes: int
    nodes: list[Node]
    output: str
    source: dict = field(default_factory=dict)  # provenance: model config, checksum of the run

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def neurons(self) -> list[Neuron]:
        return [n for n in self.nodes if isinstance(n, Neuron)]

    @property
    def spikes(self) -> str:
        modes = {n.spikes for n in self.neurons}
        return modes.pop() if len(modes) == 1 else "mixed"

    def validate(self) -> "DeployModel":
        """Check names, wiring order and tensor shapes; raise HmdfError naming the node."""
        seen = {"input"}
        if self.T < 1 or self.T > 100_000:
            raise HmdfError(f"T = {self.T} is out of range")
        for n in self.nodes:
            if n.name in seen:
                raise HmdfError(f"node name {n.name!r} is used twice")
            for src in n.inputs:
                if src not in seen:
                    raise HmdfError(f"node {n.name!r} reads {src!r}, which is not defined before it")
            _check_node(n, self.T)
            seen.add(n.name)
        if self.output not in seen:
            raise HmdfError(f"output {self.output!r} is not a node")
        return self


def _check_rows(n: Node, key: str, t: Tensor | None, T: int, cols: int | None) -> None:
    if t is None:
        return
    if t.dim() < 1 or t.shape[0] not in (1, T) or (cols is not None and t.dim() == 2 and t.shape[1] not in (1, cols)):
        raise HmdfError(f"node {n.name!r}: {key} has shape {tuple(t.shape)}, expected ({T} or 1, {cols})")


def _check_node(n: Node, T: int) -> None:
    arity = {Add: 2, SECA: (1, 2)}.get(type(n), 1)
    if len(n.inputs) not in (arity if isinstance(arity, tuple) else (arity,)):
        raise HmdfError(f"node {n.name!r} ({n.kind}) has {len(n.inputs)} inputs")
    if isinstance(n, Synapse):
        expected_dim = 4 if isinstance(n, Conv) else 2
        if n.weight.dim() != expected_dim:
            raise HmdfError(f"node {n.name!r}: weight has {n.weight.dim()} dims, expected {expected_dim}")
        for key in ("scale", "shift"):
            _check_rows(n, key, getattr(n, key), T, n.out_channels)
    if isinstance(n, Neuron):
        _check_rows(n, "threshold", n.threshold, T, None)
        for key in ("leak", "in_scale", "in_shift"):
            _check_rows(n, key, getattr(n, key), T, None)
        if n.stateful and n.leak is None:
            raise HmdfError(f"node {n.name!r}: a {n.model} neuron needs a leak")


def rows(t: Tensor, step: int) -> Tensor:
    """Row min(step, R − 1) of a per-step tensor: steps past T reuse the last step (continuous streams)."""
    return t[min(step, t.shape[0] - 1)]


def per_step(t: Tensor, T: int) -> Tensor:
    """Rows 0..T−1 of a per-step tensor, each row min(t, R − 1) (the last row repeats past R)."""
    R = t.shape[0]
    if R >= T:
        return t[:T]
    return torch.cat([t, t[-1:].expand(T - R, *t.shape[1:])])


def node_from_parts(kind: str, attrs: dict, tensors: dict[str, Tensor]) -> Node:
    """Rebuild a node from its JSON attrs and tensors (registry by type tag, no if-chain)."""
    cls = NODE_TYPES.get(kind)
    if cls is None:
        raise HmdfError(f"unknown node type {kind!r}")
    try:
        return cls(**attrs, **tensors)
    except TypeError as e:
        raise HmdfError(f"node {attrs.get('name', '?')!r} ({kind}) has bad fields: {e}") from None


__all__ = ["Node", "Synapse", "Conv", "Linear", "Neuron", "SECA", "Add", "Pool", "Flatten",
           "DeployModel", "NODE_TYPES", "node_from_parts", "rows", "per_step"]
