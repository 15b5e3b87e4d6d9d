"""The triton backend end to end: the Engine on the Triton kernels against the torch backend, for
every model kind of the deployment contract (tests/test_equivalence.py CASES: VGG and ResNet-18/19/34,
every weight and spike mode, HM-DF / LIF / Parallel neurons, Mem-BN, SECA I and II, pools, stems,
static and event input). Without a GPU the kernels run in Triton's interpreter (conftest.py).

Float32 executors that accumulate in different orders differ by rounding, which deep random
networks amplify; so each is measured against the float64 reference and the triton backend may
be off by at most a small multiple of the torch backend's own float32 error (nets.float_bound).
On these cases that holds with room to spare, and 4-bit models agree exactly: every layer's codes
at every step equal the reference's.
"""

from __future__ import annotations

import copy
import sys

import nets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

if sys.platform != "linux":  # triton publishes wheels for Linux only
    pytest.skip("triton is Linux-only", allow_module_level=True)

from test_equivalence import CASES

from hmdf_deploy.deploy import Reference
from hmdf_deploy.deploy.graph import Conv, Pool
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig
from hmdf_deploy.runtime import Engine, triton_backend
from hmdf_deploy.runtime.triton_backend import TritonBackend

# In the interpreter a gather past a tensor's end shows up as garbage that overflows: fail on it.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")
#: Seeds of nets.make_deploy other than 0: with 0 a layer of these is silent on the test input (a
#: silent last layer leaves the logits the classifier's bias, blind to its scale).
SEEDS = {"vgg-max-1.5bit-4bit-seca1": 1, "vgg-G-1.5bit-float-seca2-membn-T1": 1}
KINDS = [pytest.param(*c.values, SEEDS.get(c.id, 0), id=c.id, marks=[pytest.mark.slow] if "resnet" in c.id else [])
         for c in CASES]


@pytest.mark.parametrize("cfg, event, batch, seed", KINDS)
def test_triton_engine_equals_torch_engine(cfg, event, batch, seed):
    deploy = nets.make_deploy(cfg, event, seed=seed)
    x = nets.inputs(cfg, event, batch, torch.Generator().manual_seed(1))
    truth = nets.reference_truth(deploy, x)
    record: dict = {}
    Reference(deploy).run(x, record=record)
    fired = {n.name: float((record[n.name] != 0).float().mean()) for n in deploy.neurons}
    assert min(fired.values()) > 0.01, f"a layer is (almost) silent: {fired}"
    torch_engine, triton_engine = Engine(deploy, "torch"), Engine(deploy, "triton")
    assert isinstance(triton_engine.backend, TritonBackend)
    np.testing.assert_array_equal(torch_engine.run(x.numpy()), truth.f32.numpy())  # the yardstick

    spikes = recorded_spikes(triton_engine.backend)
    steps = np.stack([triton_engine.step(x[t].numpy()).logits for t in range(cfg.T)])
    truth.check(steps, "step by step")
    truth.check(triton_engine.run(x.numpy()), "whole window")
    if cfg.spikes == "4bit":  # integer codes between layers: no rounding to disagree about
        for n in deploy.neurons:  # every layer's codes at every step, the fused kernels' included
            if n.spikes == "4bit":
                got = torch.stack(spikes[n.name][:cfg.T])
                assert got.dtype == torch.uint8 and torch.equal(got.float(), record[n.name]), n.name


def recorded_spikes(backend: TritonBackend) -> dict[str, list[torch.Tensor]]:
    """Each neuron's spikes, one entry per call, from now on (a wrapper around the backend's own)."""
    spikes: dict[str, list[torch.Tensor]] = {}
    neuron = backend._neuron

    def recording(n, *args):
        s, v = neuron(n, *args)
        spikes.setdefault(n.name, []).append(s.cpu())
        return s, v
    backend._neuron = recording
    return spikes


# Small ones: Triton's interpreter runs a scan with a custom combine element by element.
SCAN_KINDS = [c for c in KINDS if c.id in ("vgg-avg-fp32-float", "vgg-max-1.5bit-float-membn")]


@pytest.mark.parametrize("cfg, event, batch, seed", SCAN_KINDS)
def test_scan_backend_equals_torch_engine(cfg, event, batch, seed):
    """`TritonBackend(scan=True)` runs whole windows by the SPEC §7 scan (float spikes: a 4-bit code
    may legitimately flip at a rounding tie, which the kernel tests bound instead)."""
    deploy = nets.make_deploy(cfg, event, seed=seed)
    x = nets.inputs(cfg, event, batch, torch.Generator().manual_seed(2))
    truth = nets.reference_truth(deploy, x)
    backend = TritonBackend(deploy, scan=True)
    assert any(backend.layers[n.name].scannable for n in deploy.neurons), "no neuron takes the scan"
    truth.check(backend.run(x.numpy()), "scan")


def _kind(case_id: str):
    [case] = [c for c in CASES if c.id == case_id]
    cfg, event, _ = case.values
    return nets.make_deploy(cfg, event, seed=0)


def test_a_synapse_read_only_by_its_neuron_runs_fused_with_it():
    """`kernels.synapse_neuron` takes every conv whose current goes to its neuron alone: all convs of
    a plain VGG; none behind SECA (the attention reads the current); in a ResNet block the first
    conv but not the second (the residual add reads it) nor the stem (the shortcut reads it)."""
    vgg = _kind("vgg-avg-fp32-float")
    assert TritonBackend(vgg).fused == {n.name for n in vgg.nodes if n.kind == "conv"}
    assert TritonBackend(_kind("vgg-max-1.5bit-4bit-seca1")).fused == set()
    resnet = _kind("resnet18-fp32-float")
    assert TritonBackend(resnet).fused == {f"blocks.{i}.conv1" for i in range(8)}


GEOMETRY_SEEDS = {  # a fused path (plain VGG) and an unfused one (SECA-II, Mem-BN); both end in a
    # global pool, so any input size and stride still fit the classifier
    "fused": ModelConfig(arch="vgg", cfg=[4, "M", 6, "G"], input_size=(8, 8), T=2, weights="1.5bit",
                         spikes="4bit", num_classes=3, quantize_stem=True, pool="max"),
    "seca": ModelConfig(arch="vgg", cfg=[4, "M", 4, "G"], input_size=(8, 8), T=2, weights="1bit",
                        spikes="4bit", seca=2, mem_bn=True, num_classes=3),
}
_SEEDS: dict = {}


@settings(max_examples=30, deadline=None, derandomize=True)
@given(data=st.data(), which=st.sampled_from(sorted(GEOMETRY_SEEDS)))
def test_any_valid_geometry_runs_on_triton_like_the_reference(data, which):
    """The kernels index memory directly: for any strides, paddings, pool windows and input size
    that validate (odd, larger than the kernel, or leaving a 1×1 map), the triton backend gives
    the reference's logits, with only HmdfError for what does not fit."""
    if which not in _SEEDS:
        _SEEDS[which] = nets.make_deploy(GEOMETRY_SEEDS[which], False, seed=0)
    model = copy.deepcopy(_SEEDS[which])
    model.input_shape = (model.input_shape[0], data.draw(st.integers(5, 13)), data.draw(st.integers(5, 13)))
    for n in model.nodes:
        if isinstance(n, Conv) and which == "fused":  # SECA-II needs its conv to keep the map's size
            n.stride, n.padding = data.draw(st.integers(1, 2)), data.draw(st.integers(0, 3))
        elif isinstance(n, Pool) and n.mode != "global":
            n.kernel, n.stride = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
            n.padding = data.draw(st.integers(0, n.kernel // 2))
    try:
        model.validate()
    except HmdfError:
        return  # does not fit: refused the same way for every executor
    x = torch.rand(model.T, 2, *model.input_shape, generator=torch.Generator().manual_seed(0)) * 2
    truth = nets.reference_truth(model, x)
    truth.check(TritonBackend(model).run(x.numpy()), "run")
    backend, steps = TritonBackend(model), []
    for t in range(model.T):
        steps.append(backend.step(x[t].numpy(), t))
    truth.check(np.stack(steps), "step")


def _replaying(monkeypatch) -> list:
    """Make StepGraphs record on the CPU: a "recording" replays the step function itself, so the
    bookkeeping around CUDA graphs (buffers, keys, state hand-over) runs here as on a GPU."""
    recorded = []

    def capture(fn):
        recorded.append(fn)
        return fn
    monkeypatch.setattr(triton_backend, "_capture", lambda: capture)
    return recorded


def _stream_both(deploy, live: Engine, replayed: Engine) -> None:
    """Feed both engines the same streams: windows, past T (continuous), changed batch sizes, an
    Engine.run in between, more batch sizes than StepGraphs keeps; the logits must be equal."""
    g = torch.Generator().manual_seed(3)
    T = deploy.T
    for batch, steps in [(2, 2 * T + 1), (3, T), (1, T), (4, 1), (5, 1), (2, T)]:
        live.reset(), replayed.reset()
        for t in range(steps):
            x = torch.rand(batch, *deploy.input_shape, generator=g).numpy()
            want, got = live.step(x), replayed.step(x)
            np.testing.assert_array_equal(got.logits, want.logits, err_msg=f"batch {batch}, step {t}")
            if t == 1:  # a whole window from a fresh state, and the stream goes on untouched
                frames = torch.rand(T, batch, *deploy.input_shape, generator=g).numpy()
                np.testing.assert_array_equal(replayed.run(frames), live.run(frames))
    graphs = replayed.backend.graphs
    assert len(graphs.buffers) == graphs.MAX_BATCHES and 3 not in graphs.buffers  # the oldest dropped
    assert {k for k in graphs.replays if k[0] == 1} == {(1, t, True) for t in range(1, T)}  # t = 0: eager


@pytest.mark.parametrize("policy", ["window", "continuous"])
def test_replayed_steps_equal_launched_steps(monkeypatch, policy):
    """Steps replayed from recordings give exactly the logits of steps launched one by one."""
    deploy = _kind("vgg-G-1bit-4bit-seca2-membn")  # membranes, Mem-BN tables per step, SECA-II
    live = Engine(deploy, "triton", policy)
    live.backend.graphs = None  # kernels launched step by step (on a GPU too)
    recorded = _replaying(monkeypatch)
    _stream_both(deploy, live, Engine(deploy, "triton", policy))
    assert len(recorded) > 0


def test_a_replayed_step_reads_the_state_it_is_given(monkeypatch):
    """Setting the backend's state (as Engine.run restores it) is honoured by the next replay, and
    a step with no state does not replay the recording of that step with one."""
    deploy = _kind("vgg-G-1bit-4bit-seca2-membn")
    _replaying(monkeypatch)
    backend, live = TritonBackend(deploy), TritonBackend(deploy)
    live.graphs = None
    x = torch.rand(3, 2, *deploy.input_shape, generator=torch.Generator().manual_seed(4)).numpy()
    given = x.copy()
    for t in range(3):  # buffers, then a recording, then a replay
        backend.step(x[t], t)
        live.step(x[t], t)
    elsewhere = {k: v.clone() + 0.25 for k, v in live.state.items()}
    backend.state, live.state = elsewhere, dict(elsewhere)
    np.testing.assert_array_equal(backend.step(x[0], 1), live.step(x[0], 1))
    backend.reset(), live.reset()  # the same step row as recorded above, but from no state
    np.testing.assert_array_equal(backend.step(x[1], 1), live.step(x[1], 1))
    np.testing.assert_array_equal(x, given)  # the input buffer is the backend's own, not the caller's frame


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("policy", ["window", "continuous"])
def test_cuda_graph_steps_equal_launched_steps(policy):
    """On a GPU, the same streams through real CUDA graphs: equal to the kernels launched one by one."""
    deploy = _kind("vgg-G-1bit-4bit-seca2-membn")
    live = Engine(deploy, "triton", policy)
    live.backend.graphs = None
    _stream_both(deploy, live, Engine(deploy, "triton", policy))

