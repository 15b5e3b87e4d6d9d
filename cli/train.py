"""`hmdf train`: parse, fill per-dataset defaults, call the library, render progress and results."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hmdf_deploy.cli import ui
from hmdf_deploy.data import DATASETS
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.training import RECIPES, TrainingInterrupted, load_run_config, recipe, resume, start
from hmdf_deploy.training import Progress as TrainProgress


@ui.handle_errors
def train(
    ctx: typer.Context,
    dataset: str = typer.Option("digits", help=f"One of: {', '.join(DATASETS)}."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with cifar10/cifar100/dvs-cifar10 files."),
    model: Optional[str] = typer.Option(None, help="vgg11, resnet18, resnet19, resnet34 or a VGG cfg like 64,128,M,256,M."),
    T: Optional[int] = typer.Option(None, "--T", "-T", help="Time steps, 1 to 1024 (default per dataset)."),
    neuron: str = typer.Option("hmdf", help="hmdf, or lif (baseline)."),
    weights: str = typer.Option("fp32", help="fp32, 1bit or 1.5bit."),
    spikes: str = typer.Option("float", help="float, or 4bit."),
    parallel: bool = typer.Option(False, "--parallel", help="Parallel HM-DF as the second neuron of ResNet blocks."),
    mem_bn: bool = typer.Option(False, "--mem-bn", help="Membrane-potential batch norm (SPEC §3)."),
    seca: int = typer.Option(0, help="SECA attention: 0 off, 1, or 2 (adds the input current)."),
    pool: str = typer.Option("avg", help="VGG pooling: avg or max."),
    width: Optional[int] = typer.Option(None, help="ResNet base width, at most 1024 (default per dataset)."),
    mode: str = typer.Option("online", help="online, online-accumulate, or stbp (baseline)."),
    random_backprop: bool = typer.Option(False, "--random-backprop", help="Back-propagate one random step per batch."),
    mix: Optional[bool] = typer.Option(None, "--mix/--no-mix",
                                       help="Mixup / CutMix on every batch (default per dataset: on for the real ones)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default per dataset)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size per process."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (SGD, Nesterov, cosine schedule)."),
    seed: int = typer.Option(0, help="Seed for initialisation, data order and augmentation: 0 to 2**63-1."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to create (default runs/<dataset>)."),
    resume_dir: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory, as its config.json says (no other option but --json)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON object."),
) -> None:
    """Train an HM-DF network and write a run directory.

    Example: hmdf train --dataset digits --weights 1.5bit --spikes 4bit --out runs/digits
    """
    if resume_dir is not None:
        given = _given_options(ctx, besides={"resume_dir", "json_out"})
        if given:  # they would be ignored: the run's own config.json says how it trains
            raise HmdfError(f"--resume continues the run in place, as configured in {resume_dir / 'config.json'}; "
                            f"it takes no {', '.join(given)}")
        run_dir = resume_dir
        call = lambda **kw: resume(run_dir, **kw)  # noqa: E731
    else:
        model_config, train_config = recipe(  # None: the dataset's default (0 and an empty --model are refused)
            dataset, model=model, T=T, neuron=neuron, weights=weights, spikes=spikes, parallel=parallel,
            mem_bn=mem_bn, seca=seca, pool=pool, width=width, data_dir=data_dir, mode=mode,
            random_backprop=random_backprop, mix=mix, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
        run_dir = out or Path("runs") / dataset
        call = lambda **kw: start(run_dir, model_config, train_config, **kw)  # noqa: E731

    with _stop_on_ctrl_c() as stop, _RichProgress(quiet=json_out) as progress:
        try:
            record = call(progress=progress, should_stop=stop)
        except TrainingInterrupted as e:
            ui.fail(str(e), code=130)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all
        _report(run_dir, record, json_out)


train.__doc__ = train.__doc__.rstrip() + "\n\n" + "\n\n".join(  # the defaults the help of --model, --T, --epochs, … refers to
    ["Defaults per dataset (model, T, epochs, batch size, lr):"]
    + [f"{name}: {r['model']}, T={r['T']}, {r['epochs']} epochs, batch {r['batch_size']}, lr {r['lr']}"
       for name, r in RECIPES.items()])


def _given_options(ctx: typer.Context, besides: set[str]) -> list[str]:
    """The options given on the command line (as typed, e.g. --no-mix), other than `besides`.
    (Sources are compared by name: typer carries its own copy of click's ParameterSource.)"""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name in besides or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        opts = param.secondary_opts if param.secondary_opts and ctx.params.get(param.name) is False else param.opts
        given.append(max(opts, key=lambda o: o.startswith("--")))
    return given


def _report(run_dir: Path, record: dict, json_out: bool) -> None:
    acc = record.get("test_acc", [])
    if json_out:
        model_config, _ = load_run_config(run_dir)  # as completed from the data (channels, size)
        ui.emit_json({"run_dir": str(run_dir), "model": model_config.to_dict(), **record})
        return
    rows = [[t, f"{100 * a:.2f}"] for t, a in enumerate(acc)]
    ui.out.print(ui.table(f"test accuracy per time step (%), {run_dir}", ["step", "accuracy"], rows))
    if acc:
        ui.out.print(f"final: {100 * acc[-1]:.2f}% after {len(acc)} steps, epoch {record['epoch']}")


@contextmanager
def _stop_on_ctrl_c():
    """The first Ctrl-C asks the loop to checkpoint and stop after the current batch; a second one kills."""
    requested = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        ui.err.print("stopping after this batch (Ctrl-C again to abort without saving)")

    try:
        previous = signal.signal(signal.SIGINT, handler), signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
        yield lambda: False
        return
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


class _RichProgress(TrainProgress):
    """Two bars on stderr: epochs, and batches of the current epoch with loss and accuracy."""

    def __init__(self, quiet: bool) -> None:
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=ui.err, disable=quiet,
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar.live.is_started:  # started by start(): errors before training print alone
            self.bar.stop()

    def start(self, epochs: int, batches: int, epoch: int, batch: int) -> None:
        self.bar.start()
        self.epochs_task = self.bar.add_task("epochs", total=epochs, completed=epoch, info="")
        self.batch_task = self.bar.add_task("batches", total=batches, completed=batch, info="")
        self.batches = batches

    def batch(self, epoch: int, batch: int, loss: float, acc: float) -> None:
        self.bar.update(self.batch_task, completed=batch + 1, info=f"loss {loss:.3f} acc {100 * acc:.1f}%")

    def epoch(self, record: dict) -> None:
        self.bar.update(self.epochs_task, completed=record["epoch"],
                        info=f"test {100 * record['test_acc'][-1]:.2f}%")
        self.bar.reset(self.batch_task, total=self.batches)
