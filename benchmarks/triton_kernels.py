"""The Triton kernels (`hmdf_deploy.runtime.kernels`) and the triton backend on a CUDA GPU:
correctness against the torch reference, time, achieved bandwidth against the measured floor.

Written to run once on a lent GPU in a few minutes; every section has its own time budget and
the results are flushed to `--out` after every row, so a timeout still leaves what was measured.

1. Ceilings: device-to-device copy bandwidth (bytes read + written) and dense matmul rates
   (bf16; int8 via torch._int_mm; fp32 with the backend's current TF32 setting, recorded).
2. Neuron kernels on CIFAR-size feature maps (128×32×32, 256×16×16, 512×8×8; batch 1 and 32):
   `neuron_steps` in step form (T = 1, membrane in and out), the fused loop over T steps,
   `neuron_scan`; 4-bit codes (uint8) and float32 spikes; SpikingJelly's Triton multi-step LIF
   on the same shapes next to hmdf's loop kernel in LIF mode (same dynamics class, float spikes).
3. The packed synapse (implicit GEMM) for trit2, sign1 and fp32 weights, uint8 4-bit code inputs
   and float32 inputs, conv 3×3 and a 4096×4096 linear layer, at batch 1 and 32, next to a dense
   bf16 F.conv2d / F.linear of the same shape. On the conv shapes, code inputs, trit2 / sign1 and an
   HM-DF neuron with 4-bit codes out: `synapse_neuron` (one kernel, the current in registers)
   against `synapse` then `neuron_steps` (two launches, a float32 current through memory), as one
   streaming step (T = 1, membrane in and out) and as a sequence of T = 4 steps without state.
4. A whole network: VGG-11 on 3×32×32, T = 4, 1.5-bit weights, 4-bit spikes (tests/nets.py
   `make_deploy`, random folded weights that fire): per-step latency (`TritonBackend.step`, replayed
   from CUDA graphs, and with its kernels launched one by one) and whole sequences (`TritonBackend.run`, loop and scan) against the torch reference on the same
   device and SpikingJelly (LIFNode, multi-step, its Triton kernel) of the same layer shapes; with
   how many synapses each form runs fused with their neuron (streaming steps: `TritonBackend.fused`;
   sequences: none).

Every kernel row is checked against a reference before it is timed (neurons: `Reference` on a
one-neuron DeployModel; synapses: F.conv2d / F.linear in float64; the fused synapse + neuron:
bit-equal (torch.equal) to the two kernels it replaces); a failed check is recorded,
printed in capitals and makes the exit status 1, and the script goes on measuring.

Bytes counted per kernel call (the floor): the input read once, the output written once (uint8
per 4-bit code, else float32), the membrane read and written for the step form, packed weights
read once, and for the two-kernel path the float32 current written and read back; per-channel
parameters are ignored (≤ 0.1 %). Floor time = max(bytes / copy
bandwidth, FLOPs / matmul rate of the unit the kernel uses); "% of floor" = floor / measured.

Kernel times: device time (benchmarks/_device_time.py: the durations of the kernels a call
launches, from the GPU's clock, L2 flushed by a read before every call; median and 10th-90th
percentiles of 20 calls, in µs). Runs 1-4 (sessions 2-3) used `triton.testing.do_bench`, whose
flush writes L2 full of dirty lines that the timed kernel then writes back (about 50 MB), and
whose events include the host's launch time where that exceeds the flush's.
Whole-network times: wall clock per call, results on the host (the API's own synchronisation),
median (min–max) over repeats that interleave the backends.

    python benchmarks/triton_kernels.py                    # on a CUDA GPU, < 6 min, writes $OUT or benchmarks/out/
    python benchmarks/triton_kernels.py --quick            # fewer shapes, < 3 min
    TRITON_INTERPRET=1 python benchmarks/triton_kernels.py --smoke --out /tmp/tk   # CPU: does it run? (~30 s)

SpikingJelly is optional (without it its rows are skipped with a note); it selects its Triton LIF
through SJ_LIF_CUDA_IMPLEMENTATION, which this script sets to "triton" unless already set.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (also puts the repository root on sys.path)
import _device_time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402  (importing torch does not define any Triton kernel yet)
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # nets.py: random folded networks that fire

#: Fractions of --budget after which each section stops starting new rows (cumulative, so time a
#: section leaves goes to the next); every section gets at least MIN_SHARE of it from its start,
#: so an overrun before the network cannot starve it. Worst case: (1 + MIN_SHARE) · budget + one row.
SECTIONS = {"ceilings": 0.05, "neuron": 0.26, "synapse": 0.64, "network": 1.0}
MIN_SHARE = 0.2
US = 1e6


# ============================================================================ setup and output
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="directory for triton_kernels.md / .json (default $OUT, else benchmarks/out)")
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes, few repeats; on a machine without CUDA runs the kernels in Triton's interpreter")
    ap.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 240, --quick 120)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.budget = args.budget or (120.0 if args.smoke else 120.0 if args.quick else 240.0)
    args.out = Path(args.out or os.environ.get("OUT") or ROOT / "benchmarks" / "out")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    return args


def choose_device(args) -> str | None:
    """'cuda', or 'cpu' for --smoke without a GPU (Triton's interpreter); None: cannot run."""
    if torch.cuda.is_available():
        return "cuda"
    if not args.smoke:
        return None
    # Triton reads TRITON_INTERPRET when a kernel is defined, i.e. when hmdf's kernels module is
    # first imported, which has not happened yet in this process.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    return "cpu"


class Report:
    """Everything measured, rewritten to <out>/triton_kernels.{json,md} after every row."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.out = out
        self.data = {"meta": meta, "ceilings": {}, "neuron": [], "sj_neuron": [], "synapse": [], "dense": [],
                     "fused": [], "network_checks": [], "network": [], "failures": [], "errors": [], "skipped": [],
                     "notes": []}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, row) -> None:
        if isinstance(self.data[key], list):
            self.data[key].append(row)
        else:
            self.data[key].update(row)
        self.flush()

    def flush(self) -> None:
        (self.out / "triton_kernels.json").write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        (self.out / "triton_kernels.md").write_text(render(self.data) + "\n")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def versions(dev: str) -> dict:
    import triton

    v = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
         "cuda_runtime": torch.version.cuda, "device": dev,
         "interpreter": os.environ.get("TRITON_INTERPRET", ""),
         "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
         "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                 gpu_memory_gib=round(p.total_memory / 2**30, 1))
        try:
            v["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            v["driver"] = "unknown"
    else:
        v["gpu"] = "none (CPU, Triton interpreter)"
    try:
        import importlib.metadata as md

        v["spikingjelly"] = md.version("spikingjelly")
    except Exception:  # noqa: BLE001  (PackageNotFoundError, or a broken install)
        v["spikingjelly"] = "not installed"
    return v


# ==================================================================================== timing
class Timer:
    """Kernel timing: device time on a GPU (`_device_time`: the kernels' durations from the GPU's
    clock, L2 flushed before each call; do_bench if the profiler fails, said in the log and in the
    row's "clock"); a few wall-clock calls in smoke mode on the CPU, where the numbers only show
    that the code path runs."""

    def __init__(self, dev: str, quick: bool, smoke: bool) -> None:
        self.cuda = dev == "cuda"
        self.warmup, self.rep = (10, 40) if quick or smoke else (15, 80)  # milliseconds, do_bench's units
        self.smoke_reps = 1  # after the check's call, which compiled and warmed the kernel

    def kernel(self, fn) -> dict:
        """Seconds per call: median, p10, p90, and the clock that measured them."""
        if self.cuda:
            try:
                return {**_device_time.summary(_device_time.device_times(fn)), "clock": "device"}
            except Exception as e:  # noqa: BLE001  (fall back rather than lose the row)
                log(f"device timing failed ({type(e).__name__}: {e}); do_bench instead")
            import triton.testing

            med, lo, hi = triton.testing.do_bench(fn, warmup=self.warmup, rep=self.rep, quantiles=[0.5, 0.1, 0.9])
            return {"median": med / 1e3, "p10": lo / 1e3, "p90": hi / 1e3, "clock": "do_bench"}
        ts = []
        for _ in range(self.smoke_reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return {"median": statistics.median(ts), "p10": min(ts), "p90": max(ts)}


class Budget:
    """Per-section deadlines (see SECTIONS): a section starts no new row after its deadline."""

    def __init__(self, total: float) -> None:
        self.start, self.total = time.perf_counter(), total
        self.deadline: dict[str, float] = {}

    def begin(self, section: str) -> None:
        now = time.perf_counter()
        self.deadline[section] = max(self.start + SECTIONS[section] * self.total, now + MIN_SHARE * self.total)

    def over(self, section: str) -> bool:
        return time.perf_counter() > self.deadline.get(section, self.start + SECTIONS[section] * self.total)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def guarded(rep: Report, budget: Budget, section: str, what: str):
    """Run one row's closure unless the section is out of time; record exceptions and go on."""
    def run(fn):
        if budget.over(section):
            rep.add("skipped", f"{section}: {what} (section budget spent)")
            log(f"skip {section}: {what} (budget)")
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (keep measuring whatever else works)
            rep.add("errors", {"section": section, "what": what, "error": f"{type(e).__name__}: {e}",
                               "trace": traceback.format_exc(limit=6)})
            log(f"ERROR {section}: {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            return None
    return run


# ================================================================================= checking
def compare(out: torch.Tensor, ref: torch.Tensor, atol: float, jump: float | None = None, frac: float = 0.0) -> dict:
    """Agreement of `out` with `ref`: elements further apart than `atol` may be at most a share
    `frac` of all and (if `jump` is given) at most `jump` apart; non-finite values always fail.
    `jump`/`frac` allow the rare one-code (or one-spike) flips that a different rounding order
    (fused multiply-add, the scan's reassociation) produces at a rounding boundary."""
    out, ref = out.double().reshape(ref.shape), ref.double()
    nonfinite = int((~torch.isfinite(out)).sum())
    d = (out - ref).abs().nan_to_num(nan=math.inf)
    far = float((d > atol).double().mean())
    worst = float(d.max()) if d.numel() else 0.0
    ok = nonfinite == 0 and far <= frac and (worst <= atol if jump is None else worst <= jump)
    return {"ok": ok, "max_abs": worst, "differ_frac": far, "nonfinite": nonfinite, "atol": atol,
            "allowed_jump": jump, "allowed_frac": frac, "ref_max": float(ref.abs().max()) if ref.numel() else 0.0}


def poison(dev: str, nbytes: int) -> None:
    """Fill a freed block with 0xFF so that a kernel output landing in it shows unwritten
    elements (NaN as float32, code 255 as uint8) instead of a previous call's correct values."""
    junk = torch.full((nbytes,), 255, dtype=torch.uint8, device=dev)
    del junk


def record_check(rep: Report, what: str, chk: dict) -> dict:
    """Lists a failed check (and says so loudly); returns the check for the row."""
    if not chk["ok"]:
        rep.add("failures", {"what": what, **chk})
        log(f"CHECK FAILED: {what}: max |Δ| {chk['max_abs']:.3g}, differ {chk['differ_frac']:.2e}, "
            f"non-finite {chk['nonfinite']}")
    return chk


def check_cell(chk: dict) -> str:
    return f"{'ok' if chk['ok'] else 'FAIL'} {chk['max_abs']:.1e}" + (
        f" ({100 * chk['differ_frac']:.3f}% differ)" if chk["differ_frac"] else "")


# =================================================================================== ceilings
def section_ceilings(rep: Report, timer: Timer, budget: Budget, dev: str, smoke: bool) -> dict:
    """Copy bandwidth and matmul rates, measured here: the floors every later row is held to."""
    n_copy = 2**20 if smoke else 2**28  # float32 elements: 1 GiB on the GPU, well past the 60 MB L2
    n_mm = 128 if smoke else 8192
    got = {}

    def copy():
        src = torch.rand(n_copy, device=dev)
        dst = torch.empty_like(src)
        t = timer.kernel(lambda: dst.copy_(src))
        got["copy_GBps"] = 2 * src.numel() * 4 / t["median"] / 1e9
        rep.add("ceilings", {"copy": {"bytes_moved": 2 * src.numel() * 4, "time": t, "GBps": got["copy_GBps"]}})

    def matmul(name: str, dtype, n: int):
        def fn():
            if dtype == torch.int8:
                a = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev)
                b = torch.randint(-8, 8, (n, n), dtype=torch.int8, device=dev).t()  # column-major, as cuBLASLt wants
                try:
                    torch._int_mm(a, b)
                except RuntimeError:  # a build that wants both row-major
                    b = b.contiguous()
                t = timer.kernel(lambda: torch._int_mm(a, b))
            else:
                a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
                t = timer.kernel(lambda: a @ b)
            got[f"{name}_TFLOPs"] = 2 * n**3 / t["median"] / 1e12
            rep.add("ceilings", {name: {"n": n, "time": t, "TFLOPs": got[f"{name}_TFLOPs"]}})
        return fn

    for what, fn in [("copy", copy), ("bf16", matmul("bf16", torch.bfloat16, n_mm)),
                     ("int8", matmul("int8", torch.int8, n_mm)),
                     ("fp32", matmul("fp32", torch.float32, n_mm // 2))]:
        guarded(rep, budget, "ceilings", what)(fn)
        log(f"ceiling {what}: " + ", ".join(f"{k} {v:.1f}" for k, v in got.items() if k.startswith(what)))
    return got


def floor_time(bytes_moved: float, flops: float, bw: float | None, rate: float | None) -> float | None:
    """max(bytes / bandwidth, flops / rate) in seconds; None if the ceiling was not measured."""
    if not bw:
        return None
    t = bytes_moved / (bw * 1e9)
    return max(t, flops / (rate * 1e12)) if rate and flops else t


# ============================================================================ neuron kernels
def neuron_node(model: str, spikes: str, R: int, C: int, dev: str):
    """A Neuron node with random per-step threshold (R,) and per-(step, channel) leak (R, C) ≥ 0
    (so the scan applies), on `dev`; no input affine, as after a synapse that absorbed it."""
    from hmdf_deploy.deploy.graph import Neuron

    return Neuron("n", ["input"], model, spikes, torch.rand(R, device=dev) + 0.5, torch.rand(R, C, device=dev))


def neuron_reference(node, shape: tuple[int, int, int]):
    """`Reference` of the one-neuron DeployModel input → neuron → flatten (the logits are the spikes)."""
    from hmdf_deploy.deploy.graph import DeployModel, Flatten
    from hmdf_deploy.deploy.reference import Reference

    model = DeployModel(node.threshold.shape[0], shape, True, math.prod(shape), [node, Flatten("f", ["n"])], "f")
    return Reference(model)


#: Tolerances per (form, output): absolute tolerance relative to 1 + max|ref|, the largest
#: allowed jump and the share of elements allowed past the tolerance (see `compare`).
NEURON_TOL = {"codes": (1e-6, 1.0, 1e-4), "float": (1e-5, None, 0.0), "lif": (1e-5, 2.0, 1e-4)}
SCAN_TOL = {"codes": (1e-6, 1.0, 1e-3), "float": (1e-4, None, 0.0)}


def neuron_case(out: str) -> tuple[str, str]:
    """Output label → (neuron model, spikes)."""
    return {"codes": ("hmdf", "4bit"), "float": ("hmdf", "float"), "lif": ("lif", "float")}[out]


def check_neuron(rep: Report, form: str, out: str, x: torch.Tensor, node, p, t: int, dev: str) -> dict:
    from hmdf_deploy.runtime import kernels as K

    ref = neuron_reference(node, tuple(x.shape[2:]))
    poison(dev, x.numel() * 4)
    if form == "step":  # one step t with a random membrane carried in
        v = torch.rand(x.shape[1:], device=dev) * node.threshold.max()
        want, state = ref.step(x[0], {"n": v}, t)
        s, v_out = K.neuron_steps(x, p, t, v)
        tol = NEURON_TOL[out]
        chk = compare(s[0].float(), want, tol[0] * (1 + float(want.abs().max())), tol[1], tol[2])
        chk_v = compare(v_out, state["n"], 1e-5 * (1 + float(state["n"].abs().max())))
        chk = chk if not chk["ok"] or chk_v["ok"] else {**chk_v, "what": "membrane"}
    else:
        want = ref.run(x)  # the loop: exact order of the streaming form
        got = K.neuron_scan(x, p) if form == "scan" else K.neuron_steps(x, p, keep_state=False)[0]
        tol = (SCAN_TOL if form == "scan" else NEURON_TOL)[out]
        chk = compare(got.float(), want, tol[0] * (1 + float(want.abs().max())), tol[1], tol[2])
    return record_check(rep, f"neuron {form} {out} {tuple(x.shape)}", chk)


def neuron_row(rep, timer, ceil, form: str, out: str, B: int, chw: tuple, T: int, dev: str) -> None:
    from hmdf_deploy.runtime import kernels as K

    model, spikes = neuron_case(out)
    R = 4 if form == "step" else T  # parameter rows: the network's T; the step form reads row t
    t = 2 if form == "step" else 0
    node = neuron_node(model, spikes, R, chw[0], dev)
    p = K.NeuronParams.from_node(node, dev)
    x = torch.randn(T, B, *chw, device=dev) * 0.8 + 0.4  # ~40 % of neurons fire
    check = check_neuron(rep, form, out, x, node, p, t, dev)
    v = torch.rand(B, *chw, device=dev)
    fn = {"step": lambda: K.neuron_steps(x, p, t, v),
          "loop": lambda: K.neuron_steps(x, p, keep_state=False),
          "scan": lambda: K.neuron_scan(x, p)}[form]
    tm = timer.kernel(fn)
    N = x.numel()
    nbytes = N * 4 + N * (1 if p.codes else 4) + (2 * x[0].numel() * 4 if form == "step" else 0)
    fl = floor_time(nbytes, 0, ceil.get("copy_GBps"), None)
    rep.add("neuron", {"form": form, "out": out, "B": B, "shape": chw, "T": T, "check": check, "time": tm,
                       "bytes": nbytes, "GBps": nbytes / tm["median"] / 1e9, "floor_s": fl,
                       "of_floor": fl / tm["median"] if fl else None})
    log(f"neuron {form:4} {out:5} B={B:2} {chw} T={T:2}: {tm['median'] * US:8.1f} µs, {check_cell(check)}")


def sj_neuron_row(rep, timer, ceil, B: int, chw: tuple, T: int, dev: str) -> None:
    """SpikingJelly's multi-step LIF (tau 2, threshold 1, hard reset 0) on the same shape, float32."""
    from spikingjelly.activation_based import functional as sjf

    x = torch.randn(T, B, *chw, device=dev) * 0.8 + 0.4
    v0 = torch.zeros(B, *chw, device=dev)
    fn = lambda: sjf.lif_multi_step(x, v0, 2.0, True, 1.0, 0.0, None, False, False)  # noqa: E731
    fn()  # its dispatch picks an implementation and compiles on the first call
    tm = timer.kernel(fn)
    N = x.numel()
    nbytes = N * 4 * 2 + 2 * v0.numel() * 4  # the task's floor: x in, spikes out, membrane in and out
    fl = floor_time(nbytes, 0, ceil.get("copy_GBps"), None)
    rep.add("sj_neuron", {"B": B, "shape": chw, "T": T, "time": tm, "bytes": nbytes, "implementation": sj_impl(dev),
                          "GBps": nbytes / tm["median"] / 1e9, "of_floor": fl / tm["median"] if fl else None})
    log(f"sj lif loop       B={B:2} {chw} T={T:2}: {tm['median'] * US:8.1f} µs")


def sj_impl(dev: str) -> str:
    """Which implementation SpikingJelly's LIF dispatch chose on this device."""
    if dev != "cuda":
        return "torch (CPU)"
    try:
        from spikingjelly._ops.lif import _selection

        return _selection.diagnostics(torch.device("cuda"))["implementation"]
    except Exception as e:  # noqa: BLE001  (private API of one SpikingJelly version)
        return f"unknown ({type(e).__name__})"


def sj_available() -> str | None:
    """None if spikingjelly.activation_based imports, else why not, in one line."""
    try:
        for mod in ("spikingjelly.activation_based.functional", "spikingjelly.activation_based.neuron"):
            importlib.import_module(mod)
        return None
    except Exception as e:  # noqa: BLE001
        return f"spikingjelly not importable on this machine ({type(e).__name__}: {e})"


def neuron_plan(args) -> tuple[list, list, list]:
    if args.smoke:  # one scan program per call: the interpreter's scan costs ~0.3 s a program
        return [(8, 4, 4)], [1, 2], [3]
    if args.quick:
        return [(128, 32, 32), (512, 8, 8)], [1, 32], [4]
    return [(128, 32, 32), (256, 16, 16), (512, 8, 8)], [1, 32], [4, 16]


def section_neuron(rep, timer, budget, ceil, dev, args) -> None:
    shapes, batches, Ts = neuron_plan(args)
    sj_missing = sj_available()
    if sj_missing:
        rep.add("notes", f"SpikingJelly neuron rows skipped: {sj_missing}")
    for chw in shapes:
        for B in batches:
            rows = [("step", out, 1) for out in ("codes", "float")]
            rows += [(form, out, T) for T in Ts for form in ("loop", "scan") for out in ("codes", "float")]
            rows += [("loop", "lif", T) for T in Ts]
            for form, out, T in rows:
                guarded(rep, budget, "neuron", f"{form} {out} B={B} {chw} T={T}")(
                    lambda: neuron_row(rep, timer, ceil, form, out, B, chw, T, dev))
            if not sj_missing:
                for T in Ts:
                    guarded(rep, budget, "neuron", f"spikingjelly B={B} {chw} T={T}")(
                        lambda: sj_neuron_row(rep, timer, ceil, B, chw, T, dev))


# =========================================================================== synapse kernels
def random_weight(scheme: str, O: int, C: int, k: int, dev: str) -> tuple[torch.Tensor, str]:
    """(weight, the Synapse's `weights` string): int8 codes for trit2/sign1, float32 for fp32."""
    shape = (O, C, k, k) if k > 1 else (O, C)
    if scheme == "trit2":
        return torch.randint(-1, 2, shape, dtype=torch.int8, device=dev), "1.5bit"
    if scheme == "sign1":
        return (torch.randint(0, 2, shape, dtype=torch.int8, device=dev) * 2 - 1), "1bit"
    return torch.randn(shape, device=dev) * 0.05, "fp32"


def random_input(inp: str, B: int, C: int, hw: int | None, dev: str) -> torch.Tensor:
    shape = (B, C, hw, hw) if hw else (B, C)
    if inp == "codes":  # 4-bit spike codes, ~60 % zeros as in a spiking layer
        return (torch.randint(0, 16, shape, device=dev) * (torch.rand(shape, device=dev) < 0.4)).to(torch.uint8)
    return torch.randn(shape, device=dev)


def dense_ref(x: torch.Tensor, w: torch.Tensor, scale, shift, pad: int) -> torch.Tensor:
    """scale ⊙ (W ⊛ x) + shift in float64 (conv 3×3 or linear)."""
    x, w = x.double(), w.double()
    acc = F.conv2d(x, w, padding=pad) if w.dim() == 4 else F.linear(x, w)
    shape = (1, -1, 1, 1) if w.dim() == 4 else (1, -1)
    return acc * scale.double().reshape(shape) + shift.double().reshape(shape)


def check_synapse(rep, what: str, x, w, pw, scale, shift, pad: int, integer: bool, dev: str) -> dict:
    """The whole batch through the kernel (the configuration that is timed); its first two and
    last two samples against float64, which keeps the reference cheap at any batch."""
    from hmdf_deploy.runtime import kernels as K

    pick = sorted({0, 1, x.shape[0] - 2, x.shape[0] - 1} & set(range(x.shape[0])))
    want = dense_ref(x[pick], w, scale, shift, pad)
    poison(dev, x.shape[0] * want[0].numel() * 4)
    got = K.synapse(x, pw, scale, shift, padding=pad)[pick]
    # Integer codes accumulate exactly; only the float32 epilogue rounds. Float dots round per term.
    rel = 1e-5 if integer else 1e-4
    return record_check(rep, what, compare(got, want, rel * (1 + float(want.abs().max()))))


def synapse_row(rep, timer, ceil, layer: dict, B: int, scheme: str, inp: str, dev: str) -> None:
    from hmdf_deploy.runtime import kernels as K

    C, O, hw, k = layer["C"], layer["O"], layer["hw"], layer["k"]
    pad = k // 2
    w, weights = random_weight(scheme, O, C, k, dev)
    pw = K.pack_weight(w, weights, dev)
    x = random_input(inp, B, C, hw, dev)
    scale, shift = torch.rand(1, O, device=dev) * 0.1 + 0.01, torch.randn(1, O, device=dev) * 0.1
    integer = inp == "codes" and scheme != "fp32"
    check = check_synapse(rep, f"synapse {layer['name']} B={B} {scheme} {inp}", x, w, pw, scale, shift, pad, integer, dev)
    tm = timer.kernel(lambda: K.synapse(x, pw, scale, shift, padding=pad))
    M = B * (hw * hw if hw else 1)
    flops = 2 * M * O * C * k * k
    nbytes = x.numel() * x.element_size() + pw.data.numel() * pw.data.element_size() + M * O * 4
    rate = ceil.get("int8_TFLOPs") if integer else ceil.get("fp32_TFLOPs")
    fl = floor_time(nbytes, flops, ceil.get("copy_GBps"), rate)
    rep.add("synapse", {"layer": layer["name"], "B": B, "scheme": scheme, "input": inp, "integer_dot": integer,
                        "check": check, "time": tm, "bytes": nbytes, "flops": flops,
                        "GBps": nbytes / tm["median"] / 1e9, "TFLOPs": flops / tm["median"] / 1e12,
                        "floor_s": fl, "of_floor": fl / tm["median"] if fl else None})
    log(f"synapse {layer['name']:24} B={B:2} {scheme:5} {inp:5}: {tm['median'] * US:9.1f} µs, {check_cell(check)}")


def dense_row(rep, timer, ceil, layer: dict, B: int, dev: str) -> None:
    """The same layer as a dense bf16 F.conv2d / F.linear (cuDNN / cuBLAS): the usual baseline."""
    C, O, hw, k = layer["C"], layer["O"], layer["hw"], layer["k"]
    dt = torch.bfloat16 if dev == "cuda" else torch.float32  # bf16 convs are slow or missing on some CPUs
    x = torch.randn((B, C, hw, hw) if hw else (B, C), device=dev, dtype=dt)
    w = torch.randn((O, C, k, k) if hw else (O, C), device=dev, dtype=dt)
    fn = (lambda: F.conv2d(x, w, padding=k // 2)) if hw else (lambda: F.linear(x, w))
    fn()  # cuDNN picks its algorithm on the first call
    tm = timer.kernel(fn)
    M = B * (hw * hw if hw else 1)
    flops = 2 * M * O * C * k * k
    es = x.element_size()
    nbytes = (x.numel() + w.numel() + M * O) * es
    fl = floor_time(nbytes, flops, ceil.get("copy_GBps"), ceil.get("bf16_TFLOPs"))
    rep.add("dense", {"layer": layer["name"], "B": B, "dtype": str(dt).replace("torch.", ""), "time": tm,
                      "bytes": nbytes, "flops": flops, "GBps": nbytes / tm["median"] / 1e9,
                      "TFLOPs": flops / tm["median"] / 1e12, "floor_s": fl, "of_floor": fl / tm["median"] if fl else None})
    log(f"dense   {layer['name']:24} B={B:2} {str(dt):14}: {tm['median'] * US:9.1f} µs")


# ===================================================================== synapse + neuron fused
FUSED_T = 4  # the sequence form's steps: the network's T


def fused_case(layer: dict, B: int, scheme: str, dev: str):
    """Code inputs for FUSED_T steps of B samples, packed weights, a per-(t, channel) affine and an
    HM-DF neuron with 4-bit codes out. The affine makes the current ~N(0.4, 0.8) as in the neuron
    rows (~40 % fire), so the codes are neither all 0 nor all 15 and the check means something."""
    from hmdf_deploy.runtime import kernels as K

    C, O, hw, k = layer["C"], layer["O"], layer["hw"], layer["k"]
    w, weights = random_weight(scheme, O, C, k, dev)
    pw = K.pack_weight(w, weights, dev)
    x = random_input("codes", FUSED_T * B, C, hw, dev)
    unit = torch.ones(1, O, device=dev), torch.zeros(1, O, device=dev)
    gain = 0.8 / float(K.synapse(x[:B], pw, *unit, padding=k // 2).std())
    scale = (torch.rand(FUSED_T, O, device=dev) * 0.2 + 0.9) * gain
    shift = torch.randn(FUSED_T, O, device=dev) * 0.1 + 0.4
    p = K.NeuronParams.from_node(neuron_node("hmdf", "4bit", FUSED_T, O, dev), dev)
    return x, pw, scale, shift, p


def fused_paths(form: str, x, pw, scale, shift, p, B: int, pad: int, v):
    """(two kernels, fused) closures of one form, each returning (spikes (steps·B, O, …), membrane
    or None): step = step t = 2 of a stream (the step index reads its own affine row) from membrane
    v; seq = all FUSED_T steps from v = 0, no state kept."""
    from hmdf_deploy.runtime import kernels as K

    if form == "step":
        x1, t = x[:B], 2

        def two():
            i = K.synapse(x1, pw, scale, shift, padding=pad, t0=t)
            s, v_out = K.neuron_steps(i.unsqueeze(0), p, t, v)
            return s[0], v_out
        return two, lambda: K.synapse_neuron(x1, pw, scale, shift, p, padding=pad, t0=t, v=v)

    def two_seq():
        i = K.synapse(x, pw, scale, shift, padding=pad, steps=FUSED_T)
        s, _ = K.neuron_steps(i.reshape(FUSED_T, B, *i.shape[1:]), p, keep_state=False)
        return s.reshape(i.shape), None
    return two_seq, lambda: K.synapse_neuron(x, pw, scale, shift, p, padding=pad, steps=FUSED_T, keep_state=False)


def exact(got: torch.Tensor, want: torch.Tensor) -> dict:
    """`compare` with no tolerance, and ok only when torch.equal (same shape, dtype and bits)."""
    chk = compare(got, want, 0.0)
    return {**chk, "ok": chk["ok"] and torch.equal(got, want), "exact": True}


def check_fused(rep, what: str, two, fused, dev: str) -> tuple[dict, float]:
    """Spikes (and the membrane, if kept) of the fused kernel against the two kernels it replaces:
    the same operations in the same order, so bit-equal. Also returns the share that fires."""
    want = two()
    poison(dev, want[0].numel() * want[0].element_size())
    got = fused()
    chk = exact(got[0], want[0])
    if chk["ok"] and want[1] is not None:
        chk_v = exact(got[1], want[1]) if got[1] is not None else {**chk, "ok": False}
        chk = chk if chk_v["ok"] else {**chk_v, "what": "membrane"}
    return record_check(rep, what, chk), float((want[0] != 0).float().mean())


def fused_row(rep, timer, ceil, layer: dict, B: int, scheme: str, form: str, dev: str) -> None:
    C, O, hw, k = layer["C"], layer["O"], layer["hw"], layer["k"]
    x, pw, scale, shift, p = fused_case(layer, B, scheme, dev)
    v = torch.rand(B, O, hw, hw, device=dev) * p.threshold.max() if form == "step" else None
    two, fused = fused_paths(form, x, pw, scale, shift, p, B, k // 2, v)
    check, fire = check_fused(rep, f"fused {form} {layer['name']} B={B} {scheme}", two, fused, dev)
    T = 1 if form == "step" else FUSED_T
    MO = T * B * hw * hw * O  # current (= spike) elements over the T steps
    flops = 2 * MO * C * k * k
    # both: codes in, packed weights, codes out, the membrane in and out (step form); two kernels
    # also write the float32 current and read it back
    base = T * B * C * hw * hw + pw.data.numel() * pw.data.element_size() + MO
    base += 0 if v is None else 2 * v.numel() * 4
    row = {"layer": layer["name"], "B": B, "scheme": scheme, "form": form, "T": T, "check": check, "fire": fire}
    for name, fn, nbytes in (("two", two, base + 8 * MO), ("fused", fused, base)):
        tm = timer.kernel(fn)
        fl = floor_time(nbytes, flops, ceil.get("copy_GBps"), ceil.get("int8_TFLOPs"))
        row[name] = {"time": tm, "bytes": nbytes, "GBps": nbytes / tm["median"] / 1e9, "floor_s": fl,
                     "of_floor": fl / tm["median"] if fl else None}
    row["two_over_fused"] = row["two"]["time"]["median"] / row["fused"]["time"]["median"]
    rep.add("fused", row)
    log(f"fused   {layer['name']:24} B={B:2} {scheme:5} {form:4} T={T}: {row['two']['time']['median'] * US:9.1f} µs "
        f"→ {row['fused']['time']['median'] * US:9.1f} µs ({row['two_over_fused']:.2f}×), {check_cell(check)}")


def synapse_plan(args) -> tuple[list[dict], list[int], list[str]]:
    def conv(C, hw):
        return {"name": f"conv3×3 {C}→{C} @{hw}×{hw}", "C": C, "O": C, "hw": hw, "k": 3}

    linear = {"name": "linear 4096→4096", "C": 4096, "O": 4096, "hw": None, "k": 1}
    if args.smoke:
        return [conv(16, 8), {"name": "linear 64→32", "C": 64, "O": 32, "hw": None, "k": 1}], [1, 2], ["trit2", "sign1", "fp32"]
    if args.quick:
        return [conv(128, 32), conv(512, 8), linear], [1, 32], ["trit2", "fp32"]
    return [conv(128, 32), conv(256, 16), conv(512, 8), linear], [1, 32], ["trit2", "sign1", "fp32"]


def section_synapse(rep, timer, budget, ceil, dev, args) -> None:
    layers, batches, schemes = synapse_plan(args)
    for layer in layers:
        for B in batches:
            guarded(rep, budget, "synapse", f"dense {layer['name']} B={B}")(
                lambda: dense_row(rep, timer, ceil, layer, B, dev))
            for scheme in schemes:
                for inp in ("codes", "float"):
                    guarded(rep, budget, "synapse", f"{layer['name']} B={B} {scheme} {inp}")(
                        lambda: synapse_row(rep, timer, ceil, layer, B, scheme, inp, dev))
            if layer["hw"] is None:  # fused rows on the conv shapes only
                continue
            for scheme in (s for s in ("trit2", "sign1") if s in schemes):
                for form in ("step", "seq"):
                    guarded(rep, budget, "synapse", f"fused {form} {layer['name']} B={B} {scheme}")(
                        lambda: fused_row(rep, timer, ceil, layer, B, scheme, form, dev))


# ============================================================================= whole network
def network_spec(args):
    """(ModelConfig, NetSpec for the SpikingJelly peer, batch sizes): VGG-11 (the VGG11 cfg of
    SPEC §11) on CIFAR-size 3×32×32, max pools so 4-bit codes stay integer between layers."""
    import _peers_models as pm

    from hmdf_deploy.models import ModelConfig
    from hmdf_deploy.models.config import VGG11

    cfg, hw, T, big = (list(VGG11), 32, 4, 32) if not args.smoke else ([8, "M", 8], 4, 2, 2)
    config = ModelConfig(arch="vgg", cfg=cfg, in_channels=3, input_size=(hw, hw), T=T,
                         weights="1.5bit", spikes="4bit", pool="max").validate()
    name = f"{'VGG-11' if not args.smoke else 'tiny VGG'} 3×{hw}×{hw}, T={T}, 1.5-bit weights, 4-bit spikes"
    spec = pm.NetSpec(name, tuple(cfg), 3, (hw, hw), T, "max", event=False)
    return config, spec, big


def on_device(model, dev: str):
    """A copy of a DeployModel with every node tensor on `dev`, so `Reference` runs there."""
    nodes = [dataclasses.replace(n, **{k: v.to(dev) for k, v in n.tensors().items()}) for n in model.nodes]
    return dataclasses.replace(model, nodes=nodes)


TRITON_NUMPY, TRITON_DEVICE = "hmdf triton (numpy in/out)", "hmdf triton (device input)"


def network_runners(model, spec, dev: str, rep: Report) -> dict:
    """name → {"run": f(x) → host logits, "step": f(x_t, t), "reset": f(), "feed": numpy|device}.
    Every runner returns its logits on the host, so each call ends synchronised with the GPU."""
    from hmdf_deploy.deploy.reference import Reference
    from hmdf_deploy.runtime.triton_backend import TritonBackend

    loop, scan, launched = TritonBackend(model), TritonBackend(model, scan=True), TritonBackend(model)
    launched.graphs = None  # each step's kernels launched from Python, as before the CUDA-graph replay
    fused, note = fused_counts(model, loop)
    rep.add("notes", note)
    ref = Reference(on_device(model, dev))
    state: dict = {}

    def ref_step(x_t, t):
        nonlocal state
        if t == 0:
            state = {}
        out, state = ref.step(x_t, state, t)
        return out.cpu()

    r = {
        TRITON_NUMPY: {"run": loop.run, "step": loop.step, "reset": loop.reset, "feed": "numpy", "fused": fused},
        TRITON_DEVICE: {"run": loop.run, "step": loop.step, "reset": loop.reset, "feed": "device",
                        "same_as": TRITON_NUMPY, "fused": fused},
        "hmdf triton, steps launched without CUDA graphs (numpy in/out)": {
            "run": launched.run, "step": launched.step, "reset": launched.reset, "feed": "numpy", "fused": fused},
        "hmdf triton scan (device input)": {"run": scan.run, "step": None, "reset": scan.reset, "feed": "device",
                                            "fused": fused},
        "hmdf torch Reference on device (loop)": {"run": lambda x: ref.run(x).cpu(), "step": ref_step,
                                                  "reset": lambda: None, "feed": "device"},
    }
    why = sj_available()
    if why:
        rep.add("notes", f"SpikingJelly network skipped: {why}")
        return r
    import _peers_models as pm

    torch.manual_seed(0)
    multi, single = pm.sj_net(spec, "m"), pm.sj_net(spec, "s")
    for net in (multi, single):
        pm.randomise_bn(net, 7)
        net.to(dev).eval()

    def sj_run(x):
        pm.sj_reset(multi)  # a fresh sample, as TritonBackend.run resets (see README)
        return multi(x).cpu()

    def sj_step(x_t, t):
        return single(x_t).cpu()

    r["SpikingJelly LIF multi-step"] = {"run": sj_run, "step": None, "reset": lambda: None, "feed": "device", "peer": True}
    r["SpikingJelly LIF single-step"] = {"run": None, "step": sj_step, "reset": lambda: pm.sj_reset(single),
                                         "feed": "device", "peer": True}
    return r


def fused_counts(model, backend) -> tuple[dict, str]:
    """How many synapses run in one kernel with their neuron ("k of n"), per form: all of
    `TritonBackend.fused` in a streaming step, none in a sequence (`run` fuses nothing: a fused
    program loops over the steps itself and was slower, RESULTS.md), and a note naming the rest."""
    from hmdf_deploy.deploy.graph import Synapse

    synapses = [n.name for n in model.nodes if isinstance(n, Synapse)]
    rest = [s for s in synapses if s not in backend.fused]
    counts = {"step": f"{len(backend.fused)} of {len(synapses)}", "seq": f"0 of {len(synapses)}"}
    note = (f"network: {counts['step']} synapses run fused with their neuron (`synapse_neuron`, one kernel) in "
            f"the triton backend's streaming `step`, none in `run`; not fused (read by something other than "
            f"one neuron, or the output): {', '.join(rest) or 'none'}")
    return counts, note


def network_checks(rep, model, config, runners, dev) -> None:
    """Logits of every hmdf runner against the CPU `Reference` loop (the project's reference)."""
    import nets

    from hmdf_deploy.deploy.reference import Reference

    g = torch.Generator().manual_seed(3)
    x = nets.inputs(config, False, 4, g)
    rec: dict = {}
    want = Reference(model).run(x, record=rec)
    rate = statistics.mean(float((rec[n.name] != 0).float().mean()) for n in model.neurons)
    scale = float(want.abs().max())
    for name, r in runners.items():
        if r.get("peer") or r.get("same_as"):  # peers compute something else; same_as: same backend object
            continue
        xin = x.numpy() if r["feed"] == "numpy" else x.to(dev)
        forms = [("run", lambda: r["run"](xin))]
        if r["step"] is not None:
            forms.append(("step loop", lambda: step_all(r, xin)))
        for form, fn in forms:
            got = torch.as_tensor(no_tf32(fn)).float().reshape(want.shape)
            pred = float((got.cumsum(0).argmax(-1) != want.cumsum(0).argmax(-1)).float().mean())
            # A 4-bit code flipped at a rounding boundary (a fused multiply-add on the GPU) moves
            # the logits by a quantum; 5 % of the largest logit catches wrong kernels, not flips.
            chk = compare(got, want, 0.05 * scale)
            row = {"backend": name, "form": form, "max_abs": chk["max_abs"], "logit_scale": scale,
                   "pred_differ": pred, "ok": chk["ok"], "spike_rate": rate}
            rep.add("network_checks", row)
            if not chk["ok"]:
                rep.add("failures", {"what": f"network {name} {form}", **row})
            log(f"network check {name} {form}: max |Δ| {chk['max_abs']:.2e} of {scale:.2f}, pred differ {pred:.3f}")


def no_tf32(fn):
    """fn() with cuDNN's TF32 convolutions off, so the torch reference on the GPU computes in
    float32 like the CPU reference it is checked against (timings keep torch's defaults)."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        return fn()
    finally:
        torch.backends.cudnn.allow_tf32 = before


def step_all(r: dict, x) -> np.ndarray:
    """(T, B, K) logits of a stream stepped from a fresh state."""
    r["reset"]()
    return np.stack([np.asarray(r["step"](x[t], t)) for t in range(x.shape[0])])


def time_calls(fn, min_time: float) -> float:
    """Seconds per call, calls repeated until `min_time` has passed."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return dt / n


def time_steps(r: dict, x, min_time: float) -> list[float]:
    """Per-step seconds over whole streams (reset between streams, not timed)."""
    out, t0 = [], time.perf_counter()
    while not out or time.perf_counter() - t0 < min_time:
        r["reset"]()
        for t in range(x.shape[0]):
            s = time.perf_counter()
            r["step"](x[t], t)
            out.append(time.perf_counter() - s)
    return out


def network_config(rep, budget, runners, kind: str, B: int, config, dev, repeats: int, min_time: float) -> None:
    """Interleaved repeats over the runners (order rotated per repeat), median (min–max) over them."""
    import nets

    x = nets.inputs(config, False, B, torch.Generator().manual_seed(5))
    use = {k: r for k, r in runners.items() if r["run" if kind == "seq" else "step"] is not None}
    feeds = {k: (x.numpy() if r["feed"] == "numpy" else x.to(dev)) for k, r in use.items()}
    for k, r in use.items():  # warm-up: compiles each kernel variant a runner uses (layer shape, form)
        r["run"](feeds[k]) if kind == "seq" else step_all(r, feeds[k])
    samples: dict[str, list[float]] = {k: [] for k in use}
    keys = list(use)
    for i in range(repeats):
        if budget.over("network") and i >= 2:
            rep.add("skipped", f"network {kind} B={B}: repeats after {i} (budget)")
            break
        for k in keys[i % len(keys):] + keys[:i % len(keys)]:
            if kind == "seq":
                samples[k].append(time_calls(lambda: use[k]["run"](feeds[k]), min_time))
            else:
                samples[k].append(statistics.median(time_steps(use[k], feeds[k], min_time)))
    for k, s in samples.items():
        st = _common.stats(s)
        row = {"kind": kind, "B": B, "T": config.T, "backend": k, "per_call_s": st,
               "fused": (use[k].get("fused") or {}).get(kind)}
        if kind == "seq":
            row["samples_per_s"] = B / st["median"]
        rep.add("network", row)
        log(f"network {kind} B={B:2} {k}: {st['median'] * 1e3:.3f} ms")


def section_network(rep, timer, budget, ceil, dev, args) -> None:
    import nets

    config, spec, big = network_spec(args)
    t0 = time.perf_counter()
    model = nets.make_deploy(config, event=False, seed=args.seed)
    rep.add("notes", f"network: {spec.name}; built and folded in {time.perf_counter() - t0:.1f} s on the CPU")
    runners = network_runners(model, spec, dev, rep)
    guarded(rep, budget, "network", "checks")(lambda: network_checks(rep, model, config, runners, dev))
    repeats = 2 if args.smoke else 3 if args.quick else 5
    min_time = 0.0 if args.smoke else 0.05 if args.quick else 0.1
    for kind, B in (("seq", big), ("step", 1), ("seq", 1)):
        guarded(rep, budget, "network", f"{kind} B={B}")(
            lambda: network_config(rep, budget, runners, kind, B, config, dev, repeats, min_time))
    if any(r.get("peer") for r in runners.values()):
        rep.data["meta"]["sj_network_impl"] = sj_impl(dev)
        rep.flush()


# ================================================================================ rendering
def us(t: dict | None) -> str:
    if not t:
        return "—"
    mark = " (do_bench)" if t.get("clock") == "do_bench" else ""  # the device clock failed for this row
    return f"{t['median'] * US:.1f} ({t['p10'] * US:.1f}–{t['p90'] * US:.1f}){mark}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def render(d: dict) -> str:
    m = d["meta"]
    smoke = m.get("smoke")
    warn = ("**SMOKE RUN on the CPU in Triton's interpreter: every time, rate and ratio below is "
            "meaningless; only the checks and that each path runs mean anything.**\n\n" if smoke and m.get("device") != "cuda"
            else "**SMOKE RUN (tiny shapes): timings say little.**\n\n" if smoke else "")
    lines = [f"# Triton kernels on {m.get('gpu', '?')}", "", warn + meta_line(m), ""]
    lines += render_ceilings(d) + render_neuron(d) + render_synapse(d) + render_fused(d) + render_network(d)
    lines += render_tail(d)
    return "\n".join(lines)


def meta_line(m: dict) -> str:
    keys = ["date", "gpu", "capability", "sms", "driver", "cuda_runtime", "torch", "triton", "python",
            "spikingjelly", "sj_network_impl", "commit", "mode", "cudnn_allow_tf32", "matmul_allow_tf32"]
    return " · ".join(f"{k} {m[k]}" for k in keys if k in m)


def render_ceilings(d: dict) -> list[str]:
    c = d["ceilings"]
    rows = []
    if "copy" in c:
        rows.append(["device copy (read + write)", _common.fmt_bytes(c["copy"]["bytes_moved"]), us(c["copy"]["time"]),
                     f"{c['copy']['GBps']:.0f} GB/s"])
    for k in ("bf16", "int8", "fp32"):
        if k in c:
            rows.append([f"{k} matmul", f"{c[k]['n']}³", us(c[k]["time"]),
                         f"{c[k]['TFLOPs']:.1f} {'TOP/s' if k == 'int8' else 'TFLOP/s'}"])
    return ["## Ceilings (measured here)", "", _common.md_table(["what", "size", "µs median (p10–p90)", "rate"], rows), ""]


def render_neuron(d: dict) -> list[str]:
    rows = [[r["form"], r["out"], r["B"], "×".join(map(str, r["shape"])), r["T"], check_cell(r["check"]), us(r["time"]),
             f"{r['bytes'] / 1e6:.3g}", f"{r['GBps']:.0f}", pct(r["of_floor"])] for r in d["neuron"]]
    out = ["## Neuron kernels", "",
           "step = `neuron_steps` on one step with the membrane read and written; loop = `neuron_steps` over T "
           "steps in one launch; scan = `neuron_scan`. codes: HM-DF, 4-bit uint8 spikes; float: HM-DF, float32 "
           "spikes; lif: LIF, float32 spikes. Check: max |Δ| against `Reference` (share of elements past "
           "tolerance).", "",
           _common.md_table(["form", "out", "B", "C×H×W", "T", "check", "µs (p10–p90)", "MB moved", "GB/s",
                             "of floor"], rows), ""]
    sj = d["sj_neuron"]
    if sj:
        mine = {(r["B"], tuple(r["shape"]), r["T"]): r for r in d["neuron"] if r["form"] == "loop" and r["out"] == "lif"}
        rows = []
        for r in sj:
            h = mine.get((r["B"], tuple(r["shape"]), r["T"]))
            ratio = f"{r['time']['median'] / h['time']['median']:.2f}×" if h else "—"
            rows.append([r["B"], "×".join(map(str, r["shape"])), r["T"], us(h["time"]) if h else "—", us(r["time"]),
                         f"{r['GBps']:.0f}", ratio, r["implementation"]])
        out += ["SpikingJelly `lif_multi_step` (LIF τ=2, float32 in and out; it also stores the charged membrane "
                "for backward) against hmdf's loop kernel in LIF mode on the same shape; GB/s over the task's "
                "floor bytes (input, spikes, membrane in/out).", "",
                _common.md_table(["B", "C×H×W", "T", "hmdf loop lif µs", "SpikingJelly µs", "SJ GB/s",
                                  "SJ ÷ hmdf", "SJ implementation"], rows), ""]
    return out


def render_synapse(d: dict) -> list[str]:
    dense = {(r["layer"], r["B"]): r for r in d["dense"]}
    rows = []
    for r in d["synapse"]:
        b = dense.get((r["layer"], r["B"]))
        ratio = f"{r['time']['median'] / b['time']['median']:.2f}×" if b else "—"
        rows.append([r["layer"], r["B"], r["scheme"], r["input"] + (" (int8 dot)" if r["integer_dot"] else ""), check_cell(r["check"]),
                     us(r["time"]), f"{r['GBps']:.0f}", f"{r['TFLOPs']:.2f}", pct(r["of_floor"]),
                     us(b["time"]) if b else "—", ratio])
    drows = [[r["layer"], r["B"], r["dtype"], us(r["time"]), f"{r['GBps']:.0f}", f"{r['TFLOPs']:.1f}",
              pct(r["of_floor"])] for r in d["dense"]]
    return ["## Packed synapse (implicit GEMM) against a dense GEMM", "",
            "Floor: int8 matmul rate for the int8 dot (code inputs × code weights), fp32 rate otherwise "
            "(the kernel's float dot is IEEE fp32). Dense: the same layer in bf16 (float32 in smoke runs on "
            "a CPU); packed ÷ dense < 1: the packed kernel is faster.", "",
            _common.md_table(["layer", "B", "weights", "input", "check", "µs (p10–p90)", "GB/s", "TFLOP/s",
                              "of floor", "dense µs", "packed ÷ dense"], rows), "",
            "Dense baseline (cuDNN / cuBLAS):", "",
            _common.md_table(["layer", "B", "dtype", "µs (p10–p90)", "GB/s", "TFLOP/s", "of floor"], drows), ""]


def render_fused(d: dict) -> list[str]:
    if not d["fused"]:
        return []
    rows = [[r["layer"], r["B"], r["scheme"], r["form"], r["T"], check_cell(r["check"]), pct(r["fire"]),
             us(r["two"]["time"]), us(r["fused"]["time"]), f"{r['two_over_fused']:.2f}×",
             f"{r['two']['bytes'] / 1e6:.3g}", f"{r['fused']['bytes'] / 1e6:.3g}",
             pct(r["two"]["of_floor"]), pct(r["fused"]["of_floor"])] for r in d["fused"]]
    return ["## Synapse + neuron in one kernel (`synapse_neuron`)", "",
            "Code inputs, HM-DF neuron with 4-bit codes out. two = `synapse` then `neuron_steps` (two launches, "
            "a float32 current written and read back); fused = `synapse_neuron` (one launch, the current in "
            "registers). step: one streaming step (T = 1, membrane in and out); seq: T steps from v = 0 in one "
            "call, no state kept (two: the synapse over T·B rows, then `neuron_steps` over T). Check: fused "
            "spikes and membrane bit-equal to two's (torch.equal). fire: share of nonzero codes. Bytes and "
            "floor per path (int8 matmul rate); two ÷ fused > 1: the fused kernel is faster.", "",
            _common.md_table(["layer", "B", "weights", "form", "T", "check", "fire", "two µs (p10–p90)",
                              "fused µs (p10–p90)", "two ÷ fused", "MB two", "MB fused", "two of floor",
                              "fused of floor"], rows), ""]


def render_network(d: dict) -> list[str]:
    if not d["network_checks"] and not d["network"]:
        return []
    notes = [n for n in d["notes"] if n.startswith("network")]
    crow = [[r["backend"], r["form"], f"{r['max_abs']:.2e}", f"{r['logit_scale']:.2f}", f"{100 * r['pred_differ']:.1f}%",
             "ok" if r["ok"] else "FAIL (> 5% of max |logit|)"] for r in d["network_checks"]]
    rate = next((r["spike_rate"] for r in d["network_checks"] if r.get("spike_rate") is not None), None)
    out = ["## Whole network", "", *[f"- {n}" for n in notes], "",
           f"Agreement with the CPU `Reference` loop (batch 4, T steps; pred. differ: share of (t, sample) whose "
           f"argmax of the running logit sum differs){'' if rate is None else f'; spike rate {100 * rate:.0f}%'}:", "",
           _common.md_table(["backend", "form", "max |Δ logits|", "max |logit|", "pred. differ", "check"], crow), ""]
    base = {(r["kind"], r["B"]): r["per_call_s"]["median"] for r in d["network"] if r["backend"] == TRITON_DEVICE}
    for kind, title in (("seq", "Whole sequences: time per call, samples/s"), ("step", "Streaming: time per step, batch 1")):
        rows = []
        for r in d["network"]:
            if r["kind"] == kind:
                st, b = r["per_call_s"], base.get((kind, r["B"]))
                rows.append([r["backend"], r["B"], r["T"], f"{st['median'] * 1e3:.3f} ({st['min'] * 1e3:.3f}–{st['max'] * 1e3:.3f})",
                             f"{r['samples_per_s']:.0f}" if kind == "seq" else "—",
                             f"{st['median'] / b:.2f}×" if b else "—", r.get("fused") or "—", st["n"]])
        if rows:
            out += [f"{title}; median (min–max) over n interleaved repeats; ÷ triton = this time ÷ the time of "
                    f"{TRITON_DEVICE!r} in the same configuration; fused synapses: how many of the model's "
                    f"synapses that backend runs in one kernel with their neuron:", "",
                    _common.md_table(["backend", "B", "T", "ms per call", "samples/s", "÷ triton", "fused synapses",
                                      "n"], rows), ""]
    return out


def render_tail(d: dict) -> list[str]:
    out = []
    if d["failures"]:
        out += ["## CHECK FAILURES", "", *[f"- {f['what']}: max |Δ| {f.get('max_abs', float('nan')):.3g}" for f in d["failures"]], ""]
    if d["errors"]:
        out += ["## Errors", "", *[f"- {e['section']}: {e['what']}: {e['error'].splitlines()[0] if e['error'] else ''}" for e in d["errors"]], ""]
    if d["skipped"]:
        out += ["## Skipped (time budget)", "", *[f"- {s}" for s in d["skipped"]], ""]
    other = [n for n in d["notes"] if not n.startswith("network")]
    if other:
        out += ["## Notes", "", *[f"- {n}" for n in other], ""]
    return out


# ====================================================================================== main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dev = choose_device(args)
    if dev is None:
        print("no CUDA GPU here: run with --smoke (kernels in Triton's interpreter, tiny shapes)", file=sys.stderr)
        return 2
    os.environ.setdefault("SJ_LIF_CUDA_IMPLEMENTATION", "triton")  # read when SpikingJelly's LIF ops load
    meta = {**_common.machine(), **versions(dev), "smoke": args.smoke,
            "mode": "smoke" if args.smoke else "quick" if args.quick else "full", "budget_s": args.budget}
    rep = Report(args.out, meta)
    log(f"{meta['gpu']} · torch {meta['torch']} · triton {meta['triton']} · spikingjelly {meta['spikingjelly']} → {args.out}")
    timer, budget = Timer(dev, args.quick, args.smoke), Budget(args.budget)
    ceil: dict = {}
    with torch.no_grad():
        for name, fn in (("ceilings", lambda: ceil.update(section_ceilings(rep, timer, budget, dev, args.smoke))),
                         ("neuron", lambda: section_neuron(rep, timer, budget, ceil, dev, args)),
                         ("synapse", lambda: section_synapse(rep, timer, budget, ceil, dev, args)),
                         ("network", lambda: section_network(rep, timer, budget, ceil, dev, args))):
            if name in args.sections:
                budget.begin(name)
                log(f"== {name} (at {budget.elapsed():.0f} s of {args.budget:.0f})")
                guarded(rep, budget, name, "section")(fn)
    rep.data["meta"]["seconds"] = round(budget.elapsed(), 1)
    rep.flush()
    print(render(rep.data))
    fails, errors = rep.data["failures"], rep.data["errors"]
    print(f"\n{len(fails)} check failure(s), {len(errors)} error(s), {len(rep.data['skipped'])} skipped; "
          f"{budget.elapsed():.0f} s; results in {args.out}/triton_kernels.{{md,json}}")
    if fails:
        print("CORRECTNESS CHECKS FAILED: " + "; ".join(f["what"] for f in fails), file=sys.stderr)
    return 1 if fails or errors else 0


if __name__ == "__main__":
    sys.exit(main())
