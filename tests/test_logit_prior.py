"""The distribution codec's learned logit offset, ``PdfModel(logit_prior=True)`` (beyond the paper).

``p̂ = softmax(g_s(v̂) + b)``, ``b`` started at the log of the static tables by the codec's first
training step. Checked here: it starts once and is kept by a checkpoint, the integer synthesis
(the decoder's path) adds it as the float path does, and streams coded with it round-trip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import encdist  # noqa: F401  (registers the models)
from compressai.registry import MODELS
from encdist.codec import fixed_point as fp
from encdist.codec.pdf_model import PdfModel

PRIOR = {"logit_prior": True, "num_downsample": 1}


def test_the_offset_starts_once_and_a_checkpoint_keeps_it():
    pm = PdfModel(24, 64, N=8, M=4, logit_prior=True)
    assert pm.awaits_prior and torch.count_nonzero(pm.logit_prior) == 0
    lp = torch.log_softmax(torch.randn(24, 64, generator=torch.Generator().manual_seed(0)), -1)
    pm.start_prior(lp)
    assert torch.equal(pm.logit_prior.data, lp) and not pm.awaits_prior
    pm.start_prior(torch.zeros(24, 64))  # once: a later call (a resumed run) keeps what was learned
    assert torch.equal(pm.logit_prior.data, lp)
    other = PdfModel(24, 64, N=8, M=4, logit_prior=True)
    other.load_state_dict(pm.state_dict())
    assert not other.awaits_prior and torch.equal(other.logit_prior, pm.logit_prior)
    with pytest.raises(ValueError, match="shape"):
        PdfModel(24, 64, N=8, M=4, logit_prior=True).start_prior(torch.zeros(3, 64))
    plain = PdfModel(24, 64, N=8, M=4)
    assert plain.logit_prior is None and not plain.awaits_prior
    assert not any("prior" in k for k in plain.state_dict())  # the paper's layout: checkpoints unchanged


def _side_model_with_offset(num_downsample: int, seed: int = 0) -> tuple[PdfModel, torch.Tensor]:
    """An untrained ``(192, 256)`` codec with an offset far from zero, its side tables built; and histograms to code."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    pm = PdfModel(192, num_downsample=num_downsample, logit_prior=True).eval()
    pm.start_prior(torch.log_softmax(3 * torch.randn(192, 256, generator=g), -1))
    pm.entropy_bottleneck.update(force=True)
    p = torch.softmax(4 * torch.randn(2, 192, 256, generator=g), -1)
    return pm, p


@pytest.mark.parametrize("num_downsample", [1, 3])
def test_integer_synthesis_adds_the_offset_as_the_float_path_does(num_downsample):
    pm, p = _side_model_with_offset(num_downsample)
    with torch.no_grad():
        enc = pm.compress(p)
        v_hat = pm.entropy_bottleneck.decompress(enc["strings"], enc["shape"])
        ref = pm.synthesize(v_hat).double().numpy()  # float p̂, offset included
    w = pm.integer_weights(enc["strings"], enc["shape"])
    q = w / w.sum(-1, keepdims=True)
    big = ref > 1e-6
    assert np.abs(q[big] / ref[big] - 1).max() < 2 ** -fp.EXP_FRAC_BITS  # the exponent table's step, at most
    # and the offset matters: without it the integer weights are another distribution
    saved = pm.logit_prior.data.clone()
    with torch.no_grad():
        pm.logit_prior.zero_()
    w0 = pm.integer_weights(enc["strings"], enc["shape"])
    pm.logit_prior.data.copy_(saved)
    assert np.abs(w0 / w0.sum(-1, keepdims=True) - q).max() > 0.01


def _model(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return MODELS["bmshj2018-factorized-pdf"](N=16, M=16, pdf_model=dict(PRIOR), **kwargs)


def test_the_first_training_forward_starts_it_at_the_static_tables():
    model = _model()
    codec = model.adaptive_codec
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()(x)
    assert codec.pdf_model.awaits_prior  # evaluation leaves it alone
    model.train()(x)
    assert not codec.pdf_model.awaits_prior
    assert torch.allclose(codec.pdf_model.logit_prior, torch.log(codec.static_pmf()))


@pytest.mark.parametrize("mode", [dict(fallback_static=False, backward_adaptation=False), {}])  # the paper's coder; the default
def test_streams_coded_with_the_offset_round_trip(mode):
    model = _model(seed=2, **mode)
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a spread latent (an untrained g_a maps images near zero)
        layer = model.g_a[-1]
        f = 5.0 / model.g_a(x).std()
        layer.weight.mul_(f)
        layer.bias.mul_(f)
    model.train()(x)  # starts the offset
    model.eval().update(force=True)
    codec = model.adaptive_codec
    assert torch.count_nonzero(codec.pdf_model.logit_prior) > 0
    with torch.no_grad():
        y = model.g_a(x)
        enc = codec.compress(y)
        dec = codec.decompress(enc["strings"], enc["shape"])
        again = codec.compress(y)
    assert torch.equal(dec["y_hat"], enc["y_hat"])
    assert again["strings"] == enc["strings"]  # same bytes twice
    # a decoder without the offset is another configuration: the stream's checksum seed refuses it
    plain = MODELS["bmshj2018-factorized-pdf"](N=16, M=16, pdf_model={"num_downsample": 1}, **mode)
    assert plain.adaptive_codec.fingerprint(False) != codec.fingerprint(False)
