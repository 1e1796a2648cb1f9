"""Backward adaptation (``encdist.codec.backward`` and the codec's ``MODE_BACKWARD`` streams).

tensorflow-compression style: small untrained modules with fixed seeds;
decoding gives back the quantized latent bit for bit, the actual bits are at
least the tables' exact cost and within a small overhead of it, the same input
gives the same bytes, and the encoder's all-blocks-at-once tables are exactly
the decoder's block-by-block ones.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from compressai.entropy_models import EntropyBottleneck
from compressai.registry import MODELS

import encdist  # noqa: F401  (registers the models)
from encdist.codec.backward import (
    COUNT_ONE,
    _Setup,
    adapted_tables,
    block_order,
    integer_cdf_table,
    stream_layout,
    table_indexes,
)
from encdist.codec.bitstream import parse_side
from encdist.codec.coding import static_tables, table_support
from encdist.latent_codecs import MODE_ADAPTIVE, MODE_BACKWARD, MODE_STATIC, AdaptiveEntropyBottleneckLatentCodec

HEADER = 5


# ====================================================================== integer tables
@pytest.mark.parametrize("seed", range(5))
def test_integer_cdf_table_invariants(seed):
    rng = np.random.default_rng(seed)
    K = 12
    w = rng.integers(0, 10**9, size=(50, K)) * (rng.random((50, K)) < 0.7)
    lengths = rng.integers(0, K, size=50)
    used = np.arange(K)[None, :] <= lengths[:, None]
    cdf = integer_cdf_table(w, used)
    assert cdf.shape == (50, K + 1) and cdf.dtype == np.int32
    freq = np.diff(cdf.astype(np.int64), axis=1)
    assert (cdf[:, 0] == 0).all() and (cdf[:, -1] == 1 << 16).all()
    assert (freq[used] >= 1).all() and (freq[~used] == 0).all()
    # proportional: floor share plus one, the remainder (< number of used symbols) on the heaviest
    wu = np.where(used, w, 0)
    s = wu.sum(1, keepdims=True)
    k = used.sum(1, keepdims=True)
    share = np.where(s > 0, wu * ((1 << 16) - k) / np.maximum(s, 1), 1)
    off = freq - share
    check = used & (s > 0)  # (all-zero rows are uniform: tested below)
    assert (np.where(check, off, 1) > -1e-6).all()
    rest = off.copy()
    rest[np.arange(50), wu.argmax(1)] = 1
    assert (np.where(check, rest, 1) <= 1 + 1e-6).all()
    # the same weights give the same table (integers only)
    assert np.array_equal(cdf, integer_cdf_table(w.copy(), used.copy()))


def test_integer_cdf_table_all_zero_row_is_uniform():
    cdf = integer_cdf_table(np.zeros((1, 4), dtype=np.int64), np.array([[True, True, True, False]]))
    assert np.diff(cdf[0]).tolist() == [21846, 21845, 21845, 0]


def test_adapter_tables_are_integer_cdf_tables():
    """The adapter's shortcut gives exactly integer_cdf_table of its weights."""
    rng = np.random.default_rng(7)
    C, K = 9, 10
    lengths = rng.integers(0, K, size=C)
    used = np.arange(K)[None, :] <= lengths[:, None]
    base = np.where(used, rng.integers(1, 9000, size=(C, K)), 0)
    setup = _Setup(base, lengths, 16, 154)
    for _ in range(20):
        counts = np.where(used, rng.integers(0, 10**5, size=(3, C, K)) * (rng.random((3, C, K)) < 0.5), 0)
        w = setup.prior + counts * (1 << 16) // COUNT_ONE
        assert np.array_equal(setup.tables(counts), integer_cdf_table(w, used))
        assert np.array_equal(setup.tables(counts[1]), integer_cdf_table(w[1], used))


# ====================================================================== block order
@pytest.mark.parametrize("shape,phases", [((1, 1), 2), ((3, 5), 1), ((3, 5), 2), ((4, 7), 3), ((2, 3), 9)])
def test_block_order_is_a_permutation_of_whole_rows(shape, phases):
    h, w = shape
    order, bounds = block_order(shape, phases)
    assert sorted(order.tolist()) == list(range(h * w))
    P = min(phases, w)
    assert len(bounds) == h * P + 1 and bounds[-1] == h * w
    for b, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
        pos = order[b0:b1]
        assert (pos // w == b // P).all()  # a block lies in one row
        assert (pos % w % P == b % P).all()  # and holds one phase of its columns


@pytest.mark.parametrize("shape,phases", [((2, 3), 2), ((3, 4), 1), ((1, 5), 3)])
def test_stream_layout_visits_every_symbol_once_block_by_block(shape, phases):
    C = 3
    pos, idx = stream_layout(C, *shape, phases)
    _, bounds = block_order(shape, phases)
    n = bounds[-1]
    assert sorted(pos.tolist()) == list(range(C * n))
    col = pos % n
    block = np.searchsorted(bounds, col, side="right") - 1
    assert (np.array(idx) == block * C + pos // n).all()
    assert (np.diff(block) >= 0).all()  # block by block


# ====================================================================== encoder tables == decoder tables
def _base(rng, C, K, lengths):
    f = rng.integers(1, 5000, size=(C, K))
    f = np.where(np.arange(K)[None, :] <= lengths[:, None], f, 0)
    f[np.arange(C), lengths] += (1 << 16) - f.sum(1)  # the escape takes the rest
    return f


@pytest.mark.parametrize("phases", [1, 2, 3])
@pytest.mark.parametrize("alpha,decay", [(1, 0), (16, 154), (64, 256)])
def test_all_blocks_at_once_equals_block_by_block(phases, alpha, decay):
    rng = np.random.default_rng(phases * 7 + alpha)
    C, h, w, K = 5, 6, 9, 8
    lengths = rng.integers(1, K, size=C)
    offsets = rng.integers(-4, 0, size=C)
    base = np.clip(_base(rng, C, K, lengths), 1, None) * (np.arange(K)[None, :] <= lengths[:, None])
    base[np.arange(C), lengths] += (1 << 16) - base.sum(1)
    symbols = rng.integers(-7, 7, size=(C, h, w))  # some outside each support: escapes
    # two starting points at once: the base and a flattened one (both adapt with the same counts)
    flat = np.where(np.arange(K)[None, :] <= lengths[:, None], 1000, 0)
    flat[np.arange(C), lengths] += (1 << 16) - flat.sum(1)
    tables2, bits2, ordered, bounds = adapted_tables(symbols, np.stack([base, flat]), offsets, lengths, alpha, decay, phases)
    tables, bits = tables2[0], bits2[0]
    one, one_bits, _, _ = adapted_tables(symbols, base[None], offsets, lengths, alpha, decay, phases)
    assert np.array_equal(one[0], tables) and np.array_equal(one_bits[0], bits)
    assert np.array_equal(tables2[1], adapted_tables(symbols, flat[None], offsets, lengths, alpha, decay, phases)[0][0])
    order, _ = block_order((h, w), phases)
    assert np.array_equal(ordered, symbols.reshape(C, -1)[:, order])
    # the decoder's recurrence, one block at a time
    setup = _Setup(base, lengths, alpha, decay)
    counts = np.zeros((C, K), dtype=np.int64)
    expect_bits = np.zeros(C)
    for b, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
        t = setup.tables(counts)
        assert np.array_equal(tables[b], t), f"block {b}"
        rel = table_indexes(ordered[:, b0:b1], offsets, lengths)
        f = np.take_along_axis(t, rel + 1, 1) - np.take_along_axis(t, rel, 1)
        expect_bits += (16 - np.log2(f)).sum(1)
        hist = np.stack([np.bincount(r, minlength=K) for r in rel])
        counts = ((counts * decay) >> 8) + COUNT_ONE * hist
    assert np.allclose(bits, expect_bits)


# ====================================================================== the codec
def _codec(C=6, seed=0, **kwargs):
    """A small codec whose default is backward adaptation with one table per channel (contexts: test_context.py)."""
    kwargs.setdefault("adapt_contexts", False)
    torch.manual_seed(seed)
    eb = EntropyBottleneck(C)
    with torch.no_grad():
        eb.quantiles[:, 0, 0], eb.quantiles[:, 0, 2] = -8, 8
    codec = AdaptiveEntropyBottleneckLatentCodec(eb, **kwargs).eval()
    eb.update(force=True)
    codec.pdf_model.entropy_bottleneck.update(force=True)
    return codec


def _laplace(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(*shape, generator=g).clamp(1e-7, 1 - 1e-7) - 0.5
    return -scale * torch.sign(u) * torch.log1p(-2 * u.abs())


def _nonstationary(n=1, C=6, h=16, w=24, seed=0):
    """Top rows nearly constant, bottom rows spread: what one table per image cannot follow."""
    scale = torch.ones(1, 1, h, 1) * 0.15
    scale[..., h // 2 :, :] = 3.0
    return _laplace((n, C, h, w), scale, seed)


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (16, 24)])
def test_round_trip_is_exact(shape, fallback):
    codec = _codec(fallback_static=fallback)
    y = _nonstationary(2, 6, *shape, seed=sum(shape))
    y[0, 0, 0, 0] = 40.0  # beyond the static support: an escape
    y[1, 1, -1, -1] = -300.0  # beyond the histogram's bins: the radius is capped at B/2
    with torch.no_grad():
        enc = codec.compress(y)
        dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    assert torch.equal(enc["y_hat"], torch.round(y - codec._medians().view(1, -1, 1, 1)) + codec._medians().view(1, -1, 1, 1))
    if not fallback:
        assert all(s[0] == MODE_ADAPTIVE | MODE_BACKWARD for s in enc["strings"][1])


def test_actual_bits_match_the_tables_exact_cost():
    """No escapes: the y string is the tables' exact bits plus at most the coder's flush."""
    codec = _codec(fallback_static=False)
    y = _nonstationary(1, 6, 32, 48, seed=3).clamp(-7, 7)
    sym = codec._symbols(y)[0]
    with torch.no_grad():
        enc = codec.compress(y)
        side = parse_side(enc["strings"][1][0], codec.channels, codec.num_bins)
        adaptive = codec.side_tables(side.pdf, ideal=False)
    family = codec._backward_family(sym, adaptive, static_tables(codec.entropy_bottleneck))
    est = float(family.bits()[0].sum())
    actual = 8 * len(enc["strings"][0][0])
    assert est - 32 <= actual <= est + 64, (est, actual)


def test_beats_the_per_image_bound_on_nonstationary_latents():
    """One exact table per image at zero cost (the ideal bound) cannot follow rows; backward adaptation can."""
    y = _nonstationary(1, 6, 32, 48, seed=4)
    sizes = {}
    for name, kwargs in {"backward": {}, "ideal": dict(ideal=True), "static": dict(enable_adaptive=False)}.items():
        codec = _codec(**kwargs)
        with torch.no_grad():
            enc = codec.compress(y)
        sizes[name] = len(enc["strings"][0][0]) + (len(enc["strings"][1][0]) if name == "backward" else 0)
    assert sizes["backward"] < 0.9 * sizes["ideal"] < 0.9 * sizes["static"], sizes


def test_same_input_same_bytes_and_state_dict_round_trip():
    model = MODELS["bmshj2018-factorized-pdf"](N=8, M=16).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 128, 192, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = model.compress(x)
        a, shape = enc["strings"], enc["shape"]
        b = model.compress(x.clone())["strings"]
    assert a == b and a[1][0][0] & MODE_BACKWARD
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(99)
    fresh = MODELS["bmshj2018-factorized-pdf"](N=8, M=16).eval()
    fresh.load_state_dict(torch.load(buf))
    fresh.update(force=True)
    with torch.no_grad():
        assert fresh.compress(x)["strings"] == a
        assert torch.equal(fresh.decompress(a, shape)["x_hat"], model.decompress(a, shape)["x_hat"])


@pytest.mark.parametrize("seed", range(4))
def test_fallback_picks_the_cheapest_family(seed):
    """With the fallback, backward adaptation on can only help: never above the fixed-table codec or the static one."""
    y = _laplace((1, 6, 12, 20), 1.5, seed) if seed % 2 else _nonstationary(1, 6, 12, 20, seed)
    total = {}
    for name, kwargs in {
        "both": {},
        "fixed": dict(backward_adaptation=False),
        "backward_only": dict(fallback_static=False),
        "static": dict(enable_adaptive=False),
    }.items():
        codec = _codec(seed=seed, **kwargs)
        with torch.no_grad():
            enc = codec.compress(y)
        total[name] = len(enc["strings"][0][0]) + len(enc["strings"][1][0])
        if name == "both":
            mode = enc["strings"][1][0][0]
            assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])
    assert total["both"] <= min(total["fixed"], total["backward_only"], total["static"] + HEADER), total
    if seed % 2 == 0:
        assert mode & MODE_BACKWARD  # rows differ: adaptation pays


def test_stationary_static_latent_keeps_fixed_static_tables():
    """A latent whose channels are constant at the median: the static tables already code it for
    almost nothing, the fallback keeps them (no adaptation, no side bytes)."""
    codec = _codec(fallback_static=True)
    y = codec._medians().view(1, -1, 1, 1).expand(1, 6, 8, 8).clone()
    with torch.no_grad():
        enc = codec.compress(y)
    assert enc["strings"][1][0][0] in (MODE_STATIC, MODE_STATIC | MODE_BACKWARD)
    assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])


def test_adaptation_config_is_checked():
    for bad in (dict(adapt_alpha=0), dict(adapt_decay=1.5), dict(adapt_decay=-0.1), dict(adapt_phases=0)):
        with pytest.raises(ValueError, match="adapt_alpha"):
            AdaptiveEntropyBottleneckLatentCodec(channels=4, **bad)


# ---------------------------------------------------------------- training-time model of the adapted coder
def _spread_latent(n=2, C=6, h=24, w=32, seed=5):
    """Rows of changing scale within the static support (no escapes), as real latents have."""
    scale = torch.linspace(0.3, 2.5, h).view(1, 1, h, 1).expand(n, C, h, 1)
    return _laplace((n, C, h, w), scale, seed).clamp(-7, 7)


@pytest.mark.parametrize("phases,alpha,decay", [(1, 4, 0.0), (2, 16, 0.6), (3, 64, 1.0)])
def test_adapted_likelihoods_match_the_integer_tables_bits(phases, alpha, decay):
    """The float model the codec trains with is the integer coder's exact bits within 0.5 %, per channel."""
    codec = _codec(adapt_alpha=alpha, adapt_decay=decay, adapt_phases=phases)
    y = _spread_latent()
    static = static_tables(codec.entropy_bottleneck)
    g = torch.Generator().manual_seed(1)
    p_hat = torch.softmax(torch.randn(2, 6, codec.num_bins, generator=g), -1)
    p_hat = 0.5 * p_hat + 0.5 * codec.static_pmf()  # a prior unlike the static one, yet plausible
    sym = codec._symbols(y)
    lo, length = table_support(codec.entropy_bottleneck, codec.num_bins)
    lik_pdf, lik_static = codec.adaptation.likelihoods(sym, [p_hat, codec.static_pmf().unsqueeze(0)], lo, length)
    for i in range(2):
        cdf, ln, off = codec.adaptive_tables(p_hat[i : i + 1])
        exact_pdf, exact_static = codec._backward_family(sym[i], (cdf[0], ln, off), static).bits()
        for lik, exact in ((lik_pdf, exact_pdf), (lik_static, exact_static)):
            est = -torch.log2(lik[i]).sum((1, 2))
            torch.testing.assert_close(est, exact.float(), rtol=5e-3, atol=2.0)


def test_training_rate_is_the_deployed_rate_and_trains_every_channel():
    """``forward``'s y rate under the default coder is the y string's size within 1 %, for every way
    of coding; its gradient reaches p̂ on every channel, the ones the static table wins included."""
    codec = _codec()
    y = _spread_latent(seed=6)
    for mode in ("adaptive", "paper", "fallback", "static_backward"):
        with torch.no_grad():
            est = -torch.log2(codec(y, mode)["likelihoods"]["y"]).sum().item()
            enc = codec.compress(y, mode)
        real = 8 * sum(len(s) for s in enc["strings"][0])
        assert abs(est - real) <= 0.01 * real + 2 * 64, (mode, est, real)
    codec.train()
    out = codec(y.requires_grad_(True))
    out["likelihoods"]["y"].log().sum().neg().backward()
    grads = codec.pdf_model.g_s[-2].weight.grad.abs().view(codec.channels, -1).sum(1)
    assert (grads > 0).all(), grads
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_static_backward_forward_has_no_side_rate_and_follows_the_static_start():
    codec = _codec()
    y = _spread_latent(seed=7)
    with torch.no_grad():
        out = codec(y, "static_backward")
    assert out["likelihoods"]["pdf"].numel() == 0
    lo, length = table_support(codec.entropy_bottleneck, codec.num_bins)
    (expected,) = codec.adaptation.likelihoods(codec._symbols(y), [codec.static_pmf().unsqueeze(0)], lo, length)
    static_fixed = -torch.log2(codec(y, "static")["likelihoods"]["y"]).sum()
    assert -torch.log2(out["likelihoods"]["y"]).sum() <= min(static_fixed, -torch.log2(expected).sum()) + 1e-3
