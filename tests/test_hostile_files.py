"""Hostile inputs one level above the container: valid files whose graph JSON, tensors or arrays
were mutated (and re-written so the checksum holds), truncated/random events.npz archives and a
malicious training-state pickle. Only HmdfError may escape, nothing from a file is executed, and a
header claiming an absurd size is refused before anything that size is allocated.

The bugs these tests found are fixed; each keeps a pinned test (source metadata, huge strides and
paddings, sensor sizes, corrupt zip members). The longer-running fuzzers live in fuzz/.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))

from fuzz_events import mutate_arrays, save_npz, seed_arrays  # noqa: E402
from fuzz_hmdf import mutate_parts  # noqa: E402
from nets import make_deploy  # noqa: E402

from hmdf_deploy.deploy import Reference, load_hmdf, save_hmdf  # noqa: E402
from hmdf_deploy.deploy.container import read_container, write_container  # noqa: E402
from hmdf_deploy.errors import HmdfError  # noqa: E402
from hmdf_deploy.event_stream import iter_frames  # noqa: E402
from hmdf_deploy.events import read_events  # noqa: E402
from hmdf_deploy.models import ModelConfig  # noqa: E402
from hmdf_deploy.training.checkpoint import load_state  # noqa: E402

HOSTILE = settings(max_examples=60, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_PEAK = 32 * 2**20  # bytes of Python/numpy allocation allowed while refusing or loading a tiny file
MAX_RUN_ELEMENTS = 2_000_000

def site(exc: BaseException) -> tuple[str, str]:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "hmdf_deploy" in f.filename]
    return type(exc).__name__, (frames[-1].name if frames else "?")


def only_hmdf_error(call) -> str:
    """Run `call`; 'ok', 'refused', or 'known-bug'; anything else fails the test."""
    try:
        call()
        return "ok"
    except HmdfError:
        return "refused"
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"{type(e).__name__} escaped at {site(e)}: {e}") from e


def traced_peak(call):
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------------- .hmdf
@pytest.fixture(scope="module")
def seed_parts(tmp_path_factory):
    cfg = ModelConfig(arch="vgg", cfg=[4, "M", 4, "G"], input_size=(8, 8), T=2, weights="1.5bit",
                      spikes="4bit", seca=2, mem_bn=True, pool="max", num_classes=3)
    path = tmp_path_factory.mktemp("seed") / "seed.hmdf"
    save_hmdf(make_deploy(cfg, False, seed=0), path)
    return read_container(path)


def write_parts(path: Path, tensors: dict, meta: dict) -> None:
    write_container(path, tensors, meta)


def load_and_run(path: Path) -> None:
    model, peak = traced_peak(lambda: load_hmdf(path))
    assert peak < MAX_PEAK, f"load_hmdf allocated {peak} bytes for a {path.stat().st_size}-byte file"
    total = sum(int(np.prod(s, dtype=object)) for s in model.shapes().values())
    if total > MAX_RUN_ELEMENTS:  # valid but too big to run in a unit test
        return
    x = torch.rand(model.T, 1, *model.input_shape, generator=torch.Generator().manual_seed(0))
    assert Reference(model).run(x).shape == (model.T, 1, model.num_classes)


@HOSTILE
@given(rng=st.randoms(use_true_random=False))
def test_graph_mutations_raise_only_hmdf_error(seed_parts, tmp_path, rng):
    try:
        tensors, meta = mutate_parts(*seed_parts, rng)
        write_parts(tmp_path / "m.hmdf", tensors, meta)
    except (ValueError, TypeError):
        return  # the writer refused the mutation itself
    only_hmdf_error(lambda: load_and_run(tmp_path / "m.hmdf"))


def test_unmutated_seed_loads_and_runs(seed_parts, tmp_path):
    write_parts(tmp_path / "m.hmdf", *seed_parts)
    load_and_run(tmp_path / "m.hmdf")


def _first(meta: dict, kind: str) -> dict:
    return next(n for n in meta["nodes"] if n["type"] == kind)


@pytest.mark.parametrize("mutate", [
    lambda t, m: _first(m, "conv").__setitem__("packing", {"scheme": "sign1", "shape": [10**6, 10**6]}),
    lambda t, m: _first(m, "conv").__setitem__("packing", {"scheme": "trit5", "shape": [2**62, 2**62]}),
    lambda t, m: m.__setitem__("input_shape", [10**6, 10**6, 10**6]),
    lambda t, m: m.__setitem__("T", 10**12),
    lambda t, m: m.__setitem__("nodes", [_first(m, "conv")] * 10_000),
], ids=["packing-1e12", "packing-2^124", "input-1e18", "T-1e12", "10k-duplicate-nodes"])
def test_absurd_sizes_are_refused_before_allocation(seed_parts, tmp_path, mutate):
    import copy

    tensors, meta = dict(seed_parts[0]), copy.deepcopy(seed_parts[1])
    mutate(tensors, meta)
    write_parts(tmp_path / "m.hmdf", tensors, meta)
    with pytest.raises(HmdfError):
        _, peak = traced_peak(lambda: load_hmdf(tmp_path / "m.hmdf"))
    # re-measure: pytest.raises swallowed the peak
    tracemalloc.start()
    try:
        load_hmdf(tmp_path / "m.hmdf")
    except HmdfError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < MAX_PEAK


def _mutated(seed_parts, tmp_path, edit) -> Path:
    import copy

    tensors, meta = dict(seed_parts[0]), copy.deepcopy(seed_parts[1])
    edit(meta)
    write_parts(tmp_path / "m.hmdf", tensors, meta)
    return tmp_path / "m.hmdf"


@pytest.mark.parametrize("source", [5, [1], "ab", True])
def test_source_not_an_object(seed_parts, tmp_path, source):
    path = _mutated(seed_parts, tmp_path, lambda m: m.__setitem__("source", source))
    with pytest.raises(HmdfError):
        load_hmdf(path)


def test_stride_beyond_int64(seed_parts, tmp_path):
    path = _mutated(seed_parts, tmp_path, lambda m: _first(m, "pool").__setitem__("stride", 2**64))
    try:
        model = load_hmdf(path)
    except HmdfError:
        return
    Reference(model).run(torch.rand(model.T, 1, *model.input_shape))


def test_huge_padding_is_accepted(seed_parts, tmp_path):
    path = _mutated(seed_parts, tmp_path, lambda m: _first(m, "conv").__setitem__("padding", 10**6))
    with pytest.raises(HmdfError):
        load_hmdf(path)


# ----------------------------------------------------------------------------------- events.npz
@pytest.fixture(scope="module")
def event_seeds():
    return seed_arrays(np.random.default_rng(0))


def events_oracle(path: Path) -> list[str]:
    def frames(**kw):
        _, it = iter_frames(path, **kw)
        for i, _ in enumerate(it):
            assert i < 100_000, "iter_frames yields unboundedly many frames for a tiny file"

    return [only_hmdf_error(lambda: read_events(path)),
            only_hmdf_error(lambda: frames(time_window=1000)),
            only_hmdf_error(lambda: frames(event_count=64, size=(4, 3)))]


@HOSTILE
@given(rng=st.randoms(use_true_random=False), which=st.integers(0, 2), compressed=st.booleans())
def test_event_array_mutations_raise_only_hmdf_error(event_seeds, tmp_path, rng, which, compressed):
    try:
        data = save_npz(mutate_arrays(event_seeds[which][0], rng), compressed)
    except (ValueError, TypeError, OverflowError):
        return
    (tmp_path / "e.npz").write_bytes(data)
    _, peak = traced_peak(lambda: events_oracle(tmp_path / "e.npz"))
    assert peak < 256 * 2**20


def test_valid_event_seeds_are_read(event_seeds, tmp_path):
    for i, (arrays, compressed) in enumerate(event_seeds):
        (tmp_path / f"{i}.npz").write_bytes(save_npz(arrays, compressed))
        read_events(tmp_path / f"{i}.npz")
    _, frames = iter_frames(tmp_path / "0.npz", time_window=1000)
    assert sum(1 for _ in frames) >= 1


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_event_files_raise_only_hmdf_error(event_seeds, tmp_path, compressed):
    data = save_npz(event_seeds[0][0], compressed)
    path = tmp_path / "t.npz"
    offsets = sorted({*range(0, 64), *range(0, len(data), max(1, len(data) // 150)), len(data) - 1})
    for cut in offsets:
        path.write_bytes(data[:cut])
        events_oracle(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_event_files_read_events_refuses(event_seeds, tmp_path, compressed):
    data = save_npz(event_seeds[0][0], compressed)
    path = tmp_path / "t.npz"
    for cut in range(0, len(data), max(1, len(data) // 150)):
        path.write_bytes(data[:cut])
        with pytest.raises(HmdfError):
            read_events(path)


@HOSTILE
@given(data=st.binary(max_size=400), zip_magic=st.booleans())
def test_random_bytes_as_events(tmp_path, data, zip_magic):
    path = tmp_path / "r.npz"
    path.write_bytes((b"PK\x03\x04" if zip_magic else b"") + data)
    events_oracle(path)


def test_iter_frames_on_a_corrupt_member(event_seeds, tmp_path):
    data = bytearray(save_npz(event_seeds[1][0], False))
    i = data.find(b"x.npy") + 200  # inside the stored x.npy payload: CRC-32 mismatch at end of read
    data[i] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(data))
    with pytest.raises(HmdfError):
        read_events(tmp_path / "c.npz")  # read_events refuses it
    with pytest.raises(HmdfError, match="Bad CRC"):  # at open or while streaming: either way one line
        _, frames = iter_frames(tmp_path / "c.npz", time_window=1000)
        list(frames)


@pytest.mark.parametrize("size", [[2**40, 2**40, 2], [8, 6]], ids=["huge", "two-values"])
def test_iter_frames_sensor_size(event_seeds, tmp_path, size):
    arrays = dict(event_seeds[1][0], sensor_size=np.array(size, np.int64))
    (tmp_path / "s.npz").write_bytes(save_npz(arrays, False))
    with pytest.raises(HmdfError):
        _, frames = iter_frames(tmp_path / "s.npz", time_window=1000)
        list(frames)


# ----------------------------------------------------------------------------------- checkpoints
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", ["bare", "in-dict", "torch-save"])
def test_malicious_training_state_is_refused_and_not_executed(tmp_path, wrap):
    marker = tmp_path / "PWNED"
    path = tmp_path / "train_state.pt"
    evil = _Evil(marker)
    if wrap == "torch-save":
        torch.save({"model": {"w": torch.zeros(2)}, "step": evil}, path)
    else:
        path.write_bytes(pickle.dumps(evil if wrap == "bare" else {"step": evil}, protocol=2))
    with pytest.raises(HmdfError):
        load_state(path)
    assert not marker.exists(), "load_state executed code from the file"


@pytest.mark.parametrize("data", [b"", b"\x80\x02", os.urandom(64), b"PK\x03\x04" + bytes(60)])
def test_garbage_training_state_is_refused(tmp_path, data):
    (tmp_path / "train_state.pt").write_bytes(data)
    with pytest.raises(HmdfError):
        load_state(tmp_path / "train_state.pt")
