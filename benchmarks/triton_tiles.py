"""Tile sizes of the packed synapse kernel on a CUDA GPU: the time of `synapse` (trit2 weights,
uint8 4-bit codes in, the int8 dot) for each `Tiles(BLOCK_M, BLOCK_N, BLOCK_K, warps, split)` on the
layer shapes of triton_kernels.py, next to the tiles `gemm.blocks` picks and a dense bf16 layer. It
is what `blocks` was chosen from (benchmarks/RESULTS.md, "GPU kernels"). Every tiling is checked
exact against a float64 convolution before it is timed. Tilings that split the K steps over
programs (`blocks` picks none yet) are timed at batch 1 only, their two kernels together.

Tilings are ranked by device time (benchmarks/_device_time.py): the durations of the kernels a call
launches, from the GPU's clock, L2 flushed before each call. That leaves out the host's launch
overhead, which a batch-1 layer's few microseconds of work cannot hide and which the CUDA graphs of
streaming steps remove too (a graph keeps about 1 µs between kernels, and does not flush L2). The
picked tiles and the dense layer are also timed as launched from Python (`triton.testing.do_bench`),
and the picked tiles with a warp's lanes along the input's channels, as convolutions' inputs were
loaded until session 5 (`gemm.lanes_along_rows`), to measure that change.

    python benchmarks/triton_tiles.py [--json tiles.json]      # CUDA GPU only; about two minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository root on sys.path)
import _device_time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from hmdf_deploy.runtime.kernels import gemm, pack_weight, synapse  # noqa: E402
from hmdf_deploy.runtime.kernels.gemm import Tiles, blocks  # noqa: E402

LAYERS = [("conv3×3 128→128 @32×32", 128, 128, 32, 3), ("conv3×3 256→256 @16×16", 256, 256, 16, 3),
          ("conv3×3 512→512 @8×8", 512, 512, 8, 3), ("linear 4096→4096", 4096, 4096, None, None)]
DEV = "cuda"
TILES = [Tiles(*t) for t in [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps)
    (128, 64, 64, 8), (64, 128, 64, 8), (128, 128, 64, 8), (128, 128, 32, 8), (64, 64, 64, 4), (64, 32, 128, 4),
    (32, 32, 128, 4), (32, 32, 64, 4), (16, 32, 128, 4), (16, 16, 128, 4), (16, 16, 256, 4), (16, 32, 256, 4),
    # more weight bytes per K step for one-row layers, now that those bytes load as words (session 4)
    (16, 64, 128, 4), (16, 64, 256, 4), (16, 128, 128, 8),
    # K steps split over programs, for batch 1 only: more programs, shorter K loops (session 5)
    (16, 16, 128, 4, 4), (16, 16, 128, 4, 8), (16, 64, 128, 4, 8), (32, 32, 128, 4, 4), (32, 32, 64, 4, 8),
]]


def name(t: Tiles) -> str:
    return f"{t.m}×{t.n}×{t.k}/{t.warps}w" + (f" split {t.split}" if t.split > 1 else "")


def device_us(fn) -> float | None:
    """Median µs of GPU time per call (`_device_time`); None, with the reason printed, on failure."""
    try:
        return _device_time.summary(_device_time.device_times(fn))["median"] * 1e6
    except Exception as e:  # noqa: BLE001  (a failed measurement costs one cell, not the sweep)
        print(f"device timing failed: {type(e).__name__}: {e}", flush=True)
        return None


@contextlib.contextmanager
def lanes_along_channels():
    """Synapse calls load every input with a warp's lanes along its channels (before session 5)."""
    rule = gemm.lanes_along_rows
    gemm.lanes_along_rows = lambda g: False
    try:
        yield
    finally:
        gemm.lanes_along_rows = rule


def cell(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write every time (µs) here")
    args = ap.parse_args()
    assert DEV != "cuda" or torch.cuda.is_available(), "a CUDA GPU is needed"
    gpu = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    print(f"{gpu} · torch {torch.__version__}\n", flush=True)
    print("| layer | B | picked | best | best µs | picked µs | dense bf16 µs | best ÷ dense | picked ÷ dense | "
          "picked µs, launched | dense µs, launched | picked µs, lanes along channels |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    results = []
    for label, cin, cout, hw, k in LAYERS:
        for B in (1, 32):
            shape = (B, cin) if hw is None else (B, cin, hw, hw)
            x = torch.randint(0, 16, shape, device=DEV, dtype=torch.uint8)
            codes = torch.randint(-1, 2, (cout, cin) if k is None else (cout, cin, k, k), dtype=torch.int8)
            w = pack_weight(codes, "1.5bit", DEV)
            one, zero = torch.ones(1, cout, device=DEV), torch.zeros(1, cout, device=DEV)
            pad = {} if k is None else {"padding": 1}
            cd = codes.to(DEV, torch.float64)
            want = (x.double() @ cd.T if k is None else F.conv2d(x.double(), cd, padding=1)).float()
            M = B * (1 if hw is None else hw * hw)
            picked = blocks(M, w)
            times = {}
            for tiles in dict.fromkeys([*TILES, picked]):  # the picked tiles once, even when listed
                if tiles.split > 1 and B > 1:
                    continue
                got = synapse(x, w, one, zero, tiles=tiles, **pad)
                if not torch.equal(got, want):
                    times[name(tiles)] = None
                    print(f"NOT EXACT: {label} B={B} {name(tiles)}", flush=True)
                    continue
                times[name(tiles)] = device_us(lambda: synapse(x, w, one, zero, tiles=tiles, **pad))
            dense_w, xb = codes.to(DEV, torch.bfloat16), x.to(torch.bfloat16)
            dense = (lambda: F.linear(xb, dense_w)) if k is None else (lambda: F.conv2d(xb, dense_w, padding=1))
            dense_us = device_us(dense)
            with lanes_along_channels():
                old = synapse(x, w, one, zero, tiles=picked, **pad)
                channels_us = device_us(lambda: synapse(x, w, one, zero, tiles=picked, **pad))
            if not torch.equal(old, want):
                channels_us = None
                print(f"NOT EXACT: {label} B={B} {name(picked)}, lanes along channels", flush=True)
            launched = {"picked": do_bench(lambda: synapse(x, w, one, zero, tiles=picked, **pad)) * 1e3,
                        "dense": do_bench(dense) * 1e3}
            timed = [t for t in times.items() if t[1] is not None]
            best = min(timed, key=lambda t: t[1]) if timed else ("—", None)
            pk = times[name(picked)]
            results.append({"layer": label, "B": B, "picked": name(picked), "device_us": times,
                            "dense_bf16_device_us": dense_us, "launched_us": launched,
                            "picked_lanes_along_channels_device_us": channels_us})
            print(f"| {label} | {B} | {name(picked)} | {best[0]} | {cell(best[1])} | {cell(pk)} | {cell(dense_us)} | "
                  f"{ratio(best[1], dense_us)} | {ratio(pk, dense_us)} | {cell(launched['picked'])} | "
                  f"{cell(launched['dense'])} | {cell(channels_us)} |", flush=True)
    print(f"\nµs: device time (CUPTI kernel durations, L2 flushed before each call, median of "
          f"{_device_time.CALLS}; benchmarks/_device_time.py); "
          "launched: median of triton.testing.do_bench (CUDA events around the call as launched from Python, "
          "L2 flushed). All tilings, device µs:\n")
    print("| tiles | " + " | ".join(f"{r['layer']} B={r['B']}" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for t in dict.fromkeys(n for r in results for n in r["device_us"]):
        cells = [r["device_us"].get(t) for r in results]
        print(f"| {t} | " + " | ".join(cell(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                         "rows": results}, indent=1))


if __name__ == "__main__":
    main()
