"""`hmdf quantize` and `hmdf inspect`: thin commands over `hmdf_deploy.deploy`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from hmdf_deploy.cli import ui
from hmdf_deploy.data import describe_input, input_spec
from hmdf_deploy.deploy import load_hmdf, save_hmdf
from hmdf_deploy.deploy.inputs import sample_sequence
from hmdf_deploy.deploy.quantize import quantize_run
from hmdf_deploy.deploy.summary import LayerRow, layer_rows, measure_costs
from hmdf_deploy.errors import HmdfError
from hmdf_deploy.quant import WEIGHT_MODES
from hmdf_deploy.training import checkpoint as ckpt

RUN_FILES = {ckpt.CONFIG, ckpt.WEIGHTS, ckpt.STATE, ckpt.METRICS}  # what `hmdf train --out` writes


@ui.handle_errors
def quantize(
    run_dir: Path = typer.Argument(..., help="A training run directory (hmdf train --out)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output .hmdf file (default RUN_DIR/model.hmdf)."),
    weights: Optional[str] = typer.Option(None, help="Quantize an fp32 run after training: 1bit or 1.5bit."),
    calib: Optional[int] = typer.Option(None, help="Check on the first N test samples (default: the whole test split)."),
    data_dir: Optional[Path] = typer.Option(None, help="Where the run's dataset is (default: where training read it)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Fold BN and Mem-BN, pack the weights to 1 / 1.5 bit, check against the trained network, write .hmdf.

    Example: hmdf quantize runs/digits -o digits.hmdf
    """
    if not run_dir.is_dir():
        raise HmdfError(f"{run_dir} is not a directory; pass a training run directory (hmdf train --out)")
    if weights is not None and weights not in WEIGHT_MODES[1:]:
        raise HmdfError(f"--weights must be 1bit or 1.5bit, got {weights!r}")
    out = out or run_dir / "model.hmdf"
    refuse_run_file(out, run_dir)
    result = quantize_run(run_dir, weights=weights, calib=calib, data_dir=data_dir)
    check = result.check
    if not check.passed:
        raise HmdfError(
            f"the folded model disagrees with the trained network (max |Δ logits| {check.max_abs_diff:.2e}, "
            f"{check.code_flips} of {check.codes} 4-bit codes differ); nothing was written")
    if result.accuracy_before is not None:
        ui.err.print(f"warning: quantized an fp32 run after training; test accuracy "
                     f"{100 * result.accuracy_before:.2f}% → {100 * result.accuracy_after:.2f}%")
    save_hmdf(result.model, out)
    rows = layer_rows(result.model)
    if json_out:
        ui.emit_json({"path": str(out), "file_bytes": os.path.getsize(out), **_layers_json(rows),
                      "check": check.to_dict(), "accuracy_before": result.accuracy_before,
                      "accuracy_after": result.accuracy_after})
        return
    ui.out.print(_layer_table(f"{out} ({os.path.getsize(out):,} bytes)", rows))
    ui.out.print(
        f"check on {check.samples} test samples: max |Δ logits| {check.max_abs_diff:.2e}, predictions agree "
        f"{100 * check.prediction_agreement:.2f}%, 4-bit codes differing {check.code_flips}/{check.codes}: passed")


def refuse_run_file(out: Path, run_dir: Path) -> None:
    """An output must not replace a file of the training run it is made from."""
    if out.resolve().parent == run_dir.resolve() and out.name in RUN_FILES:
        raise HmdfError(f"--out {out} would overwrite the training run's own {out.name}; choose another name")


@ui.handle_errors
def inspect(
    model_path: Path = typer.Argument(..., help="A .hmdf file."),
    events: Optional[Path] = typer.Option(None, help="Measure costs on this events.npz instead of built-in data."),
    samples: int = typer.Option(32, help="Built-in test samples to measure costs on."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Show a .hmdf file's layers, sizes and the paper's cost figures (SOPs, NOPs, energy).

    Example: hmdf inspect digits.hmdf
    """
    model = load_hmdf(model_path)
    rows = layer_rows(model)
    costs = measure_costs(model, sample_sequence(model, events=events, samples=samples))
    info = {"T": model.T, "input_shape": list(model.input_shape), "event": model.event,
            "spikes": model.spikes, "num_classes": model.num_classes, "source": model.source,
            "input": input_spec(model.source.get("dataset"))}
    cost = {"sops": costs.sops, "nops": costs.nops, "energy_mj": costs.energy_mj, "spike_rate": costs.spike_rate}
    if json_out:
        ui.emit_json({"path": str(model_path), "file_bytes": os.path.getsize(model_path), **info,
                      **_layers_json(rows), "costs": cost})
        return
    ui.out.print(_layer_table(f"{model_path} ({os.path.getsize(model_path):,} bytes), T={model.T}, "
                              f"spikes {model.spikes}", rows))
    ui.out.print(f"input {' × '.join(map(str, model.input_shape))}: {describe_input(info['input'])}")
    ui.out.print(ui.table("costs per sample (SPEC §10)", ["figure", "value"], [
        ["SOPs (convs but the stem, summed over T)", f"{costs.sops:,.0f}"],
        ["NOPs", f"{costs.nops:,.0f}"],
        ["energy", f"{costs.energy_mj:.3e} mJ"],
        ["spike rate", f"{100 * costs.spike_rate:.1f}%"],
    ]))


def _layers_json(rows: list[LayerRow]) -> dict:
    layers = [{"name": r.name, "kind": r.kind, "weights": r.weights, "params": r.params,
               "bits_per_weight": r.bits_per_weight, "bytes": r.bytes, "paper_bytes": r.paper_bytes} for r in rows]
    return {"layers": layers, "tensor_bytes": sum(r.bytes for r in rows),
            "paper_bytes": sum(r.paper_bytes for r in rows), "fp32_bytes": sum(4 * r.params for r in rows)}


def _layer_table(title: str, rows: list[LayerRow]):
    body = [[r.name, r.kind, r.weights, f"{r.params:,}", f"{r.bits_per_weight:.2f}", f"{r.bytes:,}",
             f"{r.paper_bytes:,.0f}", f"{r.ratio:.1f}×"] for r in rows]
    total, fp32 = sum(r.bytes for r in rows), sum(4 * r.params for r in rows)
    body.append(["total", "", "", f"{sum(r.params for r in rows):,}", "", f"{total:,}",
                 f"{sum(r.paper_bytes for r in rows):,.0f}", f"{fp32 / max(1, total):.1f}×"])
    return ui.table(title, ["layer", "kind", "weights", "params", "bits/w", "bytes", "paper B", "vs fp32"], body)


__all__ = ["quantize", "inspect"]
