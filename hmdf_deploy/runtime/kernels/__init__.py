"""Triton kernels of the streaming runtime (DESIGN.md "Runtime", issue: GPU kernels).

- `neuron`: the neuron step fused with its per-(t, channel) epilogue, looped over any number of
  steps, and the time-parallel scan of SPEC §7 for whole sequences;
- `gemm`: an implicit-GEMM convolution / linear layer that reads weights in their packed form
  (2-bit trits, 1-bit signs) and unpacks them in registers, exact on integer 4-bit codes;
- `fused`: a synapse and the neuron reading it in one kernel (the current stays in registers).

On a CUDA GPU they compile; with TRITON_INTERPRET=1 set before this package is imported, the same
kernels run on CPU tensors in Triton's interpreter (how the tests check them). Each launcher takes
torch tensors and returns torch tensors; `hmdf_deploy.runtime.triton_backend` wires them into a
network.
"""

from hmdf_deploy.runtime.kernels.fused import synapse_neuron
from hmdf_deploy.runtime.kernels.gemm import PackedWeight, pack_weight, synapse
from hmdf_deploy.runtime.kernels.neuron import NeuronParams, neuron_scan, neuron_steps

__all__ = ["PackedWeight", "pack_weight", "synapse", "NeuronParams", "neuron_steps", "neuron_scan",
           "synapse_neuron"]
