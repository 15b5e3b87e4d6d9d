"""Stream event recordings through an Engine and summarise what came out (`hmdf run --stream`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.event_stream import iter_frames
from hmdf_deploy.events import recording_frames
from hmdf_deploy.runtime.engine import Engine, StepResult


@dataclass
class StreamReport:
    path: str
    label: int | None
    events: int
    steps: int = 0
    windows: list[dict] = field(default_factory=list)  # one per finished window (or the last state)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    blank_steps: int = 0  # all-zero frames: their logits come from the biases alone (docs/behaviour.md)

    @property
    def prediction(self) -> int | None:
        """The last window's prediction (the whole stream's, under the continuous policy)."""
        return self.windows[-1]["prediction"] if self.windows else None

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms or [0.0])
        return {
            "path": self.path, "label": self.label, "prediction": self.prediction, "events": self.events,
            "steps": self.steps, "blank_steps": self.blank_steps, "windows": len(self.windows),
            "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")},
            "steps_per_s": self.steps / self.seconds if self.seconds else 0.0,
            "events_per_s": self.events / self.seconds if self.seconds else 0.0,
        }


def stream(engine: Engine, path: Path, *, on_step: Callable[[StepResult, float], None] | None = None,
           time_window: int | None = None, event_count: int | None = None) -> StreamReport:
    """Feed a recording frame by frame (batch 1) through a fresh engine state.

    With `time_window` or `event_count` the file is read in chunks and binned on the fly (memory
    does not grow with the recording); otherwise it is binned into T frames as a whole.
    """
    frames, label, n_events = _frames(path, engine, time_window, event_count)
    report = StreamReport(str(path), label, n_events)
    engine.reset()
    started = time.perf_counter()
    result = None
    for frame in frames:
        t0 = time.perf_counter()
        result = engine.step(frame[None])
        ms = 1000 * (time.perf_counter() - t0)
        if not report.steps and label is not None and not 0 <= label < result.logits.shape[-1]:
            raise HmdfError(f"{path}: label {label} is not one of the model's {result.logits.shape[-1]} classes "
                            f"(0 to {result.logits.shape[-1] - 1})")
        report.latencies_ms.append(ms)
        report.steps += 1
        report.blank_steps += not frame.any()
        if result.window_done:
            report.windows.append(_window(result, label))
        if on_step is not None:
            on_step(result, ms)
    report.seconds = time.perf_counter() - started
    # a partial window (a stream shorter than T, or its tail) or continuous: reported with its steps
    if result is not None and not result.window_done:
        report.windows.append(_window(result, label))
    return report


def _frames(path: Path, engine: Engine, time_window, event_count) -> tuple[Iterable[np.ndarray], int | None, int]:
    if time_window is None and event_count is None:
        return recording_frames(path, engine.input_shape, engine.T, engine.framing)
    header, frames = iter_frames(path, tuple(engine.input_shape[1:]), time_window=time_window, event_count=event_count,
                                 sensor_size=engine.framing.sensor_size)
    engine.framing.check_sensor(header.sensor_size, str(path))
    if header.sensor_size[2] != engine.input_shape[0]:
        raise HmdfError(f"{path} has {header.sensor_size[2]} polarity channels; the model takes {engine.input_shape[0]}")
    return frames, header.label, header.events


def _window(r: StepResult, label: int | None) -> dict:
    return {"window": r.window, "steps": r.t + 1, "prediction": int(r.prediction[0]),
            "confidence": float(r.confidence[0]), "label": label}


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a directory stands for the .npz files inside it, sorted by name."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise HmdfError(f"{p} holds no .npz files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise HmdfError(f"{p} is not a file" if p.exists() else f"{p} not found")
    return out
