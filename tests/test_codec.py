"""Tests of the adaptive latent codec, the three registered models and the loss.

Ulhaq & Bajić, "Learned Compression of Encoding Distributions", ICIP 2024.
Small untrained modules with fixed seeds (tensorflow-compression style); the
one "trained" component is a pdf model fitted for a few dozen Adam steps on
histograms of synthetic Laplacian latents, so that rates are realistic.
"""

from __future__ import annotations

import io
import math
import random
import struct

import pytest
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.models import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior

import encdist  # noqa: F401  (registers the models)
from compressai.registry import CRITERIONS, MODELS
from encdist.errors import BitstreamError, CheckpointError, ConfigError
from encdist.latent_codecs import (
    MODE_ADAPTIVE,
    MODE_BACKWARD,
    MODE_CONTEXT,
    MODE_MIXED,
    MODE_STATIC,
    AdaptiveEntropyBottleneckLatentCodec,
)
from encdist.codec.bitstream import pack_mask, unpack_mask
from encdist.codec.coding import mixed_tables
from encdist.training.losses import AdaptiveRateDistortionLoss
from conftest import fit_pdf_model

MODEL_NAMES = ["bmshj2018-factorized-pdf", "bmshj2018-hyperprior-pdf", "mbt2018-mean-pdf"]
STOCK = {
    "bmshj2018-factorized-pdf": FactorizedPrior,
    "bmshj2018-hyperprior-pdf": ScaleHyperprior,
    "mbt2018-mean-pdf": MeanScaleHyperprior,
}
MODES = {
    "backward-fallback": dict(fallback_static=True),  # the defaults (with contexts)
    "backward": dict(fallback_static=False),  # with contexts
    "backward-nocontext": dict(fallback_static=False, adapt_contexts=False),
    "adaptive-fallback": dict(fallback_static=True, backward_adaptation=False),
    "adaptive": dict(fallback_static=False, backward_adaptation=False),  # the paper's codec
    "ideal": dict(ideal=True, fallback_static=False),
    "static": dict(enable_adaptive=False),
}
HEADER = 5  # side stream header: 1 mode byte + CRC32


# ====================================================================== helpers
def pad(x: torch.Tensor, multiple: int):
    """Pad evenly (left/right, top/bottom) to a multiple, as CompressAI-Trainer does; returns the padding."""
    H, W = x.shape[-2:]
    ph, pw = (-H) % multiple, (-W) % multiple
    p = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, p, mode="constant", value=0), p


def crop(x: torch.Tensor, p) -> torch.Tensor:
    left, right, top, bottom = p
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


def images(n, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish random images (so that the latents vary from image to image)
    x = torch.rand(n, 3, max(H // 8, 1), max(W // 8, 1), generator=g)
    x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.randn(n, 3, H, W, generator=g)).clamp(0, 1)


def latent_of(model, x):
    """The tensor the adaptive codec codes: y (factorized) or the hyper-latent z."""
    y = model.g_a(x)
    if isinstance(model, MeanScaleHyperprior):  # (a subclass of ScaleHyperprior)
        return model.h_a(y)
    if isinstance(model, ScaleHyperprior):
        return model.h_a(torch.abs(y))
    return y


def spread(model, x, target=5.0):
    """Rescale the last layer of g_a (and h_a) so that untrained latents span a realistic range,
    including values outside the static bottleneck's support (escape-coded)."""
    with torch.no_grad():
        for name in ["g_a", "h_a"]:
            if hasattr(model, name):
                f = target / latent_of(model, x).std() if name == "h_a" else target / model.g_a(x).std()
                layer = getattr(model, name)[-1]
                layer.weight.mul_(f)
                layer.bias.mul_(f)


def make_model(name, N, M, x=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = MODELS[name](N=N, M=M, **kwargs).eval()
    if x is not None:
        spread(model, x)
    model.update()
    return model


def nbytes(strings) -> int:
    return sum(len(s) for lst in strings for s in lst)


def bits_estimate(likelihoods) -> dict:
    return {k: float(-torch.log2(v.double()).sum()) for k, v in likelihoods.items()}


# ====================================================================== round trips
ROUND_TRIP_CASES = [
    # batch, (H, W) before padding, N, M
    (1, (97, 131), 16, 16),
    (3, (64, 64), 48, 48),
    (3, (97, 131), 8, 192),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_round_trip(name, mode):
    kwargs = MODES[mode]
    for n, (H, W), N, M in ROUND_TRIP_CASES:
        x0 = images(n, H, W, seed=N + M)
        x, p = pad(x0, 64)
        model = make_model(name, N, M, x, **kwargs)
        codec = model.adaptive_codec
        with torch.no_grad():
            out = model(x)
            enc = model.compress(x)
            dec = model.decompress(enc["strings"], enc["shape"])
            # the codec on its own: decoded latent == encoder's quantized latent == forward's y_hat
            lat = latent_of(model, x)
            cenc = codec.compress(lat)
            cdec = codec.decompress(cenc["strings"], cenc["shape"])
            fwd = codec(lat)

        assert torch.equal(cdec["y_hat"], cenc["y_hat"])
        assert torch.equal(fwd["y_hat"], cenc["y_hat"])
        assert cenc["shape"] == tuple(lat.shape[-2:])
        # the model's strings are the codec's (plus the gaussian y strings for hyperpriors)
        assert enc["strings"][-2:] == cenc["strings"]
        assert all(len(lst) == n for lst in enc["strings"])

        x_hat = dec["x_hat"]
        assert x_hat.shape == x.shape
        assert torch.equal(x_hat, out["x_hat"].clamp(0, 1)), f"{name}/{mode}: decoded image differs from forward"
        assert crop(x_hat, p).shape == x0.shape

        y_strings, pdf_strings = cenc["strings"]
        if mode == "static":  # the header alone: MODE_STATIC and the checksum of the symbols
            assert all(len(s) == HEADER and s[0] == MODE_STATIC for s in pdf_strings)
        else:
            for s in pdf_strings:
                assert len(s) >= HEADER and s[0] & ~(MODE_BACKWARD | MODE_CONTEXT) in (MODE_STATIC, MODE_ADAPTIVE, MODE_MIXED)
                if mode in ("adaptive", "ideal"):
                    assert s[0] == MODE_ADAPTIVE and len(s) > HEADER
                if mode == "backward":
                    assert s[0] == MODE_ADAPTIVE | MODE_BACKWARD | MODE_CONTEXT and len(s) > HEADER + 1
                if mode == "backward-nocontext":
                    assert s[0] == MODE_ADAPTIVE | MODE_BACKWARD and len(s) > HEADER + 1
                if mode == "adaptive-fallback":
                    assert not s[0] & MODE_BACKWARD


def test_batch_independence():
    """Each image's strings do not depend on the other images of the batch (both directions)."""
    x = images(3, 64, 128, seed=5)
    model = make_model("bmshj2018-factorized-pdf", 16, 48, x, fallback_static=False)
    with torch.no_grad():
        enc = model.compress(x)
        for i in range(3):
            one = model.compress(x[i : i + 1])
            assert [lst[0] for lst in one["strings"]] == [lst[i] for lst in enc["strings"]]
        full = model.decompress(enc["strings"], enc["shape"])["x_hat"]
        for i in range(3):
            single = model.decompress([[lst[i]] for lst in enc["strings"]], enc["shape"])["x_hat"]
            torch.testing.assert_close(single[0], full[i], rtol=0, atol=1e-6)


def test_forward_outputs_and_training_mode_shapes():
    x = images(2, 64, 64, seed=6)
    model = make_model("bmshj2018-factorized-pdf", 16, 48, x)
    model.train()
    out = model(x)
    lk = out["likelihoods"]
    assert set(lk) == {"y", "pdf"}
    assert lk["y"].shape == (2, 48, 4, 4)
    pm = model.adaptive_codec.pdf_model
    assert lk["pdf"].shape == (2, pm.M, pm.latent_length)
    assert out["p"].shape == out["p_hat"].shape == (2, 48, 256)
    torch.testing.assert_close(out["p_hat"].sum(-1), torch.ones(2, 48))
    assert ((lk["y"] > 0) & (lk["y"] <= 1)).all()
    assert model(x, with_x_hat=False)["x_hat"] is None


# ====================================================================== a realistic latent, a fitted pdf model
C_REAL, H_REAL, W_REAL = 192, 32, 48  # a Kodak-sized latent of bmshj2018-factorized (768x512 / 16)


def laplacian_latents(n, gen, base_scale, medians, h=H_REAL, w=W_REAL):
    """Per-channel Laplacians whose scale varies per image (the amortization gap the method closes)."""
    C = base_scale.numel()
    s = base_scale.view(1, C, 1, 1) * torch.exp(torch.empty(n, C, 1, 1).uniform_(-0.7, 0.7, generator=gen))
    u = torch.rand(n, C, h, w, generator=gen).clamp(1e-7, 1 - 1e-7) - 0.5
    return medians.view(1, C, 1, 1) - s * torch.sign(u) * torch.log1p(-2 * u.abs())


@pytest.fixture(scope="module")
def fitted():
    """A bmshj2018-factorized-pdf model whose pdf model is fitted (60 Adam steps) on Laplacian histograms.

    The paper's codec: backward adaptation off, so rates can be compared with ``forward``'s estimate.
    """
    g = torch.Generator().manual_seed(0)
    base_scale = torch.exp(torch.empty(C_REAL).uniform_(math.log(0.15), math.log(8.0), generator=g))
    medians = torch.empty(C_REAL).uniform_(-2, 2, generator=g)
    torch.manual_seed(0)
    model = MODELS["bmshj2018-factorized-pdf"](N=8, M=C_REAL, fallback_static=False, backward_adaptation=False)
    codec = model.adaptive_codec
    with torch.no_grad():  # a static support wide enough that nothing is escape-coded
        q = codec.entropy_bottleneck.quantiles
        q[:, 0, 0], q[:, 0, 1], q[:, 0, 2] = medians - 90, medians, medians + 90
    with torch.no_grad():
        pool = torch.cat([codec.target_distribution(laplacian_latents(8, g, base_scale, medians)) for _ in range(4)])
    fit_pdf_model(codec.pdf_model, pool, H_REAL * W_REAL, batch=8, generator=g)
    model.eval()
    model.update(force=True)
    y = laplacian_latents(2, torch.Generator().manual_seed(123), base_scale, medians)
    return model, y


def test_rate_honesty(fitted, record_property):
    model, y = fitted
    codec = model.adaptive_codec
    with torch.no_grad():
        out = codec(y)
        enc = codec.compress(y)
    est = bits_estimate(out["likelihoods"])
    y_bits = 8 * sum(map(len, enc["strings"][0]))
    pdf_bits = 8 * sum(map(len, enc["strings"][1]))
    total, est_total = y_bits + pdf_bits, est["y"] + est["pdf"]
    overhead = total / est_total - 1
    record_property("rate_overhead_percent", round(100 * overhead, 3))
    record_property("bytes_y_pdf", (y_bits // 8, pdf_bits // 8))
    print(f"\nrate honesty: estimate y={est['y']:.0f} pdf={est['pdf']:.0f} bits; "
          f"actual y={y_bits} pdf={pdf_bits} bits; overhead {100 * overhead:.3f} %")
    assert total >= est_total
    assert overhead < 0.02
    assert pdf_bits >= est["pdf"]
    assert pdf_bits < 0.01 * total  # the side stream is a small fraction of the rate
    # the fitted p̂ is a useful distribution: within 10 % of the ideal (entropy) rate
    p = out["p"].double()
    entropy = float(-(p * torch.log2(p.clamp_min(1e-300))).sum()) * H_REAL * W_REAL
    assert est["y"] < 1.10 * entropy
    # and it round-trips
    dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    assert all(s[0] == MODE_ADAPTIVE for s in enc["strings"][1])


def test_same_input_same_bytes_and_state_dict_round_trip(fitted):
    model, y = fitted
    with torch.no_grad():
        a = model.adaptive_codec.compress(y)["strings"]
        b = model.adaptive_codec.compress(y.clone())["strings"]
    assert a == b

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(1234)  # different initialization: everything must come from the checkpoint
    fresh = MODELS["bmshj2018-factorized-pdf"](N=8, M=C_REAL, fallback_static=False, backward_adaptation=False)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    fresh.update()  # a no-op: the tables came with the state dict
    with torch.no_grad():
        c = fresh.adaptive_codec.compress(y)
        assert c["strings"] == a
        # the fresh model decodes the original model's strings
        d = fresh.adaptive_codec.decompress(a, c["shape"])
        assert torch.equal(d["y_hat"], c["y_hat"])
    # rebuilding the tables from the weights gives the same bytes too
    fresh.update(force=True)
    with torch.no_grad():
        assert fresh.adaptive_codec.compress(y)["strings"] == a


def test_ideal_mode_rate_is_the_empirical_entropy(fitted, record_property):
    model, y = fitted
    codec = AdaptiveEntropyBottleneckLatentCodec(model.adaptive_codec.entropy_bottleneck, ideal=True, fallback_static=False)
    codec.eval()
    with torch.no_grad():
        out = codec(y)
        enc = codec.compress(y)
        dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    p = out["p"].double()
    assert torch.equal(out["p_hat"], out["p"])
    entropy = float(-(p * torch.log2(p.clamp_min(1e-300))).sum()) * H_REAL * W_REAL
    est = bits_estimate(out["likelihoods"])
    assert est["pdf"] == 0
    assert est["y"] == pytest.approx(entropy, rel=1e-5)
    y_bits = 8 * sum(map(len, enc["strings"][0]))
    record_property("ideal_y_bits_vs_entropy", (y_bits, round(entropy)))
    assert entropy <= y_bits < 1.005 * entropy + 64 * len(y)


# ====================================================================== static mode == compressai
def test_static_codec_matches_entropy_bottleneck():
    torch.manual_seed(3)
    eb = EntropyBottleneck(24)
    eb.eval()
    eb.update()
    codec = AdaptiveEntropyBottleneckLatentCodec(eb, enable_adaptive=False).eval()
    y = torch.randn(3, 24, 7, 5) * 6  # some values outside the support: escape-coded
    enc = codec.compress(y)
    assert enc["strings"][0] == eb.compress(y)
    assert all(len(s) == HEADER and s[0] == MODE_STATIC for s in enc["strings"][1])
    dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], eb.decompress(enc["strings"][0], (7, 5)))
    # forward's rate estimate is the stock bottleneck's
    with torch.no_grad():
        torch.testing.assert_close(codec(y)["likelihoods"]["y"], eb(y)[1])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_static_model_matches_stock_compressai(name):
    N, M = 16, 48
    x, _ = pad(images(2, 97, 131, seed=7), 64)
    torch.manual_seed(11)
    stock = STOCK[name](N, M).eval()
    spread(stock, x)
    ours = MODELS[name](N=N, M=M, enable_adaptive=False).eval()
    adaptive = MODELS[name](N=N, M=M).eval()
    ours.load_pretrained_transforms(stock.state_dict())
    adaptive.load_pretrained_transforms(stock.state_dict())
    for m in (stock, ours, adaptive):
        m.update()
    with torch.no_grad():
        s_enc = stock.compress(x)
        o_enc = ours.compress(x)
        a_enc = adaptive.compress(x)
        s_dec = stock.decompress(s_enc["strings"], s_enc["shape"])["x_hat"]
        o_dec = ours.decompress(o_enc["strings"], o_enc["shape"])["x_hat"]
        a_dec = adaptive.decompress(a_enc["strings"], a_enc["shape"])["x_hat"]
    k = len(s_enc["strings"])  # 1 list (y) for the factorized prior, 2 (y, z) for hyperpriors
    # the y strings of hyperprior models carry the symbols' crc32 before CompressAI's bytes
    ours_stock = [o_enc["strings"][0]] if k == 1 else [[x[4:] for x in o_enc["strings"][0]], o_enc["strings"][1]]
    assert ours_stock == s_enc["strings"], "static strings differ from stock compressai"
    assert all(len(s) == HEADER and s[0] == MODE_STATIC for s in o_enc["strings"][k])
    assert tuple(o_enc["shape"]) == tuple(s_enc["shape"])
    assert torch.equal(o_dec, s_dec)
    # the adaptive model codes the same ŷ losslessly: the same image, whatever the rate
    assert torch.equal(a_dec, s_dec)


def test_factorized_strings_identical_to_stock_after_loading_updated_weights():
    """Stock model updated *before* its state dict is loaded: the CDF buffers travel too."""
    x = images(1, 64, 64, seed=8)
    torch.manual_seed(12)
    stock = FactorizedPrior(16, 48).eval()
    spread(stock, x)
    stock.update()
    ours = MODELS["bmshj2018-factorized-pdf"](N=16, M=48, enable_adaptive=False).eval()
    ours.load_pretrained_transforms(stock.state_dict())
    assert torch.equal(ours.entropy_bottleneck._quantized_cdf, stock.entropy_bottleneck._quantized_cdf)
    ours.update()
    with torch.no_grad():
        assert stock.compress(x)["strings"][0] == ours.compress(x)["strings"][0]


# ====================================================================== fallback to the static distribution
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fallback_never_larger_than_static(name):
    x, _ = pad(images(3, 97, 131, seed=9), 64)
    model = make_model(name, 16, 48, x, fallback_static=True)  # untrained pdf model
    static = make_model(name, 16, 48, x, enable_adaptive=False)
    with torch.no_grad():
        enc = model.compress(x)
        ref = static.compress(x)
    y_strings, pdf_strings = enc["strings"][-2:]
    s_strings = ref["strings"][-2]
    for y_s, pdf_s, s_s in zip(y_strings, pdf_strings, s_strings):
        assert len(y_s) + len(pdf_s) <= len(s_s) + HEADER
        if pdf_s[0] == MODE_STATIC:
            assert y_s == s_s and len(pdf_s) == HEADER
        else:
            assert pdf_s[0] & ~(MODE_BACKWARD | MODE_CONTEXT) in (MODE_STATIC, MODE_ADAPTIVE, MODE_MIXED) and len(pdf_s) > HEADER
    assert nbytes(enc["strings"]) <= nbytes(ref["strings"]) + HEADER * len(x)


@pytest.mark.parametrize("ideal", [True, False])
def test_fallback_choice_is_exact_on_borderline_latents(ideal):
    """Escape-heavy latents where the two table sets cost about the same: per image the chosen
    streams must never exceed the static stream plus the header, and both modes must occur."""
    C = 8
    modes = set()
    for trial in range(40):
        g = torch.Generator().manual_seed(trial)
        torch.manual_seed(trial)
        eb = EntropyBottleneck(C)
        with torch.no_grad():
            eb.quantiles[:, 0, 0], eb.quantiles[:, 0, 2] = -6, 6
        codec = AdaptiveEntropyBottleneckLatentCodec(eb, ideal=ideal, fallback_static=True).eval()
        static = AdaptiveEntropyBottleneckLatentCodec(eb, enable_adaptive=False).eval()
        eb.update(force=True)
        codec.pdf_model.entropy_bottleneck.update(force=True)
        h, w = 8 + trial % 5 * 4, 12
        s = torch.exp(torch.empty(1, C, 1, 1).uniform_(math.log(0.5), math.log(8), generator=g))
        u = torch.rand(1, C, h, w, generator=g) - 0.5
        y = torch.empty(1, C, 1, 1).uniform_(-4, 4, generator=g) - s * torch.sign(u) * torch.log1p(
            -2 * u.abs().clamp(max=0.4999)
        )
        with torch.no_grad():
            enc = codec.compress(y)
            ref = static.compress(y)
        chosen = len(enc["strings"][0][0]) + len(enc["strings"][1][0])
        modes.add(enc["strings"][1][0][0])
        if not ideal:
            assert chosen <= len(ref["strings"][0][0]) + HEADER, f"trial {trial}"
        assert torch.equal(codec.decompress(enc["strings"], enc["shape"])["y_hat"], enc["y_hat"])
    if ideal:
        # The ideal bound sends p at zero cost: it never falls back to the static tables.
        assert modes == {MODE_ADAPTIVE}


def test_fallback_picks_adaptive_when_it_pays(fitted):
    model, y = fitted
    codec = model.adaptive_codec
    with torch.no_grad():
        enc = codec.compress(y, codec.options.replace(fallback_static=True))
        static = AdaptiveEntropyBottleneckLatentCodec(codec.entropy_bottleneck, enable_adaptive=False).compress(y)
    assert all(s[0] in (MODE_ADAPTIVE, MODE_MIXED) for s in enc["strings"][1])
    assert nbytes(enc["strings"]) < nbytes(static["strings"])
    assert nbytes(enc["strings"]) <= nbytes(codec.compress(y)["strings"])  # never above the adaptive-only codec


def test_per_channel_fallback_codes_each_channel_with_its_cheaper_table(fitted, record_property):
    """Half the channels follow the static density, half are far from it and from what the pdf
    model learnt: the encoder mixes tables per channel (MODE_MIXED) and beats both pure modes."""
    model, y = fitted
    codec = model.adaptive_codec
    eb = codec.entropy_bottleneck
    C = codec.channels
    with torch.no_grad():
        static_like = eb.quantize(y, "dequantize", eb._get_medians().view(1, -1, 1, 1))
        # channels 0, 2, 4, ...: replaced by a very narrow (almost constant) distribution, which
        # the static density codes poorly; the others keep their Laplacian.
        odd = torch.arange(C) % 2 == 1
        narrow = eb._get_medians().view(1, -1, 1, 1) + (torch.rand_like(y) < 0.02).float()
        y2 = torch.where(odd.view(1, -1, 1, 1), static_like, narrow)
    pure = {}
    for fb in (False, True):
        with torch.no_grad():
            pure[fb] = codec.compress(y2, codec.options.replace(fallback_static=fb))
    static = AdaptiveEntropyBottleneckLatentCodec(eb, enable_adaptive=False).compress(y2)
    enc = pure[True]
    modes = [s[0] for s in enc["strings"][1]]
    record_property("modes_and_bytes", (modes, nbytes(enc["strings"]), nbytes(pure[False]["strings"]), nbytes(static["strings"])))
    assert MODE_MIXED in modes
    assert nbytes(enc["strings"]) <= min(nbytes(pure[False]["strings"]), nbytes(static["strings"]) + HEADER * len(y))
    dec = codec.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    # a flipped channel flag is detected, not decoded into a wrong latent
    i = modes.index(MODE_MIXED)
    bad = [list(enc["strings"][0]), list(enc["strings"][1])]
    s = bytearray(bad[1][i])
    s[HEADER] ^= 0x80
    bad[1][i] = bytes(s)
    with pytest.raises(BitstreamError):
        codec.decompress(bad, enc["shape"])


def test_refinement_never_costs_more_round_trips_and_is_deterministic(fitted, record_property):
    """Encoder-side refinement of the side latent: lower estimated cost, same decoder, same bytes twice."""
    model, y = fitted
    codec = model.adaptive_codec
    pm = codec.pdf_model
    num_samples = y.shape[-2] * y.shape[-1]
    with torch.no_grad():
        p = codec.target_distribution(y)
        med = pm.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1)
        v0 = pm.g_a(p)
        v0 = torch.round(v0 - med) + med
    grads = [None if q.grad is None else q.grad.clone() for q in pm.parameters()]
    v = pm.refine(p, pm.g_a(p), num_samples, steps=25)
    counts = p * num_samples
    cost = lambda v: [float(t) for t in (lambda by, bv: by.sum(-1) + bv)(*pm.coding_cost(v, counts))]  # noqa: E731
    before, after = cost(v0), cost(v)
    record_property("refinement_estimated_bits", (before, after))
    assert all(a <= b for a, b in zip(after, before))
    assert sum(after) < sum(before)  # the fitted pdf model is not optimal per image: refinement finds better
    assert torch.allclose(torch.round(v - med) + med, v, atol=1e-5)  # a quantized latent
    # no trace left on the model: parameters still trainable, their gradients untouched
    assert all(q.requires_grad for q in pm.parameters())
    assert all((g is None and q.grad is None) or torch.equal(g, q.grad) for g, q in zip(grads, pm.parameters()))

    plain = codec.compress(y)
    refined = codec.options.replace(refine_steps=25)
    a = codec.compress(y, refined)
    b = codec.compress(y.clone(), refined)
    assert a["strings"] == b["strings"]
    # the decoder does not know about refinement
    assert torch.equal(codec.decompress(a["strings"], a["shape"])["y_hat"], a["y_hat"])
    assert torch.equal(a["y_hat"], plain["y_hat"])
    record_property("refinement_bytes", (nbytes(plain["strings"]), nbytes(a["strings"])))
    assert nbytes(a["strings"]) <= nbytes(plain["strings"]) * 1.002


@pytest.mark.parametrize("C", [1, 5, 12, 96])
def test_channel_flags_and_mixed_tables(C):
    """Flags round-trip for any channel count; mixed tables take each row from the flagged table set."""
    torch.manual_seed(C)
    use = torch.rand(C) < 0.5
    packed = pack_mask(use.numpy())
    assert len(packed) == math.ceil(C / 8)
    assert torch.equal(torch.from_numpy(unpack_mask(packed + b"payload", C)), use)
    with pytest.raises(BitstreamError, match="channel flags"):
        unpack_mask(packed[:-1], C)
    a = (torch.randint(0, 99, (C, 7)), torch.full((C,), 7), torch.full((C,), -3))
    s_ = (torch.randint(0, 99, (C, 4)), torch.full((C,), 4), torch.full((C,), -1))
    cdf, lengths, offsets = mixed_tables(use, a, s_)
    for c in range(C):
        src = a if use[c] else s_
        w = src[0].shape[-1]
        assert torch.equal(cdf[c, :w], src[0][c].int()) and (cdf[c, w:] == 0).all()
        assert int(lengths[c]) == int(src[1][c]) and int(offsets[c]) == int(src[2][c])


def test_refinement_config_is_checked():
    eb = EntropyBottleneck(4)
    for bad in (dict(refine_steps=-1), dict(refine_lr=0.0)):
        with pytest.raises(ValueError, match="refine"):
            AdaptiveEntropyBottleneckLatentCodec(eb, **bad)


# ====================================================================== bad input
def _one_line_value_error(fn, match):
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bad_images_raise_value_error(name):
    model = make_model(name, 16, 16)
    for fn in (model.forward, model.compress):
        _one_line_value_error(lambda: fn(torch.rand(1, 1, 64, 64)), "3 colour channels")
        _one_line_value_error(lambda: fn(torch.rand(1, 4, 64, 64)), "3 colour channels")
        _one_line_value_error(lambda: fn(torch.rand(3, 64, 64)), r"shape \(n, 3, H, W\)")
        _one_line_value_error(lambda: fn(torch.rand(1, 1, 3, 64, 64)), r"shape \(n, 3, H, W\)")
        _one_line_value_error(lambda: fn([[0.0]]), r"shape \(n, 3, H, W\)")
        _one_line_value_error(lambda: fn(torch.rand(1, 3, 60, 64)), "not a multiple")


def test_bad_latents_raise_value_error():
    codec = AdaptiveEntropyBottleneckLatentCodec(channels=16).eval()
    codec.entropy_bottleneck.update()
    codec.pdf_model.entropy_bottleneck.update()
    for fn in (codec.forward, codec.compress):
        _one_line_value_error(lambda: fn(torch.rand(1, 8, 4, 4)), "8 channels, the codec expects 16")
        _one_line_value_error(lambda: fn(torch.rand(16, 4, 4)), r"shape \(n, C, h, w\)")
        _one_line_value_error(lambda: fn(torch.rand(1, 16, 4)), r"shape \(n, C, h, w\)")
    with pytest.raises(ValueError, match="entropy_bottleneck or channels"):
        AdaptiveEntropyBottleneckLatentCodec()


#: Models whose streams the corruption tests feed back: backward adaptation on (the default) for each
#: model, and the paper's fixed-table codec.
STREAM_KEYS = MODEL_NAMES + ["bmshj2018-factorized-pdf:forward"]


@pytest.fixture(scope="module")
def streams():
    """Per key: an adaptive model (fallback off, so the side payload is non-empty) and the strings of 2 images."""
    out = {}
    x = images(2, 64, 64, seed=10)
    for key in STREAM_KEYS:
        name, _, variant = key.partition(":")
        model = make_model(name, 16, 16, x, fallback_static=False, backward_adaptation=variant != "forward")
        with torch.no_grad():
            enc = model.compress(x)
        out[key] = (model, enc, x)
    return out


def _decode(model, strings, shape):
    with torch.no_grad():
        return model.decompress(strings, shape)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", STREAM_KEYS)
def test_corrupt_side_streams_raise_bitstream_error(streams, name):
    model, enc, _ = streams[name]
    strings, shape = enc["strings"], enc["shape"]
    _decode(model, strings, shape)  # the originals decode
    side = len(strings) - 1
    pdf = strings[side][0]
    assert len(pdf) > HEADER + 8

    def with_pdf(s):
        new = [list(lst) for lst in strings]
        new[side][0] = s
        return new

    # truncated side stream (every length), empty, header only
    for n in range(len(pdf)):
        with pytest.raises(BitstreamError):
            _decode(model, with_pdf(pdf[:n]), shape)
    with pytest.raises(BitstreamError):
        _decode(model, with_pdf(pdf + b"\x00"), shape)
    # bit flips anywhere in the side stream
    rng = random.Random(0)
    positions = list(range(len(pdf) * 8))
    for i in rng.sample(positions, min(80, len(positions))):
        b = bytearray(pdf)
        b[i // 8] ^= 1 << (i % 8)
        with pytest.raises(BitstreamError):
            _decode(model, with_pdf(bytes(b)), shape)
    # unknown mode bytes, and the backward-adaptation and context flags toggled
    for mode in (7, 0x40 | pdf[0], 0x80 | pdf[0], pdf[0] ^ MODE_BACKWARD, pdf[0] ^ MODE_CONTEXT):
        with pytest.raises(BitstreamError):
            _decode(model, with_pdf(bytes([mode]) + pdf[1:]), shape)
    if pdf[0] & MODE_BACKWARD:
        # a symbol radius beyond the histogram's bins
        with pytest.raises(BitstreamError, match="radius"):
            _decode(model, with_pdf(pdf[:HEADER] + bytes([255]) + pdf[HEADER + 1 :]), shape)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", STREAM_KEYS)
def test_corrupt_or_swapped_coded_streams_raise_bitstream_error(streams, name):
    model, enc, _ = streams[name]
    strings, shape = enc["strings"], enc["shape"]
    k = len(strings) - 2  # the adaptively coded stream (y for the factorized prior, z for hyperpriors)
    coded = strings[k][0]
    assert strings[k][0] != strings[k][1]

    def with_coded(s0, s1=None):
        new = [list(lst) for lst in strings]
        new[k][0] = s0
        if s1 is not None:
            new[k][1] = s1
        return new

    # swapped between the two images
    with pytest.raises(BitstreamError):
        _decode(model, with_coded(strings[k][1], strings[k][0]), shape)
    # the other image's stream in place of this one
    with pytest.raises(BitstreamError):
        _decode(model, with_coded(strings[k][1]), shape)
    # truncated / extended
    for n in [0, 1, 7, 8, len(coded) // 2, len(coded) - 1]:
        with pytest.raises(BitstreamError):
            _decode(model, with_coded(coded[:n]), shape)
    with pytest.raises(BitstreamError):
        _decode(model, with_coded(coded + b"\x00\x00\x00\x00"), shape)
    # bit flips: an error, or (a flip in the rANS state's slack, which tiny streams have) the very same latent
    rng = random.Random(1)
    original = _decode(model, strings, shape)["x_hat"]
    errors = 0
    for _ in range(40):
        b = bytearray(coded)
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
        try:
            assert torch.equal(_decode(model, with_coded(bytes(b)), shape)["x_hat"], original)
        except BitstreamError:
            errors += 1
    assert errors >= 30


@pytest.mark.timeout(60)
def test_wrong_string_structure_raises_bitstream_error(streams):
    model, enc, _ = streams["bmshj2018-factorized-pdf"]
    strings, shape = enc["strings"], enc["shape"]
    with pytest.raises(BitstreamError):
        _decode(model, strings[:1], shape)
    with pytest.raises(BitstreamError):
        _decode(model, strings + [[b""]], shape)
    with pytest.raises(BitstreamError):
        _decode(model, [strings[0], strings[1][:1]], shape)
    with pytest.raises(BitstreamError):
        _decode(model, strings, (0, 4))
    with pytest.raises(BitstreamError):
        _decode(model, strings, (4,))
    hp_model, hp_enc, _ = streams["bmshj2018-hyperprior-pdf"]
    with pytest.raises(BitstreamError):
        _decode(hp_model, hp_enc["strings"][1:], hp_enc["shape"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "other",
    [dict(pdf_model=dict(N=8)), dict(pdf_model=dict(M=8)), dict(num_bins=128), dict(pdf_model=dict(kernel_size=7)),
     dict(pdf_model=dict(groups=4)), dict(pdf_model=dict(num_downsample=2)), dict(ideal=True),
     dict(adapt_alpha=8), dict(adapt_decay=0.5), dict(adapt_phases=1)],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_strings_of_another_configuration_raise_bitstream_error(streams, other):
    model, enc, x = streams["bmshj2018-factorized-pdf"]
    torch.manual_seed(0)
    decoder = MODELS["bmshj2018-factorized-pdf"](N=16, M=16, fallback_static=False, **other).eval()
    # same transforms and static bottleneck: only the distribution codec's configuration differs
    decoder.load_pretrained_transforms(
        {k: v for k, v in model.state_dict().items() if not k.startswith("adaptive_codec.pdf_model.")}
    )
    decoder.update()
    with pytest.raises(BitstreamError, match="another configuration"):
        _decode(decoder, enc["strings"], enc["shape"])


@pytest.mark.timeout(60)
def test_forged_checksums_still_decode_safely(streams):
    """Garbage payloads reach the rANS decoder (the checksum is verified on the decoded symbols): no crash or hang."""
    model, enc, _ = streams["bmshj2018-factorized-pdf"]
    codec = model.adaptive_codec
    y_s, pdf_s = enc["strings"][0][0], enc["strings"][1][0]
    rng = random.Random(2)
    outcomes = []
    for trial in range(24):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 8, 9, 16, 40, 200])))
        y_bad = y_s if trial % 2 else bytes(rng.getrandbits(8) for _ in range(len(y_s)))
        for mode in (MODE_ADAPTIVE, MODE_STATIC, MODE_ADAPTIVE | MODE_BACKWARD, MODE_STATIC | MODE_BACKWARD):
            forged = struct.pack(">BI", mode, rng.getrandbits(32)) + payload
            try:
                out = codec.decompress([[y_bad], [forged]], enc["shape"])
                assert out["y_hat"].shape == (1, 16, *enc["shape"])
                outcomes.append("ok")
            except BitstreamError:
                outcomes.append("error")
    assert len(outcomes) == 96


def test_ideal_mode_corrupt_payload_raises():
    codec = AdaptiveEntropyBottleneckLatentCodec(channels=8, ideal=True).eval()
    codec.entropy_bottleneck.update(force=True)
    with pytest.raises(BitstreamError, match="ideal-mode"):
        codec.side_tables(b"not zlib", ideal=True)
    import zlib

    with pytest.raises(BitstreamError, match="wrong size"):
        codec.side_tables(zlib.compress(bytes(12)), ideal=True)


# ====================================================================== loss
def _fake_output(n=2, H=256, W=256, with_x_hat=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lk_y = torch.rand(n, 16, H // 16, W // 16, generator=g).clamp_min(0.01)
    lk_pdf = torch.rand(n, 8, 32, generator=g).clamp_min(0.01)
    x = torch.rand(n, 3, H, W, generator=g)
    x_hat = (x + 0.05 * torch.randn(n, 3, H, W, generator=g)).clamp(0, 1) if with_x_hat else None
    return {"x_hat": x_hat, "likelihoods": {"y": lk_y, "pdf": lk_pdf}}, x


def test_loss_terms_and_side_weight():
    assert CRITERIONS["AdaptiveRateDistortionLoss"] is AdaptiveRateDistortionLoss
    crit = AdaptiveRateDistortionLoss(lmbda=0.01)
    out, x = _fake_output()
    res = crit(out, x)
    assert {"loss", "bpp_loss", "bpp_y_loss", "bpp_pdf_loss", "mse_loss"} <= set(res)
    n, _, H, W = x.shape
    bpp_y = float(-torch.log2(out["likelihoods"]["y"]).sum()) / (n * H * W)
    bpp_pdf = float(-torch.log2(out["likelihoods"]["pdf"]).sum()) / (n * H * W)
    assert float(res["bpp_y_loss"]) == pytest.approx(bpp_y, rel=1e-5)
    assert float(res["bpp_pdf_loss"]) == pytest.approx(bpp_pdf, rel=1e-5)
    assert float(res["bpp_loss"]) == pytest.approx(float(res["bpp_y_loss"] + res["bpp_pdf_loss"]), rel=1e-6)
    assert crit.side_weight(256, 256) == pytest.approx(256 * 256 / (512 * 768)) == pytest.approx(1 / 6)
    mse = float(F.mse_loss(out["x_hat"], x))
    assert float(res["mse_loss"]) == pytest.approx(mse, rel=1e-5)
    expected = bpp_y + bpp_pdf / 6 + 0.01 * 255**2 * mse
    assert float(res["loss"]) == pytest.approx(expected, rel=1e-5)
    # target size is a config value; an explicit λ_pdf overrides it
    assert AdaptiveRateDistortionLoss(target_size=(256, 256)).side_weight(256, 256) == 1.0
    assert AdaptiveRateDistortionLoss(lmbda_pdf=0.5).side_weight(256, 256) == 0.5


def test_loss_without_x_hat_and_empty_side_likelihoods():
    crit = AdaptiveRateDistortionLoss(lmbda=0.01)
    out, x = _fake_output(with_x_hat=False)
    res = crit(out, x)
    assert "mse_loss" not in res and "ms_ssim_loss" not in res
    assert float(res["loss"]) == pytest.approx(float(res["bpp_y_loss"] + res["bpp_pdf_loss"] / 6), rel=1e-6)
    # static / ideal models report an empty side stream
    out["likelihoods"]["pdf"] = torch.ones(2, 0)
    res = crit(out, x)
    assert float(res["bpp_pdf_loss"]) == 0.0
    assert float(res["bpp_loss"]) == pytest.approx(float(res["bpp_y_loss"]))


@pytest.mark.parametrize("lmbda", [0, -0.1, float("nan"), float("inf"), "0.01", True])
def test_loss_rejects_bad_lambda(lmbda):
    with pytest.raises(ConfigError):
        AdaptiveRateDistortionLoss(lmbda=lmbda)


def test_loss_rejects_bad_config():
    with pytest.raises(ConfigError):
        AdaptiveRateDistortionLoss(metric="psnr")
    with pytest.raises(ConfigError):
        AdaptiveRateDistortionLoss(target_size=(512,))
    with pytest.raises(ConfigError):
        AdaptiveRateDistortionLoss(target_size=(0, 768))


def test_ms_ssim_loss():
    crit = AdaptiveRateDistortionLoss(lmbda=10.0, metric="ms-ssim")
    out, x = _fake_output(n=1)
    res = crit(out, x)
    assert "ms_ssim_loss" in res and "mse_loss" not in res
    assert 0 < float(res["ms_ssim_loss"]) <= 1
    expected = res["bpp_y_loss"] + res["bpp_pdf_loss"] / 6 + 10.0 * (1 - res["ms_ssim_loss"])
    assert float(res["loss"]) == pytest.approx(float(expected), rel=1e-5)


# ====================================================================== acceptance scenario
def astronaut(size=256, crop_hw=(240, 200)):
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    img = F.interpolate(img, size=(size, size), mode="area")  # 512 -> 256
    return img[..., : crop_hw[0], : crop_hw[1]].contiguous()


@pytest.mark.timeout(120)
def test_acceptance_factorized_on_a_photograph(record_property):
    x0 = astronaut()
    x, p = pad(x0, 64)
    assert x.shape[-2:] == (256, 256)
    torch.manual_seed(0)
    stock = FactorizedPrior(128, 192)
    model = MODELS["bmshj2018-factorized-pdf"](N=128, M=192)
    model.load_pretrained_transforms(stock.state_dict())
    own = model.state_dict()
    for k, v in stock.state_dict().items():
        if k.startswith(("g_a.", "g_s.")):
            assert torch.equal(own[k], v), k
        elif k.startswith("entropy_bottleneck.") and not k.endswith(("_quantized_cdf", "_offset", "_cdf_length")):
            assert torch.equal(own["adaptive_codec." + k], v), k
    model.eval()
    model.update()
    with torch.no_grad():
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])
        fwd = model(x)
    assert len(enc["strings"]) == 2
    total = nbytes(enc["strings"])
    side = sum(map(len, enc["strings"][1]))
    record_property("astronaut_bytes_total_side", (total, side))
    print(f"\nastronaut 240x200 (padded 256x256): {total} bytes ({side} side), {8 * total / x0[0, 0].numel():.3f} bpp")
    assert side >= HEADER and total > side
    assert torch.equal(dec["x_hat"], fwd["x_hat"].clamp(0, 1))
    out = crop(dec["x_hat"], p)
    assert out.shape == x0.shape
    assert torch.isfinite(out).all()


def test_acceptance_checkpoint_of_another_architecture():
    torch.manual_seed(0)
    model = MODELS["bmshj2018-factorized-pdf"](N=128, M=192)
    with pytest.raises(CheckpointError) as e:
        model.load_pretrained_transforms(FactorizedPrior(64, 192).state_dict(), source="q1.pth.tar")
    msg = str(e.value)
    assert "\n" not in msg and "q1.pth.tar" in msg and "FactorizedPriorPdf" in msg
    with pytest.raises(CheckpointError):
        model.load_pretrained_transforms(ScaleHyperprior(128, 192).state_dict())


# ====================================================================== gradients with frozen transforms
@pytest.mark.parametrize(
    "name, frozen",
    [
        ("bmshj2018-factorized-pdf", ["g_a", "g_s", "entropy_bottleneck"]),
        ("bmshj2018-hyperprior-pdf", ["g_a", "g_s", "h_a", "h_s", "entropy_bottleneck", "gaussian_conditional"]),
    ],
)
def test_gradients_only_reach_the_pdf_model(name, frozen):
    x = images(2, 64, 64, seed=13)
    model = make_model(name, 16, 16, x)
    assert model.freeze(frozen) == frozen
    assert all(model.is_frozen(f) for f in frozen)
    with pytest.raises(ValueError, match="no such module"):
        model.freeze(["nope"])
    model.train()
    crit = AdaptiveRateDistortionLoss(lmbda=0.01)
    for with_x_hat in (True, False):
        model.zero_grad(set_to_none=True)
        res = crit(model(x, with_x_hat=with_x_hat), x)
        res["loss"].backward()
        pdf_grads = {
            k: p.grad for k, p in model.adaptive_codec.pdf_model.named_parameters() if not k.endswith("quantiles")
        }
        assert pdf_grads and all(g is not None for g in pdf_grads.values())
        assert sum(float(g.abs().sum()) for g in pdf_grads.values()) > 0
        assert any(float(g.abs().sum()) > 0 for k, g in pdf_grads.items() if k.startswith("g_a"))
        for f in frozen:
            for k, p in getattr(model, f).named_parameters():
                assert p.grad is None, f"{f}.{k} got a gradient"
