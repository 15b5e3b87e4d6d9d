"""Thread waiting on a shared machine: training, torch-backend and onnxruntime-backend stepping with
the runtimes' default threads (they spin while they wait for work), with OMP_WAIT_POLICY=PASSIVE
(they sleep: what `hmdf` sets unless the user set it; hmdf's onnxruntime sessions follow it) and
with one thread; on an otherwise idle machine (`--load none`), beside a busy Python loop (`python`),
and beside another torch process with its default threads (`torch`: a second training, say).

OpenMP reads its environment once, when torch loads it, so every measurement runs in a fresh
subprocess. Each repeat runs every variant, in a rotated order; medians, min–max, and the ratio to
PASSIVE per repeat (paired).

    python benchmarks/threads.py --load none python torch --repeats 3 --json threads.json

Workloads: `train`, 8 online training batches (64 digits, the digits recipe with 1.5-bit weights
and 4-bit spikes, T = 4) after one warm-up batch; `step`, 40 torch-backend steps at batch 1 of a
folded VGG 32,64,M,128,M on 3×32×32 (1.5-bit, 4-bit spikes) after 5 warm-up steps; `ort-step`,
the same in onnxruntime (`ort_session`; one intra-op thread for the OMP_NUM_THREADS=1 variant);
`ort-tiny`, 400 onnxruntime steps of the neuro-digits recipe's network (2×16×16, 16,M,32,M,64,M).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_json  # noqa: E402

VARIANTS = {  # environment changes; None removes the variable
    "torch default": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None},
    "OMP_NUM_THREADS=1": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1"},
}
WORKLOADS = ("train", "step", "ort-step", "ort-tiny")


def job(workload: str) -> float:
    """Seconds of the timed part of `workload`, in this process."""
    import torch

    from hmdf_deploy.models import ModelConfig, build_model

    torch.manual_seed(0)
    if workload == "train":
        from dataclasses import replace

        from hmdf_deploy.data import load_dataset
        from hmdf_deploy.training import recipe, train_batch

        mc, _ = recipe("digits", weights="1.5bit", spikes="4bit")
        train, _, info = load_dataset("digits", T=mc.T)
        net = build_model(replace(mc, in_channels=1, input_size=(8, 8)).validate())
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        batches = [(train.x[i:i + 64], train.y[i:i + 64]) for i in range(0, 9 * 64, 64)]
        run = [lambda x=x, y=y: train_batch(net, opt, x, y, T=mc.T, static=True, mode="online") for x, y in batches]
        warm, timed = run[:1], run[1:]
    else:
        from hmdf_deploy.deploy import fold
        from hmdf_deploy.runtime import Engine

        if workload == "ort-tiny":
            cfg = ModelConfig(arch="vgg", cfg=[16, "M", 32, "M", 64, "M"], in_channels=2, input_size=(16, 16), T=8,
                              weights="1.5bit", spikes="4bit", quantize_stem=True).validate()
            steps = 400
        else:
            cfg = ModelConfig(arch="vgg", cfg=[32, 64, "M", 128, "M"], in_channels=3, input_size=(32, 32), T=4,
                              weights="1.5bit", spikes="4bit").validate()
            steps = 40
        engine = Engine(fold(build_model(cfg).eval(), cfg, event=workload == "ort-tiny"),
                        "torch" if workload == "step" else "onnxruntime", "continuous")
        if workload != "step" and os.environ.get("OMP_NUM_THREADS") == "1":  # onnxruntime ignores it
            _one_intra_op_thread(engine.backend)
        x = torch.rand(1, *cfg_shape(cfg)).numpy()
        run = [lambda: engine.step(x)] * (steps + 5)
        warm, timed = run[:5], run[5:]
    for f in warm:
        f()
    start = time.perf_counter()
    for f in timed:
        f()
    return time.perf_counter() - start


def cfg_shape(cfg) -> tuple[int, int, int]:
    return (cfg.in_channels, *cfg.input_size)


def _one_intra_op_thread(backend) -> None:
    import onnxruntime as ort

    from hmdf_deploy.exporters.onnx import EXACT_DISABLED_OPTIMIZERS

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    backend.session = ort.InferenceSession(backend.session._model_bytes, options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=EXACT_DISABLED_OPTIMIZERS)


def measure(workload: str, variant: str) -> float:
    env = dict(os.environ)
    for key, value in VARIANTS[variant].items():
        env.pop(key, None) if value is None else env.__setitem__(key, value)
    out = subprocess.run([sys.executable, __file__, "--job", workload], env=env, capture_output=True, text=True,
                         check=True).stdout
    return float(out.strip().splitlines()[-1])


LOADS = {  # what runs beside the measured process
    "none": None,
    "python": "while True: pass",
    "torch": "import torch\nx = torch.rand(256, 256)\nwhile True: x = torch.tanh(x @ x)",
}


def burner(load: str) -> subprocess.Popen | None:
    code = LOADS[load]
    return None if code is None else subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", nargs="+", default=list(LOADS), choices=LOADS, help="what runs beside the job")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--json", type=Path)
    p.add_argument("--job", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        print(job(args.job))
        return
    record = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "results": []}
    names = list(VARIANTS)
    print("| workload | beside it | variant | seconds, median (min–max) | × PASSIVE (median of paired ratios) |")
    print("|---|---|---|---|---|")
    for k in args.load:
        busy = burner(k)
        try:
            for workload in args.workloads:
                times = {v: [] for v in names}
                for r in range(args.repeats):
                    for v in names[r % len(names):] + names[:r % len(names)]:
                        times[v].append(measure(workload, v))
                        print(f"  {workload} load={k} {v}: {times[v][-1]:.2f} s", file=sys.stderr)
                base = times["OMP_WAIT_POLICY=PASSIVE"]
                for v in names:
                    ratio = statistics.median(a / b for a, b in zip(times[v], base))
                    record["results"].append({"workload": workload, "load": k, "variant": v, "seconds": times[v],
                                              "ratio_to_passive": ratio})
                    print(f"| {workload} | {k} | {v} | {statistics.median(times[v]):.2f} "
                          f"({min(times[v]):.2f}–{max(times[v]):.2f}) | {ratio:.2f} |")
        finally:
            if busy is not None:
                busy.kill()
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
