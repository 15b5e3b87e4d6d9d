"""The Python API a notebook user touches (docs/python-api.md): recipes, the Engine, the reference
executor, .hmdf saving. Numbers are compared with the reference executor; errors by their message."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch

from hmdf_deploy.deploy import Reference, save_hmdf, with_dtype
from hmdf_deploy.deploy.reference import state_shapes
from hmdf_deploy.errors import HmdfError, HmdfWarning
from hmdf_deploy.models import ModelConfig
from hmdf_deploy.runtime import Engine
from hmdf_deploy.training import recipe
from tests.nets import inputs, make_deploy

CFG = ModelConfig(arch="vgg", cfg=[4, "M", 6], in_channels=2, input_size=(6, 6), num_classes=3, T=3,
                  spikes="4bit", weights="1.5bit")


@pytest.fixture(scope="module")
def deploy():
    return make_deploy(CFG, event=True, source={"dataset": "dvs-cifar10"})


def frames(steps: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return inputs(CFG, True, batch, torch.Generator().manual_seed(seed), steps).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("as_str", [False, True])
def test_engine_takes_a_hmdf_file(tmp_path, deploy, backend, as_str):
    path = tmp_path / "m.hmdf"
    save_hmdf(deploy, path)
    engine = Engine(str(path) if as_str else path, backend)
    x = frames(CFG.T)
    np.testing.assert_allclose(engine.run(x), Reference(deploy).run(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert engine.framing.split == "count"  # the file's dataset (dvs-cifar10) decides the binning


def test_engine_state_is_the_references_membranes(deploy):
    engine = Engine(deploy, "torch")
    assert engine.state == {}
    x = frames(CFG.T)
    state: dict = {}
    for t in range(CFG.T - 1):
        engine.step(x[t])
        _, state = Reference(deploy).step(torch.from_numpy(x[t]), state, t)
        assert engine.state.keys() == state_shapes(deploy).keys()
        for name, v in engine.state.items():
            assert isinstance(v, np.ndarray) and v.shape == (2, *state_shapes(deploy)[name])
            np.testing.assert_array_equal(v, state[name].numpy())
    engine.step(x[CFG.T - 1])  # the window ends: the next one starts from zeros
    assert engine.state == {}


def test_engine_run_warns_when_the_sequence_is_not_T_steps(deploy):
    engine = Engine(deploy, "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine.run(frames(CFG.T))  # T steps: silent
    batch_first = np.swapaxes(frames(CFG.T, batch=5), 0, 1)  # (B, T, …): the loaders' layout
    with pytest.warns(HmdfWarning, match=r"5 steps and the model was trained on T=3; .*np.swapaxes\(x, 0, 1\)"):
        engine.run(batch_first)


def test_reference_computes_in_the_models_dtype_and_takes_numpy(deploy):
    x = frames(CFG.T)
    want = Reference(deploy).run(torch.from_numpy(x))
    got = Reference(deploy).run(x)  # numpy in
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    wide = with_dtype(deploy, torch.float64)
    got64 = Reference(wide).run(x)
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, Reference(deploy, torch.float64).run(torch.from_numpy(x).double()), rtol=0, atol=0)


def test_reference_step_refuses_a_negative_step(deploy):
    with pytest.raises(HmdfError, match="the step index t counts from 0, got -1"):
        Reference(deploy).step(frames(1)[0], {}, -1)


def test_save_hmdf_refuses_float64_with_the_way_out(tmp_path, deploy):
    with pytest.raises(HmdfError, match=r"float64 parameters .* with_dtype\(model, torch.float32\)"):
        save_hmdf(with_dtype(deploy, torch.float64), tmp_path / "m.hmdf")
    assert not (tmp_path / "m.hmdf").exists()
    save_hmdf(with_dtype(with_dtype(deploy, torch.float64), torch.float32), tmp_path / "m.hmdf")  # the way out works


def test_recipe_is_what_hmdf_train_trains_with(tmp_path, cached_data):
    from typer.testing import CliRunner

    from hmdf_deploy.cli.main import app

    result = CliRunner().invoke(app, ["train", "--dataset", "digits", "--model", "4,M", "--epochs", "1", "--T", "2",
                                      "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    model_config, train_config = recipe("digits", model="4,M", epochs=1, T=2)
    assert written["train"] == asdict(train_config)
    data = {"in_channels": 1, "input_size": [8, 8], "num_classes": 10}  # `start` takes these from the data
    assert written["model"] == {**json.loads(json.dumps(model_config.to_dict())), **data}


def test_recipe_defaults_and_overrides():
    m, t = recipe("neuro-digits")
    assert (m.arch, m.cfg, m.T, t.epochs, t.mix) == ("vgg", [16, "M", 32, "M", 64, "M"], 8, 8, False)
    m, t = recipe("cifar10", arch="resnet19", cfg=[], lr=0.1, seed=3)
    assert (m.arch, m.T, t.lr, t.seed, t.mix, t.epochs) == ("resnet19", 4, 0.1, 3, True, 300)
    assert recipe("digits", model="resnet18")[0].arch == "resnet18"
    with pytest.raises(HmdfError, match="recipe\\(\\) got unknown options colour, depth"):
        recipe("digits", depth=3, colour="red")
    with pytest.raises(HmdfError, match="unknown dataset 'mnist'; choose one of digits, neuro-digits"):
        recipe("mnist")
    with pytest.raises(HmdfError, match="--T must be at least 1"):
        recipe("digits", T=0)


@pytest.mark.parametrize("policy", ["PASSIVE", "passive", "ACTIVE", None])
def test_onnxruntime_threads_sleep_under_a_passive_wait_policy(deploy, monkeypatch, policy):
    """One knob for both runtimes: OMP_WAIT_POLICY=PASSIVE (the `hmdf` command's default) turns off
    onnxruntime's spinning too (benchmarks/threads.py, ort-step)."""
    if policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    options = Engine(deploy, "onnxruntime").backend.session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        if policy in ("PASSIVE", "passive"):
            assert options.get_session_config_entry(key) == "0"
        else:  # onnxruntime's own default (spin)
            with pytest.raises(RuntimeError, match="does not have configuration"):
                options.get_session_config_entry(key)


def test_recipe_takes_what_a_python_caller_passes():
    from pathlib import Path

    m, t = recipe("digits", T=None, epochs=None, data_dir=Path("data"))  # None: the default, as on the CLI
    assert (m.T, t.epochs, t.data_dir) == (4, 5, "data")  # data_dir is stored in config.json: a str
    m, _ = recipe("digits", cfg=[8, "M", 16])  # a cfg alone is a VGG's, not replaced by the recipe's model
    assert (m.arch, m.cfg) == ("vgg", [8, "M", 16])
    with pytest.raises(HmdfError, match="takes model .* or arch and cfg, not both"):
        recipe("digits", model="vgg11", cfg=[8])


def test_engine_takes_an_onnx_file_whatever_the_suffix_case(tmp_path, deploy):
    from exporters.onnx import export

    export(deploy, tmp_path / "m.onnx")
    (tmp_path / "m.onnx").rename(tmp_path / "M.ONNX")
    engine = Engine(tmp_path / "M.ONNX", "onnxruntime")
    x = frames(CFG.T)
    np.testing.assert_allclose(engine.run(x), Reference(deploy).run(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_engine_state_is_a_copy_and_logits_are_float32(deploy, backend):
    engine = Engine(with_dtype(deploy, torch.float64), backend)
    x = frames(CFG.T)
    r = engine.step(x[0])
    assert r.logits.dtype == np.float32 and engine.run(x).dtype == np.float32
    before = {k: v.copy() for k, v in engine.state.items()}
    for v in engine.state.values():
        v += 1.0  # must not reach the engine
    for k, v in engine.state.items():
        np.testing.assert_array_equal(v, before[k])
