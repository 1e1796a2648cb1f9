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
* ``backward_adaptation=True`` (beyond the paper, :mod:`encdist.backward`):
  starting from the table the mode picked (static, ``p̂`` or per-channel
  mixed), each channel's table follows the symbols already coded, half a
  latent row at a time, with integer arithmetic on both sides. One table per
  image cannot follow statistics that change across the image; this can,
  at no side cost, and beats even the per-image ideal bound on photographs.
  With the fallback on, the encoder also keeps the fixed tables when they
  are cheaper (flag ``MODE_BACKWARD`` in the mode byte).

Side-stream layout (adaptive and ideal modes), per image::

    [mode: 1 byte][crc32(config, mode, y length, payload, y symbols): 4 bytes][payload]
    payload = pdf strings                                  (MODE_ADAPTIVE)
            = channel flags, ceil(C/8) bytes + pdf strings  (MODE_MIXED; bit set: adaptive)
            = nothing                                       (MODE_STATIC)
    with MODE_BACKWARD (0x10) set in the mode byte, the payload starts with one
    more byte, the largest symbol magnitude of the image (the tables' radius).

The checksum covers the *decoded symbols*, so the decoder detects truncated
or corrupted streams, streams of a model of another configuration, and also
a ``p̂`` rebuilt differently from the encoder's (another platform's floating
point): any of them raises :class:`BitstreamError` instead of returning a
wrong image. Decoding itself is safe on any input (:mod:`encdist.coding`).
It costs 40 bits per image (1e-4 bpp on a 768×512 image), plus one bit per channel in mixed mode.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import LatentCodec
from torch import Tensor

from encdist.backward import adapted_tables, decode_adapted, stream_layout
from encdist.coding import (
    StreamDecoder,
    decode_with_indexes,
    encode_lists,
    encode_with_indexes,
    quantized_cdf_table,
    table_bits,
)
from encdist.errors import BitstreamError
from encdist.histogram import bound_ste, hard_histogram, histogram, interp_log_pmf
from encdist.pdf_model import PdfModel
from encdist.registry import register_module

__all__ = ["AdaptiveEntropyBottleneckLatentCodec", "MODE_STATIC", "MODE_ADAPTIVE", "MODE_MIXED", "MODE_BACKWARD"]

MODE_STATIC = 0
MODE_ADAPTIVE = 1
MODE_MIXED = 2  # per channel: adaptive where its flag bit is set, static elsewhere
MODE_BACKWARD = 0x10  # flag on any of the above: the tables adapt row by row (encdist.backward)
_HEADER = struct.Struct(">BI")  # mode, crc32
_MISMATCH = (
    "bitstream checksum mismatch: the streams are corrupt or truncated, were made by "
    "a model of another configuration, or decoded on a platform that rebuilt p̂ differently"
)


class _Family(NamedTuple):
    """One way of building tables, offering the static, adaptive and mixed modes (see ``_encode_cheapest``)."""

    flag: int  # OR-ed into the mode byte
    prefix: bytes  # side bytes before the mode's payload
    bits: Callable[[], Tuple[Tensor, Tensor]]
    encode: Callable[[Tensor], bytes]
    exact: bool  # bits() are the tables' exact bits


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
        enable_adaptive: ``False`` gives the plain static bottleneck.
        ideal: send ``p`` itself as ``p̂`` (zero-cost bound).
        fallback_static: per image and channel, keep the cheaper of adaptive and static.
        pdf_model: the distribution codec, or keyword arguments for :class:`PdfModel`.
        refine_steps: encoder-side refinement of the side latent per image
            (:meth:`PdfModel.refine`, beyond the paper); 0 codes ``g_a(p)`` as is.
            The decoder and the bitstream format do not depend on it.
        refine_lr: Adam step size of the refinement.
        backward_adaptation: adapt each channel's table row by row to the
            symbols already coded (:mod:`encdist.backward`, beyond the paper),
            starting from the table the mode picked (static, ``p̂`` or mixed).
            Costs no bits; the stream's mode byte says whether it was used.
        adapt_alpha: prior strength of the starting table, in pseudo-symbols.
        adapt_decay: share of the counts kept from one block (half a latent
            row for 2 phases) to the next, in steps of 1/256.
        adapt_phases: interleaved phases per latent row (range-decoder calls per row).
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
    ):
        super().__init__()
        if entropy_bottleneck is None:
            if channels is None:
                raise ValueError("give entropy_bottleneck or channels")
            entropy_bottleneck = EntropyBottleneck(channels)
        self.entropy_bottleneck = entropy_bottleneck
        C = entropy_bottleneck.channels
        self.num_bins = int(num_bins)
        self.bound_factor = float(bound_factor)
        self.enable_adaptive = bool(enable_adaptive)
        self.ideal = bool(ideal)
        self.fallback_static = bool(fallback_static)
        if int(refine_steps) < 0 or not float(refine_lr) > 0:
            raise ValueError(f"refine_steps must be >= 0 and refine_lr > 0, got {refine_steps!r}, {refine_lr!r}")
        self.refine_steps = int(refine_steps)
        self.refine_lr = float(refine_lr)
        if int(adapt_alpha) < 1 or not 0 <= float(adapt_decay) <= 1 or int(adapt_phases) < 1:
            raise ValueError(
                f"need adapt_alpha >= 1, 0 <= adapt_decay <= 1 and adapt_phases >= 1, got {adapt_alpha!r}, {adapt_decay!r}, {adapt_phases!r}"
            )
        self.backward_adaptation = bool(backward_adaptation)
        self.adapt_alpha = int(adapt_alpha)
        self.adapt_decay = float(adapt_decay)
        self.adapt_phases = int(adapt_phases)
        if not isinstance(pdf_model, nn.Module):
            pdf_model = PdfModel(C, self.num_bins, **(pdf_model or {}))
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

    def bin_coordinates(self, y: Tensor) -> Tensor:
        """Bounded bin coordinates ``t`` of ``y`` (bin ``b`` holds symbol ``b - B/2``)."""
        u = y - self._medians().view(1, -1, 1, 1)
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

    def _support(self):
        """Coded symbol range per channel: the static support, clipped to the bins."""
        eb = self.entropy_bottleneck
        if eb._offset.numel() == 0:
            raise RuntimeError("entropy bottleneck not updated: call model.update() before compress")
        lo = eb._offset.long().clamp(min=-(self.num_bins // 2))
        hi = (eb._offset + eb._cdf_length - 3).long().clamp(max=self.num_bins // 2 - 1)
        hi = torch.maximum(hi, lo)
        return lo, hi - lo + 1

    def adaptive_tables(self, p_hat: Tensor):
        """Integer CDF tables ``(n, C, L+2)``, lengths ``(C,)`` and offsets ``(C,)`` from ``p̂``."""
        lo, length = self._support()
        L = int(length.max())
        idx = (lo + self.num_bins // 2).view(1, -1, 1) + torch.arange(L).view(1, 1, -1)
        idx = idx.clamp(max=self.num_bins - 1).expand(p_hat.shape[0], -1, -1).to(p_hat.device)
        pmf = p_hat.double().gather(2, idx)
        cdf = quantized_cdf_table(pmf, length.view(1, -1).expand(p_hat.shape[0], -1))
        return cdf.cpu(), (length + 2).int().cpu(), lo.int().cpu()

    def _fingerprint(self) -> int:
        # Parameter shapes pin down the rest of the pdf model's architecture (kernel size, groups, layers).
        shapes = tuple((k, tuple(v.shape)) for k, v in self.pdf_model.named_parameters())
        cfg = (type(self.pdf_model).__name__, self.channels, self.num_bins, self.ideal,
               getattr(self.pdf_model, "N", 0), getattr(self.pdf_model, "M", 0), shapes, self._adapt_params())
        return zlib.crc32(repr(cfg).encode())

    # ------------------------------------------------------------------ forward
    def forward(self, y: Tensor) -> Dict[str, Any]:
        self._check_input(y)
        eb = self.entropy_bottleneck
        y_hat = eb.quantize(y, "noise" if self.training else "dequantize", eb._get_medians().view(1, -1, 1, 1))
        t = self.bin_coordinates(y)
        p = histogram(t, self.num_bins)
        n = y.shape[0]
        if not self.enable_adaptive:
            _, y_likelihoods = eb(y)
            return {
                "likelihoods": {"y": y_likelihoods, "pdf": y.new_ones(n, 0)},
                "y_hat": y_hat,
                "p": p,
                "p_hat": self.static_pmf().unsqueeze(0).expand(n, -1, -1),
            }
        if self.ideal:
            p_hat, pdf_likelihoods = p, y.new_ones(n, 0)
        else:
            out = self.pdf_model(p)
            p_hat, pdf_likelihoods = out["p_hat"], out["likelihoods"]
        log_p_hat = torch.log(p_hat.clamp_min(1e-9))
        y_likelihoods = torch.exp(interp_log_pmf(log_p_hat, t))
        return {
            "likelihoods": {"y": y_likelihoods, "pdf": pdf_likelihoods},
            "y_hat": y_hat,
            "p": p,
            "p_hat": p_hat,
        }

    # ------------------------------------------------------------------ compress
    def _static_tables(self):
        eb = self.entropy_bottleneck
        return eb._quantized_cdf.cpu(), eb._cdf_length.cpu(), eb._offset.cpu()

    def _symbols(self, y: Tensor) -> Tensor:
        return torch.round(y - self._medians().view(1, -1, 1, 1)).long()

    def _indexes(self, shape) -> Tensor:
        return torch.arange(self.channels).view(-1, 1, 1).expand(-1, *shape)

    def _pack_side(self, p: Tensor, num_samples: int, static_bits: Tensor | None = None) -> bytes:
        """Side payload of one image: its compressed distribution (or raw counts in ideal mode)."""
        if self.ideal:
            counts = (p * num_samples).round().to(torch.int32).cpu().numpy()
            return zlib.compress(counts.tobytes(), 9)
        out = self.pdf_model.compress(p.unsqueeze(0), num_samples, self.refine_steps, self.refine_lr, static_bits)
        return out["strings"][0]

    def _unpack_side(self, payload: bytes) -> Tensor:
        """``p̂`` of one image, ``(1, C, B)``, from its side payload."""
        if not self.ideal:
            return self.pdf_model.decompress([payload])
        try:
            raw = zlib.decompress(payload)
        except zlib.error as e:
            raise BitstreamError(f"pdf stream: corrupt ideal-mode histogram ({e})") from None
        if len(raw) != 4 * self.channels * self.num_bins:
            raise BitstreamError("pdf stream: ideal-mode histogram of the wrong size")
        counts = torch.frombuffer(bytearray(raw), dtype=torch.int32).double().clamp_min(0)
        counts = counts.view(1, self.channels, self.num_bins)
        return counts / counts.sum(-1, keepdim=True).clamp_min(1)

    def compress(self, y: Tensor) -> Dict[str, Any]:
        self._check_input(y)
        shape = tuple(y.shape[-2:])
        symbols = self._symbols(y).cpu()
        indexes = self._indexes(shape)
        s_cdf, s_len, s_off = self._static_tables()
        if not self.enable_adaptive:
            y_strings = [encode_with_indexes(symbols[i], indexes, s_cdf, s_len, s_off) for i in range(len(y))]
            pdf_strings = [b"" for _ in y_strings]
        else:
            p = hard_histogram(self.bin_coordinates(y).detach(), self.num_bins)
            backward = self.backward_adaptation and not self.ideal
            y_strings, pdf_strings = [], []
            for i in range(len(y)):
                # Per-channel bits under the static tables: what the refinement and the fallback compare against.
                s_bits = self._channel_bits(symbols[i], s_cdf, s_len, s_off) if self.fallback_static and not self.ideal else None
                refine_ref = s_bits.float().unsqueeze(0) if s_bits is not None and self.refine_steps else None
                payload = self._pack_side(p[i], shape[0] * shape[1], refine_ref)
                # The decoder's p̂ comes from the decoded payload: derive it the same way here.
                a_cdf, a_len, a_off = self.adaptive_tables(self._unpack_side(payload))
                adaptive, static = (a_cdf[0], a_len, a_off), (s_cdf, s_len, s_off)
                families = []
                if backward:
                    radius = self._radius(symbols[i])
                    bits, encode = self._backward_plan(symbols[i], adaptive, static, radius)
                    families.append(_Family(MODE_BACKWARD, bytes([radius]), bits, encode, True))
                if not backward or self.fallback_static:
                    # Fixed tables: the paper's codec, and the guarantee of never costing more than the static one.
                    bits = lambda a=adaptive, sym=symbols[i], sb=s_bits: (self._channel_bits(sym, *a), sb)
                    encode = lambda use, a=adaptive, sym=symbols[i]: encode_with_indexes(
                        sym, indexes, *self._mixed_tables(use, a, static)
                    )
                    families.append(_Family(0, b"", bits, encode, False))
                mode, y_string, payload = self._encode_cheapest(families, payload)
                y_strings.append(y_string)
                pdf_strings.append(self._header(mode, payload, symbols[i], len(y_string)) + payload)
        y_hat = (symbols.to(y.dtype) + self._medians().cpu().view(1, -1, 1, 1)).to(y.device)
        return {"strings": [y_strings, pdf_strings], "shape": shape, "y_hat": y_hat}

    #: Relative margin within which the cost estimates are not trusted and both streams are coded.
    FALLBACK_MARGIN = 0.03
    #: The same with exact estimates (backward adaptation): rANS flushes at most this many bits more or less.
    EXACT_MARGIN_BITS = 64

    def _mask_bytes(self) -> int:
        return math.ceil(self.channels / 8)

    def _encode_cheapest(self, families: Sequence["_Family"], pdf_payload: bytes):
        """``(mode byte, y_string, side payload)`` of the cheapest way to code one image.

        Each family of tables (fixed, or backward-adapted) offers the static,
        adaptive and per-channel mixed modes. ``family.bits()`` gives their
        per-channel cost estimates ``(adaptive, static)`` and
        ``family.encode(use)`` the y string coding the channels flagged in
        ``use`` from the adaptive table and the others from the static one.
        The mixed mode takes, per channel, the cheaper table and pays one flag
        bit per channel. Without the fallback, the first family's adaptive
        mode is used. When the two best estimates are within the margin both
        are coded and their actual sizes compared: ``FALLBACK_MARGIN`` of the
        rate for fixed tables (estimates leave escapes out), ``EXACT_MARGIN_BITS``
        when both estimates are exact (backward-adapted tables' own bits, and
        every mode escapes the same symbols).
        """
        every = torch.ones(self.channels, dtype=torch.bool)
        if not self.fallback_static or self.ideal:
            # The ideal bound sends p at zero cost: it never falls back.
            f = families[0]
            return MODE_ADAPTIVE | f.flag, f.encode(every), f.prefix + pdf_payload
        side = 8 * len(pdf_payload)
        cost, plan = {}, {}
        for f in families:
            a_bits, s_bits = f.bits()
            use = a_bits < s_bits  # channels coded with the adaptive distribution
            extra = 8 * len(f.prefix)
            cost[MODE_ADAPTIVE | f.flag] = float(a_bits.sum()) + side + extra
            plan[MODE_ADAPTIVE | f.flag] = (f, every, pdf_payload)
            cost[MODE_STATIC | f.flag] = float(s_bits.sum()) + extra
            plan[MODE_STATIC | f.flag] = (f, ~every, b"")
            if 0 < int(use.sum()) < self.channels:
                cost[MODE_MIXED | f.flag] = float(torch.where(use, a_bits, s_bits).sum()) + side + extra + 8 * self._mask_bytes()
                plan[MODE_MIXED | f.flag] = (f, use, self._pack_mask(use) + pdf_payload)

        def code(mode):
            f, use, payload = plan[mode]
            return f.encode(use), f.prefix + payload

        best, second = sorted(cost, key=cost.get)[:2]
        y_string, payload = code(best)
        exact = plan[best][0].exact and plan[second][0].exact
        margin = self.EXACT_MARGIN_BITS if exact else cost[second] * self.FALLBACK_MARGIN
        if cost[best] < cost[second] - margin:
            return best, y_string, payload
        y2, payload2 = code(second)
        if len(y2) + len(payload2) < len(y_string) + len(payload):
            return second, y2, payload2
        return best, y_string, payload

    # ------------------------------------------------------------------ backward adaptation
    def _adapt_params(self):
        return self.adapt_alpha, round(self.adapt_decay * 256), self.adapt_phases

    def _backward_support(self, radius: int):
        """Coded range per channel under backward adaptation: the adaptive support within ``±radius`` (numpy)."""
        lo, length = (t.numpy().astype(np.int64) for t in self._support())
        hi = lo + length - 1
        b_lo = np.clip(-radius, lo, hi)
        b_hi = np.clip(radius, b_lo, hi)
        return b_lo, b_hi - b_lo + 1

    def _base_freqs(self, tables, radius: int):
        """Integer base frequencies ``(C, K)`` of each ``(cdf, offsets)`` table on the backward support.

        In-support symbols keep the table's frequencies; the escape gets 1,
        since the image holds no symbol beyond ``±radius`` (a channel whose
        support is narrower than that may still escape, and can).
        """
        lo, length = self._backward_support(radius)
        k = np.arange(int(length.max()) + 1)[None, :]
        out = []
        for cdf, offsets in tables:
            cdf = cdf.numpy().astype(np.int64)
            j = np.clip((lo - offsets.numpy().astype(np.int64))[:, None] + k, 0, cdf.shape[1] - 2)
            f = np.take_along_axis(cdf, j + 1, 1) - np.take_along_axis(cdf, j, 1)
            out.append(np.where(k < length[:, None], f, (k == length[:, None]).astype(np.int64)))
        return out, lo, length

    def _radius(self, symbols: Tensor) -> int:
        """Largest symbol magnitude of the image, sent in one byte (at most ``B/2``)."""
        return min(int(symbols.abs().max()) if symbols.numel() else 0, self.num_bins // 2)

    def _backward_plan(self, symbols: Tensor, adaptive, static, radius: int):
        """Per-channel bits ``(adaptive, static)`` and the encoder of :meth:`_encode_cheapest`, with backward adaptation."""
        C = self.channels
        (f_adaptive, f_static), lo, length = self._base_freqs([(adaptive[0], adaptive[2]), (static[0], static[2])], radius)
        # Both starting points adapted at once (the counts are the same).
        tables, bits, ordered, bounds = adapted_tables(
            symbols.numpy(), np.stack([f_adaptive, f_static]), lo, length, *self._adapt_params()
        )
        pos, idx = stream_layout(C, *symbols.shape[-2:], self.adapt_phases)
        values = ordered.ravel()[pos].tolist()
        nb = len(bounds) - 1
        sizes, offsets = (length + 2).tolist() * nb, lo.tolist() * nb
        bits = torch.from_numpy(bits)

        def encode(use: Tensor) -> bytes:
            t = np.where(use.numpy()[None, :, None], tables[0], tables[1]).reshape(nb * C, -1)
            return encode_lists(values, idx, t.tolist(), sizes, offsets)

        return (lambda: (bits[0], bits[1])), encode

    def _channel_bits(self, symbols: Tensor, cdf: Tensor, lengths: Tensor, offsets: Tensor) -> Tensor:
        """Bits of each channel of ``symbols`` (``(C, h, w)``) under integer tables; out-of-support symbols count as escapes."""
        K = cdf.shape[-1] - 1
        escape = (lengths.long() - 2).view(-1, 1)  # index of each table's tail (escape) symbol
        rel = symbols.reshape(self.channels, -1) - offsets.long().view(-1, 1)
        rel = torch.where((rel < 0) | (rel > escape), escape, rel)
        counts = torch.zeros(self.channels, K, dtype=torch.long).scatter_add_(1, rel, torch.ones_like(rel))
        return table_bits(counts, cdf)

    @staticmethod
    def _mixed_tables(use: Tensor, adaptive, static):
        """Per channel, the adaptive table where ``use`` is set, the static one elsewhere."""
        (a_cdf, a_len, a_off), (s_cdf, s_len, s_off) = adaptive, static
        W = max(a_cdf.shape[-1], s_cdf.shape[-1])
        a_cdf = torch.nn.functional.pad(a_cdf.to(torch.int32), (0, W - a_cdf.shape[-1]))
        s_cdf = torch.nn.functional.pad(s_cdf.to(torch.int32), (0, W - s_cdf.shape[-1]))
        return (torch.where(use.view(-1, 1), a_cdf, s_cdf), torch.where(use, a_len.int(), s_len.int()),
                torch.where(use, a_off.int(), s_off.int()))

    def _pack_mask(self, use: Tensor) -> bytes:
        return np.packbits(use.numpy().astype(np.uint8)).tobytes()

    def _unpack_mask(self, payload: bytes) -> Tensor:
        n = self._mask_bytes()
        if len(payload) < n:
            raise BitstreamError(f"pdf stream: {len(payload)} bytes is shorter than the {n}-byte channel flags")
        bits = np.unpackbits(np.frombuffer(payload[:n], dtype=np.uint8))[: self.channels]
        return torch.from_numpy(bits.astype(bool))

    def _header(self, mode: int, payload: bytes, symbols: Tensor, y_length: int) -> bytes:
        crc = zlib.crc32(payload, zlib.crc32(struct.pack(">BI", mode, y_length), self._fingerprint()))
        data = symbols.to(torch.int32).contiguous().numpy().tobytes()
        return _HEADER.pack(mode, zlib.crc32(data, crc))

    # ------------------------------------------------------------------ decompress
    def decompress(self, strings: List[List[bytes]], shape: Sequence[int], **kwargs) -> Dict[str, Any]:
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise BitstreamError("expected strings = [y_strings, pdf_strings]")
        y_strings, pdf_strings = strings
        if len(y_strings) != len(pdf_strings):
            raise BitstreamError(f"{len(y_strings)} y strings but {len(pdf_strings)} pdf strings")
        if len(shape) != 2 or min(shape) < 1:
            raise BitstreamError(f"invalid latent shape {tuple(shape)}")
        shape = tuple(int(s) for s in shape)
        indexes = self._indexes(shape)
        s_cdf, s_len, s_off = self._static_tables()
        device = self.entropy_bottleneck.quantiles.device
        out = []
        for y_string, pdf_string in zip(y_strings, pdf_strings):
            if not self.enable_adaptive:
                out.append(decode_with_indexes(y_string, indexes, s_cdf, s_len, s_off, "y stream"))
                continue
            if len(pdf_string) < _HEADER.size:
                raise BitstreamError(f"pdf stream: {len(pdf_string)} bytes is shorter than its header")
            mode, crc = _HEADER.unpack_from(pdf_string)
            payload = bytes(pdf_string[_HEADER.size:])
            base, backward = mode & ~MODE_BACKWARD, bool(mode & MODE_BACKWARD)
            if base not in (MODE_STATIC, MODE_ADAPTIVE, MODE_MIXED):
                raise BitstreamError(f"pdf stream: unknown coding mode {mode} (corrupt stream?)")
            if self.ideal and (base == MODE_MIXED or backward):
                raise BitstreamError(f"{_MISMATCH} (coding mode {mode} is never written in ideal mode)")
            rest = payload
            if backward:
                if not rest or rest[0] > self.num_bins // 2:
                    raise BitstreamError(f"pdf stream: missing or invalid symbol radius ({_MISMATCH})")
                radius, rest = rest[0], rest[1:]
            # Per channel: start from the adaptive table (``use``) or the static one.
            use = torch.full((self.channels,), base != MODE_STATIC)
            adaptive = None
            if base != MODE_STATIC:
                try:
                    if base == MODE_MIXED:
                        use, rest = self._unpack_mask(rest), rest[self._mask_bytes():]
                    a_cdf, a_len, a_off = self.adaptive_tables(self._unpack_side(rest))
                except BitstreamError as e:
                    raise BitstreamError(f"{_MISMATCH} ({e})") from None
                adaptive = (a_cdf[0], a_len, a_off)
            if backward:
                tables = [(s_cdf, s_off)] + ([] if adaptive is None else [(adaptive[0], adaptive[2])])
                freqs, lo, length = self._base_freqs(tables, radius)
                base_freq = freqs[0] if adaptive is None else np.where(use.numpy()[:, None], freqs[1], freqs[0])
                decoder = StreamDecoder(y_string, self.channels * shape[0] * shape[1], "y stream")
                sym = torch.from_numpy(decode_adapted(decoder, shape, base_freq, lo, length, *self._adapt_params()))
            else:
                tables = (s_cdf, s_len, s_off) if adaptive is None else self._mixed_tables(use, adaptive, (s_cdf, s_len, s_off))
                sym = decode_with_indexes(y_string, indexes, *tables, "y stream")
            if _HEADER.unpack(self._header(mode, payload, sym, len(y_string)))[1] != crc:
                raise BitstreamError(_MISMATCH)
            out.append(sym)
        symbols = torch.stack(out).to(device)
        y_hat = symbols.to(self.entropy_bottleneck.quantiles.dtype) + self._medians().view(1, -1, 1, 1)
        return {"y_hat": y_hat}
