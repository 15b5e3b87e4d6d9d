"""Epoch time of Random Backprop (SPEC §4.2) against per-step online (§4.1), online-accumulate and STBP (§4.3).

Same model (VGG cfg 32,64,M,128,M), same data (the `digits` train split, 1437 images, batch 64,
22 batches an epoch), same batch order for every mode; Random Backprop draws its t* per batch from
a generator seeded by (seed, batch), as `hmdf train --random-backprop` does. Each timed epoch
starts from a freshly built network with the same seed, so every repeat does identical work.
Repeats are interleaved (every repeat runs every mode, in a rotated order), so slow phases of a
shared machine hit all modes alike; the table gives the median and the min–max over repeats, and
the ratios are computed both from the medians and per repeat (paired) — the paired median is the
more robust one on a noisy machine. Evaluation is not timed. Single-threaded by default (see
_common.py).

Goal (from the issue): Random Backprop epoch ≤ 0.55× the per-step online epoch.

    python benchmarks/random_backprop.py                 # T = 4 and 8, 5 repeats
    python benchmarks/random_backprop.py --quick         # 3 repeats, half an epoch each
    python benchmarks/random_backprop.py --json out.json
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

from hmdf_deploy.data import load_dataset  # noqa: E402
from hmdf_deploy.models import ModelConfig, build_model  # noqa: E402
from hmdf_deploy.models.config import parse_vgg_cfg  # noqa: E402
from hmdf_deploy.training import train_batch  # noqa: E402

#: label → (train_batch mode, random backprop)
METHODS = {
    "online": ("online", False),
    "online-accumulate": ("online-accumulate", False),
    "random-backprop": ("online", True),
    "stbp": ("stbp", False),
}


def build(T: int, cfg: str, weights: str, spikes: str, seed: int):
    torch.manual_seed(seed)
    config = ModelConfig(arch="vgg", cfg=parse_vgg_cfg(cfg), in_channels=1, input_size=(8, 8),
                         num_classes=10, T=T, weights=weights, spikes=spikes).validate()
    net = build_model(config).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return net, opt


def epoch(method: str, T: int, x, y, args, batches: int) -> dict:
    mode, rb = METHODS[method]
    net, opt = build(T, args.cfg, args.weights, args.spikes, args.seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    steps = backwards = 0
    start = time.perf_counter()
    for b in range(batches):
        idx = order[b * args.batch : (b + 1) * args.batch]
        t_star = None
        if rb:
            gen = torch.Generator().manual_seed(args.seed * 1_000_003 + b)
            t_star = int(torch.randint(T, (1,), generator=gen))
        r = train_batch(net, opt, x[idx], y[idx], T=T, static=True, mode=mode, t_star=t_star)
        steps += r.steps_run
        backwards += r.backward_calls
    return {"seconds": time.perf_counter() - start, "forward_steps": steps, "backward_calls": backwards}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="32,64,M,128,M")
    ap.add_argument("--T", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--weights", default="fp32", choices=["fp32", "1bit", "1.5bit"])
    ap.add_argument("--spikes", default="float", choices=["float", "4bit"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="3 repeats of half an epoch")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats = min(args.repeats, 3)

    _common.setup(args.threads)
    info = _common.machine()
    train, _, _ = load_dataset("digits", T=max(args.T))
    x, y = train.x, train.y
    batches = len(y) // args.batch
    if args.quick:
        batches = max(1, batches // 2)
    started = time.perf_counter()

    # warm-up (not timed): a few batches of every method, so allocator and caches are warm
    for T in args.T:
        for m in args.methods:
            epoch(m, T, x, y, args, 2)

    runs: dict[tuple[int, str], list[dict]] = {(T, m): [] for T in args.T for m in args.methods}
    for rep in range(args.repeats):
        for T in args.T:
            k = rep % len(args.methods)
            for m in args.methods[k:] + args.methods[:k]:  # rotate the order every repeat
                runs[(T, m)].append(epoch(m, T, x, y, args, batches))
        print(f"  repeat {rep + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    results = []
    for T in args.T:
        base = [r["seconds"] for r in runs[(T, "online")]] if "online" in args.methods else None
        for m in args.methods:
            secs = [r["seconds"] for r in runs[(T, m)]]
            row = {"T": T, "method": m, "seconds": _common.stats(secs),
                   "forward_steps_per_batch": runs[(T, m)][0]["forward_steps"] / batches,
                   "backward_calls_per_batch": runs[(T, m)][0]["backward_calls"] / batches}
            if base:
                row["ratio_of_medians"] = statistics.median(secs) / statistics.median(base)
                paired = [s / b for s, b in zip(secs, base)]
                row["paired_ratio"] = _common.stats(paired)
            results.append(row)

    print(f"\nEpoch time on digits ({batches} batches of {args.batch}), VGG cfg {args.cfg}, weights "
          f"{args.weights}, spikes {args.spikes}; median (min–max) over {args.repeats} interleaved "
          f"repeats; ratio against per-step online.")
    print(f"Machine: {_common.machine_line(info)}\n")
    rows = []
    for r in results:
        pr = r.get("paired_ratio")
        rows.append([r["T"], r["method"], _common.fmt_stats(r["seconds"], "s", 2),
                     f"{r['forward_steps_per_batch']:.2f}", f"{r['backward_calls_per_batch']:.0f}",
                     f"{r.get('ratio_of_medians', float('nan')):.3f}",
                     f"{pr['median']:.3f} ({pr['min']:.3f}–{pr['max']:.3f})" if pr else "-"])
    print(_common.md_table(["T", "method", "epoch time", "fwd steps/batch", "backward/batch",
                            "× online (medians)", "× online (paired)"], rows))
    print()
    goal = []
    for r in results:
        if r["method"] == "random-backprop" and "paired_ratio" in r:
            v = r["paired_ratio"]["median"]
            line = (f"T={r['T']}: Random Backprop / online = {v:.3f}× (paired median; goal ≤ 0.55: "
                    f"{'met' if v <= 0.55 else 'NOT met'})")
            print(line)
            goal.append(line)
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.1f} s)")
    _common.write_json(args.json, {"args": vars(args), "machine": info, "batches": batches,
                                   "results": results, "runs": {f"T{T}/{m}": v for (T, m), v in runs.items()},
                                   "goal": goal, "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
