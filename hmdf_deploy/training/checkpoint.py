"""The training run directory (DESIGN.md "Training run directory").

    config.json       everything needed to rebuild the network and continue training
    model.safetensors the weights, the artefact `hmdf quantize` reads
    train_state.pt    weights + optimizer + scheduler + position, loaded with weights_only=True
    metrics.jsonl     one JSON object per finished epoch

Every write but one goes to a temporary file in the same directory and is renamed into place, so
a kill at any moment leaves the previous good file. `metrics.jsonl` gets a line appended per epoch:
a kill can leave half a line, which reading skips and a resume rewrites (atomically) away. Resuming reads only `train_state.pt`, which holds its
own copy of the weights: there is no window in which weights and optimizer state disagree.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors.torch import load_file

from hmdf_deploy.atomic import WriteError, atomic_write, atomic_write_bytes
from hmdf_deploy.errors import HmdfError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE = "train_state.pt"
METRICS = "metrics.jsonl"


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HmdfError(f"{path} not found: is this a training run directory?") from None
    except OSError as e:  # a folder in its place, a file as the run directory, no permission
        raise HmdfError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HmdfError(f"{path} is not valid JSON ({e})") from None


def save_weights(path: Path, state_dict: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    # serialised in memory, written with plain file I/O: a full disk is an OSError (one line), not
    # safetensors' own error type (hmdf_deploy/atomic.py)
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={"format": "pt"}))


def load_weights(path: Path) -> dict:
    if not Path(path).is_file():
        raise HmdfError(f"{path} not found: is this a training run directory?")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise HmdfError(f"{path} is not a readable safetensors file ({e})") from None


def save_state(path: Path, state: dict) -> None:
    buffer = io.BytesIO()  # torch.save to a path reports a failed write as a RuntimeError
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path) -> dict:
    if not Path(path).is_file():
        raise HmdfError(f"{path} not found: nothing to resume in {Path(path).parent}")
    try:
        # weights_only: tensors, numbers, strings, lists and dicts; never code from the file.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise HmdfError(f"{path} is not a readable training state ({type(e).__name__})") from None


def append_metrics(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # one line, as atomic_write reports its failures
        raise WriteError(f"cannot write {path}: {e.strerror}") from None


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line half-written by a killed run; the epoch is redone on resume
    return records


def truncate_metrics(path: Path, before_epoch: int) -> None:
    """Keep only the records of epochs < before_epoch (they are redone after a resume)."""
    kept = [r for r in read_metrics(path) if r.get("epoch", 0) < before_epoch]
    atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in kept)))
