"""The distribution codec ("pdf model") of Ulhaq & Bajić, ICIP 2024.

A small 1-D compression model whose *signal* is the per-channel histogram
``p`` of a latent (``(n, C, B)``: ``C`` channels over ``B`` bins). It has its
own entropy bottleneck; the bitstream it produces is the *side bitstream*
(``pdf``) that lets the decoder rebuild the encoding distributions ``p̂``.

.. code-block:: none

    p (n, C, B) ─► g_a_pdf ─► v (n, M, B/8) ─► Q ─► EntropyBottleneck(M) ─► "pdf" strings
                                                     │
    p̂ (n, C, B) ◄─ softmax over bins ◄─ g_s_pdf ◄─ v̂

    g_a_pdf: Conv1d(C → C0, 5) · Conv1d(C0 → N, K, s2) · Conv1d(N → N, K, s2)
             · Conv1d(N → N, K, s2) · Conv1d(N → M, K)           with C0 = max(N, C/2)
    g_s_pdf: the mirror image with ConvTranspose1d, then Conv1d(C0 → C, 5), softmax.

Every convolution is grouped (``groups`` = 8 by default) and followed by a
channel shuffle so that groups exchange information; ReLU between layers.
Paper sizes: ``(N, M) = (32, 16)`` for latents of ``C = 192`` channels and
``(64, 32)`` for ``C = 320``.

Beyond the paper (``logit_prior=True``): ``p̂ = softmax(g_s(v̂) + b)`` with ``b`` a learned
``(C, B)`` logit offset, started at the log of the static tables (:meth:`PdfModel.start_prior`,
which the latent codec calls at its first training step). ``g_s`` then codes each image's
*departure* from the static tables, and training starts at the static tables' rate instead of
far above it (at the lowest λ, the paper's layout still coded the valid photograph above the
static rate after 2,048 of its 8,192 steps). ``b`` is a parameter like the convolutions'
biases, so the integer synthesis adds it exactly. With it, fewer strided layers
(``num_downsample=1``: one side latent position per 2 bins instead of per 8) train too; at the
lowest λ the paper's layout put the peaks of some of the channels that carry most of the rate
1–2 bins off the image's own.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from torch import Tensor

from encdist.codec.coding import entropy_bottleneck_decompress, entropy_bottleneck_symbols
from encdist.codec.fixed_point import ACT_BITS, FixedPointNet, integer_softmax_weights, saturate, to_fixed
from encdist.registry import register_module

__all__ = ["ChannelShuffle", "PdfModel", "default_pdf_sizes"]


def default_pdf_sizes(num_channels: int) -> tuple[int, int]:
    """The paper's ``(N, M)`` for a latent with ``num_channels`` channels."""
    return (32, 16) if num_channels <= 192 else (64, 32)


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` groups (ShuffleNet)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return x
        n, c, *rest = x.shape
        return x.reshape(n, self.groups, c // self.groups, *rest).transpose(1, 2).reshape(n, c, *rest)


def _groups(groups: int, c_in: int, c_out: int) -> int:
    return math.gcd(groups, math.gcd(c_in, c_out))


def _conv(c_in, c_out, k, stride, groups, transpose=False) -> list[nn.Module]:
    g = _groups(groups, c_in, c_out)
    if transpose:
        conv = nn.ConvTranspose1d(
            c_in, c_out, k, stride=stride, padding=k // 2, output_padding=stride - 1, groups=g
        )
    else:
        conv = nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, groups=g)
    return [conv, ChannelShuffle(g)]


@register_module("PdfModel")
class PdfModel(nn.Module):
    """Compresses per-channel distributions ``p`` (``(n, C, B)``) into a side bitstream.

    Args:
        num_channels: ``C``, channels of the latent whose distributions are coded.
        num_bins: ``B``, bins of each distribution; a multiple of ``2**num_downsample``.
        N, M: hidden and latent channels (default: the paper's sizes for ``C``).
        kernel_size: ``K`` of the strided layers.
        groups: groups of every convolution (reduced per layer to divide both sides).
        num_downsample: strided layers (3 in the paper).
        logit_prior: add a learned per-(channel, bin) logit offset before the softmax, started at
            the log of the static tables (module docstring; beyond the paper).
    """

    def __init__(
        self,
        num_channels: int,
        num_bins: int = 256,
        N: int | None = None,
        M: int | None = None,
        kernel_size: int = 15,
        groups: int = 8,
        num_downsample: int = 3,
        logit_prior: bool = False,
    ):
        super().__init__()
        dN, dM = default_pdf_sizes(num_channels)
        N = dN if N is None else int(N)
        M = dM if M is None else int(M)
        if num_bins % (2**num_downsample):
            raise ValueError(f"num_bins={num_bins} must be a multiple of {2 ** num_downsample}")
        self.num_channels, self.num_bins, self.N, self.M = num_channels, num_bins, N, M
        self.num_downsample = num_downsample
        C0 = max(N, num_channels // 2)
        K = kernel_size

        a = _conv(num_channels, C0, 5, 1, groups)
        chans = [C0] + [N] * num_downsample
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            a += [nn.ReLU(inplace=True)] + _conv(c_in, c_out, K, 2, groups)
        a += [nn.ReLU(inplace=True)] + _conv(N, M, K, 1, groups)
        self.g_a = nn.Sequential(*a)

        s = _conv(M, N, K, 1, groups, transpose=True)
        rchans = chans[::-1]
        for c_in, c_out in zip(rchans[:-1], rchans[1:]):
            s += [nn.ReLU(inplace=True)] + _conv(c_in, c_out, K, 2, groups, transpose=True)
        s += [nn.ReLU(inplace=True)] + _conv(C0, num_channels, 5, 1, groups)
        self.g_s = nn.Sequential(*s)

        self.entropy_bottleneck = EntropyBottleneck(M)
        if logit_prior:
            self.logit_prior = nn.Parameter(torch.zeros(num_channels, num_bins))
            # 0 until start_prior: a run that starts from a checkpoint keeps the offset it learned.
            self.register_buffer("prior_started", torch.zeros((), dtype=torch.uint8))
        else:
            self.logit_prior = None

    @property
    def latent_length(self) -> int:
        return self.num_bins // 2**self.num_downsample

    @property
    def awaits_prior(self) -> bool:
        """Whether the logit offset is configured and not yet started (:meth:`start_prior`)."""
        return self.logit_prior is not None and not bool(self.prior_started)

    @torch.no_grad()
    def start_prior(self, log_pmf: Tensor) -> None:
        """Start the logit offset at ``log_pmf`` (``(C, B)``, the static tables' log), once."""
        if not self.awaits_prior:
            return
        if tuple(log_pmf.shape) != tuple(self.logit_prior.shape):
            raise ValueError(f"start_prior: expected log pmf of shape {tuple(self.logit_prior.shape)}, got {tuple(log_pmf.shape)}")
        self.logit_prior.copy_(log_pmf.to(self.logit_prior))
        self.prior_started.fill_(1)

    def synthesize(self, v_hat: Tensor) -> Tensor:
        """``p̂ = softmax(g_s(v̂) [+ b])`` over bins; float32 for reproducible CDFs."""
        logits = self.g_s(v_hat).float()
        if self.logit_prior is not None:
            logits = logits + self.logit_prior.float()
        return F.softmax(logits, dim=-1)

    def forward(self, p: Tensor) -> dict:
        v = self.g_a(p)
        v_hat, v_likelihoods = self.entropy_bottleneck(v)
        return {"p_hat": self.synthesize(v_hat), "likelihoods": v_likelihoods}

    def compress(self, p: Tensor, num_samples: int | None = None, refine_steps: int = 0, refine_lr: float = 0.05,
                 static_bits: Tensor | None = None, y_bits=None) -> dict:
        """Side strings of ``p``; with ``refine_steps``, of the refined latent (see :meth:`refine`)."""
        v = self.g_a(p)
        if refine_steps > 0:
            if num_samples is None:
                raise ValueError("refinement needs num_samples, the latent positions per channel")
            v = self.refine(p, v, num_samples, refine_steps, refine_lr, static_bits, y_bits)
        strings = self.entropy_bottleneck.compress(v)
        return {"strings": strings, "shape": tuple(v.shape[2:])}

    def _side_medians(self) -> Tensor:
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1)

    def coding_cost(self, v_hat: Tensor, counts: Tensor, y_bits=None) -> tuple[Tensor, Tensor]:
        """``(bits of y per channel (n, C), bits of the side latent (n,))`` when ``v̂`` codes a latent with bin ``counts``.

        ``y`` is costed with fixed ``p̂`` tables (the cross-entropy), or by ``y_bits(p̂)`` when given.
        """
        p_hat = self.synthesize(v_hat)
        bits_y = -(counts * torch.log2(p_hat.clamp_min(1e-9))).sum(dim=-1) if y_bits is None else y_bits(p_hat)
        _, lik = self.entropy_bottleneck(v_hat, training=False)
        bits_v = -torch.log2(lik).sum(dim=(1, 2))
        return bits_y, bits_v

    @torch.enable_grad()
    def refine(self, p: Tensor, v: Tensor, num_samples: int, steps: int, lr: float = 0.05,
               static_bits: Tensor | None = None, y_bits=None) -> Tensor:
        """Encoder-side search for the side latent that minimizes the image's total bits.

        Beyond the paper: ``g_a`` amortizes the encoding over a training set and
        is not optimal for any one image. Starting from ``v = g_a(p)``, take
        ``steps`` Adam steps on ``v`` (straight-through rounding) to minimize
        ``Σ_c Σ_b count[c, b] · −log2 p̂(v̂)[c, b] + bits(v̂)``, the estimated size
        of the ``y`` and side streams together (cf. latent refinement in
        Campos et al., CVPR-W 2019; Yang et al., NeurIPS 2020). Returns the
        quantized ``v̂`` of lowest cost seen, the starting point included, so it
        never costs more than ``g_a``'s by that estimate. The decoder is
        unchanged: it rebuilds ``p̂`` from whatever ``v̂`` the stream holds.

        With ``static_bits`` (``(n, C)``, each channel's bits under the static
        tables), candidates are compared with a channel costing
        ``min(adaptive, static)``, as the codec's per-channel fallback codes it.

        ``y_bits`` (a differentiable function of ``p̂`` returning ``(n, C)`` bits)
        replaces the fixed tables' cross-entropy by the cost of the coder actually
        deployed, e.g. the backward-adapted tables started from ``p̂``: refining for
        another coder's cost would optimize a rate the bytes do not follow.
        ``static_bits`` may live on any device: it follows ``v``'s.
        """
        counts = (p * num_samples).detach()
        if static_bits is not None:
            static_bits = static_bits.to(device=v.device, dtype=torch.float32)
        med = self._side_medians()
        frozen = [q for q in self.parameters() if q.requires_grad]
        for q in frozen:
            q.requires_grad_(False)
        try:
            v = v.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([v], lr=lr)
            best_cost, best = None, None
            for i in range(steps + 1):
                v_hat = v + (self.entropy_bottleneck.quantize(v, "dequantize", med) - v).detach()
                bits_y, bits_v = self.coding_cost(v_hat, counts, y_bits)
                with torch.no_grad():  # per image: each image keeps its own best
                    coded = torch.minimum(bits_y, static_bits) if static_bits is not None else bits_y
                    cost = coded.sum(-1) + bits_v
                    if best is None:
                        best_cost, best = cost.clone(), v_hat.detach().clone()
                    else:
                        better = cost < best_cost
                        best_cost = torch.where(better, cost, best_cost)
                        best = torch.where(better.view(-1, 1, 1), v_hat, best)
                if i == steps:
                    break
                # The gradient follows every channel (a channel the static table codes better now may
                # become worth coding adaptively); the selection above uses the per-channel minimum.
                opt.zero_grad()
                (bits_y.sum() + bits_v.sum()).backward()
                opt.step()
        finally:
            for q in frozen:
                q.requires_grad_(True)
        return best

    #: Side symbols are clipped to this magnitude before the integer synthesis (an escape may
    #: decode to any 32-bit value; encoder and decoder clip alike), keeping its inputs bounded.
    INTEGER_SYMBOL_LIMIT = 1 << 14

    def integer_weights(self, strings: list[bytes], shape=None) -> np.ndarray:
        """``p̂`` of each side string as integer softmax weights ``(n, C, B)``, integers only.

        The decoder's path (and the encoder's, which decodes its own side string): the side
        symbols are decoded with the side bottleneck's stored tables, ``g_s`` runs in fixed
        point and the softmax by table (:mod:`encdist.codec.fixed_point`), so the tables
        built from the result are the same on every platform and device. ``p̂`` in float
        (:meth:`synthesize`) is what training optimizes; the integer path follows it to
        within the rounding of 16 fractional bits.
        """
        shape = tuple(shape) if shape is not None else (self.latent_length,)
        symbols = entropy_bottleneck_symbols(self.entropy_bottleneck, strings, shape, "pdf stream").numpy()
        lim = self.INTEGER_SYMBOL_LIMIT
        v = np.clip(symbols, -lim, lim) << ACT_BITS
        v = v + to_fixed(self._side_medians().cpu(), ACT_BITS)
        logits = FixedPointNet.from_sequential(self.g_s)(v)
        if self.logit_prior is not None:  # the offset in fixed point, as the convolutions' biases
            logits = saturate(logits + to_fixed(self.logit_prior, ACT_BITS)[None])
        return integer_softmax_weights(logits)

    def decompress(self, strings: list[bytes], shape=None) -> Tensor:
        """``p̂`` of side strings in float, one image at a time: the training-time view of p̂.

        The coder never builds tables from it (a float network's output depends on the
        platform): it uses :meth:`integer_weights`. This is for analysis, and for
        measuring what the integer path costs against it.
        """
        shape = tuple(shape) if shape is not None else (self.latent_length,)
        eb = self.entropy_bottleneck
        out = [self.synthesize(entropy_bottleneck_decompress(eb, [s], shape, "pdf stream")) for s in strings]
        return torch.cat(out, dim=0)
