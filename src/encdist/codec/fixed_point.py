"""Integer-only synthesis of the distribution codec: p̂'s tables without float arithmetic.

Why: a decoder that rebuilds p̂ with a float network gets tables that depend on its
platform (thread count, oneDNN or not, float32 or float64, CPU or GPU kernels); a table
that differs by one unit decodes the rest of the stream to garbage. Ballé, Johnston and
Minnen ("Integer networks for data compression with latent-variable models", ICLR 2019)
make the *synthesis* of a learned prior integer-only so that both sides compute the same
tables bit for bit. This module does that for the distribution codec's ``g_s`` and its
softmax:

.. code-block:: none

    side symbols v (ints) ─► v·2^F + round(median·2^F)         (fixed point, F fractional bits)
        ─► [Conv1d | ConvTranspose1d] (int weights, rounding shift) ─► ChannelShuffle ─► ReLU ─► …
        ─► logits ℓ (n, C, B), fixed point   [+ the learned logit offset b (C, B), then saturated]
        ─► w = EXP[round((max ℓ - ℓ)·2^T)]          (integer softmax: exponent by table)
        ─► integer_cdf_table(w on the coded support, tail = the rest)   (floor division only)

Every operation is on ``int64`` numbers (numpy; no BLAS, no reassociation that could
change a result): sums, products, arithmetic right shifts, comparisons, table look-ups.
The integer weights come from the float32 weights by a multiplication with a power of two
and a round-to-nearest-even, both exact in IEEE arithmetic on every platform, so the
same checkpoint gives the same integers everywhere; float64 or float16 copies of the
same float32 weights give them too. The exponent table is computed with Python's
``decimal`` module, whose ``exp`` is correctly rounded by specification (no libm).

No overflow, proven per layer when the network is converted (:meth:`FixedPointNet.from_sequential`):
activations are saturated to ``±2^31`` after every layer and weights are at most ``2^15``
in magnitude, so a layer of fan-in ``k`` accumulates at most ``k·2^46 + |bias|``; the
conversion checks that this stays below ``2^62``. Saturation never happens for the
activations of a trained model (they are far smaller), and if it did, it would happen
identically on both sides.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACT_BITS",
    "WEIGHT_BITS",
    "EXP_FRAC_BITS",
    "EXP_ONE_BITS",
    "EXP_MAX_NATS",
    "exp_table",
    "to_fixed",
    "saturate",
    "FixedPointNet",
    "integer_softmax_weights",
]

#: Fractional bits of the activations.
ACT_BITS = 16
#: Largest magnitude of an integer weight: ``2**WEIGHT_BITS``.
WEIGHT_BITS = 15
#: Activations are saturated to ``±2**SATURATE_BITS`` after each layer (see the module docstring).
SATURATE_BITS = 31
#: Integer softmax: the exponent is looked up in steps of ``2**-EXP_FRAC_BITS`` nats ...
EXP_FRAC_BITS = 8
#: ... in a table of ``round(2**EXP_ONE_BITS · e^{-d})`` ...
EXP_ONE_BITS = 30
#: ... for ``d`` up to this many nats below the largest logit (beyond: weight 0; the CDF table
#: still gives such a symbol its minimum frequency).
EXP_MAX_NATS = 20
_ACC_LIMIT = 1 << 62


@functools.lru_cache(maxsize=4)
def exp_table(frac_bits: int = EXP_FRAC_BITS, one_bits: int = EXP_ONE_BITS, max_nats: int = EXP_MAX_NATS) -> np.ndarray:
    """``round(2**one_bits · exp(-i / 2**frac_bits))`` for ``i = 0 … max_nats·2**frac_bits`` (int64).

    Computed with ``decimal`` at 40 digits (its ``exp`` is correctly rounded, the same on every
    platform), then rounded half-to-even to an integer: no float arithmetic involved.
    """
    from decimal import ROUND_HALF_EVEN, Context, Decimal

    ctx = Context(prec=40, rounding=ROUND_HALF_EVEN)
    one, step = Decimal(1 << one_bits), ctx.divide(Decimal(1), Decimal(1 << frac_bits))
    e_step = ctx.exp(-step)
    n = max_nats * (1 << frac_bits) + 1
    out = np.empty(n, dtype=np.int64)
    # e^{-(hi·2^f + lo)/2^f} = e^{-hi} · e^{-lo/2^f}: two short correctly rounded series, multiplied at 40 digits.
    coarse = [ctx.exp(Decimal(-hi)) for hi in range(max_nats + 1)]
    fine = [Decimal(1)]
    for _ in range((1 << frac_bits) - 1):
        fine.append(ctx.multiply(fine[-1], e_step))
    for i in range(n):
        hi, lo = divmod(i, 1 << frac_bits)
        v = ctx.multiply(ctx.multiply(coarse[hi], fine[lo]), one)
        out[i] = int(v.to_integral_value(rounding=ROUND_HALF_EVEN))
    return out


def to_fixed(t: torch.Tensor, frac_bits: int) -> np.ndarray:
    """``round_half_even(t · 2**frac_bits)`` as int64, exact for float16/32/64 inputs of float32 values.

    ``t`` is first made float32 (exact for the float32 weights it is meant for, and the same
    float32 from a float64 or float16 copy of them), then widened to float64, where the
    power-of-two scaling and the rounding are exact.
    """
    a = np.rint(np.ldexp(t.detach().to("cpu", torch.float32).to(torch.float64).numpy(), frac_bits))
    if not np.all(np.abs(a) < _ACC_LIMIT):
        raise ValueError(f"integer synthesis: a value of {float(t.detach().abs().max()):g} at 2**{frac_bits} could overflow 64-bit integers")
    return a.astype(np.int64)


def _round_shift(acc: np.ndarray, bits: int) -> np.ndarray:
    """``round(acc / 2**bits)`` (half up), integers only."""
    if bits <= 0:
        return acc << -bits
    return (acc + (1 << (bits - 1))) >> bits


def saturate(x: np.ndarray) -> np.ndarray:
    """Clip to ``±2**SATURATE_BITS`` (after every layer, and after adding a logit offset)."""
    lim = 1 << SATURATE_BITS
    return np.clip(x, -lim, lim - 1)


@dataclass(frozen=True)
class _Conv:
    """A grouped stride-``s`` 1-D convolution in integers (transposed ones are converted to it)."""

    weight: np.ndarray  # (Cout, Cin/g, K) int64, at most 2**WEIGHT_BITS in magnitude
    bias: np.ndarray  # (Cout,) int64, scale 2**(ACT_BITS + frac)
    frac: int  # fractional bits of the weights
    groups: int
    stride: int
    pad: Tuple[int, int]
    upsample: int  # zeros inserted between inputs (transposed convolution's stride)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, c_in, L = x.shape
        if self.upsample > 1:
            up = np.zeros((n, c_in, (L - 1) * self.upsample + 1), dtype=np.int64)
            up[..., :: self.upsample] = x
            x = up
        x = np.pad(x, ((0, 0), (0, 0), self.pad))
        c_out, c_g, K = self.weight.shape
        g = self.groups
        win = np.lib.stride_tricks.sliding_window_view(x, K, axis=2)[:, :, :: self.stride]  # (n, Cin, Lout, K)
        L_out = win.shape[2]
        win = win.reshape(n, g, c_g, L_out, K)
        w = self.weight.reshape(g, c_out // g, c_g, K)
        acc = np.empty((n, g, c_out // g, L_out), dtype=np.int64)
        for gi in range(g):  # integer matrix products: exact, in any order
            cols = win[:, gi].transpose(0, 2, 1, 3).reshape(n, L_out, c_g * K)
            acc[:, gi] = np.matmul(cols, w[gi].reshape(c_out // g, c_g * K).T).transpose(0, 2, 1)
        acc = acc.reshape(n, c_out, L_out) + self.bias.reshape(1, -1, 1)
        return saturate(_round_shift(acc, self.frac))


def _convert_conv(m: nn.Module) -> _Conv:
    transposed = isinstance(m, nn.ConvTranspose1d)
    w = m.weight.detach().to("cpu", torch.float32)
    if transposed:
        # ConvTranspose1d(x) = Conv1d(zero-upsampled x) with each group's kernel flipped and transposed.
        c_in, c_og, K = w.shape
        g = m.groups
        w = w.reshape(g, c_in // g, c_og, K).permute(0, 2, 1, 3).flip(-1).reshape(g * c_og, c_in // g, K)
        p = K - 1 - m.padding[0]
        pad, stride, upsample = (p, p + m.output_padding[0]), 1, m.stride[0]
    else:
        K = w.shape[-1]
        pad, stride, upsample = (m.padding[0], m.padding[0]), m.stride[0], 1
    if m.dilation[0] != 1 or (not transposed and m.padding_mode != "zeros"):
        raise ValueError(f"integer synthesis: unsupported convolution {m}")
    peak = float(w.abs().max())
    # frac: the most fractional bits that keep every |weight| <= 2**WEIGHT_BITS (frexp is exact).
    frac = WEIGHT_BITS - (math.frexp(peak)[1] if peak > 0 else 0)
    weight = to_fixed(w, frac)
    bias = to_fixed(m.bias, frac + ACT_BITS) if m.bias is not None else np.zeros(weight.shape[0], dtype=np.int64)
    fan_in = weight.shape[1] * weight.shape[2]
    worst = int(np.abs(weight).reshape(weight.shape[0], -1).sum(1).max()) * (1 << SATURATE_BITS) + int(np.abs(bias).max())
    if worst >= _ACC_LIMIT or fan_in * (1 << (WEIGHT_BITS + SATURATE_BITS)) >= _ACC_LIMIT:
        raise ValueError(f"integer synthesis: {m} could overflow 64-bit accumulators")
    return _Conv(weight, bias, frac, m.groups, stride, pad, upsample)


class FixedPointNet:
    """A ``nn.Sequential`` of Conv1d / ConvTranspose1d / ReLU / channel shuffles, in integers.

    Input and output are fixed-point ``int64`` arrays with :data:`ACT_BITS` fractional bits.
    """

    def __init__(self, layers: Sequence):
        self.layers = list(layers)

    @classmethod
    def from_sequential(cls, seq: nn.Sequential) -> "FixedPointNet":
        layers: List = []
        for m in seq:
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)):
                layers.append(_convert_conv(m))
            elif isinstance(m, nn.ReLU):
                layers.append(lambda x: np.maximum(x, 0))
            elif type(m).__name__ == "ChannelShuffle":
                layers.append(functools.partial(_shuffle, groups=int(m.groups)))
            else:
                raise ValueError(f"integer synthesis: unsupported layer {type(m).__name__}")
        return cls(layers)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = saturate(np.asarray(x, dtype=np.int64))
        for layer in self.layers:
            x = layer(x)
        return x


def _shuffle(x: np.ndarray, groups: int) -> np.ndarray:
    if groups == 1:
        return x
    n, c, L = x.shape
    return x.reshape(n, groups, c // groups, L).transpose(0, 2, 1, 3).reshape(n, c, L)


def integer_softmax_weights(logits: np.ndarray) -> np.ndarray:
    """Unnormalized softmax weights over the last axis, integers only (exponent by table).

    ``logits`` are fixed point with :data:`ACT_BITS` fractional bits; the result is
    ``≈ 2**EXP_ONE_BITS · exp(ℓ - max ℓ)``, with ``d = max ℓ - ℓ`` rounded to steps of
    ``2**-EXP_FRAC_BITS`` nats and 0 beyond :data:`EXP_MAX_NATS`.
    """
    table = exp_table()
    d = logits.max(-1, keepdims=True) - logits
    idx = _round_shift(d, ACT_BITS - EXP_FRAC_BITS)
    return np.where(idx < len(table), table[np.minimum(idx, len(table) - 1)], 0)
