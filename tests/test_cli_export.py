"""`hmdf export` through the real command line (typer's CliRunner, in process).

The written files are opened again and run in onnxruntime against the reference executor of the
model they came from; user errors must be one `error: …` line on stderr, exit code 2, no traceback
and no file written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nets
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from hmdf_deploy.cli.main import app
from hmdf_deploy.data import load_dataset
from hmdf_deploy.deploy import DeployModel, Reference, fold, load_hmdf, save_hmdf
from hmdf_deploy.deploy.container import read_checksum
from hmdf_deploy.deploy.quantize import quantize_run
from hmdf_deploy.exporters.onnx import run_sequence
from hmdf_deploy.models import ModelConfig, build_model

runner = CliRunner()
#: A tiny network and schedule (as in test_cli_train.py) that trains in seconds on two cores.
TINY = ["--model", "8,M,16,M", "--T", "2", "--epochs", "1", "--batch-size", "128"]
RUN_SHA = "ab" * 32


def hmdf(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_success(result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output and "error:" not in result.stderr


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `error: …` naming the problem, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def assert_matches_reference(onnx_path: Path, model: DeployModel, x: torch.Tensor) -> None:
    nets.reference_truth(model, x).check(run_sequence(session(onnx_path), x.numpy()), str(onnx_path))


def random_input(model: DeployModel, batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *model.input_shape, generator=g) * 2.0
    return x.unsqueeze(0).expand(model.T, *x.shape).contiguous()


# ------------------------------------------------------------------------------ a .hmdf model
CFG = ModelConfig(arch="vgg", cfg=[8, "M", 16, 16, "G"], in_channels=3, input_size=(8, 8), num_classes=5, T=2,
                  pool="max", weights="1.5bit", spikes="4bit", seca=1)


def _folded() -> DeployModel:
    """A random 1.5-bit / 4-bit VGG whose BN statistics are calibrated so that it fires."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build_model(CFG)
    bns = nets.calibrate(net, torch.rand(8, 3, 8, 8, generator=g) * 2.0, static=True)
    with torch.no_grad():
        for bn in bns:
            bn.bias.copy_(0.3 * torch.randn(bn.num_features, generator=g) + 0.2)
    for m in net.modules():
        nets.randomise_neuron(m, g)
    net.eval()
    return fold(net, CFG, event=False, source={"model": CFG.to_dict(), "dataset": "synthetic", "run_sha256": RUN_SHA})


@pytest.fixture
def hmdf_file(tmp_path) -> Path:
    path = tmp_path / "model.hmdf"
    save_hmdf(_folded(), path)
    return path


def test_the_fixture_model_fires(hmdf_file):
    model = load_hmdf(hmdf_file)
    record: dict = {}
    Reference(model).run(random_input(model), record=record)
    fired = [float((record[n.name] != 0).float().mean()) for n in model.neurons]
    assert min(fired) > 0.01 and sum(fired) / len(fired) > 0.1, fired


def test_export_hmdf_to_onnx_default_step(hmdf_file):
    result = hmdf("export", hmdf_file)
    assert_success(result)
    out = hmdf_file.with_suffix(".onnx")
    assert sorted(os.listdir(hmdf_file.parent)) == ["model.hmdf", "model.onnx"]
    assert result.stdout.strip() == f"wrote {out} ({os.path.getsize(out):,} bytes)"
    meta = props(out)
    assert meta["hmdf.graph"] == "step" and meta["hmdf.path"] == "lowbit"
    assert meta["hmdf.T"] == "2" and meta["hmdf.spikes"] == "4bit"
    # the ONNX file names the .hmdf file it was exported from
    assert meta["hmdf.source_checksum"] == read_checksum(hmdf_file)
    assert meta["hmdf.source_checksum"].startswith("sha256:")
    names = [i.name for i in session(out).get_inputs()]
    assert names[:2] == ["x", "t"] and all(n.startswith("state_in.") for n in names[2:]) and len(names) == 5
    model = load_hmdf(hmdf_file)
    assert_matches_reference(out, model, random_input(model))


def test_export_graph_both(hmdf_file, tmp_path):
    out = tmp_path / "net.onnx"
    result = hmdf("export", hmdf_file, "-o", out, "--graph", "both")
    assert_success(result)
    step, seq = tmp_path / "net.step.onnx", tmp_path / "net.sequence.onnx"
    assert sorted(os.listdir(tmp_path)) == ["model.hmdf", "net.sequence.onnx", "net.step.onnx"]
    assert result.stdout.splitlines() == [f"wrote {step} ({os.path.getsize(step):,} bytes)",
                                          f"wrote {seq} ({os.path.getsize(seq):,} bytes)"]
    model = load_hmdf(hmdf_file)
    x = random_input(model, batch=4)
    for path, graph in ((step, "step"), (seq, "sequence")):
        assert props(path)["hmdf.graph"] == graph
        assert_matches_reference(path, model, x)
    assert [i.name for i in session(seq).get_inputs()] == ["x"]


def test_export_path_integer(hmdf_file, tmp_path):
    out = tmp_path / "int.onnx"
    assert_success(hmdf("export", hmdf_file, "--path", "integer", "-o", out, "--graph", "sequence"))
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    # the two convs after the first layer read 4-bit codes (directly or through a max pool)
    assert ops.count("ConvInteger") == 2
    assert props(out)["hmdf.path"] == "integer"
    model = load_hmdf(hmdf_file)
    assert_matches_reference(out, model, random_input(model))


def test_export_path_float_with_opset_18(hmdf_file, tmp_path):
    out = tmp_path / "f.onnx"
    assert_success(hmdf("export", hmdf_file, "--path", "float", "--opset", "18", "-o", out))
    assert onnx.load(str(out)).opset_import[0].version == 18
    model = load_hmdf(hmdf_file)
    assert_matches_reference(out, model, random_input(model))


@pytest.mark.parametrize("graph", ["step", "both"])
def test_export_json(hmdf_file, tmp_path, graph):
    result = hmdf("export", hmdf_file, "-o", tmp_path / "j.onnx", "--graph", graph, "--json")
    assert_success(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    report = json.loads(lines[0])
    expected = [tmp_path / "j.onnx"] if graph == "step" else [tmp_path / "j.step.onnx", tmp_path / "j.sequence.onnx"]
    assert [f["path"] for f in report["files"]] == [str(p) for p in expected]
    for f in report["files"]:
        assert set(f) == {"path", "bytes"}
        assert f["bytes"] == os.path.getsize(f["path"]) > 0


def test_export_to_hmdf_format(hmdf_file, tmp_path):
    out = tmp_path / "copy.hmdf"
    result = hmdf("export", hmdf_file, "--format", "hmdf", "-o", out, "--json")
    assert_success(result)
    report = json.loads(result.stdout)
    assert report == {"files": [{"path": str(out), "bytes": os.path.getsize(out)}]}
    a, b = load_hmdf(hmdf_file), load_hmdf(out)
    assert (a.T, a.input_shape, a.event, a.num_classes, a.output, a.source) == \
           (b.T, b.input_shape, b.event, b.num_classes, b.output, b.source)
    assert [n.name for n in a.nodes] == [n.name for n in b.nodes]
    for na, nb in zip(a.nodes, b.nodes):
        assert na.attrs() == nb.attrs()
        ta, tb = na.tensors(), nb.tensors()
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), na.name
    x = random_input(a)
    assert torch.equal(Reference(a).run(x), Reference(b).run(x))


# ------------------------------------------------------------------------------- user errors
def test_error_missing_model_path(tmp_path):
    assert_user_error(hmdf("export", tmp_path / "missing.hmdf"), "missing.hmdf", "not found")
    assert os.listdir(tmp_path) == []


def test_error_unknown_format(hmdf_file):
    assert_user_error(hmdf("export", hmdf_file, "--format", "nir2"), "unknown format 'nir2'", "onnx")
    assert os.listdir(hmdf_file.parent) == ["model.hmdf"]


def test_error_bad_graph(hmdf_file):
    assert_user_error(hmdf("export", hmdf_file, "--graph", "diagonal"), "diagonal", "step, sequence or both")
    assert os.listdir(hmdf_file.parent) == ["model.hmdf"]


def test_error_bad_path(hmdf_file):
    assert_user_error(hmdf("export", hmdf_file, "--path", "int4"), "int4", "lowbit")
    assert os.listdir(hmdf_file.parent) == ["model.hmdf"]


def test_error_opset_24_with_ternary_weights(hmdf_file):
    line = assert_user_error(hmdf("export", hmdf_file, "--opset", "24"), "opset 24")
    assert "25" in line
    assert os.listdir(hmdf_file.parent) == ["model.hmdf"]


@pytest.mark.parametrize("opset", [18, 25, 26, 27, 28])
def test_every_opset_is_exported_or_refused_cleanly(hmdf_file, tmp_path, opset):
    """Any --opset onnx knows either exports a working file or is one `error:` line, never a
    traceback from onnxruntime (ternary weights: opsets below 25 are refused)."""
    out = tmp_path / f"o{opset}.onnx"
    result = hmdf("export", hmdf_file, "--opset", opset, "-o", out)
    if result.exit_code == 0:
        assert_success(result)
        model = load_hmdf(hmdf_file)
        assert_matches_reference(out, model, random_input(model))
    else:
        assert_user_error(result, f"opset {opset}")
        assert not out.exists()
        assert opset != 25  # the default opset must work


def test_error_corrupt_hmdf_file(hmdf_file):
    data = bytearray(hmdf_file.read_bytes())
    data[-5] ^= 0xFF  # one payload byte
    hmdf_file.write_bytes(bytes(data))
    assert_user_error(hmdf("export", hmdf_file), "checksum")
    assert os.listdir(hmdf_file.parent) == ["model.hmdf"]


def test_error_not_an_hmdf_file(tmp_path):
    bogus = tmp_path / "model.hmdf"
    bogus.write_text("this is not a model\n")
    assert_user_error(hmdf("export", bogus))
    assert os.listdir(tmp_path) == ["model.hmdf"]


def test_error_output_equal_to_input(hmdf_file):
    before = hmdf_file.read_bytes()
    assert_user_error(hmdf("export", hmdf_file, "-o", hmdf_file), "overwrite")
    # --format hmdf with no -o would write MODEL.hmdf over itself too
    assert_user_error(hmdf("export", hmdf_file, "--format", "hmdf"), "overwrite")
    assert hmdf_file.read_bytes() == before and os.listdir(hmdf_file.parent) == ["model.hmdf"]


def test_error_data_dir_with_a_model_file(hmdf_file, tmp_path):
    out = tmp_path / "m.onnx"
    assert_user_error(hmdf("export", hmdf_file, "--data-dir", tmp_path, "-o", out), "--data-dir is for exporting a training run")
    assert not out.exists()


def test_error_output_folder_missing(hmdf_file, tmp_path):
    assert_user_error(hmdf("export", hmdf_file, "-o", tmp_path / "no" / "such" / "m.onnx"), "does not exist")


# ------------------------------------------------------------------------- from a training run
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "digits"
    result = hmdf("train", "--dataset", "digits", *TINY, "--weights", "1.5bit", "--spikes", "4bit",
                  "--out", out, "--json")
    assert_success(result)
    return out


@pytest.mark.slow
def test_export_from_a_training_run(digits_run, tmp_path):
    run = digits_run
    result = hmdf("export", run, "--json")
    assert_success(result)
    out = run / "model.onnx"
    assert json.loads(result.stdout) == {"files": [{"path": str(out), "bytes": os.path.getsize(out)}]}
    meta = props(out)
    assert meta["hmdf.graph"] == "step" and meta["hmdf.T"] == "2" and meta["hmdf.spikes"] == "4bit"
    # the source digest is the run's weights file
    weights = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert meta["hmdf.source_checksum"] == weights
    # the file computes the folded run: compare on real test digits
    model = quantize_run(run).model
    _, test, _ = load_dataset("digits", T=2)
    x = test.x[:16].unsqueeze(0).expand(2, *test.x[:16].shape).contiguous()
    assert_matches_reference(out, model, x)

    # --format hmdf from the run, then the .hmdf to ONNX again: same graph and numbers
    hm = tmp_path / "digits.hmdf"
    assert_success(hmdf("export", run, "--format", "hmdf", "-o", hm))
    assert load_hmdf(hm).source["run_sha256"] == weights
    both = tmp_path / "digits.onnx"
    assert_success(hmdf("export", hm, "--graph", "both", "-o", both))
    for graph in ("step", "sequence"):
        path = tmp_path / f"digits.{graph}.onnx"
        assert props(path)["hmdf.graph"] == graph
        assert props(path)["hmdf.source_checksum"] == read_checksum(hm)
        assert_matches_reference(path, load_hmdf(hm), x)


@pytest.mark.parametrize("command", ["quantize", "export"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"])
def test_an_output_never_replaces_a_file_of_the_training_run(tmp_path, command, name):
    """Checked before any work: the run directory need not even hold a run to be protected."""
    (tmp_path / "run").mkdir()
    assert_user_error(hmdf(command, tmp_path / "run", "-o", tmp_path / "run" / name),
                      f"would overwrite the training run's own {name}")
    assert not (tmp_path / "run" / name).exists()
