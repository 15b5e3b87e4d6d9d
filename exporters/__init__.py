"""One module per output format; each has `export(model: DeployModel, out: Path, **opts) -> list[Path]`."""

from __future__ import annotations

from importlib import import_module

from hmdf_deploy.errors import HmdfError

FORMATS = ("onnx", "hmdf")


def get(fmt: str):
    """The export function of a format (imported on demand: onnx is only loaded when used)."""
    if fmt not in FORMATS:
        raise HmdfError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return import_module(f"hmdf_deploy.exporters.{fmt}").export
