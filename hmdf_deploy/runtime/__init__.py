"""The streaming runtime: `Engine` over the torch, onnxruntime and triton backends."""

from hmdf_deploy.runtime.backends import BACKENDS, available_backends
from hmdf_deploy.runtime.engine import POLICIES, Engine, StepResult

__all__ = ["BACKENDS", "POLICIES", "Engine", "StepResult", "available_backends"]
