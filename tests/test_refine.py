"""Encoder-side refinement of the side latent (``hp.refine_steps``) for the coder actually deployed.

Refinement searches the side latent ``v̂`` that minimizes one image's estimated bits. With
backward adaptation (the default) the ``y`` bits are those of the adapted tables started from
``p̂`` (:meth:`~encdist.codec.backward.BackwardAdaptation.likelihoods`), not the fixed tables'
cross-entropy, which would optimize a rate the bytes do not follow.

Real latents: the committed q6 transforms (``weights/``) on scikit-image's photographs
(untrained transforms map photographs to all-zero latents, useless here). The distribution
codec is fitted for 60 Adam steps on four other crops, so that it is reasonable but not
optimal for the coded image: refinement has something to find.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import encdist  # noqa: F401  (registers the models)
from compressai.registry import MODELS
from conftest import fit_pdf_model
from encdist.latent_codecs import CODING_MODES
from encdist.training.pretrained import load_pretrained_into

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "bmshj2018-factorized-N128-M192-q6.pth.tar"
#: As tests/test_gpu.py: ENCDIST_TEST_DEVICE=cpu runs the device test's body on the CPU.
DEVICE = os.environ.get("ENCDIST_TEST_DEVICE", "cuda")
STEPS = 20


def _crop(image, rows, cols):
    return torch.from_numpy(image[rows, cols].copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)


@pytest.fixture(scope="module")
def real():
    """The q6 transforms with a briefly fitted distribution codec, and one photograph's latent."""
    from skimage import data

    torch.manual_seed(0)
    model = MODELS["bmshj2018-factorized-pdf"](N=128, M=192).eval()
    load_pretrained_into(model, WEIGHTS)
    model.update(force=True)
    codec, pm = model.adaptive_codec, model.adaptive_codec.pdf_model
    top, bottom, left, right = slice(0, 256), slice(256, 512), slice(0, 256), slice(256, 512)
    train = [_crop(data.chelsea(), top, left), _crop(data.coffee(), top, left), _crop(data.rocket(), top, left),
             _crop(data.astronaut(), bottom, right)]
    with torch.no_grad():
        pool = torch.cat([codec.target_distribution(model.g_a(x)) for x in train])
    fit_pdf_model(pm, pool, 16 * 16)  # the crops' latents: 16x16 positions
    model.eval()
    model.update(force=True)
    with torch.no_grad():
        y = model.g_a(_crop(data.astronaut(), top, left))
    assert y.abs().max() > 4, "the committed transforms should give a spread latent"
    return SimpleNamespace(model=model, codec=codec, pm=pm, y=y)


def _problem(codec, y, fallback: bool):
    """What ``_pack_side`` hands the refinement for one image under backward adaptation."""
    sym = codec._symbols(y)[0].cpu()
    p = codec._hard_histogram(y)[:1]
    num_samples = sym.shape[-2] * sym.shape[-1]
    y_bits, static_bits = codec._backward_refinement_cost(sym, fallback)
    return p, num_samples, y_bits, static_bits


def _estimate(pm, v_hat, p, num_samples, y_bits, static_bits) -> float:
    """The refinement's own estimate of one image's bits (y with the fallback's minimum, plus the side latent)."""
    with torch.no_grad():
        by, bv = pm.coding_cost(v_hat, p * num_samples, y_bits)
        coded = by if static_bits is None else torch.minimum(by, static_bits.to(by.device))
        return float(coded.sum() + bv.sum())


def _start(pm, p):
    """``v̂`` without refinement: ``g_a``'s latent, quantized around the side bottleneck's medians."""
    with torch.no_grad():
        med = pm.entropy_bottleneck.quantiles[:, 0, 1].view(1, -1, 1)
        return torch.round(pm.g_a(p) - med) + med


def _nbytes(strings) -> int:
    return sum(len(s) for lst in strings for s in lst)


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
def test_refinement_for_the_backward_adapted_coder(real, fallback, record_property):
    """Never above the start by the adapted coder's estimate, below it on a real latent, and no
    worse by that estimate than refining for the fixed tables' cost (the coder not deployed)."""
    pm = real.pm
    p, n, y_bits, static_bits = _problem(real.codec, real.y, fallback)
    if fallback:
        assert static_bits is not None and static_bits.shape == (1, real.codec.channels)
    cost = lambda v: _estimate(pm, v, p, n, y_bits, static_bits)  # noqa: E731
    grads = [None if q.grad is None else q.grad.clone() for q in pm.parameters()]
    start = cost(_start(pm, p))
    deployed = cost(pm.refine(p, pm.g_a(p), n, STEPS, static_bits=static_bits, y_bits=y_bits))
    fixed = cost(pm.refine(p, pm.g_a(p), n, STEPS))  # the old objective, judged by the deployed coder's cost
    record_property("estimated_bits_start_deployed_fixed", (start, deployed, fixed))
    assert deployed <= start
    assert deployed < start - 1, "the fitted codec is not optimal for this image: refinement should find better"
    assert deployed <= fixed
    # no trace left on the model
    assert all(q.requires_grad for q in pm.parameters())
    assert all((g is None and q.grad is None) or torch.equal(g, q.grad) for g, q in zip(grads, pm.parameters()))


@pytest.mark.parametrize("mode", ["adaptive", "static_backward", "fallback", "paper"])
def test_refined_streams_round_trip(real, mode):
    """Every way of coding with refinement decodes with the unchanged decoder, deterministically,
    and costs no more than without it (a small tolerance: estimates leave escapes out)."""
    codec, y = real.codec, real.y
    base = CODING_MODES[mode] or codec.options
    plain = codec.compress(y, base)
    refined = base.replace(refine_steps=10)
    a, b = codec.compress(y, refined), codec.compress(y.clone(), refined)
    assert a["strings"] == b["strings"]
    assert torch.equal(codec.decompress(a["strings"], a["shape"], refined)["y_hat"], plain["y_hat"])
    assert _nbytes(a["strings"]) <= _nbytes(plain["strings"]) * 1.002


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA")
def test_refinement_on_the_device(real, record_property):
    """Refinement on CUDA: every tensor it compares follows the side latent's device (the static bits
    are counted on the CPU), for fixed and for backward-adapted tables, and the streams decode."""
    import copy

    model = copy.deepcopy(real.model).to(DEVICE)
    model.update(force=True)
    codec, pm, y = model.adaptive_codec, model.adaptive_codec.pdf_model, real.y.to(DEVICE)
    p, n, y_bits, static_bits = _problem(codec, y, True)
    v = pm.refine(p, pm.g_a(p), n, 5, static_bits=static_bits, y_bits=y_bits)
    assert v.device.type == torch.device(DEVICE).type
    assert _estimate(pm, v, p, n, y_bits, static_bits) <= _estimate(pm, _start(pm, p), p, n, y_bits, static_bits)
    sizes = {}
    for mode in ("adaptive", "fallback", "paper"):
        o = (CODING_MODES[mode] or codec.options).replace(refine_steps=5)
        with torch.no_grad():
            enc = codec.compress(y, o)
            dec = codec.decompress(enc["strings"], enc["shape"], o)
        assert torch.equal(dec["y_hat"], enc["y_hat"]), mode
        sizes[mode] = _nbytes(enc["strings"])
    record_property("refined_bytes", sizes)


def test_channel_bits_is_the_likelihoods_summed(real):
    """The refinement's per-channel cost is the training model's, summed per channel (value and gradient)."""
    from encdist.codec.coding import table_support

    codec = real.codec
    sym = codec._symbols(real.y)
    support = table_support(codec.entropy_bottleneck, codec.num_bins)
    p_hat = codec.pdf_model.synthesize(codec.pdf_model.g_a(codec._hard_histogram(real.y))).detach()
    a = p_hat.clone().requires_grad_(True)
    b = p_hat.clone().requires_grad_(True)
    (q,) = codec.adaptation.likelihoods(sym, [a], *support)
    per_symbol = -torch.log2(q).flatten(2).sum(-1)
    grouped = codec.adaptation.channel_bits(sym, codec.num_bins, *support, device=b.device)(b)
    assert grouped.shape == (1, codec.channels)
    assert torch.allclose(grouped, per_symbol, rtol=1e-4, atol=1e-2)
    per_symbol.sum().backward()
    grouped.sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-3)
