"""`hmdf train` through the real command line (typer's CliRunner, in process)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal

import pytest
from typer.testing import CliRunner

import hmdf_deploy.cli.train as cli_train
from hmdf_deploy.cli.main import app
from hmdf_deploy.data import load_dataset
from hmdf_deploy.training import evaluate, load_trained
from hmdf_deploy.training import checkpoint as ckpt
from test_data_cifar import make_cifar10


#: A network and schedule small enough to train in a few seconds on two cores.
TINY = ["--model", "8,M,16,M", "--T", "2", "--epochs", "1", "--batch-size", "128"]
RUN_FILES = {"config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"}

runner = CliRunner()


def hmdf(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def single_json(stdout: str) -> dict:
    lines = stdout.splitlines()
    assert len(lines) == 1, f"--json must print one line, got {len(lines)}: {stdout!r}"
    obj = json.loads(lines[0])
    assert isinstance(obj, dict)
    return obj


def assert_success(result):
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output and "error:" not in result.stderr


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, single_thread):
    """One tiny digits run through the CLI with --json, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("cli") / "digits"
    result = hmdf("train", "--dataset", "digits", *TINY, "--out", out, "--json")
    return out, result


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_end_to_end(digits_run):
    out, result = digits_run
    assert_success(result)
    assert result.stderr == ""  # --json: no progress bars either
    assert set(os.listdir(out)) == RUN_FILES
    report = single_json(result.stdout)
    assert report["run_dir"] == str(out) and report["epoch"] == 1
    acc = report["test_acc"]
    assert isinstance(acc, list) and len(acc) == 2 and all(0 <= a <= 1 for a in acc)
    # the report is the epoch's metrics record
    records = ckpt.read_metrics(out / "metrics.jsonl")
    assert len(records) == 1
    assert {k: report[k] for k in records[0]} == records[0]
    # the stored config is what the command line asked for, shaped by the dataset
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["cfg"] == [8, "M", 16, "M"] and config["model"]["T"] == 2
    assert (config["model"]["in_channels"], config["model"]["input_size"]) == (1, [8, 8])
    assert (config["train"]["epochs"], config["train"]["batch_size"]) == (1, 128)
    assert config["train"]["mix"] is False  # the built-in data's recipe trains without Mixup / CutMix
    # the run rebuilds from its directory and scores what was reported
    net = load_trained(out)
    _, test, _ = load_dataset("digits", T=2)
    assert evaluate(net, test.x, test.y, static=True) == acc


@pytest.mark.parametrize("flag, mix", [([], True), (["--no-mix"], False)], ids=["recipe", "no-mix"])
def test_real_datasets_train_with_mixup_cutmix_unless_told_not_to(tmp_path, flag, mix):
    """SPEC §4.5's recipe for CIFAR: Mixup / CutMix on by default, `--no-mix` turns it off."""
    make_cifar10(tmp_path / "data", n=8)
    out = tmp_path / "run"
    result = hmdf("train", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--model", "4,M,G", "--T", "1",
                  "--epochs", "1", "--batch-size", "8", *flag, "--out", out, "--json")
    assert_success(result)
    assert json.loads((out / "config.json").read_text())["train"]["mix"] is mix


@pytest.mark.slow
def test_json_reports_the_model_that_was_trained(digits_run):
    out, result = digits_run
    report = single_json(result.stdout)
    config = json.loads((out / "config.json").read_text())
    assert report["model"] == config["model"]


@pytest.mark.slow
def test_neuro_digits_end_to_end(tmp_path, cached_data):
    out = tmp_path / "nd"
    result = hmdf("train", "--dataset", "neuro-digits", *TINY, "--out", out, "--json")
    assert_success(result)
    assert set(os.listdir(out)) == RUN_FILES
    report = single_json(result.stdout)
    assert len(report["test_acc"]) == 2 and report["epoch"] == 1
    config = json.loads((out / "config.json").read_text())
    model = config["model"]
    # event input: 2 polarities at 16×16, and the first conv is quantized (SPEC §5)
    assert (model["in_channels"], model["input_size"], model["quantize_stem"]) == (2, [16, 16], True)
    assert config["data"]["event"] is True
    _, test, _ = cached_data("neuro-digits", T=2, seed=0)
    assert test.x.shape[1:] == (2, 2, 16, 16)
    assert evaluate(load_trained(out), test.x, test.y, static=False) == report["test_acc"]


@pytest.mark.slow
def test_resume_of_a_finished_run_reports_and_changes_nothing(tmp_path, digits_run):
    src, first = digits_run
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    before = {f: (run / f).read_bytes() for f in RUN_FILES}

    table = hmdf("train", "--resume", run)
    assert_success(table)
    acc = single_json(first.stdout)["test_acc"]
    assert f"final: {100 * acc[-1]:.2f}% after 2 steps, epoch 1" in table.stdout
    for a in acc:
        assert f"{100 * a:.2f}" in table.stdout

    again = hmdf("train", "--resume", run, "--json")
    assert_success(again)
    report = single_json(again.stdout)
    assert report["epoch"] == 1 and report["test_acc"] == acc
    assert {f: (run / f).read_bytes() for f in RUN_FILES} == before


@pytest.mark.slow
def test_ctrl_c_leaves_a_checkpoint_that_resume_finishes(tmp_path, monkeypatch, digits_run, read_weights,
                                                         assert_same_weights):
    """The first Ctrl-C stops after the current batch with a resumable checkpoint (exit 130)."""
    out = tmp_path / "stopped"
    real_batch = cli_train._RichProgress.batch

    def batch(self, epoch, b, loss, acc):
        real_batch(self, epoch, b, loss, acc)
        if b == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(cli_train._RichProgress, "batch", batch)
    handler = signal.getsignal(signal.SIGINT)
    result = hmdf("train", "--dataset", "digits", *TINY, "--out", out)
    assert result.exit_code == 130, (result.stderr, result.exception)
    assert signal.getsignal(signal.SIGINT) is handler  # the CLI puts the old handler back
    assert "stopping after this batch" in result.stderr and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: interrupted") and f"--resume {out}" in errors[0]
    state = ckpt.load_state(out / "train_state.pt")
    assert (state["position"]["epoch"], state["position"]["batch"]) == (0, 3)  # stopped before batch 3

    monkeypatch.setattr(cli_train._RichProgress, "batch", real_batch)
    done = hmdf("train", "--resume", out, "--json")
    assert_success(done)
    src, first = digits_run
    assert single_json(done.stdout)["test_acc"] == single_json(first.stdout)["test_acc"]
    assert_same_weights(read_weights(out / "model.safetensors"), read_weights(src / "model.safetensors"))
    assert [r["epoch"] for r in ckpt.read_metrics(out / "metrics.jsonl")] == [1]


@pytest.mark.parametrize("seed", [20240101, 2**63 - 1])
def test_any_seed_below_2_to_the_63_trains(tmp_path, seed):
    """The per-batch generator seeds derived from a large --seed stay within torch's signed 64 bits."""
    out = tmp_path / "r"
    result = hmdf("train", "--dataset", "digits", *TINY, "--seed", seed, "--out", out, "--json")
    assert_success(result)
    assert single_json(result.stdout)["epoch"] == 1
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == seed


def test_help_has_an_example():
    result = hmdf("train", "--help")
    assert result.exit_code == 0
    assert "Example: hmdf train" in result.stdout and "--resume" in result.stdout
    # the options' "default per dataset" is spelled out
    assert "neuro-digits: 16,M,32,M,64,M, T=8, 8 epochs, batch 64, lr 0.05" in result.stdout
    assert "dvs-cifar10: vgg11, T=10, 300 epochs" in result.stdout


# --------------------------------------------------------------------------------------------
# user errors: exit 2, one `error:` line on stderr, no traceback
# --------------------------------------------------------------------------------------------


def digits(*extra):
    return ["--dataset", "digits", *TINY, *extra]


# (id, arguments after `train` given the tmp dir and an existing run, expected message, reaches start)
ERRORS = [
    ("unknown-dataset", lambda tmp, run: ["--dataset", "mnist", "--out", tmp / "r"], r"unknown dataset 'mnist'", False),
    ("unknown-model", lambda tmp, run: digits("--model", "resnet50", "--out", tmp / "r"), r"unknown model 'resnet50'", False),
    ("bad-cfg", lambda tmp, run: digits("--model", "64,X", "--out", tmp / "r"), r"bad model cfg entry 'X'", False),
    ("T-zero", lambda tmp, run: digits("--T", "0", "--out", tmp / "r"), r"T must be at least 1", False),
    ("empty-model", lambda tmp, run: digits("--model", "", "--out", tmp / "r"), r"unknown model ''; use vgg11, ", False),
    ("blank-model", lambda tmp, run: digits("--model", " ", "--out", tmp / "r"), r"unknown model ' '; use vgg11, ", False),
    # huge values: one line naming the option, not an overflow inside torch
    ("T-huge", lambda tmp, run: digits("--T", "1" + "0" * 30, "--out", tmp / "r"),
     r"--T must be at most 1024, got 10{30}$", False),
    ("T-1025", lambda tmp, run: digits("--T", "1025", "--out", tmp / "r"), r"--T must be at most 1024, got 1025$", False),
    ("width-huge", lambda tmp, run: digits("--model", "resnet18", "--width", "1" + "0" * 30, "--out", tmp / "r"),
     r"--width must be at most 1024 \(.*8192 channels\), got 10{30}$", False),
    ("cfg-huge", lambda tmp, run: digits("--model", "1" + "0" * 30 + ",M", "--out", tmp / "r"),
     r"bad model cfg entry 10{30}: a layer of --model has 1 to 8192 channels$", False),
    ("cfg-8193", lambda tmp, run: digits("--model", "8,8193,M", "--out", tmp / "r"),
     r"bad model cfg entry 8193: a layer of --model has 1 to 8192 channels$", False),
    ("lif-4bit", lambda tmp, run: digits("--neuron", "lif", "--spikes", "4bit", "--out", tmp / "r"), r"LIF .*--spikes 4bit", False),
    ("parallel-vgg", lambda tmp, run: digits("--parallel", "--out", tmp / "r"), r"--parallel .*VGG", False),
    ("stbp-random-backprop", lambda tmp, run: digits("--mode", "stbp", "--random-backprop", "--out", tmp / "r"),
     r"--random-backprop .*stbp", False),
    ("unknown-mode", lambda tmp, run: digits("--mode", "bptt", "--out", tmp / "r"), r"unknown mode 'bptt'", False),
    ("unknown-weights", lambda tmp, run: digits("--weights", "2bit", "--out", tmp / "r"), r"unknown weights '2bit'", False),
    ("negative-lr", lambda tmp, run: digits("--lr", "-1", "--out", tmp / "r"), r"--lr must be a positive number", False),
    ("nan-lr", lambda tmp, run: digits("--lr", "nan", "--out", tmp / "r"), r"--lr must be a positive number, got nan", False),
    ("inf-lr", lambda tmp, run: digits("--lr", "inf", "--out", tmp / "r"), r"--lr must be a positive number, got inf", False),
    ("huge-lr", lambda tmp, run: digits("--lr", "1e308", "--out", tmp / "r"),
     r"--lr must be at most 3.403e\+38 \(the largest float32\), got 1e\+308$", False),
    ("negative-seed", lambda tmp, run: digits("--seed", "-1", "--out", tmp / "r"),
     r"--seed must be a non-negative integer below 2\*\*63 \(9223372036854775808\), got -1$", False),
    ("seed-2-to-the-63", lambda tmp, run: digits("--seed", str(2**63), "--out", tmp / "r"),
     r"--seed must be a non-negative integer below 2\*\*63 .*, got 9223372036854775808$", False),
    # 0 is not "unset": it must be refused, not replaced by the dataset's default
    ("epochs-zero", lambda tmp, run: digits("--epochs", "0", "--out", tmp / "r"), r"--epochs", False),
    ("batch-size-zero", lambda tmp, run: digits("--batch-size", "0", "--out", tmp / "r"), r"--batch-size", False),
    ("lr-zero", lambda tmp, run: digits("--lr", "0", "--out", tmp / "r"), r"--lr must be a positive number", False),
    ("resume-missing", lambda tmp, run: ["--resume", tmp / "nope"], r"config.json not found", True),
    ("resume-with-out", lambda tmp, run: ["--resume", run, "--out", tmp / "r"], r"--resume .* takes no --out", False),
    # every training or model option would be ignored by a resume: refused, all named, as typed
    ("resume-with-options", lambda tmp, run: ["--resume", run, "--epochs", "3", "--lr", "0.001", "--dataset", "digits"],
     r"--resume continues the run in place, as configured in .*existing/config.json; "
     r"it takes no --dataset, --epochs, --lr$", False),
    ("resume-with-flags", lambda tmp, run: ["--resume", run, "--no-mix", "-T", "3", "--model", "8,M", "--seed", "0"],
     r"as configured in .*existing/config.json; it takes no --model, --T, --no-mix, --seed$", False),
    ("cifar10-no-data-dir", lambda tmp, run: ["--dataset", "cifar10", *TINY, "--out", tmp / "r"], r"--data-dir", True),
    ("cifar10-missing-data-dir", lambda tmp, run: ["--dataset", "cifar10", *TINY, "--data-dir", tmp / "none", "--out", tmp / "r"],
     r"cifar10 file not found", True),
    ("too-many-pools", lambda tmp, run: digits("--model", "8,M,M,M,M", "--out", tmp / "r"), r"too many M", True),
    ("out-is-a-run", lambda tmp, run: digits("--out", run), r"already holds a training run; continue it with --resume", True),
    ("out-is-a-file", lambda tmp, run: digits("--out", run / "config.json"), r"--out .*config.json is a file", True),
    ("out-under-a-file", lambda tmp, run: digits("--out", run / "config.json" / "r"),
     r"cannot create --out .*config.json/r: Not a directory", True),
]


@pytest.fixture
def existing_run(tmp_path):
    """A directory that holds a run (start only needs to see its config.json)."""
    run = tmp_path / "existing"
    run.mkdir()
    for f in RUN_FILES:
        (run / f).write_text(f"contents of {f}\n")
    return run


@pytest.mark.parametrize("make_args, message, reaches_start", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_user_errors(tmp_path, monkeypatch, existing_run, make_args, message, reaches_start):
    import re

    monkeypatch.chdir(tmp_path)
    run = existing_run
    before = {f: (run / f).read_bytes() for f in RUN_FILES}
    if not reaches_start:  # an option error must stop before any training starts

        def no_training(*a, **kw):
            raise AssertionError(f"training started with {a[1:]}")

        monkeypatch.setattr(cli_train, "start", no_training)
        monkeypatch.setattr(cli_train, "resume", no_training)

    result = hmdf("train", *make_args(tmp_path, run))

    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr must be one line: {result.stderr!r}"
    assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()
    assert {f: (run / f).read_bytes() for f in RUN_FILES} == before  # an existing run is never touched


def test_errors_while_training_starts_print_exactly_one_line(tmp_path, monkeypatch, existing_run):
    """Errors found after the progress display is up (data, dataset-dependent model checks, an
    existing run) must not add anything to stderr either: `hmdf train ... 2>err.txt` holds the one
    `error:` line and nothing else."""
    monkeypatch.chdir(tmp_path)
    extra = {}
    for name, make_args, _, reaches_start in ERRORS:
        if reaches_start:
            result = hmdf("train", *make_args(tmp_path, existing_run))
            assert result.exit_code == 2, name
            if len(result.stderr.splitlines()) != 1:
                extra[name] = result.stderr
    assert extra == {}


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", *digits("--T", "0", "--out", tmp_path / "r")]
    debug = hmdf("--debug", *args)
    assert debug.exit_code == 2
    assert "Traceback" in debug.stderr and "HmdfError" in debug.stderr
    assert debug.stderr.splitlines()[-1] == "error: --T must be at least 1, got 0"
    # the flag does not stick to the next invocation
    plain = hmdf(*args)
    assert plain.exit_code == 2 and "Traceback" not in plain.output
    assert plain.stderr.splitlines() == ["error: --T must be at least 1, got 0"]


def test_a_diverging_run_stops_with_one_line_and_saves_nothing_after(tmp_path):
    """A learning rate that blows the loss up to NaN stops training at that batch (exit 2, the
    epoch and batch named, a lower --lr suggested) instead of writing NaN weights and metrics."""
    out = tmp_path / "r"
    result = hmdf("train", *digits("--lr", "1e6", "--out", out))
    assert result.exit_code == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and re.search(r"training diverged at epoch 1, batch \d+: the loss is (nan|inf)", lines[0])
    assert "lower --lr" in lines[0]
    assert not (out / "model.safetensors").exists() and not (out / "train_state.pt").exists()
    assert (out / "metrics.jsonl").read_text() == ""



def test_a_start_that_failed_before_its_first_checkpoint_does_not_block_its_out(tmp_path):
    """A start that stopped before saving anything (here: diverged in its first epoch) leaves only a
    config.json and an empty metrics.jsonl; the same command with a better option starts afresh
    there instead of calling it a run to --resume."""
    out = tmp_path / "r"
    failed = hmdf("train", *digits("--lr", "1e6", "--out", out))
    assert failed.exit_code == 2 and "training diverged" in failed.stderr
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl"]

    again = hmdf("train", *digits("--lr", "0.05", "--out", out, "--json"))
    assert_success(again)
    assert set(os.listdir(out)) == RUN_FILES
    assert json.loads((out / "config.json").read_text())["train"]["lr"] == 0.05
    assert [r["epoch"] for r in ckpt.read_metrics(out / "metrics.jsonl")] == [1]


def _never_saved_run(run):
    """What a start that failed before its first checkpoint leaves behind."""
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"hmdf_version": "0", "model": {}, "train": {}, "data": {}}))
    (run / "metrics.jsonl").write_text("")


@pytest.mark.parametrize("extra, write", [
    ("model.safetensors", lambda run: (run / "model.safetensors").write_text("weights")),
    ("train_state.pt", lambda run: (run / "train_state.pt").write_text("state")),
    ("metrics", lambda run: (run / "metrics.jsonl").write_text('{"epoch": 1}\n')),
    ("imported", lambda run: (run / "config.json").write_text(json.dumps(
        {"hmdf_version": "0", "model": {}, "train": {}, "data": {}, "import": {}}))),
    ("foreign-config", lambda run: (run / "config.json").write_text('{"name": "not hmdf"}')),
    ("unreadable-config", lambda run: (run / "config.json").write_text("not json")),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_directory_with_anything_saved_is_still_refused(tmp_path, monkeypatch, extra, write):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    _never_saved_run(run)
    write(run)
    before = {f: (run / f).read_bytes() for f in os.listdir(run)}
    result = hmdf("train", *digits("--out", run))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.splitlines() == [
        f"error: {run} already holds a training run; continue it with --resume {run} or choose another --out"]
    assert {f: (run / f).read_bytes() for f in os.listdir(run)} == before
