"""Event streams: read, validate, write and bin events.npz files (SPEC §8, DESIGN "events.npz").

An event stream is a set of (x, y, t, p) tuples: pixel, timestamp in microseconds, polarity.
On disk it is an ``.npz`` archive in one of three layouts, all loaded with
``allow_pickle=False`` (a file can never run code):

1. Tonic's: key ``events``, a structured array with fields ``x`` (int16), ``y`` (int16),
   ``t`` (int64, µs), ``p`` (int8 or bool), plus ``sensor_size`` = (W, H, P).
2. SpikingJelly's: separate arrays ``x``, ``y``, ``t``, ``p``; ``sensor_size`` when present,
   otherwise (max x + 1, max y + 1, 2) or the ``sensor_size`` the caller passes.
3. Pre-binned ``frames`` of shape (T, P, H, W) (event counts).

Optional keys: ``label`` (int) and ``origin`` (str). `write_events` writes layout 1 (plus
``frames`` when the recording holds them). `to_frames` turns events into a (T, P, H, W) count
tensor, the network's input.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmdf_deploy.atomic import atomic_write
from hmdf_deploy.errors import HmdfError, HmdfWarning

__all__ = [
    "EVENT_DTYPE",
    "EventRecording",
    "make_events",
    "recording_frames",
    "read_events",
    "resize_frames",
    "to_frames",
    "validate_events",
    "write_events",
]

#: Tonic's event dtype; every stream is normalised to it.
EVENT_DTYPE = np.dtype([("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "<i1")])

_FIELDS = ("x", "y", "t", "p")
_I16_MAX = np.iinfo(np.int16).max
_MAX_FRAME_CELLS = 2**31  # 8 GiB of float32: beyond this a binning option is surely a mistake
MAX_BIN = 2**62  # largest time_window (µs) / event_count: bin arithmetic stays inside int64


@dataclass
class EventRecording:
    """One recording: events (Tonic dtype, sorted by t), its sensor, and optionally a label.

    ``frames`` is set only when the file held pre-binned frames (T, P, H, W); a file that holds
    only frames has an empty ``events`` array, so check ``frames`` first.
    """

    events: np.ndarray
    sensor_size: tuple[int, int, int]  # (W, H, P), Tonic's order
    label: int | None = None
    frames: np.ndarray | None = None
    origin: str | None = None


@dataclass(frozen=True)
class Framing:
    """How a whole recording becomes a model's T input frames, as its training data was made
    (`hmdf_deploy.data.framing` knows each dataset's): ``split`` "time" (T equal time windows) or
    "count" (equal event counts, SpikingJelly's split by number), and the ``sensor_size``
    (W, H, P) of the training recordings: assumed for files that carry none (SpikingJelly's layout)
    instead of inferring it, and compared with those that do."""

    split: str = "time"
    sensor_size: tuple[int, int, int] | None = None

    def check_sensor(self, sensor_size: tuple[int, int, int], where: str) -> None:
        """Warn (`HmdfWarning`) when a recording comes from another sensor than the training data's:
        it runs, resized to the model's input, but the model never saw such frames."""
        if self.sensor_size is not None and tuple(sensor_size[:2]) != tuple(self.sensor_size[:2]):
            warnings.warn(f"{where} was recorded on a {sensor_size[0]}×{sensor_size[1]} sensor, the model's training "
                          f"data on {self.sensor_size[0]}×{self.sensor_size[1]}: its events are resized to the "
                          "model's input, which it may not recognise", HmdfWarning, stacklevel=2)


def make_events(x, y, t, p) -> np.ndarray:
    """Pack four equally long arrays into a structured array of `EVENT_DTYPE` (no validation)."""
    x, y, t, p = (np.asarray(a) for a in (x, y, t, p))
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


# --------------------------------------------------------------------------------------------
# validation


def _check_int_field(name: str, arr: np.ndarray, where: str) -> None:
    # bool is accepted for polarity only (Tonic stores p as bool in some datasets).
    ok = np.issubdtype(arr.dtype, np.integer) or (name == "p" and arr.dtype == np.bool_)
    if not ok:
        want = "an integer or bool type" if name == "p" else "an integer type"
        unit = " (microseconds)" if name == "t" else ""
        raise HmdfError(f"{where}: field '{name}' has dtype {arr.dtype}; expected {want}{unit}.")
    if arr.ndim != 1:
        raise HmdfError(f"{where}: field '{name}' must be 1-D, got shape {arr.shape}.")


def _check_sensor_size(sensor_size, where: str) -> tuple[int, int, int]:
    arr = np.asarray(sensor_size)
    if arr.shape != (3,) or not np.issubdtype(arr.dtype, np.integer) or (arr <= 0).any():
        raise HmdfError(
            f"{where}: sensor_size must be three positive integers (W, H, P), got {arr.tolist()}."
        )
    w, h, p = (int(v) for v in arr)
    if max(w, h) > _I16_MAX + 1 or p > 127:
        raise HmdfError(f"{where}: sensor_size {(w, h, p)} is too large for int16 coordinates.")
    return w, h, p


def validate_events(
    fields: dict[str, np.ndarray], sensor_size, where: str = "events"
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Check x, y, t, p arrays against the sensor; return them as one `EVENT_DTYPE` array.

    Raises `HmdfError` naming the problem (``where`` names the file or object): wrong dtypes,
    unequal lengths, an empty stream, coordinates outside the sensor, polarity out of range,
    negative or unsorted timestamps. Sorting is required, not repaired: an unsorted stream
    usually means a broken conversion, and silently sorting would hide it.
    """
    for name in _FIELDS:
        _check_int_field(name, fields[name], where)
    lengths = {len(fields[n]) for n in _FIELDS}
    if len(lengths) != 1:
        sizes = ", ".join(f"{n}={len(fields[n])}" for n in _FIELDS)
        raise HmdfError(f"{where}: fields x, y, t, p have different lengths ({sizes}).")
    if lengths == {0}:
        raise HmdfError(f"{where}: the event stream is empty (no events).")
    w, h, n_pol = _check_sensor_size(sensor_size, where)
    x, y, t = (fields[n].astype(np.int64, copy=False) for n in ("x", "y", "t"))
    p = fields["p"].astype(np.int64, copy=False)
    for name, arr, limit in (("x", x, w), ("y", y, h)):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= limit:
            axis = "width" if name == "x" else "height"
            raise HmdfError(
                f"{where}: {name} coordinates span [{lo}, {hi}], outside the sensor {axis} "
                f"{limit} (sensor_size {(w, h, n_pol)})."
            )
    if int(p.min()) < 0 or int(p.max()) >= n_pol:
        raise HmdfError(
            f"{where}: polarity p spans [{int(p.min())}, {int(p.max())}], outside [0, {n_pol - 1}] "
            f"for a sensor with {n_pol} polarities."
        )
    if fields["t"].dtype == np.uint64 and int(fields["t"].max()) > np.iinfo(np.int64).max:
        raise HmdfError(f"{where}: timestamps t exceed the int64 range.")
    if int(t.min()) < 0:
        raise HmdfError(f"{where}: timestamps t must be non-negative, found {int(t.min())}.")
    unsorted = np.flatnonzero(np.diff(t) < 0)
    if unsorted.size:
        i = int(unsorted[0])
        raise HmdfError(
            f"{where}: timestamps t are not sorted "
            f"(t[{i}]={int(t[i])} > t[{i + 1}]={int(t[i + 1])})."
        )
    return make_events(x, y, t, p), (w, h, n_pol)


def _check_frames(frames: np.ndarray, where: str) -> np.ndarray:
    if frames.ndim != 4:
        raise HmdfError(f"{where}: frames must have shape (T, P, H, W), got {frames.shape}.")
    if frames.dtype != np.bool_ and not np.issubdtype(frames.dtype, np.number):
        raise HmdfError(f"{where}: frames have dtype {frames.dtype}; expected numbers.")
    if np.issubdtype(frames.dtype, np.complexfloating) or 0 in frames.shape:
        raise HmdfError(f"{where}: frames must be real event counts with no empty axis.")
    frames = frames.astype(np.float32)
    if not np.isfinite(frames).all():
        raise HmdfError(f"{where}: frames contain NaN or infinite values.")
    if (frames < 0).any():
        raise HmdfError(f"{where}: frames hold event counts, found a negative value.")
    return frames


# --------------------------------------------------------------------------------------------
# reading


def _open_npz(path: Path):
    if not path.is_file():
        raise HmdfError(f"{path} is a directory, not an events file." if path.is_dir() else f"events file not found: {path}.")
    with open(path, "rb") as f:
        magic = f.read(4)
    # np.load would also accept .npy and (refused) pickles; insist on the documented container.
    if magic != b"PK\x03\x04":
        raise HmdfError(f"{path}: not an .npz archive (expected a zip written by numpy.savez).")
    # NpzFile on our own handle rather than np.load(path): np.load leaves its file open when the
    # archive is corrupt, and a stream of bad files would leak one descriptor each.
    f = open(path, "rb")
    try:
        return np.lib.npyio.NpzFile(f, own_fid=True, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
        f.close()
        raise HmdfError(f"{path}: unreadable .npz archive ({e}).") from None


def _load_arrays(npz, path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key in npz.files:
        try:
            arrays[key] = npz[key]
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise HmdfError(
                    f"{path}: key '{key}' holds a pickled object array; hmdf never unpickles "
                    "event files, store plain numeric arrays."
                ) from None
            raise HmdfError(f"{path}: key '{key}' is unreadable ({e}).") from None
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as e:
            raise HmdfError(f"{path}: key '{key}' is unreadable ({e}).") from None
        if not isinstance(arrays[key], np.ndarray):
            # NpzFile hands back the raw bytes of zip members that are not .npy files.
            raise HmdfError(f"{path}: member '{key}' is not a numpy array (.npy) entry.")
    return arrays


def _events_from_structured(arr: np.ndarray, where: str) -> dict[str, np.ndarray]:
    names = arr.dtype.names or ()
    if not set(_FIELDS) <= set(names):
        got = (f"fields {list(names)}" if names
               else f"a plain {arr.dtype} array of shape {arr.shape}")
        raise HmdfError(
            f"{where}: key 'events' must be a structured array with fields x, y, t, p "
            f"(Tonic's dtype), got {got}."
        )
    if arr.ndim != 1:
        raise HmdfError(f"{where}: key 'events' must be 1-D, got shape {arr.shape}.")
    return {n: arr[n] for n in _FIELDS}


def _infer_sensor_size(fields: dict[str, np.ndarray], where: str) -> tuple[int, int, int]:
    for n in ("x", "y"):
        _check_int_field(n, fields[n], where)
    if len(fields["x"]) == 0 or len(fields["y"]) == 0:
        raise HmdfError(f"{where}: the event stream is empty (no events).")
    # SpikingJelly files carry no sensor size; the stream's extent is the best guess.
    return int(fields["x"].max()) + 1, int(fields["y"].max()) + 1, 2


def _scalar(arrays: dict, key: str, kind: str, where: str):
    value = arrays[key]
    if value.size != 1:
        raise HmdfError(f"{where}: key '{key}' must be a single value, got shape {value.shape}.")
    value = value.reshape(())
    if kind == "int":
        if not np.issubdtype(value.dtype, np.integer):
            raise HmdfError(f"{where}: key 'label' has dtype {value.dtype}; expected an integer.")
        return int(value)
    if value.dtype.kind not in "US":
        raise HmdfError(f"{where}: key 'origin' has dtype {value.dtype}; expected a string.")
    return str(value.item().decode() if value.dtype.kind == "S" else value.item())


def read_events(path: str | os.PathLike, *, sensor_size=None) -> EventRecording:
    """Read an events.npz file in any of the three layouts (SPEC §8, DESIGN "events.npz").

    ``sensor_size`` (W, H, P) is used only when the file carries none (SpikingJelly layout);
    without it the size is inferred as (max x + 1, max y + 1, 2), or from the frames' shape.
    Every problem with the file raises `HmdfError` with one sentence naming the file and the
    key or field.
    """
    path = Path(path)
    with _open_npz(path) as npz:
        arrays = _load_arrays(npz, path)
    where = str(path)
    fields = _event_fields(arrays, where)
    frames = _check_frames(arrays["frames"], where) if "frames" in arrays else None
    size = arrays.get("sensor_size")
    if size is None and fields is not None:
        size = sensor_size if sensor_size is not None else _infer_sensor_size(fields, where)
    elif size is None:
        size = _frames_size(frames)
    if fields is not None:
        events, size = validate_events(fields, size, where)
    else:
        events, size = np.empty(0, EVENT_DTYPE), _check_sensor_size(size, where)
    if frames is not None:
        _check_frames_match(frames, size, where)
    label = _scalar(arrays, "label", "int", where) if "label" in arrays else None
    origin = _scalar(arrays, "origin", "str", where) if "origin" in arrays else None
    return EventRecording(events, size, label, frames, origin)


def _event_fields(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray] | None:
    """x, y, t, p from whichever layout the file uses; None for a frames-only file."""
    if "events" in arrays:
        if "sensor_size" not in arrays:
            raise HmdfError(f"{where}: missing key 'sensor_size' (W, H, P) next to 'events'.")
        return _events_from_structured(arrays["events"], where)
    present = [k for k in _FIELDS if k in arrays]
    if len(present) == len(_FIELDS):
        return {n: arrays[n] for n in _FIELDS}
    if present:
        missing = ", ".join(f"'{k}'" for k in _FIELDS if k not in arrays)
        raise HmdfError(f"{where}: missing key {missing} (separate x, y, t, p arrays layout).")
    if "frames" in arrays:
        return None
    raise HmdfError(
        f"{where}: missing keys; expected 'events' + 'sensor_size', or 'x', 'y', 't', 'p', "
        f"or 'frames', found {sorted(arrays)}."
    )


def _frames_size(frames: np.ndarray) -> tuple[int, int, int]:
    _, n_pol, h, w = frames.shape
    return w, h, n_pol


def _check_frames_match(frames: np.ndarray, size, where: str) -> None:
    # Pre-binned frames may already be resized (e.g. 48×48 from a 128×128 sensor): only the
    # polarity axis has to agree with the sensor.
    if frames.shape[1] != size[2]:
        raise HmdfError(
            f"{where}: frames have {frames.shape[1]} polarity channels but sensor_size says "
            f"{size[2]}."
        )


# --------------------------------------------------------------------------------------------
# writing


def write_events(path: str | os.PathLike, recording: EventRecording) -> Path:
    """Write ``recording`` as a Tonic-compatible events.npz, atomically; return the path.

    The archive holds ``events`` (`EVENT_DTYPE`), ``sensor_size`` (W, H, P), and ``label``,
    ``origin``, ``frames`` when set. The recording is validated first, so a bad stream never
    reaches disk; the data goes to a temporary file in the same folder that then replaces
    ``path`` (a crash never leaves a half-written file under the final name).
    """
    path = Path(path)
    where = f"recording for {path}"
    arrays: dict[str, np.ndarray] = {}
    events = np.asarray(recording.events)
    if events.size or recording.frames is None:
        fields = _events_from_structured(events, where)
        events, size = validate_events(fields, recording.sensor_size, where)
        arrays["events"] = events
    else:
        size = _check_sensor_size(recording.sensor_size, where)
    arrays["sensor_size"] = np.asarray(size, dtype=np.int64)
    if recording.frames is not None:
        arrays["frames"] = _check_frames(np.asarray(recording.frames), where)
        _check_frames_match(arrays["frames"], size, where)
    if recording.label is not None:
        arrays["label"] = np.asarray(int(recording.label), dtype=np.int64)
    if recording.origin is not None:
        arrays["origin"] = np.asarray(str(recording.origin))
    _atomic_savez(path, arrays)
    return path


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a path
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


# --------------------------------------------------------------------------------------------
# binning


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: how much of input cell j falls in output cell i (columns sum to 1).

    Cell j covers [j·n_out, (j+1)·n_out) and cell i covers [i·n_in, (i+1)·n_in) on a common
    integer grid, so overlaps are exact integers and an integer factor gives exact 0/1 blocks.
    """
    j = np.arange(n_in)[None, :]
    i = np.arange(n_out)[:, None]
    lo = np.maximum(j * n_out, i * n_in)
    hi = np.minimum((j + 1) * n_out, (i + 1) * n_in)
    return (np.clip(hi - lo, 0, None) / n_out).astype(np.float32)


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Map (..., H, W) count frames to (..., h, w), preserving the total count.

    Area-weighted: each sensor pixel's count is shared among the output pixels its area
    overlaps, in proportion to the overlap. When H/h and W/w are integers this is exactly a
    sum over H/h × W/w blocks; otherwise counts become fractional (e.g. 128 → 48 for
    DVS-CIFAR10, SPEC §8) but still sum to the number of events.
    """
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise HmdfError(f"frame size must be two positive integers (H, W), got {size}.")
    frames = np.asarray(frames, dtype=np.float32)
    if frames.shape[-2:] == (h, w):
        return frames
    my = _area_matrix(frames.shape[-2], h)
    mx = _area_matrix(frames.shape[-1], w)
    return np.einsum("ih,...hw,jw->...ij", my, frames, mx, optimize=True).astype(np.float32)


def _bin_index(events, n_time_bins, time_window, event_count, split) -> tuple[np.ndarray, int]:
    """The frame index of every event and the number of frames."""
    n = len(events)
    t = events["t"].astype(np.int64)
    if n_time_bins is not None:
        if split == "count":
            # SpikingJelly's split_by="number": N // T events per frame, the last frame takes
            # the remainder; with fewer events than frames, spread them evenly instead.
            per = n // n_time_bins
            idx = np.arange(n)
            b = np.minimum(idx // per, n_time_bins - 1) if per else idx * n_time_bins // max(n, 1)
            return b, n_time_bins
        t0 = int(t.min()) if n else 0
        span = (int(t.max()) - t0 + 1) if n else 1
        if span > np.iinfo(np.int64).max // n_time_bins:  # (t − t0) · n_time_bins would overflow
            raise HmdfError(f"the events span {span:,} µs ({span / 3.156e13:,.0f} years), too long to cut into "
                            f"{n_time_bins} time windows: a broken timestamp?")
        # Equal windows over [t0, t_last + 1): integer maths, every event lands in a bin.
        return (t - t0) * n_time_bins // span, n_time_bins
    if time_window is not None:
        if n == 0:
            return np.zeros(0, np.int64), 0
        b = (t - int(t[0])) // time_window
        return b, int(b[-1]) + 1
    return np.arange(n) // event_count, -(-n // event_count)


def to_frames(
    events: np.ndarray,
    sensor_size,
    *,
    n_time_bins: int | None = None,
    time_window: int | None = None,
    event_count: int | None = None,
    split: str = "time",
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Count events per (frame, polarity, y, x): a float32 (T, P, H, W) tensor (SPEC §8).

    Give exactly one binning option (Tonic's names):

    - ``n_time_bins=T``: T frames. With ``split="time"`` (default) the stream's span
      [t_first, t_last + 1 µs) is cut into T equal time windows; with ``split="count"`` each frame gets
      N // T consecutive events and the last one the remainder (SpikingJelly's split by
      number, used for DVS-CIFAR10).
    - ``time_window=w``: frames of w microseconds from the first event on.
    - ``event_count=k``: k consecutive events per frame.

    Unlike Tonic's defaults, no event is dropped: the last, possibly incomplete, window or
    event group is kept, so the frames always sum to the number of events. ``split`` applies
    to ``n_time_bins`` only. ``size=(H, W)`` maps the sensor to a smaller (or larger) grid with
    `resize_frames` (block sums for integer factors, area-weighted otherwise). An empty stream
    gives T zero frames for ``n_time_bins`` and no frames otherwise.
    """
    chosen = [k for k, v in (("n_time_bins", n_time_bins), ("time_window", time_window),
                             ("event_count", event_count)) if v is not None]
    if len(chosen) != 1:
        raise HmdfError(
            "give exactly one of n_time_bins, time_window, event_count"
            + (f" (got {', '.join(chosen)})." if chosen else ".")
        )
    value = {"n_time_bins": n_time_bins, "time_window": time_window, "event_count": event_count}
    value = value[chosen[0]]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_BIN:
        raise HmdfError(f"{chosen[0]} must be an integer from 1 to 2**62, got {value!r}.")
    if split not in ("time", "count"):
        raise HmdfError(f"split must be 'time' or 'count', got {split!r}.")
    if split == "count" and n_time_bins is None:
        raise HmdfError("split='count' applies to n_time_bins only.")
    events = np.asarray(events)
    if events.size == 0:
        events = np.empty(0, EVENT_DTYPE)
    if events.size:
        events, (w, h, n_pol) = validate_events(
            _events_from_structured(events, "events"), sensor_size, "events"
        )
    else:
        w, h, n_pol = _check_sensor_size(sensor_size, "events")
    b, n_frames = _bin_index(events, n_time_bins, time_window, event_count, split)
    if n_frames * n_pol * h * w > _MAX_FRAME_CELLS:
        raise HmdfError(
            f"binning would make {n_frames} frames of {n_pol}×{h}×{w}; choose fewer time bins "
            "or a larger time_window / event_count."
        )
    flat = ((b * n_pol + events["p"]) * h + events["y"]) * w + events["x"]
    counts = np.bincount(flat.astype(np.int64), minlength=n_frames * n_pol * h * w)
    frames = counts.reshape(n_frames, n_pol, h, w).astype(np.float32)
    return frames if size is None else resize_frames(frames, size)


def recording_frames(path: Path, input_shape: tuple[int, int, int], T: int, framing: Framing = Framing(), *,
                     time_window: int | None = None, event_count: int | None = None) -> tuple[np.ndarray, int | None, int]:
    """(frames (N, C, H, W), label, event count) of an events.npz at a model's input size.

    Default binning: T frames over the whole recording (one prediction window), split as `framing`
    says; `time_window` (µs) or `event_count` cut a long recording into as many frames as it holds.
    """
    rec = read_events(path, sensor_size=framing.sensor_size)
    if rec.frames is None:  # pre-binned frames carry no sensor to compare
        framing.check_sensor(rec.sensor_size, str(path))
    size = tuple(input_shape[1:])
    if rec.frames is not None:
        frames = rec.frames if rec.frames.shape[-2:] == size else resize_frames(rec.frames, size)
    elif time_window is None and event_count is None:
        frames = to_frames(rec.events, rec.sensor_size, n_time_bins=T, split=framing.split, size=size)
    else:
        frames = to_frames(rec.events, rec.sensor_size, time_window=time_window, event_count=event_count, size=size)
    if frames.shape[1] != input_shape[0]:
        raise HmdfError(f"{path} has {frames.shape[1]} polarity channels; the model takes {input_shape[0]}")
    if not np.isfinite(frames).all():
        raise HmdfError(f"{path} holds frames with NaN or Inf values")
    return np.ascontiguousarray(frames, dtype=np.float32), rec.label, len(rec.events)
