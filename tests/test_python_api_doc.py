"""docs/python-api.md is a notebook user's guide: its python blocks, run in order in one namespace
in an empty folder, must work exactly as written (train, fold, reference, .hmdf, ONNX, events,
Engine), so that the page cannot go stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def doc_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 7, "docs/python-api.md lost its python examples"
    return "\n".join(blocks)


@pytest.mark.slow
def test_the_python_api_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "python_api_doc"}
    exec(compile(doc_code(), str(DOC), "exec"), scope)  # the doc's code, exactly as written
    assert (tmp_path / "neuro.hmdf").is_file()
    assert (tmp_path / "neuro.step.onnx").is_file() and (tmp_path / "neuro.sequence.onnx").is_file()
    assert scope["report"].steps > scope["model"].T  # the continuous stream ran past one window


def test_the_guide_imports_only_names_that_exist():
    """The quick subset still catches a renamed or moved name the page imports."""
    imports = re.findall(r"^from (hmdf_deploy[\w.]*) import (.+)$", doc_code(), re.M)
    assert imports
    import importlib

    for module, names in imports:
        mod = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(mod, name), f"docs/python-api.md imports {name} from {module}"
