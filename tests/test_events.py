"""events.npz reading/writing/validation and binning into frames (SPEC §8, DESIGN "events.npz")."""

from __future__ import annotations

import numpy as np
import pytest

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import (
    EVENT_DTYPE,
    EventRecording,
    make_events,
    read_events,
    resize_frames,
    to_frames,
    write_events,
)

# A hand-made stream on a 3 (W) × 2 (H) sensor with 2 polarities.
#            x  y   t  p
HAND = [(0, 0, 0, 1),
        (1, 0, 10, 0),
        (1, 1, 20, 1),
        (2, 1, 35, 1),
        (0, 1, 50, 0),
        (2, 0, 99, 1)]
SENSOR = (3, 2, 2)


def hand_events() -> np.ndarray:
    return np.array(HAND, dtype=EVENT_DTYPE)


def expected(bins: list[int], n_frames: int) -> np.ndarray:
    """Frames built event by event (the slow, obvious way) from a bin index per event."""
    out = np.zeros((n_frames, 2, 2, 3), np.float32)
    for (x, y, _, p), b in zip(HAND, bins):
        out[b, p, y, x] += 1
    return out


# ------------------------------------------------------------------------------ binning

@pytest.mark.parametrize(
    "kwargs, bins, n_frames",
    [
        # span [0, 99] → windows of 50 µs: [0, 50), [50, 100)
        ({"n_time_bins": 2}, [0, 0, 0, 0, 1, 1], 2),
        # windows of 100/3 µs: [0, 33.3), [33.3, 66.7), [66.7, 100)
        ({"n_time_bins": 3}, [0, 0, 0, 1, 1, 2], 3),
        # equal counts: 6 events / 3 frames = 2 per frame
        ({"n_time_bins": 3, "split": "count"}, [0, 0, 1, 1, 2, 2], 3),
        # 6 // 4 = 1 per frame, the last frame takes the remainder (SpikingJelly)
        ({"n_time_bins": 4, "split": "count"}, [0, 1, 2, 3, 3, 3], 4),
        # fewer events than frames: spread evenly, event i in frame i·8 // 6 (frames 3 and 7 empty)
        ({"n_time_bins": 8, "split": "count"}, [0, 1, 2, 4, 5, 6], 8),
        # 30 µs windows from t=0: [0,30) [30,60) [60,90) [90,120); the third is empty
        ({"time_window": 30}, [0, 0, 0, 1, 1, 3], 4),
        # 4 events per frame, the incomplete last frame kept
        ({"event_count": 4}, [0, 0, 0, 0, 1, 1], 2),
        ({"event_count": 6}, [0, 0, 0, 0, 0, 0], 1),
    ],
)
def test_binning_matches_hand_counts(kwargs, bins, n_frames):
    frames = to_frames(hand_events(), SENSOR, **kwargs)
    assert frames.dtype == np.float32
    assert frames.shape == (n_frames, 2, 2, 3)
    np.testing.assert_array_equal(frames, expected(bins, n_frames))
    assert frames.sum() == len(HAND)


def test_time_bins_start_at_first_event():
    ev = hand_events()
    ev["t"] += 1000  # shifting the whole stream must not change the frames
    np.testing.assert_array_equal(
        to_frames(ev, SENSOR, n_time_bins=3), expected([0, 0, 0, 1, 1, 2], 3)
    )


def test_polarity_goes_to_its_channel():
    ev = make_events([2], [1], [5], [1])
    frames = to_frames(ev, SENSOR, n_time_bins=1)
    assert frames[0, 1, 1, 2] == 1 and frames.sum() == 1
    ev["p"] = 0
    frames = to_frames(ev, SENSOR, n_time_bins=1)
    assert frames[0, 0, 1, 2] == 1 and frames.sum() == 1


def test_repeated_pixel_counts_accumulate():
    ev = make_events([1, 1, 1], [0, 0, 0], [0, 1, 2], [1, 1, 1])
    assert to_frames(ev, SENSOR, n_time_bins=1)[0, 1, 0, 1] == 3


def test_size_integer_factor_sums_blocks():
    w = h = 4
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    # pixel (y, x) fires y*4 + x + 1 times, so each 2×2 block has a known sum
    reps = (ys * w + xs + 1).ravel()
    ev = make_events(np.repeat(xs.ravel(), reps), np.repeat(ys.ravel(), reps),
                     np.arange(reps.sum()), np.ones(reps.sum()))
    frames = to_frames(ev, (w, h, 2), n_time_bins=1, size=(2, 2))
    full = (ys * w + xs + 1).astype(np.float32)
    blocks = full.reshape(2, 2, 2, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(frames[0, 1], blocks)
    assert frames.shape == (1, 2, 2, 2)


def test_size_non_integer_factor_is_area_weighted():
    # rows 0, 1, 2 of a 3-row sensor onto 2 rows: row 0 → out 0, row 2 → out 1, row 1 is
    # half in each (its area [1, 2) straddles the boundary at 1.5).
    frames = np.zeros((1, 1, 3, 1), np.float32)
    frames[0, 0, :, 0] = [2.0, 4.0, 8.0]
    out = resize_frames(frames, (2, 1))
    np.testing.assert_allclose(out[0, 0, :, 0], [2 + 2, 2 + 8])
    big = np.random.default_rng(0).poisson(1.0, (2, 2, 128, 128)).astype(np.float32)
    small = resize_frames(big, (48, 48))
    assert small.shape == (2, 2, 48, 48)
    np.testing.assert_allclose(small.sum(axis=(2, 3)), big.sum(axis=(2, 3)), rtol=1e-5)


def test_binning_options_are_exclusive():
    with pytest.raises(HmdfError, match="exactly one of n_time_bins"):
        to_frames(hand_events(), SENSOR)
    with pytest.raises(HmdfError, match="exactly one of n_time_bins"):
        to_frames(hand_events(), SENSOR, n_time_bins=2, event_count=3)
    with pytest.raises(HmdfError, match="split='count' applies to n_time_bins"):
        to_frames(hand_events(), SENSOR, time_window=10, split="count")
    with pytest.raises(HmdfError, match=r"n_time_bins must be an integer from 1 to 2\*\*62, got 0"):
        to_frames(hand_events(), SENSOR, n_time_bins=0)
    with pytest.raises(HmdfError, match=rf"event_count must be an integer from 1 to 2\*\*62, got {10**30}"):
        to_frames(hand_events(), SENSOR, event_count=10**30)


def test_time_windows_refuse_a_span_that_overflows_the_bin_arithmetic():
    """(t − t0) · T would pass int64: a timestamp 2**62 µs (146 000 years) after the first."""
    ev = hand_events()
    ev["t"][-1] = 2**62
    with pytest.raises(HmdfError, match=r"the events span 4,611,686,018,427,387,905 µs .* too long to cut into 4 "):
        to_frames(ev, SENSOR, n_time_bins=4)
    ev["t"][-1] = 2**59  # · 4 still fits: binned, the last event alone in the last window
    assert to_frames(ev, SENSOR, n_time_bins=4)[-1].sum() == 1


def test_to_frames_checks_the_sensor():
    with pytest.raises(HmdfError, match="x coordinates"):
        to_frames(hand_events(), (2, 2, 2), n_time_bins=1)


def test_empty_stream_gives_zero_frames():
    empty = np.empty(0, EVENT_DTYPE)
    assert to_frames(empty, SENSOR, n_time_bins=3).shape == (3, 2, 2, 3)
    assert to_frames(empty, SENSOR, event_count=3).shape == (0, 2, 2, 3)


# ------------------------------------------------------------------------------ round trips

def test_round_trip_tonic_layout(tmp_path):
    rec = EventRecording(hand_events(), SENSOR, label=7, origin="hand")
    path = write_events(tmp_path / "a.npz", rec)
    back = read_events(path)
    np.testing.assert_array_equal(back.events, rec.events)
    assert back.events.dtype == EVENT_DTYPE
    assert back.sensor_size == SENSOR and back.label == 7 and back.origin == "hand"
    assert back.frames is None
    with np.load(path, allow_pickle=False) as npz:  # the layout Tonic reads
        assert set(npz.files) == {"events", "sensor_size", "label", "origin"}
        assert npz["events"].dtype == EVENT_DTYPE
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_tonic_layout_with_bool_polarity(tmp_path):
    ev = hand_events()
    tonic = np.empty(len(ev), [("x", "<i2"), ("y", "<i2"), ("t", "<i8"), ("p", "?")])
    for f in ("x", "y", "t"):
        tonic[f] = ev[f]
    tonic["p"] = ev["p"].astype(bool)
    np.savez(tmp_path / "b.npz", events=tonic, sensor_size=np.array(SENSOR))
    back = read_events(tmp_path / "b.npz")
    assert back.events.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(back.events, ev)


def test_round_trip_separate_arrays(tmp_path):
    ev = hand_events()
    # SpikingJelly stores plain arrays, often with other integer widths
    np.savez(tmp_path / "sj.npz", x=ev["x"].astype(np.uint16), y=ev["y"].astype(np.uint16),
             t=ev["t"], p=ev["p"].astype(np.uint8))
    back = read_events(tmp_path / "sj.npz")
    np.testing.assert_array_equal(back.events, ev)
    assert back.sensor_size == (3, 2, 2)  # inferred: max + 1, two polarities
    assert read_events(tmp_path / "sj.npz", sensor_size=(128, 128, 2)).sensor_size == (128, 128, 2)
    np.savez(tmp_path / "sj2.npz", x=ev["x"], y=ev["y"], t=ev["t"], p=ev["p"],
             sensor_size=np.array([10, 20, 2]), label=np.array(3))
    back = read_events(tmp_path / "sj2.npz")
    assert back.sensor_size == (10, 20, 2) and back.label == 3


def test_round_trip_frames(tmp_path):
    frames = to_frames(hand_events(), SENSOR, n_time_bins=3)
    path = write_events(tmp_path / "f.npz",
                        EventRecording(np.empty(0, EVENT_DTYPE), SENSOR, 1, frames))
    back = read_events(path)
    np.testing.assert_array_equal(back.frames, frames)
    assert back.sensor_size == SENSOR and back.label == 1 and len(back.events) == 0
    np.savez(tmp_path / "g.npz", frames=frames.astype(np.int16))
    back = read_events(tmp_path / "g.npz")
    np.testing.assert_array_equal(back.frames, frames)
    assert back.frames.dtype == np.float32 and back.sensor_size == (3, 2, 2)


def test_events_and_frames_together(tmp_path):
    frames = to_frames(hand_events(), SENSOR, n_time_bins=2)
    path = write_events(tmp_path / "ef.npz", EventRecording(hand_events(), SENSOR, None, frames))
    back = read_events(path)
    np.testing.assert_array_equal(back.events, hand_events())
    np.testing.assert_array_equal(back.frames, frames)


def test_write_refuses_a_bad_recording_and_keeps_the_old_file(tmp_path):
    path = write_events(tmp_path / "a.npz", EventRecording(hand_events(), SENSOR))
    bad = hand_events()
    bad["t"] = bad["t"][::-1]
    with pytest.raises(HmdfError, match="not sorted"):
        write_events(path, EventRecording(bad, SENSOR))
    np.testing.assert_array_equal(read_events(path).events, hand_events())
    assert list(tmp_path.iterdir()) == [path]
    with pytest.raises(HmdfError, match="does not exist"):
        write_events(tmp_path / "nope" / "a.npz", EventRecording(hand_events(), SENSOR))


# ------------------------------------------------------------------------------ bad files

def _save(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def _tonic(**changes):
    ev = hand_events()
    for k, v in changes.items():
        ev[k] = v
    return ev


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"foo": np.zeros(3)}, r"missing keys; expected 'events'"),
        ({"events": hand_events()}, r"missing key 'sensor_size'"),
        ({"x": np.zeros(2, int), "y": np.zeros(2, int), "t": np.zeros(2, int)},
         r"missing key 'p'"),
        ({"events": np.zeros((6, 4), np.int64), "sensor_size": np.array(SENSOR)},
         r"key 'events' must be a structured array with fields x, y, t, p"),
        ({"x": np.zeros(2, int), "y": np.zeros(2, int), "t": np.array([0.5, 1.0]),
          "p": np.zeros(2, int)}, r"field 't' has dtype float64; expected an integer type"),
        ({"x": np.array([0.0, 1.0]), "y": np.zeros(2, int), "t": np.zeros(2, int),
          "p": np.zeros(2, int)}, r"field 'x' has dtype float64"),
        ({"x": np.zeros(2, int), "y": np.zeros(3, int), "t": np.zeros(2, int),
          "p": np.zeros(2, int)}, r"different lengths"),
        ({"events": _tonic(x=[0, 1, 1, 3, 0, 2]), "sensor_size": np.array(SENSOR)},
         r"x coordinates span \[0, 3\], outside the sensor width 3"),
        ({"events": _tonic(y=[0, 0, -1, 1, 1, 0]), "sensor_size": np.array(SENSOR)},
         r"y coordinates span \[-1, 1\], outside the sensor height 2"),
        ({"events": _tonic(p=[0, 1, 2, 1, 0, 1]), "sensor_size": np.array(SENSOR)},
         r"polarity p spans \[0, 2\], outside \[0, 1\]"),
        ({"events": _tonic(t=[-5, 10, 20, 35, 50, 99]), "sensor_size": np.array(SENSOR)},
         r"timestamps t must be non-negative"),
        ({"events": _tonic(t=[0, 10, 40, 35, 50, 99]), "sensor_size": np.array(SENSOR)},
         r"timestamps t are not sorted \(t\[2\]=40 > t\[3\]=35\)"),
        ({"events": np.empty(0, EVENT_DTYPE), "sensor_size": np.array(SENSOR)},
         r"event stream is empty"),
        ({"x": np.zeros(0, int), "y": np.zeros(0, int), "t": np.zeros(0, int),
          "p": np.zeros(0, int)}, r"event stream is empty"),
        ({"events": hand_events(), "sensor_size": np.array([3, 2])},
         r"sensor_size must be three positive integers \(W, H, P\)"),
        ({"events": hand_events(), "sensor_size": np.array([3.0, 2.0, 2.0])},
         r"sensor_size must be three positive integers"),
        ({"frames": np.zeros((2, 2, 3))}, r"frames must have shape \(T, P, H, W\)"),
        ({"frames": -np.ones((1, 2, 2, 2))}, r"frames hold event counts, found a negative"),
        ({"frames": np.full((1, 2, 2, 2), np.nan)}, r"frames contain NaN"),
        ({"frames": np.ones((1, 3, 2, 2)), "sensor_size": np.array(SENSOR)},
         r"frames have 3 polarity channels but sensor_size says 2"),
        ({"events": hand_events(), "sensor_size": np.array(SENSOR), "label": np.array(1.5)},
         r"key 'label' has dtype float64; expected an integer"),
        ({"events": hand_events(), "sensor_size": np.array(SENSOR), "label": np.array([1, 2])},
         r"key 'label' must be a single value"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, arrays, message):
    path = _save(tmp_path, **arrays)
    with pytest.raises(HmdfError, match=message) as info:
        read_events(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    # np.savez pickles object arrays; reading must refuse, never unpickle
    np.savez(path, events=np.array([{"x": 1}], dtype=object), sensor_size=np.array(SENSOR))
    with pytest.raises(HmdfError, match=r"key 'events' holds a pickled object array"):
        read_events(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(HmdfError, match=r"not an \.npz archive"):
        read_events(path)
    npy = tmp_path / "a.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(HmdfError, match=r"not an \.npz archive"):
        read_events(npy)


def test_zip_that_is_not_an_npz(tmp_path):
    import zipfile

    path = tmp_path / "plain.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("events", b"raw bytes, not an array")
    with pytest.raises(HmdfError, match=r"member 'events' is not a numpy array"):
        read_events(path)


def test_truncated_npz_is_unreadable(tmp_path):
    path = write_events(tmp_path / "a.npz", EventRecording(hand_events(), SENSOR))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HmdfError, match="unreadable"):
        read_events(path)


def test_missing_file(tmp_path):
    with pytest.raises(HmdfError, match="events file not found"):
        read_events(tmp_path / "missing.npz")


def test_absurd_binning_is_refused():
    ev = make_events([0, 0], [0, 0], [0, 10**12], [0, 0])
    with pytest.raises(HmdfError, match="binning would make"):
        to_frames(ev, SENSOR, time_window=1)


def test_a_corrupt_archive_leaves_no_file_open(tmp_path):
    """np.load keeps its handle when the zip is corrupt; a server reading many bad uploads would
    run out of descriptors. The reader closes it before refusing the file."""
    import gc
    import warnings

    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(200))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            with pytest.raises(HmdfError, match="unreadable .npz archive"):
                read_events(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
