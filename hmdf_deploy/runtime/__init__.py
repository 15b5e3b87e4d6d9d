"""The streaming runtime: `Engine` over the torch, onnxruntime and triton backends; `stream` feeds it
recordings."""

from hmdf_deploy.runtime.backends import BACKENDS, available_backends
from hmdf_deploy.runtime.engine import POLICIES, Engine, StepResult
from hmdf_deploy.runtime.stream import StreamReport, stream

__all__ = ["BACKENDS", "POLICIES", "Engine", "StepResult", "StreamReport", "available_backends", "stream"]
