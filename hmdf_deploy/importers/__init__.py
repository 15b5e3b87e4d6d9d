"""Importers: checkpoints of other code bases → ordinary hmdf run directories (`hmdf import`).

One module per source. `hdlif`: the paper's reference code (GitHub hzc1208/HD_LIF), see
docs/import-hdlif.md. `get(name)` returns a source's `import_*` function.
"""

from __future__ import annotations

from typing import Callable

from hmdf_deploy.errors import HmdfError
from hmdf_deploy.importers.hdlif import ImportResult, import_hdlif

IMPORTERS: dict[str, Callable[..., ImportResult]] = {"hdlif": import_hdlif}


def get(name: str) -> Callable[..., ImportResult]:
    """The importer for `name`; an unknown source is a one-line HmdfError listing the known ones."""
    try:
        return IMPORTERS[name.strip().lower()]
    except KeyError:
        raise HmdfError(f"--from {name!r}: hmdf imports from {', '.join(IMPORTERS)}") from None


__all__ = ["IMPORTERS", "ImportResult", "get", "import_hdlif"]
