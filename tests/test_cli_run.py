"""`hmdf run --stream` and `hmdf data make-events` through the real command line (CliRunner).

The model is a random folded event VGG (2×16×16 input, as neuro-digits) saved with save_hmdf;
its BN statistics are calibrated on the recordings it will stream and then perturbed, so that
every layer fires. Every prediction the CLI prints is recomputed independently: the recording
binned with `recording_frames`, run through the reference executor (`Reference.run` per window,
`Reference.step` with the state carried for the continuous policy), argmax of the summed logits.
User errors must be one `error: …` line on stderr, exit code 2, no traceback, nothing on stdout.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from nets import randomise
import pytest
import torch
from typer.testing import CliRunner

from hmdf_deploy.cli.main import app
from hmdf_deploy.data import make_neuro_digit_recordings
from hmdf_deploy.data.digits import digit_images, digit_split
from hmdf_deploy.deploy import DeployModel, Reference, fold, save_hmdf
from hmdf_deploy.events import EVENT_DTYPE, EventRecording, make_events, read_events, recording_frames, to_frames, write_events
from hmdf_deploy.exporters.onnx import export
from hmdf_deploy.models import ModelConfig, build_model

runner = CliRunner()
T = 4
CFG = dict(arch="vgg", cfg=[8, "M", 16, "G"], in_channels=2, input_size=(16, 16), num_classes=10, T=T,
           weights="1.5bit", spikes="4bit", pool="max", quantize_stem=True)
N_FILES = 4
SENSOR = (32, 32, 2)


# ------------------------------------------------------------------------------------- helpers
def hmdf(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_success(result) -> None:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert result.exception is None
    assert "Traceback" not in result.output and result.stderr == ""


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, exactly one stderr line `error: …` naming the problem, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    assert result.stdout == ""
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def json_lines(result) -> list[dict]:
    assert_success(result)
    return [json.loads(line) for line in result.stdout.splitlines()]


def reference_windows(deploy: DeployModel, frames: np.ndarray, policy: str) -> list[torch.Tensor]:
    """Summed logits (K,) of each window the engine reports for (N, C, H, W) frames at batch 1."""
    x = torch.from_numpy(frames)[:, None]
    ref = Reference(deploy)
    if policy == "window":
        return [ref.run(x[k:k + deploy.T]).sum(0)[0] for k in range(0, x.shape[0], deploy.T)]
    state, total = {}, torch.zeros(deploy.num_classes)
    for t in range(x.shape[0]):  # continuous: the state is carried, rows past T repeat the last
        logits, state = ref.step(x[t], state, t)
        total = total + logits[0]
    return [total]


def softmax_max(z: torch.Tensor) -> float:
    return float(torch.softmax(z.double(), 0).max())


def prediction(z: torch.Tensor) -> int:
    top = torch.topk(z, 2).values
    assert float(top[0] - top[1]) > 1e-3, f"a near tie makes the prediction fragile: {z}"
    return int(z.argmax())


# ------------------------------------------------------------------------------ the test world
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """model.hmdf, its exported step graph model.onnx, and a directory of N_FILES neuro-digit
    recordings whose labels are set so that exactly 3 of 4 match the reference prediction."""
    root = tmp_path_factory.mktemp("run")
    _, test = digit_split()
    indices = [int(i) for i in test[:N_FILES]]
    recordings = make_neuro_digit_recordings(0, indices)
    calib = torch.from_numpy(np.stack([to_frames(r.events, r.sensor_size, n_time_bins=T, size=(16, 16))
                                       for r in recordings]))  # (B, T, 2, 16, 16)
    cfg = ModelConfig(**CFG).validate()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = build_model(cfg)
    randomise(net, calib, False, g)
    deploy = fold(net, cfg, event=True, source={"dataset": "neuro-digits"})
    save_hmdf(deploy, root / "model.hmdf")
    [onnx_path] = export(deploy, root / "model.onnx", graph="step")
    [seq_path] = export(deploy, root / "sequence.onnx", graph="sequence")

    record: dict = {}
    Reference(deploy).run(calib.transpose(0, 1), record=record)
    fired = {n.name: float((record[n.name] != 0).float().mean()) for n in deploy.neurons}
    assert min(fired.values()) > 0.01, f"a layer is silent on the recordings: {fired}"

    folder = root / "events"
    folder.mkdir()
    files, labels, preds = [], [], []
    for k, (i, rec) in enumerate(zip(indices, recordings)):
        path = folder / f"rec-{k}.npz"
        write_events(path, rec)  # the label is rewritten below, once the prediction is known
        frames, _, _ = recording_frames(path, deploy.input_shape, T)
        pred = prediction(reference_windows(deploy, frames, "window")[0])
        label = pred if k < 3 else (pred + 1) % 10
        write_events(path, EventRecording(rec.events, rec.sensor_size, label, None, rec.origin))
        files.append(path), labels.append(label), preds.append(pred)
    assert len(set(preds)) > 1, f"every recording gets the same prediction {preds}: too weak a test"
    return dict(root=root, deploy=deploy, hmdf=root / "model.hmdf", onnx=onnx_path, sequence=seq_path,
                folder=folder, files=files, labels=labels, preds=preds)


# ------------------------------------------------------------------------------ make-events
def test_make_events_writes_readable_labelled_files(tmp_path):
    out = tmp_path / "ev"
    result = hmdf("data", "make-events", "--out", out, "--count", 3, "--seed", 2)
    assert_success(result)
    assert f"wrote 3 recordings to {out}" in result.stdout
    _, test = digit_split()
    _, labels = digit_images()
    indices = [int(i) for i in test[:3]]
    files = sorted(out.glob("*.npz"))
    assert [f.name for f in files] == [f"neuro-digit-{i:04d}.npz" for i in indices]
    want = make_neuro_digit_recordings(2, indices)
    for f, i, rec in zip(files, indices, want):
        got = read_events(f)
        assert got.label == int(labels[i])
        assert got.sensor_size == SENSOR and got.events.dtype == EVENT_DTYPE and len(got.events) > 100
        assert np.array_equal(got.events, rec.events)
        assert np.all(np.diff(got.events["t"]) >= 0)
    # another seed simulates other events for the same digits
    other = tmp_path / "other"
    assert_success(hmdf("data", "make-events", "--out", other, "--count", 1, "--seed", 3))
    first = read_events(sorted(other.glob("*.npz"))[0])
    assert first.label == int(labels[indices[0]])
    assert not np.array_equal(first.events, read_events(files[0]).events)


def test_make_events_output_streams_through_run(tmp_path, world):
    out = tmp_path / "ev"
    assert_success(hmdf("data", "make-events", "--out", out, "--count", 2))
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", out, "--json"))
    summaries = [line["summary"] for line in lines if "summary" in line]
    assert len(summaries) == 2 and lines[-1]["files"] == 2
    for s in summaries:
        rec = read_events(s["path"])
        frames, label, n = recording_frames(Path(s["path"]), world["deploy"].input_shape, T)
        assert (s["label"], s["events"], s["steps"]) == (rec.label, len(rec.events), T)
        assert s["prediction"] == prediction(reference_windows(world["deploy"], frames, "window")[0])


def test_make_events_json_lists_the_files_written(tmp_path):
    out = tmp_path / "ev"
    result = hmdf("data", "make-events", "--out", out, "--count", 2, "--json")
    assert_success(result)
    listed = json.loads(result.stdout)["files"]
    assert sorted(out.glob("*.npz")) == [Path(f["path"]) for f in listed]
    assert all(Path(f["path"]).stat().st_size == f["bytes"] for f in listed)


@pytest.mark.parametrize("under", [False, True], ids=["out-is-a-file", "out-under-a-file"])
def test_make_events_out_must_be_a_directory(tmp_path, under):
    (tmp_path / "afile").write_text("not a folder")
    out = tmp_path / "afile" / "ev" if under else tmp_path / "afile"
    assert_user_error(hmdf("data", "make-events", "--out", out, "--count", 1),
                      "Not a directory" if under else "is a file")
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_make_events_out_is_a_dangling_link(tmp_path):
    (tmp_path / "ev").symlink_to(tmp_path / "gone")
    assert_user_error(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", 1),
                      "ev is a link to nothing; give a directory")


def test_make_events_prints_paths_as_they_are(tmp_path):
    """No rich markup in output: "[bold]" is part of a file name."""
    result = hmdf("data", "make-events", "--out", tmp_path / "x[bold]y", "--count", 1)
    assert_success(result)
    assert f"wrote 1 recording to {tmp_path / 'x[bold]y'}" in result.stdout


def test_make_events_refuses_to_leave_other_recordings_beside_its_own(tmp_path):
    """A directory of recordings is read as one set: 3 new ones beside 5 of another run would be
    streamed as 5 (2 rewritten). The same command again rewrites the same files."""
    assert_success(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", 5))
    assert_success(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", 5, "--seed", 1))
    assert_user_error(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", 3),
                      "already holds 2 other recordings (neuro-digit-", ", …); give an empty or new directory")
    assert_user_error(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", 4),
                      "already holds 1 other recording (neuro-digit-", ".npz); give an empty or new directory")
    assert len(list((tmp_path / "ev").glob("*.npz"))) == 5


def hmdf_process(*args, **kw) -> subprocess.CompletedProcess:
    """`hmdf` in its own process, as a shell runs it (`python -m hmdf_deploy.cli` is the same entry)."""
    return subprocess.run([sys.executable, "-m", "hmdf_deploy.cli", *map(str, args)], stderr=subprocess.PIPE,
                          text=True, timeout=300, **kw)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_an_unwritable_stdout_is_one_error_line(tmp_path, json_flag):
    with open("/dev/full", "w") as full:
        result = hmdf_process("data", "make-events", "--out", tmp_path / "ev", "--count", 1, *json_flag, stdout=full)
    assert result.returncode == 2 and result.stderr == "error: cannot write the output: No space left on device\n"


def test_ctrl_c_while_the_commands_load():
    """Importing torch takes the first second or two of every command: Ctrl-C then is answered as
    anywhere else. The import of torch is interrupted on purpose here."""
    interrupt = ("import runpy, sys\n"
                 "class Interrupt:\n"
                 "    def find_spec(self, name, path=None, target=None):\n"
                 "        if name == 'torch':\n"
                 "            raise KeyboardInterrupt\n"
                 "sys.meta_path.insert(0, Interrupt())\n"
                 "runpy.run_module('hmdf_deploy.cli', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", interrupt, "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=300)
    assert (result.returncode, result.stderr, result.stdout) == (130, "error: interrupted\n", "")


@pytest.mark.parametrize("count", [0, -3])
def test_make_events_count_must_be_positive(count, tmp_path):
    assert_user_error(hmdf("data", "make-events", "--out", tmp_path / "ev", "--count", count),
                      f"--count must be at least 1, got {count}")
    assert not (tmp_path / "ev").exists()


# -------------------------------------------------------------------------- run: one file
LATENCY = re.compile(r"^backend (\w+): latency p50 ([\d.]+) ms, p90 ([\d.]+) ms, p99 ([\d.]+) ms per step; "
                     r"([\d,]+) steps/s, ([\d,]+) events/s(; accuracy ([\d.]+)%)?$")


def table_rows(stdout: str) -> list[list[str]]:
    """The body rows of a rich table (cells split on the box's vertical bars)."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)[1:-1]]
        if cells and cells[0].isdigit():
            rows.append(cells)
    return rows


def test_run_one_file_prints_a_window_table_and_latency(world):
    path = world["files"][0]
    result = hmdf("run", world["hmdf"], "--stream", path)
    assert_success(result)
    out = result.stdout
    for column in ("window", "steps", "prediction", "confidence", "label"):
        assert column in out
    n_events = len(read_events(path).events)
    assert f"{n_events:,} events" in out and f"{T} steps" in out and "policy window" in out
    frames, _, _ = recording_frames(path, world["deploy"].input_shape, T)
    want = reference_windows(world["deploy"], frames, "window")[0]
    [row] = table_rows(out)
    assert row[:3] == ["0", str(T), str(prediction(want))]
    assert row[3] == f"{100 * softmax_max(want):.1f}%" and row[4] == str(world["labels"][0])
    [latency] = [line for line in out.splitlines() if line.startswith("backend ")]
    m = LATENCY.match(latency)
    assert m, latency
    assert m.group(1) == "onnxruntime"  # auto takes onnxruntime when it is installed
    p50, p90, p99 = (float(m.group(k)) for k in (2, 3, 4))
    assert 0 < p50 <= p90 <= p99
    assert float(m.group(8)) == 100.0  # the first file's label is its prediction


def test_run_one_file_json(world):
    path = world["files"][3]
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", path, "--json", "--backend", "torch"))
    assert len(lines) == 2  # one window, one summary; no accuracy line for a single file
    window, summary = lines
    frames, _, _ = recording_frames(path, world["deploy"].input_shape, T)
    want = reference_windows(world["deploy"], frames, "window")[0]
    assert window == {"path": str(path), "window": 0, "steps": T, "prediction": prediction(want),
                      "confidence": pytest.approx(softmax_max(want), rel=1e-4), "label": world["labels"][3]}
    assert summary["backend"] == "torch" and summary["policy"] == "window"
    s = summary["summary"]
    assert (s["path"], s["label"], s["prediction"]) == (str(path), world["labels"][3], prediction(want))
    assert s["prediction"] != s["label"]
    assert (s["events"], s["steps"], s["windows"]) == (len(read_events(path).events), T, 1)
    lat = s["latency_ms"]
    assert set(lat) == {"p50", "p90", "p99"} and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert s["steps_per_s"] > 0 and s["events_per_s"] == pytest.approx(s["steps_per_s"] * s["events"] / T, rel=1e-6)


# ------------------------------------------------------------------------- run: a directory
def _by_file(lines: list[dict]) -> tuple[dict, dict, dict]:
    windows: dict[str, list] = {}
    summaries: dict[str, dict] = {}
    for line in lines[:-1]:
        if "summary" in line:
            summaries[line["summary"]["path"]] = line
        else:
            windows.setdefault(line["path"], []).append(line)
    return windows, summaries, lines[-1]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "triton"])
def test_run_directory_json(backend, world):
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", world["folder"], "--json", "--backend", backend))
    # order: the windows of a file, then its summary, file by file (sorted by name), then accuracy
    paths = [str(p) for p in world["files"]]
    assert [line.get("path") or line["summary"]["path"] for line in lines[:-1]] == [p for p in paths for _ in (0, 1)]
    assert ["summary" in line for line in lines[:-1]] == [False, True] * N_FILES
    windows, summaries, final = _by_file(lines)
    assert list(summaries) == paths
    preds, labels = [], []
    for path, label, pred in zip(world["files"], world["labels"], world["preds"]):
        s = summaries[str(path)]["summary"]
        assert summaries[str(path)]["backend"] == backend
        assert s["label"] == label and s["steps"] == T and s["events"] == len(read_events(path).events)
        assert s["prediction"] == pred == windows[str(path)][-1]["prediction"]
        preds.append(s["prediction"]), labels.append(s["label"])
    accuracy = sum(p == y for p, y in zip(preds, labels)) / len(preds)
    assert accuracy == 0.75  # the labels were set so
    assert final == {"accuracy": accuracy, "files": N_FILES}


def test_backends_and_onnx_file_agree(world):
    """torch, onnxruntime and triton on the .hmdf and onnxruntime on the exported .onnx report the same windows."""
    runs = {
        "torch": json_lines(hmdf("run", world["hmdf"], "-s", world["folder"], "--json", "--backend", "torch")),
        "onnxruntime": json_lines(hmdf("run", world["hmdf"], "-s", world["folder"], "--json", "--backend", "onnxruntime")),
        "triton": json_lines(hmdf("run", world["hmdf"], "-s", world["folder"], "--json", "--backend", "triton")),
        "onnx-file": json_lines(hmdf("run", world["onnx"], "-s", world["folder"], "--json")),
    }
    base = [w for w in runs["torch"] if "window" in w]
    assert len(base) == N_FILES
    for name, lines in runs.items():
        got = [w for w in lines if "window" in w]
        assert [(w["path"], w["prediction"], w["label"]) for w in got] == \
               [(w["path"], w["prediction"], w["label"]) for w in base], name
        assert [w["confidence"] for w in got] == pytest.approx([w["confidence"] for w in base], rel=1e-4)
        assert lines[-1] == {"accuracy": 0.75, "files": N_FILES}
    assert {line["backend"] for line in runs["onnx-file"] if "backend" in line} == {"onnxruntime"}


def test_run_several_stream_options(world):
    a, b = world["files"][1], world["files"][3]
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", a, "--stream", b, "--json"))
    _, summaries, final = _by_file(lines)
    assert list(summaries) == [str(a), str(b)]
    assert final == {"accuracy": 0.5, "files": 2}  # file 1 is right, file 3 wrong


def test_run_directory_table(world):
    result = hmdf("run", world["hmdf"], "--stream", world["folder"], "--backend", "torch")
    assert_success(result)
    assert f"{N_FILES} recordings, policy window" in result.stdout
    rows = [line for line in result.stdout.splitlines() if ".npz" in line]
    assert len(rows) == N_FILES
    for line, path, pred, label in zip(rows, world["files"], world["preds"], world["labels"]):
        cells = [c.strip() for c in re.split(r"[│|┃]", line)[1:-1]]
        assert cells == [path.name, str(pred), str(label)]
    [latency] = [line for line in result.stdout.splitlines() if line.startswith("backend ")]
    m = LATENCY.match(latency)
    assert m and m.group(1) == "torch" and float(m.group(8)) == 75.0


# ------------------------------------------------------------------------------- binning
def _long_file(world) -> Path:
    return world["files"][2]


@pytest.mark.parametrize("option, value", [("--time-window", 70_000), ("--time-window", 40_000),
                                           ("--time-window", 1_000_000), ("--event-count", 1000),
                                           ("--event-count", 777)])
@pytest.mark.parametrize("policy", ["window", "continuous"])
def test_binning_options_give_the_expected_steps(option, value, policy, world):
    path = _long_file(world)
    events = read_events(path).events
    t = events["t"].astype(np.int64)
    if option == "--time-window":  # frames of `value` µs from the first event on
        steps = int((t[-1] - t[0]) // value) + 1
        kw = {"time_window": value}
    else:  # `value` events per frame, the last frame keeps the remainder
        steps = math.ceil(len(events) / value)
        kw = {"event_count": value}
    assert steps >= 1
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", path, option, value, "--policy", policy,
                            "--json", "--backend", "torch"))
    windows, summary = lines[:-1], lines[-1]
    assert summary["policy"] == policy
    assert summary["summary"]["steps"] == steps and summary["summary"]["events"] == len(events)
    frames, _, _ = recording_frames(path, world["deploy"].input_shape, T, **kw)
    assert frames.shape[0] == steps and float(frames.sum()) == pytest.approx(len(events))
    want = reference_windows(world["deploy"], frames, policy)
    if policy == "window":
        sizes = [min(T, steps - k) for k in range(0, steps, T)]
    else:
        sizes = [steps]
    assert [(w["window"], w["steps"]) for w in windows] == list(enumerate(sizes))
    for w, z in zip(windows, want):
        assert w["prediction"] == prediction(z)
        assert w["confidence"] == pytest.approx(softmax_max(z), rel=1e-4)
    assert summary["summary"]["windows"] == len(sizes)
    assert summary["summary"]["prediction"] == windows[-1]["prediction"]


def test_continuous_policy_differs_from_window_on_a_long_stream(world):
    """Past T the continuous policy keeps the state: its single prediction is the reference's
    carried stream, and its summed logits differ from the window policy's last window."""
    path = _long_file(world)
    frames, _, _ = recording_frames(path, world["deploy"].input_shape, T, time_window=30_000)
    assert frames.shape[0] > 2 * T
    cont = reference_windows(world["deploy"], frames, "continuous")[0]
    win = reference_windows(world["deploy"], frames, "window")
    assert float((cont - sum(win)).abs().max()) > 1e-3  # the carried state matters on this stream
    lines = json_lines(hmdf("run", world["onnx"], "--stream", path, "--time-window", 30_000,
                            "--policy", "continuous", "--json"))
    [w] = lines[:-1]
    assert (w["window"], w["steps"], w["prediction"]) == (0, frames.shape[0], prediction(cont))
    assert w["confidence"] == pytest.approx(softmax_max(cont), rel=1e-4)


def test_prebinned_frames_file(world, tmp_path):
    """A file holding pre-binned frames (T', P, H, W) at the sensor size streams its frames,
    resized to the model's 16×16 (2×2 block sums)."""
    g = torch.Generator().manual_seed(4)
    frames = torch.poisson(torch.rand(6, 2, 32, 32, generator=g) * 0.6, generator=g).numpy()
    path = tmp_path / "frames.npz"
    np.savez(path, frames=frames, label=np.int64(2))
    lines = json_lines(hmdf("run", world["hmdf"], "--stream", path, "--json", "--backend", "torch"))
    small = frames.reshape(6, 2, 16, 2, 16, 2).sum(axis=(3, 5))
    want = reference_windows(world["deploy"], small.astype(np.float32), "window")
    assert [(w["steps"], w["prediction"], w["label"]) for w in lines[:-1]] == \
           [(4, prediction(want[0]), 2), (2, prediction(want[1]), 2)]
    assert lines[-1]["summary"]["events"] == 0 and lines[-1]["summary"]["steps"] == 6


# ---------------------------------------------------------------------------------- bad files
def _events(n: int = 5, **override) -> np.ndarray:
    x = np.array([0, 5, 31, 7, 2][:n], np.int16)
    y = np.array([1, 30, 4, 0, 9][:n], np.int16)
    t = np.array([0, 10, 10, 250, 900][:n], np.int64)
    p = np.array([0, 1, 1, 0, 1][:n], np.int8)
    fields = dict(x=x, y=y, t=t, p=p, **{})
    fields.update(override)
    return make_events(**fields)


def _save(path: Path, **arrays) -> None:
    with open(path, "wb") as f:  # np.savez on a path would append .npz to a name without it
        np.savez(f, **arrays)


def _bad_files() -> dict:
    """name → (arrays, fragment of the whole-file reader's error, fragment of the chunked reader's
    error (`--event-count` / `--time-window` read the file in chunks, hmdf_deploy/event_stream.py))."""
    sensor = np.array(SENSOR, np.int64)
    good = _events()
    float_t = np.zeros(5, dtype=[("x", "<i2"), ("y", "<i2"), ("t", "<f8"), ("p", "<i1")])
    for k in ("x", "y", "t", "p"):
        float_t[k] = good[k]
    return {
        "no keys at all": (dict(sensor_size=sensor), "missing keys", "missing keys"),
        "events without sensor_size": (dict(events=good), "missing key 'sensor_size'", "'sensor_size'"),
        "separate arrays without p": (dict(x=good["x"], y=good["y"], t=good["t"], sensor_size=sensor),
                                      "missing key 'p'", "missing keys"),
        "float timestamps": (dict(events=float_t, sensor_size=sensor), "field 't' has dtype float64", None),
        "float x (separate arrays)": (dict(x=good["x"].astype(np.float32), y=good["y"], t=good["t"], p=good["p"],
                                           sensor_size=sensor), "field 'x' has dtype float32", None),
        "plain events array": (dict(events=np.zeros((5, 4), np.int64), sensor_size=sensor), "structured array",
                               "key 'events'"),
        "x outside the sensor": (dict(events=_events(x=np.array([0, 5, 32, 7, 2])), sensor_size=sensor),
                                 "x coordinates span [0, 32], outside the sensor width 32", None),
        "negative y": (dict(events=_events(y=np.array([1, -1, 4, 0, 9])), sensor_size=sensor),
                       "y coordinates span [-1, 9]", None),
        "unsorted timestamps": (dict(events=_events(t=np.array([0, 10, 5, 250, 900])), sensor_size=sensor),
                                "not sorted", None),
        "negative timestamps": (dict(events=_events(t=np.array([-5, 10, 10, 250, 900])), sensor_size=sensor),
                                "non-negative", None),
        "empty stream": (dict(events=np.empty(0, EVENT_DTYPE), sensor_size=sensor), "empty", None),
        "polarity out of range": (dict(events=_events(p=np.array([0, 1, 2, 0, 1])), sensor_size=sensor),
                                  "polarity p spans [0, 2]", None),
        "pickled object array": (dict(events=good, sensor_size=sensor, origin=np.array([{"run": "me"}], dtype=object)),
                                 "pickled object array", None),
        "float label": (dict(events=good, sensor_size=sensor, label=np.float64(1.5)), "key 'label'", None),
        "one polarity channel": (dict(events=_events(p=np.zeros(5, np.int8)), sensor_size=np.array([32, 32, 1])),
                                 "1 polarity channels; the model takes 2", None),
        "zero sensor size": (dict(events=good, sensor_size=np.array([32, 0, 2])), "sensor_size", None),
        # pre-binned frames (no events: the chunked reader refuses them whatever they hold)
        "three-channel frames": (dict(frames=np.ones((4, 3, 16, 16), np.float32)),
                                 "3 polarity channels; the model takes 2", "holds pre-binned frames"),
        "frames with NaN": (dict(frames=np.full((4, 2, 16, 16), np.nan, np.float32)), "NaN", "holds pre-binned frames"),
        "negative frames": (dict(frames=-np.ones((4, 2, 16, 16), np.float32)), "negative", "holds pre-binned frames"),
    }


BAD = _bad_files()


@pytest.mark.parametrize("case", list(BAD))
def test_bad_event_file_is_one_error_line(case, world, tmp_path):
    arrays, fragment, _ = BAD[case]
    path = tmp_path / "bad.npz"
    _save(path, **arrays)
    assert_user_error(hmdf("run", world["hmdf"], "--stream", path), str(path), fragment)
    assert_user_error(hmdf("run", world["hmdf"], "--stream", path, "--json", "--backend", "torch",
                           "--policy", "continuous"), fragment)


@pytest.mark.parametrize("binning", [["--event-count", 2], ["--time-window", 100]])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_event_file_is_refused_when_read_in_chunks(case, binning, world, tmp_path):
    """A file that the whole-file reader refuses is refused by the chunked reader as well: whether a
    bad file streams must not depend on the binning flag."""
    arrays, fragment, chunk_fragment = BAD[case]
    path = tmp_path / "bad.npz"
    _save(path, **arrays)
    assert_user_error(hmdf("run", world["hmdf"], "--stream", path, *binning), str(path), chunk_fragment or fragment)


@pytest.mark.parametrize("case, content, fragment", [
    ("text", b"x,y,t,p\n0,0,0,1\n", "not an .npz archive"),
    ("npy", None, "not an .npz archive"),
    ("empty file", b"", "not an .npz archive"),
    ("truncated zip", b"PK\x03\x04" + b"\x00" * 40, "unreadable"),
])
def test_not_an_npz_is_one_error_line(case, content, fragment, world, tmp_path):
    path = tmp_path / "bad.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, _events())
    else:
        path.write_bytes(content)
    assert_user_error(hmdf("run", world["hmdf"], "--stream", path), str(path), fragment)


# ------------------------------------------------------------------------ bad options and models
def test_missing_model_file(world, tmp_path):
    assert_user_error(hmdf("run", tmp_path / "nope.hmdf", "--stream", world["files"][0]), "nope.hmdf", "not found")


def test_a_directory_as_the_model_names_what_run_takes(world, tmp_path):
    """A training run directory is not a model: the error says to quantize it first."""
    assert_user_error(hmdf("run", tmp_path, "--stream", world["files"][0]), "is a directory",
                      "a .hmdf or .onnx file", f"hmdf quantize {tmp_path}")


def test_corrupt_model_file(world, tmp_path):
    bad = tmp_path / "model.hmdf"
    data = bytearray(world["hmdf"].read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert_user_error(hmdf("run", bad, "--stream", world["files"][0]))
    junk = tmp_path / "junk.hmdf"
    junk.write_bytes(b"not a model")
    assert_user_error(hmdf("run", junk, "--stream", world["files"][0]))


def test_unknown_backend(world):
    assert_user_error(hmdf("run", world["hmdf"], "--stream", world["files"][0], "--backend", "tpu"),
                      "unknown backend 'tpu'", "torch, onnxruntime")


def test_unknown_policy(world):
    assert_user_error(hmdf("run", world["hmdf"], "--stream", world["files"][0], "--policy", "sliding"),
                      "unknown policy 'sliding'", "window, continuous")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_onnx_model_with_another_backend(backend, world):
    assert_user_error(hmdf("run", world["onnx"], "--stream", world["files"][0], "--backend", backend),
                      "onnxruntime backend", f"--backend {backend}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_triton_backend_without_a_gpu(world, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    assert_user_error(hmdf("run", world["hmdf"], "--stream", world["files"][0], "--backend", "triton"),
                      "needs a CUDA GPU", "TRITON_INTERPRET=1")


def test_sequence_graph_is_refused(world):
    assert_user_error(hmdf("run", world["sequence"], "--stream", world["files"][0]),
                      f"{world['sequence']} is not an hmdf step graph")


def test_a_stream_that_is_no_file_says_so(world):
    assert_user_error(hmdf("run", world["hmdf"], "--stream", "/dev/null"), "/dev/null is not a file")


def test_missing_or_empty_stream_path(world, tmp_path):
    assert_user_error(hmdf("run", world["hmdf"], "--stream", tmp_path / "none.npz"), "none.npz", "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(hmdf("run", world["hmdf"], "--stream", empty), "holds no .npz files")


@pytest.mark.parametrize("args, fragment", [
    (["--time-window", 0], "--time-window must be an integer from 1 to 2**62, got 0"),
    (["--event-count", -2], "--event-count must be an integer from 1 to 2**62, got -2"),
    (["--event-count", 10**30], f"--event-count must be an integer from 1 to 2**62, got {10**30}"),
    (["--time-window", 1000, "--event-count", 10], "give --time-window or --event-count, not both"),
])
def test_bad_binning_options(args, fragment, world):
    assert_user_error(hmdf("run", world["hmdf"], "--stream", world["files"][0], *args), fragment)


def test_a_label_outside_the_models_classes_is_refused(world, tmp_path):
    rec = read_events(world["files"][0])
    write_events(tmp_path / "bad.npz", EventRecording(rec.events, rec.sensor_size, 10))
    assert_user_error(hmdf("run", world["hmdf"], "--stream", tmp_path / "bad.npz"),
                      "bad.npz: label 10 is not one of the model's 10 classes (0 to 9)")


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["table", "json"])
def test_files_done_before_a_bad_one_are_reported(world, tmp_path, json_flag):
    """A directory read in name order: the good recordings' results come out, then the error line
    (exit 2). The whole-directory `accuracy` line of --json comes only after every file."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in world["files"]:
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "zzz.npz").write_bytes(b"not a zip")
    result = hmdf("run", world["hmdf"], "--stream", folder, "--backend", "torch", *json_flag)
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        f"error: {folder / 'zzz.npz'}: not an .npz archive (expected a zip written by numpy.savez)."]
    if json_flag:
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert [x["summary"]["prediction"] for x in lines if "summary" in x] == world["preds"]
        assert not any("accuracy" in x for x in lines)
    else:
        assert f"{N_FILES} recordings" in result.stdout
        assert all(f.name in result.stdout for f in world["files"])


@pytest.mark.parametrize("binning", [[], ["--event-count", 500]], ids=["T-frames", "streamed"])
def test_a_recording_from_another_sensor_runs_with_a_warning(world, tmp_path, binning):
    """The model was trained on 32×32 neuro-digits recordings: the same events declared on a 128×128
    sensor are resized to 16×16 too, shrunk into a corner; it runs, and says so in one line."""
    rec = read_events(world["files"][0])
    write_events(tmp_path / "big.npz", EventRecording(rec.events, (128, 128, 2), rec.label))
    result = hmdf("run", world["hmdf"], "--stream", tmp_path / "big.npz", "--json", *binning)
    assert result.exit_code == 0 and result.stderr.splitlines() == [
        f"warning: {tmp_path / 'big.npz'} was recorded on a 128×128 sensor, the model's training data on 32×32: "
        "its events are resized to the model's input, which it may not recognise"]
    assert json.loads(result.stdout.splitlines()[-1])["summary"]["steps"] > 0
    assert_success(hmdf("run", world["hmdf"], "--stream", world["files"][0], "--json", *binning))  # no warning
