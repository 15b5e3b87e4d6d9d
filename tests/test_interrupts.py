"""Interrupted and failed writes through the real command line (docs/behaviour.md).

- A write that fails with an OSError (disk full, no permission, read-only) is one `error:` line
  naming the file, exit 2; the previous file stays and no temporary is left (hmdf_deploy/atomic.py).
- Ctrl-C outside training is `error: interrupted`, exit 130, no traceback.
- Through the `hmdf` entry point, click's usage errors (a missing option, a bad value, an unknown
  command) are one `error:` line too, exit 2; `hmdf` alone prints the help, exit 0.
- SIGKILL at any moment of `hmdf quantize` / `hmdf export` leaves under the target name either the
  previous file or the complete new one; a SIGKILLed `hmdf train` finishes with `--resume`
  bit-equal to a run that was never interrupted.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import nets
from hmdf_deploy.cli.main import app
from hmdf_deploy.deploy import load_hmdf, save_hmdf
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.models import ModelConfig

runner = CliRunner()
TINY = ["--model", "8,M,16,M", "--T", "2", "--batch-size", "128"]


def hmdf(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code: int, line: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [line]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, single_thread):
    """A tiny digits training run (one epoch), shared by this module."""
    out = tmp_path_factory.mktemp("interrupts") / "run"
    result = hmdf("train", "--dataset", "digits", *TINY, "--epochs", "1", "--out", out, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    return out


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    cfg = ModelConfig(arch="vgg", cfg=[4, "M"], in_channels=2, input_size=(8, 8), num_classes=5, T=2)
    path = tmp_path_factory.mktemp("model") / "model.hmdf"
    save_hmdf(nets.make_deploy(cfg, True, 0, source={"dataset": "neuro-digits"}), path)
    return path


# ---------------------------------------------------------------------------------- full disk
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_full_disk_is_one_line_and_keeps_the_previous_file(command, run_dir, model_file, tmp_path, monkeypatch):
    target = tmp_path / ("out.hmdf" if command == "quantize" else "out.onnx")
    target.write_bytes(b"the previous file")
    args = [run_dir, "-o", target, "--calib", 16] if command == "quantize" else [model_file, "-o", target]
    if command == "quantize":  # the .hmdf writer opens the temporary itself
        monkeypatch.setattr("hmdf_deploy.deploy.container.open", disk_full, raising=False)
    else:  # the ONNX writer
        monkeypatch.setattr(Path, "write_bytes", disk_full)
    result = hmdf(command, *args)
    assert_one_error_line(result, 2, f"error: cannot write {target}: No space left on device")
    assert target.read_bytes() == b"the previous file"
    assert os.listdir(tmp_path) == [target.name]  # no temporary left


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_other_write_errors_use_the_systems_words(code, model_file, tmp_path, monkeypatch):
    def refused(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_bytes", refused)
    target = tmp_path / "out.onnx"
    result = hmdf("export", model_file, "-o", target)
    assert_one_error_line(result, 2, f"error: cannot write {target}: {os.strerror(code)}")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["model.safetensors", "train_state.pt"])
def test_full_disk_during_training_is_one_line(name, tmp_path, monkeypatch):
    """The checkpoint's files are serialised in memory and written with plain file I/O, so a full
    disk is the OS's error (one line, exit 2), not safetensors' or torch.save's own exception."""
    real = Path.write_bytes

    def full_for(path, data):
        return disk_full() if path.name.startswith(f".{name}.") else real(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_for)
    out = tmp_path / "run"
    result = hmdf("train", "--dataset", "digits", *TINY, "--epochs", "1", "--out", out, "--json")
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.output
    assert result.stderr.splitlines() == [f"error: cannot write {out / name}: No space left on device"]
    assert list(out.glob("*.tmp")) + list(out.glob(".*.tmp")) == []
    assert not (out / name).exists()


#: `hmdf train` under a file size limit: the kernel refuses the write itself (EFBIG), inside the
#: libraries' own writers were they still used.
SIZE_LIMIT = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    limit = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from hmdf_deploy.cli.main import main
    sys.argv[0] = "hmdf"
    main()
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.safetensors", "train_state.pt"])
def test_a_write_refused_by_the_os_during_training_is_one_line(name, run_dir, tmp_path):
    """A real failed write (no monkeypatch): the file size limit lets config.json through and stops
    the named file; the CLI prints one line, exits 2 and leaves no temporary."""
    weights = (run_dir / "model.safetensors").stat().st_size  # the same network as below
    limit = 4096 if name == "model.safetensors" else weights + 4096
    assert (run_dir / "config.json").stat().st_size < 4096 < weights
    assert (run_dir / "train_state.pt").stat().st_size > limit
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", SIZE_LIMIT, str(limit), "train", "--dataset", "digits", *TINY,
                           "--epochs", "1", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=300, env=env())
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: cannot write {out / name}: {os.strerror(errno.EFBIG)}"]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_outside_training_is_one_line_and_exit_130(model_file, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("hmdf_deploy.cli.deploy.load_hmdf", interrupted)
    assert_one_error_line(hmdf("inspect", model_file), 130, "error: interrupted")
    debug = hmdf("--debug", "inspect", model_file)
    assert debug.exit_code == 130 and "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == "error: interrupted"


def test_an_error_message_over_several_lines_is_printed_as_one(model_file, monkeypatch):
    """cli/ui.py `fail`: an HmdfError whose text holds a newline and indentation is printed as one
    `error:` line with the whitespace collapsed, exit 2."""
    def broken(*args, **kwargs):
        raise HmdfError("first\n  second")

    monkeypatch.setattr("hmdf_deploy.cli.deploy.load_hmdf", broken)
    assert_one_error_line(hmdf("inspect", model_file), 2, "error: first second")


@pytest.mark.parametrize("args, line", [
    (["run", "m.hmdf"], "error: Missing option '--stream' / '-s'. (see hmdf run --help)"),
    (["inspect", "m.hmdf", "--samples", "abc"], "error: Invalid value for '--samples'"),
    (["bogus"], "error: No such command 'bogus'. (see hmdf --help)"),
])
def test_usage_errors_are_one_line_through_the_entry_point(args, line):
    done = subprocess.run([sys.executable, "-m", "hmdf_deploy.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env())
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(line), done.stderr


def test_hmdf_alone_prints_the_help():
    done = subprocess.run([sys.executable, "-m", "hmdf_deploy.cli"], capture_output=True, text=True, timeout=120,
                          env=env())
    assert done.returncode == 0 and done.stdout.count("Usage: hmdf") == 1 and "quantize" in done.stdout


SPY_ON_TORCH = textwrap.dedent("""
    import builtins, os, sys
    seen, real = [], builtins.__import__
    def spy(name, *args, **kwargs):  # the environment when torch (and so OpenMP) is first loaded
        if name.split(".")[0] == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return real(name, *args, **kwargs)
    builtins.__import__ = spy
    import hmdf_deploy.cli as cli
    sys.argv = ["hmdf", "--help"]
    try:
        cli.entry()
    except SystemExit:
        pass
    print("OMP_WAIT_POLICY when torch loaded:", seen)
""")


@pytest.mark.parametrize("given, want", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_entry_point_lets_openmp_threads_sleep_unless_told_otherwise(given, want):
    """Spinning OpenMP threads made training up to 14x slower beside another torch process
    (benchmarks/threads.py); the policy only counts if it is set before torch is imported."""
    environ = {k: v for k, v in env().items() if k != "OMP_WAIT_POLICY"}
    if given:
        environ["OMP_WAIT_POLICY"] = given
    done = subprocess.run([sys.executable, "-c", SPY_ON_TORCH], capture_output=True, text=True, timeout=120,
                          env=environ)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"OMP_WAIT_POLICY when torch loaded: [{want!r}]"


# ------------------------------------------------------------------------ SIGKILL (subprocess)
#: Run the CLI with a slow disk: every temporary is rewritten in small chunks with pauses before
#: atomic_write renames it, so that a kill often lands while a partial temporary exists.
SLOW_DISK = textwrap.dedent("""
    import os, sys, time
    real_chmod = os.chmod
    def slow_chmod(path, mode, *a, **kw):
        if str(path).endswith(".tmp"):
            data = open(path, "rb").read()
            open(os.environ["HMDF_MARK"], "w").close()  # tell the test the write has begun
            with open(path, "wb") as f:
                for i in range(0, len(data), max(1, len(data) // 20)):
                    f.write(data[i:i + max(1, len(data) // 20)]); f.flush(); time.sleep(0.01)
        return real_chmod(path, mode, *a, **kw)
    os.chmod = slow_chmod
    from hmdf_deploy.cli.main import app
    app(sys.argv[1:])
""")


def env(**extra) -> dict:
    # one thread everywhere: bit-equal results across processes do not depend on the thread count
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def kill_during_write(args: list, mark: Path, delay: float) -> int:
    """Start the CLI, SIGKILL it `delay` seconds after its write began; its exit code."""
    mark.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DISK, *map(str, args)], env=env(HMDF_MARK=str(mark)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["quantize", "export"])
def test_sigkill_never_leaves_a_partial_file(command, run_dir, model_file, tmp_path):
    rng = random.Random(command)
    target = tmp_path / ("out.hmdf" if command == "quantize" else "out.onnx")
    args = (["quantize", run_dir, "-o", target, "--calib", 16] if command == "quantize"
            else ["export", model_file, "-o", target])
    assert hmdf(*args).exit_code == 0
    complete = target.read_bytes()
    old = b"the previous file"
    # the slowed write takes about 0.2 s: the first kills land during it, the last after the rename
    for delay in [0.0, rng.uniform(0.0, 0.25), 0.6]:
        target.write_bytes(old)
        kill_during_write(args, tmp_path / "mark", delay)
        data = target.read_bytes()
        assert data in (old, complete), f"a partial file after a kill {delay:.3f} s into the write"
        if data == complete and command == "quantize":
            load_hmdf(target)
    for leftover in tmp_path.glob(".*.tmp"):  # a SIGKILL cannot clean up; the name keeps it hidden
        leftover.unlink()


@pytest.mark.slow
def test_sigkill_during_training_then_resume_is_bit_equal(tmp_path):
    args = ["--dataset", "digits", "--model", "8,M,16,M", "--T", "2", "--epochs", "3", "--batch-size", "64"]
    cli = [sys.executable, "-m", "hmdf_deploy.cli", "train", *args]
    straight = tmp_path / "straight"
    subprocess.run([*cli, "--out", straight, "--json"], env=env(), check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cli, "--out", killed, "--json"], env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (killed / "train_state.pt").exists() and proc.poll() is None:  # after the first checkpoint
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before the kill: make the run longer"

    subprocess.run([sys.executable, "-m", "hmdf_deploy.cli", "train", "--resume", killed, "--json"], env=env(),
                   check=True, capture_output=True)
    want, got = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert sorted(got) == sorted(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
