"""Tile sizes of the packed synapse kernel on a CUDA GPU: the time of `synapse` (trit2 weights,
uint8 4-bit codes in, the int8 dot) for each `Tiles(BLOCK_M, BLOCK_N, BLOCK_K, warps)` on the layer
shapes of triton_kernels.py, next to the tiles `gemm.blocks` picks and a dense bf16 layer. It is
what `blocks` was chosen from (benchmarks/RESULTS.md, "GPU kernels"). Every tiling is checked
exact against a float64 convolution before it is timed. The picked tiles and the dense layer are
timed a second way, replayed in a CUDA graph, which leaves out launch overhead: at batch 1 a layer
takes 20–100 µs and the flushed timings of the same kernel varied up to 2.4× between runs.

    python benchmarks/triton_tiles.py [--json tiles.json]      # CUDA GPU only; about two minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

from hmdf_deploy.runtime.kernels import pack_weight, synapse  # noqa: E402
from hmdf_deploy.runtime.kernels.gemm import Tiles, blocks  # noqa: E402

LAYERS = [("conv3×3 128→128 @32×32", 128, 128, 32, 3), ("conv3×3 256→256 @16×16", 256, 256, 16, 3),
          ("conv3×3 512→512 @8×8", 512, 512, 8, 3), ("linear 4096→4096", 4096, 4096, None, None)]
DEV = "cuda"
TILES = [Tiles(*t) for t in [  # (BLOCK_M, BLOCK_N, BLOCK_K, warps)
    (128, 64, 64, 8), (64, 128, 64, 8), (128, 128, 64, 8), (128, 128, 32, 8), (64, 64, 64, 4), (64, 32, 128, 4),
    (32, 32, 128, 4), (32, 32, 64, 4), (16, 32, 128, 4), (16, 16, 128, 4), (16, 16, 256, 4), (16, 32, 256, 4),
    # more weight bytes per K step for one-row layers, now that those bytes load as words (session 4)
    (16, 64, 128, 4), (16, 64, 256, 4), (16, 128, 128, 8),
]]


def name(t: Tiles) -> str:
    return f"{t.m}×{t.n}×{t.k}/{t.warps}w"


def graph_us(fn) -> float | None:
    """µs per call replayed in a CUDA graph: device time without launch overhead or L2 flush (the
    weights stay in L2), median; None where capture fails."""
    try:
        return do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    except Exception as e:  # noqa: BLE001  (a capture failure costs one column, not the sweep)
        print(f"CUDA graph timing failed: {type(e).__name__}: {e}", flush=True)
        return None


def cell(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write every time (µs) here")
    args = ap.parse_args()
    assert DEV != "cuda" or torch.cuda.is_available(), "a CUDA GPU is needed"
    gpu = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    print(f"{gpu} · torch {torch.__version__}\n", flush=True)
    print("| layer | B | picked | best | best µs | picked µs | dense bf16 µs | best ÷ dense | picked ÷ dense | "
          "picked µs, graph | dense µs, graph | picked ÷ dense, graph |")
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
                got = synapse(x, w, one, zero, tiles=tiles, **pad)
                if not torch.equal(got, want):
                    times[name(tiles)] = None
                    print(f"NOT EXACT: {label} B={B} {name(tiles)}", flush=True)
                    continue
                times[name(tiles)] = do_bench(lambda: synapse(x, w, one, zero, tiles=tiles, **pad)) * 1e3
            dense_w, xb = codes.to(DEV, torch.bfloat16), x.to(torch.bfloat16)
            dense = (lambda: F.linear(xb, dense_w)) if k is None else (lambda: F.conv2d(xb, dense_w, padding=1))
            dense()
            dense_us = do_bench(dense) * 1e3
            best = min((t for t in times.items() if t[1] is not None), key=lambda t: t[1])
            pk = times[name(picked)]
            pk_graph, dense_graph = graph_us(lambda: synapse(x, w, one, zero, tiles=picked, **pad)), graph_us(dense)
            results.append({"layer": label, "B": B, "picked": name(picked), "times_us": times, "dense_bf16_us": dense_us,
                            "picked_graph_us": pk_graph, "dense_bf16_graph_us": dense_graph})
            pk_cells = f"{pk:.1f} | {dense_us:.1f} | {best[1] / dense_us:.2f}× | {pk / dense_us:.2f}×" if pk else "NOT EXACT"
            ratio = f"{pk_graph / dense_graph:.2f}×" if pk_graph and dense_graph else "—"
            print(f"| {label} | {B} | {name(picked)} | {best[0]} | {best[1]:.1f} | {pk_cells} | {cell(pk_graph)} | "
                  f"{cell(dense_graph)} | {ratio} |", flush=True)
    print("\nµs, median of triton.testing.do_bench (L2 flushed before each call); graph: median of "
          "do_bench_cudagraph (calls replayed in a CUDA graph, L2 warm). All tilings, µs:\n")
    print("| tiles | " + " | ".join(f"{r['layer']} B={r['B']}" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for t in dict.fromkeys(n for r in results for n in r["times_us"]):
        cells = [r["times_us"].get(t) for r in results]
        print(f"| {t} | " + " | ".join(cell(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__,
                                         "rows": results}, indent=1))


if __name__ == "__main__":
    main()
