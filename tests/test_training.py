"""Training (SPEC §4) through the library: the per-batch modes, evaluation, the run directory.

Everything here runs a tiny VGG (two conv units) on random tensors or on the 8×8 digits.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hmdf_deploy.data import load_dataset
from hmdf_deploy.atomic import WriteError
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig, build_model
from hmdf_deploy.neurons import HMDFNeuron, StatefulNeuron
from hmdf_deploy.training import (
    MODES,
    Progress,
    TrainConfig,
    TrainingInterrupted,
    evaluate,
    load_run_config,
    load_trained,
    resume,
    start,
    train_batch,
)
from hmdf_deploy.training import checkpoint as ckpt
from hmdf_deploy.training import trainer

#: The tiny network every test here trains: two conv units on 8×8 input.
TINY_CFG = [8, "M", 16, "M"]

RUN_FILES = {"config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def tiny_net(T: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="vgg", cfg=list(TINY_CFG), in_channels=1, input_size=(8, 8), T=T))


def random_batch(n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


class Probe:
    """Counts what one `train_batch` does to a network and its optimizer.

    - `calls`: (t, output) of every forward step of the whole network;
    - `states`: (t, requires_grad of the first neuron's new membrane) per step;
    - `backward`: how many backward passes reached the classifier weight;
    - `grads`: the gradients (by parameter name) at each optimizer step.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.calls: list[tuple[int, torch.Tensor]] = []
        self.states: list[tuple[int, bool]] = []
        self.backward = 0
        self.grads: list[dict[str, torch.Tensor]] = []
        self.membrane_grads: dict[int, int] = {}
        names = {id(p): n for n, p in net.named_parameters()}
        net.register_forward_hook(lambda m, args, out: self.calls.append((args[1], out)))
        neuron = next(m for m in net.modules() if isinstance(m, HMDFNeuron))
        neuron.register_forward_hook(self._neuron_step)
        net.classifier.weight.register_hook(self._count_backward)
        optimizer.register_step_pre_hook(
            lambda opt, a, k: self.grads.append(
                {names[id(p)]: p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None}
            )
        )

    def _count_backward(self, grad):
        self.backward += 1

    def _neuron_step(self, module, args, out):
        t = args[1]
        self.states.append((t, module.v.requires_grad))
        if module.v.requires_grad:  # does any gradient ever reach the membrane v_t?
            self.membrane_grads.setdefault(t, 0)

            def seen(g, t=t):
                self.membrane_grads[t] += 1

            module.v.register_hook(seen)

    @property
    def steps(self) -> list[int]:
        return [t for t, _ in self.calls]

    @property
    def outputs(self) -> list[torch.Tensor]:
        return [o for _, o in self.calls]


def per_step_reference_grads(net, x, y, T):
    """Gradient of each step's own loss CE(o_t, y), state detached, weights fixed: SPEC §4.1."""
    net = copy.deepcopy(net)
    net.reset_state()
    net.detach_state(True)
    grads = []
    for t in range(T):
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, t), y).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    return grads


def bptt_reference_grads(net, x, y, T, detach):
    """Gradient of CE(mean_t o_t, y) through all T steps, with or without the state detached."""
    net = copy.deepcopy(net)
    net.reset_state()
    net.detach_state(detach)
    net.zero_grad(set_to_none=True)
    outs = torch.stack([net(x, t) for t in range(T)])
    F.cross_entropy(outs.mean(0), y).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=1e-5, atol=1e-7), n
    assert any(float(g.abs().sum()) > 0 for g in want.values())  # not a vacuous comparison


def frozen_sgd(net):
    """SGD with lr 0: the weights stay put, so each step's gradient can be recomputed independently."""
    return torch.optim.SGD(net.parameters(), lr=0.0)


# --------------------------------------------------------------------------------------------
# SPEC §4.1-§4.3: one batch in each mode
# --------------------------------------------------------------------------------------------

T3 = 3


@pytest.mark.parametrize("t_star", range(T3))
def test_random_backprop_runs_up_to_t_star_and_backpropagates_once(t_star):
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    reference = per_step_reference_grads(net, x, y, T3)
    probe = Probe(net, opt)
    stepped = []
    opt.register_step_post_hook(lambda o, a, k: stepped.append(True))

    r = train_batch(net, opt, x, y, T=T3, static=True, mode="online", t_star=t_star)

    # the forward stops at t*: steps after it never run
    assert probe.steps == list(range(t_star + 1))
    # no graph before t*: neither the outputs nor the carried membranes require grad
    assert [o.requires_grad for o in probe.outputs] == [False] * t_star + [True]
    assert [rg for _, rg in probe.states] == [False] * t_star + [True]
    # exactly one backward pass and one optimizer step
    assert probe.backward == 1
    assert len(stepped) == 1 and len(probe.grads) == 1
    assert (r.backward_calls, r.steps_run) == (1, t_star + 1)
    # only loss_{t*} is back-propagated: the gradient is that of CE(o_{t*}, y) alone
    assert_grads_close(probe.grads[0], reference[t_star])
    assert r.loss == pytest.approx(F.cross_entropy(probe.outputs[-1], y).item(), rel=1e-6)
    # the reported logits are summed over the steps that ran
    assert torch.allclose(r.logits, torch.stack([o.detach() for o in probe.outputs]).sum(0))
    assert not r.logits.requires_grad
    # the optimizer's gradients are cleared afterwards
    assert all(p.grad is None for p in net.parameters())


def test_random_backprop_also_in_online_accumulate_mode():
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    probe = Probe(net, opt)
    r = train_batch(net, opt, x, y, T=T3, static=True, mode="online-accumulate", t_star=1)
    assert probe.steps == [0, 1] and probe.backward == 1 and len(probe.grads) == 1
    assert (r.backward_calls, r.steps_run) == (1, 2)


def test_online_takes_T_optimizer_steps_on_each_steps_own_loss():
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    reference = per_step_reference_grads(net, x, y, T3)
    probe = Probe(net, opt)

    r = train_batch(net, opt, x, y, T=T3, static=True, mode="online")

    assert probe.steps == list(range(T3))
    assert probe.backward == T3 and len(probe.grads) == T3
    assert (r.backward_calls, r.steps_run) == (T3, T3)
    # step t's update uses the gradient of loss_t on its own output o_t, nothing accumulated
    for got, want in zip(probe.grads, reference):
        assert_grads_close(got, want)
    # the reported loss is the mean of the per-step losses
    losses = [F.cross_entropy(o, y).item() for o in probe.outputs]
    assert r.loss == pytest.approx(sum(losses) / T3, rel=1e-6)
    # state detached (sg(v_{t-1})): no gradient ever reaches a membrane
    assert all(m.detach_state for m in net.modules() if isinstance(m, StatefulNeuron))
    assert probe.membrane_grads and all(n == 0 for n in probe.membrane_grads.values())


def test_online_updates_the_weights_between_steps():
    net = tiny_net(T3)
    x, y = random_batch()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    opt.register_step_post_hook(lambda o, a, k: seen.append(net.classifier.weight.detach().clone()))
    before = net.classifier.weight.detach().clone()
    train_batch(net, opt, x, y, T=T3, static=True, mode="online")
    chain = [before, *seen]
    assert len(seen) == T3
    assert all(not torch.equal(a, b) for a, b in zip(chain, chain[1:]))


def test_online_accumulate_takes_one_step_with_the_mean_gradient():
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    reference = per_step_reference_grads(net, x, y, T3)
    probe = Probe(net, opt)

    r = train_batch(net, opt, x, y, T=T3, static=True, mode="online-accumulate")

    assert probe.steps == list(range(T3))
    assert probe.backward == T3 and len(probe.grads) == 1
    assert (r.backward_calls, r.steps_run) == (T3, T3)
    names = {n for g in reference for n in g}  # the leak a_0 is unused at t = 0: no grad then
    mean = {n: sum(g[n] for g in reference if n in g) / T3 for n in names}
    assert_grads_close(probe.grads[0], mean)
    assert all(n == 0 for n in probe.membrane_grads.values())


def test_stbp_backpropagates_through_the_membrane_once():
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    full = bptt_reference_grads(net, x, y, T3, detach=False)
    cut = bptt_reference_grads(net, x, y, T3, detach=True)
    probe = Probe(net, opt)

    r = train_batch(net, opt, x, y, T=T3, static=True, mode="stbp")

    assert probe.steps == list(range(T3))
    assert probe.backward == 1 and len(probe.grads) == 1
    assert (r.backward_calls, r.steps_run) == (1, T3)
    assert not any(m.detach_state for m in net.modules() if isinstance(m, StatefulNeuron))
    # the gradient reaches step 0's membrane from the later losses: the state is not detached
    assert probe.membrane_grads[0] == 1
    assert_grads_close(probe.grads[0], full)
    # ...which makes it differ from the same loss with the state cut
    assert any(not torch.allclose(full[n], cut[n]) for n in full)
    # loss on the mean output, logits summed
    outs = torch.stack([o.detach() for o in probe.outputs])
    assert r.loss == pytest.approx(F.cross_entropy(outs.mean(0), y).item(), rel=1e-6)
    assert torch.allclose(r.logits, outs.sum(0))


def test_online_after_stbp_detaches_again():
    """The detach flag is set per batch, so switching modes on the same network works."""
    net = tiny_net(T3)
    x, y = random_batch()
    opt = frozen_sgd(net)
    train_batch(net, opt, x, y, T=T3, static=True, mode="stbp")
    probe = Probe(net, opt)
    train_batch(net, opt, x, y, T=T3, static=True, mode="online")
    assert all(n == 0 for n in probe.membrane_grads.values())


def test_event_input_uses_frame_t_at_step_t():
    """Event data is (B, T, C, H, W): step t must see frame t (SPEC §4 / §8)."""
    net = tiny_net(T3)
    opt = frozen_sgd(net)
    seen = []
    net.features[0].register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    x = torch.rand(4, T3, 1, 8, 8)
    y = torch.randint(10, (4,))
    train_batch(net, opt, x, y, T=T3, static=False, mode="online")
    assert len(seen) == T3
    for t in range(T3):
        assert torch.equal(seen[t], x[:, t])


# --------------------------------------------------------------------------------------------
# SPEC §4.4: evaluation from the running sum of logits
# --------------------------------------------------------------------------------------------

# logits[t][sample] for 4 samples, 3 classes, 3 steps; labels below. By hand:
#   running sums' argmax, sample by sample (✓ = right):
#   s0 (y=0): [1,0,0]✓  [1,.5,0]✓  [1,.5,2]✗
#   s1 (y=1): [0,1,0]✓  [0,2,0]✓   [5,2,0]✗
#   s2 (y=2): [1,0,0]✗  [1,0,2]✓   [1,1,2]✓
#   s3 (y=0): [0,2,0]✗  [3,2,0]✓   [3,2,0]✓
# → accuracy per t: 2/4, 4/4, 2/4. (Each step's own logits would give 2/4, 3/4, 1/4.)
LOGITS = torch.tensor([
    [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 2, 0]],
    [[0, .5, 0], [0, 1, 0], [0, 0, 2], [3, 0, 0]],
    [[0, 0, 2], [5, 0, 0], [0, 1, 0], [0, 0, 0]],
], dtype=torch.float32)
LABELS = torch.tensor([0, 1, 2, 0])
EXPECTED_ACC = [2 / 4, 4 / 4, 2 / 4]


class FakeNet(nn.Module):
    """Returns the logits of LOGITS for the samples whose index is x[:, 0]."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward_sequence(self, x, static):
        self.calls.append((len(x), static, self.training))
        return LOGITS[:, x[:, 0].long()]


class Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the network is `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_evaluate_accuracy_per_step_from_running_sum(batch_size):
    net = FakeNet().train()
    x = torch.arange(len(LABELS), dtype=torch.float32)[:, None]
    acc = evaluate(net, x, LABELS, static=True, batch_size=batch_size)
    assert acc == pytest.approx(EXPECTED_ACC)
    # every sample evaluated once, in eval mode; training mode restored afterwards
    assert sum(n for n, _, _ in net.calls) == len(LABELS)
    assert all(static and not training for _, static, training in net.calls)
    assert net.training


def test_evaluate_unwraps_and_keeps_eval_mode():
    net = FakeNet().eval()
    x = torch.arange(len(LABELS), dtype=torch.float32)[:, None]
    acc = evaluate(Wrapper(net), x, LABELS, static=False, batch_size=2)
    assert acc == pytest.approx(EXPECTED_ACC)
    assert [s for _, s, _ in net.calls] == [False, False]
    assert not net.training


def test_evaluate_real_network_matches_its_own_forward():
    net = tiny_net(T3).eval()
    x, y = random_batch(n=20, seed=5)
    with torch.no_grad():
        logits = net.forward_sequence(x, static=True)
    want = [float((logits[: t + 1].sum(0).argmax(1) == y).float().mean()) for t in range(T3)]
    assert evaluate(net, x, y, static=True, batch_size=7) == pytest.approx(want)


# --------------------------------------------------------------------------------------------
# the run directory: start, resume, interrupt
# --------------------------------------------------------------------------------------------

RUN_T = 2
BATCH = 256
SEED = 3


def model_config() -> ModelConfig:
    # in_channels, input_size and num_classes are filled in from the dataset by `start`
    return ModelConfig(arch="vgg", cfg=list(TINY_CFG), T=RUN_T)


def train_config(**kw) -> TrainConfig:
    base = dict(dataset="digits", epochs=2, batch_size=BATCH, lr=0.05, seed=SEED)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def batches_per_epoch(single_thread):
    train, _, _ = load_dataset("digits", T=RUN_T)
    return len(train) // BATCH


class StopAt:
    """should_stop that turns True at its n-th call (one call per batch, before the batch)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


class Recorder(Progress):
    def __init__(self):
        self.started, self.batches, self.epochs = [], [], []

    def start(self, epochs, batches, epoch, batch):
        self.started.append((epochs, batches, epoch, batch))

    def batch(self, epoch, batch, loss, acc):
        self.batches.append((epoch, batch))

    def epoch(self, record):
        self.epochs.append(record)


_STRAIGHT: dict = {}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, single_thread):
    """Uninterrupted 2-epoch runs, one per Random Backprop and Mixup / CutMix setting, made once per module."""

    def get(random_backprop: bool, mix: bool = False) -> Path:
        if (random_backprop, mix) not in _STRAIGHT:
            out = tmp_path_factory.mktemp("straight") / "run"
            start(out, model_config(), train_config(random_backprop=random_backprop, mix=mix))
            _STRAIGHT[random_backprop, mix] = out
        return _STRAIGHT[random_backprop, mix]

    return get


def load_state(run: Path) -> dict:
    return torch.load(run / "train_state.pt", weights_only=True)


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("seconds", "batches_per_s")}


@pytest.mark.parametrize(
    "random_backprop, mix, stops",
    [
        (False, False, ["after epoch 1"]),
        (False, False, ["epoch 2 batch 2"]),
        (False, False, ["epoch 1 batch 2"]),
        (False, False, ["epoch 1 batch 2", "epoch 2 batch 1"]),  # interrupted twice
        (True, False, ["epoch 2 batch 2"]),
        (True, False, ["epoch 1 batch 0"]),  # before anything was trained
        (True, True, ["epoch 1 batch 2"]),  # Mixup / CutMix draws, then t*, from the batch's generator
    ],
    ids=["after-epoch", "mid-epoch-2", "mid-epoch-1", "twice", "rb-mid-epoch", "rb-at-once", "mix-rb-mid-epoch"],
)
def test_interrupt_and_resume_is_bit_equal_to_a_straight_run(
    tmp_path, straight, batches_per_epoch, read_weights, assert_same_weights, random_backprop, mix, stops
):
    ref = straight(random_backprop, mix)
    out = tmp_path / "run"

    def position(stop: str) -> tuple[int, int]:  # 0-based (epoch, batch) where training stops
        if stop == "after epoch 1":
            return 1, 0
        _, e, _, b = stop.split()
        return int(e) - 1, int(b)

    done = 0  # global index of the next batch
    for i, stop in enumerate(stops):
        epoch, batch = position(stop)
        target = epoch * batches_per_epoch + batch
        stopper = StopAt(target - done + 1)
        with pytest.raises(TrainingInterrupted) as e:
            if i == 0:
                start(out, model_config(), train_config(random_backprop=random_backprop, mix=mix), should_stop=stopper)
            else:
                resume(out, should_stop=stopper)
        done = target
        message = str(e.value)
        assert f"--resume {out}" in message and "\n" not in message
        state = load_state(out)
        assert (state["position"]["epoch"], state["position"]["batch"]) == (epoch, batch)
        # the metrics hold exactly the finished epochs
        assert [r["epoch"] for r in ckpt.read_metrics(out / "metrics.jsonl")] == list(range(1, epoch + 1))

    progress = Recorder()
    last = resume(out, progress=progress)
    final_epoch, final_batch = position(stops[-1])
    assert progress.started == [(2, batches_per_epoch, final_epoch, final_batch)]
    assert progress.batches[0] == (final_epoch, final_batch)  # picks up at the very batch it stopped
    assert len(progress.batches) == 2 * batches_per_epoch - (final_epoch * batches_per_epoch + final_batch)

    assert_same_weights(read_weights(out / "model.safetensors"), read_weights(ref / "model.safetensors"))
    got, want = load_state(out), load_state(ref)
    assert_same_weights(got["model"], want["model"])
    assert got["position"] == want["position"] and got["scheduler"] == want["scheduler"]
    momentum = lambda s: {k: v["momentum_buffer"] for k, v in s["optimizer"]["state"].items()}  # noqa: E731
    assert_same_weights({str(k): v for k, v in momentum(got).items()},
                        {str(k): v for k, v in momentum(want).items()})
    # one metrics line per epoch, no duplicates, and the same numbers as the straight run
    mine = ckpt.read_metrics(out / "metrics.jsonl")
    theirs = ckpt.read_metrics(ref / "metrics.jsonl")
    assert [r["epoch"] for r in mine] == [1, 2]
    assert [comparable(r) for r in mine] == [comparable(r) for r in theirs]
    assert comparable(last) == comparable(theirs[-1])
    assert set(os.listdir(out)) == RUN_FILES


def test_straight_run_writes_a_complete_run_directory(straight, batches_per_epoch, read_weights):
    out = straight(False)
    assert set(os.listdir(out)) == RUN_FILES
    config = json.loads((out / "config.json").read_text())
    model, train = load_run_config(out)
    # the dataset's shape was filled into the stored model config
    assert (model.in_channels, model.input_size, model.num_classes) == (1, (8, 8), 10)
    assert model.cfg == TINY_CFG and model.T == RUN_T
    assert train == train_config()
    assert config["data"]["name"] == "digits"
    records = ckpt.read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert len(r["test_acc"]) == RUN_T and all(0 <= a <= 1 for a in r["test_acc"])
        assert 0 <= r["train_acc"] <= 1 and r["train_loss"] > 0
        assert r["batches_per_s"] * r["seconds"] == pytest.approx(batches_per_epoch)
    # cosine schedule over 2 epochs: lr/2 after epoch 1, 0 after epoch 2
    assert records[0]["lr"] == pytest.approx(0.05 / 2) and records[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the reported test accuracy is that of the saved weights
    net = load_trained(out)
    assert not net.training
    _, test, _ = load_dataset("digits", T=RUN_T)
    assert evaluate(net, test.x, test.y, static=True) == records[-1]["test_acc"]
    # the weights in model.safetensors are those of the training state
    weights = read_weights(out / "model.safetensors")
    state = load_state(out)
    assert all(torch.equal(weights[k], state["model"][k]) for k in state["model"])
    assert state["position"] == {"epoch": 2, "batch": 0, "loss_sum": 0.0, "correct": 0, "seen": 0}


def test_resume_of_a_finished_run_changes_nothing(tmp_path, straight):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight(False), out)
    before = {f: (out / f).read_bytes() for f in RUN_FILES}
    progress = Recorder()
    last = resume(out, progress=progress)
    assert progress.batches == [] and progress.epochs == []
    assert comparable(last) == comparable(ckpt.read_metrics(out / "metrics.jsonl")[-1])
    assert {f: (out / f).read_bytes() for f in RUN_FILES} == before


def spy_on_batches(monkeypatch) -> list[tuple[torch.Tensor, dict]]:
    """Record each call of `train_batch` by the trainer: its targets and keyword arguments."""
    calls = []
    real = trainer.train_batch

    def spy(model, optimizer, x, y, **kw):
        calls.append((y, kw))
        return real(model, optimizer, x, y, **kw)

    monkeypatch.setattr(trainer, "train_batch", spy)
    return calls


@pytest.mark.parametrize("mode", [*MODES, "random-backprop"])
def test_trainer_passes_the_mode_to_every_batch(tmp_path, monkeypatch, mode, batches_per_epoch):
    recorded = spy_on_batches(monkeypatch)
    rb = mode == "random-backprop"
    tc = train_config(epochs=1, mode="online" if rb else mode, random_backprop=rb)
    start(tmp_path / "run", model_config(), tc)
    calls = [kw for _, kw in recorded]
    assert len(calls) == batches_per_epoch
    assert {(c["T"], c["static"], c["mode"]) for c in calls} == {(RUN_T, True, tc.mode)}
    stars = [c["t_star"] for c in calls]
    if rb:
        assert all(isinstance(s, int) and 0 <= s < RUN_T for s in stars)
        assert len(set(stars)) > 1  # drawn per batch, not once
    else:
        assert stars == [None] * len(calls)


@pytest.mark.parametrize("mix", [False, True])
def test_trainer_mixes_batches_only_when_asked(tmp_path, monkeypatch, mix, batches_per_epoch):
    """With `mix` the loss gets Mixup / CutMix soft targets (rows summing to 1 over the classes)
    while train_acc still counts the labels; without it, the labels themselves."""
    recorded = spy_on_batches(monkeypatch)
    record = start(tmp_path / "run", model_config(), train_config(epochs=1, mix=mix))
    seen = [y for y, _ in recorded]
    assert len(seen) == batches_per_epoch
    for y in seen:
        if mix:
            assert y.dtype == torch.float32 and y.shape == (BATCH, 10)
            assert torch.allclose(y.sum(1), torch.ones(BATCH)) and bool((y < 1).any())
        else:
            assert y.dtype == torch.long and y.shape == (BATCH,)
    assert 0 < record["train_acc"] <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["mix"] is mix


def test_nan_weights_after_an_epochs_last_step_are_not_saved(tmp_path, monkeypatch, batches_per_epoch):
    """The loss is measured before the optimizer step, so the last step of an epoch can leave NaN
    weights behind a finite loss: training stops there and the epoch is not checkpointed."""
    real = trainer.train_batch
    calls = []

    def poisoning(model, optimizer, x, y, **kw):
        result = real(model, optimizer, x, y, **kw)
        calls.append(1)
        if len(calls) == batches_per_epoch:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return result

    monkeypatch.setattr(trainer, "train_batch", poisoning)
    with pytest.raises(HmdfError, match="diverged in epoch 1: its last step left NaN or Inf weights.*lower --lr"):
        start(tmp_path / "run", model_config(), train_config(epochs=1))
    assert not (tmp_path / "run" / "model.safetensors").exists() and not (tmp_path / "run" / "train_state.pt").exists()


# --------------------------------------------------------------------------------------------
# atomic, consistent checkpoints
# --------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "train_state.pt"
    target.write_bytes(b"previous good checkpoint")

    def broken(tmp: Path):
        tmp.write_bytes(b"half a chec")
        raise OSError("disk full")

    with pytest.raises(HmdfError, match=re.escape(f"cannot write {target}: disk full")):
        ckpt.atomic_write(target, broken)
    assert target.read_bytes() == b"previous good checkpoint"
    assert os.listdir(tmp_path) == ["train_state.pt"]


def test_a_failed_metrics_append_is_one_write_error(tmp_path):
    """metrics.jsonl is appended, not written atomically; its OSError is still one WriteError line."""
    (tmp_path / "metrics.jsonl").mkdir()  # opening a directory for appending fails (EISDIR)
    with pytest.raises(WriteError, match=r"cannot write .*metrics.jsonl: Is a directory"):
        ckpt.append_metrics(tmp_path / "metrics.jsonl", {"epoch": 1})


def test_save_weights_failure_keeps_the_old_weights(tmp_path, monkeypatch, read_weights):
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(path, {"w": torch.ones(3)})

    real = Path.write_bytes

    def broken(path, data):
        real(path, data[:7])
        raise KeyboardInterrupt  # a kill in the middle of the write

    monkeypatch.setattr(Path, "write_bytes", broken)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_weights(path, {"w": torch.zeros(3)})
    assert torch.equal(read_weights(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_failed_checkpoint_leaves_the_previous_one_and_resume_recovers(
    tmp_path, monkeypatch, straight, read_weights, assert_same_weights
):
    out = tmp_path / "run"
    real_write = Path.write_bytes
    saves = []
    snapshot = {}

    def failing_write(path, data):
        if path.name.startswith(".train_state.pt."):
            saves.append(path)
            if len(saves) == 2:  # the checkpoint at the end of epoch 2
                real_write(path, data[:16])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    class Snap(Progress):
        def epoch(self, record):
            snapshot[record["epoch"]] = (out / "train_state.pt").read_bytes()

    monkeypatch.setattr(Path, "write_bytes", failing_write)
    with pytest.raises(WriteError, match=f"^cannot write {re.escape(str(out / 'train_state.pt'))}: No space left on device$"):
        start(out, model_config(), train_config(), progress=Snap())
    monkeypatch.setattr(Path, "write_bytes", real_write)

    assert (out / "train_state.pt").read_bytes() == snapshot[1]
    assert load_state(out)["position"]["epoch"] == 1
    assert set(os.listdir(out)) == RUN_FILES  # no temporary file left behind
    resume(out)
    assert_same_weights(read_weights(out / "model.safetensors"), read_weights(straight(False) / "model.safetensors"))
    assert [r["epoch"] for r in ckpt.read_metrics(out / "metrics.jsonl")] == [1, 2]


@pytest.mark.parametrize("victim", ["append_metrics", "save_weights", "save_state"])
def test_a_crash_between_the_epoch_writes_is_repaired_by_resume(tmp_path, monkeypatch, straight, read_weights, victim):
    """A kill after one of the end-of-epoch writes but before the others: after `--resume`,
    metrics.jsonl must hold one line per epoch and model.safetensors the final weights."""
    out = tmp_path / "run"
    real = getattr(ckpt, victim)
    calls = []

    def crash_on_last_epoch(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second epoch's write
        return real(*a, **kw)

    monkeypatch.setattr(ckpt, victim, crash_on_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        start(out, model_config(), train_config())
    monkeypatch.setattr(ckpt, victim, real)

    resume(out)
    want = read_weights(straight(False) / "model.safetensors")
    got = read_weights(out / "model.safetensors")
    epochs = [r["epoch"] for r in ckpt.read_metrics(out / "metrics.jsonl")]
    weights_final = sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert {"metric epochs": epochs, "final weights": weights_final} == {"metric epochs": [1, 2], "final weights": True}


def test_a_run_killed_before_its_first_checkpoint_can_be_continued(tmp_path):
    """config.json is written before training; a kill before the first checkpoint must not leave a
    directory that `start` refuses (it holds a run) and `resume` refuses too (nothing to resume)."""
    out = tmp_path / "run"

    class Crash(Progress):
        def batch(self, epoch, batch, loss, acc):
            raise MemoryError("killed")

    tc = train_config(epochs=1)
    with pytest.raises(MemoryError):
        start(out, model_config(), tc, progress=Crash())
    assert (out / "config.json").is_file() and not (out / "train_state.pt").exists()

    refusals = []
    for attempt in (lambda: resume(out), lambda: start(out, model_config(), tc)):
        try:
            attempt()
            break
        except HmdfError as e:
            refusals.append(str(e))
    assert set(os.listdir(out)) == RUN_FILES, refusals


def test_run_files_get_ordinary_permissions(straight):
    """Files in the run directory are readable like any other file the user creates (umask)."""
    umask = os.umask(0)
    os.umask(umask)
    out = straight(False)
    modes = {f: oct((out / f).stat().st_mode & 0o777) for f in RUN_FILES}
    assert modes == {f: oct(0o666 & ~umask) for f in RUN_FILES}


# --------------------------------------------------------------------------------------------
# user errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(mode="bptt"), "unknown mode 'bptt'; choose one of online, online-accumulate, stbp"),
        (dict(mode="stbp", random_backprop=True), "--random-backprop .* --mode stbp"),
        (dict(epochs=0), "--epochs"),
        (dict(batch_size=0), "--batch-size"),
        (dict(lr=0.0), "--lr must be a positive number"),
        (dict(lr=-0.1), "--lr must be a positive number"),
        (dict(lr=float("nan")), "--lr must be a positive number, got nan"),
    ],
)
def test_train_config_errors(kw, message):
    with pytest.raises(HmdfError, match=message) as e:
        train_config(**kw).validate()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mode", MODES)
def test_train_config_accepts_every_mode(mode):
    assert train_config(mode=mode).validate().mode == mode


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(T=0), "T must be at least 1"),
        (dict(neuron="lif", spikes="4bit"), "LIF"),
        (dict(parallel=True), "--parallel"),
        (dict(neuron="izhikevich"), "unknown neuron"),
        (dict(cfg=["M", "M"]), "no conv layer"),
        (dict(cfg=[8, "M", "M", "M", "M"]), "too many M"),
        (dict(cfg=[8, "X"]), "bad model cfg entry"),
        (dict(seca=3), "unknown seca"),
        (dict(num_classes=1), "num_classes"),
    ],
)
def test_model_config_errors(kw, message):
    base = dict(arch="vgg", cfg=list(TINY_CFG), in_channels=1, input_size=(8, 8), T=2)
    with pytest.raises(HmdfError, match=message) as e:
        ModelConfig(**{**base, **kw}).validate()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "mc, tc",
    [
        (model_config(), train_config(mode="bad")),
        # valid for 32×32 but pools the 8×8 digits away: caught once the dataset is known
        (ModelConfig(arch="vgg", cfg=[8, "M", "M", "M", "M"], T=2), train_config()),
        (model_config(), train_config(dataset="cifar10")),  # no --data-dir
    ],
    ids=["bad-mode", "too-many-pools", "missing-data"],
)
def test_start_errors_create_no_directory(tmp_path, mc, tc):
    out = tmp_path / "run"
    with pytest.raises(HmdfError):
        start(out, mc, tc)
    assert not out.exists()


def test_start_refuses_an_existing_run_and_names_resume(straight):
    out = straight(False)
    before = {f: (out / f).read_bytes() for f in RUN_FILES}
    with pytest.raises(HmdfError, match="already holds a training run") as e:
        start(out, model_config(), train_config())
    assert f"--resume {out}" in str(e.value)
    assert {f: (out / f).read_bytes() for f in RUN_FILES} == before


def test_resume_errors(tmp_path, straight, read_weights, assert_same_weights):
    import shutil

    with pytest.raises(HmdfError, match="config.json not found"):
        resume(tmp_path / "nothing-here")

    # Killed before its first checkpoint: --resume trains it from the start, to the same weights.
    no_state = tmp_path / "no-state"
    shutil.copytree(straight(False), no_state)
    (no_state / "train_state.pt").unlink()
    resume(no_state)
    assert_same_weights(read_weights(no_state / "model.safetensors"),
                        read_weights(straight(False) / "model.safetensors"))
    assert [r["epoch"] for r in ckpt.read_metrics(no_state / "metrics.jsonl")] == [1, 2]

    corrupt = tmp_path / "corrupt"
    shutil.copytree(straight(False), corrupt)
    (corrupt / "train_state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HmdfError, match="not a readable training state"):
        resume(corrupt)

    other = tmp_path / "other-model"
    shutil.copytree(straight(False), other)
    config = json.loads((other / "config.json").read_text())
    config["model"]["cfg"] = [4, "M", 16, "M"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(HmdfError, match="does not match this run's config"):
        resume(other)

    bad_json = tmp_path / "bad-json"
    shutil.copytree(straight(False), bad_json)
    (bad_json / "config.json").write_text("{")
    with pytest.raises(HmdfError, match="not valid JSON"):
        resume(bad_json)


def test_load_trained_errors(tmp_path, straight):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight(False), run)
    (run / "model.safetensors").unlink()
    with pytest.raises(HmdfError, match="model.safetensors not found"):
        load_trained(run)
    ckpt.save_weights(run / "model.safetensors", {"classifier.weight": torch.zeros(10, 64)})
    with pytest.raises(HmdfError, match="does not match config.json"):
        load_trained(run)


def test_load_trained_names_weights_whose_shapes_do_not_match_config(tmp_path, straight):
    """config.json edited to other channel counts: one HmdfError naming the tensors (load_state_dict
    with strict=False still raises a RuntimeError on shapes)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight(False), run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["cfg"] = [4, "M", 16, "M"]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(HmdfError) as e:
        load_trained(run)
    message = str(e.value)
    assert message.startswith(f"{run / 'model.safetensors'} does not match config.json (") and "\n" not in message
    assert re.search(r"\(8, 1, 3, 3\), config.json makes it \(4, 1, 3, 3\)", message), message
    assert "more)" in message  # every tensor of the first unit and the next conv differ; three are named


def cli(*args):
    from typer.testing import CliRunner

    from hmdf_deploy.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result, pattern: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), result.stderr


def test_unreadable_run_directories_are_one_line_in_the_cli(tmp_path, straight):
    import shutil

    mismatch = tmp_path / "mismatch"
    shutil.copytree(straight(False), mismatch)
    config = json.loads((mismatch / "config.json").read_text())
    config["model"]["cfg"] = [4, "M", 16, "M"]
    (mismatch / "config.json").write_text(json.dumps(config))
    assert_one_line(cli("quantize", mismatch, "-o", tmp_path / "m.hmdf"),
                    rf"error: {re.escape(str(mismatch / 'model.safetensors'))} does not match config.json \(.*\)")

    folder = tmp_path / "folder"
    shutil.copytree(straight(False), folder)
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    line = rf"error: cannot read {re.escape(str(folder / 'config.json'))}: Is a directory"
    assert_one_line(cli("quantize", folder, "-o", tmp_path / "f.hmdf"), line)
    assert_one_line(cli("train", "--resume", folder), line)

    file = tmp_path / "model.hmdf"
    file.write_bytes(b"not a run")
    assert_one_line(cli("train", "--resume", file), rf"error: --resume {re.escape(str(file))} is a file; "
                                                    r"give a training run directory")
    with pytest.raises(HmdfError, match=r"cannot read .*model.hmdf/config.json: Not a directory"):
        load_run_config(file)
    assert not (tmp_path / "m.hmdf").exists() and not (tmp_path / "f.hmdf").exists()
