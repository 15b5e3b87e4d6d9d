"""`hmdf train` under torchrun: two CPU processes with the gloo backend (DESIGN.md "Scale").

One launch runs the real `-m hmdf_deploy.cli train` entry point in each process, through a small
wrapper script that records, per rank, the batches the trainer fed to `train_batch` and the final
state of the rank's network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from hmdf_deploy.data import load_dataset
from hmdf_deploy.training import checkpoint as ckpt

pytestmark = pytest.mark.slow

WORLD = 2
BATCH = 128
T = 2
RUN_FILES = {"config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"}

WRAPPER = '''
import json, os, runpy, sys

import torch
from safetensors.torch import save_file

import hmdf_deploy.training.trainer as trainer

record_dir = sys.argv[1]
rank = int(os.environ["RANK"])
built, batches = [], []
real_build, real_train_batch = trainer.build_model, trainer.train_batch


def build_model(config):
    net = real_build(config)
    built.append(net)
    init = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(init, os.path.join(record_dir, f"rank{rank}_init.safetensors"))
    return net


def train_batch(model, optimizer, x, y, **kw):
    batches.append(x.detach().clone())
    return real_train_batch(model, optimizer, x, y, **kw)


trainer.build_model = build_model
trainer.train_batch = train_batch
sys.argv = ["hmdf", *sys.argv[2:]]
code = 0
try:
    runpy.run_module("hmdf_deploy.cli", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code or 0
finally:
    if built:
        state = {k: v.detach().contiguous().cpu() for k, v in built[-1].state_dict().items()}
        save_file(state, os.path.join(record_dir, f"rank{rank}.safetensors"))
    if batches:
        save_file({"x": torch.cat(batches)}, os.path.join(record_dir, f"rank{rank}_x.safetensors"))
    with open(os.path.join(record_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"world": int(os.environ["WORLD_SIZE"]), "batch_sizes": [len(b) for b in batches]}, f)
sys.exit(code)
'''


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    script = root / "wrapper.py"
    script.write_text(WRAPPER)
    records = root / "records"
    records.mkdir()
    out = root / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
        str(script), str(records),
        "train", "--dataset", "digits", "--model", "8,M,16,M", "--T", str(T), "--epochs", "1",
        "--batch-size", str(BATCH), "--out", str(out), "--json",
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    return proc, out, records


def test_torchrun_exits_cleanly_with_a_complete_run(launch):
    proc, out, records = launch
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr
    assert set(os.listdir(out)) == RUN_FILES
    records_ = ckpt.read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records_] == [1]
    assert len(records_[0]["test_acc"]) == T
    for rank in range(WORLD):
        assert json.loads((records / f"rank{rank}.json").read_text())["world"] == WORLD


def test_each_rank_trains_on_its_own_shard(launch):
    proc, out, records = launch
    assert proc.returncode == 0, proc.stderr[-4000:]
    train, _, _ = load_dataset("digits", T=T)
    per_rank = (len(train) // WORLD) // BATCH
    for rank in range(WORLD):
        info = json.loads((records / f"rank{rank}.json").read_text())
        assert info["batch_sizes"] == [BATCH] * per_rank
    # the metrics count the batches of one process
    record = ckpt.read_metrics(out / "metrics.jsonl")[0]
    assert record["batches_per_s"] * record["seconds"] == pytest.approx(per_rank)
    # together the ranks use each training image at most as often as it occurs: disjoint shards
    rows = lambda x: [r.numpy().tobytes() for r in x.reshape(len(x), -1)]  # noqa: E731
    available = Counter(rows(train.x))
    used = Counter()
    for rank in range(WORLD):
        x = load_file(str(records / f"rank{rank}_x.safetensors"))["x"]
        assert x.shape == (per_rank * BATCH, 1, 8, 8)
        used.update(rows(x))
    assert sum(used.values()) == WORLD * per_rank * BATCH
    overused = {k: n for k, n in used.items() if n > available[k]}
    assert not overused, f"{len(overused)} images trained on by more than one rank"


def test_ranks_end_with_identical_weights(launch):
    proc, out, records = launch
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [load_file(str(records / f"rank{r}.safetensors")) for r in range(WORLD)]
    saved = load_file(str(out / "model.safetensors"))
    # rank 0 wrote the run directory
    assert sorted(saved) == sorted(ranks[0])
    assert all(torch.equal(saved[k], ranks[0][k]) for k in saved)
    # gradients were averaged: every learnable parameter is bit-equal on every rank
    from hmdf_deploy.training import load_trained

    params = [n for n, _ in load_trained(out).named_parameters()]
    assert params
    for other in ranks[1:]:
        differ = [n for n in params if not torch.equal(ranks[0][n], other[n])]
        assert not differ, f"parameters differ between ranks: {differ}"
    # and training moved them away from the initialisation
    init = load_file(str(records / "rank0_init.safetensors"))
    assert any(not torch.equal(init[n], ranks[0][n]) for n in params)


def test_only_rank_0_reports(launch):
    """Only rank 0 reports (distributed.py): `--json` under torchrun prints one JSON object."""
    proc, _, _ = launch
    assert proc.returncode == 0, proc.stderr[-4000:]
    objects = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(objects) == 1, f"{len(objects)} JSON reports on stdout:\n{proc.stdout}"
    json.loads(objects[0])
