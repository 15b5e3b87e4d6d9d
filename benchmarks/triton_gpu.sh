#!/usr/bin/env bash
# Everything the Triton work needs from a lent CUDA GPU, in one pass that installs nothing
# (benchmarks/RESULTS.md "GPU kernels"): the tile sweep, the compiled kernels' tests, then the kernel
# and network benchmark. Each step's output lands under $OUT as it is written, so a timeout keeps
# what was measured. From the repository root, with SpikingJelly vendored (benchmarks/README.md):
#
#     OUT=/tmp/gpu bash benchmarks/triton_gpu.sh                  # 8-12 min on an H200: over one 600 s call
#
# so, within one 600 s call each, the kernels first (they answer the open goals), then the network:
#
#     SKIP_TESTS=1 SECTIONS=ceilings,synapse BUDGET=80 bash benchmarks/triton_gpu.sh      # ~7 min: tiles, kernels
#     SKIP_TILES=1 SECTIONS=network BUDGET=80 TESTS_S=180 bash benchmarks/triton_gpu.sh   # ~7 min: graphs, tests, network
set -u
OUT=${OUT:-benchmarks/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="benchmarks/_vendor${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
git log -1 --format='%h %s' > "$OUT/commit.txt" 2>/dev/null

if [ -z "${SKIP_TILES:-}" ]; then
  echo "== tile sweep"
  timeout 300 python3 benchmarks/triton_tiles.py --json "$OUT/tiles.json" 2>&1 | tee "$OUT/tiles.md"
fi
if [ -z "${SKIP_TESTS:-}" ]; then
  echo "== tests on the GPU (compiled kernels): CUDA-graph steps first, then every model kind"
  GRAPHS="cuda_graph or replayed or reads_the_state"
  timeout 120 python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_backend.py -k "$GRAPHS" > "$OUT/tests-graphs.log" 2>&1
  timeout "${TESTS_S:-300}" python3 -m pytest -q -x -p no:cacheprovider tests/test_triton_backend.py -k "not ($GRAPHS)" > "$OUT/tests.log" 2>&1
  grep -E "Error:|^E  .*(Error|assert)|passed|failed" "$OUT/tests-graphs.log" "$OUT/tests.log" | tail -12
fi
echo "== kernels and network"
timeout $(( ${BUDGET:-150} * 2 + 60 )) python3 benchmarks/triton_kernels.py --out "$OUT" --budget "${BUDGET:-150}" \
  --sections "${SECTIONS:-ceilings,synapse,network}" > "$OUT/kernels.log" 2>&1
status=$?
grep -E "CHECK FAILED|ERROR|check failure" "$OUT/kernels.log"
echo "triton_kernels.py exit $status; tables in $OUT/triton_kernels.md"
