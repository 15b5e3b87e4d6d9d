"""The .hmdf container (docs/hmdf-format.md): round trips, safetensors compatibility, exact bytes,
atomic writes, and a clear HmdfError for every kind of broken or hostile file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hmdf_deploy.deploy import container
from hmdf_deploy.deploy.container import (
    MAX_HEADER_BYTES,
    read_checksum,
    read_container,
    read_meta,
    write_container,
)
from hmdf_deploy.deploy.pack import pack_trits
from hmdf_deploy.errors import HmdfError

ZERO = "0" * 64


def sample_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "l0.w": pack_trits(torch.randint(-1, 2, (16, 3, 3, 3), generator=g)),
        "l0.a": torch.randn(4, 16, generator=g),
        "l0.b": torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45]),
        "l1.idx": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        "l1.shift": torch.tensor([-(2**31), 2**31 - 1, 0], dtype=torch.int32),
        "l1.signs": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 7, dtype=torch.int32),
    }


SAMPLE_META = {
    "T": 4,
    "input": {"shape": [2, 8, 8], "kind": "frames"},
    "graph": [{"name": "l0", "op": "conv", "packing": "trit5", "stride": 1}, {"name": "l1", "op": "fc"}],
    "note": "Schrödinger's \"quoted\" \\ spike",
    "alpha": 0.1,
    "flag": None,
}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "model.hmdf"
    write_container(path, sample_tensors(), SAMPLE_META)
    return path


# -------------------------------------------------------------------- crafting files by hand
def seal(body: bytes, payload: bytes, length: int | None = None) -> bytes:
    """Pad a JSON header, prefix its length, and fill in the checksum by the documented rule:
    SHA-256 of the whole file with the 64 digest digits set to "0" (written independently of
    the module under test)."""
    body += b" " * (-len(body) % 8)
    prefix = struct.pack("<Q", len(body) if length is None else length)
    digest = hashlib.sha256(prefix + body + payload).hexdigest()
    marker = b'"checksum":"sha256:' + ZERO.encode()
    if marker in body:
        body = body.replace(marker, b'"checksum":"sha256:' + digest.encode())
    return prefix + body + payload


def craft(tmp_path, entries: dict, payload: bytes, meta_raw: dict | None = None, name="x.hmdf"):
    metadata = {"checksum": f"sha256:{ZERO}", "format": "hmdf", "format_version": "1", "hmdf": "{}"}
    if meta_raw is not None:
        metadata = meta_raw
    header = {"__metadata__": metadata, **entries}
    path = tmp_path / name
    path.write_bytes(seal(json.dumps(header, separators=(",", ":")).encode(), payload))
    return path


def u8(begin, end):
    return {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]}


# -------------------------------------------------------------------------------- round trip
def test_round_trip_is_bit_exact(good):
    tensors, meta = read_container(good)
    expected = sample_tensors()
    assert set(tensors) == set(expected)
    for name, t in expected.items():
        assert same_bits(tensors[name], t), name
    assert meta == SAMPLE_META
    assert read_meta(good) == SAMPLE_META


def test_read_tensors_are_writable_and_independent(good):
    tensors, _ = read_container(good)
    before = tensors["l0.a"].clone()
    tensors["l0.w"].zero_()
    tensors["l1.signs"][0] = 5
    assert torch.equal(tensors["l0.a"], before)
    os.remove(good)  # nothing still refers to the file
    assert tensors["l1.signs"].tolist() == [5, 0, 127]


def test_empty_container_and_empty_meta(tmp_path):
    write_container(tmp_path / "e.hmdf", {}, {})
    assert read_container(tmp_path / "e.hmdf") == ({}, {})


def test_meta_comes_back_as_json(tmp_path):
    write_container(tmp_path / "m.hmdf", {}, {"shape": (1, 2), "nested": {"b": [True, None]}})
    assert read_meta(tmp_path / "m.hmdf") == {"shape": [1, 2], "nested": {"b": [True, None]}}


def test_opens_with_safetensors(good):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    arrays = load_file(str(good))
    for name, t in sample_tensors().items():
        assert arrays[name].dtype == t.numpy().dtype and arrays[name].tobytes() == t.numpy().tobytes()
    with safe_open(str(good), framework="pt") as f:
        md = f.metadata()
        assert torch.equal(f.get_tensor("l1.idx"), sample_tensors()["l1.idx"])
    assert set(md) == {"checksum", "format", "format_version", "hmdf"}
    assert md["format"] == "hmdf" and md["format_version"] == "1"
    assert json.loads(md["hmdf"]) == SAMPLE_META
    assert md["checksum"] == read_checksum(good)


def test_checksum_follows_the_documented_rule(good):
    data = good.read_bytes()
    checksum = read_checksum(good)
    assert checksum.startswith("sha256:") and len(checksum) == 7 + 64
    digits = checksum[7:].encode()
    assert data.count(digits) == 1
    zeroed = data.replace(digits, ZERO.encode())
    assert hashlib.sha256(zeroed).hexdigest() == checksum[7:]


def test_every_tensor_is_aligned(good):
    """Wider dtypes come first, so each offset is a multiple of its item size (mmap-friendly)."""
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    assert n % 8 == 0 and data[8 + n - 1:8 + n] in (b" ", b"}")
    header = json.loads(data[8:8 + n])
    del header["__metadata__"]
    size = {"U8": 1, "I8": 1, "I32": 4, "F32": 4, "I64": 8}
    spans = sorted((e["data_offsets"][0], size[e["dtype"]], name) for name, e in header.items())
    assert [name for _, _, name in spans][:1] == ["l1.idx"]  # the only 8-byte tensor
    assert all(begin % itemsize == 0 for begin, itemsize, _ in spans)
    assert list(header) == [name for _, _, name in spans]  # header order is payload order


def test_reads_a_foreign_unaligned_but_valid_layout(tmp_path):
    """Another writer may put a 3-byte U8 tensor before an I64 one; offsets need not align."""
    payload = b"\x01\x02\x03" + struct.pack("<2q", -7, 2**40)
    entries = {"a": u8(0, 3), "b": {"dtype": "I64", "shape": [2], "data_offsets": [3, 19]}}
    tensors, meta = read_container(craft(tmp_path, entries, payload))
    assert tensors["a"].tolist() == [1, 2, 3] and tensors["b"].tolist() == [-7, 2**40]
    assert tensors["b"].data_ptr() % 8 == 0  # copied to an aligned buffer, not a misaligned view
    assert meta == {}


# ------------------------------------------------------------------------------- exact bytes
def test_bytes_are_deterministic_and_order_invariant(tmp_path):
    t = sample_tensors()
    write_container(tmp_path / "a.hmdf", t, SAMPLE_META)
    reversed_t = dict(reversed(list(t.items())))
    reversed_meta = dict(reversed(list(SAMPLE_META.items())))
    write_container(tmp_path / "b.hmdf", reversed_t, reversed_meta)
    copies = {k: v.clone() for k, v in t.items()}
    write_container(tmp_path / "c.hmdf", copies, json.loads(json.dumps(SAMPLE_META)))
    a = (tmp_path / "a.hmdf").read_bytes()
    assert a == (tmp_path / "b.hmdf").read_bytes() == (tmp_path / "c.hmdf").read_bytes()


def test_golden_bytes(tmp_path):
    """The whole file, built by hand from docs/hmdf-format.md, then pinned by its hash."""
    path = tmp_path / "tiny.hmdf"
    tensors = {"a": torch.tensor([1, 2, 3], dtype=torch.uint8), "b": torch.tensor([7], dtype=torch.int32)}
    write_container(path, tensors, {"z": [1, "x"], "a": True})
    # __metadata__ first (keys sorted); tensors by (itemsize descending, name): b (I32) then a (U8).
    header = (
        '{"__metadata__":{"checksum":"sha256:' + ZERO + '","format":"hmdf","format_version":"1",'
        '"hmdf":"{\\"a\\":true,\\"z\\":[1,\\"x\\"]}"},'
        '"b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]},'
        '"a":{"dtype":"U8","shape":[3],"data_offsets":[4,7]}}'
    ).encode()
    assert len(header) == 283  # padded with 5 spaces to 288, a multiple of 8
    body = header + b" " * 5
    payload = b"\x07\x00\x00\x00" + b"\x01\x02\x03"
    prefix = (288).to_bytes(8, "little")
    digest = hashlib.sha256(prefix + body + payload).hexdigest()
    expected = prefix + body.replace(ZERO.encode(), digest.encode()) + payload
    assert path.read_bytes() == expected
    # Regression pin (the construction above is the independent check; this catches drift).
    assert hashlib.sha256(expected).hexdigest() == GOLDEN_SHA256


GOLDEN_SHA256 = "8c552d9ef1debd57ffd68a828e8960bfadfc9c9ed8ed4e1da523733e6c8bc602"


# ------------------------------------------------------------------------- validation errors
def test_not_found_and_directory(tmp_path):
    with pytest.raises(HmdfError, match="not found"):
        read_container(tmp_path / "missing.hmdf")
    with pytest.raises(HmdfError, match="not found"):
        read_meta(tmp_path / "missing.hmdf")
    with pytest.raises(HmdfError, match="is a directory"):
        read_container(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.hmdf").write_bytes(b"")
    with pytest.raises(HmdfError, match="the file is empty, not an hmdf file"):
        read_container(tmp_path / "e.hmdf")


def test_truncation_anywhere_is_refused(good, tmp_path):
    data = good.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    cuts = {
        4: "only 4 bytes",  # inside the length field
        8: "truncated",  # right after it
        8 + 10: "truncated",  # inside the header
        8 + n - 1: "truncated",
        8 + n: "truncated",  # header complete, payload missing
        8 + n + 5: "truncated",  # inside the payload
        len(data) - 1: "truncated",  # one byte short
    }
    for cut, message in cuts.items():
        path = tmp_path / f"cut{cut}.hmdf"
        path.write_bytes(data[:cut])
        with pytest.raises(HmdfError, match=message):
            read_container(path)
        with pytest.raises(HmdfError, match=message):
            read_meta(path)


def test_trailing_garbage(good):
    with good.open("ab") as f:
        f.write(b"\x00junk")
    with pytest.raises(HmdfError, match="5 unexpected trailing bytes"):
        read_container(good)


def test_flipped_payload_byte(good):
    data = bytearray(good.read_bytes())
    data[-20] ^= 0x01
    good.write_bytes(bytes(data))
    with pytest.raises(HmdfError, match="checksum mismatch: the file is corrupt or was altered"):
        read_container(good)
    assert read_meta(good) == SAMPLE_META  # the header alone is intact; read_meta skips the payload


def test_flipped_header_byte_inside_the_graph_json(good):
    """The checksum covers the header too: an edit that keeps everything well-formed is caught."""
    data = good.read_bytes()
    assert data.count(b"trit5") == 1
    good.write_bytes(data.replace(b"trit5", b"trit2"))
    with pytest.raises(HmdfError, match="checksum mismatch"):
        read_container(good)


def test_dtype_swap_with_same_itemsize_is_caught(good):
    data = good.read_bytes()
    good.write_bytes(data.replace(b'"dtype":"I8"', b'"dtype":"U8"'))
    with pytest.raises(HmdfError, match="checksum mismatch"):
        read_container(good)


def test_every_single_byte_flip_is_refused(tmp_path):
    path = tmp_path / "small.hmdf"
    write_container(path, {"w": pack_trits(torch.tensor([1, 0, -1, 1, 1, 0, 0])), "a": torch.ones(2)}, {"T": 2})
    data = path.read_bytes()
    bad = tmp_path / "bad.hmdf"
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[i] ^= mask
            bad.write_bytes(bytes(mutated))
            with pytest.raises(HmdfError):
                read_container(bad)


def test_header_length_huge(good):
    data = good.read_bytes()
    good.write_bytes(struct.pack("<Q", 2**63 + 5) + data[8:])
    message = f"header length {2**63 + 5} is over the {MAX_HEADER_BYTES}-byte limit"
    with pytest.raises(HmdfError, match=message):
        read_container(good)
    good.write_bytes(struct.pack("<Q", len(data)) + data[8:])
    with pytest.raises(HmdfError, match="truncated: the header alone needs"):
        read_container(good)


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for size in (1, 7, 8, 9, 100, 5000):
        path = tmp_path / f"r{size}.hmdf"
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(HmdfError, match="not an hmdf file|truncated"):
            read_container(path)


def test_plain_safetensors_file_is_not_hmdf(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(tmp_path / "plain.safetensors"))
    save_file({"w": torch.ones(3)}, str(tmp_path / "meta.safetensors"), metadata={"format": "pt"})
    for name in ("plain.safetensors", "meta.safetensors"):
        message = 'not an hmdf file: the safetensors metadata has no format = "hmdf"'
        with pytest.raises(HmdfError, match=message):
            read_container(tmp_path / name)


def test_header_not_json(tmp_path):
    cases = {
        b"{not json}": "header is not valid JSON",
        b'["a"]': "header is not a JSON object",
        b'{"a":"\xff"}': "header is not UTF-8",
        b"[" * 100_000 + b"]" * 100_000: "header is not valid JSON",  # deep nesting, no RecursionError
    }
    for i, (body, message) in enumerate(cases.items()):
        path = tmp_path / f"h{i}.hmdf"
        path.write_bytes(seal(body, b""))
        with pytest.raises(HmdfError, match=message):
            read_container(path)


@pytest.mark.parametrize(
    "entries, payload, message",
    [
        ({"w": u8(0, 100)}, b"\x00" * 10, "truncated: the tensors need"),  # offsets past the end
        ({"a": u8(0, 4), "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, b"\x00" * 6,
         "tensor `b` starts at byte 2 of the data buffer and overlaps the previous tensor"),
        ({"a": u8(0, 4), "b": u8(8, 12)}, b"\x00" * 12, "tensor `b` .* leaves a hole of 4 bytes"),
        ({"a": u8(4, 8)}, b"\x00" * 8, "tensor `a` .* leaves a hole of 4 bytes"),
        ({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4,
         "tensor `w` has dtype 'F16', which hmdf does not use"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4,
         r"tensor `w` spans 4 bytes, but shape \[2\] of F32 needs more"),
        ({"w": {"dtype": "I32", "shape": [1], "data_offsets": [0, 8]}}, b"\x00" * 8,
         r"tensor `w` spans 8 bytes, but shape \[1\] of I32 needs 4"),
        ({"w": {"dtype": "U8", "shape": [2**62, 2**62, 2**62], "data_offsets": [0, 4]}}, b"\x00" * 4,
         "tensor `w` spans 4 bytes"),
        ({"w": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}, b"",
         "shape that is not a list of non-negative"),
        ({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\x00", "shape that is not"),
        ({"w": {"dtype": "U8", "shape": [1.0], "data_offsets": [0, 1]}}, b"\x00", "shape that is not"),
        ({"w": {"dtype": "U8", "shape": 1, "data_offsets": [0, 1]}}, b"\x00", "shape that is not"),
        ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, b"\x00", "data_offsets that are not two"),
        ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 0]}}, b"\x00", "ends .* before it begins"),
        ({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "x": 1}}, b"\x00", "exactly the fields"),
        ({"w": [1, 2]}, b"", "exactly the fields"),
    ],
)
def test_bad_tensor_index(tmp_path, entries, payload, message):
    path = craft(tmp_path, entries, payload)
    with pytest.raises(HmdfError, match=message):
        read_container(path)
    with pytest.raises(HmdfError, match=message):
        read_meta(path)


def md(**changes):
    base = {"checksum": f"sha256:{ZERO}", "format": "hmdf", "format_version": "1", "hmdf": "{}"}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    "metadata, message",
    [
        (md(format="pt"), "not an hmdf file"),
        (md(format=None), "not an hmdf file"),
        ("hmdf", "not an hmdf file"),
        (md(format_version="2"), r"format version 2 is not supported by this hmdf \(supports 1\)"),
        (md(format_version="0"), r"format version 0 is not supported by this hmdf \(supports 1\)"),
        (md(format_version="1.0"), "format version '1.0' is not a number"),
        (md(format_version=" 1"), "is not a number"),
        (md(format_version=None), "no format_version"),
        (md(hmdf="{graph"), "the hmdf metadata is not valid JSON"),
        (md(hmdf="[1, 2]"), "the hmdf metadata is not a JSON object"),
        (md(hmdf='{"a": NaN}'), "the hmdf metadata contains NaN, which is not JSON"),
        (md(hmdf='{"a": 1, "a": 2}'), "the hmdf metadata repeats the key 'a'"),
        (md(hmdf=None), "no hmdf graph entry"),
        (md(checksum=None), "no checksum"),
        (md(checksum="md5:abc"), "checksum field 'md5:abc' is malformed"),
        (md(checksum="sha256:" + "A" * 64), "malformed"),
        (md(extra="1"), "unknown metadata key 'extra'"),
        ({**md(), "format_version": 1}, "__metadata__ values must all be strings"),
    ],
)
def test_bad_metadata(tmp_path, metadata, message):
    path = craft(tmp_path, {"w": u8(0, 2)}, b"\x01\x02", meta_raw=metadata)
    with pytest.raises(HmdfError, match=message):
        read_container(path)


def test_duplicate_tensor_names(tmp_path):
    body = (
        '{"__metadata__":{"checksum":"sha256:' + ZERO + '","format":"hmdf","format_version":"1","hmdf":"{}"},'
        '"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}'
    )
    (tmp_path / "d.hmdf").write_bytes(seal(body.encode(), b"\x01\x02"))
    with pytest.raises(HmdfError, match="the header repeats the key 'w'"):
        read_container(tmp_path / "d.hmdf")


def test_checksum_must_be_stored_compactly(tmp_path):
    """The digest is located by its exact bytes; a spaced-out or escaped entry is refused."""
    body = ('{"__metadata__":{"checksum": "sha256:' + ZERO + '","format":"hmdf","format_version":"1","hmdf":"{}"}}')
    (tmp_path / "s.hmdf").write_bytes(seal(body.encode(), b""))
    with pytest.raises(HmdfError, match="not stored as one compact"):
        read_container(tmp_path / "s.hmdf")


def test_crafted_valid_file_is_accepted(tmp_path):
    """Control for the cases above: the same crafting, done right, reads back."""
    tensors, meta = read_container(craft(tmp_path, {"w": u8(0, 2)}, b"\x01\x02", meta_raw=md(hmdf='{"T":4}')))
    assert tensors["w"].tolist() == [1, 2] and meta == {"T": 4}


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ok.hmdf"
    tensors = {"w": pack_trits(torch.tensor([1, -1, 0, 0, 1, 1])), "s": torch.arange(3, dtype=torch.int32)}
    write_container(path, tensors, {"graph": [{"n": "l0"}], "T": 3})
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutations_raise_only_hmdf_error(small_file, data):
    original = small_file.read_bytes()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["set", "cut", "insert"]))
        i = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if kind == "set" and mutated:
            mutated[i] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del mutated[i:i + data.draw(st.integers(1, 16))]
        else:
            mutated[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    path = small_file.with_name("mutated.hmdf")
    path.write_bytes(bytes(mutated))
    try:
        tensors, meta = read_container(path)
    except HmdfError:
        return
    expected_tensors, expected_meta = read_container(small_file)
    assert bytes(mutated) == original  # only a no-op mutation can survive the whole-file checksum
    assert meta == expected_meta and all(same_bits(tensors[k], v) for k, v in expected_tensors.items())


# ------------------------------------------------------------------------------ writer input
@pytest.mark.parametrize(
    "tensors, error, message",
    [
        ({"w": torch.ones(2, dtype=torch.float64)}, ValueError, "tensor `w` has dtype torch.float64"),
        ({"w": torch.ones(2, dtype=torch.float16)}, ValueError, "only uint8, int8, int32, int64 and float32"),
        ({"w": torch.ones(2, dtype=torch.bool)}, ValueError, "has dtype torch.bool"),
        ({"w": torch.ones(3, 4).t()}, ValueError, "tensor `w` is not contiguous"),
        ({"__metadata__": torch.ones(1)}, ValueError, "not allowed"),
        ({"": torch.ones(1)}, ValueError, "not allowed"),
        ({"w": np.ones(2)}, TypeError, "not a torch.Tensor"),
    ],
)
def test_writer_refuses_bad_tensors(tmp_path, tensors, error, message):
    with pytest.raises(error, match=message):
        write_container(tmp_path / "w.hmdf", tensors, {})
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_meta(tmp_path):
    for meta in ({"a": float("nan")}, {"a": object()}, {1: "a", "b": 2}):
        with pytest.raises(ValueError, match="meta is not JSON-serialisable"):
            write_container(tmp_path / "w.hmdf", {}, meta)
    with pytest.raises(TypeError, match="meta must be a dict"):
        write_container(tmp_path / "w.hmdf", {}, [1])
    assert list(tmp_path.iterdir()) == []


def test_writer_accepts_grad_tensors_and_views(tmp_path):
    w = torch.randn(6, 4, requires_grad=True)
    row = torch.arange(20, dtype=torch.int32).reshape(4, 5)[1]  # contiguous view at an offset
    write_container(tmp_path / "g.hmdf", {"w": w, "row": row}, {})
    tensors, _ = read_container(tmp_path / "g.hmdf")
    assert torch.equal(tensors["w"], w.detach()) and tensors["row"].tolist() == [5, 6, 7, 8, 9]


def test_writer_missing_folder(tmp_path):
    with pytest.raises(HmdfError, match="does not exist"):
        write_container(tmp_path / "no" / "such" / "m.hmdf", {}, {})
    (tmp_path / "afile").write_text("")
    with pytest.raises(HmdfError, match="afile is a file, not a folder"):
        write_container(tmp_path / "afile" / "m.hmdf", {}, {})


# ------------------------------------------------------------------------------ atomic write
class Boom(Exception):
    pass


def failing_chunks(header, arrays):
    yield header
    yield arrays[0]
    raise Boom("disk full")


@pytest.mark.parametrize("where", ["chunks", "fsync", "replace", "interrupt"])
@pytest.mark.parametrize("previous", [False, True])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, where, previous):
    target = tmp_path / "model.hmdf"
    if previous:
        write_container(target, {"old": torch.ones(2)}, {"v": "old"})
        old_bytes = target.read_bytes()
    if where == "chunks":
        monkeypatch.setattr(container, "_chunks", failing_chunks)
        expected = Boom
    elif where == "interrupt":
        def interrupted(header, arrays):
            yield header
            raise KeyboardInterrupt
        monkeypatch.setattr(container, "_chunks", interrupted)
        expected = KeyboardInterrupt
    else:
        def broken(*args, **kwargs):
            raise OSError(f"{where} failed")
        monkeypatch.setattr(container.os, where, broken)
        expected = HmdfError
    match = re.escape(f"cannot write {target}: {where} failed") if expected is HmdfError else None
    with pytest.raises(expected, match=match):
        write_container(target, sample_tensors(), SAMPLE_META)
    monkeypatch.undo()
    if previous:
        assert [p.name for p in tmp_path.iterdir()] == ["model.hmdf"]
        assert target.read_bytes() == old_bytes
        assert read_meta(target) == {"v": "old"}
    else:
        assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_file(good):
    write_container(good, {"new": torch.zeros(1, dtype=torch.int8)}, {"v": 2})
    tensors, meta = read_container(good)
    assert list(tensors) == ["new"] and meta == {"v": 2}
    assert [p.name for p in good.parent.iterdir()] == ["model.hmdf"]
