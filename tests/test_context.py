"""Context-adaptive coding (``encdist.codec.context``, the codec's ``MODE_CONTEXT`` streams)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encdist.codec import bitstream as bs
from encdist.codec.context import ContextModel, channel_order
from encdist.errors import BitstreamError
from real_latents import fitted_codec, real_codec, real_latent, symbols_of


def _spread_symbols(C=24, h=9, w=13, seed=0):
    """Symbols whose magnitude follows a shared spatial activity map, as latents do."""
    g = torch.Generator().manual_seed(seed)
    activity = torch.rand(1, h, w, generator=g) ** 3 * 6
    scale = activity * torch.linspace(1.5, 0.2, C).view(C, 1, 1)
    return torch.round(torch.randn(C, h, w, generator=g) * scale).long().numpy()


@pytest.mark.parametrize("model", [ContextModel(), ContextModel(groups=3, spatial_levels=2, channel_levels=3),
                                   ContextModel(groups=1, spatial_levels=3, channel_levels=1),
                                   ContextModel(groups=5, spatial_levels=1, channel_levels=4)])
@pytest.mark.parametrize("phases", [1, 2, 3])
def test_decoder_contexts_use_only_decoded_symbols_and_match_the_encoders(model, phases):
    """Block by block and group by group, the decoder's rule sees only what is decoded (the rest is
    garbage here) and gives every symbol the context the encoder gave it."""
    sym = _spread_symbols(seed=phases)
    C, h, w = sym.shape
    thresholds = model.thresholds(sym)
    expected = model.contexts(sym, thresholds, phases)
    assert expected.min() >= 0 and expected.max() < model.num_contexts
    P = min(phases, w)
    decoded = np.full_like(sym, 99)  # not decoded yet: garbage the rule must not read
    bounds = model.group_bounds(C)
    for r in range(h):
        for phase in range(P):
            cols = np.arange(phase, w, P)
            spatial = model.spatial_contexts(decoded, r, cols, phase)  # as the decoder: before the block's groups
            for g, (g0, g1) in enumerate(zip(bounds[:-1], bounds[1:])):
                stat = np.abs(decoded[:g0, r, cols]).astype(np.int64).sum(0)
                got = spatial[g0:g1] + model.channel_level(stat, g, thresholds)[None]
                np.testing.assert_array_equal(got, expected[g0:g1, r][:, cols])
                decoded[g0:g1, r, cols] = sym[g0:g1, r, cols]


@pytest.mark.parametrize("model", [ContextModel(), ContextModel(groups=3, spatial_levels=2, channel_levels=3)])
def test_band_contexts_in_model_order_match_the_whole_latents(model):
    """The encoder's bounded-memory path: contexts of each band of rows, read through the channel
    order from the model-order latent, are those of the whole reordered latent; the plan built
    band by band from them (no cache: every band planned again) codes the same bytes."""
    from encdist.codec.backward import BackwardAdaptation

    sym = _spread_symbols(C=12, h=11, w=9, seed=4)
    order = np.random.default_rng(0).permutation(12)
    s = sym[order]
    t = model.thresholds(s)
    np.testing.assert_array_equal(model.thresholds(sym, order), t)
    whole = model.contexts(s, t, 2)
    for r0, r1 in ((0, 1), (0, 4), (3, 7), (10, 11), (0, 11)):
        np.testing.assert_array_equal(model.contexts(sym, t, 2, (r0, r1), order), whole[:, r0:r1])
    K = 2 * int(np.abs(sym).max()) + 2
    freqs = np.full((1, 12 * model.num_contexts, K), (1 << 16) // K)
    freqs[..., 0] += (1 << 16) - freqs.sum(-1)
    lo, length = np.full(12, -int(np.abs(sym).max())), np.full(12, K - 1)
    ref = BackwardAdaptation(budget=1 << 30).plan(s, freqs, lo, length, lambda r0, r1: whole[:, r0:r1], model.num_contexts)
    small = BackwardAdaptation(budget=20_000)
    banded = small.plan(sym, freqs, lo, length, lambda r0, r1: model.contexts(sym, t, 2, (r0, r1), order),
                        model.num_contexts, order)
    assert len(banded.bands) > 1 and banded._cache is None
    np.testing.assert_allclose(banded.bits, ref.bits, rtol=1e-12)  # float sums, in another order
    use = np.zeros(12, dtype=np.int64)
    assert banded.encode(use) == ref.encode(use)


def test_context_model_fields():
    m = ContextModel()
    assert m.num_contexts == m.spatial_levels * m.channel_levels
    assert m.num_thresholds == (m.groups - 1) * (m.channel_levels - 1)
    b = m.group_bounds(192)
    assert b[0] == 0 and b[-1] == 192 and all(x < y for x, y in zip(b, b[1:])) and len(b) == m.groups + 1
    assert m.group_bounds(3) == [0, 1, 2, 3]  # fewer channels than groups: one channel each
    t = m.thresholds(_spread_symbols())
    assert t.shape == (m.groups - 1, m.channel_levels - 1) and (np.diff(t, axis=1) >= 0).all()
    data = m.pack_thresholds(t)
    back, rest = m.unpack_thresholds(data + b"xy")
    np.testing.assert_array_equal(back, t)
    assert rest == b"xy"
    with pytest.raises(BitstreamError, match="context thresholds"):
        m.unpack_thresholds(data[:-1])
    for bad in ({"groups": 0}, {"spatial_levels": 9}, {"channel_levels": 2.5}, {"decay": 2.0}, {"alpha": 0}):
        with pytest.raises(ValueError):
            ContextModel(**bad)
    no = ContextModel(groups=1, spatial_levels=1, channel_levels=1)
    assert no.num_contexts == 1 and no.num_thresholds == 0 and no.pack_thresholds(no.thresholds(_spread_symbols())) == b""


def test_thresholds_field_is_compact_exact_and_bounded():
    """Exp-Golomb steps: the encoder's thresholds round-trip in fewer bytes than two each; any bytes parse or are refused."""
    m = ContextModel()
    rng = np.random.default_rng(3)
    for scale in (0.3, 1.0, 3.0):
        t = m.thresholds(np.round(rng.laplace(size=(64, 8, 12)) * scale).astype(np.int64))
        data = m.pack_thresholds(t)
        assert len(data) < 2 * m.num_thresholds
        back, rest = m.unpack_thresholds(data + b"z")
        np.testing.assert_array_equal(back, t)
        assert rest == b"z"
    top = np.full((m.groups - 1, m.channel_levels - 1), 0xFFFF)
    np.testing.assert_array_equal(m.unpack_thresholds(m.pack_thresholds(top))[0], top)
    with pytest.raises(ValueError, match="must not decrease"):
        m.pack_thresholds(top - np.arange(top.size).reshape(top.shape))
    for _ in range(500):
        data = rng.integers(0, 256, size=int(rng.integers(0, 24))).astype(np.uint8).tobytes()
        try:
            t, _ = m.unpack_thresholds(data)
        except BitstreamError as e:
            assert "\n" not in str(e)
        else:
            assert t.shape == top.shape and (t >= 0).all() and (t <= 0xFFFF).all()


def test_channel_order_is_a_permutation_from_the_integer_tables():
    codec = real_codec()
    order = codec._channel_order()
    assert sorted(order.tolist()) == list(range(192))
    cdf, lengths, _ = (t.numpy() for t in (codec.entropy_bottleneck._quantized_cdf, codec.entropy_bottleneck._cdf_length,
                                          codec.entropy_bottleneck._offset))
    np.testing.assert_array_equal(channel_order(cdf, lengths), order)
    # widest first: the first channel's largest frequency is the smallest
    top = [int(np.diff(cdf[c, : lengths[c]]).max()) for c in (order[0], order[-1])]
    assert top[0] <= top[1]


@pytest.fixture(scope="module")
def fitted():
    codec = fitted_codec()  # fitted on flipped and shifted copies of the fixture's latent, not the coded one
    return codec, real_latent(codec)


def test_fit_is_integer_and_deterministic(fitted):
    codec, y = fitted
    w = codec.context_weights
    assert w.dtype == torch.int32 and (w >= 1).all() and codec.contexts_fitted
    again = real_codec()
    again.fit_contexts([torch.flip(y, dims=[-1]), torch.flip(y, dims=[-2]), torch.roll(y, 5, dims=-1)])
    assert torch.equal(again.context_weights, w)
    sums = w.long().sum(-1)
    assert (sums - (1 << 24)).abs().max() <= codec.num_bins  # about 2**24 per row


@pytest.mark.parametrize("way", ["default", "static_context"])
def test_round_trip_is_exact_and_context_coded(fitted, way):
    codec, y = fitted
    with torch.no_grad():
        enc = codec.compress(y, way)
        dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    assert torch.equal(symbols_of(codec, dec["y_hat"]), symbols_of(codec, y))
    mode = enc["strings"][1][0][0]
    assert mode & bs.MODE_CONTEXT and mode & bs.MODE_BACKWARD
    # same bytes twice
    assert codec.compress(y, way)["strings"] == enc["strings"]


def test_contexts_cost_fewer_bits_than_one_table_per_channel(fitted):
    codec, y = fitted
    size = {w: sum(len(s) for ss in codec.compress(y, w)["strings"] for s in ss) for w in ("default", "backward", "static")}
    assert size["default"] < size["backward"] < size["static"], size


def test_training_rate_models_the_context_coder(fitted):
    """``forward``'s y rate under the context coder is the y string's size within 1 %."""
    codec, y = fitted
    for way in ("default", "static_context"):
        with torch.no_grad():
            est = -torch.log2(codec(y, way)["likelihoods"]["y"]).sum().item()
            real = 8 * len(codec.compress(y, way)["strings"][0][0])
        assert abs(est - real) <= 0.01 * real + 64, (way, est, real)
    codec.train()
    try:
        p = codec.target_distribution(y).detach().requires_grad_(True)
        out = codec(y, "default")
        out["likelihoods"]["y"].log().sum().neg().backward()
        grads = codec.pdf_model.g_s[-2].weight.grad
        assert grads is not None and grads.abs().sum() > 0  # p̂ trains through the context coder's start
    finally:
        codec.eval()
        codec.zero_grad(set_to_none=True)
    del p


def test_stream_of_other_context_tables_is_refused(fitted):
    codec, y = fitted
    enc = codec.compress(y, "default")
    other = real_codec()  # unfitted context tables
    with pytest.raises(BitstreamError, match="checksum"):
        other.decompress(enc["strings"], enc["shape"])
    # a stream's thresholds cut short: refused in one line
    pdf = enc["strings"][1][0]
    with pytest.raises(BitstreamError) as info:
        codec.decompress([enc["strings"][0], [pdf[: bs.HEADER_SIZE + 3]]], enc["shape"])
    assert "\n" not in str(info.value)
    # MODE_CONTEXT without MODE_BACKWARD is not a mode
    with pytest.raises(BitstreamError, match="unknown coding mode"):
        bs.parse_side(bytes([bs.MODE_CONTEXT]) + pdf[1:], 192, 256, contexts=codec.context_model)


def test_unfitted_tables_still_code_exactly():
    codec = real_codec()
    y = real_latent(codec)
    assert not codec.contexts_fitted
    enc = codec.compress(y, "default")
    assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])


def test_old_checkpoints_load_with_unfitted_tables(fitted):
    codec, _ = fitted
    sd = {k: v for k, v in codec.state_dict().items() if k != "context_weights"}
    fresh = real_codec()
    fresh.load_state_dict(sd)
    assert not fresh.contexts_fitted
    fresh.load_state_dict(codec.state_dict())
    assert torch.equal(fresh.context_weights, codec.context_weights)


def test_context_tables_follow_their_weights():
    """The decoder's context tables are kept between images only while the integers they come from are the same."""
    from encdist.codec.coding import static_tables

    codec = fitted_codec()
    static = static_tables(codec.entropy_bottleneck)
    first = codec._context_tables(static)
    assert codec._context_tables(static) is first and not first[0].flags.writeable
    w = codec.context_weights
    row = int(torch.nonzero(w.sum(-1))[0])
    with torch.no_grad():
        w[row] = w[row].flip(0)  # same buffer, other integers: other tables
    again = codec._context_tables(static)
    assert again is not first and not np.array_equal(again[0], first[0])
    y = real_latent(codec)
    enc = codec.compress(y, "default")
    assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])


def test_encoder_memory_does_not_grow_with_the_image_height():
    """With contexts, the encoder plans and codes a band of rows at a time once its budget is spent:
    its peak (numpy's allocations, tracemalloc; the symbols and the bytes aside) for a latent 8x
    taller stays within 1.5x. (It kept every band's counts, and every symbol's context, before.)"""
    import tracemalloc

    from encdist.codec.backward import BackwardAdaptation

    model, C, R = ContextModel(), 16, 8
    X = model.num_contexts
    K = 2 * R + 2
    order = np.arange(C)[::-1].copy()
    freqs = np.full((1, C * X, K), (1 << 16) // K)
    freqs[..., 0] += (1 << 16) - freqs.sum(-1)
    lo, length = np.full(C, -R), np.full(C, K - 1)

    def peak(h):
        sym = np.clip(_spread_symbols(C=C, h=h, w=24, seed=1), -R, R)
        t = model.thresholds(sym, order)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            plan = BackwardAdaptation(budget=200_000).plan(
                sym, freqs, lo, length, lambda r0, r1: model.contexts(sym, t, 2, (r0, r1), order), X, order)
            out = plan.encode(np.zeros(C, dtype=np.int64))
            return tracemalloc.get_traced_memory()[1] - base - len(out)
        finally:
            tracemalloc.stop()

    assert peak(256) < 1.5 * peak(32)
