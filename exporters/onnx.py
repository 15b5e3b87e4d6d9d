"""DeployModel → ONNX (DESIGN.md "ONNX"): a stateful `step` graph and a `sequence` graph.

step:      x (B, C, H, W), t (int64 scalar), state_in.<neuron> … → logits (B, K), state_out.<neuron> …
sequence:  x (T, B, C, H, W) → logits (T, B, K); stateless nodes run once on T·B (SPEC §7),
           the membrane recurrence is unrolled over the model's T.

Weight paths (`path`):
- "lowbit" (default): ternary weights are INT2 initializers behind DequantizeLinear (opset ≥ 25),
  binary weights stay packed 8 per uint8 byte behind a small unpack subgraph; float compute.
- "integer": as lowbit, but a synapse whose input is integer 4-bit codes runs as ConvInteger /
  MatMulInteger on uint8 codes and int8 weights, accumulating exactly in int32.
- "float": float32 weights, the plain graph (largest file).

This module emits nodes only; the maths is the DeployModel's (`hmdf_deploy.deploy`). Every export
is checked in onnxruntime against the reference executor before the file is written.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from hmdf_deploy import __version__
from hmdf_deploy.atomic import atomic_write
from hmdf_deploy.data import input_spec
from hmdf_deploy.deploy.graph import SECA, Add, Conv, DeployModel, Flatten, Neuron, Pool, Synapse
from hmdf_deploy.deploy.hmdf_file import weight_scheme
from hmdf_deploy.deploy.pack import pack_signs, pack_trits_2bit
from hmdf_deploy.deploy.reference import Reference, state_shapes
from hmdf_deploy.errors import HmdfError, HmdfWarning
from hmdf_deploy.neurons import SPIKE_LEVELS, SPIKE_MAX_CODE

OPSET = 25  # INT2 initializers with DequantizeLinear
MIN_OPSET = 18  # ReduceMean with axes as an input, BitwiseAnd
MAX_OPSET = 27  # onnxruntime 1.32 has no DequantizeLinear for opset 28
PATHS = ("lowbit", "integer", "float")
GRAPHS = ("step", "sequence")


@dataclass
class _Builder:
    """Collects nodes and initializers; every value gets a fresh unique name."""

    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0
    cache: dict = field(default_factory=dict)

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__{self.count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def i64(self, *values: int) -> str:
        key = ("i64", values)
        if key not in self.cache:
            self.cache[key] = self.const("i64", np.array(values, dtype=np.int64))
        return self.cache[key]

    def f32(self, value: float) -> str:
        key = ("f32", value)
        if key not in self.cache:
            self.cache[key] = self.const("f32", np.array(value, dtype=np.float32))
        return self.cache[key]

    def op(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


class _Emitter:
    """Emits one DeployModel as a step or sequence graph."""

    def __init__(self, model: DeployModel, graph: str, path: str, opset: int) -> None:
        self.m, self.graph, self.path, self.opset = model, graph, path, opset
        self.b = _Builder()
        self.integer: dict[str, bool] = {"input": False}  # does this value hold integer 4-bit codes?
        self.integer_synapses = 0  # synapses emitted as ConvInteger / MatMulInteger
        self.weights: dict[str, tuple[str, str]] = {}  # synapse → (float weight, int8 weight or "")
        self.packing: set[str] = set()  # how the weights are stored (metadata hmdf.packing)
        self.shapes = model.shapes()

    # ------------------------------------------------------------------ per-step parameters
    def rows(self, p: torch.Tensor, rank: int, t: str | None) -> str:
        """A (R, C) or (R,) per-step parameter, broadcastable to a rank-`rank` activation.

        step graph: row min(t, R − 1); sequence graph: (T, 1, C, …) against (T, B', C, …), or
        (C, …) when R = 1 (then it broadcasts over the flat T·B batch directly).
        """
        arr = p.detach().float().numpy()
        if arr.ndim == 1:
            arr = arr[:, None]
        trail = [1] * (rank - 2)
        if arr.shape[0] == 1:
            return self.b.const("p", arr.reshape(arr.shape[1], *trail))
        if t is None:  # sequence graph
            return self.b.const("p", arr[: self.m.T].reshape(self.m.T, 1, arr.shape[1], *trail))
        table = self.b.const("p", arr.reshape(arr.shape[0], arr.shape[1], *trail))
        return self.b.op("Gather", [table, self.clamp(t, arr.shape[0])], axis=0)

    def clamp(self, t: str, R: int) -> str:
        key = ("clamp", R)
        if key not in self.b.cache:
            self.b.cache[key] = self.b.op("Min", [t, self.b.i64(R - 1)], "t_row")
        return self.b.cache[key]

    # ------------------------------------------------------------------ time layout helpers
    def split_time(self, x: str) -> str:
        """(T·B, …) → (T, B, …)."""
        rest = self.b.op("Slice", [self.b.op("Shape", [x]), self.b.i64(1), self.b.i64(1 << 62)])
        return self.b.op("Reshape", [x, self.b.op("Concat", [self.b.i64(self.m.T, -1), rest], axis=0)])

    def merge_time(self, x: str) -> str:
        """(T, B, …) → (T·B, …)."""
        rest = self.b.op("Slice", [self.b.op("Shape", [x]), self.b.i64(2), self.b.i64(1 << 62)])
        return self.b.op("Reshape", [x, self.b.op("Concat", [self.b.i64(-1), rest], axis=0)])

    def affine(self, x: str, scale: torch.Tensor, shift: torch.Tensor, rank: int, t: str | None) -> str:
        """scale ⊙ x + shift with per-step rows (SPEC §6)."""
        per_step = t is None and (scale.shape[0] > 1 or shift.shape[0] > 1)
        if per_step:
            x = self.split_time(x)
        y = self.b.op("Add", [self.b.op("Mul", [x, self.rows(scale, rank, t)]), self.rows(shift, rank, t)])
        return self.merge_time(y) if per_step else y

    # ------------------------------------------------------------------ weights
    def weight(self, n: Synapse) -> tuple[str, str]:
        """(float weight, integer-valued weight or ""): the low-bit storage and its unpacking, built once."""
        if n.name in self.weights:
            return self.weights[n.name]
        w, shape = n.weight, list(n.weight.shape)
        if n.weights == "fp32" or self.path == "float":
            self.packing.add("float32")
            wf, w8 = self.b.const(f"{n.name}.weight", w.float().numpy()), ""
        elif weight_scheme(w) == "sign1":
            self.packing.add("uint8 signs+unpack (binary)")
            packed = self.b.const(f"{n.name}.weight_packed", pack_signs(w).numpy())
            bits = self.b.op("BitwiseAnd", [self.b.op("BitShift", [
                self.b.op("Unsqueeze", [packed, self.b.i64(1)]),
                self.b.const("shifts", np.arange(8, dtype=np.uint8).reshape(1, 8))], direction="RIGHT"),
                self.b.const("one", np.array(1, dtype=np.uint8))])
            flat = self.b.op("Slice", [self.b.op("Reshape", [bits, self.b.i64(-1)]), self.b.i64(0), self.b.i64(w.numel())])
            signs = self.b.op("Sub", [self.b.op("Mul", [self.b.op("Cast", [flat], to=TensorProto.FLOAT), self.b.f32(2.0)]),
                                      self.b.f32(1.0)])
            wf = self.b.op("Reshape", [signs, self.b.i64(*shape)], f"{n.name}.weight")
            w8 = wf
        else:
            self.packing.add("int2+dequantize (ternary)")
            name = self.b.fresh(f"{n.name}.weight_int2")
            raw = pack_trits_2bit(w).numpy().tobytes()
            self.b.inits.append(helper.make_tensor(name, TensorProto.INT2, shape, raw, raw=True))
            wf = self.b.op("DequantizeLinear", [name, self.b.f32(1.0)], f"{n.name}.weight")
            w8 = name
        self.weights[n.name] = (wf, w8)
        return wf, w8

    # ------------------------------------------------------------------ nodes
    def synapse(self, n: Synapse, x: str, t: str | None) -> str:
        wf, w8 = self.weight(n)
        rank = 4 if isinstance(n, Conv) else 2
        if self.path == "integer" and w8 and self.integer[n.inputs[0]]:
            self.integer_synapses += 1
            w8 = self.b.op("Cast", [w8], to=TensorProto.INT8)  # INT2 or ±1 floats → int8, folded at load
            xu8 = self.b.op("Cast", [x], to=TensorProto.UINT8)
            if isinstance(n, Conv):
                acc = self.b.op("ConvInteger", [xu8, w8], strides=[n.stride] * 2, pads=[n.padding] * 4)
            else:
                acc = self.b.op("MatMulInteger", [xu8, self.b.op("Transpose", [w8], perm=[1, 0])])
            acc = self.b.op("Cast", [acc], to=TensorProto.FLOAT)
        elif isinstance(n, Conv):
            acc = self.b.op("Conv", [x, wf], strides=[n.stride] * 2, pads=[n.padding] * 4)
        else:
            acc = self.b.op("MatMul", [x, self.b.op("Transpose", [wf], perm=[1, 0])])
        return self.affine(acc, n.scale, n.shift, rank, t)

    def neuron_step(self, n: Neuron, i: str, v: str | None, t: str | None, step: int, rank: int) -> tuple[str, str | None]:
        """One step of SPEC §1 (folded, §3.1). `t` is the step tensor (step graph) or None with `step`."""
        rows = (lambda p: self.rows(p, rank, t)) if t is not None else (lambda p: self._const_row(p, step, rank))
        if n.in_scale is not None:
            i = self.b.op("Add", [self.b.op("Mul", [i, rows(n.in_scale)]), rows(n.in_shift)])
        theta = rows(n.threshold)
        if n.model == "parallel":
            return self.spikes(self.b.op("Relu", [self.b.op("Sub", [i, theta])]), n), None
        m = i if v is None else self.b.op("Add", [self.b.op("Mul", [v, rows(n.leak)]), i])
        if n.model == "lif":
            s = self.b.op("Mul", [self.b.op("Cast", [self.b.op("GreaterOrEqual", [m, theta])], to=TensorProto.FLOAT), theta])
            return s, self.b.op("Sub", [m, s])
        s = self.b.op("Relu", [self.b.op("Sub", [m, theta])])
        return self.spikes(s, n), self.b.op("Min", [m, theta])

    def _const_row(self, p: torch.Tensor, step: int, rank: int) -> str:
        row = p[min(step, p.shape[0] - 1)].detach().float().numpy()
        return self.b.const("p", row.reshape(-1, *([1] * (rank - 2))) if row.ndim else row)

    def spikes(self, s: str, n: Neuron) -> str:
        """4-bit codes clamp(round(4s), 0, 15); ONNX Round is half to even like torch (SPEC §1.2)."""
        if n.spikes != "4bit":
            return s
        codes = self.b.op("Round", [self.b.op("Mul", [s, self.b.f32(SPIKE_LEVELS)])])
        return self.b.op("Clip", [codes, self.b.f32(0.0), self.b.f32(float(SPIKE_MAX_CODE))])

    def stateless(self, n, args: list[str], t: str | None) -> str:
        x = args[0]
        if isinstance(n, Add):
            return self.b.op("Add", args)
        if isinstance(n, SECA):
            y = x if len(args) == 1 else self.b.op("Add", [x, self.b.op("Mul", [args[1], self.b.f32(n.residual_scale)])])
            pooled = self.b.op("ReduceMean", [y, self.b.i64(2, 3)], keepdims=0)  # (N, C)
            k = n.weight.numel()
            gate = self.b.op("Conv", [self.b.op("Unsqueeze", [pooled, self.b.i64(1)]),
                                      self.b.const("seca_w", n.weight.float().numpy().reshape(1, 1, k)),
                                      self.b.const("seca_b", n.bias.float().numpy().reshape(1))], pads=[k // 2] * 2)
            gate = self.b.op("Unsqueeze", [self.b.op("Sigmoid", [self.b.op("Squeeze", [gate, self.b.i64(1)])]), self.b.i64(2, 3)])
            return self.b.op("Mul", [y, gate])
        if isinstance(n, Pool):
            if n.mode == "global":
                return self.b.op("GlobalAveragePool", [x])
            op = "AveragePool" if n.mode == "avg" else "MaxPool"
            extra = {"count_include_pad": 1} if n.mode == "avg" else {}
            return self.b.op(op, [x], kernel_shape=[n.kernel] * 2, strides=[n.stride] * 2, pads=[n.padding] * 4, **extra)
        if isinstance(n, Flatten):
            return self.b.op("Flatten", [x], axis=1)
        raise TypeError(f"the ONNX exporter has no emitter for node type {n.kind!r}")

    def is_integer(self, n, args_integer: list[bool]) -> bool:
        if isinstance(n, Neuron):
            return n.spikes == "4bit"
        if isinstance(n, Pool):
            return n.mode == "max" and args_integer[0]
        return isinstance(n, Flatten) and args_integer[0]

    # ------------------------------------------------------------------ whole graphs
    def build(self) -> onnx.ModelProto:
        C, H, W = self.m.input_shape
        K = self.m.num_classes
        shapes = {n.name: self.shapes[n.name] for n in self.m.neurons if n.stateful}
        f = TensorProto.FLOAT
        if self.graph == "step":
            inputs = [helper.make_tensor_value_info("x", f, ["batch", C, H, W]),
                      helper.make_tensor_value_info("t", TensorProto.INT64, [])]
            inputs += [helper.make_tensor_value_info(f"state_in.{k}", f, ["batch", *s]) for k, s in shapes.items()]
            outputs = [helper.make_tensor_value_info("logits", f, ["batch", K])]
            outputs += [helper.make_tensor_value_info(f"state_out.{k}", f, ["batch", *s]) for k, s in shapes.items()]
            logits, states = self._walk_step()
            self.b.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
            for k in shapes:
                self.b.nodes.append(helper.make_node("Identity", [states[k]], [f"state_out.{k}"]))
        else:
            inputs = [helper.make_tensor_value_info("x", f, [self.m.T, "batch", C, H, W])]
            outputs = [helper.make_tensor_value_info("logits", f, [self.m.T, "batch", K])]
            self.b.nodes.append(helper.make_node("Identity", [self.split_time(self._walk_sequence())], ["logits"]))
        g = helper.make_graph(self.b.nodes, f"hmdf_{self.graph}", inputs, outputs, self.b.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="hmdf", producer_version=__version__)
        model.ir_version = min(model.ir_version, 11)
        return model

    def _walk_step(self) -> tuple[str, dict[str, str]]:
        values, states = {"input": "x"}, {}
        self.values = values  # node → its value's name, for `onnx_trace`
        for n in self.m.nodes:
            args = [values[i] for i in n.inputs]
            self.integer[n.name] = self.is_integer(n, [self.integer[i] for i in n.inputs])
            if isinstance(n, Neuron):
                v = f"state_in.{n.name}" if n.stateful else None
                values[n.name], new_v = self.neuron_step(n, args[0], v, "t", 0, self._rank(n))
                if new_v is not None:
                    states[n.name] = new_v
            elif isinstance(n, Synapse):
                values[n.name] = self.synapse(n, args[0], "t")
            else:
                values[n.name] = self.stateless(n, args, "t")
        return values[self.m.output], states

    def _walk_sequence(self) -> str:
        values = {"input": self.merge_time("x")}
        self.values = values
        for n in self.m.nodes:
            args = [values[i] for i in n.inputs]
            self.integer[n.name] = self.is_integer(n, [self.integer[i] for i in n.inputs])
            if isinstance(n, Neuron):
                values[n.name] = self._neuron_sequence(n, args[0])
            elif isinstance(n, Synapse):
                values[n.name] = self.synapse(n, args[0], None)
            else:
                values[n.name] = self.stateless(n, args, None)
        return values[self.m.output]

    def _neuron_sequence(self, n: Neuron, i: str) -> str:
        """Unrolled over T: split (T, B, …) into steps, run the step, stack (SPEC §7 form 1)."""
        rank = self._rank(n)
        steps = self.split_time(i)
        v, outs = None, []
        for step in range(self.m.T):
            i_t = self.b.op("Squeeze", [self.b.op("Slice", [steps, self.b.i64(step), self.b.i64(step + 1),
                                                            self.b.i64(0)]), self.b.i64(0)])
            o, v = self.neuron_step(n, i_t, v, None, step, rank)
            outs.append(self.b.op("Unsqueeze", [o, self.b.i64(0)]))
        return self.merge_time(self.b.op("Concat", outs, axis=0))

    def _rank(self, n: Neuron) -> int:
        return len(self.shapes[n.name]) + 1


def build_onnx(model: DeployModel, graph: str = "step", path: str = "lowbit", opset: int = OPSET) -> onnx.ModelProto:
    """The ONNX graph of `model` (not validated, not written; see `export`)."""
    if graph not in GRAPHS or path not in PATHS:
        raise ValueError(f"graph must be one of {GRAPHS} and path one of {PATHS}")
    ternary = any(isinstance(n, Synapse) and n.weights != "fp32" and weight_scheme(n.weight) == "trit5" for n in model.nodes)
    need = OPSET if ternary and path != "float" else MIN_OPSET
    if not need <= opset <= MAX_OPSET:
        raise HmdfError(f"opset {opset} is not supported for this model and --path {path}: use {need}.."
                        f"{MAX_OPSET} (INT2 weights need opset {OPSET}; --path float needs {MIN_OPSET})")
    emitter = _Emitter(model, graph, path, opset)
    proto = emitter.build()
    if path == "integer" and not emitter.integer_synapses:
        raise HmdfError("--path integer: no synapse of this model reads 4-bit codes (with float spikes none does; "
                        "with 4-bit spikes, one behind an average pool or SECA reads floats), so the graph "
                        "would be --path lowbit's; export with --path lowbit")
    shapes = state_shapes(model)
    meta = {
        "hmdf.version": __version__, "hmdf.graph": graph, "hmdf.T": str(model.T),
        "hmdf.spikes": model.spikes, "hmdf.event": json.dumps(model.event), "hmdf.path": path,
        "hmdf.input_shape": json.dumps(list(model.input_shape)),
        "hmdf.states": json.dumps({k: list(s) for k, s in shapes.items()}),
        "hmdf.packing": ", ".join(sorted(emitter.packing)),
        "hmdf.dataset": str(model.source.get("dataset", "")),
        "hmdf.input": json.dumps(input_spec(model.source.get("dataset"))),
        "hmdf.source_checksum": str(model.source.get("checksum", model.source.get("run_sha256", ""))),
    }
    helper.set_model_props(proto, meta)
    return proto


def check_onnx(proto: onnx.ModelProto, model: DeployModel, samples: torch.Tensor | None = None, batch: int = 3) -> float:
    """Run the graph in onnxruntime against the reference executor; raise HmdfError on a mismatch.

    `samples` is a (T, B, C, H, W) sequence; by default a fixed random one. A step graph runs it
    twice over (2T steps, its state carried past T), so that its last state is checked too.
    Returns max |Δ logits|.
    """
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise HmdfError(f"the exported graph fails onnx.checker: {str(e).splitlines()[0]}") from None
    x = _sample(model, batch) if samples is None else samples
    if x.shape[1] < 1:
        raise HmdfError("the export check needs at least one sample")
    meta = {p.key: p.value for p in proto.metadata_props}
    graph, path = meta.get("hmdf.graph"), meta.get("hmdf.path")
    if graph == "step":
        x = torch.cat([x, x])
    want = Reference(model).run(x).numpy()
    try:
        session = ort_session(proto.SerializeToString())
        got = run_sequence(session, x.numpy())
    except Exception as e:  # onnxruntime's own exception types are not public
        raise HmdfError(f"onnxruntime cannot run the exported graph: {str(e).splitlines()[0]}") from None
    diff = float(np.abs(got - want).max())
    if diff <= ONNX_RTOL * max(1.0, float(np.abs(want).max())):
        return diff
    # Unequal logits: a wrong graph, or a spike rounded the other way at a tie (SPEC §1.2)?
    why = f"max |Δ logits| {diff:.2e}"
    if graph in GRAPHS and path in PATHS:
        emitter = _Emitter(model, graph, path, proto.opset_import[0].version)
        if emitter.build().graph == proto.graph:  # built from this model as it is: it can be traced node by node
            from .onnx_trace import trace

            problem, ties = trace(proto, model, x, emitter.values)
            if problem is None:  # every node agrees given its inputs
                warnings.warn(f"the ONNX {graph} graph's logits differ from the float32 reference's by up to "
                              f"{diff:.2e}, but every node agrees with the float64 reference given its inputs: "
                              f"spikes at rounding ties (SPEC §1.2; {ties} of the graph's went the other way)",
                              HmdfWarning, stacklevel=2)
                return diff
            why = problem
    raise HmdfError(f"the ONNX {graph or 'exported'} graph disagrees with the reference executor: {why}; "
                    "nothing was written")


#: ONNX and torch convolutions accumulate in different orders; logits agree to float rounding.
ONNX_RTOL = 1e-4
#: Fusions that multiply the per-channel scale into float conv weights: the products round
#: differently from scale·(W ⊛ x), which can flip a 4-bit code at a rounding tie (SPEC §1.2).
EXACT_DISABLED_OPTIMIZERS = ["ConvMulFusion", "ConvAddFusion"]


def ort_session(source):
    """An onnxruntime CPU session as hmdf runs and checks its graphs: full optimisation except
    the fusions that change the synaptic arithmetic (`EXACT_DISABLED_OPTIMIZERS`); under
    OMP_WAIT_POLICY=PASSIVE (the `hmdf` command's default) its threads sleep, not spin, between ops."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # constant folding of the unpack subgraphs logs noise otherwise
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":  # one knob for both runtimes' threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=EXACT_DISABLED_OPTIMIZERS)


def run_sequence(session, x: np.ndarray) -> np.ndarray:
    """Logits (T, B, K) of a (T, B, …) input through a step graph (state carried) or a sequence graph."""
    names = [i.name for i in session.get_inputs()]
    if "t" not in names:
        return session.run(["logits"], {"x": x.astype(np.float32)})[0]
    outputs = [o.name for o in session.get_outputs()]
    state = {i.name: np.zeros([x.shape[1], *i.shape[1:]], np.float32) for i in session.get_inputs() if i.name.startswith("state_in.")}
    logits = []
    for t in range(x.shape[0]):
        out = dict(zip(outputs, session.run(outputs, {"x": x[t].astype(np.float32), "t": np.array(t, np.int64), **state})))
        state = {k: out["state_out." + k[len("state_in."):]] for k in state}
        logits.append(out["logits"])
    return np.stack(logits)


def _sample(model: DeployModel, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (model.T, batch, *model.input_shape)
    if model.event:
        return torch.poisson(torch.full(shape, 0.5), generator=g)
    return torch.rand(1, *shape[1:], generator=g).expand(shape)  # a static image repeats


def export(model: DeployModel, out: Path, *, graph: str = "step", path: str = "lowbit", opset: int = OPSET,
           checksum: str = "", samples: torch.Tensor | None = None) -> list[Path]:
    """Write `out` (or, for graph="both", OUT.step.onnx and OUT.sequence.onnx) after checking each."""
    out = Path(out)
    graphs = GRAPHS if graph == "both" else (graph,)
    if any(g not in GRAPHS for g in graphs):
        raise HmdfError(f"unknown graph {graph!r}; choose step, sequence or both")
    if path not in PATHS:
        raise HmdfError(f"unknown weight path {path!r}; choose one of {', '.join(PATHS)}")
    protos = {}
    for g in graphs:  # build and check every graph before writing any: all or nothing
        proto = build_onnx(model, g, path, opset)
        if checksum:
            helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "hmdf.source_checksum": checksum})
        check_onnx(proto, model, samples)
        protos[out.with_suffix(f".{g}.onnx") if graph == "both" else out] = proto.SerializeToString()
    for target, data in protos.items():
        atomic_write(target, lambda p, data=data: p.write_bytes(data))
    return list(protos)


__all__ = ["build_onnx", "check_onnx", "export", "run_sequence", "OPSET", "PATHS", "GRAPHS"]
