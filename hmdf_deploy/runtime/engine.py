"""The streaming Engine (DESIGN.md "Runtime"): a model, a backend, its state and a stream policy.

Policies for streams longer than the trained T:
- `window` (default): reset the state every T frames; one prediction per window of T steps.
- `continuous`: keep the state; steps past T reuse the last step's parameters; the prediction is
  the running sum of logits since the start.

Inputs (docs/behaviour.md): NaN or Inf is refused (a NaN membrane would silently poison every
later step of the window); a batch of 0 gives empty logits (0, K); the batch size is fixed from a
window's first step until the next reset (the state is per sample).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmdf_deploy.data import framing
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.errors import HmdfError, HmdfWarning
from hmdf_deploy.runtime.backends import make_backend

POLICIES = ("window", "continuous")


@dataclass
class StepResult:
    t: int  # step index within the window (window) or since the start (continuous)
    window: int
    logits: np.ndarray  # (B, K) of this step
    summed: np.ndarray  # (B, K) running sum over the window (or the whole stream)
    window_done: bool  # the last step of a window (window policy)

    @property
    def prediction(self) -> np.ndarray:
        return self.summed.argmax(-1)

    @property
    def confidence(self) -> np.ndarray:
        z = self.summed - self.summed.max(-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return p.max(-1)


class Engine:
    """`step(x_t)` for streaming, `run(frames)` for a whole window; `reset()` starts a new stream.

    `model`: a DeployModel, a .hmdf file or an exported .onnx step graph. Inputs are numpy arrays
    (or anything `np.asarray` takes), cast to float32: (B, C, H, W) per step, (T, B, C, H, W) for
    `run`, time first.
    """

    def __init__(self, model: DeployModel | str | Path, backend: str = "auto", policy: str = "window") -> None:
        if policy not in POLICIES:
            raise HmdfError(f"unknown policy {policy!r}; choose window or continuous")
        self.backend = make_backend(model, backend)
        self.T, self.input_shape = self.backend.T, self.backend.input_shape
        self.framing = framing(self.backend.dataset)  # how `stream` bins a recording: as the training data was
        if not self.T:
            raise HmdfError("the model does not record its number of time steps T")
        self.policy = policy
        self.reset()

    def reset(self) -> None:
        self.backend.reset()
        self.t, self.window, self.summed = 0, 0, None

    @property
    def state(self) -> dict[str, np.ndarray]:
        """A copy of each stateful neuron layer's membrane (B, …) after the last step; {} at the start of
        a window (zeros). Parallel neurons keep none."""
        return {k: v.cpu().numpy().copy() if isinstance(v, torch.Tensor) else np.array(v) for k, v in self.backend.state.items()}

    def step(self, x_t: np.ndarray) -> StepResult:
        x_t = _checked(x_t, self.input_shape, f"the input at step {self.t}", "B")
        if self.summed is not None and len(x_t) != len(self.summed):
            raise HmdfError(f"batch size changed from {len(self.summed)} to {len(x_t)} within a window; "
                            "call reset() first (the state is per sample)")
        logits = self.backend.step(x_t, self.t)
        self.summed = logits if self.summed is None else self.summed + logits
        result = StepResult(self.t, self.window, logits, self.summed,
                            self.policy == "window" and self.t == self.T - 1)
        self.t += 1
        if result.window_done:
            self.backend.reset()
            self.t, self.window, self.summed = 0, self.window + 1, None
        return result

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Logits (T, B, K) of a (T, B, C, H, W) sequence from a fresh state (the stream is untouched);
        steps past the model's T run as the continuous policy does."""
        frames = _checked(frames, self.input_shape, "the input sequence", "T, B")
        if len(frames) != self.T:
            warnings.warn(f"the input sequence has {len(frames)} steps and the model was trained on T={self.T}; "
                          f"frames are time first (T, B, C, H, W): batch-first data becomes that with np.swapaxes(x, 0, 1)",
                          HmdfWarning, stacklevel=2)
        saved = self.backend.state
        try:
            return self.backend.run(frames)
        finally:
            self.backend.state = saved


def _checked(x, shape: tuple[int, ...], what: str, lead: str) -> np.ndarray:
    """`x` as float32, refused if it is not (`lead`…, *shape) or holds NaN or Inf (after the cast:
    1e39 overflows to Inf). One pass over the input, small next to the convolutions."""
    with np.errstate(over="ignore"):  # the overflow is reported below, as a refusal
        x = np.asarray(x, dtype=np.float32)
    leading = lead.count(",") + 1
    if x.ndim != leading + len(shape) or x.shape[leading:] != tuple(shape):
        raise HmdfError(f"{what} has shape {x.shape}; the model takes ({lead}, {', '.join(map(str, shape))})")
    if not np.isfinite(x).all():
        raise HmdfError(f"{what} holds NaN or Inf values")
    return x
