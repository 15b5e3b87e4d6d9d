"""`hmdf run --stream` and `hmdf data make-events`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.live import Live

from hmdf_deploy.atomic import make_dir
from hmdf_deploy.cli import ui
from hmdf_deploy.deploy import load_hmdf
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.events import MAX_BIN
from hmdf_deploy.runtime import BACKENDS, POLICIES, Engine
from hmdf_deploy.runtime.stream import StreamReport, expand_paths, stream


@ui.handle_errors
def run(
    model_path: Path = typer.Argument(..., help="A .hmdf file or an exported ONNX step graph."),
    streams: List[Path] = typer.Option(..., "--stream", "-s", help="events.npz file(s) or a directory of them; repeatable."),
    backend: str = typer.Option("auto", help=f"One of: {', '.join(BACKENDS)}. auto: triton on a CUDA GPU, "
                                              "else onnxruntime."),
    policy: str = typer.Option("window", help="window: reset every T frames; continuous: keep the state."),
    time_window: Optional[int] = typer.Option(None, help="Bin events into frames of this many µs (default: T frames per file, "
                                                                     "split as the model's training data was)."),
    event_count: Optional[int] = typer.Option(None, help="Bin events into frames of this many events."),
    json_out: bool = typer.Option(False, "--json", help="JSON lines: one per window, then one summary per file."),
) -> None:
    """Stream recordings through the model step by step and report predictions and latency.

    Example: hmdf run runs/neuro.hmdf --stream events/ --backend onnxruntime
    """
    if policy not in POLICIES:
        raise HmdfError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    for option, value in (("--time-window", time_window), ("--event-count", event_count)):
        if value is not None and not 1 <= value <= MAX_BIN:
            raise HmdfError(f"{option} must be an integer from 1 to 2**62, got {value}")
    if time_window is not None and event_count is not None:
        raise HmdfError("give --time-window or --event-count, not both")
    files = expand_paths(streams)
    engine = Engine(_load(model_path), backend, policy)
    binning = {"time_window": time_window, "event_count": event_count}
    live = len(files) == 1 and not json_out and ui.out.is_terminal
    reports: list[StreamReport] = []
    try:
        for f in files:
            reports.append(_stream_one(engine, f, binning, live))
            if json_out:  # each file's lines as soon as it is done: a failure or Ctrl-C later loses none
                for w in reports[-1].windows:
                    ui.emit_json({"path": reports[-1].path, **w})
                ui.emit_json({"summary": reports[-1].summary(), "backend": engine.backend.name, "policy": policy})
    except (HmdfError, KeyboardInterrupt):
        if reports and not json_out:  # the files done before it, then the error line
            _render(reports, engine.backend.name, policy)
        raise
    if json_out:
        if len(reports) > 1:
            ui.emit_json({"accuracy": _accuracy(reports), "files": len(reports)})
        return
    _render(reports, engine.backend.name, policy)


def _load(path: Path):
    if path.is_dir():
        raise HmdfError(f"{path} is a directory; hmdf run takes a .hmdf or .onnx file "
                        f"(from a training run: hmdf quantize {path} -o model.hmdf)")
    if not path.is_file():
        raise HmdfError(f"{path} not found")
    return path if path.suffix.lower() == ".onnx" else load_hmdf(path)


def _stream_one(engine: Engine, path: Path, binning: dict, live: bool) -> StreamReport:
    if not live:
        return stream(engine, path, **binning)
    with Live(console=ui.out, transient=True) as view:
        def show(r, ms):
            view.update(f"step {r.t} (window {r.window}): prediction {int(r.prediction[0])} "
                        f"({100 * float(r.confidence[0]):.0f}%), {ms:.2f} ms/step")
        return stream(engine, path, on_step=show, **binning)


def _accuracy(reports: list[StreamReport]) -> float | None:
    labelled = [r for r in reports if r.label is not None]
    return sum(r.prediction == r.label for r in labelled) / len(labelled) if labelled else None


def _render(reports: list[StreamReport], backend: str, policy: str) -> None:
    if len(reports) == 1:
        r = reports[0]
        ui.out.print(ui.table(f"{r.path}: {r.events:,} events, {r.steps} steps, policy {policy}",
                              ["window", "steps", "prediction", "confidence", "label"],
                              [[w["window"], w["steps"], w["prediction"], f"{100 * w['confidence']:.1f}%",
                                "-" if w["label"] is None else w["label"]] for w in r.windows]))
    else:
        ui.out.print(ui.table(f"{len(reports)} recordings, policy {policy}", ["file", "prediction", "label"],
                              [[Path(r.path).name, r.prediction, "-" if r.label is None else r.label] for r in reports]))
    lat = [ms for r in reports for ms in r.latencies_ms]
    s = StreamReport("all", None, sum(r.events for r in reports), sum(r.steps for r in reports),
                     latencies_ms=lat, seconds=sum(r.seconds for r in reports)).summary()
    acc = _accuracy(reports)
    ui.out.print(f"backend {backend}: latency p50 {s['latency_ms']['p50']:.3f} ms, p90 {s['latency_ms']['p90']:.3f} ms, "
                 f"p99 {s['latency_ms']['p99']:.3f} ms per step; {s['steps_per_s']:,.0f} steps/s, "
                 f"{s['events_per_s']:,.0f} events/s" + ("" if acc is None else f"; accuracy {100 * acc:.2f}%"))


data = typer.Typer(help="Built-in data: write event recordings for demos and tests.", no_args_is_help=True)


@data.command("make-events")
@ui.handle_errors
def make_events(
    out: Path = typer.Option(Path("events"), "--out", "-o", help="Directory to write events.npz files into."),
    count: int = typer.Option(10, help="Number of recordings (neuro-digits test samples)."),
    seed: int = typer.Option(0, help="Simulation seed."),
    json_out: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Write neuro-digits recordings (simulated event camera) as events.npz files, at most one per
    test sample (360).

    Example: hmdf data make-events --out events --count 20
    """
    from hmdf_deploy.data import make_neuro_digit_recordings
    from hmdf_deploy.data.digits import digit_split
    from hmdf_deploy.events import write_events

    if count < 1:
        raise HmdfError(f"--count must be at least 1, got {count}")
    _, test = digit_split()
    indices = test[:count]
    make_dir(out, "--out")
    files = [out / f"neuro-digit-{int(i):04d}.npz" for i in indices]
    stale = sorted(set(out.glob("neuro-digit-*.npz")) - set(files))
    if stale:  # a directory of recordings is read as one set (hmdf run --stream DIR)
        raise HmdfError(f"--out {out} already holds {len(stale)} other recording{'s' if len(stale) > 1 else ''} "
                        f"({stale[0].name}{', …' if len(stale) > 1 else ''}); "
                        "give an empty or new directory")
    for path, rec in zip(files, make_neuro_digit_recordings(seed, indices)):
        write_events(path, rec)
    if json_out:
        ui.emit_json({"files": [{"path": str(f), "bytes": f.stat().st_size} for f in files]})
        return
    short = f" (the test split holds {len(indices)})" if count > len(indices) else ""
    ui.out.print(f"wrote {len(indices)} recording{'s' if len(indices) > 1 else ''} to {out}{short}")
