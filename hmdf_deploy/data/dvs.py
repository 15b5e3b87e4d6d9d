"""DVS-CIFAR10 (CIFAR10-DVS) from ``--data-dir`` (SPEC §8: 2×48×48 frames, T = 10).

Layout: one folder per class, named after the CIFAR-10 classes, holding ``.npz`` files in an
events.npz layout (`hmdf_deploy.events`, 128×128 sensor) or with pre-binned ``frames``:

    <data_dir>/airplane/*.npz … <data_dir>/truck/*.npz
    <data_dir>/events_np/airplane/*.npz …      (SpikingJelly's converted files, also accepted)

Events are split by equal event counts into T frames (SpikingJelly's split_by="number", as the
paper's pipeline does), then mapped 128 → 48 by area weighting
(`hmdf_deploy.events.resize_frames`), and not normalised. Pre-binned frames must already hold
T frames; they are only resized. The split is per class: the first 90 % of the files (rounded
up), sorted by name, train, the rest test (SpikingJelly's split_to_train_test_set(0.9,
random_split=False)).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import Framing, recording_frames

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SENSOR_SIZE = (128, 128, 2)  # (W, H, P) of the DVS128 camera used to record CIFAR10-DVS
INPUT_SIZE = (48, 48)
TRAIN_FRACTION = 0.9
#: Frames by equal event counts; SpikingJelly's files carry no sensor size.
FRAMING = Framing("count", SENSOR_SIZE)


def _root(data_dir: Path | None) -> Path:
    hint = f"--data-dir must point at a folder with one sub-folder per class ({', '.join(CLASSES)})"
    if data_dir is None:
        raise HmdfError(f"dvs-cifar10 is not bundled; {hint}.")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise HmdfError(f"dvs-cifar10 folder not found: {data_dir}; {hint}.")
    nested = data_dir / "events_np"
    return nested if nested.is_dir() else data_dir


def _class_files(root: Path) -> list[list[Path]]:
    files = []
    for name in CLASSES:
        folder = root / name
        if not folder.is_dir():
            raise HmdfError(f"dvs-cifar10 class folder not found: {folder}.")
        found = sorted(folder.glob("*.npz"), key=lambda p: p.name)
        if not found:
            raise HmdfError(f"dvs-cifar10 class folder {folder} holds no .npz files.")
        files.append(found)
    return files


def dvs_frames(path: Path, T: int) -> np.ndarray:
    """One file as float32 (T, 2, 48, 48) frames (SPEC §8), made as `hmdf run` makes them for a
    model trained on this dataset (`FRAMING`)."""
    frames, _, _ = recording_frames(path, (SENSOR_SIZE[2], *INPUT_SIZE), T, FRAMING)
    if len(frames) != T:
        raise HmdfError(f"{path}: holds {len(frames)} pre-binned frames but T={T} was asked.")
    return frames


def load_dvs_cifar10(data_dir: Path | None, T: int):
    """(train, test) pairs of float32 (N, T, 2, 48, 48) frames and int64 labels."""
    files = _class_files(_root(data_dir))
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for label, class_files in enumerate(files):
        n_train = math.ceil(len(class_files) * TRAIN_FRACTION)
        for i, path in enumerate(class_files):
            xs, ys = parts["train" if i < n_train else "test"]
            xs.append(dvs_frames(path, T))
            ys.append(label)

    def stack(xs, ys):
        x = np.stack(xs) if xs else np.zeros((0, T, 2, *INPUT_SIZE), np.float32)
        return x, np.asarray(ys, dtype=np.int64)

    return stack(*parts["train"]), stack(*parts["test"])
