"""Mutation fuzzer for `.hmdf` files: only HmdfError may escape `load_hmdf`, and a model that
loads must run in the Reference executor on a tiny input.

    python fuzz/fuzz_hmdf.py --seconds 600 [--seed 0] [--crashes fuzz/crashes]
    python fuzz/fuzz_hmdf.py --atheris            # libFuzzer-driven, if `pip install atheris` works

Seeds are small folded networks (tests/nets.py) written with save_hmdf. Each iteration picks a seed
and applies one of: byte flips, truncation, splices with another seed, or a JSON-level mutation of
the graph (drop/duplicate/reorder nodes, wrong JSON types, huge/negative ints, self/forward
references, missing/extra/retyped tensors) re-written with `write_container` so the checksum is
valid and the graph checks, not the checksum, are what is exercised. Any other exception, or a
loaded model that fails to run, is a finding: the input is saved under --crashes and the run goes on.
The process address space is capped (--mem-gb) so an absurd allocation shows up as an exception
(a finding) instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from hmdf_deploy.deploy import Reference, load_hmdf, save_hmdf  # noqa: E402
from hmdf_deploy.deploy.container import read_container, write_container  # noqa: E402
from hmdf_deploy.errors import HmdfError  # noqa: E402
import _driver  # noqa: E402
from _driver import Campaign, cap_memory  # noqa: E402

#: Largest activation (elements per sample, summed over nodes) the oracle runs; beyond this a
#: model that loads is reported as "accepted but too large to run" instead of being executed.
MAX_RUN_ELEMENTS = 2_000_000


def make_seeds(folder: Path) -> list[Path]:
    from nets import make_deploy
    from hmdf_deploy.models import ModelConfig

    cfgs = [
        (ModelConfig(arch="vgg", cfg=[4, "M", 4, "G"], input_size=(8, 8), T=2, weights="1.5bit",
                     spikes="4bit", seca=2, mem_bn=True, pool="max", num_classes=3), False),
        (ModelConfig(arch="vgg", cfg=[4, "M", 4], in_channels=2, input_size=(8, 8), T=2, weights="1bit",
                     neuron="lif", num_classes=3), True),
        (ModelConfig(arch="resnet18", width=2, input_size=(8, 8), T=1, weights="fp32", parallel=True,
                     num_classes=3), False),
    ]
    paths = []
    for i, (cfg, event) in enumerate(cfgs):
        try:
            model = make_deploy(cfg, event, seed=i)
        except Exception as e:  # a config this version cannot build: skip that seed
            print(f"seed {i} skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        p = folder / f"seed{i}.hmdf"
        save_hmdf(model, p)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------ mutations
def _weird_value(rng: random.Random):
    return rng.choice([
        None, True, False, 0, -1, 1, 2, 3, 7, 2**31, 2**63, 10**12, -(10**12), 10**40, 1e308, -0.5, 0.5,
        "", "x", "input", "conv", "hmdf", "fp32", "1bit", "global", [], [0], [1, 2], [10**12],
        {}, {"a": 1}, [[1]], "1" * 300,
    ])


def _pick_path(obj, rng: random.Random, depth: int = 0):
    """A (container, key) somewhere inside a JSON value."""
    if isinstance(obj, dict) and obj:
        k = rng.choice(list(obj))
        if depth < 4 and isinstance(obj[k], (dict, list)) and obj[k] and rng.random() < 0.6:
            return _pick_path(obj[k], rng, depth + 1)
        return obj, k
    if isinstance(obj, list) and obj:
        k = rng.randrange(len(obj))
        if depth < 4 and isinstance(obj[k], (dict, list)) and obj[k] and rng.random() < 0.6:
            return _pick_path(obj[k], rng, depth + 1)
        return obj, k
    return None


def mutate_parts(tensors: dict, meta: dict, rng: random.Random) -> tuple[dict, dict]:
    """One to three structural mutations of (tensors, graph JSON)."""
    tensors, meta = dict(tensors), copy.deepcopy(meta)
    nodes = meta.get("nodes") if isinstance(meta.get("nodes"), list) else []
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(16)
        if op == 0 and nodes:  # drop a node
            nodes.pop(rng.randrange(len(nodes)))
        elif op == 1 and nodes:  # duplicate a node
            i = rng.randrange(len(nodes))
            nodes.insert(rng.randrange(len(nodes) + 1), copy.deepcopy(nodes[i]))
        elif op == 2 and len(nodes) > 1:  # reorder
            i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif op == 3 and nodes:  # self / forward reference (cycle)
            i = rng.randrange(len(nodes))
            j = rng.randrange(i, len(nodes))
            if isinstance(nodes[i], dict) and isinstance(nodes[j], dict):
                nodes[i]["inputs"] = [nodes[j].get("name")] + list(nodes[i].get("inputs") or [])[1:]
        elif op == 4:  # any value anywhere → a weird value
            where = _pick_path(meta, rng)
            if where:
                where[0][where[1]] = _weird_value(rng)
        elif op == 5:  # top-level field → weird
            meta[rng.choice(["T", "input_shape", "event", "num_classes", "output", "source", "nodes"])] = _weird_value(rng)
        elif op == 6:  # huge / negative ints for shapes, T, kernel, stride, padding
            key = rng.choice(["T", "num_classes"])
            meta[key] = rng.choice([0, -1, 100_000, 100_001, 2**31, 10**12])
        elif op == 7:
            meta["input_shape"] = rng.choice([[1, 10**6, 10**6], [0, 8, 8], [-1, 8, 8], [3, 8], [3, 8, 8, 1],
                                              [2, 8, 8], [10**12, 1, 1], [3, 9, 9], [3, 1, 1]])
        elif op == 8 and nodes:  # int attribute → extreme
            n = rng.choice(nodes)
            if isinstance(n, dict):
                n[rng.choice(["stride", "padding", "kernel"])] = rng.choice(
                    [0, -1, 1, 2, 3, 10**4, 10**6, 10**9, 10**18, 2**64])
        elif op == 9 and tensors:  # drop a tensor
            tensors.pop(rng.choice(sorted(tensors)))
        elif op == 10:  # extra tensor
            name = rng.choice(["extra", "input.weight", f"{rng.choice(sorted(tensors) or ['x'])}.x"])
            tensors[name] = torch.zeros(rng.choice([0, 1, 5]))
        elif op == 11 and tensors:  # retype a tensor
            k = rng.choice(sorted(tensors))
            dt = rng.choice([torch.uint8, torch.int8, torch.int32, torch.int64, torch.float32])
            tensors[k] = tensors[k].to(dt).contiguous()
        elif op == 12 and tensors:  # reshape / resize a tensor
            k = rng.choice(sorted(tensors))
            t = tensors[k]
            choice = rng.randrange(4)
            if choice == 0:
                tensors[k] = t.reshape(-1).contiguous()
            elif choice == 1:
                tensors[k] = t.reshape(1, *t.shape).contiguous()
            elif choice == 2:
                tensors[k] = t.reshape(-1)[: max(0, t.numel() - 1)].contiguous()
            else:
                tensors[k] = torch.cat([t.reshape(-1), t.reshape(-1)[:1]]).contiguous()
        elif op == 13 and tensors:  # poison float values
            k = rng.choice(sorted(tensors))
            if tensors[k].dtype == torch.float32 and tensors[k].numel():
                t = tensors[k].clone()
                t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), -float("inf"), 1e38, 0.0])
                tensors[k] = t
        elif op == 14 and nodes:  # packing entry mutations
            n = rng.choice(nodes)
            if isinstance(n, dict):
                n["packing"] = rng.choice([
                    {"scheme": "trit2", "shape": (n.get("packing") or {}).get("shape", [1])}
                    if isinstance(n.get("packing"), dict) else {"scheme": "sign1", "shape": [1]},
                    {"scheme": "sign1", "shape": [10**12]}, {"scheme": "trit5", "shape": [-3, 3]},
                    {"scheme": "sign1", "shape": [1e400 if False else 1e308]}, {"scheme": "x"}, "sign1", None, [],
                    {"scheme": "trit5", "shape": 5}, {"scheme": "sign1", "shape": ["a"]},
                ])
        elif op == 15 and nodes:  # type tag → another
            n = rng.choice(nodes)
            if isinstance(n, dict):
                n["type"] = rng.choice(["conv", "linear", "neuron", "seca", "add", "pool", "flatten", "node", "Node", 1])
    return tensors, meta


def _insert_junk(b: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(b))
    b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return b


def _header_length(b: bytearray, rng: random.Random) -> bytearray:
    """Rewrite the 8-byte header length."""
    b[:8] = rng.choice([0, 1, 7, 2**24, 2**63, 2**64 - 1, len(b), len(b) - 8]).to_bytes(8, "little")
    return b


def byte_mutation(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return _driver.byte_mutation(data, other, rng, (_insert_junk, _header_length))


# ------------------------------------------------------------------------------ oracle
def check(path: Path) -> str:
    """'ok', 'refused: <msg>', 'too-large: ...'; raises on a finding."""
    try:
        model = load_hmdf(path)
    except HmdfError as e:
        return "refused: " + _normalise(str(e))

    total = 0
    for shape in model.shapes().values():
        n = 1
        for d in shape:
            n *= d
        total += n
    if total > MAX_RUN_ELEMENTS:
        raise AcceptedTooLarge(f"load_hmdf accepted a model with {total} activation elements per sample")
    x = torch.rand(model.T, 1, *model.input_shape, generator=torch.Generator().manual_seed(0))
    y = Reference(model).run(x)
    if tuple(y.shape) != (model.T, 1, model.num_classes):
        raise AssertionError(f"Reference.run returned shape {tuple(y.shape)}")
    return "ok"


class AcceptedTooLarge(Exception):
    pass


def _normalise(msg: str) -> str:
    """The message without the temp path and numbers, to count distinct kinds of refusal."""
    import re

    msg = msg.split(": ", 1)[1] if msg.startswith("/") else msg
    return re.sub(r"\d+", "N", msg)[:120]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crashes", type=Path, default=ROOT / "fuzz" / "crashes")
    ap.add_argument("--mem-gb", type=float, default=6.0, help="address-space cap (0: none)")
    ap.add_argument("--atheris", action="store_true", help="run under atheris instead of the plain loop")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fuzz-hmdf-"))
    seeds = make_seeds(work)
    seed_bytes = [p.read_bytes() for p in seeds]
    seed_parts = [read_container(p) for p in seeds]
    cap_memory(args.mem_gb)
    target = work / "case.hmdf"
    if args.atheris:
        return run_atheris(seed_parts, seed_bytes, target, args)

    rng = random.Random(args.seed)
    campaign = Campaign(args.crashes, "hmdf", ".hmdf", _normalise)
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        campaign.iterations += 1
        i = rng.randrange(len(seeds))
        try:
            if rng.random() < 0.6:
                tensors, meta = mutate_parts(*seed_parts[i], rng)
                write_container(target, tensors, meta)
                data = target.read_bytes()
            else:
                data = byte_mutation(seed_bytes[i], rng.choice(seed_bytes), rng)
                target.write_bytes(data)
        except (ValueError, TypeError):  # the writer refused the mutation: not a test of the reader
            continue
        campaign.run(data, target, check)
    ok = campaign.outcomes.get("ok", 0)
    return campaign.report(
        f"fuzz_hmdf: {campaign.iterations} iterations in {time.monotonic() - start:.0f} s (seed {args.seed}), "
        f"{ok} mutants loaded and ran, {len(campaign.outcomes) - ('ok' in campaign.outcomes)} distinct refusals", top=25)


def run_atheris(seed_parts, seed_bytes, target: Path, args) -> int:
    def one(fdp) -> None:
        rng = random.Random(fdp.ConsumeInt(8))
        i = rng.randrange(len(seed_parts))
        try:
            if fdp.ConsumeBool():
                write_container(target, *mutate_parts(*seed_parts[i], rng))
            else:
                target.write_bytes(byte_mutation(seed_bytes[i], rng.choice(seed_bytes), rng))
        except (ValueError, TypeError):
            return
        check(target)

    return _driver.run_atheris(one, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
