"""Decoding bounded by the stream: y substreams, capacity checks before allocation, decoder limits, tiled g_s.

Substreams are tested at the coder level with a small ``substream_symbols`` passed through
(the format's :data:`~encdist.codec.bitstream.SUBSTREAM_SYMBOLS` is 2**21), so that
boundaries fall inside chunks, inside backward-adaptation blocks and inside bands.
Hostile multi-substream strings are decoded in a subprocess: a read outside the buffer
would crash that process, not pytest.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from compressai import ans
from compressai.registry import MODELS

import encdist  # noqa: F401  (registers the models)
from encdist.codec import bitstream as bs
from encdist.codec.backward import BackwardAdaptation
from encdist.codec.coding import (
    StreamDecoder,
    check_capacity,
    decode_with_indexes,
    encode_with_indexes,
    quantized_cdf_table,
    static_tables,
    symbol_bits_floor,
    table_bits_floor,
    table_support,
)
from encdist.errors import BitstreamError
from encdist.latent_codecs import CODING_MODES, AdaptiveEntropyBottleneckLatentCodec


def _tables(C: int, L: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    pmf = torch.rand(C, L, generator=g, dtype=torch.float64) ** 3
    pmf = pmf / pmf.sum(-1, keepdim=True) * 0.97
    lengths = torch.randint(1, L + 1, (C,), generator=g)
    return quantized_cdf_table(pmf, lengths), (lengths + 2).int(), torch.randint(-L, 2, (C,), generator=g).int()


def _symbols(shape, tables, seed: int):
    cdf, cdf_len, off = tables
    g = torch.Generator().manual_seed(seed)
    C = shape[0]
    sym = off.view(-1, 1, 1).long() + (torch.rand(shape, generator=g) * (cdf_len - 2).view(-1, 1, 1)).long()
    wild = torch.rand(shape, generator=g) < 0.05  # escapes: bypass-coded values
    return torch.where(wild, torch.randint(-500, 500, shape, generator=g), sym), torch.arange(C).view(-1, 1, 1).expand(shape)


def _substreams(string: bytes, num_symbols: int, S: int):
    return [string[a:b] for a, b in bs.split_substreams(string, num_symbols, S)]


# ====================================================================== the layout
@pytest.mark.parametrize("S", [1, 7, 64, 1000, 10_000])
def test_fixed_tables_round_trip_across_substream_boundaries(S):
    tables = _tables(5, 20, seed=S)
    sym, idx = _symbols((5, 13, 11), tables, seed=S + 1)
    N = sym.numel()
    s = encode_with_indexes(sym, idx, *tables, chunk=97, substream_symbols=S)
    parts = _substreams(s, N, S)
    assert len(parts) == bs.substream_count(N, S) == math.ceil(N / S)
    assert all(len(p) >= bs.SUBSTREAM_MIN_BYTES for p in parts)
    # each substream is an independent rANS stream of S symbols (the last: the rest)
    first = min(S, N)
    single = StreamDecoder(parts[0], first, substream_symbols=S).decode(idx.reshape(-1)[:first], *tables)
    assert torch.equal(single, sym.reshape(-1)[:first])
    # decoded in chunks that do not line up with the substreams
    dec = StreamDecoder(s, N, substream_symbols=S)
    assert torch.equal(dec.decode(idx, *tables, chunk=53), sym)
    assert dec.left == 0
    # and through plain lists of odd sizes
    dec = StreamDecoder(s, N, substream_symbols=S)
    flat, out, i = idx.reshape(-1).tolist(), [], 0
    lists = (tables[0].tolist(), tables[1].tolist(), tables[2].tolist())
    for n in [1, 2, 3, 50, 5, 400, N]:
        out += dec.decode_lists(flat[i : i + n], *lists)
        i = min(N, i + n)
    assert out == sym.reshape(-1).tolist()
    with pytest.raises(RuntimeError, match="more symbols"):
        dec.decode_lists([0], *lists)


def test_small_substreams_are_compressai_bytes_without_its_overrun():
    """CompressAI's flush overruns its buffer on one or two records; the Python coder writes its bytes."""
    from encdist.codec.coding import _coder_records, _small_rans

    tables = _tables(3, 6, seed=11)
    cdf, lengths, offsets = (t.tolist() for t in tables)
    rng = np.random.default_rng(0)
    for n in range(1, 40):
        sym = rng.integers(-40, 40, n).tolist()
        idx = rng.integers(0, 3, n).tolist()
        records = [r for v, t in zip(sym, idx) for r in _coder_records(v, cdf[t], lengths[t], offsets[t])]
        if len(records) >= 3:  # where CompressAI's own flush is safe: the same bytes
            enc = ans.BufferedRansEncoder()
            enc.encode_with_indexes(sym, idx, cdf, lengths, offsets)
            assert _small_rans(records) == enc.flush()
        ours = encode_with_indexes(torch.tensor(sym), torch.tensor(idx), *tables, substream_symbols=1)
        dec = StreamDecoder(ours, n, substream_symbols=1)
        assert dec.decode_lists(idx, cdf, lengths, offsets) == sym


def test_one_substream_is_compressai_bytes():
    """Up to SUBSTREAM_SYMBOLS symbols the string is one plain rANS stream: CompressAI's bytes."""
    tables = _tables(4, 30, seed=3)
    sym, idx = _symbols((4, 9, 7), tables, seed=4)
    ref = ans.RansEncoder().encode_with_indexes(sym.reshape(-1).int().tolist(), idx.reshape(-1).int().tolist(),
                                                 tables[0].tolist(), tables[1].tolist(), tables[2].tolist())
    assert encode_with_indexes(sym, idx, *tables) == ref
    assert encode_with_indexes(sym, idx, *tables, substream_symbols=sym.numel()) == ref
    assert encode_with_indexes(sym, idx, *tables, substream_symbols=sym.numel() - 1) != ref


@pytest.mark.parametrize("S", [5, 37, 600])
def test_backward_adaptation_round_trip_across_substreams_and_bands(S):
    """Substream boundaries inside blocks and bands: the same symbols back, bit for bit."""
    torch.manual_seed(0)
    codec = AdaptiveEntropyBottleneckLatentCodec(channels=6).eval()
    with torch.no_grad():
        codec.entropy_bottleneck.quantiles.copy_(torch.tensor([-8.0, 0.0, 8.0]).expand(6, 1, 3))
    codec.entropy_bottleneck.update(force=True)
    g = torch.Generator().manual_seed(S)
    sym = torch.round(torch.randn(6, 9, 14, generator=g) * 3).int()
    sym[2, 4, 5] = 90  # an escape
    adaptation = BackwardAdaptation(budget=20_000)  # a few latent rows per band
    static = static_tables(codec.entropy_bottleneck)
    lo, length = (t.numpy() for t in table_support(codec.entropy_bottleneck, codec.num_bins))
    radius = adaptation.radius(sym.numpy(), codec.num_bins)
    freqs, b_lo, b_len = adaptation.base_freqs([(static[0].numpy(), static[2].numpy())], lo, length, radius)
    plan = adaptation.plan(sym.numpy(), np.stack(freqs), b_lo, b_len)
    assert len(plan.bands) > 1
    use = np.zeros(6, dtype=np.int64)
    s = plan.encode(use, substream_symbols=S)
    N = sym.numel()
    assert len(_substreams(s, N, S)) == math.ceil(N / S)
    min_bits = 9 * 14 * float(adaptation.bits_floor(b_len).sum())
    out = adaptation.decode(StreamDecoder(s, N, "y", min_bits, substream_symbols=S), (9, 14), freqs[0], b_lo, b_len)
    assert np.array_equal(out, sym.numpy())
    assert plan.encode(use, substream_symbols=N) == plan.encode(use)  # one substream: the format's bytes


def test_codec_latent_over_one_substream_round_trips():
    """At the format's SUBSTREAM_SYMBOLS: the static baseline of a latent just over it is two substreams."""
    torch.manual_seed(0)
    C = 32
    codec = AdaptiveEntropyBottleneckLatentCodec(channels=C, enable_adaptive=False).eval()
    codec.entropy_bottleneck.update(force=True)
    h, w = 256, bs.SUBSTREAM_SYMBOLS // (C * 256) + 1
    g = torch.Generator().manual_seed(1)
    y = torch.round(torch.randn(1, C, h, w, generator=g) * 2)
    with torch.no_grad():
        enc = codec.compress(y)
        assert len(_substreams(enc["strings"][0][0], C * h * w, bs.SUBSTREAM_SYMBOLS)) == 2
        assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])


# ====================================================================== refusals before allocation
def test_split_substreams_refuses_lengths_that_do_not_tile_the_string():
    parts = [bytes(range(10)), bytes(12), bytes(9)]
    s = bs.join_substreams(parts)
    assert _substreams(s, 25, 10) == parts
    assert len(s) == sum(map(len, parts)) + 8
    bad = {
        "short": s[: 3 * 8 + 2 * 4 - 1],
        "zero length": b"\x00\x00\x00\x00" + s[4:],
        "length 7": b"\x00\x00\x00\x07" + s[4:],
        "past the end": b"\x00\x01\x00\x00" + s[4:],
        "leaves the last too short": s[:14] + b"\x00\x00\x00\x13" + s[18:],
    }
    for name, data in bad.items():
        with pytest.raises(BitstreamError, match="too short|invalid length"):
            bs.split_substreams(data, 25, 10, "y stream")
    with pytest.raises(BitstreamError, match="too short"):
        bs.split_substreams(s, 10**6, 10)


def test_declared_shapes_the_string_cannot_hold_are_refused_before_allocation():
    """10**12 symbols would be terabytes: refusing them at once proves nothing grew with the shape."""
    tables = _tables(3, 12, seed=5)
    sym, idx = _symbols((3, 8, 8), tables, seed=6)
    s = encode_with_indexes(sym, idx, *tables)
    t = time.perf_counter()
    with pytest.raises(BitstreamError, match="too short"):
        StreamDecoder(s, 10**12, "y stream")
    with pytest.raises(BitstreamError, match="too short"):
        decode_with_indexes(s, torch.zeros(1, dtype=torch.long).expand(10**12), *tables, what="y stream")
    assert time.perf_counter() - t < 1.0


def test_capacity_bound_holds_for_real_streams_and_refuses_impossible_ones():
    """The encoder never writes fewer bytes than check_capacity's proven minimum, at its tightest too."""
    # a table whose most probable symbol has half the mass: >= ~1 bit per symbol, however coded
    cdf = torch.tensor([[0, 1 << 15, (1 << 15) + 1, 1 << 16]], dtype=torch.int32)
    lengths, offsets = torch.tensor([4], dtype=torch.int32), torch.tensor([0], dtype=torch.int32)
    floor = float(table_bits_floor(cdf, lengths)[0])
    assert 0.99 < floor <= 1.0
    strings = {}
    for N, S in [(10, 1 << 21), (5000, 1 << 21), (200_000, 1 << 21), (200_000, 30_000)]:
        sym = torch.zeros(N, dtype=torch.long)  # the most probable symbol only: the bound's tightest case
        idx = torch.zeros(N, dtype=torch.long)
        s = strings[N, S] = encode_with_indexes(sym, idx, cdf, lengths, offsets, substream_symbols=S)
        check_capacity(s, N, N * floor, substream_symbols=S)  # a real stream passes
        assert torch.equal(StreamDecoder(s, N, min_bits=N * floor, substream_symbols=S).decode(idx, cdf, lengths, offsets), sym)
    # twice the symbols (a shape 2x larger) in one of those strings: impossible, refused up front
    s = strings[200_000, 1 << 21]
    assert 8 * len(s) < 2 * 200_000 * floor
    with pytest.raises(BitstreamError, match="under their tables"):
        check_capacity(s, 400_000, 400_000 * floor, "y stream")
    with pytest.raises(BitstreamError, match="under their tables"):
        decode_with_indexes(s, torch.zeros(400_000, dtype=torch.long), cdf, lengths, offsets, "y stream")
    # the floor: exact formula, monotone, never above the table's own cost
    f = np.array([1, 100, 1 << 15, (1 << 16) - 1])
    b = symbol_bits_floor(f)
    assert (np.diff(b) < 0).all() and (b > 0).all() and (b <= 16 - np.log2(f) + 1e-12).all()


def test_codec_refuses_large_shapes_and_too_many_images_in_one_line():
    torch.manual_seed(0)
    codec = AdaptiveEntropyBottleneckLatentCodec(channels=8).eval()
    codec.entropy_bottleneck.update(force=True)
    codec.pdf_model.entropy_bottleneck.update(force=True)
    y = torch.round(torch.randn(1, 8, 6, 10) * 3)
    with torch.no_grad():
        enc = codec.compress(y)
    strings = enc["strings"]
    big = (1024, 1024)  # a 16384x16384 image at 16x
    with pytest.raises(BitstreamError, match="max_pixels") as e:
        codec.decompress(strings, big)
    assert "\n" not in str(e.value) and str(bs.MAX_DECODE_PIXELS) in str(e.value)
    with pytest.raises(BitstreamError, match="max_pixels"):
        codec.decompress(strings, (6, 10), max_pixels=6 * 10 * 256 - 1)
    assert torch.equal(codec.decompress(strings, (6, 10), max_pixels=6 * 10 * 256)["y_hat"], enc["y_hat"])
    # a raised limit: the stream, too short for that shape, still refuses it
    with pytest.raises(BitstreamError, match="y stream: .*(too short|invalid length)"):
        codec.decompress(strings, big, max_pixels=1 << 30)
    # images per call
    n = bs.MAX_DECODE_IMAGES + 1
    with pytest.raises(BitstreamError, match="MAX_DECODE_IMAGES"):
        codec.decompress([strings[0] * n, strings[1] * n], (6, 10))


def test_hyperprior_limits_apply_to_y_and_its_stream_is_checked_before_h_s():
    torch.manual_seed(0)
    model = MODELS["bmshj2018-hyperprior-pdf"](N=8, M=12).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        enc = model.compress(x)
        assert enc["shape"] == (2, 3)
        ref = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    pixels = 128 * 192
    with pytest.raises(BitstreamError, match="max_pixels"):
        model.decompress(enc["strings"], enc["shape"], max_pixels=pixels - 1)
    assert torch.equal(model.decompress(enc["strings"], enc["shape"], max_pixels=pixels)["x_hat"], ref)
    # a shape the y string is too short for: refused before z is decoded or h_s runs
    calls = []
    handle = model.h_s.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(BitstreamError, match="y stream"):
            model.decompress(enc["strings"], (256, 256), max_pixels=1 << 40)
    finally:
        handle.remove()
    assert not calls


# ====================================================================== hostile substreams
HOSTILE = textwrap.dedent(
    r"""
    import json, random, torch
    from encdist.codec.coding import StreamDecoder, encode_with_indexes, quantized_cdf_table
    from encdist.errors import BitstreamError

    rng, g = random.Random(7), torch.Generator().manual_seed(7)
    stats = {"ok": 0, "error": 0, "total": 0}
    S = 16
    pmf = torch.full((3, 10), 0.05, dtype=torch.float64)  # heavy tail: escapes, the longest reads
    tab = (quantized_cdf_table(pmf, torch.full((3,), 10)), torch.full((3,), 12, dtype=torch.int32), torch.full((3,), -5, dtype=torch.int32))
    idx = torch.arange(3).view(-1, 1, 1).expand(3, 6, 7)
    sym = torch.randint(-60, 60, idx.shape, generator=g)
    s = encode_with_indexes(sym, idx, *tab, substream_symbols=S)

    def attempt(data):
        stats["total"] += 1
        try:
            out = StreamDecoder(data, idx.numel(), "fuzz", substream_symbols=S).decode(idx, *tab)
            assert out.shape == idx.shape
            stats["ok"] += 1
        except BitstreamError:
            stats["error"] += 1

    assert torch.equal(StreamDecoder(s, idx.numel(), substream_symbols=S).decode(idx, *tab), sym)
    for n in range(len(s)):
        attempt(s[:n])
    for _ in range(300):
        b = bytearray(s)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b) * 8)
            b[i // 8] ^= 1 << (i % 8)
        attempt(bytes(b))
    for n in [len(s), 2 * len(s), 5000]:
        attempt(bytes(rng.getrandbits(8) for _ in range(n)))
        attempt(b"\xff" * n)
    # every length prefix valid, every body all ones: maximal bypass runs in every substream
    k = -(-idx.numel() // S)
    attempt(b"".join((100).to_bytes(4, "big") + b"\xff" * 100 for _ in range(k - 1)) + b"\xff" * 100_000)
    print(json.dumps(stats))
    """
)


@pytest.mark.timeout(120)
def test_hostile_substreams_never_crash_the_process():
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=110, env=env)
    assert proc.returncode == 0, f"decoder crashed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["total"] > 400 and stats["error"] > 0 and stats["ok"] > 0, stats


# ====================================================================== g_s in tiles
@pytest.mark.parametrize("name", ["bmshj2018-factorized-pdf", "mbt2018-mean-pdf"])
def test_tiled_synthesis_is_the_whole_image_synthesis(name):
    torch.manual_seed(0)
    model = MODELS[name](N=16, M=24).eval()
    g = torch.Generator().manual_seed(2)
    y = torch.round(torch.randn(1, 24, 21, 30, generator=g) * 3)
    with torch.no_grad():
        full = model.g_s(y)
        for tile in (4, 7, 16):
            tiled = model.synthesize(y, tile=tile)
            assert tiled.shape == full.shape
            assert torch.allclose(tiled, full, rtol=0, atol=1e-5), (tile, float((tiled - full).abs().max()))
        assert torch.equal(model.synthesize(y, tile=30), full)  # one tile: g_s itself
        model.double()
        exact = model.synthesize(y.double(), tile=5) - model.g_s(y.double())
    assert float(exact.abs().max()) < 1e-12  # the halo holds the whole receptive field
