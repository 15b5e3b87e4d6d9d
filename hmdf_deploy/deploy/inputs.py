"""Sample inputs for a DeployModel: built-in test data or an events.npz file, as (T, B, C, H, W)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from hmdf_deploy.data import framing, load_dataset
from hmdf_deploy.data.digits import digit_split
from hmdf_deploy.data.event_camera import neuro_digit_frames
from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import recording_frames

BUILT_IN = ("digits", "neuro-digits")


def sequence_input(x: Tensor, T: int, static: bool) -> Tensor:
    """(B, ...) static or (B, T, ...) event samples → the (T, B, ...) sequence executors take."""
    return x.unsqueeze(0).expand(T, *x.shape) if static else x.transpose(0, 1)


def sample_sequence(model: DeployModel, *, events: Path | None = None, samples: int = 32) -> Tensor:
    """Inputs to measure a model on: `events` if given, else the first `samples` of the built-in test
    split it was trained on (all of it if it holds fewer)."""
    if events is not None:
        frames, _, _ = recording_frames(events, model.input_shape, model.T, framing(model.source.get("dataset")))
        return torch.from_numpy(frames[: model.T]).unsqueeze(1)
    if samples < 1:
        raise HmdfError(f"--samples must be at least 1, got {samples}")
    dataset = model.source.get("dataset")
    if dataset not in BUILT_IN:
        raise HmdfError(f"this model was trained on {dataset or 'unknown data'}; pass --events FILE to measure it")
    if dataset == "neuro-digits":  # simulate only these samples (a sample depends on its index alone):
        idx = digit_split()[1][:samples]  # all 1,797 would take seconds
        return sequence_input(torch.from_numpy(neuro_digit_frames(0, model.T, idx)), model.T, static=False)
    _, test, _ = load_dataset(dataset, T=model.T)
    return sequence_input(test.x[:samples], model.T, static=not model.event)
