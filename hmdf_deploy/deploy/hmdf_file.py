"""A DeployModel as a `.hmdf` file (docs/hmdf-format.md): tensors + graph JSON in the container.

Tensor `<node>.<field>` holds each node tensor; low-bit weights are stored packed (uint8, "sign1"
when every code is ±1, else "trit5"), with the shape and scheme in the node's JSON entry. Reading
checks that every node finds exactly the tensors it needs and that nothing is left over, then
validates the rebuilt model; any problem is one HmdfError naming the node or tensor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hmdf_deploy.deploy.container import read_container, write_container
from hmdf_deploy.deploy.graph import DeployModel, Node, Synapse, node_from_parts
from hmdf_deploy.deploy.pack import pack, packed_nbytes, unpack
from hmdf_deploy.errors import HmdfError


def weight_scheme(codes: Tensor) -> str:
    """1 bit per weight when every code is ±1, else base-3 trits at 1.6 bits (SPEC §5.3)."""
    return "sign1" if bool((codes != 0).all()) else "trit5"


def to_parts(model: DeployModel) -> tuple[dict[str, Tensor], dict]:
    tensors: dict[str, Tensor] = {}
    nodes = []
    for n in model.nodes:
        entry = {"type": n.kind, **n.attrs()}
        for key, t in n.tensors().items():
            if key == "weight" and isinstance(n, Synapse) and n.weights != "fp32":
                scheme = weight_scheme(t)
                entry["packing"] = {"scheme": scheme, "shape": list(t.shape)}
                t = pack(t, scheme)
            tensors[f"{n.name}.{key}"] = t.contiguous()
        nodes.append(entry)
    meta = {"T": model.T, "input_shape": list(model.input_shape), "event": model.event,
            "num_classes": model.num_classes, "output": model.output, "source": model.source,
            "nodes": nodes}
    return tensors, meta


def from_parts(tensors: dict[str, Tensor], meta: dict) -> DeployModel:
    try:
        entries = list(meta["nodes"])
        T, output, event, num_classes = meta["T"], meta["output"], meta["event"], meta["num_classes"]
        input_shape = tuple(meta["input_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise HmdfError(f"the graph metadata is incomplete or malformed ({type(e).__name__}: {e})") from None
    if not isinstance(event, bool) or not isinstance(output, str):
        raise HmdfError("the graph metadata is incomplete or malformed: 'event' must be a boolean and 'output' a string")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (T, num_classes, *input_shape)):
        raise HmdfError("the graph metadata is incomplete or malformed: T, num_classes and input_shape must be integers")
    if len(input_shape) != 3:
        raise HmdfError(f"input_shape {list(input_shape)} must be (C, H, W)")
    unused = set(tensors)
    nodes = [_node(entry, tensors, unused) for entry in entries]
    if unused:
        raise HmdfError(f"tensor {sorted(unused)[0]!r} is not used by any node")
    source = meta.get("source") or {}
    if not isinstance(source, dict):
        raise HmdfError("the graph metadata is incomplete or malformed: 'source' must be an object")
    return DeployModel(T, input_shape, event, num_classes, nodes, output, source).validate()


def _node(entry: dict, tensors: dict[str, Tensor], unused: set[str]) -> Node:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("type"), str):
        raise HmdfError(f"graph node {str(entry)[:80]!r} has no name or type")
    entry = dict(entry)
    kind, name, packing = entry.pop("type"), entry["name"], entry.pop("packing", None)
    if not isinstance(entry.get("inputs"), list) or not all(isinstance(i, str) for i in entry["inputs"]):
        raise HmdfError(f"node {name!r}: inputs must be a list of node names")
    prefix = f"{name}."
    own = {k[len(prefix):]: tensors[k] for k in tensors if k.startswith(prefix) and "." not in k[len(prefix):]}
    unused.difference_update(prefix + k for k in own)
    if packing is not None:
        own["weight"] = _unpacked(name, own.get("weight"), packing)
    return node_from_parts(kind, entry, own)


def _unpacked(name: str, packed: Tensor | None, packing: dict) -> Tensor:
    try:
        scheme, shape = str(packing["scheme"]), [int(s) for s in packing["shape"]]
    except (KeyError, TypeError, ValueError):
        raise HmdfError(f"node {name!r}: packing must give a scheme and a shape") from None
    if packed is None:
        raise HmdfError(f"node {name!r}: tensor '{name}.weight' is missing")
    if any(s < 0 for s in shape) or scheme not in ("sign1", "trit5", "trit2"):
        raise HmdfError(f"node {name!r}: bad packing {packing}")
    numel = 1
    for s in shape:
        numel *= s
    if packed.numel() != packed_nbytes(numel, scheme):
        raise HmdfError(f"tensor '{name}.weight' has {packed.numel()} bytes; shape {shape} in {scheme} needs "
                        f"{packed_nbytes(numel, scheme)}")
    return unpack(packed, numel, scheme, name=f"{name}.weight").reshape(shape)


def save_hmdf(model: DeployModel, path: Path) -> None:
    """Write `model` as a .hmdf file (docs/hmdf-format.md); atomic: a failed write leaves no file."""
    wide = [n.name for n in model.nodes if any(v.dtype == torch.float64 for v in vars(n).values()
                                               if isinstance(v, torch.Tensor))]
    if wide:
        raise HmdfError(f"layer {wide[0]} holds float64 parameters and a .hmdf file stores float32: save "
                        "with_dtype(model, torch.float32) (from hmdf_deploy.deploy), or fold in float32")
    tensors, meta = to_parts(model.validate())
    write_container(path, tensors, meta)


def load_hmdf(path: Path) -> DeployModel:
    """Read and validate a .hmdf file; never executes anything from it."""
    tensors, meta = read_container(path)
    return from_parts(tensors, meta)


__all__ = ["save_hmdf", "load_hmdf", "to_parts", "from_parts", "weight_scheme"]
