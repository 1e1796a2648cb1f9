"""Adaptive entropy-bottleneck latent codec (Ulhaq & Bajić, ICIP 2024).

A drop-in replacement for CompressAI's ``EntropyBottleneckLatentCodec`` that
codes each image's latent with *that image's* per-channel distribution instead
of the static, training-set-average one:

.. code-block:: none

                       ┌──────────── static EntropyBottleneck (frozen) ────────────┐
                       │ medians, support                                          │
    y ──► center ──► bound ──► histogram p (n, C, B) ──► PdfModel ──► "pdf" strings │
     │                                                    │                        │
     │                                                    ▼                        │
     │                                       p̂ (n, C, B) ──► per-image CDFs ◄──────┘
     │                                                    │
     └──► ŷ = round(y - median) + median ──────────► rANS ──► "y" strings

``strings = [y_strings, pdf_strings]``, so summing the bytes of ``strings``
gives the true rate. The decoder decodes the side stream first, rebuilds the
same ``p̂`` and the same integer CDF tables, then decodes ``ŷ``.

Modes:

* ``enable_adaptive=False``: the plain static bottleneck (the baseline); the
  ``y`` strings are byte-identical to ``EntropyBottleneck.compress`` and the
  ``pdf`` strings are empty.
* ``ideal=True``: ``p̂ = p`` (the exact histogram), the bound that any side
  information scheme can reach. Its side strings carry ``p`` losslessly
  (zlib-packed counts) only so that decoding works; the bound's rate is the
  ``y`` rate alone.
* ``fallback_static=True`` (beyond the paper): per image *and per channel*,
  the encoder keeps whichever of the adaptive and the static distributions
  costs fewer bits (side stream and channel flags included), signalled in the
  side stream's first byte (``MODE_STATIC`` / ``MODE_ADAPTIVE`` /
  ``MODE_MIXED``, the last one followed by one flag bit per channel); the
  adaptive codec is then never worse than the static bottleneck, and a
  channel whose distribution the pdf model gets wrong costs no more than its
  static rate.
* ``backward_adaptation=True`` (beyond the paper, :mod:`encdist.codec.backward`):
  starting from the table the mode picked (static, ``p̂`` or per-channel
  mixed), each channel's table follows the symbols already coded, half a
  latent row at a time, with integer arithmetic on both sides. One table per
  image cannot follow statistics that change across the image; this can,
  at no side cost, and beats even the per-image ideal bound on photographs.
  With the fallback on, the encoder also keeps the fixed tables when they
  are cheaper (flag ``MODE_BACKWARD`` in the mode byte).

The bitstream (mode byte, checksum, payloads, symbol order) is defined and parsed
by :mod:`encdist.codec.bitstream`; tables and the range coder are :mod:`encdist.codec.coding`;
backward adaptation is :mod:`encdist.codec.backward`; the encoder's choice of mode is
:func:`~encdist.latent_codecs.mode_search.choose_mode`. How to code is a
:class:`~encdist.latent_codecs.options.CodingOptions` passed in (``codec.options``
by default): this class only coordinates. Decoding refuses any malformed input with
:class:`~encdist.errors.BitstreamError` before a large allocation: a latent whose image
is over ``max_pixels`` (:data:`encdist.codec.bitstream.MAX_DECODE_PIXELS` by default),
more than :data:`~encdist.codec.bitstream.MAX_DECODE_IMAGES` images, or a ``y`` string
too short for the declared shape under its tables
(:func:`~encdist.codec.coding.check_capacity`).
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import LatentCodec
from torch import Tensor

from encdist.codec import bitstream as bs
from encdist.codec.backward import BackwardAdaptation
from encdist.codec.bitstream import MODE_ADAPTIVE, MODE_BACKWARD, MODE_CONTEXT, MODE_MIXED, MODE_STATIC
from encdist.codec.context import ContextModel, channel_order
from encdist.codec.coding import (
    StreamDecoder,
    check_capacity,
    channel_bits,
    decode_with_indexes,
    encode_with_indexes,
    mixed_tables,
    pmf_tables,
    static_tables,
    table_support,
    weight_tables,
)
from encdist.errors import BitstreamError
from encdist.codec.histogram import bound_ste, hard_histogram, histogram, interp_log_pmf
from encdist.latent_codecs.mode_search import Family, cheapest_likelihoods, choose_mode
from encdist.latent_codecs.options import CodingOptions, resolve_options
from encdist.codec.pdf_model import PdfModel
from encdist.registry import register_module

__all__ = ["AdaptiveEntropyBottleneckLatentCodec", "MODE_STATIC", "MODE_ADAPTIVE", "MODE_MIXED", "MODE_BACKWARD"]


@register_module("AdaptiveEntropyBottleneckLatentCodec")
class AdaptiveEntropyBottleneckLatentCodec(LatentCodec):
    """Codes ``y`` with per-image distributions sent as a compressed side stream.

    Args:
        entropy_bottleneck: the model's (pretrained, usually frozen) static
            bottleneck; its medians center the histograms and its support
            bounds the coded symbols. A new one is made if omitted.
        channels: ``C`` (only needed when ``entropy_bottleneck`` is omitted).
        num_bins: ``B``, histogram bins (bin centers ``-B/2 … B/2-1``).
        bound_factor: latents are bounded to ``± bound_factor · (B-1)/2``
            around the histogram's center for the histogram.
        pdf_model: the distribution codec, or keyword arguments for :class:`PdfModel`.
        enable_adaptive, ideal, fallback_static, backward_adaptation, refine_steps,
            refine_lr: the default :class:`CodingOptions` (``codec.options``;
            ``enable_adaptive`` is its ``adaptive``).
        adapt_alpha, adapt_decay, adapt_phases: backward adaptation's parameters
            (:class:`~encdist.codec.backward.BackwardAdaptation`); part of the
            configuration the decoder must share.
        adapt_contexts: the default options' ``contexts`` (context-adaptive tables).
        context_model: the :class:`~encdist.codec.context.ContextModel` (or its keyword
            arguments) of context-adaptive coding; its tables are fitted by :meth:`fit_contexts`.
    """

    def __init__(
        self,
        entropy_bottleneck: EntropyBottleneck | None = None,
        channels: int | None = None,
        num_bins: int = 256,
        bound_factor: float = 0.75,
        enable_adaptive: bool = True,
        ideal: bool = False,
        fallback_static: bool = True,
        pdf_model: PdfModel | Dict[str, Any] | None = None,
        refine_steps: int = 0,
        refine_lr: float = 0.05,
        backward_adaptation: bool = True,
        adapt_alpha: int = 16,
        adapt_decay: float = 0.6,
        adapt_phases: int = 2,
        adapt_contexts: bool = True,
        context_model: ContextModel | Dict[str, Any] | None = None,
    ):
        super().__init__()
        if entropy_bottleneck is None:
            if channels is None:
                raise ValueError("give entropy_bottleneck or channels")
            entropy_bottleneck = EntropyBottleneck(channels)
        self.entropy_bottleneck = entropy_bottleneck
        self.num_bins = int(num_bins)
        self.bound_factor = float(bound_factor)
        self.options = CodingOptions(
            adaptive=bool(enable_adaptive), ideal=bool(ideal), fallback_static=bool(fallback_static),
            backward_adaptation=bool(backward_adaptation), contexts=bool(adapt_contexts),
            refine_steps=int(refine_steps), refine_lr=float(refine_lr),
        )
        self.adaptation = BackwardAdaptation(int(adapt_alpha), float(adapt_decay), int(adapt_phases))
        if not isinstance(context_model, ContextModel):
            context_model = ContextModel(**(context_model or {}))
        self.context_model = context_model
        # The context tables (module docstring): integer weights per (channel, context) over the B bins,
        # fitted to training latents (fit_contexts); all zero until then (the static tables stand in).
        X = context_model.num_contexts
        self.register_buffer("context_weights", torch.zeros(self.channels * X, self.num_bins, dtype=torch.int32))
        self._context_tables_memo = (None, None)  # (the integers they come from, the tables): see _context_tables
        if not isinstance(pdf_model, nn.Module):
            pdf_model = PdfModel(self.channels, self.num_bins, **(pdf_model or {}))
        self.pdf_model = pdf_model

    # ------------------------------------------------------------------ helpers
    @property
    def channels(self) -> int:
        return self.entropy_bottleneck.channels

    def _medians(self) -> Tensor:
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach()

    def _check_input(self, y: Tensor) -> None:
        if not isinstance(y, Tensor) or y.dim() != 4:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"expected a latent of shape (n, C, h, w), got {shape}")
        if y.shape[1] != self.channels:
            raise ValueError(f"latent has {y.shape[1]} channels, the codec expects {self.channels}")

    def bin_coordinates(self, y: Tensor, channels: slice = slice(None)) -> Tensor:
        """Bounded bin coordinates ``t`` of ``y`` (bin ``b`` holds symbol ``b - B/2``); ``y`` holds ``channels``."""
        u = y - self._medians()[channels].view(1, -1, 1, 1)
        c = (self.num_bins - 1) / 2
        r = self.bound_factor * c
        return bound_ste(u + self.num_bins // 2, c - r, c + r)

    def target_distribution(self, y: Tensor) -> Tensor:
        """``p``: straight-through per-channel histogram of the centered latent, ``(n, C, B)``."""
        return histogram(self.bin_coordinates(y), self.num_bins)

    def static_pmf(self) -> Tensor:
        """The static bottleneck's pmf at the ``B`` bin centers, ``(C, B)``."""
        eb = self.entropy_bottleneck
        s = torch.arange(self.num_bins, device=eb.quantiles.device) - self.num_bins // 2
        samples = s.view(1, 1, -1).to(eb.quantiles.dtype) + self._medians().view(-1, 1, 1)
        pmf, _, _ = eb._likelihood(samples, stop_gradient=True)
        return pmf[:, 0, :].clamp_min(1e-9)

    def adaptive_tables(self, p_hat: Tensor):
        """Integer CDF tables ``(n, C, L+2)``, lengths ``(C,)`` and offsets ``(C,)`` from a float ``p̂``.

        For analysis (what p̂ in float would cost); the coder builds its tables with
        :meth:`side_tables`, integers only.
        """
        return pmf_tables(p_hat, *table_support(self.entropy_bottleneck, self.num_bins), self.num_bins)

    def fingerprint(self, ideal: bool, context: bool = False) -> int:
        """Checksum seed: the configuration a decoder must share (see :mod:`encdist.codec.bitstream`).

        A context-coded stream's seed also covers the context model and its tables.
        """
        # Parameter shapes pin down the rest of the pdf model's architecture (kernel size, groups, layers).
        shapes = tuple((k, tuple(v.shape)) for k, v in self.pdf_model.named_parameters())
        seed = bs.fingerprint((type(self.pdf_model).__name__, self.channels, self.num_bins, bool(ideal),
                               getattr(self.pdf_model, "N", 0), getattr(self.pdf_model, "M", 0), shapes,
                               self.adaptation.params))
        if context:
            weights = self.context_weights.detach().cpu().numpy().astype("<i4")
            seed = zlib.crc32(weights, bs.fingerprint((seed, self.context_model.params)))
        return seed

    # ------------------------------------------------------------------ context tables
    @property
    def contexts_fitted(self) -> bool:
        return bool(self.context_weights.any())

    def fit_contexts(self, latents, reduce=None) -> int:
        """Fit the context tables to ``latents`` (an iterable of ``(n, C, h, w)`` tensors): returns the images used.

        ``reduce``: applied to the ``(C·X, B)`` int64 counts before the tables are made (a sum
        over the ranks of a distributed run, so that all of them fit the same tables).

        Per (channel, context), the symbols' histogram over the ``B`` bins plus 256
        pseudo-symbols of the static table, scaled to integer weights (about 2**24 per
        row). Integers throughout (counts, the stored static tables, floor divisions), so
        the same latents give the same tables everywhere.
        """
        X, B, C = self.context_model.num_contexts, self.num_bins, self.channels
        counts = np.zeros((C * X, B), dtype=np.int64)
        images = 0
        with torch.no_grad():
            for y in latents:
                sym = self._symbols(y.detach()).cpu()
                rows = np.arange(C).reshape(1, -1, 1, 1) * X + self.symbol_contexts(sym).numpy()
                bins = np.clip(sym.numpy().astype(np.int64) + B // 2, 0, B - 1)
                counts += np.bincount((rows * B + bins).ravel(), minlength=C * X * B).reshape(C * X, B)
                images += len(sym)
        if reduce is not None:
            counts = np.asarray(reduce(counts), dtype=np.int64)
        w = (counts << 16) + 256 * np.repeat(self._static_bin_freqs(), X, axis=0)
        shift = np.maximum(0, np.frexp(w.sum(-1, keepdims=True).astype(np.float64))[1] - 38)  # keeps w·2**24 in int64
        w >>= shift
        weights = np.maximum((w << 24) // w.sum(-1, keepdims=True), 1)
        self.context_weights.copy_(torch.from_numpy(weights.astype(np.int32)))
        return images

    def _static_bin_freqs(self) -> np.ndarray:
        """The static tables' integer frequencies over the ``B`` bins ``(C, B)`` (0 outside the support)."""
        cdf, lengths, offsets = (t.numpy().astype(np.int64) for t in static_tables(self.entropy_bottleneck))
        k = np.arange(self.num_bins)[None, :] - self.num_bins // 2 - offsets[:, None]
        inside = (k >= 0) & (k < (lengths - 2)[:, None])
        j = np.clip(k, 0, cdf.shape[1] - 2)
        return np.where(inside, np.take_along_axis(cdf, j + 1, 1) - np.take_along_axis(cdf, j, 1), 0)

    def _channel_order(self) -> np.ndarray:
        """The context coder's channel order (:func:`~encdist.codec.context.channel_order`); the
        channels' own order before the bottleneck has tables (training only: coding needs them)."""
        if self.entropy_bottleneck._offset.numel() == 0:
            return np.arange(self.channels)
        cdf, lengths, _ = static_tables(self.entropy_bottleneck)
        return channel_order(cdf.numpy(), lengths.numpy())

    def context_pmf(self) -> Tensor:
        """The context tables as pmfs ``(C, X, B)`` (float; the static pmf where not fitted), for training."""
        C, X = self.channels, self.context_model.num_contexts
        if not self.contexts_fitted:
            return self.static_pmf().unsqueeze(1).expand(C, X, -1)
        w = self.context_weights.to(self.entropy_bottleneck.quantiles.dtype).view(C, X, -1)
        return w / w.sum(-1, keepdim=True)

    def _context_tables(self, static):
        """Integer ``(cdf (C·X, L+2), offsets (C·X,))`` of the context tables (model channel order)."""
        X = self.context_model.num_contexts
        if not self.contexts_fitted:
            return np.repeat(static[0].numpy(), X, axis=0), np.repeat(static[2].numpy(), X)
        lo, length = table_support(self.entropy_bottleneck, self.num_bins)
        weights = self.context_weights.cpu().numpy()
        # A function of these integers only, and 10 ms to build at C=192: kept while they are the same (compared whole).
        key = (weights.tobytes(), lo.numpy().tobytes(), length.numpy().tobytes())
        if self._context_tables_memo[0] != key:
            cdf, _, offsets = weight_tables(weights[None].astype(np.int64), lo.repeat_interleave(X),
                                            length.repeat_interleave(X), self.num_bins)
            tables = (cdf[0].numpy(), offsets.numpy())
            for t in tables:
                t.flags.writeable = False
            self._context_tables_memo = (key, tables)
        return self._context_tables_memo[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint from before context tables: they start unfitted (zeros).
        state_dict.setdefault(prefix + "context_weights", torch.zeros_like(self.context_weights))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, y: Tensor, options: CodingOptions | str | None = None) -> Dict[str, Any]:
        """Training / estimation pass: likelihoods of ``y`` under the tables the encoder would use.

        ``likelihoods["y"]`` models the coder ``options`` deploy, so the rate a model
        trains for (and logs as ``bpp_y``) is the rate it codes at: the paper's fixed
        ``p̂`` tables, or, with backward adaptation, the adapted tables started from
        ``p̂`` (:meth:`BackwardAdaptation.likelihoods`), and with the fallback the
        encoder's choice of tables (:func:`~encdist.latent_codecs.mode_search.cheapest_likelihoods`).
        """
        self._check_input(y)
        o = resolve_options(options, self.options)
        eb = self.entropy_bottleneck
        y_hat = eb.quantize(y, "noise" if self.training else "dequantize", eb._get_medians().view(1, -1, 1, 1))
        t = self.bin_coordinates(y)
        p = histogram(t, self.num_bins)
        n = y.shape[0]
        if not o.adaptive:
            _, y_likelihoods = eb(y)
            return {
                "likelihoods": {"y": y_likelihoods, "pdf": y.new_ones(n, 0)},
                "y_hat": y_hat,
                "p": p,
                "p_hat": self.static_pmf().unsqueeze(0).expand(n, -1, -1),
            }
        pdf_likelihoods = y.new_ones(n, 0)
        if o.ideal:
            p_hat = p
        elif o.use_pdf:
            if self.training and getattr(self.pdf_model, "awaits_prior", False):  # its first training step: start at the static tables
                self.pdf_model.start_prior(torch.log(self.static_pmf()))
            out = self.pdf_model(p)
            p_hat, pdf_likelihoods = out["p_hat"], out["likelihoods"]
        else:
            p_hat = self.static_pmf().unsqueeze(0).expand(n, -1, -1)
        if o.backward or o.fallback:
            y_likelihoods = self._deployed_likelihoods(o, t, p_hat)
        else:
            # Forward: p̂ at the coded symbol; backward: straight-through gradients to p̂ and y.
            y_likelihoods = torch.exp(interp_log_pmf(torch.log(p_hat.clamp_min(1e-9)), t))
        return {
            "likelihoods": {"y": y_likelihoods, "pdf": pdf_likelihoods},
            "y_hat": y_hat,
            "p": p,
            "p_hat": p_hat,
        }

    def _deployed_likelihoods(self, o: CodingOptions, t: Tensor, p_hat: Tensor) -> Tensor:
        """Likelihoods of the backward-adapted and/or fallback coder ``o`` at bin coordinates ``t``.

        ``p_hat`` is the static pmf itself when ``o`` offers no p̂ (``use_pdf=False``).
        """
        static = p_hat[:1] if not o.use_pdf else self.static_pmf().unsqueeze(0)
        families = []
        if o.backward:
            eb = self.entropy_bottleneck
            support = table_support(eb, self.num_bins) if eb._offset.numel() else (None, None)
            symbols = t.detach().round() - self.num_bins // 2
            if o.context:  # the encoder offers both (compress): the cheaper per image is what it codes
                families.append(self._context_likelihoods(symbols, p_hat if o.use_pdf else None, support))
            families.append(self.adaptation.likelihoods(symbols, [p_hat, static] if o.use_pdf else [static], *support))
        if not o.backward or o.fallback:
            # Fixed tables: p̂ at the coded symbol, with straight-through gradients to p̂ and y.
            fixed = torch.exp(interp_log_pmf(torch.log(p_hat.clamp_min(1e-9)), t))
            if o.use_pdf:
                bins = t.detach().round().long().clamp(0, self.num_bins - 1).flatten(2)
                families.append([fixed, static.expand(len(t), -1, -1).gather(2, bins).view_as(t)])
            else:
                families.append([fixed])
        lik = cheapest_likelihoods(families, o.fallback)
        if o.backward and t.requires_grad:
            # The adapted tables' counts do not depend on y: a y that trains follows the fixed tables' gradient.
            lp = interp_log_pmf(torch.log(p_hat.detach().clamp_min(1e-9)), t)
            lik = lik * torch.exp(lp - lp.detach())
        return lik

    def symbol_contexts(self, symbols: Tensor) -> Tensor:
        """The context of every symbol ``(n, C, h, w)`` (model channel order), as the coder computes it."""
        cm = self.context_model
        order = self._channel_order()
        sym = symbols.detach().long().cpu().numpy()
        out = np.empty(sym.shape, dtype=np.int64)
        for i, one in enumerate(sym):
            s = one[order]
            out[i][order] = cm.contexts(s, cm.thresholds(s), self.adaptation.phases)
        return torch.from_numpy(out)

    def _context_likelihoods(self, symbols: Tensor, p_hat: Tensor | None, support) -> List[Tensor]:
        """Likelihoods under the context-adaptive tables started from p̂'s mix (if any) and the context tables."""
        cm = self.context_model
        ctx_pmf = self.context_pmf().unsqueeze(0)
        priors = [ctx_pmf] if p_hat is None else [(ctx_pmf + p_hat.unsqueeze(2)) / 2, ctx_pmf]
        adaptation = cm.adaptation(self.adaptation.phases)
        return adaptation.likelihoods(symbols, priors, *support, self.symbol_contexts(symbols), cm.num_contexts)

    # ------------------------------------------------------------------ side payload
    def _pack_side(self, o: CodingOptions, p: Tensor, sym: Tensor, static_bits: Tensor | None = None) -> bytes:
        """Side payload of one image (symbols ``sym``): its compressed distribution (or raw counts in ideal mode)."""
        num_samples = sym.shape[-2] * sym.shape[-1]
        if o.ideal:
            return bs.pack_counts((p * num_samples).round().to(torch.int32).cpu().numpy())
        y_bits = None
        if o.refine_steps and o.backward:
            y_bits, static_bits = self._backward_refinement_cost(sym, static_bits is not None)
        out = self.pdf_model.compress(p.unsqueeze(0), num_samples, o.refine_steps, o.refine_lr, static_bits, y_bits)
        return out["strings"][0]

    def side_tables(self, payload: bytes, ideal: bool):
        """Integer CDF tables ``(cdf (C, L+2), lengths (C,), offsets (C,))`` of one image's side payload.

        Integers only (the contract that makes a file decode anywhere): p̂ through the
        distribution codec's integer synthesis (:meth:`PdfModel.integer_weights`), or the
        exact counts in ideal mode, shared out by :func:`~encdist.codec.coding.weight_tables`.
        Encoder and decoder both call this on the payload, so they build the same tables.
        """
        if ideal:
            weights = bs.unpack_counts(payload, self.channels, self.num_bins)[None].astype(np.int64)
        else:
            weights = self.pdf_model.integer_weights([payload])
        cdf, lengths, offsets = weight_tables(weights, *table_support(self.entropy_bottleneck, self.num_bins), self.num_bins)
        return cdf[0], lengths, offsets

    def _backward_refinement_cost(self, sym: Tensor, fallback: bool):
        """``(y_bits, static_bits)`` the refinement minimizes when the tables adapt backward.

        ``y_bits(p̂)``: each channel's bits under the adapted tables started from ``p̂``
        (:meth:`BackwardAdaptation.channel_bits`, the differentiable model of the integer
        tables that training uses); ``static_bits``: the same started from the static table,
        the per-channel alternative of the fallback (``None`` without it), costed by the same
        model so that the two compare like with like.
        """
        device = self.entropy_bottleneck.quantiles.device
        support = table_support(self.entropy_bottleneck, self.num_bins)
        y_bits = self.adaptation.channel_bits(sym.unsqueeze(0), self.num_bins, *support, device=device)
        if not fallback:
            return y_bits, None
        with torch.no_grad():
            return y_bits, y_bits(self.static_pmf().unsqueeze(0))

    # ------------------------------------------------------------------ compress
    #: Channels processed at once where a whole-latent temporary would be large (same results).
    CHANNEL_CHUNK = 16

    def _chunks(self):
        C, k = self.channels, self.CHANNEL_CHUNK
        return [slice(c, min(C, c + k)) for c in range(0, C, k)]

    def _symbols(self, y: Tensor) -> Tensor:
        med = self._medians().view(1, -1, 1, 1)
        out = torch.empty(y.shape, dtype=torch.int32, device=y.device)
        for c in self._chunks():
            out[:, c] = torch.round(y[:, c] - med[:, c])
        return out

    def _hard_histogram(self, y: Tensor) -> Tensor:
        """``p`` of the quantized latent, exact (no gradient), channel chunk by channel chunk."""
        with torch.no_grad():
            return torch.cat([hard_histogram(self.bin_coordinates(y[:, c], c), self.num_bins) for c in self._chunks()], dim=1)

    def _indexes(self, shape) -> Tensor:
        return torch.arange(self.channels).view(-1, 1, 1).expand(-1, *shape)

    def compress(self, y: Tensor, options: CodingOptions | str | None = None) -> Dict[str, Any]:
        """``{"strings": [y_strings, pdf_strings], "shape", "y_hat"}``, coded as ``options`` says (default: ``self.options``)."""
        self._check_input(y)
        o = resolve_options(options, self.options)
        shape = tuple(y.shape[-2:])
        symbols = self._symbols(y).cpu()
        static = static_tables(self.entropy_bottleneck)
        if not o.adaptive:
            # The static bottleneck's own bytes (CompressAI's), behind a header whose checksum covers them.
            indexes, seed = self._indexes(shape), self.fingerprint(False)
            y_strings = [encode_with_indexes(symbols[i], indexes, *static) for i in range(len(y))]
            pdf_strings = [bs.write_side(seed, MODE_STATIC, b"", symbols[i], len(s)) for i, s in enumerate(y_strings)]
        else:
            p = self._hard_histogram(y.detach()) if o.use_pdf else None
            seeds = {False: self.fingerprint(o.ideal)}
            if o.context:
                seeds[True] = self.fingerprint(o.ideal, context=True)
            y_strings, pdf_strings = [], []
            for i in range(len(y)):
                mode, y_string, payload = self._compress_one(o, symbols[i], None if p is None else p[i], static)
                y_strings.append(y_string)
                seed = seeds[bool(mode & MODE_CONTEXT)]
                pdf_strings.append(bs.write_side(seed, mode, payload, symbols[i], len(y_string)))
        return {"strings": [y_strings, pdf_strings], "shape": shape, "y_hat": self._dequantize(symbols, y.dtype).to(y.device)}

    def _compress_one(self, o: CodingOptions, sym: Tensor, p: Tensor | None, static):
        """``(mode, y string, payload)`` of one image's symbols ``(C, h, w)``."""
        indexes = self._indexes(sym.shape[-2:])
        # Per-channel bits under the static tables: what the fallback compares against (and the refinement,
        # with fixed tables; with backward adaptation, _pack_side costs the adapted tables instead).
        s_bits = channel_bits(sym, *static) if o.fallback else None
        adaptive = payload = None
        if p is not None:
            refine_ref = s_bits.float().unsqueeze(0) if s_bits is not None and o.refine_steps else None
            payload = self._pack_side(o, p, sym, refine_ref)
            # The decoder's tables come from the decoded payload: derive them the same way here.
            adaptive = self.side_tables(payload, o.ideal)
        families = []
        if o.backward:
            if o.context:
                # The contexts' tables, and one table per channel: on an image whose statistics the
                # context tables do not fit (measured: a smooth photograph at low rate), the latter wins.
                families.append(self._context_family(sym, adaptive, static))
            families.append(self._backward_family(sym, adaptive, static))
        if not o.backward or o.fallback:
            # Fixed tables: the paper's codec, and the guarantee of never costing more than the static one.
            first = adaptive if adaptive is not None else static
            families.append(Family(
                0, b"",
                lambda: (None if adaptive is None else channel_bits(sym, *adaptive), s_bits),
                lambda use: encode_with_indexes(sym, indexes, *mixed_tables(use, first, static)),
                False,
            ))
        return choose_mode(families, payload, self.channels, o.fallback)

    def _backward_family(self, sym: Tensor, adaptive, static) -> Family:
        """Backward-adapted tables started from p̂'s table (if any) and from the static one."""
        radius = self.adaptation.radius(sym.numpy(), self.num_bins)
        lo, length = (t.numpy() for t in table_support(self.entropy_bottleneck, self.num_bins))
        starts = ([] if adaptive is None else [(adaptive[0].numpy(), adaptive[2].numpy())]) + [(static[0].numpy(), static[2].numpy())]
        freqs, b_lo, b_len = self.adaptation.base_freqs(starts, lo, length, radius)
        plan = self.adaptation.plan(sym.numpy(), np.stack(freqs), b_lo, b_len)
        bits = torch.from_numpy(plan.bits)
        static_start = len(starts) - 1
        return Family(
            MODE_BACKWARD, bytes([radius]),
            lambda: (None if adaptive is None else bits[0], bits[static_start]),
            lambda use: plan.encode(np.where(use.numpy(), 0, static_start)),
            True,
        )

    def _context_starts(self, order: np.ndarray, radius: int, adaptive, static):
        """The context coder's base frequencies ``(C·X, K)`` in coding order, and ``(lo, length)`` per channel.

        Starts: the context tables, and with p̂ the even mix of each context table and the
        channel's p̂ table (p̂ first). Encoder and decoder both call this.
        """
        X = self.context_model.num_contexts
        lo, length = (t.numpy() for t in table_support(self.entropy_bottleneck, self.num_bins))
        ctx_cdf, ctx_off = self._context_tables(static)
        rows = (order[:, None] * X + np.arange(X)).ravel()
        (f_ctx,), b_lo, b_len = self.adaptation.base_freqs(
            [(ctx_cdf[rows], ctx_off[rows])], np.repeat(lo[order], X), np.repeat(length[order], X), radius)
        starts = [f_ctx]
        if adaptive is not None:
            (f_pdf,), _, _ = self.adaptation.base_freqs(
                [(adaptive[0].numpy()[order], adaptive[2].numpy()[order])], lo[order], length[order], radius)
            starts.insert(0, (f_ctx + np.repeat(f_pdf, X, axis=0)) // 2)
        return starts, b_lo[::X], b_len[::X]

    def _context_family(self, sym: Tensor, adaptive, static) -> Family:
        """Context-adaptive tables (:mod:`encdist.codec.context`) started from p̂'s mix (if any) and the context tables."""
        cm = self.context_model
        order = self._channel_order()
        s = sym.numpy()  # model order: read in coding order band by band, never copied whole
        radius = self.adaptation.radius(s, self.num_bins)
        thresholds = cm.thresholds(s, order)
        phases = self.adaptation.phases
        starts, b_lo, b_len = self._context_starts(order, radius, adaptive, static)
        plan = cm.adaptation(phases).plan(s, np.stack(starts), b_lo, b_len,
                                          lambda r0, r1: cm.contexts(s, thresholds, phases, (r0, r1), order),
                                          cm.num_contexts, order)
        bits = torch.empty(plan.bits.shape, dtype=torch.float64)
        bits[:, torch.from_numpy(order)] = torch.from_numpy(plan.bits)  # back to the model's channel order
        last = len(starts) - 1
        return Family(
            MODE_BACKWARD | MODE_CONTEXT, bytes([radius]) + cm.pack_thresholds(thresholds),
            lambda: (None if adaptive is None else bits[0], bits[last]),
            lambda use: plan.encode(np.where(use.numpy()[order], 0, last)),
            True,
        )

    # ------------------------------------------------------------------ decompress
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int],
                   options: CodingOptions | str | None = None, max_pixels: int | None = None, scale: int = 16,
                   **kwargs) -> Dict[str, Any]:
        """``{"y_hat"}`` from ``strings`` and ``shape``; malformed input raises :class:`BitstreamError`.

        Only ``options.ideal`` matters here: the rest, the static baseline included, is in the mode byte.
        ``shape`` is refused if its image (``scale``: pixels per latent position a side,
        16 for ``y`` of CompressAI's transforms) is over ``max_pixels``
        (:func:`encdist.codec.bitstream.check_shape`), and every ``y`` string is checked
        against the shape (its substream lengths) before any image is decoded.
        """
        o = resolve_options(options, self.options)
        y_strings, pdf_strings = bs.check_strings(strings, 2)
        shape = bs.check_shape(shape, scale, max_pixels)
        num_symbols = self.channels * shape[0] * shape[1]
        for y_string in y_strings:
            check_capacity(y_string, num_symbols, 0.0, "y stream")
        static = static_tables(self.entropy_bottleneck)
        device = self.entropy_bottleneck.quantiles.device
        out: List[Tensor] = []
        for y_string, pdf_string in zip(y_strings, pdf_strings):
            # The mode byte says how to decode (a static stream is MODE_STATIC): options only set ``ideal``.
            out.append(self._decompress_one(o, y_string, pdf_string, shape, static))
        symbols = out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)
        del out
        return {"y_hat": self._dequantize(symbols, self.entropy_bottleneck.quantiles.dtype).to(device)}

    def _dequantize(self, symbols: Tensor, dtype: torch.dtype) -> Tensor:
        """``symbols + medians`` as ``dtype``, on the CPU; consumes ``symbols`` (int32, ``(n, C, h, w)``).

        In float32 the symbols' buffer becomes the result's (the same size), channel chunk
        by channel chunk, with the same values as ``symbols.float() + medians``: encoder
        and decoder never hold two latent-sized tensors for it.
        """
        medians = self._medians().cpu().view(1, -1, 1, 1)
        if dtype != torch.float32 or symbols.dtype != torch.int32 or not symbols.is_contiguous():
            return symbols.to(dtype) + medians.to(dtype)
        y_hat = symbols.view(torch.float32)
        for c in self._chunks():
            y_hat[:, c] = symbols[:, c].float() + medians[:, c]
        return y_hat

    def _decompress_one(self, o: CodingOptions, y_string: bytes, pdf_string: bytes, shape, static) -> Tensor:
        side = bs.parse_side(pdf_string, self.channels, self.num_bins, o.ideal, self.context_model)
        # Per channel: start from p̂'s table (``use``) or the static one.
        use = np.full(self.channels, side.base != MODE_STATIC)
        adaptive = None
        if side.base != MODE_STATIC:
            if side.mask is not None:
                use = bs.unpack_mask(side.mask, self.channels)
            try:
                adaptive = self.side_tables(side.pdf, o.ideal)
            except BitstreamError as e:
                raise BitstreamError(f"{bs.MISMATCH} ({e})") from None
        if side.context:
            cm = self.context_model
            order = self._channel_order()
            starts, b_lo, b_len = self._context_starts(order, side.radius, adaptive, static)
            first = np.repeat(use[order], cm.num_contexts)[:, None]
            base = starts[-1] if adaptive is None else np.where(first, starts[0], starts[-1])
            min_bits = shape[0] * shape[1] * float(self.adaptation.bits_floor(b_len).sum())
            decoder = StreamDecoder(y_string, self.channels * shape[0] * shape[1], "y stream", min_bits)
            decoded = cm.adaptation(self.adaptation.phases).decode(decoder, shape, base, b_lo, b_len, cm, side.thresholds)
            sym = torch.empty(decoded.shape, dtype=torch.int32)
            sym[torch.from_numpy(order)] = torch.from_numpy(decoded)
        elif side.backward:
            starts = [(static[0].numpy(), static[2].numpy())] + ([] if adaptive is None else [(adaptive[0].numpy(), adaptive[2].numpy())])
            lo, length = (t.numpy() for t in table_support(self.entropy_bottleneck, self.num_bins))
            freqs, b_lo, b_len = self.adaptation.base_freqs(starts, lo, length, side.radius)
            base = freqs[0] if adaptive is None else np.where(use[:, None], freqs[1], freqs[0])
            min_bits = shape[0] * shape[1] * float(self.adaptation.bits_floor(b_len).sum())
            decoder = StreamDecoder(y_string, self.channels * shape[0] * shape[1], "y stream", min_bits)
            sym = torch.from_numpy(self.adaptation.decode(decoder, shape, base, b_lo, b_len))
        else:
            tables = static if adaptive is None else mixed_tables(torch.from_numpy(use), adaptive, static)
            sym = decode_with_indexes(y_string, self._indexes(shape), *tables, "y stream", torch.int32)
        bs.check_crc(side, self.fingerprint(o.ideal, side.context), sym, len(y_string))
        return sym
