"""Tile sizes of the packed synapse kernel on a CUDA GPU: the time of `synapse` (trit2 weights,
uint8 4-bit codes in, the int8 dot) for each (BLOCK_M, BLOCK_N, BLOCK_K) on the layer shapes of
triton_kernels.py, next to the tiles `gemm.blocks` picks and a dense bf16 layer. It is what
`blocks` was chosen from (benchmarks/RESULTS.md, "GPU kernels").

    python benchmarks/triton_tiles.py            # CUDA GPU only; about a minute
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402,F401  (puts the repository root on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from hmdf_deploy.runtime.kernels import pack_weight, synapse  # noqa: E402
from hmdf_deploy.runtime.kernels.gemm import blocks  # noqa: E402

LAYERS = [("conv3×3 128→128 @32×32", 128, 128, 32, 3), ("conv3×3 256→256 @16×16", 256, 256, 16, 3),
          ("conv3×3 512→512 @8×8", 512, 512, 8, 3), ("linear 4096→4096", 4096, 4096, None, None)]
TILES = [(64, 64, 32), (64, 64, 64), (32, 64, 64), (32, 32, 64), (16, 64, 64), (16, 32, 64), (16, 16, 64),
         (16, 32, 128), (16, 16, 128)]


def main() -> None:
    assert torch.cuda.is_available(), "a CUDA GPU is needed"
    print(f"{torch.cuda.get_device_name()} · torch {torch.__version__}\n")
    print("| layer | B | picked | " + " | ".join("×".join(map(str, t)) for t in TILES) + " | dense bf16 |")
    print("|---|---|---|" + "---|" * (len(TILES) + 1))
    for name, cin, cout, hw, k in LAYERS:
        for B in (1, 32):
            shape = (B, cin) if hw is None else (B, cin, hw, hw)
            x = torch.randint(0, 16, shape, device="cuda", dtype=torch.uint8)
            codes = torch.randint(-1, 2, (cout, cin) if k is None else (cout, cin, k, k), dtype=torch.int8)
            w = pack_weight(codes, "1.5bit", "cuda")
            one, zero = torch.ones(1, cout, device="cuda"), torch.zeros(1, cout, device="cuda")
            pad = {} if k is None else {"padding": 1}
            want = synapse(x, w, one, zero, tiles=TILES[0], **pad)
            cells = []
            for tiles in TILES:
                assert torch.equal(synapse(x, w, one, zero, tiles=tiles, **pad), want), tiles  # exact on codes
                cells.append(f"{do_bench(lambda: synapse(x, w, one, zero, tiles=tiles, **pad)) * 1e3:.1f}")
            M = B * (1 if hw is None else hw * hw)
            picked = "×".join(map(str, blocks(M, cout, w.K)))
            dense_w = codes.to("cuda", torch.bfloat16)
            xb = x.to(torch.bfloat16)
            dense = (lambda: F.linear(xb, dense_w)) if k is None else (lambda: F.conv2d(xb, dense_w, padding=1))
            print(f"| {name} | {B} | {picked} | " + " | ".join(cells) + f" | {do_bench(dense) * 1e3:.1f} |", flush=True)
    print("\nµs, median of triton.testing.do_bench (L2 flushed before each call).")


if __name__ == "__main__":
    main()
