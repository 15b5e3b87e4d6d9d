"""Peak training memory of one batch against T: online (per step) vs STBP (SPEC §4.1, §4.3).

Goal (from the issue): online at T = 16 uses at most 1.15× the memory of online at T = 2, while
STBP grows with T.

Three independent measurements of one training batch (the model, optimizer state and data exist
before it; one warm-up batch of the same config has already run, so SGD's momentum buffers are
allocated):

* **allocator peak** — torch's CPU allocator, recorded by `torch.profiler.profile(profile_memory=
  True)`: every allocation and free of a tensor is an event carrying the running total of bytes
  allocated since the profiler started; the peak of that total over the batch is the most memory
  the batch held at once beyond what was alive before it (activations, saved tensors, gradients,
  temporaries). This is a real peak, not an estimate. (The running total is process-wide and
  drifts from one profiler session to the next, so each batch is measured from its own start.)
* **saved-tensor peak** — a `torch.autograd.graph.saved_tensors_hooks` counter: the bytes of the
  tensors autograd keeps for the backward pass, alive at the same moment (storages counted once,
  parameters excluded). This is the activation memory proper, the part that depends on the
  training method. (The input batch is excluded too: it exists before the batch.)
* **RSS peak** (`--rss`, off by default in `--quick`) — each config in a fresh subprocess with
  glibc's mmap threshold pinned at 64 KiB (so freed tensors go back to the OS), peak RSS (VmHWM,
  reset through /proc/self/clear_refs after the warm-up) minus RSS right before the batch.

Static images are repeated over the T steps (direct encoding), event-shaped inputs get one random
frame per step; both are random tensors from a fixed seed (memory does not depend on the values
beyond the spike pattern, and the seed fixes that). Single-threaded by default (see _common.py).

    python benchmarks/train_memory.py                     # 1×8×8 and 2×16×16, T = 2 4 8 16
    python benchmarks/train_memory.py --quick             # 1×8×8 only, no RSS subprocesses
    python benchmarks/train_memory.py --rss --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from hmdf_deploy.models import ModelConfig, build_model  # noqa: E402
from hmdf_deploy.models.config import parse_vgg_cfg  # noqa: E402
from hmdf_deploy.training import train_batch  # noqa: E402

MODES = ("online", "online-accumulate", "stbp")


# ------------------------------------------------------------------------------------ setup
def make(shape: tuple[int, int, int], static: bool, T: int, cfg: str, batch: int, weights: str,
         spikes: str, seed: int = 0):
    torch.manual_seed(seed)
    c, h, w = shape
    config = ModelConfig(arch="vgg", cfg=parse_vgg_cfg(cfg), in_channels=c, input_size=(h, w),
                         num_classes=10, T=T, weights=weights, spikes=spikes,
                         quantize_stem=not static).validate()
    net = build_model(config).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand((batch, c, h, w) if static else (batch, T, c, h, w), generator=gen)
    if not static:
        x = (x < 0.2).float() * 2  # sparse event counts
    y = torch.randint(0, 10, (batch,), generator=gen)
    return net, opt, x, y


def one_batch(net, opt, x, y, T, static, mode):
    return train_batch(net, opt, x, y, T=T, static=static, mode=mode)


# ---------------------------------------------------------------------------- measurements
def allocator_peak(net, opt, x, y, T, static, mode) -> int:
    """Peak of torch's CPU 'Total Allocated' during one batch, relative to its start.

    Two profiled batches; the second is reported. In the first, the frees of blocks allocated
    before profiling began (the previous batch's neuron states) are not reported by the profiler,
    so its peak would overcount by their size; in the second they are.
    """
    for _ in range(2):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            one_batch(net, opt, x, y, T, static, mode)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    mem = [e["args"] for e in events
           if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    if not mem:
        return 0
    # The running total is process-wide and drifts between profiler sessions (blocks allocated
    # while profiling but freed outside it are never subtracted), so measure from this session's
    # own starting level: the total just before its first event.
    start = mem[0]["Total Allocated"] - mem[0]["Bytes"]
    return max(0, max(a["Total Allocated"] for a in mem) - start)


class SavedTensorCounter:
    """Bytes of autograd-saved tensors alive at once (each storage counted once; parameters excluded)."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.live: dict[int, list[int]] = {}  # storage ptr → [handles, bytes]
        self.current = self.peak = 0

    class _Handle:
        __slots__ = ("counter", "key", "tensor")

        def __init__(self, counter, key, tensor):
            self.counter, self.key, self.tensor = counter, key, tensor

        def __del__(self):
            self.counter._release(self.key)

    def pack(self, t: torch.Tensor):
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in self.exclude or st.nbytes() == 0:
            return t
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [1, st.nbytes()]
            self.current += st.nbytes()
            self.peak = max(self.peak, self.current)
        else:
            entry[0] += 1
        return self._Handle(self, key, t)

    @staticmethod
    def unpack(h):
        return h.tensor if isinstance(h, SavedTensorCounter._Handle) else h

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[key]


def saved_peak(net, opt, x, y, T, static, mode) -> int:
    # Parameters and the input batch exist before the batch; a per-step frame x[:, t] is a view of
    # the whole (B, T, ...) input, whose storage would otherwise be counted as T frames.
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    counter = SavedTensorCounter(exclude)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        one_batch(net, opt, x, y, T, static, mode)
    return counter.peak


def _rss_child(spec: dict) -> dict:
    """Run in a fresh process: warm-up batch, reset VmHWM, measure one batch's peak RSS delta."""
    _common.setup(spec["threads"])
    net, opt, x, y = make(tuple(spec["shape"]), spec["static"], spec["T"], spec["cfg"], spec["batch"],
                          spec["weights"], spec["spikes"])
    one_batch(net, opt, x, y, spec["T"], spec["static"], spec["mode"])  # warm-up

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    before = status("VmRSS")
    one_batch(net, opt, x, y, spec["T"], spec["static"], spec["mode"])
    return {"rss_before": before, "rss_peak": status("VmHWM"), "rss_delta": status("VmHWM") - before}


def rss_peak(spec: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               OMP_NUM_THREADS=str(spec["threads"]))
    out = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="32,64,M,128,M", help="VGG cfg")
    ap.add_argument("--T", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--inputs", nargs="+", default=["static:1x8x8", "event:2x16x16"],
                    help="static:CxHxW (image repeated) or event:CxHxW (one frame per step)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--weights", default="fp32", choices=["fp32", "1bit", "1.5bit"])
    ap.add_argument("--spikes", default="float", choices=["float", "4bit"])
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS in fresh subprocesses")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="1×8×8 input only, no RSS")
    ap.add_argument("--json", metavar="OUT")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(_rss_child(json.loads(args._child))))
        return 0
    if args.quick:
        args.inputs, args.rss = args.inputs[:1], False

    _common.setup(args.threads)
    info = _common.machine()
    started = time.perf_counter()
    results = []
    for spec_in in args.inputs:
        kind, dims = spec_in.split(":")
        shape = tuple(int(v) for v in dims.lower().split("x"))
        static = kind == "static"
        for T in args.T:
            for mode in args.modes:
                net, opt, x, y = make(shape, static, T, args.cfg, args.batch, args.weights, args.spikes)
                one_batch(net, opt, x, y, T, static, mode)  # warm-up: optimizer state exists
                row = {"input": spec_in, "T": T, "mode": mode,
                       "allocator_peak": allocator_peak(net, opt, x, y, T, static, mode),
                       "saved_peak": saved_peak(net, opt, x, y, T, static, mode)}
                if args.rss:
                    row.update(rss_peak({"shape": shape, "static": static, "T": T, "cfg": args.cfg,
                                         "batch": args.batch, "weights": args.weights,
                                         "spikes": args.spikes, "mode": mode, "threads": args.threads}))
                results.append(row)
                print(f"  {spec_in} T={T} {mode}: alloc {_common.fmt_bytes(row['allocator_peak'])}, "
                      f"saved {_common.fmt_bytes(row['saved_peak'])}"
                      + (f", rss {_common.fmt_bytes(row['rss_delta'])}" if args.rss else ""), file=sys.stderr)

    # ratios to the same input+mode at the smallest T
    base = {}
    for r in results:
        key = (r["input"], r["mode"])
        base.setdefault(key, r)
        b = base[key]
        for k in ("allocator_peak", "saved_peak", "rss_delta"):
            if k in r:
                r[k + "_ratio"] = r[k] / b[k] if b[k] else float("nan")

    print(f"\nPeak memory of one training batch, VGG cfg {args.cfg}, batch {args.batch}, weights "
          f"{args.weights}, spikes {args.spikes}; ratio = against the same mode at T = {min(args.T)}.")
    print(f"Machine: {_common.machine_line(info)}\n")
    headers = ["input", "T", "mode", "allocator peak", "× T=min", "saved tensors", "× T=min"]
    if args.rss:
        headers += ["RSS Δ peak", "× T=min"]
    rows = []
    for r in results:
        row = [r["input"], r["T"], r["mode"], _common.fmt_bytes(r["allocator_peak"]),
               f"{r['allocator_peak_ratio']:.2f}", _common.fmt_bytes(r["saved_peak"]),
               f"{r['saved_peak_ratio']:.2f}"]
        if args.rss:
            row += [_common.fmt_bytes(r["rss_delta"]), f"{r['rss_delta_ratio']:.2f}"]
        rows.append(row)
    print(_common.md_table(headers, rows))

    # the goal
    print()
    tmax, tmin = max(args.T), min(args.T)
    goal = []
    for spec_in in args.inputs:
        get = {(r["mode"], r["T"]): r for r in results if r["input"] == spec_in}
        if ("online", tmax) in get and ("online", tmin) in get:
            on = get[("online", tmax)]["allocator_peak"] / get[("online", tmin)]["allocator_peak"]
            line = f"{spec_in}: online T={tmax} / T={tmin} = {on:.3f}× (allocator peak; goal ≤ 1.15: {'met' if on <= 1.15 else 'NOT met'})"
            if ("stbp", tmax) in get:
                st = get[("stbp", tmax)]["allocator_peak"] / get[("stbp", tmin)]["allocator_peak"]
                vs = get[("stbp", tmax)]["allocator_peak"] / get[("online", tmax)]["allocator_peak"]
                line += f"; STBP T={tmax} / T={tmin} = {st:.2f}×; STBP / online at T={tmax} = {vs:.2f}×"
            print(line)
            goal.append(line)
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.1f} s)")
    _common.write_json(args.json, {"args": vars(args), "machine": info, "results": results,
                                   "goal": goal, "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
