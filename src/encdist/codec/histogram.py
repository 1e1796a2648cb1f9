"""Differentiable per-channel histograms of latents.

Ulhaq & Bajić, "Learned Compression of Encoding Distributions", ICIP 2024
(arXiv:2406.13059), Sec. 2: the *target distribution* ``p`` of an image is the
per-channel histogram of its centered latent over ``B`` unit-width bins.

.. code-block:: none

    y (n, C, h, w) ──center on median──► u ──bound_ste──► u'
        u' + B//2 ──► bin coordinate t in [0, B-1]
        forward : hard histogram      p[n, c, b] = #{i : round(t_i) = b} / (h*w)
        backward: triangular kernel   ∂/∂t of Σ_i max(0, 1 - |t_i - b|) / (h*w)

The forward value is the exact histogram of the rounded latent (so the rate
estimate is the rate of the symbols actually coded), while gradients flow
through the soft (triangular-kernel) histogram: a straight-through estimator.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bound_ste",
    "bin_coordinates",
    "hard_histogram",
    "soft_histogram",
    "histogram",
    "interp_log_pmf",
]


class _BoundSTE(torch.autograd.Function):
    """Clamp to ``[lo, hi]``; the gradient only pushes out-of-range values back in.

    Inside the range the gradient passes unchanged. Outside it, the gradient is
    passed only if following it (gradient *descent*, ``x - lr * g``) moves the
    value towards the range; gradients that would push it further away are
    zeroed. This is the "lower bound" trick of Ballé et al. (``LowerBound`` in
    CompressAI) applied on both sides.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inside = (x >= ctx.lo) & (x <= ctx.hi)
        # Above the range, descent moves x down when grad > 0; below it, when grad < 0.
        back_in = ((x > ctx.hi) & (grad > 0)) | ((x < ctx.lo) & (grad < 0))
        return grad * (inside | back_in).to(grad.dtype), None, None


def bound_ste(x: Tensor, lo: float, hi: float) -> Tensor:
    """Clamp ``x`` to ``[lo, hi]`` with a gradient that never pushes it outward."""
    return _BoundSTE.apply(x, float(lo), float(hi))


def bin_coordinates(u: Tensor, num_bins: int) -> Tensor:
    """Map centered values (bin centers ``-B//2 … B//2-1``) to bin indices ``0 … B-1``."""
    return u + num_bins // 2


def _flatten(t: Tensor) -> Tensor:
    if t.dim() < 3:
        raise ValueError(f"expected a (n, C, *spatial) tensor, got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], t.shape[1], -1)


def hard_histogram(t: Tensor, num_bins: int) -> Tensor:
    """Exact normalised histogram of ``round(t)`` per (image, channel).

    ``t`` holds bin coordinates (``0 … B-1``; values outside are clamped into
    the edge bins). Returns ``(n, C, B)`` with every row summing to 1.
    """
    t = _flatten(t)
    idx = t.detach().round().clamp_(0, num_bins - 1).long()
    counts = torch.zeros(*t.shape[:2], num_bins, dtype=t.dtype, device=t.device)
    counts.scatter_add_(2, idx, torch.ones_like(t))
    return counts / t.shape[-1]


def soft_histogram(t: Tensor, num_bins: int) -> Tensor:
    """Triangular-kernel histogram: each sample splits its mass between the two nearest bins.

    Equals ``Σ_i max(0, 1 - |t_i - b|) / S`` for every bin ``b``; differentiable
    in ``t``. Coordinates are clamped to ``[0, B-1]`` so rows still sum to 1.
    """
    t = _flatten(t).clamp(0, num_bins - 1)
    lo = t.detach().floor().clamp_(max=num_bins - 2)
    w_hi = t - lo  # weight of the upper bin, in [0, 1]
    lo = lo.long()
    hist = torch.zeros(*t.shape[:2], num_bins, dtype=t.dtype, device=t.device)
    hist = hist.scatter_add(2, lo, 1 - w_hi)
    hist = hist.scatter_add(2, lo + 1, w_hi)
    return hist / t.shape[-1]


def histogram(t: Tensor, num_bins: int) -> Tensor:
    """Straight-through histogram: hard value in the forward pass, soft gradient."""
    hard = hard_histogram(t, num_bins)
    if not t.requires_grad:
        return hard
    soft = soft_histogram(t, num_bins)
    return soft + (hard - soft).detach()


def interp_log_pmf(log_pmf: Tensor, t: Tensor) -> Tensor:
    """Per-sample log-probability under ``log_pmf`` (``(n, C, B)``) at bin coordinates ``t``.

    Forward: ``log_pmf`` at the *rounded* coordinate (the symbol actually
    coded), so ``Σ_i`` of it equals ``h*w · Σ_b p[b] log p̂[b]`` with ``p`` the
    hard histogram. Backward: the gradient w.r.t. ``log_pmf`` is that of the
    hard cross-entropy, and the gradient w.r.t. ``t`` is that of the
    triangular-kernel (soft) histogram, exactly as differentiating the
    cross-entropy ``-Σ_b p[b] log p̂[b]`` with the straight-through ``p``.
    Returns a tensor shaped like ``t``.
    """
    shape = t.shape
    num_bins = log_pmf.shape[-1]
    tf = _flatten(t)
    idx = tf.detach().round().clamp(0, num_bins - 1).long()
    hard = log_pmf.gather(2, idx)
    if tf.requires_grad:
        tc = tf.clamp(0, num_bins - 1)
        lo = tc.detach().floor().clamp_(max=num_bins - 2)
        w_hi = tc - lo
        lo = lo.long()
        lp = log_pmf.detach()
        soft = (1 - w_hi) * lp.gather(2, lo) + w_hi * lp.gather(2, lo + 1)
        hard = hard + (soft - soft.detach())
    return hard.reshape(shape)
