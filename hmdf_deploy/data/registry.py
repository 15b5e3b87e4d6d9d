"""`load_dataset`: one entry point for every dataset, as tensors ready for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import Framing

DATASETS = ("digits", "neuro-digits", "cifar10", "cifar100", "dvs-cifar10")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset."""

    name: str
    in_channels: int
    input_size: tuple[int, int]  # (H, W)
    num_classes: int
    event: bool  # True: x is (N, T, C, H, W) frames; False: static images (N, C, H, W)
    augment: str | None  # "crop-flip" for CIFAR, None otherwise


@dataclass
class Split:
    x: torch.Tensor  # float32
    y: torch.Tensor  # int64, shape (N,)

    def __len__(self) -> int:
        return len(self.y)


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                 torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)))


def _digits(T, data_dir, seed):
    from hmdf_deploy.data.digits import digit_images, digit_split

    images, labels = digit_images()
    train, test = digit_split()
    info = DataInfo("digits", 1, (8, 8), 10, False, None)
    train_split = _split(images[train, None], labels[train])
    return train_split, _split(images[test, None], labels[test]), info


def _neuro_digits(T, data_dir, seed):
    from hmdf_deploy.data.digits import digit_images, digit_split
    from hmdf_deploy.data.event_camera import INPUT_SIZE, neuro_digit_frames

    _, labels = digit_images()
    train, test = digit_split()
    frames = neuro_digit_frames(seed, T)  # one pass over all 1797: the simulator is vectorised
    info = DataInfo("neuro-digits", 2, INPUT_SIZE, 10, True, None)
    return _split(frames[train], labels[train]), _split(frames[test], labels[test]), info


def _cifar(name):
    def load(T, data_dir, seed):
        from hmdf_deploy.data.cifar import load_cifar

        (xtr, ytr), (xte, yte) = load_cifar(data_dir, name)
        info = DataInfo(name, 3, (32, 32), 10 if name == "cifar10" else 100, False, "crop-flip")
        return _split(xtr, ytr), _split(xte, yte), info
    return load


def _dvs(T, data_dir, seed):
    from hmdf_deploy.data.dvs import CLASSES, INPUT_SIZE, load_dvs_cifar10

    (xtr, ytr), (xte, yte) = load_dvs_cifar10(data_dir, T)
    info = DataInfo("dvs-cifar10", 2, INPUT_SIZE, len(CLASSES), True, None)
    return _split(xtr, ytr), _split(xte, yte), info


_LOADERS = {
    "digits": _digits,
    "neuro-digits": _neuro_digits,
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "dvs-cifar10": _dvs,
}


def framing(dataset: str | None) -> Framing:
    """How `hmdf run` turns a recording into the input frames of a model trained on `dataset` (its
    training data's way; T equal time windows for unknown or static datasets)."""
    if dataset == "dvs-cifar10":
        from hmdf_deploy.data.dvs import FRAMING

        return FRAMING
    if dataset == "neuro-digits":
        from hmdf_deploy.data.event_camera import SENSOR_SIZE

        return Framing("time", SENSOR_SIZE)
    return Framing()


def input_spec(dataset: str | None) -> dict:
    """How raw data becomes a model's input x, as JSON facts for files that travel without hmdf (the
    ONNX metadata key ``hmdf.input``, ``hmdf inspect``); {} for an unknown dataset.

    Images: x = (pixel / divide − mean) / std per channel, the same x at every step. Events: each frame
    counts events per (polarity, y, x) on the sensor, split into T frames by equal time windows or equal
    event counts, then resized to the input size by area-weighted sums (`hmdf_deploy.events.to_frames`).
    """
    if dataset == "digits":
        return {"kind": "image", "divide": 16, "mean": [0.0], "std": [1.0]}
    if dataset in ("cifar10", "cifar100"):
        from hmdf_deploy.data.cifar import CIFAR10, CIFAR100

        layout = CIFAR10 if dataset == "cifar10" else CIFAR100
        return {"kind": "image", "divide": 255, "mean": list(layout.mean), "std": list(layout.std)}
    if dataset in ("neuro-digits", "dvs-cifar10"):
        f = framing(dataset)
        return {"kind": "events", "split": f.split, "sensor_size": list(f.sensor_size), "resize": "sum"}
    return {}


def describe_input(spec: dict) -> str:
    """`input_spec` in one line of text."""
    if spec.get("kind") == "image":
        x = f"pixel / {spec['divide']:g}"
        if spec["mean"] != [0.0] or spec["std"] != [1.0]:
            x = f"({x} − mean) / std per channel, mean {spec['mean']}, std {spec['std']}"
        return f"image: x = {x}; the same x at every step"
    if spec.get("kind") == "events":
        w, h, p = spec["sensor_size"]
        split = "equal event counts" if spec["split"] == "count" else "equal time windows"
        return (f"events: counts per (polarity, y, x) of a {w}×{h}×{p} sensor, T frames of {split}, "
                "resized by area-weighted sums")
    return "not recorded"


def load_dataset(
    name: str, *, T: int, data_dir: Path | None = None, seed: int = 0
) -> tuple[Split, Split, DataInfo]:
    """Load a dataset as (train, test, info).

    - ``digits``: scikit-learn's 8×8 digits, (N, 1, 8, 8) in [0, 1]; fixed stratified split.
    - ``neuro-digits``: the simulated event-camera digits (`event_camera`), (N, T, 2, 16, 16)
      event counts; same split as digits; ``seed`` seeds the simulation.
    - ``cifar10`` / ``cifar100``: from ``data_dir`` (python-pickle layout), normalised
      (N, 3, 32, 32).
    - ``dvs-cifar10``: from ``data_dir``, (N, T, 2, 48, 48) event counts (SPEC §8).

    Static datasets ignore ``T`` (the model repeats the image over time); ``seed`` only affects
    neuro-digits: every split is fixed.
    """
    if name not in _LOADERS:
        raise HmdfError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}.")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise HmdfError(f"T must be a positive integer, got {T!r}.")
    return _LOADERS[name](int(T), None if data_dir is None else Path(data_dir), seed)
