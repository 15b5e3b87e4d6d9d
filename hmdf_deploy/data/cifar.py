"""CIFAR-10 / CIFAR-100 from their standard python-pickle layout under ``--data-dir``.

    <data_dir>/cifar-10-batches-py/data_batch_1 … data_batch_5, test_batch
    <data_dir>/cifar-100-python/train, test

Each batch is a pickled dict with b"data" (uint8, N × 3072, channel-major 3×32×32) and
b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100). Pickle can run arbitrary code, so the
batches are read with `_SafeUnpickler`, which resolves only the three numpy names an array
needs and refuses everything else before it is called.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hmdf_deploy.errors import HmdfError

try:  # numpy >= 2 moved the implementation to numpy._core; pickles name either module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarLayout(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
    "labels", 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
)
CIFAR100 = CifarLayout(
    "cifar-100-python", ("train",), ("test",),
    "fine_labels", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761),
)

# Exactly what unpickling a numpy array needs; pickles written by numpy 1.x name
# numpy.core, those by numpy 2.x numpy._core. Nothing here can run user-chosen code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-reconstruction names (see `_ALLOWED`).

    Any other global (os.system, builtins.eval, ...) raises `HmdfError` when the pickle asks
    for it, before it could be called.
    """

    def __init__(self, file, *, encoding: str = "bytes", source: str = "pickle"):
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise HmdfError(
                f"{self.source}: refusing to unpickle '{module}.{name}'; a CIFAR batch may "
                "only contain numpy arrays and lists."
            ) from None


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes", source=str(path)).load()
    except HmdfError:
        raise
    except Exception as e:  # any malformed pickle: truncated, wrong opcodes, bad arguments
        raise HmdfError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e}).") from None
    if not isinstance(batch, dict):
        raise HmdfError(f"{path}: a CIFAR batch must be a dict, got {type(batch).__name__}.")
    # The original files were written by Python 2, so keys load as bytes; accept str too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _batch_arrays(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_batch(path)
    for key in ("data", layout.label_key):
        if key not in batch:
            raise HmdfError(f"{path}: missing key b'{key}' in the CIFAR batch.")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise HmdfError(f"{path}: b'data' must be a uint8 array of shape (N, 3072), got {got}.")
    try:
        labels = np.asarray(batch[layout.label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise HmdfError(f"{path}: b'{layout.label_key}' must be a list of integers.") from None
    if len(labels) != len(data):
        raise HmdfError(
            f"{path}: {len(labels)} labels in b'{layout.label_key}' for {len(data)} images."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise HmdfError(
            f"{path}: labels in b'{layout.label_key}' must lie in [0, {layout.num_classes - 1}]."
        )
    return data, labels


def _folder(data_dir: Path | None, layout: CifarLayout, name: str) -> Path:
    hint = f"--data-dir must point at the folder that contains {layout.folder}"
    if data_dir is None:
        raise HmdfError(f"{name} is not bundled; {hint}.")
    data_dir = Path(data_dir)
    # Also accept the dataset folder itself: an easy slip that costs nothing to allow.
    folder = data_dir if data_dir.name == layout.folder else data_dir / layout.folder
    for file in layout.train_files + layout.test_files:
        if not (folder / file).is_file():
            raise HmdfError(f"{name} file not found: expected {folder / file}; {hint}.")
    return folder


def _stack(folder: Path, files, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    parts = [_batch_arrays(folder / f, layout) for f in files]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    mean = np.asarray(layout.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(layout.std, np.float32).reshape(1, 3, 1, 1)
    images = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    images -= mean
    images /= std  # in place: CIFAR-10's train set is 600 MB as float32
    return images, labels


def load_cifar(data_dir: Path | None, name: str):
    """Normalised (N, 3, 32, 32) float32 images and int64 labels: (train, test) pairs."""
    layout = CIFAR10 if name == "cifar10" else CIFAR100
    folder = _folder(data_dir, layout, name)
    return _stack(folder, layout.train_files, layout), _stack(folder, layout.test_files, layout)
