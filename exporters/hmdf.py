"""DeployModel → the packed `.hmdf` file (docs/hmdf-format.md)."""

from __future__ import annotations

from pathlib import Path

from hmdf_deploy.deploy.graph import DeployModel
from hmdf_deploy.deploy.hmdf_file import save_hmdf


def export(model: DeployModel, out: Path, **_) -> list[Path]:
    save_hmdf(model, Path(out))
    return [Path(out)]
