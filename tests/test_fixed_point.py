"""The integer-only synthesis of p̂ (``encdist.codec.fixed_point``) and the integer tables built from it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encdist.codec import fixed_point as fp
from encdist.codec.coding import integer_cdf_table, weight_tables
from encdist.codec.pdf_model import PdfModel


def test_exp_table_is_the_correctly_rounded_exponential():
    t = fp.exp_table()
    assert t.dtype == np.int64 and len(t) == fp.EXP_MAX_NATS * 2**fp.EXP_FRAC_BITS + 1
    assert t[0] == 1 << fp.EXP_ONE_BITS
    for i in (1, 255, 256, 1000, len(t) - 1):
        exact = 2**fp.EXP_ONE_BITS * math.exp(-i / 2**fp.EXP_FRAC_BITS)
        assert abs(int(t[i]) - exact) <= 0.5 + 1e-6 * exact, i
    assert np.all(np.diff(t) <= 0)


def test_to_fixed_is_the_same_for_float16_32_64_copies_of_float32_weights():
    w = torch.randn(64, generator=torch.Generator().manual_seed(0)).half().float()  # float16-representable
    a = fp.to_fixed(w, 20)
    assert np.array_equal(a, fp.to_fixed(w.double(), 20)) and np.array_equal(a, fp.to_fixed(w.half(), 20))
    assert np.array_equal(a, np.rint(w.double().numpy() * 2**20).astype(np.int64))


@pytest.mark.parametrize("seed", [0, 1])
def test_integer_synthesis_follows_the_float_network(seed):
    torch.manual_seed(seed)
    model = PdfModel(192).eval()
    v = torch.randint(-6, 7, (2, model.M, model.latent_length), generator=torch.Generator().manual_seed(seed)).float()
    with torch.no_grad():
        logits = model.g_s(v).double().numpy()
    net = fp.FixedPointNet.from_sequential(model.g_s)
    got = net(v.numpy().astype(np.int64) << fp.ACT_BITS) / 2**fp.ACT_BITS
    assert np.abs(got - logits).max() < 1e-3 * max(1.0, np.abs(logits).max())
    w = fp.integer_softmax_weights(net(v.numpy().astype(np.int64) << fp.ACT_BITS))
    p = torch.softmax(torch.from_numpy(logits), -1).numpy()
    q = w / w.sum(-1, keepdims=True)
    big = p > 1e-6
    assert np.abs(q[big] / p[big] - 1).max() < 2 ** -fp.EXP_FRAC_BITS  # the table's step, at most


def test_conversion_refuses_weights_that_could_overflow():
    conv = torch.nn.Conv1d(4, 4, 3, padding=1)
    with torch.no_grad():
        conv.bias.fill_(2.0**40)  # a bias beyond what 64-bit accumulators hold at this scale
    with pytest.raises(ValueError, match="overflow"):
        fp.FixedPointNet.from_sequential(torch.nn.Sequential(conv))


def test_unsupported_layers_are_named():
    with pytest.raises(ValueError, match="Tanh"):
        fp.FixedPointNet.from_sequential(torch.nn.Sequential(torch.nn.Tanh()))


def test_weight_tables_give_every_used_symbol_mass_and_sum_to_the_total():
    g = torch.Generator().manual_seed(3)
    weights = torch.randint(0, 1 << 20, (2, 5, 64), generator=g).numpy()
    weights[0, 1] = 0  # a channel of zero weight: uniform
    lo = torch.tensor([-5, -32, -1, 0, -10])
    length = torch.tensor([11, 64, 3, 1, 20])
    cdf, lengths, offsets = weight_tables(weights, lo, length, 64)
    assert cdf.shape == (2, 5, 66) and torch.equal(lengths, (length + 2).int()) and torch.equal(offsets, lo.int())
    for n in range(2):
        for c in range(5):
            k = int(length[c]) + 1
            f = np.diff(cdf[n, c, : k + 1].numpy())
            assert f.min() >= 1 and cdf[n, c, k] == 1 << 16 and torch.all(cdf[n, c, k:] == 1 << 16)
    # the same as integer_cdf_table on the gathered weights, tail included
    c, L = 0, 11
    ext = np.concatenate([weights[0, c, 27:38], [weights[0, c].sum() - weights[0, c, 27:38].sum()]])
    assert np.array_equal(cdf[0, c, : L + 2].numpy(), integer_cdf_table(ext, np.ones(L + 1, bool)))
