"""`hmdf quantize` and `hmdf inspect` end to end (DESIGN.md "CLI conventions", SPEC §5.3, §6, §10).

Two real training runs (digits, 1 epoch) are made once for the module through `hmdf train`; every
figure the commands print is re-checked independently: the written file is loaded and run against
the trained network, operation counts are counted by hand, accuracies are recomputed.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import nets

import hmdf_deploy.deploy.quantize as quantize_module
from hmdf_deploy.cli.main import app
from hmdf_deploy.data import load_dataset, make_neuro_digit_recordings
from hmdf_deploy.deploy import Reference, fold, load_hmdf, save_hmdf
from hmdf_deploy.deploy.container import write_container
from hmdf_deploy.deploy.hmdf_file import to_parts
from hmdf_deploy.deploy.inputs import sequence_input
from hmdf_deploy.events import to_frames, write_events
from hmdf_deploy.models import ModelConfig, build_model
from hmdf_deploy.neurons import HMDFNeuron
from hmdf_deploy.quant import quantize_weight
from hmdf_deploy.training import load_trained
from test_data_cifar import make_cifar10

runner = CliRunner()
TINY = "8,M,16,M"
T = 2
#: neurons per step of the tiny net on 8×8 digits: 8 channels at 8×8, then 16 at 4×4 (after M)
NEURONS_PER_STEP = 8 * 8 * 8 + 16 * 4 * 4


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `error: …` naming the problem, no traceback, nothing on stdout."""
    assert result.exit_code == 2, f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def train(out, *extra: str) -> dict:
    result = invoke("train", "--dataset", "digits", "--model", TINY, "--T", T, "--epochs", 1,
                    "--batch-size", 128, "--out", out, "--json", *extra)
    assert_ok(result)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ternary_run(tmp_path_factory):
    """A 1.5-bit, 4-bit-spike run; returns (run_dir, train record)."""
    out = tmp_path_factory.mktemp("runs") / "ternary"
    return out, train(out, "--weights", "1.5bit", "--spikes", "4bit")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fp32"
    return out, train(out)


@pytest.fixture(scope="module")
def ternary_file(ternary_run, tmp_path_factory):
    """`hmdf quantize --json` of the ternary run: (path, parsed JSON)."""
    run_dir, _ = ternary_run
    path = tmp_path_factory.mktemp("hmdf") / "digits.hmdf"
    result = invoke("quantize", run_dir, "-o", path, "--json")
    assert_ok(result)
    return path, json.loads(result.stdout)


@pytest.fixture(scope="module")
def digits_test():
    _, test, info = load_dataset("digits", T=T)
    assert not info.event
    return test


# ------------------------------------------------------------------------------- quantize
@pytest.mark.slow
def test_quantize_json_reports_a_passed_check_and_packed_layers(ternary_file, digits_test):
    path, report = ternary_file
    assert path.is_file() and report["path"] == str(path) and report["file_bytes"] == path.stat().st_size
    check = report["check"]
    assert check["passed"] is True
    assert check["samples"] == len(digits_test) == 360
    # every 4-bit code of every neuron was compared: samples × T × neurons per step
    assert check["codes"] == 360 * T * NEURONS_PER_STEP
    assert check["max_code_diff"] <= 1 and check["code_flips"] <= 1e-3 * check["codes"]
    assert check["max_abs_diff"] <= 1e-9 * max(1.0, check["logit_scale"])
    assert check["prediction_agreement"] == 1.0
    assert report["accuracy_before"] is None and report["accuracy_after"] is None
    layers = {row["name"]: row for row in report["layers"]}
    # SPEC §5: the stem and the classifier stay full precision, the other conv is ternary
    assert layers["features.0.conv"]["weights"] == "fp32" and layers["features.0.conv"]["bits_per_weight"] == 32
    assert layers["classifier"]["weights"] == "fp32"
    ternary = layers["features.2.conv"]
    assert ternary["weights"] == "1.5bit" and ternary["params"] == 16 * 8 * 3 * 3
    # 1.6 bits per weight (5 trits per byte); the last byte of 1152 = 5·230 + 2 is partly padding
    assert ternary["bits_per_weight"] == 8 * math.ceil(1152 / 5) / 1152
    assert ternary["bits_per_weight"] <= 1.6 + 8 / ternary["params"]
    assert ternary["paper_bytes"] == 0.375 * 1152 + 4 * 2 * 16
    assert report["fp32_bytes"] == 4 * sum(row["params"] for row in report["layers"])
    assert report["tensor_bytes"] == sum(row["bytes"] for row in report["layers"]) < report["fp32_bytes"]


@pytest.mark.slow
def test_quantized_file_reproduces_the_trained_network(ternary_run, ternary_file, digits_test):
    """Independent of the command's own check: load the file, run the reference executor on the
    whole digits test split, compare with the trained network from the run directory."""
    run_dir, record = ternary_run
    path, _ = ternary_file
    model = load_hmdf(path)
    assert model.T == T and model.input_shape == (1, 8, 8) and not model.event and model.spikes == "4bit"
    assert model.source["dataset"] == "digits" and model.source["model"]["weights"] == "1.5bit"
    net = load_trained(run_dir).eval()
    truth, trained, _ = nets.trained_truth(net, model, digits_test.x, static=True)
    record_: dict = {}
    got = Reference(model).run(sequence_input(digits_test.x, T, True), record=record_)
    flipped = torch.zeros(len(digits_test.x), dtype=torch.bool)
    for name, out in trained.items():
        differ = record_[name] != nets.expected_codes(out)
        assert (record_[name] - out * 4).abs().max() <= 1 and int(differ.sum()) <= nets.MAX_FLIP_SHARE * differ.numel()
        flipped |= differ.flatten(2).any(-1).any(0)
    # logits within nets.float_bound of the trained network in float64, but where a code flipped
    nets.Truth(truth.f32, truth.exact, truth.keep & ~flipped).check(got, "file")
    assert torch.equal(got.sum(0).argmax(-1), truth.f32.sum(0).argmax(-1))
    # the accuracy of the file is the run's own final test accuracy
    accuracy = float((got.sum(0).argmax(-1) == digits_test.y).double().mean())
    assert accuracy == pytest.approx(record["test_acc"][-1], abs=1e-9)


@pytest.mark.slow
def test_quantize_table_and_default_output_path(ternary_run):
    run_dir, _ = ternary_run
    result = invoke("quantize", run_dir, "--calib", 8)
    assert_ok(result)
    default = run_dir / "model.hmdf"
    assert default.is_file()
    assert str(default) in result.stdout
    for name in ("features.0.conv", "features.2.conv", "classifier", "1.5bit"):
        assert name in result.stdout
    assert re.search(r"check on 8 test samples: .*passed", result.stdout)
    default.unlink()


@pytest.mark.slow
def test_quantize_calib_checks_that_many_samples(ternary_run, tmp_path):
    run_dir, _ = ternary_run
    result = invoke("quantize", run_dir, "-o", tmp_path / "c.hmdf", "--calib", 16, "--json")
    assert_ok(result)
    check = json.loads(result.stdout)["check"]
    assert check["samples"] == 16 and check["codes"] == 16 * T * NEURONS_PER_STEP and check["passed"]


@pytest.mark.slow
def test_post_training_quantization_of_an_fp32_run(fp32_run, tmp_path, digits_test):
    run_dir, record = fp32_run
    path = tmp_path / "ptq.hmdf"
    result = invoke("quantize", run_dir, "-o", path, "--weights", "1bit", "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert "warning:" in result.stderr and "fp32" in result.stderr
    before, after = report["accuracy_before"], report["accuracy_after"]
    # before: the fp32 network's final test accuracy, as training reported it
    assert before == pytest.approx(record["test_acc"][-1], abs=1e-9)
    # after: recomputed from the written file
    model = load_hmdf(path)
    assert {n.weights for n in model.nodes if hasattr(n, "weights")} == {"fp32", "1bit"}
    logits = Reference(model).run(sequence_input(digits_test.x, model.T, True))
    accuracy = float((logits.sum(0).argmax(-1) == digits_test.y).double().mean())
    assert after == pytest.approx(accuracy, abs=1.5 / len(digits_test))
    assert report["check"]["passed"] and model.source["model"]["weights"] == "1bit"
    binary = {row["name"]: row for row in report["layers"]}["features.2.conv"]
    assert binary["weights"] == "1bit" and binary["bits_per_weight"] == 1.0
    # the table form prints the same warning with both accuracies, as percentages
    table = invoke("quantize", run_dir, "-o", tmp_path / "ptq2.hmdf", "--weights", "1bit")
    assert_ok(table)
    m = re.search(r"warning: .*?(\d+\.\d\d)% → (\d+\.\d\d)%", table.stderr)
    assert m, table.stderr
    assert float(m.group(1)) == pytest.approx(100 * before, abs=0.006)
    assert float(m.group(2)) == pytest.approx(100 * after, abs=0.006)


@pytest.mark.slow
def test_fp32_run_quantizes_without_weights_option(fp32_run, tmp_path):
    run_dir, _ = fp32_run
    result = invoke("quantize", run_dir, "-o", tmp_path / "f.hmdf", "--calib", 32, "--json")
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["accuracy_before"] is None and "warning" not in result.stderr
    assert {row["weights"] for row in report["layers"] if row["kind"] != "neuron"} == {"fp32"}
    assert report["check"]["codes"] == 0  # float spikes: no codes to compare


def test_check_passes_only_within_its_limits():
    """`Check.passed` at its limits: logits (both in float64) may differ by 1e-9 of the logit scale
    (at least 1), at most 0.1 % of the 4-bit codes may flip, and a flip is ±1 only (SPEC §1.2: a
    rounding tie)."""
    def check(diff: float, scale: float, flips: int = 0, worst: int = 0) -> bool:
        return quantize_module.Check(16, diff, scale, 1.0, 10_000, flips, worst).passed

    assert check(0.99e-7, 100.0) and not check(1.01e-7, 100.0)  # limit 1e-9 · 100 = 1e-7
    assert check(0.99e-9, 0.5) and not check(1.01e-9, 0.5)  # a scale below 1 counts as 1
    assert check(0.0, 1.0, flips=10, worst=1) and not check(0.0, 1.0, flips=11, worst=1)  # 10 of 10 000
    assert not check(0.0, 1.0, flips=1, worst=2)  # one code off by 2 is not a tie


@pytest.mark.slow
@pytest.mark.parametrize("run, how", [("ternary", "broken fold"), ("fp32", "broken fold"), ("ternary", "tolerance")])
def test_a_failed_check_writes_nothing(request, tmp_path, monkeypatch, run, how):
    """A fold that disagrees with the trained network is never written: on the 4-bit run the codes
    give it away, on the float run (no codes) only the logits do."""
    run_dir, _ = request.getfixturevalue(f"{run}_run")
    if how == "broken fold":
        real = quantize_module.check_equivalence

        def broken(net, deploy, x, *args, **kwargs):
            deploy.nodes[0].shift = deploy.nodes[0].shift + 0.5  # a folding bug
            return real(net, deploy, x, *args, **kwargs)

        monkeypatch.setattr(quantize_module, "check_equivalence", broken)
    else:
        monkeypatch.setattr(quantize_module, "LOGIT_RTOL", -1.0)
    path = tmp_path / "never.hmdf"
    line = assert_user_error(invoke("quantize", run_dir, "-o", path, "--calib", 16), "nothing was written")
    assert "disagrees with the trained network" in line
    assert not path.exists() and list(tmp_path.iterdir()) == []
    # an existing file is left as it was
    path.write_bytes(b"previous")
    assert_user_error(invoke("quantize", run_dir, "-o", path, "--calib", 16))
    assert path.read_bytes() == b"previous"


@pytest.mark.slow
def test_quantize_refuses_weights_on_a_quantized_run(ternary_run, tmp_path):
    run_dir, _ = ternary_run
    assert_user_error(invoke("quantize", run_dir, "-o", tmp_path / "x.hmdf", "--weights", "1bit"), "1.5bit")
    assert not (tmp_path / "x.hmdf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("n", [0, -3])
def test_quantize_refuses_calib_below_one(ternary_run, tmp_path, n):
    run_dir, _ = ternary_run
    assert_user_error(invoke("quantize", run_dir, "-o", tmp_path / "x.hmdf", "--calib", n), "--calib")
    assert not (tmp_path / "x.hmdf").exists()


def test_quantize_refuses_a_file(tmp_path):
    f = tmp_path / "not-a-dir.txt"
    f.write_text("hello")
    assert_user_error(invoke("quantize", f, "-o", tmp_path / "x.hmdf"), "not a directory")
    assert_user_error(invoke("quantize", tmp_path / "missing", "-o", tmp_path / "x.hmdf"), "not a directory")


def test_quantize_refuses_a_dir_without_a_run(tmp_path):
    assert_user_error(invoke("quantize", tmp_path, "-o", tmp_path / "x.hmdf"), "config.json")
    assert not (tmp_path / "x.hmdf").exists()


@pytest.mark.parametrize("weights", ["2bit", "fp32", "ternary"])
def test_quantize_refuses_unknown_weights(tmp_path, weights):
    assert_user_error(invoke("quantize", tmp_path, "--weights", weights), "--weights", weights)


# -------------------------------------------------------------------------------- inspect
@pytest.mark.slow
def test_inspect_json_counts(ternary_run, ternary_file):
    run_dir, _ = ternary_run
    path, quantized = ternary_file
    samples = 8
    result = invoke("inspect", path, "--samples", samples, "--json")
    assert_ok(result)
    info = json.loads(result.stdout)
    assert info["T"] == T and info["input_shape"] == [1, 8, 8] and info["event"] is False
    assert info["spikes"] == "4bit" and info["num_classes"] == 10
    assert info["layers"] == quantized["layers"] and info["file_bytes"] == path.stat().st_size
    costs = info["costs"]
    # SPEC §10: 3 NOPs per HM-DF neuron per step
    assert costs["nops"] == 3 * NEURONS_PER_STEP * T
    # SOPs by hand from the trained network: non-zero inputs × non-zero weights of every conv but
    # the stem, summed over T, per sample
    net = load_trained(run_dir)
    _, test, _ = load_dataset("digits", T=T)
    x = test.x[:samples]
    seen: list[torch.Tensor] = []
    conv = net.features[2].conv
    hook = conv.register_forward_hook(lambda mod, args, out: seen.append(args[0].clone()))
    try:
        _, spikes = nets.trained_outputs(net.eval(), x, static=True)
    finally:
        hook.remove()
    mask = (quantize_weight(conv.weight.detach(), conv.weights) != 0).float().flatten(1)  # (O, I·9)
    sops = 0.0
    for inp in seen:  # (B, 8, 4, 4) per step
        cols = F.unfold((inp != 0).float(), 3, padding=1)  # (B, I·9, 16)
        sops += float(torch.einsum("ok,bkl->", mask, cols))
    assert len(seen) == T and sops > 0
    assert costs["sops"] == pytest.approx(sops / samples, rel=1e-9)
    assert costs["energy_mj"] == pytest.approx(costs["sops"] * 0.9e-9 / 8, rel=1e-9)
    fired = sum(float((s != 0).sum()) for s in spikes.values())
    total = sum(s.numel() for s in spikes.values())
    assert costs["spike_rate"] == pytest.approx(fired / total, rel=1e-9)


@pytest.mark.slow
def test_inspect_table(ternary_file):
    path, _ = ternary_file
    result = invoke("inspect", path, "--samples", 4)
    assert_ok(result)
    out = result.stdout
    for text in ("features.0.conv", "features.2.conv", "classifier", "T=2", "spikes 4bit", "SOPs", "NOPs",
                 "energy", "spike rate", f"{3 * NEURONS_PER_STEP * T:,}", f"{path.stat().st_size:,} bytes",
                 "input 1 × 8 × 8: image: x = pixel / 16; the same x at every step"):
        assert text in out, text
    assert "…" not in out  # not a terminal: rich would cut cells at 80 columns
    assert result.stderr.strip() == ""


@pytest.fixture(scope="module")
def neuro_model(tmp_path_factory):
    """A neuro-digits model without training: a random event VGG (2×16×16, T = 3), folded."""
    cfg = ModelConfig(arch="vgg", cfg=[4, "M", 8, "M"], in_channels=2, input_size=(16, 16), num_classes=10, T=3,
                      weights="1bit", spikes="4bit", quantize_stem=True).validate()
    torch.manual_seed(0)
    net = build_model(cfg).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, HMDFNeuron):
                m.b.fill_(-1.0)  # θ ≈ 0.27: the random net fires on event counts
    deploy = fold(net, cfg, event=True, source={"dataset": "neuro-digits", "model": cfg.to_dict()})
    path = tmp_path_factory.mktemp("neuro") / "neuro.hmdf"
    save_hmdf(deploy, path)
    return path, net, cfg


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    recording = make_neuro_digit_recordings(0, [7])[0]
    path = tmp_path_factory.mktemp("events") / "seven.npz"
    write_events(path, recording)
    return path, recording


def test_inspect_events_file(neuro_model, events_file):
    path, net, cfg = neuro_model
    events_path, recording = events_file
    result = invoke("inspect", path, "--events", events_path, "--json")
    assert_ok(result)
    info = json.loads(result.stdout)
    assert info["event"] is True and info["input_shape"] == [2, 16, 16] and info["T"] == 3
    assert info["input"] == {"kind": "events", "split": "time", "sensor_size": [32, 32, 2], "resize": "sum"}
    costs = info["costs"]
    assert costs["nops"] == 3 * (4 * 16 * 16 + 8 * 8 * 8) * 3
    # the same recording, binned here into T equal time windows at 16×16 and run through the
    # network the file was folded from
    frames = to_frames(recording.events, recording.sensor_size, n_time_bins=cfg.T, size=(16, 16))
    assert frames.shape == (3, 2, 16, 16) and frames.sum() == len(recording.events)
    _, spikes = nets.trained_outputs(net.eval(), torch.from_numpy(np.ascontiguousarray(frames))[None], static=False)
    fired = sum(float((s != 0).sum()) for s in spikes.values())
    total = sum(s.numel() for s in spikes.values())
    assert 0 < fired < total
    assert costs["spike_rate"] == pytest.approx(fired / total, rel=1e-6)
    assert costs["sops"] > 0 and costs["energy_mj"] == pytest.approx(costs["sops"] * 0.9e-9 / 8, rel=1e-9)


def test_inspect_events_table(neuro_model, events_file):
    path, _, _ = neuro_model
    result = invoke("inspect", path, "--events", events_file[0])
    assert_ok(result)
    assert "features.0.conv" in result.stdout and "SOPs" in result.stdout


def test_inspect_refuses_a_missing_file(tmp_path):
    assert_user_error(invoke("inspect", tmp_path / "nope.hmdf"), "nope.hmdf", "not found")


def test_inspect_refuses_a_directory(tmp_path):
    assert_user_error(invoke("inspect", tmp_path), str(tmp_path))


def test_inspect_refuses_random_bytes(tmp_path):
    f = tmp_path / "random.hmdf"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_user_error(invoke("inspect", f), "random.hmdf")


@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
def test_inspect_refuses_a_truncated_file(neuro_model, tmp_path, keep):
    data = neuro_model[0].read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    f = tmp_path / "cut.hmdf"
    f.write_bytes(data[:cut])
    assert_user_error(invoke("inspect", f), "cut.hmdf")


def test_inspect_refuses_a_model_of_other_data_without_events(tmp_path):
    cfg = ModelConfig(arch="vgg", cfg=[4, "M"], in_channels=3, input_size=(8, 8), T=2).validate()
    path = tmp_path / "cifar.hmdf"
    save_hmdf(fold(build_model(cfg).eval(), cfg, event=False, source={"dataset": "cifar10"}), path)
    assert_user_error(invoke("inspect", path), "cifar10", "--events")
    assert_user_error(invoke("inspect", path, "--json"), "--events")


def test_inspect_refuses_a_missing_events_file(neuro_model, tmp_path):
    assert_user_error(invoke("inspect", neuro_model[0], "--events", tmp_path / "none.npz"), "none.npz")


def test_inspect_refuses_events_with_the_wrong_polarity_count(tmp_path, events_file):
    """A one-channel model cannot take a two-polarity recording: one line, not a shape crash."""
    cfg = ModelConfig(arch="vgg", cfg=[4, "M"], in_channels=1, input_size=(16, 16), T=2).validate()
    path = tmp_path / "mono.hmdf"
    save_hmdf(fold(build_model(cfg).eval(), cfg, event=True, source={"dataset": "neuro-digits"}), path)
    assert_user_error(invoke("inspect", path, "--events", events_file[0]), "polarity")


@pytest.mark.parametrize("field, value", [("packing", {"scheme": "sign1", "shape": [8, 2, 6, 3]}),
                                          ("weights", "2bit")])
def test_inspect_refuses_a_well_formed_file_with_a_bad_graph(neuro_model, events_file, tmp_path, field, value):
    """A file with a valid checksum whose graph is wrong (here the second conv's weights: 144 codes
    as 2 input channels × 6×3 instead of 4 × 3×3, or an unknown weight mode) is a bad file like any
    other: one `error:` line, not a traceback from deep inside the executor."""
    tensors, meta = to_parts(load_hmdf(neuro_model[0]))
    node = next(e for e in meta["nodes"] if e["name"] == "features.2.conv")
    assert node["packing"]["shape"] == [8, 4, 3, 3]
    node[field] = value
    path = tmp_path / "crafted.hmdf"
    write_container(path, tensors, meta)
    assert_user_error(invoke("inspect", path, "--events", events_file[0]), "features.2.conv")


@pytest.mark.parametrize("samples", [0, -3])
def test_inspect_samples_must_be_positive(ternary_file, samples):
    assert_user_error(invoke("inspect", ternary_file[0], "--samples", samples), f"--samples must be at least 1, got {samples}")


def test_inspect_refuses_a_directory_as_events(neuro_model, tmp_path):
    assert_user_error(invoke("inspect", neuro_model[0], "--events", tmp_path), f"{tmp_path} is a directory")


def test_a_diverged_run_is_not_quantized(ternary_run, tmp_path):
    """A run whose weights hold NaN (training diverged) is refused with the reason, not written
    after a check that NaN differences slipped through."""
    run_dir = tmp_path / "diverged"
    shutil.copytree(ternary_run[0], run_dir)
    weights = load_file(run_dir / "model.safetensors")
    weights = {k: (v * float("nan") if v.is_floating_point() else v) for k, v in weights.items()}
    save_file(weights, run_dir / "model.safetensors")
    out = tmp_path / "m.hmdf"
    assert_user_error(invoke("quantize", run_dir, "-o", out), "NaN or Inf logits", "diverged")
    assert not out.exists()


@pytest.mark.slow
def test_quantize_and_export_find_a_moved_dataset_with_data_dir(tmp_path):
    """A run remembers where it read its data; when the data has moved, --data-dir points at it."""
    make_cifar10(tmp_path / "data", n=8)
    run_dir = tmp_path / "run"
    assert_ok(invoke("train", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--model", "4,M,G", "--T", 1,
                     "--epochs", 1, "--batch-size", 8, "--no-mix", "--out", run_dir, "--json"))
    (tmp_path / "data").rename(tmp_path / "moved")
    assert_user_error(invoke("quantize", run_dir, "-o", tmp_path / "a.hmdf"), "cifar10 file not found")
    assert_ok(invoke("quantize", run_dir, "-o", tmp_path / "a.hmdf", "--data-dir", tmp_path / "moved"))
    assert load_hmdf(tmp_path / "a.hmdf").source["dataset"] == "cifar10"
    assert_ok(invoke("export", run_dir, "-o", tmp_path / "a.onnx", "--data-dir", tmp_path / "moved"))
    assert (tmp_path / "a.onnx").is_file()
