"""One batch of training in each mode of SPEC §4, and evaluation per time step (SPEC §4.4).

The model is a `SpikingNet` (or a DistributedDataParallel wrapper around one): `model(x_t, t)`
is one time step. `frame(x, t)` picks the input of step t: static images repeat (direct
encoding), event data is already (B, T, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("online", "online-accumulate", "stbp")


def frame(x: Tensor, t: int, static: bool) -> Tensor:
    return x if static else x[:, t]


def unwrap(model: nn.Module) -> nn.Module:
    """The SpikingNet inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class BatchResult:
    loss: float  # mean of the losses that were back-propagated
    logits: Tensor  # (B, classes): summed over the steps that ran, detached
    backward_calls: int
    steps_run: int


def train_batch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    *,
    T: int,
    static: bool,
    mode: str,
    t_star: int | None = None,
) -> BatchResult:
    """Train on one batch. `t_star` (not None) is Random Backprop (SPEC §4.2), online modes only."""
    net = unwrap(model)
    net.reset_state()
    net.detach_state(mode != "stbp")
    if mode == "stbp":
        return _stbp(model, optimizer, x, y, T, static)
    if t_star is not None:
        return _random_backprop(model, optimizer, x, y, t_star, static)
    return _online(model, optimizer, x, y, T, static, accumulate=mode == "online-accumulate")


def _online(model, optimizer, x, y, T, static, accumulate) -> BatchResult:
    """SPEC §4.1: loss on each step's own output; T optimizer steps, or one on the mean of the T gradients."""
    total, losses = 0.0, []
    optimizer.zero_grad(set_to_none=True)
    for t in range(T):
        out = model(frame(x, t, static), t)
        loss = F.cross_entropy(out, y)
        (loss / T if accumulate else loss).backward()
        if not accumulate:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total = total + out.detach()
        losses.append(loss.item())
    if accumulate:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return BatchResult(sum(losses) / T, total, T, T)


def _random_backprop(model, optimizer, x, y, t_star, static) -> BatchResult:
    """SPEC §4.2: steps before t* keep no graph; only loss_{t*} is back-propagated; later steps skipped."""
    total = 0.0
    with torch.no_grad():
        for t in range(t_star):
            total = total + model(frame(x, t, static), t)
    optimizer.zero_grad(set_to_none=True)
    out = model(frame(x, t_star, static), t_star)
    loss = F.cross_entropy(out, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return BatchResult(loss.item(), total + out.detach(), 1, t_star + 1)


def _stbp(model, optimizer, x, y, T, static) -> BatchResult:
    """SPEC §4.3: full BPTT over all T steps, loss on the mean output."""
    optimizer.zero_grad(set_to_none=True)
    outs = torch.stack([model(frame(x, t, static), t) for t in range(T)])
    loss = F.cross_entropy(outs.mean(0), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return BatchResult(loss.item(), outs.detach().sum(0), 1, T)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, static: bool, batch_size: int = 256) -> list[float]:
    """Accuracy at every step t from the running sum of logits Σ_{τ≤t} o_τ (SPEC §4.4)."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    correct = None
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        cum = net.forward_sequence(xb, static=static).cumsum(0)  # (T, B, classes)
        hits = (cum.argmax(-1) == yb).sum(1)
        correct = hits if correct is None else correct + hits
    net.train(was_training)
    return (correct.double() / len(y)).tolist()
