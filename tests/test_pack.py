"""Low-bit packing (SPEC §5.3, docs/hmdf-format.md "Packing schemes"): round trips, exact byte
counts, hand-computed bytes, and refusal of malformed packed data."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hmdf_deploy.deploy.pack import (
    pack,
    pack_signs,
    pack_trits,
    pack_trits_2bit,
    packed_nbytes,
    unpack,
    unpack_signs,
    unpack_trits,
    unpack_trits_2bit,
)
from hmdf_deploy.errors import HmdfError

AWKWARD_SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 241, 242, 243, 1000, 1001, 4099]
PER_BYTE = {"sign1": 8, "trit5": 5, "trit2": 4}
ALPHABET = {"sign1": (-1, 1), "trit5": (-1, 0, 1), "trit2": (-1, 0, 1)}


def random_codes(scheme: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.tensor(ALPHABET[scheme], dtype=torch.int8)
    return values[torch.randint(len(values), (n,), generator=g)]


# ------------------------------------------------------------------------------ hand-computed
def test_signs_by_hand():
    # [+1,−1,−1,+1,+1,+1,+1,−1] → bits 1,0,0,1,1,1,1,0 with element j at bit j (value 2^j):
    # 1·1 + 0·2 + 0·4 + 1·8 + 1·16 + 1·32 + 1·64 + 0·128 = 121 = 0x79.
    packed = pack_signs(torch.tensor([1, -1, -1, 1, 1, 1, 1, -1]))
    assert packed.dtype == torch.uint8 and packed.tolist() == [121]
    # A ninth element starts a new byte; padding bits are 0: [+1] → 0b00000001.
    assert pack_signs(torch.tensor([-1] * 8 + [1])).tolist() == [0, 1]
    assert pack_signs(torch.tensor([1.0] * 8)).tolist() == [255]


def test_trits_by_hand():
    # [1,0,−1,1,1] → digits 2,1,0,2,2 → 2 + 1·3 + 0·9 + 2·27 + 2·81 = 221.
    assert pack_trits(torch.tensor([1, 0, -1, 1, 1])).tolist() == [221]
    # All +1 → 2·(1+3+9+27+81) = 242, the largest valid byte.
    assert pack_trits(torch.ones(5)).tolist() == [242]
    # Padding is code 0 (digit 1): [−1] → 0 + 1·3 + 1·9 + 1·27 + 1·81 = 120.
    assert pack_trits(torch.tensor([-1])).tolist() == [120]
    # Six codes → two bytes; the second holds [+1] padded: 2 + 3 + 9 + 27 + 81 = 122.
    assert pack_trits(torch.tensor([0, 0, 0, 0, 0, 1])).tolist() == [121, 122]


def test_trits_2bit_by_hand():
    # 2-bit two's complement, element j in bits 2j..2j+1: −1 → 11, 0 → 00, +1 → 01.
    # [−1, 0, +1, +1] → 0b01_01_00_11 = 3 + 0 + 16 + 64 = 83; [−1] padded with 00 → 3.
    assert pack_trits_2bit(torch.tensor([-1, 0, 1, 1, -1])).tolist() == [83, 3]


def test_trits_2bit_is_onnx_int2_layout():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    numpy_helper = pytest.importorskip("onnx.numpy_helper")
    codes = random_codes("trit2", 1001, seed=3)
    proto = numpy_helper.from_array(codes.numpy().astype(ml_dtypes.int2), "w")
    assert pack_trits_2bit(codes).numpy().tobytes() == proto.raw_data


def test_shape_and_dtype_of_input_do_not_matter():
    codes = random_codes("trit5", 60, seed=1)
    expected = pack_trits(codes)
    for variant in (codes.reshape(3, 4, 5), codes.float(), codes.double().reshape(6, 10), codes.long()):
        assert torch.equal(pack_trits(variant), expected)
    # C order: packing a transposed (non-contiguous) view packs its logical order.
    m = codes.reshape(6, 10)
    assert torch.equal(pack_trits(m.t()), pack_trits(m.t().contiguous()))


# -------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("scheme", list(PER_BYTE))
@pytest.mark.parametrize("n", AWKWARD_SIZES)
def test_round_trip_awkward_sizes(scheme, n):
    codes = random_codes(scheme, n, seed=n)
    packed = pack(codes, scheme)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_nbytes(n, scheme) == math.ceil(n / PER_BYTE[scheme])
    out = unpack(packed, n, scheme)
    assert out.dtype == torch.int8 and out.shape == (n,)
    assert torch.equal(out, codes)


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(list(PER_BYTE)), data=st.data())
def test_round_trip_property(scheme, data):
    values = data.draw(st.lists(st.sampled_from(ALPHABET[scheme]), max_size=300))
    codes = torch.tensor(values, dtype=torch.int8)
    packed = pack(codes, scheme)
    assert packed.numel() == -(-len(values) // PER_BYTE[scheme])
    assert unpack(packed, len(values), scheme).tolist() == values


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(["trit5", "trit2"]), data=st.data())
def test_every_valid_byte_string_round_trips(scheme, data):
    """Unpack is the exact inverse: any accepted byte string re-packs to the same bytes."""
    n = data.draw(st.integers(0, 60))
    codes = data.draw(st.lists(st.sampled_from(ALPHABET[scheme]), min_size=n, max_size=n))
    packed = pack(torch.tensor(codes, dtype=torch.int8), scheme)
    assert torch.equal(pack(unpack(packed, n, scheme), scheme), packed)


def test_bits_per_weight():
    n = 10_000
    assert packed_nbytes(n, "sign1") * 8 / n == 1.0
    assert packed_nbytes(n, "trit5") * 8 / n == 1.6
    assert packed_nbytes(n, "trit2") * 8 / n == 2.0
    assert [packed_nbytes(k, "trit5") for k in range(12)] == [0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3]
    with pytest.raises(ValueError, match="unknown packing scheme"):
        packed_nbytes(3, "trit3")
    with pytest.raises(ValueError, match="non-negative"):
        packed_nbytes(-1, "sign1")


def test_all_243_trit_bytes_decode_distinctly():
    packed = torch.arange(243, dtype=torch.uint8)
    codes = unpack_trits(packed, 243 * 5).view(243, 5)
    assert len({tuple(r) for r in codes.tolist()}) == 243
    assert torch.equal(pack_trits(codes), packed)


# ------------------------------------------------------------------------------- bad codes in
@pytest.mark.parametrize(
    "fn, bad",
    [
        (pack_signs, [1, 0, -1]),
        (pack_signs, [1, 2]),
        (pack_signs, [0.5, 1.0]),
        (pack_trits, [1, 2, 0]),
        (pack_trits, [-2]),
        (pack_trits, [0.0, float("nan")]),
        (pack_trits_2bit, [1, 0, 3]),
        (pack_trits_2bit, [0.999]),
    ],
)
def test_pack_refuses_invalid_codes(fn, bad):
    with pytest.raises(ValueError, match="codes must be in"):
        fn(torch.tensor(bad))


def test_pack_refuses_wrapping_and_bool():
    with pytest.raises(ValueError, match="element 0"):
        pack_signs(torch.tensor([255], dtype=torch.uint8))  # 255 is not −1
    with pytest.raises(ValueError, match="integer or float"):
        pack_trits(torch.tensor([True, False]))
    with pytest.raises(TypeError):
        pack_trits([1, 0, -1])


# ----------------------------------------------------------------------------- bad packs in
@pytest.mark.parametrize(
    "unpack_fn, per_byte", [(unpack_signs, 8), (unpack_trits, 5), (unpack_trits_2bit, 4)]
)
def test_unpack_checks_dtype_shape_and_length(unpack_fn, per_byte):
    with pytest.raises(HmdfError, match="l3.w: .* must be uint8, got torch.int8"):
        unpack_fn(torch.zeros(2, dtype=torch.int8), 8, name="l3.w")
    with pytest.raises(HmdfError, match="must be 1-D"):
        unpack_fn(torch.zeros(1, 2, dtype=torch.uint8), 8)
    with pytest.raises(HmdfError, match="need exactly 2 bytes, found 3"):
        unpack_fn(torch.zeros(3, dtype=torch.uint8), 2 * per_byte - 1)
    with pytest.raises(HmdfError, match="need exactly 3 bytes, found 2"):
        unpack_fn(torch.zeros(2, dtype=torch.uint8), 2 * per_byte + 1)
    with pytest.raises(HmdfError, match="non-negative integer"):
        unpack_fn(torch.zeros(0, dtype=torch.uint8), -1)
    with pytest.raises(HmdfError, match="non-negative integer"):
        unpack_fn(torch.zeros(1, dtype=torch.uint8), 2.0)
    with pytest.raises(HmdfError, match="expected a torch.Tensor"):
        unpack_fn(b"\x00", 1)
    assert unpack_fn(torch.zeros(0, dtype=torch.uint8), 0).shape == (0,)


def test_unpack_trits_refuses_bytes_243_and_up():
    for value in (243, 250, 255):
        with pytest.raises(HmdfError, match=rf"w: byte 1 \(value {value}\) is not below 243"):
            unpack_trits(torch.tensor([121, value, 121], dtype=torch.uint8), 15, name="w")


def test_unpack_2bit_refuses_the_unused_code():
    for value in (0b00000010, 0b00100000, 0b10101010):
        with pytest.raises(HmdfError, match=r"byte 0 .* unused 2-bit code 10"):
            unpack_trits_2bit(torch.tensor([value], dtype=torch.uint8), 4)


@pytest.mark.parametrize(
    "fn, packed, numel",
    [
        (unpack_signs, [0b10000001], 7),  # bit 7 is padding, must be 0
        (unpack_trits, [0], 4),  # digit 4 is padding, must be 1 (code 0); 0 has digit 0 there
        (unpack_trits, [242], 1),
        (unpack_trits_2bit, [0b01000000], 3),  # field 3 is padding, must be 00
        (unpack_trits_2bit, [0b11000000], 3),
    ],
)
def test_unpack_refuses_non_canonical_padding(fn, packed, numel):
    with pytest.raises(HmdfError, match="padding"):
        fn(torch.tensor(packed, dtype=torch.uint8), numel)


def test_unpack_accepts_canonical_padding():
    assert unpack_signs(torch.tensor([0b00000001], dtype=torch.uint8), 1).tolist() == [1]
    assert unpack_trits(torch.tensor([120], dtype=torch.uint8), 1).tolist() == [-1]
    assert unpack_trits_2bit(torch.tensor([0b00000011], dtype=torch.uint8), 1).tolist() == [-1]


def test_large_pack_is_vectorised():
    """A million trits pack and unpack in well under a second (no per-element Python loop)."""
    import time

    codes = random_codes("trit5", 1_000_000, seed=7)
    start = time.perf_counter()
    for scheme in PER_BYTE:
        c = codes if scheme != "sign1" else torch.where(codes >= 0, 1, -1).to(torch.int8)
        assert torch.equal(unpack(pack(c, scheme), c.numel(), scheme), c)
    assert time.perf_counter() - start < 5.0
