"""hmdf side by side with SpikingJelly, snnTorch and a plain PyTorch ANN of the same shape, on CPU.

Networks (random init, BN running statistics randomised as in sequence_speed.py so that neurons
fire, eval mode):

* `bench` (the issue's network): input 3×32×32 repeated over T = 4; conv3×3 64, 128, max-pool,
  256, 256, max-pool, 512, max-pool, global average pool, linear 10; BN after each conv, a neuron
  after each BN. hmdf: HM-DF, 1.5-bit weights, 4-bit spikes, first conv full precision (SPEC §5),
  folded to a DeployModel. Peers: LIF, fp32 weights, same layer shapes.
* `vggsnn` (SPEC §11): 2×48×48 event frames, T = 10; 64, 128, P, 256, 256, P, 512, 512, P, 512,
  512, P with 2×2 average pools, linear classifier; hmdf quantizes the first conv too (event
  input, SPEC §5). Batch 1 only by default (a batch-32 call takes ~20 s per backend on a 2-core
  CPU); `--vggsnn-batch N` adds a throughput measurement at batch N.

Backends. hmdf: the torch reference (`Reference.run` scan and loop forms and the `Reference.step`
loop for sequences, `Reference.step` for streaming), onnxruntime step and sequence graphs for each
weight path (float, lowbit, integer). SpikingJelly: multi-step (`step_mode='m'`) and single-step
(`step_mode='s'`, `functional.reset_net` between samples); on CPU its LIF runs its torch code.
snnTorch: `snn.Leaky` stepped with explicit membranes. ANN: the same layers with ReLU; a sequence
is one forward on the T·B batch (the dense-convolution work of T steps without any neuron), a
streaming step one forward at batch 1.

Figures per backend: latency of a whole T-step sequence at batch 1; throughput at batch 32
(samples/s, whole sequences); per-step streaming latency at batch 1 (p50, p99 over the steps of
one repeat, state carried, the reset between samples not timed); peak memory (peak RSS of a
fresh process minus its RSS after imports, see `measure_memory`); model bytes on disk.

Timing: every framework is measured in one run; each repeat takes one sample of every backend,
the order rotated between repeats; figures are the median (min–max) over repeats. Ratios are
computed per repeat (both sides measured in the same repeat) and summarised the same way.
torch and onnxruntime use `--threads` threads (default 1; recorded).

    python benchmarks/peers.py                 # full (~8–14 min on 2 shared cores)
    python benchmarks/peers.py --quick         # widths/4, fewer repeats (~2 min)
    python benchmarks/peers.py --json peers.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import _peers_models as pm  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# torch logs a "Triton not available" warning when SpikingJelly is imported on a CPU-only build.
logging.getLogger("torch._library.triton").setLevel(logging.ERROR)

CONFIGS = {
    "bench": pm.NetSpec("bench VGG 3×32×32, T=4", (64, 128, "M", 256, 256, "M", 512, "M", "G"),
                        3, (32, 32), 4, "max", event=False),
    "vggsnn": pm.NetSpec("VGG-SNN 2×48×48, T=10", (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
                         2, (48, 48), 10, "avg", event=True),
}

PATHS = ("float", "lowbit", "integer")
#: runner key → (framework, backend label, runs a sequence, streams)
RUNNERS = {
    "hmdf-torch-scan": ("hmdf", "torch Reference.run (scan)", True, False),
    "hmdf-torch-loop": ("hmdf", "torch Reference.run (loop)", True, False),
    "hmdf-torch-step": ("hmdf", "torch Reference.step", True, True),
    **{f"hmdf-ort-step-{p}": ("hmdf", f"onnxruntime step graph, {p}", True, True) for p in PATHS},
    **{f"hmdf-ort-seq-{p}": ("hmdf", f"onnxruntime sequence graph, {p}", True, False) for p in PATHS},
    "sj-m": ("SpikingJelly", "multi-step (step_mode='m')", True, False),
    "sj-s": ("SpikingJelly", "single-step (step_mode='s')", True, True),
    "snntorch": ("snnTorch", "snn.Leaky, explicit mem", True, True),
    "ann": ("PyTorch ANN", "ReLU (sequence = one T·B batch)", True, True),
    "ann-ort": ("ANN in onnxruntime", "same ANN, BN folded (sequence = one T·B batch)", True, True),
}


# ====================================================================================== models
def hmdf_config(spec: pm.NetSpec):
    from hmdf_deploy.models import ModelConfig

    return ModelConfig(arch="vgg", cfg=list(spec.cfg), pool=spec.pool, in_channels=spec.in_channels,
                       input_size=spec.input_size, num_classes=spec.num_classes, T=spec.T,
                       weights="1.5bit", spikes="4bit", quantize_stem=spec.event).validate()


def write_models(spec: pm.NetSpec, out: Path, seed: int) -> dict[str, Path]:
    """Build every network once, write the files the runners load; returns name → path."""
    from safetensors.torch import save_file

    from hmdf_deploy.deploy import fold, save_hmdf
    from hmdf_deploy.errors import HmdfError
    from hmdf_deploy.exporters import onnx as onnx_export
    from hmdf_deploy.models import build_model

    files: dict[str, Path] = {}
    config = hmdf_config(spec)
    torch.manual_seed(seed)
    net = build_model(config).eval()
    pm.randomise_bn(net, seed + 7)
    deploy = fold(net, config, event=spec.event)
    files["hmdf"] = out / "model.hmdf"
    save_hmdf(deploy, files["hmdf"])
    sample = inputs(spec, 2, seed + 3)
    checks = {}
    for path in PATHS:
        for graph in ("step", "sequence"):
            target = out / f"model.{path}.{graph}.onnx"
            proto = onnx_export.build_onnx(deploy, graph, path)
            # `export()` would run this same check and refuse to write on a mismatch; the
            # benchmark records the verdict and measures the graph either way (its own agreement
            # table reports every backend's max |Δ logits|).
            try:
                checks[f"{path} {graph}"] = f"ok, max |Δ logits| {onnx_export.check_onnx(proto, deploy, sample):.1e}"
            except HmdfError as e:
                checks[f"{path} {graph}"] = f"REFUSED: {e}"
            target.write_bytes(proto.SerializeToString())
            files[f"onnx-{path}-{graph}"] = target
    files["_export_checks"] = checks  # type: ignore[assignment]
    builders = {"sj": lambda: pm.sj_net(spec, "m"), "snntorch": lambda: pm.SnnTorchNet(spec), "ann": lambda: pm.ann_net(spec)}
    for name, build in builders.items():
        torch.manual_seed(seed)  # the same random weights for every peer (same layer order)
        module = build()
        pm.randomise_bn(module, seed + 7)
        if name == "ann":
            files["ann-onnx"] = out / "ann.onnx"
            ann_onnx(module.eval(), spec, files["ann-onnx"])
        sd = {k: v.contiguous() for k, v in module.eval().state_dict().items()}
        files[name] = out / f"{name}.pt"
        torch.save(sd, files[name])
        files[f"{name}-safetensors"] = out / f"{name}.safetensors"
        save_file(sd, str(files[f"{name}-safetensors"]))
    return files


def ann_onnx(ann: torch.nn.Sequential, spec: pm.NetSpec, path: Path) -> None:
    """The ANN as a plain ONNX graph written by hand (Conv with the eval-mode BN folded in, Relu,
    pools, Gemm): the dense floor for the onnxruntime backends. Checked against the torch ANN."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x, layers = [], [], "x", list(ann)
    for i, m in enumerate(layers):
        name = f"n{i}"
        if isinstance(m, torch.nn.Conv2d):
            bn = layers[i + 1]
            g = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = (m.weight.detach().double() * g[:, None, None, None]).float().numpy()
            b = (bn.bias.detach().double() - g * bn.running_mean.double()).float().numpy()
            inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")]
            nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], pads=[1] * 4, kernel_shape=[3, 3]))
        elif isinstance(m, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [x], [name]))
        elif isinstance(m, (torch.nn.MaxPool2d, torch.nn.AvgPool2d)):
            nodes.append(helper.make_node("MaxPool" if isinstance(m, torch.nn.MaxPool2d) else "AveragePool",
                                          [x], [name], kernel_shape=[2, 2], strides=[2, 2]))
        elif isinstance(m, torch.nn.AdaptiveAvgPool2d):
            nodes.append(helper.make_node("GlobalAveragePool", [x], [name]))
        elif isinstance(m, torch.nn.Flatten):
            nodes.append(helper.make_node("Flatten", [x], [name], axis=1))
        elif isinstance(m, torch.nn.Linear):
            inits += [numpy_helper.from_array(m.weight.detach().numpy(), f"{name}.w"),
                      numpy_helper.from_array(m.bias.detach().numpy(), f"{name}.b")]
            nodes.append(helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [name], transB=1))
        else:
            continue  # BatchNorm2d: folded into the conv before it
        x = name
    nodes.append(helper.make_node("Identity", [x], ["logits"]))
    graph = helper.make_graph(nodes, "ann", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", spec.in_channels, *spec.input_size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", spec.num_classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    xs = inputs(spec, 2, 11)
    xs = xs.reshape(-1, *xs.shape[2:])
    with torch.no_grad():
        want = ann(xs).numpy()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(["logits"], {"x": xs.numpy()})[0]
    if not np.abs(got - want).max() <= 1e-3 * max(1.0, float(np.abs(want).max())):
        raise RuntimeError(f"the hand-written ANN graph disagrees with the torch ANN: {np.abs(got - want).max():.2e}")
    path.write_bytes(data)


def inputs(spec: pm.NetSpec, B: int, seed: int) -> torch.Tensor:
    """(T, B, C, H, W): a static image repeated T times, or sparse 0/1 event frames."""
    g = torch.Generator().manual_seed(seed)
    c, (h, w), T = spec.in_channels, spec.input_size, spec.T
    if spec.event:
        return (torch.rand(T, B, c, h, w, generator=g) < 0.15).float()
    return torch.rand(1, B, c, h, w, generator=g).expand(T, B, c, h, w).contiguous()


# ====================================================================================== runners
class Runner:
    """`seq(x)`: (T, B, …) → (T, B, K) from a fresh state. Streaming: `start(B)` → state,
    `step(x_t, t, state)` → (logits, state)."""

    streams = False

    def seq(self, x: torch.Tensor):
        raise NotImplementedError

    def start(self, B: int):
        return None

    def step(self, x_t, t: int, state):
        raise NotImplementedError


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # the default optimisation level (ORT_ENABLE_ALL), as shipped
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class HmdfTorch(Runner):
    def __init__(self, ref, form: str) -> None:
        self.ref, self.form = ref, form
        self.streams = form == "step"

    def seq(self, x):
        if self.form == "scan":
            return self.ref.run(x, scan=True)
        if self.form == "loop":
            return self.ref.run(x, scan=False)
        state, outs = {}, []
        for t in range(x.shape[0]):
            o, state = self.ref.step(x[t], state, t)
            outs.append(o)
        return torch.stack(outs)

    def start(self, B):
        return {}

    def step(self, x_t, t, state):
        return self.ref.step(x_t, state, t)


class OrtStep(Runner):
    streams = True

    def __init__(self, session) -> None:
        self.s = session
        self.outputs = [o.name for o in session.get_outputs()]
        self.states = {i.name: [d for d in i.shape[1:]] for i in session.get_inputs() if i.name.startswith("state_in.")}
        self.ts = [np.array(t, np.int64) for t in range(256)]

    def start(self, B):
        return {k: np.zeros([B, *s], np.float32) for k, s in self.states.items()}

    def step(self, x_t, t, state):
        out = self.s.run(self.outputs, {"x": x_t, "t": self.ts[t], **state})
        got = dict(zip(self.outputs, out))
        return got["logits"], {k: got["state_out." + k[len("state_in."):]] for k in state}

    def seq(self, x):
        state, outs = self.start(x.shape[1]), []
        for t in range(x.shape[0]):
            o, state = self.step(x[t], t, state)
            outs.append(o)
        return np.stack(outs)


class OrtSeq(Runner):
    def __init__(self, session) -> None:
        self.s = session

    def seq(self, x):
        return self.s.run(["logits"], {"x": x})[0]


class SJMulti(Runner):
    def __init__(self, net) -> None:
        self.net = net

    def seq(self, x):
        pm.sj_reset(self.net)
        return self.net(x)


class SJSingle(Runner):
    streams = True

    def __init__(self, net) -> None:
        self.net = net

    def start(self, B):
        pm.sj_reset(self.net)  # between samples: part of the sample, not of a step

    def step(self, x_t, t, state):
        return self.net(x_t), None

    def seq(self, x):
        pm.sj_reset(self.net)
        return torch.stack([self.net(x[t]) for t in range(x.shape[0])])


class SnnTorchRunner(Runner):
    streams = True

    def __init__(self, net) -> None:
        self.net = net

    def start(self, B):
        return self.net.init_state()

    def step(self, x_t, t, state):
        return self.net.step(x_t, state)

    def seq(self, x):
        return self.net(x)


class AnnRunner(Runner):
    streams = True

    def __init__(self, net) -> None:
        self.net = net

    def step(self, x_t, t, state):
        return self.net(x_t), None

    def seq(self, x):
        T, B = x.shape[:2]
        y = self.net(x.reshape(T * B, *x.shape[2:]))
        return y.reshape(T, B, -1)


class AnnOrt(Runner):
    streams = True

    def __init__(self, session) -> None:
        self.s = session

    def step(self, x_t, t, state):
        return self.s.run(["logits"], {"x": x_t})[0], None

    def seq(self, x):
        T, B = x.shape[:2]
        return self.s.run(["logits"], {"x": x.reshape(T * B, *x.shape[2:])})[0].reshape(T, B, -1)


def make_runner(key: str, spec: pm.NetSpec, files: dict[str, Path], threads: int) -> Runner:
    """Load one backend from the files `write_models` wrote (the parent and the memory child alike)."""
    if key.startswith("hmdf-torch"):
        from hmdf_deploy.deploy import Reference, load_hmdf

        return HmdfTorch(Reference(load_hmdf(files["hmdf"])), key.rsplit("-", 1)[1])
    if key.startswith("hmdf-ort"):
        _, _, graph, path = key.split("-")
        session = ort_session(files[f"onnx-{path}-{'step' if graph == 'step' else 'sequence'}"], threads)
        return OrtStep(session) if graph == "step" else OrtSeq(session)
    if key.startswith("sj"):
        net = pm.sj_net(spec, key[-1])
        net.load_state_dict(torch.load(files["sj"], weights_only=True))
        return (SJMulti if key == "sj-m" else SJSingle)(net.eval())
    if key == "snntorch":
        net = pm.SnnTorchNet(spec)
        net.load_state_dict(torch.load(files["snntorch"], weights_only=True))
        return SnnTorchRunner(net.eval())
    if key == "ann-ort":
        return AnnOrt(ort_session(files["ann-onnx"], threads))
    if key == "ann":
        net = pm.ann_net(spec)
        net.load_state_dict(torch.load(files["ann"], weights_only=True))
        return AnnRunner(net.eval())
    raise KeyError(key)


def as_input(key: str, x: torch.Tensor):
    """ORT runners take contiguous float32 numpy arrays, the rest torch tensors."""
    return np.ascontiguousarray(x.numpy()) if "ort" in key else x


def to_numpy(y) -> np.ndarray:
    return y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)


# ====================================================================================== timing
def time_seq(r: Runner, x, min_time: float) -> float:
    """Seconds per whole-sequence call (calls repeated until `min_time` has passed)."""
    n, t0 = 0, time.perf_counter()
    while True:
        r.seq(x)
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def time_stream(r: Runner, x, n_seq: int) -> list[float]:
    """Per-step seconds over `n_seq` batch-1 sequences, state carried within each."""
    out = []
    T = x.shape[0]
    for _ in range(n_seq):
        state = r.start(1)
        for t in range(T):
            t0 = time.perf_counter()
            _, state = r.step(x[t], t, state)
            out.append(time.perf_counter() - t0)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


# ====================================================================================== memory
def _proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def memory_child(job: dict) -> dict:
    """Runs in a fresh process: RSS after imports → load one backend → batch-1 steps → batch-B run.

    Peak = VmHWM (the kernel's resident-set high-water mark, reset through /proc/self/clear_refs
    once the imports are done) minus the RSS at that point. It counts the model as loaded, the
    runtime's session and arenas and the activations of the calls; tracemalloc would see none of
    the torch / onnxruntime buffers, which live outside the Python heap.
    """
    _common.setup(job["threads"])
    spec = CONFIGS[job["config"]].scaled(job["div"])
    files = {k: Path(v) for k, v in job["files"].items()}
    key = job["runner"]
    if key.startswith("hmdf"):
        import hmdf_deploy.deploy  # noqa: F401
        if "ort" in key:
            import onnxruntime  # noqa: F401
    elif key.startswith("sj"):
        import spikingjelly.activation_based.neuron  # noqa: F401
    elif key == "snntorch":
        import snntorch  # noqa: F401
    elif key == "ann-ort":
        import onnxruntime  # noqa: F401
    x1 = as_input(key, inputs(spec, 1, job["seed"] + 1))
    xb = as_input(key, inputs(spec, job["batch"], job["seed"] + 2)) if job["batch"] else None
    gc.collect()
    base = _proc_status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    with torch.inference_mode():
        r = make_runner(key, spec, files, job["threads"])
        loaded = _proc_status()["VmRSS"]
        if r.streams:
            time_stream(r, x1, 1)
        else:
            r.seq(x1)
        peak1 = _proc_status()["VmHWM"]
        peak_b = None
        if xb is not None:
            r.seq(xb)
            peak_b = _proc_status()["VmHWM"]
    return {"model_rss": loaded - base, "peak_b1": peak1 - base, "peak_bB": None if peak_b is None else peak_b - base}


def measure_memory(config: str, div: int, key: str, files: dict, batch: int, args) -> dict | None:
    job = {"config": config, "div": div, "runner": key, "files": {k: str(v) for k, v in files.items()},
           "batch": batch, "threads": args.threads, "seed": args.seed}
    proc = subprocess.run([sys.executable, __file__, "--_memory-child", json.dumps(job)],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print(f"  memory {key}: child failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ====================================================================================== main run
def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for dist in ("hmdf", "torch", "onnx", "onnxruntime", "numpy", "spikingjelly", "snntorch", "safetensors"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def check_agreement(runners: dict[str, Runner], spec: pm.NetSpec, seed: int) -> list[dict]:
    """hmdf backends against the Reference.step loop (SPEC §6) on a batch of 4; SpikingJelly's two
    modes against each other. Also the warm-up of every runner."""
    x = inputs(spec, 4, seed + 5)
    want = to_numpy(runners["hmdf-torch-step"].seq(x))
    rows = []
    for key, r in runners.items():
        if not key.startswith("hmdf"):
            continue
        xi = as_input(key, x)
        got = {"sequence": to_numpy(r.seq(xi))}
        if r.streams:
            state, outs = r.start(x.shape[1]), []
            for t in range(spec.T):
                o, state = r.step(xi[t], t, state)
                outs.append(to_numpy(o))
            got["stream"] = np.stack(outs)
        for form, y in got.items():
            rows.append({"backend": RUNNERS[key][1], "form": form, "max_abs_diff": float(np.abs(y - want).max()),
                         "logit_scale": float(np.abs(want).max()),
                         "argmax_differs": float((y.cumsum(0).argmax(-1) != want.cumsum(0).argmax(-1)).mean())})
    a, b = to_numpy(runners["sj-m"].seq(x)), to_numpy(runners["sj-s"].seq(x))
    rows.append({"backend": "SpikingJelly m vs s", "form": "sequence", "max_abs_diff": float(np.abs(a - b).max()),
                 "logit_scale": float(np.abs(a).max()), "argmax_differs": float((a.argmax(-1) != b.argmax(-1)).mean())})
    for key in ("snntorch", "ann", "ann-ort"):
        runners[key].seq(as_input(key, x))  # warm-up
    return rows


def bench_config(name: str, args, workdir: Path) -> dict:
    spec = CONFIGS[name].scaled(args.div)
    quick = args.quick
    batch = args.batch if name == "bench" else args.vggsnn_batch
    repeats = args.repeats if name == "bench" else max(2, args.repeats - 2)
    thr_repeats = min(repeats, args.thr_repeats)
    n_seq = max(1, args.stream_steps // spec.T) if name == "bench" else max(1, args.stream_steps_vggsnn // spec.T)
    print(f"\n== {spec.name}: batch-1 repeats {repeats}, batch-{batch or '-'} repeats {thr_repeats if batch else 0}, "
          f"{n_seq * spec.T} streamed steps per repeat", file=sys.stderr)
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = write_models(spec, out, args.seed)
    export_checks = files.pop("_export_checks")
    print(f"  models written ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    for k, v in export_checks.items():
        print(f"  hmdf ONNX export check ({k}): {v}", file=sys.stderr)
    runners = {k: make_runner(k, spec, files, args.threads) for k in RUNNERS}
    x1 = inputs(spec, 1, args.seed + 1)
    xb = inputs(spec, batch, args.seed + 2) if batch else None
    x1s = {k: as_input(k, x1) for k in runners}
    xbs = {k: as_input(k, xb) for k in runners} if batch else {}

    with torch.inference_mode():
        agreement = check_agreement(runners, spec, args.seed)
        for row in agreement:
            print(f"  agree {row['backend']:<40} {row['form']:<8} max|Δ logits| {row['max_abs_diff']:.2e} "
                  f"(|logits| ≤ {row['logit_scale']:.2f}), running argmax differs {100 * row['argmax_differs']:.1f}%",
                  file=sys.stderr)
        for k, r in runners.items():  # warm-up at batch 1 and a small batch (shapes, arenas, primitives)
            r.seq(x1s[k])
            if batch:
                r.seq(as_input(k, inputs(spec, min(4, batch), args.seed)))

        samples: dict[str, dict[str, list]] = {k: {"seq_b1": [], "thr": [], "p50": [], "p99": []} for k in runners}
        keys = list(runners)
        for rep in range(repeats):
            order = keys[rep % len(keys):] + keys[: rep % len(keys)]
            tr = time.perf_counter()
            for k in order:
                samples[k]["seq_b1"].append(time_seq(runners[k], x1s[k], args.min_time))
            for k in order:
                if runners[k].streams:
                    steps = time_stream(runners[k], x1s[k], n_seq)
                    samples[k]["p50"].append(pct(steps, 50))
                    samples[k]["p99"].append(pct(steps, 99))
            if batch and rep < thr_repeats:
                for k in order:
                    samples[k]["thr"].append(batch / time_seq(runners[k], xbs[k], 0.0))
            print(f"  repeat {rep + 1}/{repeats} ({time.perf_counter() - tr:.1f} s)", file=sys.stderr)
    del runners
    gc.collect()

    memory = {}
    if not args.no_memory and (name == "bench" or not quick):
        for k in RUNNERS:
            memory[k] = measure_memory(name, args.div, k, files, batch, args)
        print(f"  memory measured in {len(memory)} fresh processes", file=sys.stderr)

    results = []

    def add(key, metric, values, unit, extra=None):
        if not values:
            return
        fw, backend = RUNNERS[key][:2] if key in RUNNERS else key
        s = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        results.append({"framework": fw, "backend": backend, "runner": key, "config": spec.name, "metric": metric,
                        **s, "unit": unit, "n": len(values), "samples": list(values), **(extra or {})})

    for k, s in samples.items():
        add(k, "latency_seq_b1", [1e3 * v for v in s["seq_b1"]], "ms", {"T": spec.T, "batch": 1})
        add(k, "throughput", s["thr"], "samples/s", {"T": spec.T, "batch": batch})
        add(k, "step_p50_b1", [1e3 * v for v in s["p50"]], "ms", {"steps_per_repeat": n_seq * spec.T})
        add(k, "step_p99_b1", [1e3 * v for v in s["p99"]], "ms", {"steps_per_repeat": n_seq * spec.T})
        m = memory.get(k)
        if m:
            add(k, "peak_rss_b1", [m["peak_b1"] / 2**20], "MiB", {"n_note": "one fresh process"})
            if m["peak_bB"] is not None:
                add(k, "peak_rss_batch", [m["peak_bB"] / 2**20], "MiB", {"batch": batch})
            add(k, "model_rss", [m["model_rss"] / 2**20], "MiB")
    sizes = {
        ("hmdf", ".hmdf file"): files["hmdf"],
        **{("hmdf", f"ONNX {p} {g} graph"): files[f"onnx-{p}-{g}"] for p in PATHS for g in ("step", "sequence")},
        ("SpikingJelly", "state_dict, torch.save"): files["sj"],
        ("SpikingJelly", "state_dict, safetensors"): files["sj-safetensors"],
        ("snnTorch", "state_dict, torch.save"): files["snntorch"],
        ("snnTorch", "state_dict, safetensors"): files["snntorch-safetensors"],
        ("PyTorch ANN", "state_dict, torch.save"): files["ann"],
        ("PyTorch ANN", "state_dict, safetensors"): files["ann-safetensors"],
        ("ANN in onnxruntime", "ONNX, float32"): files["ann-onnx"],
    }
    for (fw, what), p in sizes.items():
        n = p.stat().st_size
        results.append({"framework": fw, "backend": what, "runner": None, "config": spec.name, "metric": "model_bytes",
                        "median": n, "min": n, "max": n, "unit": "B", "n": 1})
    return {"name": name, "spec": spec.name, "T": spec.T, "batch": batch, "repeats": repeats,
            "thr_repeats": thr_repeats if batch else 0, "stream_steps": n_seq * spec.T,
            "agreement": agreement, "export_checks": export_checks, "results": results, "samples": samples, "seconds": time.perf_counter() - t0}


# ====================================================================================== ratios
def ratios(cfg: dict) -> list[dict]:
    """hmdf's best backend against each peer, per repeat (same repeat on both sides)."""
    S = cfg["samples"]
    hmdf = [k for k in RUNNERS if k.startswith("hmdf")]
    out = []

    def best(metric, lower_is_better, no_float=False):
        cands = [k for k in hmdf if S[k][metric] and not (no_float and k.endswith("-float"))]
        if not cands:
            return None
        f = min if lower_is_better else max
        return f(cands, key=lambda k: statistics.median(S[k][metric]))

    def per_repeat(num_key, num_metric, den_key, den_metric):
        a, b = S[num_key][num_metric], S[den_key][den_metric]
        return [x / y for x, y in zip(a, b)]

    def row(goal, peer, best_key, values, target, note="", involved=True):
        out.append({"config": cfg["spec"], "goal": goal, "hmdf_backend": RUNNERS[best_key][1] if involved else "–",
                    "peer": peer, "median": statistics.median(values), "min": min(values), "max": max(values),
                    "target": target, "met": statistics.median(values) >= target, "note": note})

    nf = " [no ONNX float graph]"
    b = best("p50", True)
    if b:
        for peer in ("sj-s", "snntorch"):
            row("per-step streaming latency, batch 1 (peer p50 / hmdf p50)", f"{RUNNERS[peer][0]} {RUNNERS[peer][1]}",
                b, per_repeat(peer, "p50", b, "p50"), 3.0)
        b2 = best("p50", True, no_float=True)
        for peer in ("sj-s", "snntorch"):
            row("per-step streaming latency, batch 1 (peer p50 / hmdf p50)" + nf, f"{RUNNERS[peer][0]} {RUNNERS[peer][1]}",
                b2, per_repeat(peer, "p50", b2, "p50"), 3.0)
        for ann in ("ann", "ann-ort"):
            row("bound: ANN step / hmdf step (p50)", f"{RUNNERS[ann][0]}, one forward at batch 1", b,
                per_repeat(ann, "p50", b, "p50"), 0.0, "the dense-conv floor, not a goal")
        for peer in ("sj-s", "snntorch"):
            for ann in ("ann", "ann-ort"):
                row(f"bound: {RUNNERS[peer][0]} step / {RUNNERS[ann][0]} step (p50)",
                    "(what a dense runtime can gain at most)", b,
                    per_repeat(peer, "p50", ann, "p50"), 0.0, "not a goal", involved=False)
    b = best("thr", False)
    if b:
        row("throughput, whole sequences (hmdf / peer samples/s)", "SpikingJelly multi-step (step_mode='m')", b,
            per_repeat(b, "thr", "sj-m", "thr"), 2.0)
        b2 = best("thr", False, no_float=True)
        row("throughput, whole sequences (hmdf / peer samples/s)" + nf, "SpikingJelly multi-step (step_mode='m')", b2,
            per_repeat(b2, "thr", "sj-m", "thr"), 2.0)
        row("bound: hmdf / ANN throughput", "PyTorch ANN, T·B batch", b, per_repeat(b, "thr", "ann", "thr"), 0.0,
            "not a goal")
        for ann in ("ann", "ann-ort"):
            row(f"bound: {RUNNERS[ann][0]} / SpikingJelly multi-step throughput", "(what a dense runtime can gain at most)",
                b, per_repeat(ann, "thr", "sj-m", "thr"), 0.0, "not a goal", involved=False)
    b = best("seq_b1", True)
    row("latency of a whole sequence, batch 1 (peer / hmdf)", "SpikingJelly multi-step (step_mode='m')", b,
        per_repeat("sj-m", "seq_b1", b, "seq_b1"), 0.0, "no goal set")
    size = {(r["framework"], r["backend"]): r["median"] for r in cfg["results"] if r["metric"] == "model_bytes"}
    for mine in (".hmdf file", "ONNX lowbit step graph"):
        for peer in ("SpikingJelly", "snnTorch"):
            v = size[(peer, "state_dict, torch.save")] / size[("hmdf", mine)]
            out.append({"config": cfg["spec"], "goal": f"model file (peer fp32 state_dict, torch.save / hmdf {mine})",
                        "hmdf_backend": mine, "peer": peer, "median": v, "min": v, "max": v, "target": 16.0,
                        "met": v >= 16.0, "note": ""})
    return out


# ====================================================================================== report
def fmt(r: dict | None, digits: int = 1) -> str:
    if r is None:
        return "–"
    if r["n"] == 1:
        return f"{r['median']:.{digits}f}"
    return f"{r['median']:.{digits}f} ({r['min']:.{digits}f}–{r['max']:.{digits}f})"


def report(run: dict) -> str:
    lines = []
    m = run["machine"]
    lines.append(f"Machine: {_common.machine_line(m)} · onnxruntime intra-op threads {run['settings']['threads']}")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()))
    for cfg in run["configs"]:
        by = {(r["runner"], r["metric"]): r for r in cfg["results"] if r["runner"]}
        lines.append(f"\n### {cfg['spec']}\n")
        lines.append("hmdf backends vs the Reference.step loop (batch 4; 4-bit codes may flip at rounding "
                     "boundaries, SPEC §7):\n")
        lines.append(_common.md_table(
            ["backend", "form", "max |Δ logits|", "max |logit|", "running argmax differs"],
            [[a["backend"], a["form"], f"{a['max_abs_diff']:.1e}", f"{a['logit_scale']:.2f}",
              f"{100 * a['argmax_differs']:.1f}%"] for a in cfg["agreement"]]))
        lines.append("\n`hmdf_deploy.exporters.onnx.check_onnx` (the check `export()` runs before writing, "
                     "onnxruntime at its default optimisation level) on the same graphs:\n")
        lines.append(_common.md_table(["graph", "verdict"], [[k, v] for k, v in cfg["export_checks"].items()]))
        B = cfg["batch"]
        lines.append(f"\nTimings: median (min–max) over {cfg['repeats']} interleaved repeats "
                     f"({cfg['thr_repeats']} for batch {B or '–'}); streaming p50/p99 over "
                     f"{cfg['stream_steps']} steps per repeat. Memory: peak RSS of a fresh process "
                     f"above its post-import RSS, one run.\n")
        rows = []
        for k, (fw, backend, _, _) in RUNNERS.items():
            rows.append([fw, backend, fmt(by.get((k, "latency_seq_b1"))),
                         fmt(by.get((k, "throughput")), 1) if B else "–",
                         fmt(by.get((k, "step_p50_b1")), 2), fmt(by.get((k, "step_p99_b1")), 2),
                         fmt(by.get((k, "peak_rss_b1")), 0), fmt(by.get((k, "peak_rss_batch")), 0) if B else "–"])
        lines.append(_common.md_table(
            ["framework", "backend", f"sequence latency b1, T={cfg['T']} (ms)", f"throughput b{B or '–'} (samples/s)",
             "step p50 b1 (ms)", "step p99 b1 (ms)", "peak RSS b1 (MiB)", f"peak RSS b{B or '–'} (MiB)"], rows))
        lines.append("\nModel bytes on disk:\n")
        lines.append(_common.md_table(
            ["framework", "file", "bytes", "size"],
            [[r["framework"], r["backend"], f"{int(r['median']):,}", _common.fmt_bytes(r["median"])]
             for r in cfg["results"] if r["metric"] == "model_bytes"]))
        lines.append("\nRatios (hmdf's best backend per metric; per-repeat ratios, median (min–max)):\n")
        lines.append(_common.md_table(
            ["measure", "hmdf backend", "against", "ratio", "goal", "met"],
            [[q["goal"], q["hmdf_backend"], q["peer"],
              f"{q['median']:.2f}× ({q['min']:.2f}–{q['max']:.2f})" if q["min"] != q["max"] else f"{q['median']:.2f}×",
              f"≥ {q['target']:.0f}×" if q["target"] else "–", ("yes" if q["met"] else "**no**") if q["target"] else "–"]
             for q in cfg["ratios"]]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="widths/4, 3 repeats, shorter samples (~2 min)")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=7, help="batch-1 repeats (VGG-SNN: 2 fewer, at least 2)")
    ap.add_argument("--thr-repeats", type=int, default=5, help="batch repeats (calls take seconds)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vggsnn-batch", type=int, default=0, help="throughput batch for VGG-SNN (0: batch 1 only)")
    ap.add_argument("--stream-steps", type=int, default=100, help="streamed steps per repeat (bench)")
    ap.add_argument("--stream-steps-vggsnn", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per batch-1 sequence sample")
    ap.add_argument("--div", type=int, default=1, help="divide every width by this")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="write the model files here (default: a temporary folder)")
    ap.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    if args.quick:
        args.div = max(args.div, 4)
        args.repeats, args.thr_repeats = min(args.repeats, 3), min(args.thr_repeats, 2)
        args.stream_steps, args.stream_steps_vggsnn = min(args.stream_steps, 40), min(args.stream_steps_vggsnn, 20)
        args.min_time = min(args.min_time, 0.1)
    _common.setup(args.threads)
    for mod in ("spikingjelly", "snntorch"):
        try:
            __import__(mod)
        except ImportError:
            print(f"error: {mod} is not installed; see benchmarks/README.md (Peers) for how to install it", file=sys.stderr)
            return 2
    started = time.perf_counter()
    info = _common.machine()
    run = {"machine": info, "versions": versions(),
           "settings": {**{k: v for k, v in vars(args).items() if k != "memory_child"}, "torch_threads": torch.get_num_threads(),
                        "ort_intra_op_threads": args.threads, "ort_graph_optimization": "ORT_ENABLE_ALL (default)"},
           "configs": []}
    with tempfile.TemporaryDirectory(prefix="hmdf-peers-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        for name in args.configs:
            cfg = bench_config(name, args, workdir)
            cfg["ratios"] = ratios(cfg)
            run["configs"].append(cfg)
    run["seconds"] = time.perf_counter() - started
    print(report(run))
    print(f"\n({run['seconds']:.0f} s)")
    results = [r for c in run["configs"] for r in c["results"]]
    _common.write_json(args.json, {"machine": info, "versions": run["versions"], "settings": run["settings"],
                                   "agreement": {c["spec"]: c["agreement"] for c in run["configs"]},
                                   "export_checks": {c["spec"]: c["export_checks"] for c in run["configs"]},
                                   "results": results, "ratios": [q for c in run["configs"] for q in c["ratios"]],
                                   "seconds": run["seconds"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
