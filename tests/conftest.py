"""Shared fixtures for the training, CLI and distributed tests, and the Triton interpreter switch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hmdf_deploy.data import load_dataset

# Without a GPU the triton backend's kernels run in Triton's interpreter on CPU tensors. Set here,
# before any test imports a kernel: Triton reads the variable when a kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_DATASET_CACHE: dict = {}


def _cached_load_dataset(name, *, T, data_dir=None, seed=0):
    """load_dataset, memoised per session: neuro-digits takes seconds to simulate."""
    key = (name, int(T), None if data_dir is None else str(data_dir), seed)
    if key not in _DATASET_CACHE:
        _DATASET_CACHE[key] = load_dataset(name, T=T, data_dir=data_dir, seed=seed)
    return _DATASET_CACHE[key]


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """One intra-op thread for the whole suite.

    The test networks are tiny and gain nothing from a second thread, while on a shared, busy
    machine OpenMP's spin-waits made single tests 10-20× slower with two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cached_data(monkeypatch):
    """Make the trainer load each (dataset, T, seed) once per session; returns the loader.

    The data is deterministic, so sharing it changes nothing but the time the tests take.
    """
    import hmdf_deploy.training.trainer as trainer

    monkeypatch.setattr(trainer, "load_dataset", _cached_load_dataset)
    return _cached_load_dataset


@pytest.fixture
def read_weights():
    """model.safetensors (or any safetensors file) as a dict of tensors."""
    return lambda path: load_file(str(Path(path)))


@pytest.fixture
def assert_same_weights():
    """Assert two state dicts hold the same keys and bit-equal tensors."""

    def check(a: dict, b: dict) -> None:
        assert sorted(a) == sorted(b)
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"tensors differ: {differ}"

    return check
