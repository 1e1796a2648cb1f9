"""Tests of ``encdist.codec.coding``: vectorized quantized CDFs, rANS round trips, safe decoding.

The hostile-input decodes run in a subprocess: a decoder that reads outside its
buffer would crash that process (negative return code), not pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional

from encdist.codec.coding import (
    PRECISION,
    decode_with_indexes,
    encode_with_indexes,
    entropy_bottleneck_decompress,
    gaussian_conditional_compress,
    gaussian_conditional_decompress,
    quantized_cdf_table,
    table_bits,
)
from encdist.errors import BitstreamError

TOTAL = 1 << PRECISION


def random_pmfs(batch, L, seed, sparsity=0.0):
    g = torch.Generator().manual_seed(seed)
    pmf = torch.rand(*batch, L, generator=g, dtype=torch.float64) ** 3
    if sparsity:
        pmf = pmf * (torch.rand(*batch, L, generator=g) >= sparsity)
    # leave a random amount of mass for the tail
    pmf = pmf / pmf.sum(-1, keepdim=True).clamp_min(1e-12) * torch.rand(*batch, 1, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, L + 1, batch, generator=g)
    return pmf, lengths


def check_table(cdf, pmf, lengths):
    """Every property a table from quantized_cdf_table must have."""
    *batch, L = pmf.shape
    assert cdf.shape == (*batch, L + 2) and cdf.dtype == torch.int32
    cdf = cdf.long()
    assert (cdf[..., 0] == 0).all()
    assert (cdf[..., 1:] >= cdf[..., :-1]).all(), "not monotone"
    freq = cdf[..., 1:] - cdf[..., :-1]  # (..., L+1)
    pos = torch.arange(L + 1)
    used = pos <= lengths[..., None]  # symbols 0..length-1 and the tail at index length
    assert (freq[used] >= 1).all(), "a used symbol has zero frequency"
    assert (freq[~used] == 0).all(), "padding must repeat the total"
    end = cdf.gather(-1, (lengths + 1)[..., None].long())[..., 0]
    assert (end == TOTAL).all()
    assert (cdf[..., -1] == TOTAL).all()
    # close to pmf * 2**16: the target is the pmf restricted to the support plus the leftover as tail
    p = torch.where(pos[:L] < lengths[..., None], pmf.clamp_min(0), torch.zeros(()).double())
    tail = (1 - p.sum(-1, keepdim=True)).clamp_min(0)
    ext = torch.cat([p, torch.zeros_like(tail)], -1)
    ext.scatter_(-1, lengths[..., None].long(), tail)
    ext = ext / ext.sum(-1, keepdim=True)
    k = used.sum(-1, keepdim=True)
    err = (freq.double() - ext * TOTAL).abs()
    assert (err <= k + 2).all(), float(err.max())
    return freq


# ---------------------------------------------------------------- quantized_cdf_table
@pytest.mark.parametrize("L, sparsity", [(1, 0.0), (5, 0.0), (40, 0.0), (40, 0.7), (256, 0.5)])
def test_quantized_cdf_table_properties(L, sparsity):
    pmf, lengths = random_pmfs((3, 7), L, seed=L, sparsity=sparsity)
    cdf = quantized_cdf_table(pmf, lengths)
    check_table(cdf, pmf, lengths)


def test_quantized_cdf_table_is_deterministic_and_batch_independent():
    pmf, lengths = random_pmfs((4, 9), 33, seed=1)
    a = quantized_cdf_table(pmf, lengths)
    assert torch.equal(a, quantized_cdf_table(pmf.clone(), lengths.clone()))
    # row by row gives the same integers as all at once (encoder and decoder may batch differently)
    for i in range(4):
        assert torch.equal(a[i], quantized_cdf_table(pmf[i], lengths[i]))
        assert torch.equal(a[i, 3], quantized_cdf_table(pmf[i, 3], lengths[i, 3]))
    # float32 input of the same values gives the same table
    p32 = pmf.float()
    assert torch.equal(quantized_cdf_table(p32, lengths), quantized_cdf_table(p32.double(), lengths))


def test_quantized_cdf_table_zeros_one_hot_and_degenerate_pmfs():
    L = 12
    pmf = torch.zeros(6, L, dtype=torch.float64)
    pmf[0, 3] = 1.0  # one-hot
    pmf[1, 0] = 1.0  # one-hot on the first symbol
    pmf[2, L - 1] = 1.0  # one-hot on the last symbol, but outside length 5: all its mass goes to the tail
    # pmf[3] all zeros: the tail gets everything
    pmf[4] = 1.0  # sums to 12 > 1: normalised, tail gets only its minimum frequency
    pmf[5, ::2] = 0.5 / (L // 2)  # half the mass in the support, with zeros in between
    lengths = torch.tensor([L, L, 5, L, L, L])
    cdf = quantized_cdf_table(pmf, lengths)
    freq = check_table(cdf, pmf, lengths)
    k = lengths + 1
    assert freq[0, 3] == TOTAL - (k[0] - 1)  # one-hot: all but the minimum frequencies
    assert freq[1, 0] == TOTAL - (k[1] - 1)
    assert freq[2, 5] == TOTAL - 5  # tail of row 2
    assert freq[3, L] == TOTAL - L  # tail of the all-zero pmf
    assert freq[4, L] == 1  # no leftover mass: minimum tail frequency
    assert abs(int(freq[5, L]) - TOTAL // 2) <= k[5] + 2


def test_quantized_cdf_table_non_finite_pmfs_still_give_valid_tables():
    pmf = torch.rand(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) / 10
    pmf[0, 2] = float("nan")
    pmf[1] = float("nan")
    pmf[2, 4] = float("inf")
    pmf[3, 0] = float("-inf")
    lengths = torch.tensor([10, 10, 10, 7])
    cdf = quantized_cdf_table(pmf, lengths)
    check_table(cdf, torch.nan_to_num(pmf, 0.0, posinf=1.0, neginf=0.0), lengths)


def test_quantized_cdf_table_coding_cost_close_to_entropy():
    pmf, lengths = random_pmfs((8,), 64, seed=2)
    lengths[:] = 64
    pmf = pmf / pmf.sum(-1, keepdim=True) * 0.999
    cdf = quantized_cdf_table(pmf, lengths)
    q = (cdf[:, 1:] - cdf[:, :-1]).double()[:, :64] / TOTAL
    cross = -(pmf * torch.log2(q)).sum(-1)
    ent = -(pmf * torch.log2(pmf.clamp_min(1e-300))).sum(-1)
    assert (cross - ent < 0.01).all()


def test_table_bits():
    cdf = torch.tensor([[0, 16384, 49152, 65535, 65536, 65536]], dtype=torch.int32)  # freqs 1/4, 1/2, ~1/4, 1/65536, 0
    counts = torch.tensor([[2, 3, 0, 1, 1]])
    bits = table_bits(counts, cdf)
    expected = 2 * 2 + 3 * 1 + 16 + 16  # zero-frequency entries are charged as frequency 1
    assert bits.shape == (1,)
    assert abs(float(bits[0]) - expected) < 1e-9


# ---------------------------------------------------------------- round trips
def make_tables(C, L, seed):
    pmf, lengths = random_pmfs((C,), L, seed=seed, sparsity=0.3)
    cdf = quantized_cdf_table(pmf, lengths)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-L, 3, (C,), generator=g)
    return cdf, (lengths + 2).int(), offsets.int(), pmf, lengths


@pytest.mark.parametrize("seed", range(6))
def test_encode_decode_round_trip(seed):
    C, L = 5, [1, 3, 17, 64, 200, 9][seed]
    cdf, cdf_len, off, _, lengths = make_tables(C, L, seed)
    g = torch.Generator().manual_seed(100 + seed)
    shape = (C, 7, 9)
    indexes = torch.arange(C).view(-1, 1, 1).expand(shape)
    # mostly in-support symbols, some far outside (escape / bypass coded)
    sym = off.view(-1, 1, 1).long() + (torch.rand(shape, generator=g) * lengths.view(-1, 1, 1)).long()
    wild = torch.rand(shape, generator=g) < 0.1
    sym = torch.where(wild, torch.randint(-1000, 1000, shape, generator=g), sym)
    s = encode_with_indexes(sym, indexes, cdf, cdf_len, off)
    assert isinstance(s, bytes) and len(s) >= 8
    out = decode_with_indexes(s, indexes, cdf, cdf_len, off)
    assert out.dtype == torch.int64 and out.shape == shape
    assert torch.equal(out, sym)
    # bytearray input works too
    assert torch.equal(decode_with_indexes(bytearray(s), indexes, cdf, cdf_len, off), sym)


def test_random_index_order_round_trip():
    C, L = 6, 30
    cdf, cdf_len, off, _, lengths = make_tables(C, L, 7)
    g = torch.Generator().manual_seed(8)
    indexes = torch.randint(0, C, (200,), generator=g)
    sym = off[indexes].long() + (torch.rand(200, generator=g) * lengths[indexes]).long()
    s = encode_with_indexes(sym, indexes, cdf, cdf_len, off)
    assert torch.equal(decode_with_indexes(s, indexes, cdf, cdf_len, off), sym)


def test_decode_rejects_empty_short_and_non_bytes():
    cdf, cdf_len, off, _, _ = make_tables(2, 5, 9)
    idx = torch.zeros(4, dtype=torch.long)
    for s in [b"", b"\x00", bytes(7)]:
        with pytest.raises(BitstreamError, match="too short"):
            decode_with_indexes(s, idx, cdf, cdf_len, off, what="y stream")
    with pytest.raises(BitstreamError, match="expected bytes"):
        decode_with_indexes("abcdefghij", idx, cdf, cdf_len, off)
    with pytest.raises(BitstreamError, match="expected bytes"):
        decode_with_indexes(None, idx, cdf, cdf_len, off)


def test_safe_decompress_matches_compressai():
    torch.manual_seed(0)
    eb = EntropyBottleneck(4).eval()
    with pytest.raises(RuntimeError, match="update"):
        entropy_bottleneck_decompress(eb, [bytes(16)], (3, 5))
    eb.update()
    x = torch.randn(2, 4, 3, 5) * 6
    strings = eb.compress(x)
    ref = eb.decompress(strings, (3, 5))
    ours = entropy_bottleneck_decompress(eb, strings, (3, 5))
    assert torch.equal(ours, ref)
    with pytest.raises(BitstreamError):
        entropy_bottleneck_decompress(eb, [strings[0][:5]], (3, 5))

    gc = GaussianConditional(None).eval()
    gc.update_scale_table(torch.exp(torch.linspace(-2, 4, 16)))
    y = torch.randn(2, 3, 4, 4) * 5
    scales = torch.rand(2, 3, 4, 4) * 8 + 0.2
    means = torch.randn(2, 3, 4, 4)
    indexes = gc.build_indexes(scales)
    stock = gc.compress(y, indexes, means=means)
    s = gaussian_conditional_compress(gc, y, indexes, means)
    assert [x[4:] for x in s] == stock  # CompressAI's bytes behind the symbols' crc32
    assert torch.equal(gaussian_conditional_decompress(gc, s, indexes, means), gc.decompress(stock, indexes, means=means))
    with pytest.raises(BitstreamError, match="strings for"):
        gaussian_conditional_decompress(gc, s[:1], indexes, means)
    with pytest.raises(BitstreamError, match="checksum"):  # other scales decode other symbols: refused
        gaussian_conditional_decompress(gc, s, gc.build_indexes(scales * 3), means)
    with pytest.raises(BitstreamError, match="checksum"):
        gaussian_conditional_decompress(gc, [s[0][:3], s[1]], indexes, means)


# ---------------------------------------------------------------- hostile input, in a subprocess
HOSTILE = textwrap.dedent(
    r"""
    import json, random, sys, time
    import torch
    from compressai.entropy_models import EntropyBottleneck
    from encdist.codec.coding import (decode_with_indexes, encode_with_indexes, quantized_cdf_table,
                                entropy_bottleneck_decompress)
    from encdist.errors import BitstreamError

    rng = random.Random(1234)
    g = torch.Generator().manual_seed(1234)
    stats = {"ok": 0, "error": 0, "bad": 0, "total": 0}
    t0 = time.time()

    def attempt(s, idx, tables):
        stats["total"] += 1
        try:
            out = decode_with_indexes(s, idx, *tables, what="fuzz")
        except BitstreamError:
            stats["error"] += 1
            return
        if out.shape == idx.shape and out.dtype == torch.int64:
            stats["ok"] += 1
        else:
            stats["bad"] += 1

    def tables(C, L, kind):
        if kind == "random":
            pmf = torch.rand(C, L, generator=g, dtype=torch.float64) ** 3
            pmf = pmf / pmf.sum(-1, keepdim=True) * 0.97
        elif kind == "heavy-tail":  # escapes (bypass coding, the longest reads) are likely
            pmf = torch.full((C, L), 0.5 / L, dtype=torch.float64)
        else:  # one-hot
            pmf = torch.zeros(C, L, dtype=torch.float64)
            pmf[:, 0] = 1.0
        lengths = torch.randint(1, L + 1, (C,), generator=g)
        return quantized_cdf_table(pmf, lengths), (lengths + 2).int(), torch.randint(-L, 2, (C,), generator=g).int()

    for kind in ["random", "heavy-tail", "one-hot"]:
        for shape in [(3, 4, 4), (4, 8, 8)]:
            C = shape[0]
            tab = tables(C, 24, kind)
            idx = torch.arange(C).view(-1, 1, 1).expand(shape)
            sym = torch.randint(-40, 40, shape, generator=g)
            s = encode_with_indexes(sym, idx, *tab)
            assert torch.equal(decode_with_indexes(s, idx, *tab), sym)
            # empty and short
            for n in range(0, 8):
                attempt(bytes(n), idx, tab)
            # every truncation (and a few extensions)
            for n in range(8, len(s)):
                attempt(s[:n], idx, tab)
            attempt(s + b"\xff" * 5, idx, tab)
            attempt(s[4:], idx, tab)
            # bit flips
            for _ in range(30):
                b = bytearray(s)
                for _ in range(rng.randint(1, 3)):
                    i = rng.randrange(len(b) * 8)
                    b[i // 8] ^= 1 << (i % 8)
                attempt(bytes(b), idx, tab)
            # random garbage of many lengths, all-ones (maximal bypass runs) and all-zeros
            for n in [8, 9, 11, 12, 16, 31, 64, 257, 1000]:
                attempt(bytes(rng.getrandbits(8) for _ in range(n)), idx, tab)
                attempt(b"\xff" * n, idx, tab)
                attempt(b"\x00" * n, idx, tab)
            # another stream's bytes
            attempt(bytes(reversed(s)), idx, tab)
            # long runs of ones: endless bypass-length prefixes; compressai's own decoder reads
            # megabytes past the buffer on these (a segmentation fault without the padding)
            if kind == "heavy-tail":
                for n in [100_000, 300_000]:
                    attempt(b"\xff" * n, idx, tab)
                    attempt(s[:8] + b"\xff" * n, idx, tab)

    # the entropy bottleneck wrapper with a mutated stream
    eb = EntropyBottleneck(4).eval(); eb.update()
    good = eb.compress(torch.randn(1, 4, 6, 6) * 20)[0]
    for n in range(0, len(good), max(1, len(good) // 20)):
        stats["total"] += 1
        try:
            out = entropy_bottleneck_decompress(eb, [good[:n]], (6, 6), "fuzz")
            stats["ok" if out.shape == (1, 4, 6, 6) else "bad"] += 1
        except BitstreamError:
            stats["error"] += 1
    stats["seconds"] = time.time() - t0
    print(json.dumps(stats))
    """
)


@pytest.mark.timeout(120)
def test_hostile_streams_never_crash_the_process():
    proc = subprocess.run(
        [sys.executable, "-c", HOSTILE], capture_output=True, text=True, timeout=110, env=_env()
    )
    assert proc.returncode == 0, f"decoder crashed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["bad"] == 0, stats
    assert stats["total"] >= 300, stats
    assert stats["error"] >= 6 * 8, stats  # at least every empty / short string
    assert stats["ok"] > 0, stats


def _env():
    import os

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONWARNINGS"] = "ignore"
    return env
