"""Compile every variant of the Triton kernels for an NVIDIA H100 / H200 (sm_90) without a GPU, and
a few for an A100 (sm_80), and print what the PTX, the TTGIR and the cubin show, one JSON object
per variant and target. Run by tests/test_triton_kernels.py in a fresh
process without TRITON_INTERPRET (in the interpreter nothing is compiled).

Compiling needs no GPU: Triton lowers to PTX with the target given, and ptxas ships in its wheel.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections import Counter

assert not os.environ.get("TRITON_INTERPRET"), "compile without the interpreter"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from hmdf_deploy.runtime.kernels import fused, gemm, neuron  # noqa: E402

TARGETS = {"sm90": GPUTarget("cuda", 90, 32), "sm80": GPUTarget("cuda", 80, 32)}
#: On sm_80 (no wgmma: mma.sync instead) the variants whose lowering differs most.
SM80 = ("synapse-trit2-int-taps", "synapse-sign1-float-taps", "fused-trit2-int-hmdf-codes", "steps-hmdf-codes", "scan-codes")


def compile_kernel(fn, pointers: dict[str, str], constants: dict, target: str) -> dict:
    """PTX and cubin of `fn` with the given pointer element types, constexprs (and "num_warps", and
    "divisible": integer arguments that are multiples of 16), every other argument i32. As in a
    launch, pointers are 16-byte aligned and the "divisible" integers specialized as such."""
    constants = dict(constants)
    warps = constants.pop("num_warps", 4)
    divisible = set(pointers) | set(constants.pop("divisible", ()))
    names = fn.arg_names
    signature = {n: pointers.get(n) and "*" + pointers[n] or ("constexpr" if n in constants else "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constants.items()},
                       attrs=attrs)
    options = {"enable_fp_fusion": False, "num_warps": warps}
    return triton.compile(source, target=TARGETS[target], options=options).asm


def resources(cubin: bytes) -> dict:
    """Registers per thread and stack bytes (where ptxas puts spilled registers), from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {"regs": int(re.search(r"REG:(\d+)", usage)[1]), "stack": int(re.search(r"STACK:(\d+)", usage)[1])}


def input_lanes(ttgir: str, block_m: int, block_k: int) -> str | None:
    """Which axis of the synapse's (rows, K) input tile a warp's lanes run along in its global load:
    "rows" or "channels" (from the load's blocked layout); None where the TTGIR cannot tell (rows
    and K of one size, or not one such load)."""
    layouts = {name: [int(n) for n in lanes.split(",")] for name, lanes in
               re.findall(r"^#(\w+) = #ttg\.blocked<\{[^}]*threadsPerWarp = \[([\d, ]+)\]", ttgir, re.M)}
    found = set()
    for a, b, name in re.findall(r"tt\.load .*: tensor<(\d+)x(\d+)x!tt\.ptr<i8>, #(\w+)>", ttgir):
        shape = (int(a), int(b))
        if sorted(shape) == sorted((block_m, block_k)) and block_m != block_k:
            along = shape[layouts[name].index(max(layouts[name]))]  # the axis with most lanes
            found.add("rows" if along == block_m else "channels")
    return found.pop() if len(found) == 1 else None


def features(ptx: str) -> dict:
    mma = re.findall(r"\b(?:wgmma|mma)\.[\w.]+", ptx)
    return {
        "mma": sorted({m for m in mma}),
        "int8_mma": any(".s8" in m for m in mma),
        "tf32_mma": any("tf32" in m for m in mma),
        "fma_f32": bool(re.search(r"\bfma\.rn\.f32\b", ptx)),
        "byte_loads": bool(re.search(r"\bld\.global(?:\.\w+)*\.(?:u8|b8)\b", ptx)),
        "byte_stores": bool(re.search(r"\bst\.global(?:\.\w+)*\.(?:u8|b8)\b", ptx)),
        # global load instructions by width (".b8", ".b32", ".v2.b32", …): vectorized loads show here
        "loads": dict(Counter(re.findall(r"\bld\.global(?:\.L1::\w+|\.L2::\w+|\.nc)*((?:\.v\d)?\.\w+)", ptx))),
    }


def variants():
    for scheme, code in gemm.SCHEMES.items():
        for integer in (False, True) if scheme != "fp32" else (False,):
            ptrs = {"x_ptr": "u8" if integer else "fp32", "w_ptr": "fp32" if scheme == "fp32" else "u8",
                    "sc_ptr": "fp32", "sh_ptr": "fp32", "out_ptr": "fp32", "part_ptr": "fp32"}
            for taps in (True, False):  # K steps tap by tap, or flat over the taps (few channels)
                yield (f"synapse-{scheme}-{'int' if integer else 'float'}-{'taps' if taps else 'flat'}",
                       gemm._synapse_kernel, ptrs,
                       dict(KH=3, KW=3, SCHEME=code, INT=integer, TAPS=taps, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32,
                            PIXELS=True, SPLIT=1))
    # the tiles `gemm.blocks` picks on a GPU: for 4-bit codes in each of its branches and with the
    # fewest channels, 3×3 convolutions and linear layers (one pixel) of batch 1 and 32; for float32
    # weights (a first layer), both branches
    ptrs = {"x_ptr": "u8", "w_ptr": "u8", "sc_ptr": "fp32", "sh_ptr": "fp32", "out_ptr": "fp32", "part_ptr": "fp32"}
    convs = ((64, 16), (64, 512), (1024, 128), (2048, 512), (32768, 128))
    layers = [("trit2", M, channels, 3) for M, channels in convs]
    layers += [("trit2", 1, 4096, 1), ("trit2", 32, 4096, 1), ("fp32", 64, 128, 3), ("fp32", 1024, 3, 3)]
    for scheme, M, channels, k in layers:
        w = gemm.PackedWeight(None, scheme, channels, channels, (k, k), channels)
        t = gemm.blocks(M, w)
        integer = scheme != "fp32"
        yield (f"synapse-{scheme}-{'int' if integer else 'float'}-{'conv' if k > 1 else 'linear'}-rows{M}-"
               f"channels{channels}", gemm._synapse_kernel,
               {**ptrs, "x_ptr": "u8" if integer else "fp32", "w_ptr": "u8" if integer else "fp32"},
               dict(KH=k, KW=k, SCHEME=gemm.SCHEMES[scheme], INT=integer, TAPS=gemm.taps(w), BLOCK_M=t.m,
                    BLOCK_N=t.n, BLOCK_K=t.k, PIXELS=k > 1, SPLIT=1, num_warps=t.warps,
                    divisible=("Cp", "row_len")))
    # K steps split over 4 programs (batch-1 tiles), int32 parts added by a second kernel
    yield ("synapse-trit2-int-conv-split4", gemm._synapse_kernel, {**ptrs, "part_ptr": "i32"},
           dict(KH=3, KW=3, SCHEME=2, INT=True, TAPS=True, BLOCK_M=16, BLOCK_N=16, BLOCK_K=128, PIXELS=True, SPLIT=4,
                divisible=("Cp", "row_len")))
    yield ("splitsum-int32parts", gemm._split_sum_kernel,
           {"part_ptr": "i32", "sc_ptr": "fp32", "sh_ptr": "fp32", "out_ptr": "fp32"},
           dict(SPLIT=4, BLOCK_M=32, BLOCK_N=32, PIXELS=True))
    models = (("hmdf", neuron.HMDF), ("lif", neuron.LIF), ("parallel", neuron.PARALLEL))
    f32 = dict.fromkeys(["sc_ptr", "sh_ptr", "v_in_ptr", "v_out_ptr", "th_ptr", "lk_ptr", "k_ptr", "c_ptr"], "fp32")
    for scheme, code in gemm.SCHEMES.items():
        for integer in (False, True) if scheme != "fp32" else (False,):
            for model, mcode in models:
                codes = model != "lif"
                ptrs = {**f32, "x_ptr": "u8" if integer else "fp32", "w_ptr": "fp32" if scheme == "fp32" else "u8",
                        "s_ptr": "u8" if codes else "fp32"}
                yield (f"fused-{scheme}-{'int' if integer else 'float'}-{model}-{'codes' if codes else 'float'}",
                       fused._synapse_neuron_kernel, ptrs,
                       dict(KH=3, KW=3, SCHEME=code, INT=integer, TAPS=True, MODEL=mcode, CODES=codes, AFFINE=True,
                            STATE_IN=True, STATE_OUT=True, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, PIXELS=True))
    f32 = dict.fromkeys(["i_ptr", "v_in_ptr", "v_out_ptr", "th_ptr", "lk_ptr", "k_ptr", "c_ptr"], "fp32")
    for model, code in models:
        for codes in (False, True):
            yield (f"steps-{model}-{'codes' if codes else 'float'}", neuron._steps_kernel,
                   {**f32, "s_ptr": "u8" if codes else "fp32"},
                   dict(MODEL=code, CODES=codes, AFFINE=True, STATE_IN=True, STATE_OUT=True, BLOCK=1024))
    f32 = dict.fromkeys(["i_ptr", "th_ptr", "lk_ptr", "k_ptr", "c_ptr"], "fp32")
    for codes in (False, True):
        yield (f"scan-{'codes' if codes else 'float'}", neuron._scan_kernel, {**f32, "s_ptr": "u8" if codes else "fp32"},
               dict(CODES=codes, AFFINE=True, BLOCK_T=16, BLOCK_N=256))


if __name__ == "__main__":
    for name, fn, ptrs, consts in variants():
        for target in ("sm90", "sm80") if name in SM80 else ("sm90",):
            asm = compile_kernel(fn, ptrs, consts, target)
            lanes = input_lanes(asm["ttgir"], consts["BLOCK_M"], consts["BLOCK_K"]) if "BLOCK_K" in consts else None
            print(json.dumps({"variant": name, "target": target, **features(asm["ptx"]), **resources(asm["cubin"]),
                              "input_lanes": lanes}), flush=True)
