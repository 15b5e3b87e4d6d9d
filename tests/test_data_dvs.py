"""DVS-CIFAR10 loader on small class folders written in the Tonic / SpikingJelly layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hmdf_deploy.data import DataInfo, load_dataset
from hmdf_deploy.data.dvs import CLASSES, SENSOR_SIZE, dvs_frames
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import EventRecording, make_events, recording_frames, to_frames, write_events
from hmdf_deploy.exporters.onnx import export
from hmdf_deploy.models import ModelConfig
from hmdf_deploy.runtime import Engine
from hmdf_deploy.runtime.stream import stream
from nets import make_deploy

T = 5


def _events(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_events(rng.integers(0, 128, n), rng.integers(0, 128, n),
                       np.sort(rng.integers(0, 1_000_000, n)), rng.integers(0, 2, n))


def _write(path, ev, layout):
    if layout == "tonic":
        write_events(path, EventRecording(ev, (128, 128, 2)))
    elif layout == "spikingjelly":  # separate arrays, no sensor_size
        np.savez(path, x=ev["x"].astype(np.uint16), y=ev["y"].astype(np.uint16), t=ev["t"],
                 p=ev["p"].astype(np.uint8))
    else:  # pre-binned frames at full sensor resolution
        np.savez(path, frames=to_frames(ev, (128, 128, 2), n_time_bins=T, split="count"))


def make_dvs(root, per_class=10, layouts=("tonic", "spikingjelly", "frames")):
    """Writes per_class files per class; returns {(class, file name): events}."""
    written = {}
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            ev = _events(c * 100 + i)
            fname = f"cifar10_{name}_{i}.npz"  # by name, _9 is last: the test file
            _write(folder / fname, ev, layouts[i % len(layouts)])
            written[(name, fname)] = ev
    return written


def test_dvs_loads_all_layouts_and_splits_per_class(tmp_path):
    written = make_dvs(tmp_path)
    train, test, info = load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)
    assert info == DataInfo("dvs-cifar10", 2, (48, 48), 10, True, None)
    assert train.x.shape == (90, T, 2, 48, 48) and test.x.shape == (10, T, 2, 48, 48)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 9))
    assert test.y.tolist() == list(range(10))
    # every event counted once (area-weighted resize keeps totals), no normalisation
    np.testing.assert_allclose(train.x.sum(dim=(1, 2, 3, 4)).numpy(), 300, rtol=1e-5)
    # the test file of each class is the last one by name: cifar10_<class>_9.npz
    for c, name in enumerate(CLASSES):
        ev = written[(name, f"cifar10_{name}_9.npz")]
        want = to_frames(ev, (128, 128, 2), n_time_bins=T, split="count", size=(48, 48))
        np.testing.assert_allclose(test.x[c].numpy(), want, rtol=1e-5, atol=1e-5)


def test_dvs_frames_split_by_event_count(tmp_path):
    make_dvs(tmp_path, per_class=2, layouts=("tonic",))
    train, _, _ = load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)
    # 300 events / 5 frames: 60 events in every frame
    np.testing.assert_allclose(train.x[0].sum(dim=(1, 2, 3)).numpy(), [60] * T, rtol=1e-5)


def test_dvs_accepts_spikingjelly_events_np_folder(tmp_path):
    make_dvs(tmp_path / "events_np", per_class=2, layouts=("spikingjelly",))
    train, test, _ = load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)
    assert len(train) == 20 and len(test) == 0  # ceil(0.9 · 2) = 2 files train per class


def test_dvs_train_share_is_rounded_up(tmp_path):
    """The first 90 % of each class's files, rounded up, train: 0.9 · 6 = 5.4 → 6 train, 0 test
    per class (rounding to nearest would give 5 and 1)."""
    make_dvs(tmp_path, per_class=6, layouts=("tonic",))
    train, test, _ = load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)
    assert (len(train), len(test)) == (60, 0)
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 6))


def test_dvs_missing_or_empty_folders(tmp_path):
    with pytest.raises(HmdfError, match="dvs-cifar10 is not bundled; --data-dir"):
        load_dataset("dvs-cifar10", T=T)
    with pytest.raises(HmdfError, match="dvs-cifar10 folder not found"):
        load_dataset("dvs-cifar10", T=T, data_dir=tmp_path / "nope")
    make_dvs(tmp_path, per_class=1, layouts=("tonic",))
    for f in (tmp_path / "truck").iterdir():
        f.unlink()
    with pytest.raises(HmdfError, match=r"truck holds no \.npz files"):
        load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)
    (tmp_path / "truck").rmdir()
    with pytest.raises(HmdfError, match=r"class folder not found: .*truck"):
        load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)


def test_dvs_frames_with_other_T_are_refused(tmp_path):
    make_dvs(tmp_path, per_class=1, layouts=("frames",))
    with pytest.raises(HmdfError, match=r"holds 5 pre-binned frames but T=4 was asked"):
        load_dataset("dvs-cifar10", T=4, data_dir=tmp_path)


def test_dvs_bad_file_names_the_file(tmp_path):
    make_dvs(tmp_path, per_class=1, layouts=("tonic",))
    bad = tmp_path / "cat" / "cifar10_cat_0.npz"
    ev = _events(0)
    np.savez(bad, x=ev["x"] + 200, y=ev["y"], t=ev["t"], p=ev["p"])  # beyond the 128 sensor
    with pytest.raises(HmdfError, match=r"cifar10_cat_0.npz: x coordinates .* outside the sensor"):
        load_dataset("dvs-cifar10", T=T, data_dir=tmp_path)


def _bursty(n: int = 400) -> np.ndarray:
    """Most events in the first millisecond, the rest over a second; coordinates below 100. Equal
    time windows, or a sensor size guessed from the coordinates, give other frames than training's."""
    rng = np.random.default_rng(3)
    t = np.sort(np.concatenate([rng.integers(0, 1_000, n - 40), rng.integers(0, 1_000_000, 40)]))
    return make_events(rng.integers(0, 100, n), rng.integers(0, 100, n), t, rng.integers(0, 2, n))


@pytest.mark.parametrize("exported", [False, True], ids=["hmdf", "onnx"])
@pytest.mark.parametrize("layout", ["tonic", "spikingjelly"])
def test_hmdf_run_frames_a_recording_as_training_did(tmp_path, layout, exported):
    """`hmdf run` on a model trained on dvs-cifar10 feeds exactly the frames the loader trained it on,
    from the .hmdf model (its source names the dataset) and from its ONNX export (metadata)."""
    _write(tmp_path / "rec.npz", _bursty(), layout)
    want = dvs_frames(tmp_path / "rec.npz", T)
    assert not np.allclose(want, recording_frames(tmp_path / "rec.npz", (2, 48, 48), T)[0])  # the default differs
    cfg = ModelConfig(arch="vgg", cfg=[4, "M"], in_channels=2, input_size=(48, 48), num_classes=10, T=T)
    model = make_deploy(cfg, event=True, source={"dataset": "dvs-cifar10"})
    if exported:
        export(model, tmp_path / "m.onnx")
    engine = Engine(tmp_path / "m.onnx" if exported else model, "onnxruntime" if exported else "torch")
    fed, step = [], engine.step
    engine.step = lambda x: fed.append(x[0]) or step(x)
    stream(engine, tmp_path / "rec.npz")
    np.testing.assert_array_equal(np.stack(fed), want)
    # binned on the fly, the SpikingJelly layout (no sensor size) is read at the dataset's 128×128
    fed.clear()
    stream(engine, tmp_path / "rec.npz", event_count=100)
    np.testing.assert_allclose(np.stack(fed), to_frames(_bursty(), SENSOR_SIZE, event_count=100, size=(48, 48)),
                               rtol=1e-6, atol=1e-6)
