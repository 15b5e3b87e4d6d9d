"""`hmdf quantize`: fold a training run, check the deployment form against it, then write it.

The check runs held-out inputs through the trained network in eval mode and through the reference
executor of the DeployModel (parallel form), and compares logits, predictions and the 4-bit codes
of every neuron (SPEC §1.2: codes may differ only at rounding ties). A model that disagrees beyond
float rounding is never written.
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from hmdf_deploy.data import load_dataset
from hmdf_deploy.deploy.fold import fold, with_dtype
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.deploy.inputs import sequence_input
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import SpikingNet, build_model
from hmdf_deploy.neurons import SPIKE_LEVELS, HMDFNeuron, ParallelHMDF
from hmdf_deploy.training import checkpoint as ckpt
from hmdf_deploy.training import evaluate, load_run_config, load_trained

#: The float64 fold agrees to float64 rounding (about 1e-15 relative to the logit scale in the
#: tests' networks, ResNet-34 included); this leaves a deep network's amplification a million times
#: that, and still refuses a fold as subtly wrong as one that drops BN's ε (3e-4) or computes BN's
#: affine in float32 (1e-7), which 4-bit codes may hide but float spikes show
#: (tests/test_equivalence.py).
LOGIT_RTOL = 1e-9
#: Share of 4-bit codes allowed to flip at rounding ties (each flip is one code off by ±1).
CODE_FLIP_TOL = 1e-3


@dataclass
class Check:
    samples: int
    max_abs_diff: float
    logit_scale: float
    prediction_agreement: float
    codes: int
    code_flips: int
    max_code_diff: int

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff <= LOGIT_RTOL * max(1.0, self.logit_scale)
                and self.code_flips <= CODE_FLIP_TOL * max(1, self.codes) and self.max_code_diff <= 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


@dataclass
class QuantizeResult:
    model: DeployModel
    check: Check
    accuracy_before: float | None = None  # post-training quantization of an fp32 run only
    accuracy_after: float | None = None


@torch.no_grad()
def check_equivalence(net: SpikingNet, deploy: DeployModel, x: Tensor, batch_size: int = 128) -> Check:
    """Trained network (eval) against the DeployModel reference on inputs x (SPEC §1.2, §6).

    Both run in float64: the check is about the fold, and in float32 the rounding of two different
    (equally valid) summation orders already flips 4-bit codes at ties in large networks, and the
    flips cascade. Give it the fold kept in float64 (`fold(..., dtype=torch.float64)`): rounded to
    float32 first, its parameters too can move a code that sits at a tie, and one such flip has
    moved a deep network's logits by 0.4. The stored model is float32; every runtime is checked
    against it separately.
    """
    net = copy.deepcopy(net).double().eval()
    x = x.double()
    ref = Reference(deploy, dtype=torch.float64)
    static = not deploy.event
    diff = scale = agree = codes = flips = worst = 0.0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        trained_codes: dict[str, list[Tensor]] = {}
        hooks = [m.register_forward_hook(_recorder(name, trained_codes))
                 for name, m in net.named_modules() if isinstance(m, (HMDFNeuron, ParallelHMDF)) and m.spikes == "4bit"]
        try:
            want = net.forward_sequence(xb, static=static)
        finally:
            for h in hooks:
                h.remove()
        record: dict[str, Tensor] = {}
        if not torch.isfinite(want).all():
            raise HmdfError("the trained network gives NaN or Inf logits on the test data: its training "
                            "diverged (see train_loss in metrics.jsonl); there is nothing to quantize")
        got = ref.run(sequence_input(xb, deploy.T, static), record=record)
        step_diff = float((got - want).abs().max())
        diff = max(diff, step_diff if math.isfinite(step_diff) else math.inf)  # max() would drop a NaN
        scale = max(scale, float(want.abs().max()))
        agree += float((got.sum(0).argmax(-1) == want.sum(0).argmax(-1)).sum())
        for name, steps in trained_codes.items():
            delta = (record[name] - torch.stack(steps)).abs()
            codes, flips, worst = codes + delta.numel(), flips + float((delta > 0).sum()), max(worst, float(delta.max()))
    return Check(len(x), diff, scale, agree / max(1, len(x)), int(codes), int(flips), int(worst))


def _recorder(name: str, store: dict):
    def hook(module, args, output):
        store.setdefault(name, []).append(torch.round(output * SPIKE_LEVELS))
    return hook


def quantize_run(run_dir: Path, *, weights: str | None = None, calib: int | None = None,
                 data_dir: Path | None = None) -> QuantizeResult:
    """Fold the run in `run_dir` and check it on its dataset's test split; `weights` quantizes an
    fp32 run after training; `data_dir` is where that dataset is now (default: where training read it)."""
    run_dir = Path(run_dir)
    model_config, train_config = load_run_config(run_dir)
    net = load_trained(run_dir)
    data_dir = data_dir or (Path(train_config.data_dir) if train_config.data_dir else None)
    _, test, info = load_dataset(train_config.dataset, T=model_config.T, seed=train_config.seed, data_dir=data_dir)
    if calib is not None:
        if calib < 1:
            raise HmdfError(f"--calib must be at least 1, got {calib}")
        test = replace(test, x=test.x[:calib], y=test.y[:calib])
    before = after = None
    if weights is not None and weights != model_config.weights:
        if model_config.weights != "fp32":
            raise HmdfError(f"this run was trained with {model_config.weights} weights; --weights only applies to fp32 runs")
        before = evaluate(net, test.x, test.y, static=not info.event)[-1]
        model_config = replace(model_config, weights=weights).validate()
        quantized = build_model(model_config)
        quantized.load_state_dict(net.state_dict())
        net = quantized.eval()
        after = evaluate(net, test.x, test.y, static=not info.event)[-1]
    source = {"model": model_config.to_dict(), "dataset": train_config.dataset,
              "run_sha256": _sha256(run_dir / ckpt.WEIGHTS)}
    exact = fold(net, model_config, event=info.event, source=source, dtype=torch.float64)
    check = check_equivalence(net, exact, test.x)  # the fold itself, before float32 rounds it for storage
    return QuantizeResult(with_dtype(exact, torch.float32).validate(), check, before, after)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
