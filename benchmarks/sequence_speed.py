"""Speed of the three exact inference forms of the reference executor (SPEC §7), and how far apart their outputs are.

* `run` — the parallel form: every stateless node (conv, linear, BN affine, pool) runs once on a
  T·B batch, and the HM-DF recurrence is an associative prefix scan (⌈log2 T⌉ rounds);
* `run(scan=False)` — time-batched synapses as above, the neuron recurrence as a loop over t;
* `step` loop — the streaming form: `Reference.step(x_t, state, t)` called T times.

Models (random weights from a fixed seed, folded with `hmdf_deploy.deploy.fold`, one per T):
a small VGG (cfg 32,64,M,128,M on 1×8×8 static images, the digits model) and a VGG-SNN-like
network on 2×48×48 event frames at reduced width (the VGG-SNN cfg of SPEC §11 with every width
divided by `--snn-div`, default 8: 8,16,M,32,32,M,64,64,M,64,64,M). Inputs are random (event
frames: sparse 0/1 counts); BN statistics are randomised so that about 35-40 % of the neurons
fire. Each timing is the median (min–max) of `--repeats` samples (fewer, at least 2, where one
round of the three forms would overrun `--budget` seconds), the forms interleaved within every
repeat; a sample loops the call until it has run ≥ `--min-time` s and reports the time per call. Single-threaded by default (see _common.py). The speed-up columns are
(step-loop time) / (form time).

`max |Δ|` compares logits (T, B, classes) against the step loop; the forms round differently
(SPEC §7: the scan composes the maps in another order), and with 4-bit spikes a rounding-boundary
flip of one code moves the logits by a quantum, so a non-zero value is expected there. The
prediction column gives the share of (t, sample) whose argmax of Σ_{τ≤t} logits differs.

    python benchmarks/sequence_speed.py                  # T = 4 10 32, batch 1 and 32
    python benchmarks/sequence_speed.py --quick          # 3 repeats, shorter samples
    python benchmarks/sequence_speed.py --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402

from hmdf_deploy.deploy import Reference, fold  # noqa: E402
from hmdf_deploy.models import ModelConfig, build_model  # noqa: E402
from hmdf_deploy.models.config import VGG11, parse_vgg_cfg  # noqa: E402

FORMS = ("run (scan)", "run (loop)", "step loop")


def models(div: int) -> dict:
    snn = [c if isinstance(c, str) else max(1, c // div) for c in VGG11]
    return {
        "VGG small 1×8×8": (dict(arch="vgg", cfg=parse_vgg_cfg("32,64,M,128,M"), in_channels=1, input_size=(8, 8)), False),
        f"VGG-SNN/{div} 2×48×48": (dict(arch="vgg", cfg=snn, in_channels=2, input_size=(48, 48), quantize_stem=True), True),
    }


def build(kw: dict, event: bool, T: int, weights: str, spikes: str, seed: int):
    torch.manual_seed(seed)
    config = ModelConfig(num_classes=10, T=T, weights=weights, spikes=spikes, **kw).validate()
    net = build_model(config).eval()
    # Give the BN layers non-trivial statistics so that the folded affines are not identities and
    # a good share of neurons fire (with init statistics a random net is nearly silent: ~3 %).
    gen = torch.Generator().manual_seed(seed + 7)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.02, 0.1, generator=gen)  # ≈ 35-40 % of neurons fire
    return Reference(fold(net, config, event=event)), config


def inputs(config: ModelConfig, event: bool, B: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    c, (h, w), T = config.in_channels, config.input_size, config.T
    if event:
        return (torch.rand(T, B, c, h, w, generator=gen) < 0.15).float()
    return torch.rand(1, B, c, h, w, generator=gen).expand(T, B, c, h, w).contiguous()


def ms(st: dict) -> str:
    return f"{1e3 * st['median']:.2f} ({1e3 * st['min']:.2f}–{1e3 * st['max']:.2f}) ms"


def step_loop(ref: Reference, x: torch.Tensor) -> torch.Tensor:
    state, outs = ref.initial_state(), []
    for t in range(x.shape[0]):
        o, state = ref.step(x[t], state, t)
        outs.append(o)
    return torch.stack(outs)


def call(form: str, ref: Reference, x: torch.Tensor) -> torch.Tensor:
    if form == "run (scan)":
        return ref.run(x, scan=True)
    if form == "run (loop)":
        return ref.run(x, scan=False)
    return step_loop(ref, x)


def sample(form: str, ref, x, min_time: float) -> float:
    n, start = 0, time.perf_counter()
    while True:
        call(form, ref, x)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / n


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[4, 10, 32])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--weights", default="1.5bit", choices=["fp32", "1bit", "1.5bit"])
    ap.add_argument("--spikes", default="4bit", choices=["float", "4bit"])
    ap.add_argument("--snn-div", type=int, default=8, help="divide the VGG-SNN widths by this")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timing sample")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="seconds per (model, T, B): fewer repeats (at least 2) for slow configs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="3 repeats of ≥ 0.05 s")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.min_time, args.budget = min(args.repeats, 3), min(args.min_time, 0.05), min(args.budget, 20.0)
    _common.setup(args.threads)
    info = _common.machine()
    started = time.perf_counter()

    results = []
    for name, (kw, event) in models(args.snn_div).items():
        for T in args.T:
            ref, config = build(kw, event, T, args.weights, args.spikes, args.seed)
            for B in args.batch:
                x = inputs(config, event, B, args.seed)
                t0 = time.perf_counter()
                outs = {f: call(f, ref, x) for f in FORMS}  # also a warm-up
                once = time.perf_counter() - t0
                repeats = max(2, min(args.repeats, int(args.budget / max(once, 1e-9))))
                want = outs["step loop"]
                rec: dict = {}
                ref.run(x, record=rec)
                spiking = [v for k, v in rec.items() if k.endswith(".act")]
                rate = sum(float((v != 0).float().mean()) for v in spiking) / max(1, len(spiking))
                times = {f: [] for f in FORMS}
                for rep in range(repeats):
                    k = rep % len(FORMS)
                    for f in FORMS[k:] + FORMS[:k]:
                        times[f].append(sample(f, ref, x, args.min_time))
                row = {"model": name, "T": T, "B": B, "spike_rate": rate, "repeats": repeats,
                       "times": {f: _common.stats(v) for f, v in times.items()}}
                base = statistics.median(times["step loop"])
                row["speedup_vs_step"] = {f: base / statistics.median(v) for f, v in times.items()}
                row["scan_vs_loop"] = statistics.median(times["run (loop)"]) / statistics.median(times["run (scan)"])
                row["max_abs_diff"] = {f: float((outs[f] - want).abs().max()) for f in FORMS[:2]}
                row["logit_scale"] = float(want.abs().max())
                row["pred_disagree"] = {f: float((outs[f].cumsum(0).argmax(-1) != want.cumsum(0).argmax(-1)).float().mean())
                                        for f in FORMS[:2]}
                results.append(row)
                print(f"  {name} T={T} B={B}: " + ", ".join(
                    f"{f} {1e3 * statistics.median(v):.2f} ms" for f, v in times.items()), file=sys.stderr)

    print(f"\nReference executor, weights {args.weights}, spikes {args.spikes}; time per call, median "
          f"(min–max) of up to {args.repeats} interleaved samples (column n); speed-up = step-loop time / form time.")
    print(f"Machine: {_common.machine_line(info)}\n")
    rows = []
    for r in results:
        t = r["times"]
        rows.append([r["model"], r["T"], r["B"], r["repeats"],
                     ms(t["run (scan)"]),
                     ms(t["run (loop)"]),
                     ms(t["step loop"]),
                     f"{r['speedup_vs_step']['run (scan)']:.2f}×", f"{r['speedup_vs_step']['run (loop)']:.2f}×",
                     f"{r['scan_vs_loop']:.2f}×",
                     f"{r['max_abs_diff']['run (scan)']:.1e} / {r['max_abs_diff']['run (loop)']:.1e}",
                     f"{100 * r['pred_disagree']['run (scan)']:.2f}% / {100 * r['pred_disagree']['run (loop)']:.2f}%",
                     f"{r['logit_scale']:.1f}", f"{100 * r['spike_rate']:.0f}%"])
    print(_common.md_table(["model", "T", "B", "n", "run (scan)", "run (loop)", "step loop", "scan × step",
                            "run-loop × step", "scan × run-loop", "max |Δ| scan / run-loop",
                            "pred. differ scan / run-loop", "max |logit|", "spike rate"], rows))
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.1f} s)")
    _common.write_json(args.json, {"args": vars(args), "machine": info, "results": results, "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
