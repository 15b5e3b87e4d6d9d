"""Atomic file writes: the one place every writer of hmdf goes through.

`atomic_write(path, write)` calls `write(tmp)` on a fresh temporary file in the target's folder,
fsyncs it, renames it over `path` and fsyncs the folder. A failure or a kill at any moment leaves
either the previous file or the new one under `path`, never a partial file; a failure removes the
temporary, a SIGKILL (which cannot clean up) may leave it beside the target. The one file that is
appended instead is a run's `metrics.jsonl` (training/checkpoint.py).
An OSError (disk full, no permission, read-only file system) becomes a `WriteError`: one line that
names the path, which the CLI prints as `error: cannot write PATH: No space left on device`.
Writers whose libraries report a failed write in their own exception types (safetensors' `save_file`,
`torch.save` to a path raise SafetensorError / RuntimeError) serialise to bytes first and hand them
to `atomic_write_bytes`, so that every failure of the write itself is an OSError, while a failure to
serialise stays what it is: a bug, with its traceback.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Callable

from hmdf_deploy.errors import HmdfError


class WriteError(HmdfError, OSError):
    """A failed write. Still an OSError, so code that catches the OS's error keeps working."""


def make_dir(path: str | os.PathLike, option: str) -> Path:
    """Create the output directory `path` (and its parents) if needed; a file in the way, or any
    OSError, is one line naming the command-line `option` that gave the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        what = "a link to nothing" if path.is_symlink() and not path.exists() else "a file"
        raise WriteError(f"{option} {path} is {what}; give a directory") from None
    except OSError as e:
        raise WriteError(f"cannot create {option} {path}: {e.strerror}") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        why = "is a file, not a folder" if parent.exists() else "does not exist"
        raise HmdfError(f"cannot write {path}: {parent} {why}")
    tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create 0600 files
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, HmdfError):
            # strerror is the OS's own words; an OSError raised by hand may carry only a message
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    _fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """`atomic_write` of bytes serialised beforehand, with plain file I/O."""
    atomic_write(path, lambda p: p.write_bytes(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); best effort, since not every platform allows it."""
    if sys.platform == "win32":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
