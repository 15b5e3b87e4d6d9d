"""`hmdf export`: write a deployment model in another format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from hmdf_deploy import exporters
from hmdf_deploy.cli import ui
from hmdf_deploy.cli.deploy import refuse_run_file
from hmdf_deploy.deploy import load_hmdf
from hmdf_deploy.deploy.container import read_checksum
from hmdf_deploy.deploy.quantize import quantize_run
from hmdf_deploy.errors import HmdfError


@ui.handle_errors
def export(
    model_path: Path = typer.Argument(..., help="A .hmdf file, or a training run directory (folded and checked first)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx or hmdf."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: MODEL with the format's suffix)."),
    graph: str = typer.Option("step", help="ONNX: step (streaming, state in/out), sequence (T, B, …), or both."),
    path: str = typer.Option("lowbit", help="ONNX weights: lowbit (INT2 / packed signs), integer (ConvInteger on 4-bit codes), float."),
    opset: int = typer.Option(25, help="ONNX opset (INT2 weights need 25)."),
    data_dir: Optional[Path] = typer.Option(None, help="From a run directory: where its dataset is (for the check)."),
    json_out: bool = typer.Option(False, "--json", help="Print the written files as JSON."),
) -> None:
    """Export a model; every ONNX file is checked in onnxruntime against the reference first.

    Example: hmdf export runs/digits.hmdf --format onnx -o digits.onnx --graph both
    """
    write = exporters.get(fmt)
    if out is None:  # beside a file, or inside a run directory
        out = model_path.with_suffix(f".{fmt}") if model_path.is_file() else model_path / f"model.{fmt}"
    if out.resolve() == model_path.resolve():
        raise HmdfError(f"--out {out} would overwrite the input model")
    if model_path.is_dir():
        refuse_run_file(out, model_path)
    model, checksum = _load(model_path, data_dir)
    files = write(model, out, graph=graph, path=path, opset=opset, checksum=checksum)
    if json_out:
        ui.emit_json({"files": [{"path": str(f), "bytes": os.path.getsize(f)} for f in files]})
        return
    for f in files:
        ui.out.print(f"wrote {f} ({os.path.getsize(f):,} bytes)")


def _load(model_path: Path, data_dir: Path | None):
    if model_path.is_dir():
        result = quantize_run(model_path, data_dir=data_dir)
        if not result.check.passed:
            raise HmdfError("the folded model disagrees with the trained network; run hmdf quantize for details")
        return result.model, ""
    if not model_path.exists():
        raise HmdfError(f"{model_path} not found")
    if data_dir is not None:
        raise HmdfError("--data-dir is for exporting a training run directory; a .hmdf file needs no data")
    return load_hmdf(model_path), read_checksum(model_path)
