"""Long recordings in bounded memory: read an events.npz in chunks and bin it frame by frame.

`read_events` (events.py) loads a whole file; a recording from a real sensor can be larger than
memory. `iter_frames` streams the `.npy` members of the archive chunk by chunk (each chunk is
validated like a whole stream, and the order of timestamps is checked across chunks) and yields
one (P, H, W) frame at a time, binned by `time_window` (µs) or `event_count` with the same
boundaries as `to_frames`. Memory holds one chunk and one frame, whatever the file's length.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import _FIELDS, MAX_BIN, _check_sensor_size, resize_frames, validate_events

CHUNK_EVENTS = 1 << 18
#: One frame's cells (P·H·W): 2**26 covers a 2×4096×8192 sensor and bounds a frame to 512 MiB.
MAX_SENSOR_CELLS = 2**26


@dataclass
class StreamHeader:
    sensor_size: tuple[int, int, int]  # (W, H, P)
    label: int | None
    events: int


class _NpyReader:
    """A 1-D `.npy` member of a zip read sequentially; refuses object (pickled) arrays."""

    def __init__(self, zf: zipfile.ZipFile, member: str, where: str, shape_1d: bool = True) -> None:
        if not member.endswith(".npy"):
            raise HmdfError(f"{where}: member '{member}' is not a numpy array (.npy) entry")
        self.f = zf.open(member)
        version = np.lib.format.read_magic(self.f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise HmdfError(f"{where}: member {member} has .npy version {version}, expected 1.0 or 2.0")
        shape, fortran, self.dtype = read_header[version](self.f)
        if self.dtype.hasobject:
            raise HmdfError(f"{where}: key '{member[:-4]}' holds a pickled object array; hmdf never unpickles event files")
        if shape_1d and len(shape) != 1:
            raise HmdfError(f"{where}: key '{member[:-4]}' must be 1-D, got shape {shape}")
        self.remaining = shape[0] if shape else 1

    def read(self, n: int) -> np.ndarray:
        n = min(n, self.remaining)
        raw = self.f.read(n * self.dtype.itemsize)
        if len(raw) != n * self.dtype.itemsize:
            raise HmdfError(f"{self.f.name}: the array ends early (truncated file)")
        self.remaining -= n
        return np.frombuffer(raw, self.dtype)


def _small(zf: zipfile.ZipFile, member: str) -> np.ndarray:
    with zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def open_event_stream(path: Path, chunk_events: int = CHUNK_EVENTS,
                      sensor_size: tuple[int, int, int] | None = None) -> tuple[StreamHeader, Iterator[dict]]:
    """The header of an events.npz and an iterator over its events as dicts of x, y, t, p chunks.

    Supports the Tonic layout (`events` + `sensor_size`) and separate `x, y, t, p` arrays with a
    `sensor_size`, or without one when the caller gives it (unlike `read_events`, a stream cannot
    infer it: that would take a pass over all events); files holding only pre-binned frames are
    not streams (use `read_events`).
    """
    path = Path(path)
    where = str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise HmdfError(f"events file not found: {path}") from None
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError):
        raise HmdfError(f"{where}: not an .npz archive (expected a zip written by numpy.savez)") from None
    names = set(zf.namelist())
    try:
        return _open(zf, names, path, where, chunk_events, sensor_size)
    except ZIP_ERRORS as e:
        raise HmdfError(f"{where}: unreadable .npz archive ({type(e).__name__}: {e})") from None


#: What a corrupt or unusual zip member raises while it is read.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def _open(zf: zipfile.ZipFile, names: set[str], path: Path, where: str, chunk_events: int, sensor_size):
    try:
        for member in sorted(names):  # refuse a pickle anywhere in the file, not only where we read
            _NpyReader(zf, member, where, shape_1d=False)
        if "frames.npy" in names and "events.npy" not in names and "x.npy" not in names:
            raise HmdfError(f"{where} holds pre-binned frames: run it without --time-window / --event-count")
        if "sensor_size.npy" in names:
            size = _check_sensor_size(_small(zf, "sensor_size.npy"), where)
        elif "events.npy" in names:  # Tonic's layout always carries it (as `read_events` requires)
            raise HmdfError(f"{where}: missing key 'sensor_size' (W, H, P) next to 'events'.")
        elif sensor_size is not None:
            size = _check_sensor_size(sensor_size, where)
        else:
            raise HmdfError(f"{where}: streaming needs a 'sensor_size' key (W, H, P)")
        label = None
        if "label.npy" in names:
            value = _small(zf, "label.npy")
            if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
                raise HmdfError(f"{where}: key 'label' must be a single integer, got {value.dtype} of shape {value.shape}")
            label = int(value.reshape(()))
        if "events.npy" in names:
            readers = {"events": _NpyReader(zf, "events.npy", where)}
        elif all(f"{k}.npy" in names for k in _FIELDS):
            readers = {k: _NpyReader(zf, f"{k}.npy", where) for k in _FIELDS}
        else:
            raise HmdfError(f"{where}: missing keys; streaming needs 'events' or 'x', 'y', 't', 'p'")
    except ValueError as e:  # read_array refuses pickles and malformed headers
        raise HmdfError(f"{where}: unreadable key ({e})") from None
    total = next(iter(readers.values())).remaining
    if len({r.remaining for r in readers.values()}) != 1:
        raise HmdfError(f"{where}: fields x, y, t, p have different lengths")
    return StreamHeader(size, label, total), _chunks(zf, readers, chunk_events, where)


def _chunks(zf: zipfile.ZipFile, readers: dict[str, _NpyReader], n: int, where: str) -> Iterator[dict]:
    try:
        yield from _read_chunks(zf, readers, n, where)
    except ZIP_ERRORS as e:
        raise HmdfError(f"{where}: unreadable .npz archive ({type(e).__name__}: {e})") from None


def _read_chunks(zf: zipfile.ZipFile, readers: dict[str, _NpyReader], n: int, where: str) -> Iterator[dict]:
    with zf:
        first = next(iter(readers.values()))
        while first.remaining:
            if "events" in readers:
                arr = readers["events"].read(n)
                missing = set(_FIELDS) - set(arr.dtype.names or ())
                if missing:
                    raise HmdfError(f"{where}: key 'events' must be a structured array with fields x, y, t, p")
                yield {k: arr[k] for k in _FIELDS}
            else:
                yield {k: r.read(n) for k, r in readers.items()}


def iter_frames(path: Path, size: tuple[int, int] | None = None, *, time_window: int | None = None,
                event_count: int | None = None, chunk_events: int = CHUNK_EVENTS,
                sensor_size: tuple[int, int, int] | None = None) -> tuple[StreamHeader, Iterator[np.ndarray]]:
    """Frames (P, H, W) float32 of a recording, one at a time, binned as `to_frames` would;
    `sensor_size` (W, H, P) for a file that carries none."""
    if (time_window is None) == (event_count is None):
        raise HmdfError("give exactly one of time_window, event_count")
    step = time_window if time_window is not None else event_count
    if not 1 <= step <= MAX_BIN:
        raise HmdfError(f"{'time_window' if time_window is not None else 'event_count'} must be an integer from 1 "
                        f"to 2**62, got {step}")
    header, chunks = open_event_stream(path, chunk_events, sensor_size)
    if header.events == 0:
        raise HmdfError(f"{path}: the event stream is empty (no events)")
    return header, _binned(str(path), header, chunks, time_window, event_count, size)


def _binned(where, header, chunks, time_window, event_count, size) -> Iterator[np.ndarray]:
    w, h, n_pol = header.sensor_size
    if n_pol * h * w > MAX_SENSOR_CELLS:
        raise HmdfError(f"{where}: a {n_pol}×{h}×{w} sensor is too large to bin")
    frame = np.zeros(n_pol * h * w, np.float64)
    current, seen, t0, last_t = 0, 0, None, None

    def emit(f):
        out = f.reshape(n_pol, h, w).astype(np.float32)
        return out if size is None else resize_frames(out, size)

    for fields in chunks:
        ev, _ = validate_events(fields, header.sensor_size, where)
        t = ev["t"]
        if last_t is not None and t[0] < last_t:
            raise HmdfError(f"{where}: timestamps t are not sorted (t={int(t[0])} after t={last_t})")
        t0 = int(t[0]) if t0 is None else t0
        last_t = int(t[-1])
        if time_window is not None:
            bins = (t - t0) // time_window
        else:
            bins = (seen + np.arange(len(ev))) // event_count
        seen += len(ev)
        flat = ((ev["p"].astype(np.int64) * h + ev["y"]) * w + ev["x"])
        edges = np.flatnonzero(np.diff(bins)) + 1
        for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(ev)]):
            while current < bins[lo]:  # frames before this segment are complete (maybe empty)
                yield emit(frame)
                frame = np.zeros_like(frame)
                current += 1
            frame += np.bincount(flat[lo:hi], minlength=frame.size)
    yield emit(frame)
