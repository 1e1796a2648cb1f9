"""The bitstream format (``encdist.codec.bitstream``): golden bytes, parsing, bounded decoding, the file.

Golden bytes (tensorflow-compression style): ``tests/data/golden_v<FORMAT_VERSION>.json`` holds
streams written in every way of coding (the mixed channel mask and backward adaptation started
from p̂ included) of a real latent by the committed q6 bottleneck and a trained distribution
codec (``tests/real_latents.py``). Stored streams must decode to the stored symbols, and today's encoder must write the
same bytes: a change of format fails here until ``FORMAT_VERSION`` is raised and the golden
file of the new version written (``python tests/test_bitstream.py --regenerate``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

import encdist  # noqa: F401
from encdist.codec import bitstream as bs
from encdist.errors import BitstreamError
from encdist.latent_codecs import AdaptiveEntropyBottleneckLatentCodec
from real_latents import FIXTURE, fitted_codec, real_latent, real_symbols, symbols_of, ways_of_coding

GOLDEN = Path(__file__).parent / "data" / f"golden_v{bs.FORMAT_VERSION}.json"
#: Every way of coding, by name (CODING_MODES' and the p̂-started backward adaptation without fallback).
OPTIONS = ways_of_coding()
WAYS = ("default", "backward", "static_context", "pdf_context", "paper", "fallback", "static_backward", "pdf_backward",
        "ideal", "static")
SHAPE = (16, 16)


@functools.lru_cache(maxsize=1)
def _codec() -> AdaptiveEntropyBottleneckLatentCodec:
    """The committed q6 bottleneck and the fixture's trained distribution codec (real latents), context tables fitted."""
    return fitted_codec()


def _streams():
    codec = _codec()
    y = real_latent(codec)
    out = {"format_version": bs.FORMAT_VERSION, "fixture_sha256": hashlib.sha256(FIXTURE.read_bytes()).hexdigest(),
           "shape": list(SHAPE), "streams": {}}
    with torch.no_grad():
        for way in WAYS:
            enc = codec.compress(y, OPTIONS[way])
            out["streams"][way] = {"y": enc["strings"][0][0].hex(), "pdf": enc["strings"][1][0].hex()}
    return out


@pytest.fixture(scope="module")
def golden():
    if not GOLDEN.is_file():
        pytest.fail(f"no golden bytes for format version {bs.FORMAT_VERSION}: write {GOLDEN.name} with "
                    "`python tests/test_bitstream.py --regenerate` (after checking the change is intended)")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("way", WAYS)
def test_golden_streams_decode_to_the_stored_symbols(golden, way):
    codec = _codec()
    s = golden["streams"][way]
    strings = [[bytes.fromhex(s["y"])], [bytes.fromhex(s["pdf"])]]
    with torch.no_grad():
        y_hat = codec.decompress(strings, golden["shape"], OPTIONS[way])["y_hat"]
    assert torch.equal(symbols_of(codec, y_hat), real_symbols())


def test_encoder_writes_the_golden_bytes(golden):
    """A change of the bytes must come with a new FORMAT_VERSION (and its golden file)."""
    assert golden["format_version"] == bs.FORMAT_VERSION
    assert golden["fixture_sha256"] == hashlib.sha256(FIXTURE.read_bytes()).hexdigest(), "the fixture changed"
    now = _streams()
    for way in WAYS:
        assert now["streams"][way] == golden["streams"][way], (
            f"{way}: the encoder's bytes changed but FORMAT_VERSION is still {bs.FORMAT_VERSION}: "
            "raise it and write the new golden file (python tests/test_bitstream.py --regenerate)"
        )


def test_golden_modes_cover_the_format(golden):
    modes = {way: bytes.fromhex(s["pdf"])[0] for way, s in golden["streams"].items()}
    assert modes["static"] == bs.MODE_STATIC  # a checksummed header on the baseline too
    assert modes["paper"] == bs.MODE_ADAPTIVE
    assert modes["fallback"] == bs.MODE_MIXED  # a real channel mask
    assert modes["static_backward"] == bs.MODE_STATIC | bs.MODE_BACKWARD
    assert modes["pdf_backward"] == bs.MODE_ADAPTIVE | bs.MODE_BACKWARD
    assert modes["pdf_context"] == bs.MODE_ADAPTIVE | bs.MODE_BACKWARD | bs.MODE_CONTEXT
    assert modes["static_context"] & ~bs.MODE_MIXED == bs.MODE_BACKWARD | bs.MODE_CONTEXT
    assert modes["default"] & bs.MODE_CONTEXT
    assert modes["ideal"] == bs.MODE_ADAPTIVE
    mask = bytes.fromhex(golden["streams"]["fallback"]["pdf"])[bs.HEADER_SIZE : bs.HEADER_SIZE + bs.mask_bytes(192)]
    used = int(bs.unpack_mask(mask, 192).sum())
    assert 0 < used < 192, f"the mixed mask uses p̂ on {used} of 192 channels"


# ---------------------------------------------------------------------- malformed input
BAD_STRINGS = [
    ([[], []], "one string per image"),
    ([[None], [None]], "bytes"),
    ([[b"x"]], "2 string lists"),
    (None, "2 string lists"),
    ([["abc"], [b""]], "bytes"),
    ([[b"12345678"], [b"1", b"2"]], "one string per image"),
]


@pytest.mark.parametrize("strings, match", BAD_STRINGS)
def test_malformed_strings_raise_bitstream_error(strings, match):
    codec = _codec()
    with pytest.raises(BitstreamError, match=match):
        codec.decompress(strings, SHAPE)


@pytest.mark.parametrize("shape", [(0, 5), (-1, 4), (3,), None, ("a", 2), (2.5, 3), (True, 3), (100_000, 100_000), (1 << 20, 2)])
def test_absurd_or_invalid_shapes_raise_before_any_allocation(shape, golden):
    codec = _codec()
    s = golden["streams"]["default"]
    with pytest.raises(BitstreamError, match="shape"):
        codec.decompress([[bytes.fromhex(s["y"])], [bytes.fromhex(s["pdf"])]], shape)


@pytest.mark.parametrize("way", ["default", "paper", "static_backward", "pdf_backward", "static"])
@pytest.mark.parametrize("shape", [(16, 17), (15, 16), (32, 16), (1, 1)])
def test_shape_inconsistent_with_the_stream_is_refused(golden, way, shape):
    """Another number of positions decodes other symbols: the checksum refuses them."""
    codec = _codec()
    s = golden["streams"][way]
    with pytest.raises(BitstreamError):
        codec.decompress([[bytes.fromhex(s["y"])], [bytes.fromhex(s["pdf"])]], shape, OPTIONS[way])


def test_parse_side_rejects_every_malformed_header():
    for data, match in [(b"\x01\x00", "shorter than its header"), (bytes([7]) + bytes(4), "unknown coding mode"),
                        (bytes([bs.MODE_MIXED]) + bytes(4), "channel flags"), (bytes([bs.MODE_BACKWARD]) + bytes(4), "radius"),
                        (bytes([bs.MODE_BACKWARD]) + bytes(4) + bytes([200]), "radius"), ("text", "bytes"),
                        (bytes([bs.MODE_STATIC]) + bytes(4) + b"xx", "unexpected bytes")]:
        with pytest.raises(BitstreamError, match=match):
            bs.parse_side(data, channels=8, num_bins=256)


def test_ideal_counts_payload_is_bounded():
    import zlib

    bomb = zlib.compress(bytes(50_000_000))  # far larger than C*B*4 once inflated
    with pytest.raises(BitstreamError, match="wrong size"):
        bs.unpack_counts(bomb, 8, 256)


# ---------------------------------------------------------------------- the file
def test_file_round_trip_and_refusals(golden):
    s = golden["streams"]["default"]
    strings = [[bytes.fromhex(s["y"])], [bytes.fromhex(s["pdf"])]]
    data = bs.pack_file(strings, (256, 256), SHAPE, 0x1234ABCD)
    assert data[:4] == bs.FILE_MAGIC and data[4] == bs.FORMAT_VERSION
    assert bs.unpack_file(data, 0x1234ABCD) == (strings, (256, 256), SHAPE, "adaptive")
    for coding in bs.FILE_CODING:
        assert bs.unpack_file(bs.pack_file(strings, (256, 256), SHAPE, 7, coding))[3] == coding
    with pytest.raises(BitstreamError, match="another model"):
        bs.unpack_file(data, 0x1234ABCE)
    newer = bytearray(data)
    newer[4] += 1
    with pytest.raises(BitstreamError, match="format version"):
        bs.unpack_file(bytes(newer))
    for version in (1, 2, 3):  # 1: tables from floats, 2: no context tables, 3: two-byte thresholds: refused, saying so
        older = bytearray(data)
        older[4] = version
        with pytest.raises(BitstreamError, match=f"format version {version}: .*re-encode") as info:
            bs.unpack_file(bytes(older))
        assert "\n" not in str(info.value)
    with pytest.raises(BitstreamError, match="checksum|truncated"):
        bs.unpack_file(data[:-3])
    flipped = bytearray(data)
    flipped[30] ^= 1
    with pytest.raises(BitstreamError, match="checksum"):
        bs.unpack_file(bytes(flipped))
    with pytest.raises(BitstreamError, match="magic"):
        bs.unpack_file(b"PNG\x89" + data[4:])
    forged = bytearray(data[:-4])
    struct.pack_into(">I", forged, bs._FILE_HEAD.size, 1 << 30)  # first string "longer than the file"
    forged += struct.pack(">I", __import__("zlib").crc32(bytes(forged)))
    with pytest.raises(BitstreamError, match="past its end"):
        bs.unpack_file(bytes(forged))


if __name__ == "__main__" and "--regenerate" in sys.argv:
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(_streams(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
