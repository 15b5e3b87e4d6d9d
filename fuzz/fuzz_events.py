"""Mutation fuzzer for events.npz files: only HmdfError may escape `read_events` or a fully
consumed `iter_frames` (both time_window and event_count binning).

    python fuzz/fuzz_events.py --seconds 600 [--seed 0] [--crashes fuzz/crashes]
    python fuzz/fuzz_events.py --atheris          # libFuzzer-driven, if `pip install atheris` works

Seeds: a Tonic-layout file (events + sensor_size + label + origin, compressed), a separate
x/y/t/p file (uncompressed) and a frames-only file. Each iteration applies byte flips,
truncation, a splice with another seed or random bytes, or an array-level mutation (drop/add/
rename keys, change dtypes and shapes, extreme values, object arrays, unsorted or negative
timestamps, huge sensor sizes) re-saved with numpy.savez[_compressed]. Anything else that
escapes is a finding, saved under --crashes; the address space is capped (--mem-gb) so an
absurd allocation is an exception, not an OOM kill.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hmdf_deploy.errors import HmdfError
import _driver
from _driver import Campaign, cap_memory
from hmdf_deploy.event_stream import iter_frames
from hmdf_deploy.events import EventRecording, make_events, read_events, write_events

ROOT = Path(__file__).resolve().parents[1]


def seed_arrays(rng: np.random.Generator) -> list[tuple[dict, bool]]:
    n = 200
    x, y = rng.integers(0, 8, n), rng.integers(0, 6, n)
    t, p = np.sort(rng.integers(0, 5000, n)), rng.integers(0, 2, n)
    ev = make_events(x, y, t, p)
    tonic = {"events": ev, "sensor_size": np.array([8, 6, 2], np.int64), "label": np.array(3, np.int64),
             "origin": np.array("seed")}
    split = {"x": ev["x"].copy(), "y": ev["y"].copy(), "t": ev["t"].copy(), "p": ev["p"].copy(),
             "sensor_size": np.array([8, 6, 2], np.int64)}
    frames = {"frames": rng.poisson(1.0, (3, 2, 6, 8)).astype(np.float32), "label": np.array(1)}
    return [(tonic, True), (split, False), (frames, True)]


def save_npz(arrays: dict, compressed: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------------------ mutations
_DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64, np.float32, np.float64,
           np.bool_, "U3", "S2", "V4", object]


def _extreme(dtype, rng: random.Random):
    kind = np.dtype(dtype).kind
    if kind in "iu":
        info = np.iinfo(dtype)
        return rng.choice([info.min, info.max, 0, -1 if kind == "i" else 0, 1])
    if kind == "f":
        return rng.choice([np.nan, np.inf, -np.inf, -1.0, 1e30, 0.5])
    return 0


def mutate_arrays(arrays: dict, rng: random.Random) -> dict:
    a = {k: np.array(v, copy=True) for k, v in arrays.items()}
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(12)
        keys = sorted(a)
        k = rng.choice(keys) if keys else "events"
        if op == 0 and keys:  # drop a key
            a.pop(k)
        elif op == 1:  # add / rename a key
            new = rng.choice(["events", "x", "y", "t", "p", "frames", "sensor_size", "label", "origin", "junk"])
            if keys and rng.random() < 0.5:
                a[new] = a.pop(k)
            else:
                a[new] = np.array(rng.choice([0, [1, 2, 3], "s", 1.5]))
        elif op == 2 and keys:  # dtype change
            try:
                a[k] = a[k].astype(rng.choice(_DTYPES))
            except (ValueError, TypeError, OverflowError):
                pass
        elif op == 3 and keys:  # shape change
            v = a[k]
            a[k] = rng.choice([v.reshape(-1)[:0], v.reshape(1, -1) if v.size else v, v.reshape(-1)[:1],
                               np.concatenate([v.reshape(-1), v.reshape(-1)]) if v.ndim else v, v[..., None]])
        elif op == 4 and keys and a[k].size and a[k].dtype.names is None and a[k].dtype.kind in "iuf":
            v = a[k].reshape(-1)  # extreme element
            v[rng.randrange(v.size)] = _extreme(v.dtype, rng)
        elif op == 5 and "events" in a and a["events"].dtype.names and a["events"].size:
            f = rng.choice(a["events"].dtype.names)
            v = a["events"][f].reshape(-1)
            v[rng.randrange(v.size)] = _extreme(v.dtype, rng)
        elif op == 6:  # huge / odd sensor sizes
            a["sensor_size"] = np.array(rng.choice([[2**40, 2**40, 2], [32768, 32768, 2], [65536, 2, 2], [0, 6, 2],
                                                    [-8, 6, 2], [8, 6], [8, 6, 2, 1], [8, 6, 128], [8.5, 6, 2],
                                                    [8, 6, 2**31]]))
        elif op == 7 and keys:  # object array (pickle) – must be refused without unpickling
            a[k] = np.array([{"a": 1}, None], dtype=object)
        elif op == 8 and "events" in a and a["events"].dtype.names and a["events"].size > 1:
            a["events"] = a["events"][::-1].copy()  # unsorted timestamps
        elif op == 9 and keys:  # structured dtype with missing / wrong fields
            a[k] = np.zeros(5, dtype=rng.choice([[("x", "<i2"), ("t", "<i8")],
                                                 [("x", "<f4"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")],
                                                 [("x", "<i2"), ("y", "<i2"), ("t", "<u8"), ("p", "u1")]]))
        elif op == 10 and keys:  # 0-d / big arrays
            a[k] = rng.choice([np.array(7), np.zeros((0, 2, 6, 8), np.float32), np.zeros((2, 2, 6, 8), np.float32),
                               np.full((1, 2, 6, 8), -1, np.float32)])
        elif op == 11:
            a["label"] = np.array(rng.choice([2**63 - 1, -5, 1.5, "x", [1, 2]]))
    return a


def _zip_junk(b: bytearray, rng: random.Random) -> bytearray:
    return bytearray(b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))


def _extreme_word(b: bytearray, rng: random.Random) -> bytearray:
    i = rng.randrange(len(b))
    b[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
    return b


def byte_mutation(data: bytes, other: bytes, rng: random.Random) -> bytes:
    return _driver.byte_mutation(data, other, rng, (_zip_junk, _extreme_word))


# ------------------------------------------------------------------------------ oracle
def check(path: Path) -> str:
    results = []
    for call in (lambda: read_events(path),
                 lambda: _consume(iter_frames(path, time_window=1000)),
                 lambda: _consume(iter_frames(path, event_count=64, size=(4, 3)))):
        try:
            call()
            results.append("ok")
        except HmdfError as e:
            results.append("refused: " + _normalise(str(e)))
    return " | ".join(results)


def _consume(header_and_frames) -> int:
    _, frames = header_and_frames
    n = 0
    for f in frames:
        n += 1
        if n > 100_000:
            raise AssertionError("iter_frames yielded over 100000 frames for a tiny file")
    return n


def _normalise(msg: str) -> str:
    msg = re.sub(r"/\S+?\.npz", "<file>", msg)
    return re.sub(r"\d+", "N", msg)[:100]


def make_case(seeds, seed_bytes, rng: random.Random) -> bytes | None:
    i = rng.randrange(len(seeds))
    if rng.random() < 0.5:
        arrays, compressed = seeds[i]
        try:
            return save_npz(mutate_arrays(arrays, rng), rng.random() < 0.5)
        except (ValueError, TypeError, OverflowError, IndexError):
            return None
    return byte_mutation(seed_bytes[i], rng.choice(seed_bytes), rng)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crashes", type=Path, default=ROOT / "fuzz" / "crashes")
    ap.add_argument("--mem-gb", type=float, default=4.0, help="address-space cap (0: none)")
    ap.add_argument("--atheris", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-events-"))
    seeds = seed_arrays(np.random.default_rng(args.seed))
    seed_bytes = [save_npz(a, c) for a, c in seeds]
    # the library's own writer is a seed too
    rec = EventRecording(seeds[0][0]["events"], (8, 6, 2), 3, None, "seed")
    seed_bytes.append(write_events(work / "written.npz", rec).read_bytes())
    cap_memory(args.mem_gb)
    target = work / "case.npz"
    if args.atheris:
        return run_atheris(seeds, seed_bytes, target, args)
    rng = random.Random(args.seed)
    campaign = Campaign(args.crashes, "events", ".npz", _normalise)
    start = time.monotonic()
    while time.monotonic() - start < args.seconds:
        campaign.iterations += 1
        data = make_case(seeds, seed_bytes, rng)
        if data is None:
            continue
        target.write_bytes(data)
        campaign.run(data, target, check)
    return campaign.report(
        f"fuzz_events: {campaign.iterations} iterations in {time.monotonic() - start:.0f} s (seed {args.seed}), "
        f"{len(campaign.outcomes)} distinct outcomes")


def run_atheris(seeds, seed_bytes, target: Path, args) -> int:
    def one(fdp) -> None:
        case = make_case(seeds, seed_bytes, random.Random(fdp.ConsumeInt(8)))
        if case is not None:
            target.write_bytes(case)
            check(target)

    return _driver.run_atheris(one, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
