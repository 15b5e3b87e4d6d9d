"""Runtime backends: each runs a DeployModel one time step at a time, keeping its own state.

torch (CPU reference), onnxruntime (an exported step graph) and triton (GPU kernels,
`triton_backend.py`).

A backend has `reset()`, `step(x_t, t) -> logits` ((B, C, H, W) float32 → (B, K)) and
`run(x) -> logits` ((T, B, …) → (T, B, K), starting from a fresh state). Every backend must agree
with the torch reference (SPEC §1.2 rounding decision).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.deploy.hmdf_file import load_hmdf
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.runtime.triton_backend import TritonBackend
from hmdf_deploy.runtime.triton_backend import unavailable as triton_unavailable


class TorchBackend:
    """The reference executor on CPU: step form for streaming, parallel form for whole windows."""

    name = "torch"

    def __init__(self, model: DeployModel) -> None:
        self.T, self.input_shape = model.T, tuple(model.input_shape)
        self.dataset = model.source.get("dataset")
        self.ref = Reference(model)
        self.state: dict = {}

    def reset(self) -> None:
        self.state = {}

    @torch.no_grad()
    def step(self, x_t: np.ndarray, t: int) -> np.ndarray:
        logits, self.state = self.ref.step(torch.as_tensor(x_t, dtype=torch.float32), self.state, t)
        return logits.float().numpy()

    @torch.no_grad()
    def run(self, x: np.ndarray) -> np.ndarray:
        self.reset()
        return self.ref.run(torch.as_tensor(x, dtype=torch.float32)).float().numpy()


class OnnxBackend:
    """An exported step graph in onnxruntime; the state tensors go out and back in at every step."""

    name = "onnxruntime"

    def __init__(self, model: DeployModel | Path) -> None:
        from hmdf_deploy.exporters.onnx import build_onnx, ort_session

        # In memory the file size does not matter: the float weight path is the fastest in
        # onnxruntime on CPU (benchmarks/RESULTS.md, Peers); an .onnx file runs as exported.
        source = build_onnx(model, "step", "float").SerializeToString() if isinstance(model, DeployModel) else str(model)
        try:
            self.session = ort_session(source)
        except Exception as e:  # onnxruntime raises several private exception types
            raise HmdfError(f"onnxruntime cannot load {model if isinstance(model, Path) else 'the model'}: "
                            f"{str(e).splitlines()[0]}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if "t" not in inputs or "x" not in inputs:
            what = model if isinstance(model, Path) else "this ONNX model"
            raise HmdfError(f"{what} is not an hmdf step graph (it needs inputs x and t); export it with --graph step")
        self.states = {k[len("state_in."):]: inputs[k].shape[1:] for k in inputs if k.startswith("state_in.")}
        self.outputs = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.T = int(meta.get("hmdf.T", "0")) or None
        self.dataset = meta.get("hmdf.dataset")  # absent in files exported before it was recorded
        self.input_shape = tuple(inputs["x"].shape[1:])
        self.state: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.state = {}

    def step(self, x_t: np.ndarray, t: int) -> np.ndarray:
        x_t = np.ascontiguousarray(x_t, dtype=np.float32)
        feed = {"x": x_t, "t": np.array(t, dtype=np.int64)}
        for name, shape in self.states.items():
            feed[f"state_in.{name}"] = self.state.get(name, np.zeros((x_t.shape[0], *shape), np.float32))
        out = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        self.state = {name: out[f"state_out.{name}"] for name in self.states}
        return out["logits"]

    def run(self, x: np.ndarray) -> np.ndarray:
        self.reset()
        return np.stack([self.step(x[t], t) for t in range(x.shape[0])])


BACKENDS = ("auto", "torch", "onnxruntime", "triton")


def make_backend(model: DeployModel | str | Path, name: str = "auto"):
    """A backend for a DeployModel, a .hmdf file or an exported .onnx step graph. `auto` takes triton
    on a CUDA GPU, else onnxruntime when it is installed (faster per step on CPU than torch,
    benchmarks/RESULTS.md), else torch."""
    if name not in BACKENDS:
        raise HmdfError(f"unknown backend {name!r}; this machine can run: {', '.join(available_backends())}")
    if not isinstance(model, DeployModel) and Path(model).suffix.lower() != ".onnx":
        model = load_hmdf(Path(model))
    if not isinstance(model, DeployModel):  # an .onnx file runs only in onnxruntime
        if name in ("torch", "triton"):
            raise HmdfError(f"an .onnx file runs on the onnxruntime backend; pass the .hmdf file for --backend {name}")
        return OnnxBackend(Path(model))
    if name == "auto":  # never the interpreter: it is for tests, not for speed
        usable = available_backends()
        name = ("triton" if "triton" in usable and torch.cuda.is_available()
                else "onnxruntime" if "onnxruntime" in usable else "torch")
    if name == "torch":
        return TorchBackend(model)
    if name == "triton":
        return TritonBackend(model)
    if "onnxruntime" not in available_backends():
        raise HmdfError(f"onnxruntime is not installed; this machine can run: {', '.join(available_backends())}")
    return OnnxBackend(model)


def available_backends() -> list[str]:
    """The backends this machine can run (triton: a CUDA GPU, or TRITON_INTERPRET=1 on the CPU)."""
    return (["torch"] + (["onnxruntime"] if importlib.util.find_spec("onnxruntime") else [])
            + (["triton"] if triton_unavailable() is None else []))
