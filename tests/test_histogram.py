"""Tests of ``encdist.codec.histogram``: exact, soft and straight-through per-channel histograms.

Small tensors, fixed seeds, no training: tensorflow-compression style.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encdist.codec.histogram import (
    bin_coordinates,
    bound_ste,
    hard_histogram,
    histogram,
    interp_log_pmf,
    soft_histogram,
)

B = 16  # bins used by most tests (the codec uses 256; nothing here depends on it)


def numpy_histogram(t: np.ndarray, num_bins: int) -> np.ndarray:
    """Reference: per-(image, channel) normalised bincount of round(t) clipped to the bins."""
    n, c = t.shape[:2]
    flat = np.clip(np.round(t.reshape(n, c, -1)), 0, num_bins - 1).astype(np.int64)
    out = np.zeros((n, c, num_bins))
    for i in range(n):
        for j in range(c):
            out[i, j] = np.bincount(flat[i, j], minlength=num_bins) / flat.shape[-1]
    return out


def random_coords(shape, lo=-2.0, hi=B + 1.0, seed=0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.empty(shape, dtype=dtype).uniform_(lo, hi, generator=g)


# ---------------------------------------------------------------- hard histogram
def test_hard_histogram_equals_bincount_on_integers():
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, B, (3, 5, 7, 9), generator=g).float()
    h = hard_histogram(t, B)
    assert h.shape == (3, 5, B)
    np.testing.assert_allclose(h.numpy(), numpy_histogram(t.numpy(), B), rtol=0, atol=1e-7)
    # counts are multiples of 1/S (up to float32 rounding of the division)
    counts = h.double() * 7 * 9
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)


def test_hard_histogram_equals_bincount_on_rounded_floats():
    t = random_coords((2, 4, 11, 6), seed=2, dtype=torch.float32)  # includes values outside [0, B-1]
    h = hard_histogram(t, B)
    np.testing.assert_allclose(h.numpy(), numpy_histogram(t.numpy(), B), rtol=0, atol=1e-7)


def test_hard_histogram_1d_spatial_and_dtype():
    t = torch.tensor([[[0.0, 1.4, 1.6, 15.0, 15.49]]], dtype=torch.float64)
    h = hard_histogram(t, B)
    assert h.dtype == torch.float64
    expected = torch.zeros(1, 1, B, dtype=torch.float64)
    expected[0, 0, 0], expected[0, 0, 1], expected[0, 0, 2], expected[0, 0, 15] = 0.2, 0.2, 0.2, 0.4
    torch.testing.assert_close(h, expected)


@pytest.mark.parametrize("fn", [hard_histogram, soft_histogram, histogram])
def test_rows_sum_to_one(fn):
    t = random_coords((2, 3, 5, 4), seed=3).requires_grad_(fn is histogram)
    h = fn(t, B)
    assert h.shape == (2, 3, B)
    assert (h >= 0).all()
    torch.testing.assert_close(h.sum(-1), torch.ones(2, 3, dtype=h.dtype))


@pytest.mark.parametrize("fn", [hard_histogram, soft_histogram, histogram])
def test_rejects_tensors_without_spatial_dims(fn):
    with pytest.raises(ValueError, match="expected a"):
        fn(torch.zeros(3, 4), B)


# ---------------------------------------------------------------- soft histogram
def test_soft_histogram_is_the_triangular_kernel():
    t = random_coords((2, 3, 17), lo=0.0, hi=B - 1.0, seed=4)
    h = soft_histogram(t, B)
    bins = torch.arange(B, dtype=t.dtype)
    ref = (1 - (t[..., None] - bins).abs()).clamp_min(0).sum(-2) / t.shape[-1]
    torch.testing.assert_close(h, ref)


def test_soft_histogram_equals_hard_on_integers():
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, B, (2, 3, 4, 5), generator=g).double()
    torch.testing.assert_close(soft_histogram(t, B), hard_histogram(t, B))


def test_soft_histogram_gradcheck():
    # Away from the kinks (integers) the triangular kernel is linear in t: finite differences are exact.
    g = torch.Generator().manual_seed(6)
    base = torch.randint(0, B - 1, (1, 2, 6), generator=g).double()
    frac = torch.empty(1, 2, 6, dtype=torch.float64).uniform_(0.1, 0.9, generator=g)
    t = (base + frac).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: soft_histogram(u, B), (t,), eps=1e-6, atol=1e-8)


def test_soft_histogram_gradient_of_linear_functional():
    t = random_coords((2, 3, 10), lo=0.05, hi=B - 1.05, seed=7).requires_grad_(True)
    w = torch.randn(B, dtype=t.dtype, generator=torch.Generator().manual_seed(8))
    (soft_histogram(t, B) * w).sum().backward()
    lo = t.detach().floor().long()
    expected = (w[lo + 1] - w[lo]) / t.shape[-1]  # d/dt of (1-f) w[lo] + f w[lo+1]
    torch.testing.assert_close(t.grad, expected)


# ---------------------------------------------------------------- straight-through histogram
def test_straight_through_value_is_hard_and_gradient_is_soft():
    t0 = random_coords((2, 3, 4, 5), lo=0.05, hi=B - 1.05, seed=9)
    w = torch.randn(B, dtype=t0.dtype, generator=torch.Generator().manual_seed(10))

    t_st = t0.clone().requires_grad_(True)
    h_st = histogram(t_st, B)
    assert torch.equal(h_st.detach(), hard_histogram(t0, B))
    (h_st * w).sum().backward()

    t_soft = t0.clone().requires_grad_(True)
    (soft_histogram(t_soft, B) * w).sum().backward()
    torch.testing.assert_close(t_st.grad, t_soft.grad)
    assert t_st.grad.abs().sum() > 0


def test_histogram_without_grad_is_hard():
    t = random_coords((1, 2, 9), seed=11)
    h = histogram(t, B)
    assert not h.requires_grad
    assert torch.equal(h, hard_histogram(t, B))


# ---------------------------------------------------------------- bound_ste
def test_bound_ste_clamps_values():
    x = torch.tensor([-1e4, -3.0, 0.0, 0.5, 1.0, 2.0, 1e4])
    torch.testing.assert_close(bound_ste(x, 0.0, 1.0), x.clamp(0, 1))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bound_ste_gradient_only_pushes_back_inside(sign):
    #                below  in   in   in   above
    x = torch.tensor([-2.0, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    g = torch.full_like(x, sign)
    bound_ste(x, 0.0, 1.0).backward(g)
    # Inside (boundaries included) the gradient passes unchanged.
    torch.testing.assert_close(x.grad[1:4], g[1:4])
    # Descent step x - lr * g: below the range it must move x up (g < 0), above it down (g > 0).
    assert x.grad[0] == (sign if sign < 0 else 0.0)
    assert x.grad[4] == (sign if sign > 0 else 0.0)


def test_bound_ste_mixed_gradient_signs():
    x = torch.tensor([-5.0, -5.0, 9.0, 9.0], requires_grad=True)
    bound_ste(x, -1.0, 1.0).backward(torch.tensor([0.3, -0.3, 0.7, -0.7]))
    torch.testing.assert_close(x.grad, torch.tensor([0.0, -0.3, 0.7, 0.0]))


def test_bin_coordinates():
    assert torch.equal(bin_coordinates(torch.tensor([-128.0, 0.0, 127.0]), 256), torch.tensor([0.0, 128.0, 255.0]))


# ---------------------------------------------------------------- interp_log_pmf
def _log_pmf(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(n, c, B, dtype=torch.float64, generator=g), -1)


def test_interp_log_pmf_sum_is_cross_entropy():
    n, c, h, w = 2, 3, 5, 7
    t = random_coords((n, c, h, w), seed=12)
    lp = _log_pmf(n, c, 13)
    out = interp_log_pmf(lp, t)
    assert out.shape == t.shape
    p = hard_histogram(t, B)
    torch.testing.assert_close(out.sum(), h * w * (p * lp).sum())
    # per image and channel too
    torch.testing.assert_close(out.sum((-1, -2)), h * w * (p * lp).sum(-1))


def test_interp_log_pmf_gradients_match_straight_through_cross_entropy():
    n, c, h, w = 2, 3, 4, 6
    t0 = random_coords((n, c, h, w), lo=0.05, hi=B - 1.05, seed=14)
    lp0 = _log_pmf(n, c, 15)

    t1, lp1 = t0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    interp_log_pmf(lp1, t1).sum().backward()

    t2, lp2 = t0.clone().requires_grad_(True), lp0.clone().requires_grad_(True)
    (h * w * (histogram(t2, B) * lp2).sum()).backward()

    torch.testing.assert_close(lp1.grad, lp2.grad)  # = hard counts
    torch.testing.assert_close(lp1.grad, h * w * hard_histogram(t0, B))
    torch.testing.assert_close(t1.grad, t2.grad)  # = soft-histogram gradient (pmf detached)
    assert t1.grad.abs().sum() > 0


def test_interp_log_pmf_no_grad_path():
    t = random_coords((1, 2, 3, 3), seed=16)
    lp = _log_pmf(1, 2, 17)
    idx = t.round().clamp(0, B - 1).long().reshape(1, 2, -1)
    torch.testing.assert_close(interp_log_pmf(lp, t), lp.gather(2, idx).reshape(t.shape))


# ---------------------------------------------------------------- far-out-of-range latents
@pytest.mark.parametrize("fn", [hard_histogram, soft_histogram, histogram])
def test_far_out_of_range_values_give_valid_distributions(fn):
    t = torch.tensor([[[-1e4, 1e4, -1e4, 3.0, 1e4, 1e4]]], requires_grad=fn is histogram)
    h = fn(t, B)
    assert torch.isfinite(h).all() and (h >= 0).all()
    torch.testing.assert_close(h.sum(-1), torch.ones(1, 1))
    # clamped into the edge bins
    torch.testing.assert_close(h[0, 0, [0, 3, B - 1]], torch.tensor([2 / 6, 1 / 6, 3 / 6]))


def test_far_out_of_range_through_bound_ste_and_interp():
    # The codec's pipeline: center -> bound -> histogram / log-pmf lookup, on huge latents.
    num_bins = 256
    c = (num_bins - 1) / 2
    r = 0.75 * c
    g = torch.Generator().manual_seed(18)
    u = torch.randn(2, 4, 8, 8, generator=g) * 1e4
    u[0, 0] = 1e4
    u[1, 1] = -1e4
    u.requires_grad_(True)
    t = bound_ste(u + num_bins // 2, c - r, c + r)
    p = histogram(t, num_bins)
    assert torch.isfinite(p).all() and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4))
    lp = torch.log_softmax(torch.zeros(2, 4, num_bins), -1)
    ll = interp_log_pmf(lp, t)
    assert torch.isfinite(ll).all()
    (ll.sum() + (p * torch.arange(num_bins)).sum()).backward()
    assert torch.isfinite(u.grad).all()
