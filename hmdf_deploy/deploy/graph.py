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

import math
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
        """Check names, wiring order, attributes and every shape along the graph.

        Raises HmdfError naming the node; a model that validates runs in every executor.
        """
        self.shapes()
        return self

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample output shape of every node (and "input"), propagated without running anything."""
        if not isinstance(self.T, int) or isinstance(self.T, bool) or not 1 <= self.T <= 100_000:
            raise HmdfError(f"T = {self.T!r} is out of range")
        if len(self.input_shape) != 3 or any(not isinstance(v, int) or not 1 <= v <= MAX_DIM for v in self.input_shape):
            raise HmdfError(f"input_shape {list(self.input_shape)} must be three positive integers (C, H, W)")
        shapes: dict[str, tuple[int, ...]] = {"input": tuple(self.input_shape)}
        for n in self.nodes:
            if n.name in shapes:
                raise HmdfError(f"node name {n.name!r} is used twice")
            for src in n.inputs:
                if src not in shapes:
                    raise HmdfError(f"node {n.name!r} reads {src!r}, which is not defined before it")
            _check_attrs(n)
            shapes[n.name] = _out_shape(n, [shapes[i] for i in n.inputs], self.T)
            if math.prod(shapes[n.name]) > MAX_ELEMENTS:
                raise HmdfError(f"node {n.name!r} would output {shapes[n.name]} per sample, more than {MAX_ELEMENTS:,} values")
        if self.output not in shapes:
            raise HmdfError(f"output {self.output!r} is not a node")
        if shapes[self.output] != (self.num_classes,):
            raise HmdfError(f"output {self.output!r} has shape {shapes[self.output]}, expected ({self.num_classes},) logits")
        return shapes


_CHOICES = {
    (Synapse, "weights"): ("fp32", "1bit", "1.5bit"),
    (Neuron, "model"): ("hmdf", "parallel", "lif"),
    (Neuron, "spikes"): ("float", "4bit"),
    (Pool, "mode"): ("avg", "max", "global"),
}
_INTS = {Conv: {"stride": 1, "padding": 0}, Pool: {"kernel": 1, "stride": 1, "padding": 0}}
#: Bounds that keep a hostile file from asking for absurd work or memory before anything runs.
MAX_DIM = 2**20
MAX_ELEMENTS = 2**24  # per-sample elements of any one node's output (a 48×48×64 map is 2**17)


def _check_attrs(n: Node) -> None:
    for (cls, key), allowed in _CHOICES.items():
        if isinstance(n, cls) and getattr(n, key) not in allowed:
            raise HmdfError(f"node {n.name!r}: {key} {getattr(n, key)!r} is not one of {', '.join(allowed)}")
    for cls, minima in _INTS.items():
        if not isinstance(n, cls):
            continue
        for key, low in minima.items():
            v = getattr(n, key)
            if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= MAX_DIM:
                raise HmdfError(f"node {n.name!r}: {key} must be an integer in [{low}, {MAX_DIM}], got {v!r}")
    if isinstance(n, SECA) and (not isinstance(n.residual_scale, (int, float)) or isinstance(n.residual_scale, bool)):
        raise HmdfError(f"node {n.name!r}: residual_scale must be a number")
    for key in n.tensor_fields:
        t = getattr(n, key)
        if t is not None and not isinstance(t, Tensor):
            raise HmdfError(f"node {n.name!r}: {key} is not a tensor")


def _out_shape(n: Node, ins: list[tuple[int, ...]], T: int) -> tuple[int, ...]:
    """The per-sample output shape of `n`, or HmdfError naming both ends of a mismatch."""
    arity = {Add: (2,), SECA: (1, 2)}.get(type(n), (1,))
    if len(ins) not in arity:
        raise HmdfError(f"node {n.name!r} ({n.kind}) has {len(ins)} inputs")
    x = ins[0]

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise HmdfError(f"node {n.name!r} ({n.kind}): {what}; input {n.inputs[0]!r} has shape {x}")

    if isinstance(n, Synapse):
        w = n.weight
        need(w.dim() in (2, 4), f"weight has {w.dim()} dims")
        for key in ("scale", "shift"):
            t = getattr(n, key)
            if t.dim() != 2:
                raise HmdfError(f"node {n.name!r}: {key} has shape {tuple(t.shape)}, expected ({T} or 1, {w.shape[0]})")
            _check_rows(n, key, t, T, w.shape[0])
    if isinstance(n, Conv):
        need(w.dim() == 4 and len(x) == 3 and w.shape[1] == x[0], f"weight {tuple(w.shape)} does not fit")
        out = [(d + 2 * n.padding - k) // n.stride + 1 for d, k in zip(x[1:], w.shape[2:])]
        need(min(out) >= 1, f"a {tuple(w.shape[2:])} kernel does not fit")
        return (w.shape[0], *out)
    if isinstance(n, Linear):
        need(w.dim() == 2 and x == (w.shape[1],), f"weight {tuple(w.shape)} does not fit")
        return (w.shape[0],)
    if isinstance(n, Neuron):
        _check_rows(n, "threshold", n.threshold, T, None)
        for key in ("leak", "in_scale", "in_shift"):
            _check_rows(n, key, getattr(n, key), T, x[0])
        if n.stateful and n.leak is None:
            raise HmdfError(f"node {n.name!r}: a {n.model} neuron needs a leak")
        if n.model == "lif" and n.spikes != "float":  # as training refuses it (ModelConfig)
            raise HmdfError(f"node {n.name!r}: a lif neuron fires binary spikes of height θ; spikes must be 'float'")
        if (n.in_scale is None) != (n.in_shift is None):
            raise HmdfError(f"node {n.name!r}: in_scale and in_shift come together")
        return x
    if isinstance(n, (Add, SECA)):
        need(len(ins) == 1 or ins[1] == x, f"the second input {n.inputs[-1]!r} has shape {ins[-1]}")
        if isinstance(n, SECA):
            need(len(x) == 3 and n.weight.dim() == 1 and n.weight.numel() % 2 == 1 and tuple(n.bias.shape) == (1,),
                 "SECA needs a (C, H, W) input, an odd 1-D kernel and one bias")
        return x
    if isinstance(n, Pool):
        need(len(x) == 3, "pooling needs a (C, H, W) input")
        if n.mode == "global":
            return (x[0], 1, 1)
        out = [(d + 2 * n.padding - n.kernel) // n.stride + 1 for d in x[1:]]
        need(min(out) >= 1 and 2 * n.padding <= n.kernel, f"a {n.kernel}×{n.kernel} pool does not fit")
        return (x[0], *out)
    if isinstance(n, Flatten):
        size = 1
        for d in x:
            size *= d
        return (size,)
    raise HmdfError(f"node {n.name!r}: unknown node type {n.kind!r}")


def _check_rows(n: Node, key: str, t: Tensor | None, T: int, cols: int | None) -> None:
    """A per-step tensor: (R,) or (R, C') with R in {1, T} and C' in {1, cols}."""
    if t is None:
        return
    bad_rows = t.dim() < 1 or t.shape[0] not in (1, T)
    bad_cols = t.dim() > 2 or (cols is not None and t.dim() == 2 and t.shape[1] not in (1, cols))
    if bad_rows or bad_cols or (cols is None and t.dim() != 1):
        expected = f"({T} or 1)" if cols is None else f"({T} or 1, {cols} or 1)"
        raise HmdfError(f"node {n.name!r}: {key} has shape {tuple(t.shape)}, expected {expected}")


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
