"""docs/onnx.md is what a receiver of an exported file gets: its snippet must run as written, and the
metadata it describes (`hmdf.input`) must reproduce the training data from raw data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporters.onnx import export
from hmdf_deploy.data import describe_input, input_spec, load_dataset
from hmdf_deploy.deploy.reference import Reference
from hmdf_deploy.models import ModelConfig
from tests.nets import make_deploy

DOC = Path(__file__).resolve().parents[1] / "docs" / "onnx.md"


def doc_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "docs/onnx.md should hold one python example"
    return blocks[0]


@pytest.mark.parametrize("spikes", ["float", "4bit"])
def test_the_docs_onnxruntime_loop_predicts_as_the_reference(tmp_path, monkeypatch, spikes):
    cfg = ModelConfig(arch="vgg", cfg=[6, "M", 8], in_channels=1, input_size=(8, 8), num_classes=10, T=3,
                      spikes=spikes, weights="1.5bit")
    model = make_deploy(cfg, event=False, source={"dataset": "digits"})
    export(model, tmp_path / "digits.onnx")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(doc_snippet(), str(DOC), "exec"), scope)  # the doc's code, exactly as written

    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:4, None] / 16).float()
    want = Reference(model).run(x.expand(cfg.T, *x.shape).contiguous()).sum(0)
    np.testing.assert_allclose(scope["summed"], want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert scope["prediction"].tolist() == want.argmax(-1).tolist()


def test_digits_input_spec_reproduces_the_training_images():
    from sklearn.datasets import load_digits

    spec = input_spec("digits")
    raw = load_digits().images[:, None]
    x = (raw / spec["divide"] - np.array(spec["mean"])[:, None, None]) / np.array(spec["std"])[:, None, None]
    train, test, _ = load_dataset("digits", T=1)
    loaded = np.concatenate([train.x.numpy(), test.x.numpy()])
    assert sorted(map(bytes, x.astype(np.float32))) == sorted(map(bytes, loaded))  # every image, exactly


@pytest.mark.parametrize("dataset, want", [
    ("digits", "image: x = pixel / 16"),
    ("cifar10", "(pixel / 255 − mean) / std per channel, mean [0.4914"),
    ("neuro-digits", "32×32×2 sensor, T frames of equal time windows"),
    ("dvs-cifar10", "128×128×2 sensor, T frames of equal event counts"),
    (None, "not recorded"),
])
def test_onnx_metadata_and_inspect_say_how_to_make_the_input(tmp_path, dataset, want):
    event = dataset in ("neuro-digits", "dvs-cifar10")
    cfg = ModelConfig(arch="vgg", cfg=[4], in_channels=2 if event else 1, input_size=(4, 4), num_classes=3, T=2)
    model = make_deploy(cfg, event=event, source={"dataset": dataset} if dataset else {})
    export(model, tmp_path / "m.onnx")
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta["hmdf.input"]) == input_spec(dataset)
    assert want in describe_input(json.loads(meta["hmdf.input"]))


def test_the_doc_lists_every_metadata_key(tmp_path):
    cfg = ModelConfig(arch="vgg", cfg=[4], in_channels=1, input_size=(4, 4), num_classes=3, T=2)
    export(make_deploy(cfg, event=False, source={"dataset": "digits"}), tmp_path / "m.onnx")
    written = {p.key for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    documented = set(re.findall(r"^\| `(hmdf\.[A-Za-z_]+)` \|", DOC.read_text(encoding="utf-8"), re.M))
    assert written == documented


def test_neuro_digits_input_spec_reproduces_the_training_frames():
    """An event spec read as docs/onnx.md says (split, sensor, sums) gives the frames training saw."""
    from hmdf_deploy.data import make_neuro_digit_recordings
    from hmdf_deploy.data.digits import digit_split
    from hmdf_deploy.events import to_frames

    spec = input_spec("neuro-digits")
    assert spec["resize"] == "sum"
    first = int(digit_split()[1][0])
    rec = make_neuro_digit_recordings(0, [first])[0]
    frames = to_frames(rec.events, tuple(spec["sensor_size"]), n_time_bins=4, split=spec["split"], size=(16, 16))
    assert frames.sum() == len(rec.events)  # sums, not averages
    test = load_dataset("neuro-digits", T=4, seed=0)[1]
    np.testing.assert_array_equal(frames, test.x[0].numpy())


@pytest.mark.parametrize("weights, path, want", [
    ("fp32", "lowbit", "float32"),
    ("1.5bit", "lowbit", "float32, int2+dequantize (ternary)"),  # the static stem stays fp32
    ("1bit", "integer", "float32, uint8 signs+unpack (binary)"),
    ("1bit", "float", "float32"),
])
def test_packing_metadata_names_the_storage_the_graph_uses(tmp_path, weights, path, want):
    cfg = ModelConfig(arch="vgg", cfg=[4, "M", 6], in_channels=1, input_size=(4, 4), num_classes=3, T=2,
                      weights=weights, spikes="4bit", pool="max")  # max pools pass codes on: --path integer
    export(make_deploy(cfg, event=False), tmp_path / "m.onnx", path=path)
    assert {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}["hmdf.packing"] == want
