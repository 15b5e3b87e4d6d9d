"""What a DeployModel costs: bytes per layer, and the paper's operation counts (SPEC §5.3, §10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hmdf_deploy.deploy.graph import Conv, DeployModel, Synapse
from hmdf_deploy.deploy.hmdf_file import weight_scheme
from hmdf_deploy.deploy.pack import packed_nbytes
from hmdf_deploy.deploy.reference import Reference

#: The paper's storage accounting (SPEC §10): bytes per weight.
PAPER_BYTES = {"fp32": 4.0, "1bit": 0.25, "1.5bit": 0.375}
PJ_PER_SOP = 0.9


@dataclass
class LayerRow:
    name: str
    kind: str
    weights: str  # fp32 / 1bit / 1.5bit, or "-" for layers without weights
    params: int  # weights of the layer (synapses), or per-step parameters (others)
    bits_per_weight: float  # as stored in the .hmdf file
    bytes: int  # every tensor of the node as stored
    paper_bytes: float  # SPEC §10 accounting of the same parameters

    @property
    def ratio(self) -> float:
        """Compression against float32 weights."""
        return 4.0 * self.params / self.bytes if self.bytes else 1.0


def layer_rows(model: DeployModel) -> list[LayerRow]:
    rows = []
    for n in model.nodes:
        tensors = n.tensors()
        if not tensors:
            continue
        extra = sum(4 * t.numel() for k, t in tensors.items() if k != "weight")
        if isinstance(n, Synapse):
            numel = n.weight.numel()
            if n.weights == "fp32":
                wbytes, bits = 4 * numel, 32.0
            else:
                wbytes = packed_nbytes(numel, weight_scheme(n.weight))
                bits = 8.0 * wbytes / max(1, numel)
            rows.append(LayerRow(n.name, n.kind, n.weights, numel, bits, wbytes + extra,
                                 PAPER_BYTES[n.weights] * numel + 4 * (n.out_channels * 2)))
        else:
            numel = sum(t.numel() for t in tensors.values())
            rows.append(LayerRow(n.name, n.kind, "-", numel, 32.0, extra, 4.0 * numel))
    return rows


@dataclass
class Costs:
    """SPEC §10, per sample, summed over T."""

    sops: float  # synaptic operations of every conv except the stem
    nops: float  # 3 per HM-DF neuron per step, 1 per Parallel neuron per step
    energy_mj: float
    spike_rate: float  # non-zero share of all neuron outputs


@torch.no_grad()
def measure_costs(model: DeployModel, sequence: Tensor) -> Costs:
    """Run (T, B, ...) through the reference and count as the paper does (SPEC §10)."""
    T, B = sequence.shape[:2]
    record: dict[str, Tensor] = {}
    Reference(model).run(sequence, record=record)
    convs = [n for n in model.nodes if isinstance(n, Conv)]
    sops = 0.0
    for n in convs[1:]:  # every conv except the stem
        nz_in = (record[n.inputs[0]] != 0).flatten(0, 1).float()
        sops += float(F.conv2d(nz_in, (n.weight != 0).float(), stride=n.stride, padding=n.padding).sum())
    nops = fired = total = 0.0
    for n in model.neurons:
        out = record[n.name]
        nops += (1 if n.model == "parallel" else 3) * out[0, 0].numel() * T
        fired, total = fired + float((out != 0).sum()), total + out.numel()
    energy_mj = sops / B * PJ_PER_SOP * 1e-9 / (8 if model.spikes == "4bit" else 1)
    return Costs(sops / B, nops, energy_mj, fired / max(1.0, total))


__all__ = ["LayerRow", "Costs", "layer_rows", "measure_costs"]
