"""The streaming runtime (DESIGN.md "Runtime"): `hmdf_deploy.runtime` Engine, backends, stream.

Every backend (torch; onnxruntime built from a DeployModel; onnxruntime on an exported .onnx
file) is compared with the reference executor of the DeployModel it runs (`Reference.run`, the
parallel form), never with numbers copied from an earlier run. The networks are random folded
models whose BN statistics and neuron logits are randomised so that every layer fires. The stream
policies are checked on a tiny model built by hand, against values worked out by hand from the
SPEC §1 recurrence.
"""

from __future__ import annotations

import math
from pathlib import Path

import nets
from nets import inputs, step_loop, vgg
import numpy as np
import onnx
import pytest
import torch

import hmdf_deploy.runtime.backends as backends_module
from hmdf_deploy.deploy import DeployModel, Reference, load_hmdf, save_hmdf
from hmdf_deploy.deploy.graph import Flatten, Linear, Neuron
from hmdf_deploy.errors import HmdfError, HmdfWarning
from hmdf_deploy.events import EVENT_DTYPE, EventRecording, make_events, write_events
from hmdf_deploy.exporters.onnx import build_onnx, export
from hmdf_deploy.models import ModelConfig
from hmdf_deploy.runtime import BACKENDS, POLICIES, Engine, StepResult, available_backends
from hmdf_deploy.runtime.backends import OnnxBackend, TorchBackend, make_backend
from hmdf_deploy.runtime.triton_backend import TritonBackend
from hmdf_deploy.runtime.stream import StreamReport, expand_paths, stream

# ------------------------------------------------------------------------------------- helpers
def make_deploy(cfg: ModelConfig, event: bool, seed: int = 0) -> DeployModel:
    return nets.make_deploy(cfg, event, seed, source={"dataset": "neuro-digits" if event else "digits"})


def reference_stream(deploy: DeployModel, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, B, K) of `Reference.step` fed all N steps with its state carried (no reset);
    past T, `rows` reuses the last step's parameters (graph.py)."""
    return step_loop(Reference(deploy), x)


# --------------------------------------------------------------------------------- the models
# id → (config, event input, seed). Event models take 2×16×16 frames like neuro-digits.
CASES = {
    "event-float": (vgg([8, "M", 16, "G"], in_channels=2, input_size=(16, 16), num_classes=10, T=4), True, 0),
    "event-1.5bit-4bit": (vgg([8, "M", 16, "G"], in_channels=2, input_size=(16, 16), num_classes=10, pool="max",
                              weights="1.5bit", spikes="4bit", quantize_stem=True, T=3), True, 0),
    "static-float-membn": (vgg([8, "M", 16, "G"], mem_bn=True, T=3), False, 0),
    "static-1bit-4bit": (vgg([8, "M", 16, "G"], weights="1bit", spikes="4bit", T=3), False, 1),
    "lif-1bit": (vgg([8, "M", 16, "G"], neuron="lif", weights="1bit", T=3), False, 1),
    "resnet18-parallel-1.5bit-4bit": (ModelConfig(arch="resnet18", width=4, num_classes=5, in_channels=3,
                                                  input_size=(8, 8), weights="1.5bit", spikes="4bit",
                                                  parallel=True, T=2), False, 1),
}
BACKEND_KINDS = ("torch", "onnxruntime", "onnx-file", "triton")  # triton: in the interpreter without a GPU

_MODELS: dict = {}


def model(name: str) -> DeployModel:
    if name not in _MODELS:
        cfg, event, seed = CASES[name]
        _MODELS[name] = make_deploy(cfg, event, seed)
    return _MODELS[name]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """name → an exported step graph (written by `export`, which checks it first), built on demand."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            [cache[name]] = export(model(name), folder / f"{name}.onnx", graph="step")
        return cache[name]

    return get


@pytest.fixture
def engine_for(onnx_files):
    def make(name: str, kind: str, policy: str = "window") -> Engine:
        if kind == "onnx-file":
            engine = Engine(onnx_files(name), "onnxruntime", policy)
        else:
            engine = Engine(model(name), kind, policy)
        expected = {"torch": TorchBackend, "onnxruntime": OnnxBackend, "onnx-file": OnnxBackend, "triton": TritonBackend}[kind]
        assert isinstance(engine.backend, expected)
        return engine

    return make


def sample(name: str, batch: int, steps: int | None = None, seed: int = 100) -> torch.Tensor:
    cfg, event, _ = CASES[name]
    return inputs(cfg, event, batch, torch.Generator().manual_seed(seed), steps)


# ------------------------------------------------------------------------- the cases are real
@pytest.mark.parametrize("name", list(CASES))
def test_cases_are_not_trivial(name):
    """The comparisons below mean something: every neuron layer fires, the logits vary, and each
    case is the kind it claims to be."""
    deploy = model(name)
    cfg, event, _ = CASES[name]
    record: dict = {}
    want = Reference(deploy).run(sample(name, 5), record=record)
    fired = {n.name: float((record[n.name] != 0).float().mean()) for n in deploy.neurons}
    assert fired and min(fired.values()) > 0.01, f"a layer is (almost) silent: {fired}"
    assert float(want.std()) > 1e-2 and float(want.abs().max()) > 0.1
    # the five samples do not all get the same logits
    assert float((want.sum(0) - want.sum(0).mean(0)).abs().max()) > 1e-3
    assert deploy.event is event and deploy.T == cfg.T
    assert deploy.spikes == cfg.spikes
    assert any(n.model == "parallel" for n in deploy.neurons) == cfg.parallel
    assert all(n.model == "lif" for n in deploy.neurons) == (cfg.neuron == "lif")
    if cfg.spikes == "4bit":
        assert max(float(record[n.name].max()) for n in deploy.neurons) >= 2  # graded codes occur


# ---------------------------------------------------------------- backends equal the reference
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("kind", BACKEND_KINDS)
@pytest.mark.parametrize("name", list(CASES))
def test_engine_step_and_run_equal_reference(name, kind, batch, engine_for):
    """`Engine.step` one frame at a time and `Engine.run` on the whole window both give
    `Reference.run`'s logits; the StepResult bookkeeping follows them."""
    deploy = model(name)
    x = sample(name, batch)
    truth = nets.reference_truth(deploy, x)
    engine = engine_for(name, kind)
    assert engine.T == deploy.T and tuple(engine.input_shape) == tuple(deploy.input_shape)

    results = [engine.step(x[t].numpy()) for t in range(deploy.T)]
    got = np.stack([r.logits for r in results])
    truth.check(got, f"{name} {kind} step")
    for t, r in enumerate(results):
        assert (r.t, r.window, r.window_done) == (t, 0, t == deploy.T - 1)
        assert r.logits.shape == (batch, deploy.num_classes)
        truth[: t + 1].sum(0).check(r.summed, f"{name} {kind} summed {t}")
    assert np.array_equal(results[-1].prediction, results[-1].summed.argmax(-1))

    truth.check(engine.run(x.numpy()), f"{name} {kind} run")
    # the whole window again, from a numpy array of another dtype: the result does not depend on history
    truth.check(engine.run(x.numpy().astype(np.float64)), f"{name} {kind} run again")


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_hmdf_file_round_trip_runs_the_same(kind, tmp_path, engine_for):
    """A model saved with save_hmdf and loaded back streams to the same logits."""
    name = "event-1.5bit-4bit"
    path = tmp_path / "m.hmdf"
    save_hmdf(model(name), path)
    loaded = load_hmdf(path)
    assert loaded.source == {"dataset": "neuro-digits"}
    x = sample(name, 2)
    truth = nets.reference_truth(model(name), x)
    if kind == "onnx-file":  # the loaded model exported again, then streamed from the file
        [source] = export(loaded, tmp_path / "m.onnx", graph="step", path="integer")
        engine = Engine(source, "auto")
    else:
        engine = Engine(loaded, kind)
    assert engine.backend.name == ("onnxruntime" if kind == "onnx-file" else kind)
    truth.check(np.stack([engine.step(x[t].numpy()).logits for t in range(loaded.T)]), kind)


# ------------------------------------------------------------------------------ window policy
@pytest.mark.parametrize("kind", BACKEND_KINDS)
@pytest.mark.parametrize("name", ["event-float", "event-1.5bit-4bit", "lif-1bit"])
def test_window_policy_equals_independent_windows(name, kind, engine_for):
    """N·T streamed frames = N independent `Engine.run` windows: per-step logits, per-window
    summed logits and predictions; the state resets at each window boundary."""
    deploy = model(name)
    T, N, B = deploy.T, 3, 2
    x = sample(name, B, steps=N * T, seed=11)
    if not deploy.event:  # a static model: three different images, each held for a window
        x = torch.cat([sample(name, B, seed=20 + k) for k in range(N)])
    engine = engine_for(name, kind, "window")
    fresh = engine_for(name, "torch")
    windows = [fresh.run(x[k * T:(k + 1) * T].numpy()) for k in range(N)]
    truths = [nets.reference_truth(deploy, x[k * T:(k + 1) * T]) for k in range(N)]
    for k in range(N):
        truths[k].check(windows[k], f"window {k} run")

    done = []
    for step in range(N * T):
        r = engine.step(x[step].numpy())
        k, t = divmod(step, T)
        assert (r.t, r.window, r.window_done) == (t, k, t == T - 1), step
        truths[k][t].check(r.logits, f"{name} {kind} step {step}")
        truths[k][: t + 1].sum(0).check(r.summed, f"{name} {kind} summed {step}")
        if r.window_done:
            done.append(r)
    assert len(done) == N and [r.window for r in done] == list(range(N))
    for k, r in enumerate(done):
        assert np.array_equal(r.prediction, windows[k].sum(0).argmax(-1))
    assert (engine.t, engine.window, engine.summed) == (0, N, None)

    # the reset matters: a stream that keeps its state gives other logits in the later windows
    carried = reference_stream(deploy, x).numpy()
    assert float(np.abs(carried[T:] - np.concatenate(windows[1:])).max()) > 1e-3


def test_window_policy_partial_window_then_reset(engine_for):
    """`Engine.reset()` mid-window starts a new stream: step 0, window 0, fresh state."""
    name = "event-float"
    deploy = model(name)
    x = sample(name, 1, steps=deploy.T, seed=3)
    engine = engine_for(name, "onnxruntime")
    for t in range(deploy.T - 1):
        engine.step(sample(name, 1, seed=50 + t)[0].numpy())
    engine.reset()
    assert (engine.t, engine.window, engine.summed) == (0, 0, None)
    got = np.stack([engine.step(x[t].numpy()).logits for t in range(deploy.T)])
    nets.reference_truth(deploy, x).check(got, "after reset")


@pytest.mark.parametrize("kind", ["torch", "onnxruntime", "triton"])
def test_engine_run_leaves_the_stream_untouched(kind, engine_for):
    """engine.py documents `run` as 'from a fresh state (the stream is untouched)': a `run` in the
    middle of a stream must not change the logits of the stream's next steps."""
    name = "event-float"
    deploy = model(name)
    x = sample(name, 2, seed=5)
    truth = nets.reference_truth(deploy, x)
    engine = engine_for(name, kind)
    first = engine.step(x[0].numpy())
    engine.run(sample(name, 2, seed=6).numpy())  # an unrelated window, evaluated on the side
    rest = [engine.step(x[t].numpy()) for t in range(1, deploy.T)]
    truth.check(np.stack([first.logits] + [r.logits for r in rest]), f"{kind} stream around run")


# -------------------------------------------------------------------------- continuous policy
@pytest.mark.parametrize("kind", BACKEND_KINDS)
@pytest.mark.parametrize("name", ["event-1.5bit-4bit", "static-float-membn", "lif-1bit"])
def test_continuous_policy_keeps_state_past_T(name, kind, engine_for):
    """Continuous: no reset, steps past T reuse the last step's parameters, the prediction is the
    running sum since the start; `Engine.run` on more than T frames does the same from fresh."""
    deploy = model(name)
    steps = 2 * deploy.T + 1
    x = sample(name, 3, steps=steps, seed=9)
    truth = nets.reference_truth(deploy, x, stream=True)
    engine = engine_for(name, kind, "continuous")
    for t in range(steps):
        r = engine.step(x[t].numpy())
        assert (r.t, r.window, r.window_done) == (t, 0, False)
        truth[t].check(r.logits, f"{name} {kind} step {t}")
        truth[: t + 1].sum(0).check(r.summed, f"{name} {kind} summed {t}")
    with pytest.warns(HmdfWarning, match=f"has {steps} steps and the model was trained on T={deploy.T}"):
        past = engine.run(x.numpy())
    truth.check(past, f"{name} {kind} run past T")
    # the first T steps are the reference's window
    nets.reference_truth(deploy, x[: deploy.T]).check(truth.f32[: deploy.T], "reference forms agree")


# The hand-built model: 3 inputs → Linear (fp32 weights, per-step affine) → one HM-DF neuron with
# 2 channels, float spikes, T = 2; the spikes are the logits. All numbers are dyadic, so float32
# computes them exactly.
W = [[1.0, 0.5, -1.0],
     [0.25, 1.0, 2.0]]
SCALE = [[1.0, 1.0], [2.0, 0.5]]  # rows t = 0, 1 (and t ≥ 1)
SHIFT = [[0.0, 0.25], [0.5, 0.0]]
LEAK = [[0.5, 0.25], [0.75, 0.5]]  # row 0 never meets a state (v_{-1} = 0)
THRESHOLD = [1.0, 0.5]
X = [[1, 2, 0], [0, 1, 0.5], [0, 0, 0], [2, 0, 1], [0, 0, 1]]

# SPEC §1 by hand, continuous (rows min(t, 1)):
#   t  W·x          I_t            m_t                      s_t (logits)     v_t
#   0  [2, 2.25]    [2, 2.5]       [2, 2.5]                  [1, 1.5]         [1, 1]
#   1  [0, 2]       [0.5, 1]       [.75+.5, .5+1]            [.75, 1]         [.5, .5]
#   2  [0, 0]       [0.5, 0]       [.375+.5, .25+0]          [.375, 0]        [.5, .25]
#   3  [1, 2.5]     [2.5, 1.25]    [.375+2.5, .125+1.25]     [2.375, .875]    [.5, .5]
#   4  [-1, 2]      [-1.5, 1]      [.375-1.5, .25+1]         [0, .75]         [-1.125, .5]
CONTINUOUS = [[1.0, 1.5], [0.75, 1.0], [0.375, 0.0], [2.375, 0.875], [0.0, 0.75]]
# The window policy resets at t = 2 and t = 4 (rows 0, 1, 0):
#   2  fresh, row 0: I = [0, .25], m = I, θ = 1           → s = [0, 0],       v = [0, .25]
#   3  row 1: I = [2.5, 1.25], m = [0 + 2.5, .125 + 1.25] → s = [2, .875]
#   4  fresh, row 0: W·x = [-1, 2], I = [-1, 2.25], θ = 1 → s = [0, 1.25]
WINDOWED = [[1.0, 1.5], [0.75, 1.0], [0.0, 0.0], [2.0, 0.875], [0.0, 1.25]]


def hand_model() -> DeployModel:
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    nodes = [
        Flatten("flat", ["input"]),
        Linear("fc", ["flat"], "fp32", t(W), t(SCALE), t(SHIFT)),
        Neuron("lif0", ["fc"], "hmdf", "float", t(THRESHOLD), t(LEAK)),
    ]
    return DeployModel(2, (3, 1, 1), True, 2, nodes, "lif0", {"dataset": "hand"}).validate()


def hand_frames() -> np.ndarray:
    return np.array(X, dtype=np.float32).reshape(len(X), 1, 3, 1, 1)


def softmax_max(z: np.ndarray) -> float:
    e = [math.exp(v - max(z)) for v in z]
    return max(e) / sum(e)


@pytest.mark.parametrize("kind", BACKEND_KINDS)
def test_continuous_policy_by_hand(kind, tmp_path):
    deploy = hand_model()
    if kind == "onnx-file":
        [source] = export(deploy, tmp_path / "hand.onnx", graph="step")
        engine = Engine(source, "onnxruntime", "continuous")
    else:
        engine = Engine(deploy, kind, "continuous")
    summed = np.zeros(2)
    for t, frame in enumerate(hand_frames()):
        r = engine.step(frame)
        summed += CONTINUOUS[t]
        assert r.logits.tolist() == [CONTINUOUS[t]], (t, r.logits)
        assert r.summed.tolist() == [summed.tolist()], (t, r.summed)
        assert (r.t, r.window, r.window_done) == (t, 0, False)
        assert r.prediction.tolist() == [int(np.argmax(summed))]
        assert r.confidence[0] == pytest.approx(softmax_max(summed.tolist()), rel=1e-6)
    # running sums [1, 1.5] [1.75, 2.5] [2.125, 2.5] [4.5, 3.375] [4.5, 4.125]: the prediction moves
    assert r.prediction.tolist() == [0]
    with pytest.warns(HmdfWarning, match="has 5 steps"):
        assert engine.run(hand_frames()).reshape(5, 2).tolist() == CONTINUOUS


@pytest.mark.parametrize("kind", ["torch", "onnxruntime", "triton"])
def test_window_policy_by_hand(kind):
    engine = Engine(hand_model(), kind, "window")
    results = [engine.step(frame) for frame in hand_frames()]
    assert [r.logits.tolist() for r in results] == [[v] for v in WINDOWED]
    assert [(r.t, r.window, r.window_done) for r in results] == [
        (0, 0, False), (1, 0, True), (0, 1, False), (1, 1, True), (0, 2, False)]
    assert [r.summed.tolist() for r in results] == [
        [[1.0, 1.5]], [[1.75, 2.5]], [[0.0, 0.0]], [[2.0, 0.875]], [[0.0, 1.25]]]
    assert [int(r.prediction[0]) for r in results if r.window_done] == [1, 0]


def test_hand_model_batches_independently():
    """Two samples in one batch: each follows its own recurrence (the second is all zeros:
    I = shift, so s_0 = max([0, .25] − 1, 0) = 0, then row 1: m = [.5, .25·.5 + 0], s = [0, 0])."""
    frames = np.concatenate([hand_frames(), np.zeros_like(hand_frames())], axis=1)
    for kind in ("torch", "onnxruntime", "triton"):
        engine = Engine(hand_model(), kind, "continuous")
        got = np.stack([engine.step(f).logits for f in frames])
        assert got[:, 0].tolist() == CONTINUOUS
        # zeros in: I = shift; t0: m = [0, .25] < θ0 = 1; t1: m = [.5, .0625] vs θ1 = .5 → s = [0, 0]
        assert got[:2, 1].tolist() == [[0.0, 0.0], [0.0, 0.0]]



# A LIF neuron at an exact tie (SPEC §1.1: z = 1[m ≥ θ]): θ = σ(0) + 0.5 = 1, leak 1, the input
# goes straight to the neuron. Channel 0 gets 1 at step 0 (m = θ), channel 1 gets .5 then .5.
#   t  I           m                 s (= z·θ)    v = m − s
#   0  [1, .5]     [1, .5]           [1, 0]       [0, .5]
#   1  [.5, .5]    [0 + .5, .5+.5]   [0, 1]       [.5, 0]
LIF_TIE_X = [[1.0, 0.5], [0.5, 0.5]]
LIF_TIE_S = [[1.0, 0.0], [0.0, 1.0]]
LIF_TIE_V = [[0.0, 0.5], [0.5, 0.0]]


def lif_tie_model() -> DeployModel:
    nodes = [Neuron("lif", ["input"], "lif", "float", torch.tensor([1.0]), torch.ones(1, 1)),
             Flatten("flat", ["lif"])]
    return DeployModel(2, (2, 1, 1), True, 2, nodes, "flat", {"dataset": "hand"}).validate()


def test_reference_lif_fires_at_an_exact_tie():
    """`Reference.step` and `Reference.run`: a LIF membrane exactly at θ spikes (m ≥ θ, not m > θ)
    and subtracts θ, whether it gets there in one step or by charging over two."""
    deploy = lif_tie_model()
    x = torch.tensor(LIF_TIE_X).reshape(2, 1, 2, 1, 1)
    ref, state = Reference(deploy), {}
    for t in range(2):
        s, state = ref.step(x[t], state, t)
        assert s.tolist() == [LIF_TIE_S[t]], (t, s)
        assert state["lif"].reshape(-1).tolist() == LIF_TIE_V[t], (t, state["lif"])
    assert Reference(deploy).run(x).reshape(2, 2).tolist() == LIF_TIE_S


# ---------------------------------------------------------------------------- make_backend
def test_available_backends(monkeypatch):
    assert BACKENDS == ("auto", "torch", "onnxruntime", "triton") and POLICIES == ("window", "continuous")
    # conftest.py sets TRITON_INTERPRET=1 on machines without a GPU, so triton runs everywhere here
    assert available_backends() == ["torch", "onnxruntime", "triton"]
    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET")
        assert available_backends() == ["torch", "onnxruntime"]


def test_make_backend_choices(monkeypatch):
    deploy = hand_model()
    assert isinstance(make_backend(deploy, "torch"), TorchBackend)
    assert isinstance(make_backend(deploy, "onnxruntime"), OnnxBackend)
    assert isinstance(make_backend(deploy, "triton"), TritonBackend)
    if not torch.cuda.is_available():  # auto never picks the (slow) interpreter ...
        assert isinstance(make_backend(deploy), OnnxBackend)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert isinstance(make_backend(deploy), TritonBackend)  # ... but triton first on a GPU
    monkeypatch.setattr(backends_module, "available_backends", lambda: ["torch"])
    assert isinstance(make_backend(deploy, "auto"), TorchBackend)
    with pytest.raises(HmdfError, match="onnxruntime is not installed; this machine can run: torch$"):
        make_backend(deploy, "onnxruntime")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_triton_without_a_gpu_says_so_in_one_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(HmdfError) as e:
        make_backend(hand_model(), "triton")
    assert str(e.value) == ("the triton backend needs a CUDA GPU and this machine has none; choose --backend torch "
                            "or onnxruntime, or set TRITON_INTERPRET=1 to run its kernels on the CPU (slow, for testing)")
    assert isinstance(make_backend(hand_model()), OnnxBackend)


def test_triton_not_installed_says_so(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find_spec(name, *a))
    with pytest.raises(HmdfError, match=r"^the triton backend needs the triton package: pip install 'hmdf\[triton\]'"):
        make_backend(hand_model(), "triton")
    assert "triton" not in available_backends()


@pytest.mark.parametrize("name", ["tensorrt", "", "Torch", "cuda"])
def test_make_backend_unknown_lists_the_available(name):
    with pytest.raises(HmdfError) as e:
        make_backend(hand_model(), name)
    assert f"unknown backend {name!r}" in str(e.value)
    assert str(e.value).endswith("this machine can run: torch, onnxruntime, triton")
    with pytest.raises(HmdfError, match="unknown backend"):
        Engine(hand_model(), name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_make_backend_refuses_an_onnx_file_outside_onnxruntime(backend, tmp_path):
    [path] = export(hand_model(), tmp_path / "m.onnx", graph="step")
    with pytest.raises(HmdfError, match=rf"\.onnx file runs on the onnxruntime backend; pass the \.hmdf file for --backend {backend}"):
        make_backend(path, backend)
    assert isinstance(make_backend(path, "auto"), OnnxBackend)
    assert isinstance(make_backend(path, "onnxruntime"), OnnxBackend)


def test_onnx_file_that_is_not_a_step_graph_is_refused(tmp_path):
    deploy = hand_model()
    [sequence] = export(deploy, tmp_path / "seq.onnx", graph="sequence")
    with pytest.raises(HmdfError, match="not an hmdf step graph"):
        make_backend(sequence, "onnxruntime")
    with pytest.raises(HmdfError, match="not an hmdf step graph"):
        Engine(sequence)
    # an ONNX graph of something else entirely (one Relu)
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["a"], ["b"])], "other",
                               [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])
    other = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(other))
    with pytest.raises(HmdfError, match="not an hmdf step graph"):
        make_backend(other, "auto")


def test_unreadable_onnx_file_is_an_hmdf_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\x01\x02")
    with pytest.raises(HmdfError, match="onnxruntime cannot load"):
        make_backend(bad, "onnxruntime")


def test_step_graph_without_T_is_refused(tmp_path):
    """An ONNX step graph whose `hmdf.T` metadata is gone: the engine cannot apply a policy."""
    proto = build_onnx(hand_model(), "step")
    del proto.metadata_props[:]
    path = tmp_path / "no_t.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(HmdfError, match="does not record its number of time steps"):
        Engine(path)


@pytest.mark.parametrize("policy", ["sliding", "", "Window"])
def test_unknown_policy(policy):
    with pytest.raises(HmdfError, match=f"unknown policy {policy!r}"):
        Engine(hand_model(), "torch", policy)


# ------------------------------------------------------------------------------- StepResult
def test_step_result_confidence_is_softmax_max():
    summed = np.array([[1.0, 3.0, 2.0], [0.0, 0.0, 0.0], [1000.0, -1000.0, 999.0]], np.float32)
    r = StepResult(t=0, window=0, logits=summed, summed=summed, window_done=False)
    want = torch.softmax(torch.tensor(summed, dtype=torch.float64), -1).max(-1).values.numpy()
    assert np.allclose(r.confidence, want, rtol=1e-6, atol=0)
    assert r.confidence[0] == pytest.approx(math.exp(3) / (math.exp(1) + math.exp(3) + math.exp(2)), rel=1e-6)
    assert r.confidence[1] == pytest.approx(1 / 3, rel=1e-6)
    assert np.isfinite(r.confidence).all()  # large logits do not overflow
    assert r.prediction.tolist() == [1, 0, 0]


# ------------------------------------------------------------------------------ expand_paths
def test_expand_paths(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("b.npz", "a.npz", "c.npz", "notes.txt"):
        (d / name).write_bytes(b"")
    (d / "sub").mkdir()
    (d / "sub" / "0.npz").write_bytes(b"")
    single = tmp_path / "z.npz"
    single.write_bytes(b"")
    assert expand_paths([d]) == [d / "a.npz", d / "b.npz", d / "c.npz"]
    assert expand_paths([single, d]) == [single, d / "a.npz", d / "b.npz", d / "c.npz"]
    assert expand_paths([d / "notes.txt"]) == [d / "notes.txt"]  # a file given by name is taken as is


def test_expand_paths_errors(tmp_path):
    with pytest.raises(HmdfError, match="not found"):
        expand_paths([tmp_path / "missing.npz"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HmdfError, match="holds no .npz files"):
        expand_paths([empty])
    (empty / "readme.txt").write_text("x")
    with pytest.raises(HmdfError, match="holds no .npz files"):
        expand_paths([empty])


# ------------------------------------------------------------------------------------ stream()
def _recording(path: Path, n: int, seed: int, label: int | None = 3) -> Path:
    """A random, sorted event stream on a 32×32 sensor with 2 polarities (neuro-digits' sensor)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 100_000, n))
    events = make_events(rng.integers(0, 32, n), rng.integers(0, 32, n), t, rng.integers(0, 2, n))
    return write_events(path, EventRecording(events, (32, 32, 2), label))


@pytest.mark.parametrize("policy", POLICIES)
def test_stream_report(policy, tmp_path):
    """`stream` bins a file (event_count here: 7 frames), steps it at batch 1 and reports windows
    equal to the reference's on the same frames."""
    from hmdf_deploy.events import recording_frames

    name = "event-float"
    deploy = model(name)
    path = _recording(tmp_path / "r.npz", 700, seed=1)
    engine = Engine(deploy, "torch", policy)
    seen: list = []
    report = stream(engine, path, event_count=100, on_step=lambda r, ms: seen.append((r.t, r.window, ms)))
    frames, label, n = recording_frames(path, deploy.input_shape, deploy.T, event_count=100)
    assert frames.shape[0] == 7 and n == 700 and label == 3
    assert isinstance(report, StreamReport)
    assert (report.path, report.label, report.events, report.steps) == (str(path), 3, 700, 7)
    assert len(report.latencies_ms) == 7 and all(ms >= 0 for ms in report.latencies_ms)
    assert len(seen) == 7 and [ms for _, _, ms in seen] == report.latencies_ms
    x = torch.from_numpy(frames)[:, None]
    if policy == "window":  # T = 4: a window of 4 steps, then a partial one of 3
        assert [(w["window"], w["steps"]) for w in report.windows] == [(0, 4), (1, 3)]
        wants = [Reference(deploy).run(x[:4]).sum(0)[0], Reference(deploy).run(x[4:]).sum(0)[0]]
    else:
        assert [(w["window"], w["steps"]) for w in report.windows] == [(0, 7)]
        wants = [reference_stream(deploy, x).sum(0)[0]]
    for w, want in zip(report.windows, wants):
        assert w["prediction"] == int(want.argmax()) and w["label"] == 3
        assert w["confidence"] == pytest.approx(float(torch.softmax(want.double(), 0).max()), rel=1e-4)
    assert report.prediction == report.windows[-1]["prediction"]
    s = report.summary()
    assert s["steps"] == 7 and s["events"] == 700 and s["windows"] == len(report.windows)
    lat = np.array(report.latencies_ms)
    assert s["latency_ms"]["p50"] == pytest.approx(float(np.percentile(lat, 50)))
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"] <= lat.max()


def test_stream_counts_blank_steps(tmp_path):
    """`blank_steps` counts the all-zero frames only: a pre-binned file with frames 1, 2 and 4 of
    six empty reports 3; a random event stream (700 events in T = 4 time bins) reports 0."""
    deploy = model("event-float")
    frames = np.zeros((6, 2, 16, 16), np.float32)
    frames[0, 0, 3, 4] = 2.0
    frames[3, 1, 0, 0] = 1.0
    frames[5, :, 7, 9] = 1.0
    path = write_events(tmp_path / "mixed.npz",
                        EventRecording(np.empty(0, dtype=EVENT_DTYPE), (32, 32, 2), 1, frames))
    report = stream(Engine(deploy, "torch", "continuous"), path)
    assert (report.steps, report.blank_steps) == (6, 3)
    assert report.summary()["blank_steps"] == 3

    busy = stream(Engine(deploy, "torch"), _recording(tmp_path / "r.npz", 700, seed=2))
    assert (busy.steps, busy.blank_steps) == (deploy.T, 0)
    assert busy.summary()["blank_steps"] == 0
