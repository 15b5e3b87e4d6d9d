"""Size of a `.hmdf` file against its floor, bits per weight, and compression against fp32 (SPEC §5.3, §6).

For each model (random weights from a fixed seed, BN at its initial statistics; the size does not
depend on the values, only on whether every code is ±1, which binary weights always are), fold it
(`hmdf_deploy.deploy.fold`), write it with `save_hmdf`, and compare the file with:

* **floor** — the bytes the content needs at the scheme's rate: quantized weights at 1 bit
  (binary) or 1.6 bits (ternary, 5 trits per byte; the information content log2 3 ≈ 1.585 is shown
  separately), full-precision layers (stem, classifier) at 4 B per weight, and every other
  tensor (per-channel scales and shifts, thresholds, leaks, SECA weights) at 4 B per value.
  `file / floor` is the overhead of the container: JSON header (graph, provenance), checksum,
  8-byte alignment and the rounding of every packed tensor up to whole bytes. Goal: ≤ 1.05×.
* **bits per weight** of the quantized layers as stored (packed bytes × 8 / weights), against the
  paper's accounting (2 bits binary, 3 bits ternary, SPEC §10).
* **compression** — the fp32 `state_dict` written as safetensors (what `hmdf train` keeps, BN
  running statistics included), divided by the `.hmdf` file.

Each file is read back with `load_hmdf` and run next to the in-memory DeployModel on one random
input (max |Δ logits| reported; 0 expected).

    python benchmarks/deploy_size.py                 # all models
    python benchmarks/deploy_size.py --quick         # without ResNet-18
    python benchmarks/deploy_size.py --runs runs/digits   # also a trained run, as `hmdf quantize` writes it
    python benchmarks/deploy_size.py --json out.json
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from hmdf_deploy.deploy import Reference, fold, load_hmdf, save_hmdf  # noqa: E402
from hmdf_deploy.deploy.graph import Synapse  # noqa: E402
from hmdf_deploy.deploy.summary import layer_rows  # noqa: E402
from hmdf_deploy.models import ModelConfig, build_model  # noqa: E402
from hmdf_deploy.models.config import VGG11, parse_vgg_cfg  # noqa: E402

RATE = {"1bit": 1.0, "1.5bit": 1.6}
PAPER_BITS = {"1bit": 2.0, "1.5bit": 3.0}

#: name → (ModelConfig kwargs, event input)
MODELS = {
    "VGG small (digits, 1×8×8, T=4)": (dict(arch="vgg", cfg=parse_vgg_cfg("32,64,M,128,M"), in_channels=1,
                                            input_size=(8, 8), T=4), False),
    "VGG small (neuro-digits, 2×16×16, T=8)": (dict(arch="vgg", cfg=parse_vgg_cfg("16,M,32,M,64,M"), in_channels=2,
                                                    input_size=(16, 16), T=8, quantize_stem=True), True),
    "VGG-SNN (2×48×48, T=10)": (dict(arch="vgg", cfg=list(VGG11), in_channels=2, input_size=(48, 48), T=10,
                                     quantize_stem=True), True),
    "ResNet-18 w64 (3×32×32, T=4)": (dict(arch="resnet18", width=64, in_channels=3, input_size=(32, 32), T=4), False),
}


def measure(name: str, kw: dict, event: bool, weights: str, spikes: str, tmp: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    config = ModelConfig(num_classes=10, weights=weights, spikes=spikes, **kw).validate()
    net = build_model(config).eval()
    return measure_deploy(name, net, config, fold(net, config, event=event), event, tmp, seed)


def measure_run(run_dir: Path, tmp: Path, seed: int) -> dict:
    """A trained run directory, folded and checked exactly as `hmdf quantize RUN` does."""
    from hmdf_deploy.deploy.quantize import quantize_run
    from hmdf_deploy.training import load_run_config, load_trained

    config, train = load_run_config(run_dir)
    result = quantize_run(run_dir)
    name = f"trained: {train.dataset} {','.join(map(str, config.cfg)) if config.arch == 'vgg' else config.arch}"
    return measure_deploy(name, load_trained(run_dir), config, result.model, result.model.event, tmp, seed)


def measure_deploy(name: str, net, config: ModelConfig, deploy, event: bool, tmp: Path, seed: int) -> dict:
    weights, spikes = config.weights, config.spikes
    path = tmp / "model.hmdf"
    save_hmdf(deploy, path)
    file_bytes = os.path.getsize(path)

    sd_path = tmp / "state_dict.safetensors"
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(sd_path))
    sd_bytes = os.path.getsize(sd_path)
    fp32_params = sum(p.numel() for p in net.parameters())

    floor_bits = 0.0
    q_weights = q_bytes = fp_weights = other_values = 0
    for n in deploy.nodes:
        for key, t in n.tensors().items():
            if key == "weight" and isinstance(n, Synapse) and n.weights != "fp32":
                q_weights += t.numel()
                floor_bits += RATE[n.weights] * t.numel()
            elif key == "weight" and isinstance(n, Synapse):
                fp_weights += t.numel()
                floor_bits += 32 * t.numel()
            else:
                other_values += t.numel()
                floor_bits += 32 * t.numel()
    rows = layer_rows(deploy)
    for r in rows:
        if r.weights not in ("fp32", "-"):
            q_bytes += r.bytes - 4 * sum(t.numel() for k, t in deploy.node(r.name).tensors().items() if k != "weight")
    floor = floor_bits / 8
    info_bits = (math.log2(3) if weights == "1.5bit" else 1.0) * q_weights + 32 * (fp_weights + other_values)

    # read back and compare outputs on one random input
    loaded = load_hmdf(path)
    c, h, w = config.in_channels, *config.input_size
    gen = torch.Generator().manual_seed(seed + 1)
    if event:
        x = (torch.rand(config.T, 1, c, h, w, generator=gen) < 0.2).float()
    else:  # a static image repeats at every step
        x = torch.rand(1, 1, c, h, w, generator=gen).expand(config.T, 1, c, h, w).contiguous()
    with torch.no_grad():
        a = Reference(deploy).run(x)
        b = Reference(loaded).run(x)
    return {
        "model": name, "weights": weights, "spikes": spikes, "T": config.T,
        "params": fp32_params, "quantized_weights": q_weights, "fp32_weights": fp_weights,
        "other_values": other_values, "file_bytes": file_bytes, "floor_bytes": floor,
        "file_over_floor": file_bytes / floor, "info_floor_bytes": info_bits / 8,
        "packed_weight_bytes": q_bytes, "bits_per_weight": 8 * q_bytes / max(1, q_weights),
        "paper_bits_per_weight": PAPER_BITS[weights],
        "paper_bytes": sum(r.paper_bytes for r in rows),
        "state_dict_bytes": sd_bytes, "compression_vs_state_dict": sd_bytes / file_bytes,
        "compression_vs_fp32_params": 4 * fp32_params / file_bytes,
        "overhead_bytes": file_bytes - floor,
        "roundtrip_max_abs_diff": float((a - b).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", default=["1bit", "1.5bit"], choices=["1bit", "1.5bit"])
    ap.add_argument("--spikes", default="4bit", choices=["float", "4bit"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="skip ResNet-18")
    ap.add_argument("--runs", nargs="*", default=[], type=Path,
                    help="also measure these training run directories (hmdf train --out), as hmdf quantize writes them")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    _common.setup(args.threads)
    info = _common.machine()
    started = time.perf_counter()
    models = {k: v for k, v in MODELS.items() if not (args.quick and k.startswith("ResNet"))}
    results = []
    with tempfile.TemporaryDirectory() as d:
        for name, (kw, event) in models.items():
            for weights in args.weights:
                results.append(measure(name, kw, event, weights, args.spikes, Path(d), args.seed))
        for run in args.runs:
            results.append(measure_run(run, Path(d), args.seed))

    print(f"`.hmdf` size vs floor (random weights, seed {args.seed}, spikes {args.spikes}; plus any trained runs).")
    print(f"Machine: {_common.machine_line(info)}\n")
    rows = [[r["model"], r["weights"], f"{r['params']:,}", f"{r['quantized_weights']:,}",
             f"{r['file_bytes']:,}", f"{r['floor_bytes']:,.0f}", f"{r['file_over_floor']:.4f}",
             f"{r['overhead_bytes']:,.0f}",
             f"{r['bits_per_weight']:.3f} (paper {r['paper_bits_per_weight']:.0f})",
             f"{r['paper_bytes']:,.0f}",
             f"{r['state_dict_bytes']:,}", f"{r['compression_vs_state_dict']:.1f}×",
             f"{r['roundtrip_max_abs_diff']:.0e}"] for r in results]
    print(_common.md_table(["model", "weights", "params", "quantized", "file B", "floor B", "file/floor",
                            "overhead B", "bits/weight stored", "paper B", "fp32 state_dict B",
                            "compression", "reload |Δ|"], rows))
    worst = max(r["file_over_floor"] for r in results)
    print(f"\nworst file/floor = {worst:.4f} (goal ≤ 1.05: {'met' if worst <= 1.05 else 'NOT met'})")
    elapsed = time.perf_counter() - started
    print(f"\n({elapsed:.1f} s)")
    _common.write_json(args.json, {"args": vars(args), "machine": info, "results": results, "seconds": elapsed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
