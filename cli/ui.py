"""Output for the CLI: results on stdout (a rich table, or JSON with --json), errors on stderr.

`handle_errors` is the one error boundary: an HmdfError becomes `error: <one line>` on stderr and
exit code 2 (`--debug` adds the traceback); Ctrl-C becomes `error: interrupted` and exit code 130
(128 + SIGINT, as shells report it); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import sys
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table

from hmdf_deploy.errors import HmdfError

# No markup: paths and file names are printed as they are ("x/[bold]m.onnx" is a valid file name).
# Piped or redirected, rich would assume 80 columns and cut table cells ("10,3…"); a log keeps them whole.
out = Console(soft_wrap=True, markup=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 1000)
err = Console(stderr=True, soft_wrap=True, markup=False)
settings = {"debug": False}


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HmdfError as e:
            fail(str(e))
        except KeyboardInterrupt:  # writes are atomic (hmdf_deploy/atomic.py): nothing to clean up
            fail("interrupted", code=130)
        except OSError as e:  # files go through WriteError: this is stdout (`> /dev/full`, `| head`)
            if e.errno not in (errno.ENOSPC, errno.EPIPE, errno.EIO):
                raise
            _drop_stdout()
            if e.errno == errno.EPIPE:  # the reader has all it wanted
                raise typer.Exit(0) from None
            fail(f"cannot write the output: {e.strerror}")

    return wrapper


def _drop_stdout() -> None:
    """Point stdout at the null device, so that flushing what is left at exit raises nothing more."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file behind sys.stdout (a test runner's buffer)
        pass
    finally:
        os.close(null)


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` as one line on stderr and exit with `code`."""
    if settings["debug"] and sys.exc_info()[0] is not None:
        err.print_exception()
    fail_line(message)
    raise typer.Exit(code)


def fail_line(message: str) -> None:
    """`error: message` on stderr, its whitespace (newlines included) collapsed to one line."""
    err.print(f"error: {' '.join(message.split())}", markup=False, highlight=False)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` for the CLI: `warning: message` as one line on stderr, no source line."""
    err.print(f"warning: {' '.join(str(message).split())}", highlight=False)


def emit_json(obj: Any) -> None:
    """One JSON object on stdout (for --json); NaN and ±Inf become null, so that it stays JSON."""
    sys.stdout.write(json.dumps(_finite(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        first = c == columns[0]
        t.add_column(c, justify="left" if first else "right", no_wrap=first)
    for r in rows:
        t.add_row(*(str(v) for v in r))
    return t
