"""Bad numbers at the runtime's input (docs/behaviour.md): NaN / Inf, all-zero streams, streams
shorter than T, batches of size 0. Both backends, and the CLI where a file is involved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import nets
from hmdf_deploy.cli import ui
from hmdf_deploy.cli.main import app
from hmdf_deploy.deploy import Reference, save_hmdf
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig
from hmdf_deploy.runtime import Engine

T, C, H, W, K = 3, 2, 8, 8, 5
BACKENDS = ["torch", "onnxruntime", "triton"]
runner = CliRunner()


@pytest.fixture(scope="module")
def deploy():
    cfg = ModelConfig(arch="vgg", cfg=[4, "M"], in_channels=C, input_size=(H, W), num_classes=K, T=T)
    return nets.make_deploy(cfg, True, 0, source={"dataset": "neuro-digits"})


@pytest.fixture(scope="module")
def model_file(deploy, tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-numbers") / "model.hmdf"
    save_hmdf(deploy, path)
    return path


def frames(n: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed)
    return g.poisson(0.8, (n, batch, C, H, W)).astype(np.float32)


def hmdf_run(model_file, path, *extra):
    result = runner.invoke(app, ["run", str(model_file), "--stream", str(path), "--json", *extra])
    return result


# ------------------------------------------------------------------------------------ NaN / Inf
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_engine_refuses_non_finite_input(deploy, backend, bad):
    engine = Engine(deploy, backend)
    x = frames(T)
    engine.step(x[0])
    x[1, 0, 1, 2, 3] = bad
    with pytest.raises(HmdfError, match="the input at step 1 holds NaN or Inf values"):
        engine.step(x[1])
    assert engine.t == 1  # refused before the state moved: the stream can go on with a good frame
    with pytest.raises(HmdfError, match="the input sequence holds NaN or Inf values"):
        engine.run(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_engine_refuses_input_of_another_shape(deploy, backend):
    """A frame of another size is one HmdfError naming both shapes, before any backend sees it (a
    kernel could otherwise broadcast it into a buffer of the right size and answer)."""
    engine = Engine(deploy, backend)
    engine.step(frames(1)[0])
    for bad in (np.zeros((1, C, H, 1), np.float32), np.zeros((1, C, H), np.float32)):
        with pytest.raises(HmdfError, match=rf"the input at step 1 has shape \({', '.join(map(str, bad.shape))},?\); "
                                            rf"the model takes \(B, {C}, {H}, {W}\)"):
            engine.step(bad)
    assert engine.t == 1
    with pytest.raises(HmdfError, match=rf"the input sequence has shape .*; the model takes \(T, B, {C}, {H}, {W}\)"):
        engine.run(frames(T)[:, :, :, :1])


def test_engine_refuses_values_that_overflow_float32(deploy):
    with pytest.raises(HmdfError, match="NaN or Inf"):
        Engine(deploy, "torch").step(np.full((1, C, H, W), 1e39, np.float64))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_cli_refuses_a_file_with_non_finite_frames_in_one_line(model_file, tmp_path, bad):
    x = frames(T)[:, 0]
    x[2, 1, 0, 0] = bad
    path = tmp_path / "bad.npz"
    np.savez(path, frames=x)
    result = hmdf_run(model_file, path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}") and "NaN" in line


# ---------------------------------------------------------------------------- all-zero stream
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_zero_stream_runs_on_the_biases_alone(deploy, backend, model_file, tmp_path):
    zeros = np.zeros((T, 2, C, H, W), np.float32)
    logits = Engine(deploy, backend).run(zeros)
    truth = nets.reference_truth(deploy, torch.from_numpy(zeros))
    truth.check(logits, backend)
    assert np.isfinite(logits).all()
    np.testing.assert_array_equal(logits[:, 0], logits[:, 1])  # no input: every sample alike

    path = tmp_path / "zeros.npz"
    np.savez(path, frames=zeros[:, 0])
    result = hmdf_run(model_file, path, "--backend", backend)
    assert result.exit_code == 0, (result.stderr, result.exception)
    *windows, summary = [json.loads(line) for line in result.stdout.splitlines()]
    assert [w["steps"] for w in windows] == [T]
    assert windows[0]["prediction"] == int(truth.f32[:, 0].sum(0).argmax())
    assert (summary["summary"]["steps"], summary["summary"]["blank_steps"]) == (T, T)  # reported


# ---------------------------------------------------------------------- shorter than T
@pytest.mark.parametrize("policy", ["window", "continuous"])
def test_a_stream_shorter_than_T_is_one_partial_window(deploy, model_file, tmp_path, policy):
    x = frames(T - 1)[:, 0]
    path = tmp_path / "short.npz"
    np.savez(path, frames=x)
    result = hmdf_run(model_file, path, "--backend", "torch", "--policy", policy)
    assert result.exit_code == 0, (result.stderr, result.exception)
    *windows, summary = [json.loads(line) for line in result.stdout.splitlines()]
    want = Reference(deploy).run(torch.from_numpy(x)[:, None]).sum(0)[0]  # the first T-1 steps
    assert [(w["window"], w["steps"], w["prediction"]) for w in windows] == [(0, T - 1, int(want.argmax()))]
    assert (summary["summary"]["steps"], summary["summary"]["windows"]) == (T - 1, 1)


# ---------------------------------------------------------------------------- batch size 0
@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_size_0_gives_empty_logits(deploy, backend):
    engine = Engine(deploy, backend)
    empty = np.zeros((0, C, H, W), np.float32)
    r = engine.step(empty)
    assert r.logits.shape == (0, K) and r.prediction.shape == (0,) and r.confidence.shape == (0,)
    assert engine.run(np.zeros((T, 0, C, H, W), np.float32)).shape == (T, 0, K)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_size_is_fixed_within_a_window(deploy, backend):
    engine = Engine(deploy, backend)
    engine.step(np.zeros((0, C, H, W), np.float32))
    with pytest.raises(HmdfError, match="batch size changed from 0 to 1 within a window; call reset"):
        engine.step(frames(1)[0])
    engine.reset()
    assert engine.step(frames(1)[0]).logits.shape == (1, K)


def test_json_output_stays_json_when_a_number_is_not_finite(capsys):
    """--json output must parse with a strict JSON parser: NaN and ±Inf (a diverged metric, a
    confidence of NaN logits) are written as null, never as the bare tokens NaN / Infinity."""
    ui.emit_json({"loss": float("nan"), "acc": [0.5, float("inf"), -float("inf")], "ok": 1, "name": "x"})
    line = capsys.readouterr().out
    assert json.loads(line, parse_constant=lambda token: pytest.fail(f"non-JSON token {token}")) == {
        "loss": None, "acc": [0.5, None, None], "ok": 1, "name": "x"}
