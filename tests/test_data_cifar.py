"""CIFAR-10/100 loaders on small files written in the real python-pickle layout."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from hmdf_deploy.data import DataInfo, input_spec, load_dataset
from hmdf_deploy.data.cifar import _SafeUnpickler
from hmdf_deploy.errors import HmdfError


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, like the original CIFAR files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def _batch(n, label_key, num_classes, seed, py2=False):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]
    batch = {b"batch_label": b"testing batch", label_key: labels, b"data": data,
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [v // 5 for v in labels]
    return batch, data, labels


def _dump(path, obj, py2=False):
    with open(path, "wb") as f:
        if py2:
            buf = io.BytesIO()
            _Py2Pickler(buf, protocol=2).dump(obj)
            # numpy 1.x (which wrote the real files) named the module numpy.core.multiarray
            f.write(buf.getvalue().replace(b"cnumpy._core.multiarray\n",
                                           b"cnumpy.core.multiarray\n"))
        else:
            pickle.dump(obj, f)


def make_cifar10(root, n=6, py2=False):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        batch, x, y = _batch(n, b"labels", 10, i, py2)
        _dump(folder / f"data_batch_{i}", batch, py2)
        train_x.append(x)
        train_y += y
    batch, test_x, test_y = _batch(n, b"labels", 10, 99, py2)
    _dump(folder / "test_batch", batch, py2)
    return np.concatenate(train_x), train_y, test_x, test_y


def make_cifar100(root, n=7):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batch, train_x, train_y = _batch(n, b"fine_labels", 100, 1)
    _dump(folder / "train", batch)
    batch, test_x, test_y = _batch(n, b"fine_labels", 100, 2)
    _dump(folder / "test", batch)
    return train_x, train_y, test_x, test_y


def _normalised(raw, mean, std):
    x = raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255
    mean, std = (np.array(v, np.float32)[:, None, None] for v in (mean, std))
    return (x - mean) / std


@pytest.mark.parametrize("py2", [False, True])
def test_cifar10_loads_real_layout(tmp_path, py2):
    train_x, train_y, test_x, test_y = make_cifar10(tmp_path, py2=py2)
    train, test, info = load_dataset("cifar10", T=4, data_dir=tmp_path)
    assert info == DataInfo("cifar10", 3, (32, 32), 10, False, "crop-flip")
    assert train.x.shape == (30, 3, 32, 32) and test.x.shape == (6, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert train.y.tolist() == train_y and test.y.tolist() == test_y
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    np.testing.assert_allclose(train.x.numpy(), _normalised(train_x, mean, std), atol=1e-5)
    np.testing.assert_allclose(test.x.numpy(), _normalised(test_x, mean, std), atol=1e-5)


def test_cifar10_accepts_the_dataset_folder_itself(tmp_path):
    make_cifar10(tmp_path)
    train, _, _ = load_dataset("cifar10", T=4, data_dir=tmp_path / "cifar-10-batches-py")
    assert len(train) == 30


def test_cifar100_loads_fine_labels(tmp_path):
    train_x, train_y, test_x, test_y = make_cifar100(tmp_path)
    train, test, info = load_dataset("cifar100", T=4, data_dir=tmp_path)
    assert info == DataInfo("cifar100", 3, (32, 32), 100, False, "crop-flip")
    assert train.y.tolist() == train_y and test.y.tolist() == test_y
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    np.testing.assert_allclose(train.x.numpy(), _normalised(train_x, mean, std), atol=1e-5)


@pytest.mark.parametrize("name, make", [("cifar10", make_cifar10), ("cifar100", make_cifar100)])
def test_input_spec_reproduces_the_loaded_images(tmp_path, name, make):
    """What exported files tell a receiver (ONNX metadata hmdf.input) is what training saw."""
    _, _, test_x, _ = make(tmp_path)
    spec = input_spec(name)
    mean, std = (np.array(spec[k], np.float32)[:, None, None] for k in ("mean", "std"))
    x = (test_x.reshape(-1, 3, 32, 32) / spec["divide"] - mean) / std
    np.testing.assert_allclose(load_dataset(name, T=4, data_dir=tmp_path)[1].x.numpy(), x, rtol=1e-6, atol=1e-6)


def test_missing_data_names_the_expected_path(tmp_path):
    with pytest.raises(HmdfError, match="--data-dir must point at the folder that contains "
                                        "cifar-10-batches-py"):
        load_dataset("cifar10", T=4)
    with pytest.raises(HmdfError, match=r"expected .*cifar-10-batches-py.data_batch_1; --data-dir"):
        load_dataset("cifar10", T=4, data_dir=tmp_path)
    with pytest.raises(HmdfError, match=r"expected .*cifar-100-python.train; --data-dir must "
                                        "point at the folder that contains cifar-100-python"):
        load_dataset("cifar100", T=4, data_dir=tmp_path)
    make_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(HmdfError, match=r"test_batch"):
        load_dataset("cifar10", T=4, data_dir=tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("make", ["os.system", "eval", "nested"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, make):
    make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {"os.system": _Evil(marker), "eval": _EvalEvil()}.get(make, _Evil(marker))
    batch, _, _ = _batch(6, b"labels", 10, 1)
    if make == "nested":
        batch[b"labels"] = [evil]  # hidden inside the labels list
    else:
        batch = evil
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", batch)
    with pytest.raises(HmdfError, match=r"data_batch_1: refusing to unpickle '(posix|builtins)\."):
        load_dataset("cifar10", T=4, data_dir=tmp_path)
    assert not marker.exists()


def test_safe_unpickler_allows_numpy_arrays_only():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = _SafeUnpickler(io.BytesIO(pickle.dumps({b"data": arr})), encoding="bytes").load()
    np.testing.assert_array_equal(out[b"data"], arr)
    with pytest.raises(HmdfError, match="refusing to unpickle 'collections.OrderedDict'"):
        from collections import OrderedDict

        _SafeUnpickler(io.BytesIO(pickle.dumps(OrderedDict(a=1))), encoding="bytes").load()


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda b: b[: len(b) // 2], r"data_batch_1: not a readable CIFAR batch"),
        (lambda b: b"not a pickle at all", r"data_batch_1: not a readable CIFAR batch"),
    ],
)
def test_corrupt_batch(tmp_path, corrupt, message):
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(HmdfError, match=message):
        load_dataset("cifar10", T=4, data_dir=tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.pop(b"labels"), r"missing key b'labels'"),
        (lambda b: b.__setitem__(b"data", np.zeros((6, 100), np.uint8)),
         r"b'data' must be a uint8 array of shape \(N, 3072\)"),
        (lambda b: b.__setitem__(b"data", np.zeros((6, 3072), np.float32)),
         r"b'data' must be a uint8 array"),
        (lambda b: b.__setitem__(b"labels", [1, 2]), r"2 labels in b'labels' for 6 images"),
        (lambda b: b.__setitem__(b"labels", [10] * 6), r"labels in b'labels' must lie in \[0, 9\]"),
    ],
)
def test_bad_batch_contents(tmp_path, change, message):
    make_cifar10(tmp_path)
    batch, _, _ = _batch(6, b"labels", 10, 1)
    change(batch)
    _dump(tmp_path / "cifar-10-batches-py" / "data_batch_1", batch)
    with pytest.raises(HmdfError, match=message):
        load_dataset("cifar10", T=4, data_dir=tmp_path)
