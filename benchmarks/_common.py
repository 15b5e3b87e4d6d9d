"""Shared helpers for the benchmark scripts: machine record, thread setup, tables, JSON, stats.

Every script calls `setup(threads)` first. With other processes on the machine, torch's default
of one OpenMP thread per core can be many times slower than a single thread (measured here: 2
threads ran ~10× slower than 1 while other jobs were running), so the benchmarks default to
`torch.set_num_threads(1)` and record the value they used.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

# Make `python benchmarks/x.py` work from the repository root without installing anything extra.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def setup(threads: int = 1) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. a second call in the same process)
        pass


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """HEAD of the repository the benchmarks run from, with "+dirty" if library files are modified."""
    import subprocess

    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "hmdf_deploy", "cli"],
                               cwd=_ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    """What the numbers were measured on."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "commit": git_commit(),
    }


def machine_line(m: dict | None = None) -> str:
    m = m or machine()
    load = m.get("loadavg_at_start")
    load_s = f", load avg {load[0]:.2f}" if load else ""
    return (f"{m['date']} · {m['cpu']} · {m['cores']} cores{load_s} · python {m['python']} · "
            f"torch {m['torch']} · torch threads {m['torch_threads']} · commit {m.get('commit', '?')}")


def md_table(headers: list[str], rows: list[list]) -> str:
    def line(cells) -> str:  # a "|" inside a cell (e.g. "max |Δ|") must be escaped in markdown
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *map(line, rows)])


def write_json(path: str | None, obj: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def stats(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "all": list(xs)}


def fmt_stats(s: dict, unit: str = "s", digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f}) {unit}".rstrip()


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f} B"
