"""Host time of one `synapse` call with the kernel launch stubbed out: what Python spends around a
launch (checks, tile choice, grid arithmetic, allocating the output). Runs on the CPU.

Triton's `triton.cdiv` and `triton.next_power_of_2` are jit functions, expensive to call from
Python; the kernels' launchers use plain-Python ones (`kernels.grid`). This times a call both ways,
interleaved, on a 256→256 3×3 layer at batch 1 (a streaming step's size).

    python benchmarks/host_overhead.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (puts the repository root on sys.path)

import torch  # noqa: E402
import triton  # noqa: E402

from hmdf_deploy.runtime.kernels import gemm  # noqa: E402


class _Stub:
    """Stands in for the jit kernel: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def per_call_us(fn, n: int = 3000) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    _common.setup(1)
    gemm._synapse_kernel = _Stub()
    w = gemm.pack_weight(torch.randint(-1, 2, (256, 256, 3, 3), dtype=torch.int8), "1.5bit")
    x = torch.randint(0, 16, (1, 256, 16, 16), dtype=torch.uint8)
    scale, shift = torch.ones(1, 256), torch.zeros(1, 256)
    ways = {"triton's cdiv / next_power_of_2": (triton.cdiv, triton.next_power_of_2),
            "plain Python (kernels.grid)": (gemm.cdiv, gemm.next_power_of_2)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(5):  # interleaved, so that load on the machine hits both alike
        for name, (cdiv, pow2) in ways.items():
            gemm.cdiv, gemm.next_power_of_2 = cdiv, pow2
            times[name].append(per_call_us(lambda: gemm.synapse(x, w, scale, shift, padding=1)))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name}: {t:.1f} µs per call (median of 5 × 3,000)")
    a, b = med.values()
    print(f"ratio: {a / b:.2f}×")


if __name__ == "__main__":
    main()
