"""The offline datasets: digits and the simulated event-camera neuro-digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hmdf_deploy.data.event_camera as event_camera
from hmdf_deploy.data import DATASETS, DataInfo, load_dataset, make_neuro_digit_recordings
from hmdf_deploy.data.event_camera import DURATION_US, INPUT_SIZE, SENSOR_SIZE
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import read_events, to_frames, write_events


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", T=4)


def test_dataset_names():
    assert DATASETS == ("digits", "neuro-digits", "cifar10", "cifar100", "dvs-cifar10")
    with pytest.raises(HmdfError, match="unknown dataset 'mnist'; choose one of digits"):
        load_dataset("mnist", T=4)
    with pytest.raises(HmdfError, match="T must be a positive integer"):
        load_dataset("digits", T=0)


def test_digits_shapes_and_info(digits):
    train, test, info = digits
    assert info == DataInfo("digits", 1, (8, 8), 10, False, None)
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0


def test_digits_split_is_fixed_and_stratified(digits):
    train, test, _ = digits
    again_train, again_test, _ = load_dataset("digits", T=10, seed=123)  # seed/T don't matter
    assert torch.equal(train.x, again_train.x) and torch.equal(test.y, again_test.y)
    n_train = torch.bincount(train.y, minlength=10)
    n_test = torch.bincount(test.y, minlength=10)
    frac = n_test.double() / (n_train + n_test).double()
    assert torch.all((frac - 0.2).abs() < 0.01), frac
    # no image is in both sets
    train_rows = {tuple(r) for r in train.x.reshape(len(train.x), -1).tolist()}
    dupes = sum(tuple(r) in train_rows for r in test.x.reshape(len(test.x), -1).tolist())
    assert dupes < 5  # the digits data holds a few identical images; the split is by index


@pytest.fixture(scope="module")
def recordings():
    return make_neuro_digit_recordings(0, indices=[0, 1, 2, 3, 4])


def test_neuro_digit_streams_are_valid(recordings):
    from hmdf_deploy.data.digits import digit_images

    _, labels = digit_images()
    for i, rec in enumerate(recordings):
        ev = rec.events
        assert rec.sensor_size == SENSOR_SIZE and rec.label == labels[i]
        assert len(ev) > 500  # a digit moved over the sensor makes thousands of events
        assert np.all(np.diff(ev["t"]) >= 0)
        assert ev["t"].min() >= 0 and ev["t"].max() < DURATION_US
        w, h, n_pol = SENSOR_SIZE
        assert ev["x"].min() >= 0 and ev["x"].max() < w
        assert ev["y"].min() >= 0 and ev["y"].max() < h
        assert set(np.unique(ev["p"])) == {0, 1}
        frames = to_frames(ev, rec.sensor_size, n_time_bins=5, size=INPUT_SIZE)
        assert frames.shape == (5, 2, *INPUT_SIZE)
        assert frames.sum() == len(ev)  # every event counted once


def test_neuro_digits_deterministic_per_seed(recordings):
    again = make_neuro_digit_recordings(0, indices=[0, 1, 2, 3, 4])
    for a, b in zip(recordings, again):
        np.testing.assert_array_equal(a.events, b.events)
    other = make_neuro_digit_recordings(1, indices=[0, 1, 2, 3, 4])
    assert any(len(a.events) != len(b.events) or not np.array_equal(a.events, b.events)
               for a, b in zip(recordings, other))
    # a sample depends only on (seed, its index), not on which others are simulated with it
    alone = make_neuro_digit_recordings(0, indices=[3])[0]
    np.testing.assert_array_equal(alone.events, recordings[3].events)


@pytest.mark.parametrize("step, polarity", [(0.1, 1), (-0.1, 0)], ids=["brightening", "darkening"])
def test_brightening_makes_on_events_and_darkening_off_events(monkeypatch, step, polarity):
    """ON is p = 1, OFF is p = 0 (event_camera.py): with the background noise off, a view whose log
    intensity rises by .1 per sub-step at every pixel gives only p = 1 events, one that falls only
    p = 0. A change of 6 over the 60 sub-steps crosses at least 6 / .375 − 1 levels at every pixel
    (thresholds are clipped to ≤ 1.5 · .25, the start is within half a threshold of a level)."""
    calls = []

    def view_log(scene, offset):
        calls.append(offset)
        return np.full((scene.shape[0], 32, 32), step * (len(calls) - 1), np.float32)

    monkeypatch.setattr(event_camera, "_view_log", view_log)
    monkeypatch.setattr(event_camera, "NOISE_HZ", 0.0)
    [ev] = event_camera.simulate_events(np.zeros((1, 8, 8), np.float32), [0], seed=0)
    assert len(calls) == 61  # the start and 3 saccades × 20 sub-steps
    assert set(np.unique(ev["p"]).tolist()) == {polarity}
    per_pixel = np.bincount(ev["y"].astype(np.int64) * 32 + ev["x"], minlength=32 * 32)
    assert per_pixel.min() >= 15


def test_crossings_fire_per_level_and_keep_the_reference_on_its_grid():
    """`_crossings` by hand, threshold .25 from reference 0: a rise to .6 passes .25 and .5, two
    events at 5/12 and 10/12 of the sub-step, and the reference moves to .5 (not to .6); a further
    rise to .7 (< .75) gives none; on to .8 gives one at .75, halfway through, reference .75.
    OFF (sign −1): a fall from 0 to −.6 gives two events and leaves the reference at −.5."""
    f32 = lambda v: np.array([v], np.float32)  # noqa: E731
    ref, thr = f32(0.0), f32(0.25)
    pix, frac = event_camera._crossings(ref, f32(0.0), f32(0.6), thr, 1.0)
    assert pix.tolist() == [0, 0] and ref.tolist() == [0.5]
    np.testing.assert_allclose(frac, [0.25 / 0.6, 0.5 / 0.6], rtol=1e-6)
    pix, _ = event_camera._crossings(ref, f32(0.6), f32(0.7), thr, 1.0)
    assert pix.size == 0 and ref.tolist() == [0.5]
    pix, frac = event_camera._crossings(ref, f32(0.7), f32(0.8), thr, 1.0)
    assert pix.tolist() == [0] and ref.tolist() == [0.75]
    np.testing.assert_allclose(frac, [0.5], rtol=1e-5)
    ref = f32(0.0)
    pix, frac = event_camera._crossings(ref, f32(0.0), f32(-0.6), thr, -1.0)
    assert pix.tolist() == [0, 0] and ref.tolist() == [-0.5]
    np.testing.assert_allclose(frac, [0.25 / 0.6, 0.5 / 0.6], rtol=1e-6)


def test_neuro_digit_recordings_write_as_events_npz(recordings, tmp_path):
    path = write_events(tmp_path / "d0.npz", recordings[0])
    back = read_events(path)
    np.testing.assert_array_equal(back.events, recordings[0].events)
    assert back.label == recordings[0].label and back.sensor_size == SENSOR_SIZE


def test_neuro_digits_bad_arguments():
    with pytest.raises(HmdfError, match="seed must be a non-negative integer"):
        make_neuro_digit_recordings(-1, indices=[0])
    with pytest.raises(HmdfError, match=r"indices must lie in \[0, 1796\]"):
        make_neuro_digit_recordings(0, indices=[1797])


def test_load_neuro_digits(digits):
    train, test, info = load_dataset("neuro-digits", T=4, seed=0)
    assert info == DataInfo("neuro-digits", 2, INPUT_SIZE, 10, True, None)
    assert train.x.shape == (1437, 4, 2, *INPUT_SIZE) and test.x.shape == (360, 4, 2, *INPUT_SIZE)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    # same split as digits
    assert torch.equal(train.y, digits[0].y) and torch.equal(test.y, digits[1].y)
    # the first training sample is digit index train_idx[0]; its frames match its recording
    from hmdf_deploy.data.digits import digit_split

    first = int(digit_split()[0][0])
    rec = make_neuro_digit_recordings(0, indices=[first])[0]
    frames = to_frames(rec.events, rec.sensor_size, n_time_bins=4, size=INPUT_SIZE)
    np.testing.assert_array_equal(train.x[0].numpy(), frames)
    assert float(train.x[0].sum()) == len(rec.events)


def test_inspects_samples_are_the_loaders_test_samples():
    """`hmdf inspect` simulates only the neuro-digits samples it measures; they are the first test
    samples that load_dataset gives (a sample depends on (seed, its index) alone)."""
    from hmdf_deploy.deploy.graph import DeployModel
    from hmdf_deploy.deploy.inputs import sample_sequence

    model = DeployModel(T=3, input_shape=(2, *INPUT_SIZE), event=True, num_classes=10, nodes=[], output="",
                        source={"dataset": "neuro-digits"})
    _, test, _ = load_dataset("neuro-digits", T=3, seed=0)
    got = sample_sequence(model, samples=5)
    assert got.shape == (3, 5, 2, *INPUT_SIZE)
    torch.testing.assert_close(got, test.x[:5].transpose(0, 1), rtol=0, atol=0)
