"""`hmdf import`: turn a checkpoint of the paper's reference code into an hmdf run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hmdf_deploy import importers
from hmdf_deploy.cli import ui
from hmdf_deploy.importers.hdlif import LOADABLE


@ui.handle_errors
def import_checkpoint(
    checkpoint: Path = typer.Argument(..., help="The reference code's .pth (…_snn_best_checkpoint.pth)."),
    source: str = typer.Option(..., "--from", help="Where the checkpoint comes from: hdlif (GitHub hzc1208/HD_LIF)."),
    out: Path = typer.Option(..., "--out", "-o", help="The run directory to create."),
    mode: Optional[str] = typer.Option(
        None, help="Spike mode of the reference run: vanilla, or compression (4-bit). Needed unless the checkpoint "
                   "sits in its reference run directory, whose name says it."),
    seca: Optional[int] = typer.Option(
        None, help="SECA variant when the checkpoint has SECA: 1 or 2 (the reference's --use_eca)."),
    arch: Optional[str] = typer.Option(
        None, help="The reference --net_arch (resnet18, resnet18_fp, resnet18_lif, resnet19, resnet34, vgg11): "
                   "needed to tell 1-bit from full-precision checkpoints."),
    dataset: Optional[str] = typer.Option(
        None, help="cifar10, cifar100, dvs-cifar10 or imagenet, when the class count does not tell."),
    data_dir: Optional[Path] = typer.Option(
        None, help="Where the dataset lives, recorded in the run so that `hmdf quantize` finds the test split."),
    allow_sign_zero: bool = typer.Option(
        False, "--allow-sign-zero", help="Import latent 1-bit weights that are exactly 0 as +α (inexact) "
                                         "instead of refusing the checkpoint."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Import a checkpoint trained with the paper's reference code as an hmdf run directory.

    Example: hmdf import cifar100-resnet18-…-vanilla/cifar100_snn_best_checkpoint.pth --from hdlif -o runs/r18
    """
    result = importers.get(source)(checkpoint, out, mode=mode, seca=seca, arch=arch, dataset=dataset,
                                   data_dir=data_dir, allow_sign_zero=allow_sign_zero)
    for message in result.warnings:
        ui.err.print(f"warning: {message}", markup=False, highlight=False)
    if json_out:
        ui.emit_json(result.to_dict())
        return
    model = result.config.to_dict()
    rows = [[name, str(model.get(name, result.dataset)), src] for name, src in result.sources.items()]
    ui.out.print(ui.table(f"{checkpoint} → {out}", ["setting", "value", "from"], rows))
    accuracy = "" if result.max_acc1 is None else f", reference best accuracy {100 * result.max_acc1:.2f}%"
    ui.out.print(f"imported {result.reference_keys} keys, {result.reference_params:,} reference parameters{accuracy}")
    if data_dir is not None:
        ui.out.print(f"next: hmdf quantize {out} --calib 256")
    elif result.dataset in LOADABLE:
        ui.out.print(f"next: hmdf quantize reads the {result.dataset} test split; import with --data-dir DIR to "
                     f"record where it is, then: hmdf quantize {out} --calib 256")


__all__ = ["import_checkpoint"]
