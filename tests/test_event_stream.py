"""Chunked reading of long recordings (event_stream.py): same frames as whole-file binning, bounded memory."""

from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.event_stream import iter_frames
from hmdf_deploy.events import EVENT_DTYPE, EventRecording, make_events, read_events, to_frames, write_events


def random_events(n: int, seed: int = 0, size: int = 32, span: int = 1_000_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, span, n))
    return make_events(rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n))


@pytest.fixture
def tonic_file(tmp_path):
    path = tmp_path / "rec.npz"
    write_events(path, EventRecording(random_events(5003), (32, 32, 2), label=7))
    return path


@pytest.mark.parametrize("binning", [{"time_window": 40_000}, {"time_window": 997}, {"event_count": 1000},
                                     {"event_count": 1}, {"event_count": 9999}])
@pytest.mark.parametrize("chunk", [1, 97, 5003, 100_000])
def test_chunked_frames_equal_whole_file_binning(tonic_file, binning, chunk):
    rec = read_events(tonic_file)
    want = to_frames(rec.events, rec.sensor_size, size=(16, 16), **binning)
    header, frames = iter_frames(tonic_file, (16, 16), chunk_events=chunk, **binning)
    got = np.stack(list(frames))
    assert header.label == 7 and header.events == 5003 and header.sensor_size == (32, 32, 2)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 5003


def test_separate_arrays_layout_streams_too(tmp_path):
    ev = random_events(777, seed=3)
    path = tmp_path / "sj.npz"
    np.savez(path, x=ev["x"], y=ev["y"], t=ev["t"], p=ev["p"], sensor_size=np.array([32, 32, 2]))
    _, frames = iter_frames(path, None, event_count=100, chunk_events=50)
    np.testing.assert_array_equal(np.stack(list(frames)), to_frames(ev, (32, 32, 2), event_count=100))


def test_unsorted_across_a_chunk_boundary_is_refused(tmp_path):
    ev = random_events(200)
    ev["t"][100:] -= ev["t"][99] + 1  # each chunk sorted on its own, the second starts earlier
    ev["t"][100:] = np.sort(np.abs(ev["t"][100:]))
    ev["t"][100] = 0
    path = tmp_path / "bad.npz"
    np.savez(path, events=ev, sensor_size=np.array([32, 32, 2]))
    _, frames = iter_frames(path, None, event_count=10, chunk_events=100)
    with pytest.raises(HmdfError, match="not sorted"):
        list(frames)


def test_bad_streams_are_refused(tmp_path):
    obj = tmp_path / "pickle.npz"
    np.savez(obj, events=np.array([{"x": 1}], dtype=object), sensor_size=np.array([32, 32, 2]))
    with pytest.raises(HmdfError, match="pickled object array"):
        iter_frames(obj, None, event_count=10)
    no_size = tmp_path / "nosize.npz"
    np.savez(no_size, events=random_events(10))
    with pytest.raises(HmdfError, match="sensor_size"):
        iter_frames(no_size, None, event_count=10)
    not_zip = tmp_path / "x.npz"
    not_zip.write_bytes(b"hello")
    with pytest.raises(HmdfError, match="not an .npz"):
        iter_frames(not_zip, None, event_count=10)
    empty = tmp_path / "empty.npz"
    np.savez(empty, events=np.empty(0, EVENT_DTYPE), sensor_size=np.array([32, 32, 2]))
    with pytest.raises(HmdfError, match="empty"):
        iter_frames(empty, None, event_count=10)
    outside = tmp_path / "outside.npz"
    ev = random_events(50)
    ev["x"][20] = 40
    np.savez(outside, events=ev, sensor_size=np.array([32, 32, 2]))
    _, frames = iter_frames(outside, None, event_count=10)
    with pytest.raises(HmdfError, match="outside the sensor"):
        list(frames)
    with pytest.raises(HmdfError, match="exactly one"):
        iter_frames(outside, None)


def _write_large(path, n: int, chunk: int) -> None:
    """A Tonic-layout events.npz of n events written chunk by chunk (never whole in memory)."""
    header = {"descr": np.lib.format.dtype_to_descr(EVENT_DTYPE), "fortran_order": False, "shape": (n,)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        with zf.open("sensor_size.npy", "w") as f:
            np.lib.format.write_array(f, np.array([32, 32, 2], np.int64))
        with zf.open("events.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            t0 = 0
            for start in range(0, n, chunk):
                ev = random_events(min(chunk, n - start), seed=start, span=1000)
                ev["t"] += t0
                t0 = int(ev["t"][-1])
                f.write(ev.tobytes())


def test_memory_stays_bounded_on_a_long_recording(tmp_path):
    """6 M events (78 MB of events) stream with a peak far below the file's size."""
    n = 6_000_000
    path = tmp_path / "long.npz"
    _write_large(path, n, chunk=500_000)
    tracemalloc.start()
    try:
        header, frames = iter_frames(path, (16, 16), time_window=50_000, chunk_events=1 << 16)
        total = sum(float(f.sum()) for f in frames)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == n == header.events
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB for a {n * EVENT_DTYPE.itemsize / 2**20:.0f} MiB stream"
