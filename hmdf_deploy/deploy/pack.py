"""Low-bit weight packing (SPEC §5.3): signs 8 per byte, trits 5 per byte or 2 bits each.

Every scheme packs a tensor of integer codes, flattened in C order, into a 1-D uint8 tensor; the
byte layouts are specified in docs/hmdf-format.md ("Packing schemes") and summed up here:

- ``sign1``: codes in {−1, +1}, 1 bit each (1 ⇔ +1), 8 per byte, little-endian bit order (element
  8·i + j is bit j, value 2^j, of byte i). Padding bits of the last byte are 0.
- ``trit5``: codes in {−1, 0, +1}, 5 per byte in base 3: digit d = code + 1 and byte i is
  Σ_j d[5·i + j]·3^j (the first element is the least significant digit), so a byte is < 243 and a
  weight costs 1.6 bits. The last byte is padded with code 0 (digit 1).
- ``trit2``: codes in {−1, 0, +1}, 2-bit two's complement each (0 → 00, +1 → 01, −1 → 11; 10 is
  unused), 4 per byte, element 4·i + j in bits 2j..2j+1. The last byte is padded with 00 (code 0).
  This is byte for byte ONNX's INT2 raw-data layout and the fast layout unpacked at load time.

Packing refuses codes outside the scheme's set with ValueError (a caller bug). Unpacking reads
file data, so it checks the dtype, the exact byte count, every byte's range and the padding, and
raises HmdfError naming the tensor: one encoding per code vector, and no silent garbage.
Everything is vectorised (table look-ups and broadcasts); nothing loops over elements.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from hmdf_deploy.errors import HmdfError

#: Scheme name → (codes per byte, allowed codes).
SCHEMES: dict[str, tuple[int, tuple[int, ...]]] = {
    "sign1": (8, (-1, 1)),
    "trit5": (5, (-1, 0, 1)),
    "trit2": (4, (-1, 0, 1)),
}


def packed_nbytes(numel: int, scheme: str) -> int:
    """Bytes that `numel` codes take in `scheme` ("sign1", "trit5" or "trit2"): ⌈numel / k⌉."""
    per_byte = _scheme(scheme)[0]
    numel = operator.index(numel)
    if numel < 0:
        raise ValueError(f"numel must be non-negative, got {numel}")
    return -(-numel // per_byte)


# ---------------------------------------------------------------------------------------- tables
# Row b of each table is the codes that byte value b decodes to; _VALID_* marks legal bytes.
_BYTES = torch.arange(256, dtype=torch.int32)
_SIGN_LUT = torch.where(((_BYTES[:, None] >> torch.arange(8)) & 1) == 1, 1, -1).to(torch.int8)
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)
_TRIT5_LUT = ((_BYTES[:, None] // _POW3) % 3 - 1).to(torch.int8)
_VALID_TRIT5 = _BYTES < 243
_FIELDS2 = (_BYTES[:, None] >> torch.tensor([0, 2, 4, 6])) & 3
_TRIT2_LUT = torch.where(_FIELDS2 == 3, -1, _FIELDS2).to(torch.int8)  # 10 decodes as 2: refused
_VALID_TRIT2 = (_FIELDS2 != 2).all(dim=1)
_SHIFT8 = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.int32)
_SHIFT4 = torch.tensor([1, 4, 16, 64], dtype=torch.int32)


# ----------------------------------------------------------------------------------------- pack
def pack_signs(codes: Tensor) -> Tensor:
    """Pack codes in {−1, +1} (any shape, int or float) into ⌈n/8⌉ bytes, 1 bit per weight."""
    bits = (_flat_codes(codes, "sign1") > 0).to(torch.int32)
    return _combine(bits, 8, 0, _SHIFT8)


def pack_trits(codes: Tensor) -> Tensor:
    """Pack codes in {−1, 0, +1} into ⌈n/5⌉ bytes, 5 base-3 digits per byte (1.6 bits/weight)."""
    digits = _flat_codes(codes, "trit5").to(torch.int32) + 1
    return _combine(digits, 5, 1, _POW3)


def pack_trits_2bit(codes: Tensor) -> Tensor:
    """Pack codes in {−1, 0, +1} into ⌈n/4⌉ bytes, 2-bit two's complement (ONNX INT2 layout)."""
    fields = _flat_codes(codes, "trit2").to(torch.int32) & 3
    return _combine(fields, 4, 0, _SHIFT4)


def pack(codes: Tensor, scheme: str) -> Tensor:
    """Pack with the named scheme ("sign1", "trit5" or "trit2")."""
    _scheme(scheme)
    return {"sign1": pack_signs, "trit5": pack_trits, "trit2": pack_trits_2bit}[scheme](codes)


# --------------------------------------------------------------------------------------- unpack
def unpack_signs(packed: Tensor, numel: int, name: str = "packed weights") -> Tensor:
    """Inverse of `pack_signs`: a flat int8 tensor of `numel` codes in {−1, +1}."""
    return _unpack(packed, numel, "sign1", name, _SIGN_LUT, None, -1)


def unpack_trits(packed: Tensor, numel: int, name: str = "packed weights") -> Tensor:
    """Inverse of `pack_trits`: a flat int8 tensor of `numel` codes in {−1, 0, +1}."""
    return _unpack(packed, numel, "trit5", name, _TRIT5_LUT, _VALID_TRIT5, 0)


def unpack_trits_2bit(packed: Tensor, numel: int, name: str = "packed weights") -> Tensor:
    """Inverse of `pack_trits_2bit`: a flat int8 tensor of `numel` codes in {−1, 0, +1}."""
    return _unpack(packed, numel, "trit2", name, _TRIT2_LUT, _VALID_TRIT2, 0)


def unpack(packed: Tensor, numel: int, scheme: str, name: str = "packed weights") -> Tensor:
    """Unpack with the named scheme; `name` (the tensor's key) goes into error messages."""
    _scheme(scheme)
    fn = {"sign1": unpack_signs, "trit5": unpack_trits, "trit2": unpack_trits_2bit}[scheme]
    return fn(packed, numel, name)


# -------------------------------------------------------------------------------------- helpers
def _scheme(scheme: str) -> tuple[int, tuple[int, ...]]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown packing scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return SCHEMES[scheme]


def _flat_codes(codes: Tensor, scheme: str) -> Tensor:
    """Flatten (C order), check every code is in the scheme's set, return int8."""
    allowed = SCHEMES[scheme][1]
    if not isinstance(codes, Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype == torch.bool or codes.is_complex():
        raise ValueError(f"codes must be an integer or float tensor, got {codes.dtype}")
    flat = codes.detach().reshape(-1)
    # Compare in a wide type: a uint8 255 must not wrap to −1, nor a float 1.5 truncate to 1.
    wide = flat.to(torch.float64 if flat.is_floating_point() else torch.int64)
    ok = torch.zeros_like(wide, dtype=torch.bool)
    for value in allowed:  # two or three whole-tensor compares, not a loop over elements
        ok |= wide == value
    if not bool(ok.all()):
        i = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"{scheme} codes must be in {{{', '.join(f'{v:+d}' for v in allowed)}}}; "
            f"element {i} (flat index) is {wide[i].item()}"
        )
    return wide.to(torch.int8)


def _combine(values: Tensor, per_byte: int, pad: int, weights: Tensor) -> Tensor:
    """Pad `values` with `pad` to a multiple of `per_byte`, then Σ_j values[k·i + j]·weights[j]."""
    extra = -values.numel() % per_byte
    if extra:
        values = torch.cat([values, values.new_full((extra,), pad)])
    groups = values.view(-1, per_byte)
    return (groups * weights.to(groups.device)).sum(dim=1).to(torch.uint8)


def _unpack(
    packed: Tensor,
    numel: int,
    scheme: str,
    name: str,
    lut: Tensor,
    valid: Tensor | None,
    pad_code: int,
) -> Tensor:
    if not isinstance(packed, Tensor):
        raise HmdfError(
            f"{name}: expected a torch.Tensor of packed {scheme} bytes, got {type(packed).__name__}"
        )
    if packed.dtype != torch.uint8:
        raise HmdfError(f"{name}: packed {scheme} weights must be uint8, got {packed.dtype}")
    if packed.dim() != 1:
        raise HmdfError(f"{name}: packed {scheme} weights must be 1-D, got shape {tuple(packed.shape)}")
    try:
        count = -1 if isinstance(numel, bool) else operator.index(numel)
    except TypeError:
        count = -1
    if count < 0:
        raise HmdfError(f"{name}: the element count must be a non-negative integer, got {numel!r}")
    numel = count
    expected = packed_nbytes(numel, scheme)
    if packed.numel() != expected:
        raise HmdfError(
            f"{name}: {numel} {scheme} codes need exactly {expected} bytes, found {packed.numel()}"
        )
    index = packed.to(torch.int64)
    if valid is not None:
        ok = valid.to(packed.device)[index]
        if not bool(ok.all()):
            i = int((~ok).nonzero()[0, 0])
            why = "is not below 243" if scheme == "trit5" else "holds the unused 2-bit code 10"
            raise HmdfError(
                f"{name}: byte {i} (value {int(packed[i])}) {why}, so it is not valid {scheme} data"
            )
    codes = lut.to(packed.device)[index].reshape(-1)
    if bool((codes[numel:] != pad_code).any()):
        raise HmdfError(
            f"{name}: the padding after the last of {numel} {scheme} codes is not the canonical fill"
        )
    return codes[:numel]
