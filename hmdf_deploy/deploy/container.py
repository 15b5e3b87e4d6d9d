"""The `.hmdf` container: a safetensors file with hmdf metadata and a whole-file checksum.

The byte layout, the metadata keys, the checksum rule and every check the reader makes are
specified in docs/hmdf-format.md; this module is that page in code. In short:

    [u64 LE n][n bytes of JSON header, space-padded to a multiple of 8][tensor bytes]

The header is a safetensors header (any safetensors reader opens the file) whose `__metadata__`
holds exactly `checksum` ("sha256:" + 64 hex digits), `format` ("hmdf"), `format_version` ("1")
and `hmdf` (the caller's metadata, JSON). The digest is the SHA-256 of the whole file with its
own 64 hex digits set to ASCII "0", so any altered byte (payload, tensor index, graph JSON) is
refused, not only payload bytes.

The reader checks the whole header (size cap, JSON, format, version, dtypes, shapes, offsets,
file size) before it reads or allocates the payload, then reads the payload once, verifies the
digest and returns tensors that share that one writable buffer (no copy, no tie to the file).
Nothing in a file is ever executed: no pickle, no eval, JSON and raw bytes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hmdf_deploy.atomic import atomic_write
from hmdf_deploy.errors import HmdfError

FORMAT = "hmdf"
VERSION = 1
#: Largest JSON header accepted (and written): refuse absurd length fields before allocating.
MAX_HEADER_BYTES = 16 * 1024 * 1024

#: safetensors dtype tag ↔ torch dtype, for the dtypes a `.hmdf` file may hold.
DTYPES: dict[str, torch.dtype] = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "I32": torch.int32,
    "I64": torch.int64,
    "F32": torch.float32,
}
_TAGS = {v: k for k, v in DTYPES.items()}
_NUMPY = {"U8": "<u1", "I8": "<i1", "I32": "<i4", "I64": "<i8", "F32": "<f4"}
_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in _NUMPY.items()}
_META_KEYS = ("checksum", "format", "format_version", "hmdf")
_DIGEST_PREFIX = b'"checksum":"sha256:'
_ZERO_DIGEST = "0" * 64
_ALIGN = 8


# ------------------------------------------------------------------------------------- writing
def write_container(path: str | os.PathLike, tensors: Mapping[str, Tensor], meta: dict) -> None:
    """Write `tensors` and the JSON-serialisable dict `meta` to `path`, atomically.

    The bytes depend only on the contents (not on dict order). Tensors must be contiguous CPU
    tensors of dtype uint8, int8, int32, int64 or float32 (ValueError otherwise). `meta` is stored
    as JSON: what `read_container` returns is ``json.loads(json.dumps(meta))`` (tuples come back
    as lists). The file appears under `path` only when complete and synced; on any failure the
    previous file (if any) is untouched and no temporary file is left behind.
    """
    arrays = _check_tensors(tensors)
    meta_json = _encode_meta(meta)
    # safetensors' own order: wider dtypes first (so every tensor is aligned), then by name.
    order = sorted(arrays, key=lambda name: (-tensors[name].element_size(), name))
    entries: dict[str, Any] = {}
    offset = 0
    for name in order:
        tag = _TAGS[tensors[name].dtype]
        size = arrays[name].nbytes
        shape = list(tensors[name].shape)
        entries[name] = {"dtype": tag, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = _encode_header(meta_json, entries, _ZERO_DIGEST)
    digest = hashlib.sha256(header)
    for name in order:
        digest.update(arrays[name])
    header = _encode_header(meta_json, entries, digest.hexdigest())
    _atomic_write(Path(path), _chunks(header, [arrays[n] for n in order]))


def _check_tensors(tensors: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """Validate the tensors; return each one's bytes as a flat little-endian uint8 array (no copy)."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name → tensor, got {type(tensors).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(
                f"tensor name {name!r} is not allowed: use a non-empty string other than '__metadata__'"
            )
        if not isinstance(t, Tensor):
            raise TypeError(f"tensor `{name}` is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _TAGS:
            raise ValueError(
                f"tensor `{name}` has dtype {t.dtype}; an .hmdf file holds only "
                "uint8, int8, int32, int64 and float32"
            )
        if t.device.type != "cpu":
            raise ValueError(f"tensor `{name}` is on {t.device}; call .cpu() before saving")
        if t.layout != torch.strided or not t.is_contiguous():
            raise ValueError(f"tensor `{name}` is not contiguous; call .contiguous() before saving")
        a = t.detach().numpy()
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)  # a no-op on little-endian machines
        arrays[name] = a.reshape(-1).view(np.uint8)
    return arrays


def _encode_meta(meta: dict) -> str:
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        return json.dumps(
            meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta is not JSON-serialisable: {e}") from None


def _encode_header(meta_json: str, entries: dict[str, Any], hexdigest: str) -> bytes:
    """Compact ASCII JSON, `__metadata__` first (keys sorted), then tensors in payload order."""
    header = {
        "__metadata__": {
            "checksum": f"sha256:{hexdigest}",
            "format": FORMAT,
            "format_version": str(VERSION),
            "hmdf": meta_json,
        },
        **entries,
    }
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    body += b" " * (-len(body) % _ALIGN)
    if len(body) > MAX_HEADER_BYTES:
        raise ValueError(
            f"the header would be {len(body)} bytes, over the {MAX_HEADER_BYTES}-byte limit"
        )
    return struct.pack("<Q", len(body)) + body


def _chunks(header: bytes, arrays: list[np.ndarray]) -> Iterator[Any]:
    yield header
    yield from arrays


def _atomic_write(path: Path, chunks: Iterator[Any]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)

    atomic_write(path, write)


# ------------------------------------------------------------------------------------- reading
def read_meta(path: str | os.PathLike) -> dict:
    """The caller's metadata dict, from the header alone (validated; the payload is not read,
    so the checksum is not verified: use `read_container` before trusting the weights)."""
    with _open(Path(path)) as f:
        return _read_header(f, Path(path))[0]


def read_checksum(path: str | os.PathLike) -> str:
    """The file's stored checksum, "sha256:<hex>" (header only, not verified)."""
    with _open(Path(path)) as f:
        return _read_header(f, Path(path))[3]


def read_container(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read and fully verify an `.hmdf` file; return (tensors, meta).

    Raises HmdfError, with one sentence naming the problem, for anything that is not a complete,
    unaltered hmdf file of a supported version. The tensors are writable and share one buffer
    holding the payload (no per-tensor copy, no link to the file afterwards).
    """
    path = Path(path)
    with _open(path) as f:
        meta, entries, header, checksum = _read_header(f, path)
        payload = bytearray(sum(e[3] - e[2] for e in entries))
        got = f.readinto(payload)
        if got != len(payload) or f.read(1):
            raise _fail(path, "the file changed size while it was being read")
    digest = hashlib.sha256(_zero_digest(header, checksum, path))
    digest.update(payload)
    if f"sha256:{digest.hexdigest()}" != checksum:
        raise _fail(path, "checksum mismatch: the file is corrupt or was altered")
    buf = np.frombuffer(payload, dtype=np.uint8)
    tensors = {}
    for name, tag, begin, end, shape in entries:
        a = buf[begin:end].view(np.dtype(_NUMPY[tag]))
        if begin % _ITEMSIZE[tag] or not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))  # unaligned (foreign writer) or big-endian host
        tensors[name] = torch.from_numpy(a.reshape(shape))
    return tensors, meta


def _open(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise HmdfError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise HmdfError(f"{path} is a directory, not an hmdf file") from None
    except PermissionError:
        raise HmdfError(f"{path}: permission denied") from None


def _fail(path: Path, problem: str) -> HmdfError:
    return HmdfError(f"{path}: {problem}")


def _read_header(f, path: Path) -> tuple[dict, list[tuple[str, str, int, int, list[int]]], bytes, str]:
    """Validate everything but the checksum; return (meta, entries by offset, raw header, checksum)."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        raise _fail(path, "the file is empty, not an hmdf file")
    if size < 8:
        raise _fail(path, f"not an hmdf file: only {size} bytes, too short for the 8-byte header length")
    prefix = f.read(8)
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _fail(
            path,
            f"not an hmdf file (or a corrupt one): header length {n} is over the "
            f"{MAX_HEADER_BYTES}-byte limit",
        )
    if n > size - 8:
        raise _fail(
            path, f"the file is truncated: the header alone needs {n} bytes but only {size - 8} follow"
        )
    raw = f.read(n)
    if len(raw) != n:
        raise _fail(path, "the file changed size while it was being read")
    header = _parse_json(raw, path, "the header")
    if not isinstance(header, dict):
        raise _fail(path, "not an hmdf file: the header is not a JSON object")

    meta_raw = header.pop("__metadata__", None)
    if not isinstance(meta_raw, dict) or meta_raw.get("format") != FORMAT:
        raise _fail(path, "not an hmdf file: the safetensors metadata has no format = \"hmdf\"")
    if not all(isinstance(v, str) for v in meta_raw.values()):
        raise _fail(path, "the __metadata__ values must all be strings")
    version = meta_raw.get("format_version")
    if version is None:
        raise _fail(path, "the metadata has no format_version")
    if not re.fullmatch(r"[0-9]{1,9}", version):
        raise _fail(path, f"the format version {version!r} is not a number")
    if int(version) != VERSION:
        raise _fail(
            path, f"format version {int(version)} is not supported by this hmdf (supports {VERSION})"
        )
    unknown = sorted(set(meta_raw) - set(_META_KEYS))
    if unknown:
        raise _fail(path, f"unknown metadata key {unknown[0]!r} for format version {VERSION}")
    checksum = meta_raw.get("checksum")
    if checksum is None:
        raise _fail(path, "the metadata has no checksum")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", checksum):
        raise _fail(
            path,
            f"the checksum field {checksum[:80]!r} is malformed (expected sha256:<64 hex digits>)",
        )
    if "hmdf" not in meta_raw:
        raise _fail(path, "the metadata has no hmdf graph entry")

    entries = [_check_entry(name, e, path) for name, e in header.items()]
    entries.sort(key=lambda e: (e[2], e[3]))
    pos = 0
    for name, _tag, begin, end, _shape in entries:
        if begin != pos:
            if begin < pos:
                problem = "overlaps the previous tensor"
            else:
                problem = f"leaves a hole of {begin - pos} bytes before it"
            raise _fail(path, f"tensor `{name}` starts at byte {begin} of the data buffer and {problem}")
        pos = end
    if 8 + n + pos > size:
        raise _fail(
            path, f"the file is truncated: the tensors need {8 + n + pos} bytes but the file has {size}"
        )
    if 8 + n + pos < size:
        raise _fail(
            path, f"the file has {size - 8 - n - pos} unexpected trailing bytes after the last tensor"
        )

    meta = _parse_json(meta_raw["hmdf"].encode("utf-8", "surrogatepass"), path, "the hmdf metadata")
    if not isinstance(meta, dict):
        raise _fail(path, "the hmdf metadata is not a JSON object")
    return meta, entries, prefix + raw, checksum


def _check_entry(name: str, e: Any, path: Path) -> tuple[str, str, int, int, list[int]]:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, f"tensor `{name}` must have exactly the fields dtype, shape and data_offsets")
    tag, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if tag not in DTYPES:
        raise _fail(
            path,
            f"tensor `{name}` has dtype {str(tag)[:20]!r}, which hmdf does not use "
            f"(allowed: {', '.join(DTYPES)})",
        )
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise _fail(path, f"tensor `{name}` has a shape that is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise _fail(path, f"tensor `{name}` has data_offsets that are not two non-negative integers")
    begin, end = offsets
    if end < begin:
        raise _fail(path, f"tensor `{name}` ends (byte {end}) before it begins (byte {begin})")
    # Python ints never overflow; stop multiplying once past the span so a long shape stays cheap.
    numel = 0 if 0 in shape else 1
    for d in shape if numel else ():
        numel *= d
        if numel * _ITEMSIZE[tag] > end - begin:
            break
    if numel * _ITEMSIZE[tag] != end - begin:
        raise _fail(
            path,
            f"tensor `{name}` spans {end - begin} bytes, but shape {_short(shape)} of {tag} needs "
            f"{'more' if numel * _ITEMSIZE[tag] > end - begin else numel * _ITEMSIZE[tag]}",
        )
    return name, tag, begin, end, shape


def _is_uint(x: Any) -> bool:
    return type(x) is int and x >= 0  # JSON true/false parse to bool, a subclass of int: refused


def _short(shape: list[int]) -> str:
    if len(shape) <= 8:
        return str(shape)
    return f"[{', '.join(map(str, shape[:8]))}, …] ({len(shape)} dims)"


def _parse_json(raw: bytes, path: Path, what: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out = dict(pairs)
        if len(out) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _Invalid(f"{what} repeats the key {key[:60]!r}")
                seen.add(key)
        return out

    def no_constants(token: str) -> Any:
        raise _Invalid(f"{what} contains {token}, which is not JSON")

    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except _Invalid as e:
        raise _fail(path, str(e)) from None
    except UnicodeDecodeError:
        raise _fail(path, f"not an hmdf file (or a corrupt one): {what} is not UTF-8") from None
    except (ValueError, RecursionError):
        raise _fail(path, f"not an hmdf file (or a corrupt one): {what} is not valid JSON") from None


class _Invalid(Exception):
    pass


def _zero_digest(header: bytes, checksum: str, path: Path) -> bytes:
    """The header with its 64 digest digits set to "0": the checksum covers every other byte."""
    stored = b'"checksum":"' + checksum.encode("ascii") + b'"'
    i = header.find(stored)
    if i < 0 or header.find(stored, i + 1) >= 0:
        raise _fail(path, 'the checksum is not stored as one compact "checksum":"sha256:…" entry')
    i += len(_DIGEST_PREFIX)
    return header[:i] + _ZERO_DIGEST.encode("ascii") + header[i + 64 :]
