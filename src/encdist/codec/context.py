"""Contexts for the backward-adapted coder: what the decoder already knows about a symbol.

Backward adaptation (:mod:`encdist.codec.backward`) gives each channel one table that
follows the symbols already coded. A latent still holds structure that such a table is
blind to: where the co-located symbols of other channels are large, this channel's symbol
is likely large too, and so where its neighbours in the rows above are. Here each channel
keeps a small set of adapted tables instead of one, indexed by a *context* computed from
symbols the decoder already has, so the structure is used at no side cost:

.. code-block:: none

    channel order: the static tables' widest first (smallest largest frequency: a fixed
                   function of the model's integer tables), cut into G groups of sizes
                   ∝ 1, 1, 2, 4, … (as ELIC's channel groups)

    block (latent row r, phase φ), group g:
        spatial level  s = min(|N| + |W'|, S-1)        N: (r-1, j); W': (r, j-1) if φ > 0
                                                        (decoded in an earlier phase), else (r-1, j-1)
        channel level  q = #{t ∈ T_g : Σ_{c' in groups < g} |ŷ_c'(r, j)| > t}   (0 for g = 0)
        context        x = s·Q + q    →  channel c's table x of this block

``T_g`` (``Q-1`` thresholds per group after the first) are the image's quantiles of the
channel statistic, chosen by the encoder and sent in the side stream (Exp-Golomb codes of
their steps, :meth:`ContextModel.pack_thresholds`), so the channel levels are balanced at every rate. Within a block, the groups are decoded one
after another (one rANS call each), so a symbol's channel context only uses groups decoded
before it: a block costs ``G`` batched calls, ``h·P·G`` per image, never one per symbol.
The counts behind every table are updated once per block, as without contexts, so the
encoder computes every table at once (:class:`~encdist.codec.backward.AdaptedPlan`).

Each (channel, context) table starts from its own *context table*, counted on training
latents (the codec's ``context_weights``), since a context's symbols alone are too few to
learn from a channel-wide start; with p̂, from the even mix of that table and p̂'s.

Everything is integers. (One spatial level, one channel level and one group make one table
per channel, which is the coder without contexts, ``MODE_BACKWARD``, up to its own α and decay.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from encdist.codec.backward import BackwardAdaptation
from encdist.errors import BitstreamError

__all__ = ["ContextModel", "channel_order"]

_LIMITS = {"groups": 8, "spatial_levels": 4, "channel_levels": 8}
_THRESHOLD_MAX = 0xFFFF
_SUM_CHUNK = 1 << 20  # symbols summed at once by ContextModel._channel_statistics
_EG_ORDERS = 8  # Exp-Golomb orders the side stream can name (3 bits)
_EG_MAX_PREFIX = 16  # longest zero prefix of a step's code (a step is at most 0xFFFF: 17 bits with k=0)


def _eg_bits(v: int, k: int) -> int:
    """Bits of the order-``k`` Exp-Golomb code of ``v >= 0``."""
    return 2 * (v + (1 << k)).bit_length() - 1 - k


def _threshold_steps(t: np.ndarray) -> np.ndarray:
    """``t[0,0]``, then ``t[g,0] - t[g-1,0]`` down the first column and ``t[g,q] - t[g,q-1]`` along rows."""
    steps = np.diff(t, axis=1, prepend=0)
    steps[:, 0] = np.diff(t[:, 0], prepend=0)
    return steps


class _BitReader:
    """Most-significant-bit-first reads from bytes; running out is a :class:`BitstreamError`."""

    def __init__(self, data: bytes):
        self.data, self.pos = bytes(data), 0

    def _bit(self) -> int:
        if self.pos >= 8 * len(self.data):
            raise BitstreamError(f"pdf stream: {len(self.data)} bytes end inside its context thresholds")
        b = (self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return b

    def read(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | self._bit()
        return v

    def zeros(self, most: int) -> int:
        """Zero bits before the next one bit (consumed), at most ``most``."""
        z = 0
        while not self._bit():
            z += 1
            if z > most:
                raise BitstreamError("pdf stream: invalid context threshold code (corrupt stream?)")
        return z

    @property
    def bytes_read(self) -> int:
        return (self.pos + 7) >> 3


@dataclass(frozen=True)
class ContextModel:
    """How symbols are split into contexts (module docstring); written in the stream (:meth:`pack`).

    Args:
        groups: channel groups decoded one after another at each position (1: no channel context).
        spatial_levels: levels of the neighbours' magnitude (1: no spatial context).
        channel_levels: levels of the earlier groups' co-located magnitude (1: none).
        alpha, decay: the backward adaptation of the context tables (prior strength, share of
            the counts kept per block): each table sees fewer symbols than a channel's single
            table, and its learned start (the codec's context tables) is worth trusting longer.
    """

    groups: int = 8
    spatial_levels: int = 3
    channel_levels: int = 3
    alpha: int = 16
    decay: float = 0.9

    def __post_init__(self):
        for name, top in _LIMITS.items():
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= int(v) <= top:
                raise ValueError(f"ContextModel.{name} must be an integer in 1..{top}, got {v!r}")
        BackwardAdaptation(self.alpha, self.decay)  # the same checks

    @property
    def params(self) -> Tuple[int, int, int, int, int]:
        """What encoder and decoder must share (fingerprinted with the context tables)."""
        return (self.groups, self.spatial_levels, self.channel_levels, *self.adaptation(1).params[:2])

    def adaptation(self, phases: int) -> BackwardAdaptation:
        """The backward adaptation of the context tables: this model's prior strength and decay."""
        return BackwardAdaptation(int(self.alpha), float(self.decay), int(phases))

    @property
    def channel_context(self) -> bool:
        return self.groups > 1 and self.channel_levels > 1

    @property
    def num_contexts(self) -> int:
        """Tables per channel (and block)."""
        return self.spatial_levels * (self.channel_levels if self.channel_context else 1)

    @property
    def num_thresholds(self) -> int:
        """Thresholds the side stream carries: ``Q-1`` per group after the first."""
        return (self.groups - 1) * (self.channel_levels - 1) if self.channel_context else 0

    # ------------------------------------------------------------------ stream field
    def pack_thresholds(self, thresholds: np.ndarray) -> bytes:
        """Side-stream field: the ``(G-1)·(Q-1)`` thresholds as Exp-Golomb codes of their steps.

        The encoder's thresholds never decrease along a group's levels, nor from one group's
        first to the next group's first (a later group's statistic sums more channels, so it is
        pointwise at least as large, and so are its quantiles; the clip to two bytes keeps the
        order). So each is sent as its step from the one before it, a small non-negative
        integer: ``t[0,0]``, ``t[g,0] - t[g-1,0]``, ``t[g,q] - t[g,q-1]``, Exp-Golomb of order
        ``k`` (3 bits, the encoder's cheapest ``k``), zero-padded to whole bytes. About 8 bytes
        at low rate where two bytes each took 28 (``G=8``, ``Q=3``). Thresholds out of that order
        or of 0..65535 are a caller's error (``ValueError``).
        """
        t = np.asarray(thresholds, dtype=np.int64).reshape(-1)
        if len(t) != self.num_thresholds or (t < 0).any() or (t > _THRESHOLD_MAX).any():
            raise ValueError(f"expected {self.num_thresholds} thresholds in 0..{_THRESHOLD_MAX}, got {t.tolist()}")
        if not len(t):
            return b""
        steps = _threshold_steps(t.reshape(self.groups - 1, self.channel_levels - 1)).ravel()
        if (steps < 0).any():
            raise ValueError(f"context thresholds must not decrease along a group nor between groups' first, got {t.tolist()}")
        k = min(range(_EG_ORDERS), key=lambda k: sum(_eg_bits(int(v), k) for v in steps))
        bits = [format(k, "03b")]
        for v in steps.tolist():
            u = v + (1 << k)
            bits.append("0" * (u.bit_length() - 1 - k) + format(u, "b"))
        s = "".join(bits)
        s += "0" * (-len(s) % 8)
        return int(s, 2).to_bytes(len(s) // 8, "big")

    def unpack_thresholds(self, data: bytes) -> Tuple[np.ndarray, bytes]:
        """``(thresholds (G-1, Q-1), rest)`` from the start of ``data``; :class:`BitstreamError` if malformed."""
        n = self.num_thresholds
        if not n:
            return np.zeros((0, 0), np.int64), bytes(data)
        reader = _BitReader(data)
        k = reader.read(3)
        steps = []
        for _ in range(n):
            zeros = reader.zeros(_EG_MAX_PREFIX)
            steps.append(((1 << (zeros + k)) | reader.read(zeros + k)) - (1 << k))  # the leading one is read
        steps = np.asarray(steps, dtype=np.int64).reshape(self.groups - 1, self.channel_levels - 1)
        t = np.cumsum(steps, axis=1)
        t += np.cumsum(steps[:, :1], axis=0) - steps[:, :1]
        if (t > _THRESHOLD_MAX).any():
            raise BitstreamError(f"pdf stream: context thresholds over {_THRESHOLD_MAX} (corrupt stream?)")
        return t, bytes(data[reader.bytes_read:])

    # ------------------------------------------------------------------ groups and levels
    def group_bounds(self, channels: int) -> List[int]:
        """Channel boundaries of the groups (in channel order): sizes ∝ 1, 1, 2, 4, …, at least one channel each."""
        G = min(self.groups if self.channel_context else 1, channels)
        weights = [1] + [1 << max(0, g - 1) for g in range(1, G)]
        total = sum(weights)
        bounds, acc = [0], 0
        for g in range(G):
            acc += weights[g]
            bounds.append(max(bounds[-1] + 1, min(channels - (G - 1 - g), channels * acc // total)))
        bounds[-1] = channels
        return bounds

    def thresholds(self, symbols: np.ndarray, channels: np.ndarray | None = None) -> np.ndarray:
        """Encoder side: ``(G-1, Q-1)`` thresholds, the image's quantiles of each group's channel statistic.

        ``symbols``: ``(C, h, w)`` in channel order, or in the model's with ``channels`` the
        channel order (:func:`channel_order`). Integers (a sort), clipped to two bytes.
        """
        if not self.channel_context:
            return np.zeros((0, 0), dtype=np.int64)
        Q = self.channel_levels
        out = []
        for stat in self._channel_statistics(symbols, channels):
            s = np.sort(stat.ravel())
            out.append([s[min(len(s) - 1, (len(s) * i) // Q)] for i in range(1, Q)])
        return np.minimum(np.asarray(out, dtype=np.int64).reshape(len(out), Q - 1), _THRESHOLD_MAX)

    def _channel_statistics(self, symbols: np.ndarray, channels: np.ndarray | None = None) -> List[np.ndarray]:
        """Per group after the first: ``Σ |ŷ|`` over the earlier groups' channels, ``(h, w)`` int64.

        Summed a few channels at a time (temporaries of at most :data:`_SUM_CHUNK` symbols), so
        nothing the size of the latent is allocated, and a band of rows takes a group at once.
        """
        bounds = self.group_bounds(symbols.shape[0])
        acc = np.zeros(symbols.shape[1:], dtype=np.int64)
        step = max(1, _SUM_CHUNK // max(1, acc.size))
        out = []
        for g0, g1 in zip(bounds[:-2], bounds[1:-1]):
            for c in range(g0, g1, step):
                part = slice(c, min(c + step, g1))
                acc += np.abs(symbols[part] if channels is None else symbols[channels[part]]).sum(0, dtype=np.int64)
            out.append(acc.copy())
        return out

    def contexts(self, symbols: np.ndarray, thresholds: np.ndarray, phases: int,
                 rows: Tuple[int, int] | None = None, channels: np.ndarray | None = None) -> np.ndarray:
        """Encoder side: the context of every symbol of latent rows ``rows`` (default: all), ``(C, r1-r0, w)`` int64.

        The decoder's rule (:meth:`spatial_contexts`, :meth:`channel_level`), applied to whole rows at once; ``symbols``
        ``(C, h, w)`` in channel order (or in the model's, with ``channels``, as :meth:`thresholds`).
        A band of rows needs the row above it and nothing the size of the latent, so the
        encoder computes them band by band (bounded memory).
        """
        C, h, w = symbols.shape
        r0, r1 = (0, h) if rows is None else rows
        top = max(r0 - 1, 0)
        band = symbols[:, top:r1] if channels is None else symbols[channels, top:r1]
        a = np.abs(np.asarray(band, dtype=np.int32))  # rows top..r1-1; a band, not the latent
        n = r1 - r0
        ctx = np.zeros((C, n, w), dtype=np.int64)
        here = a[:, r0 - top:]  # rows r0..r1-1
        if self.spatial_levels > 1:
            P = max(1, min(int(phases), w))
            spatial = np.zeros((C, n, w), dtype=np.int32)
            if r0 > 0:
                spatial[:] = a[:, :n]  # north: (r-1, j)
            else:
                spatial[:, 1:] = a[:, :n - 1]
            west_here = (np.arange(1, w) % P) != 0  # (r, j-1) where decoded in an earlier phase, else (r-1, j-1)
            spatial[:, :, 1:][:, :, west_here] += here[:, :, :-1][:, :, west_here]
            above = a[:, :n] if r0 > 0 else np.concatenate([np.zeros_like(a[:, :1]), a[:, :n - 1]], axis=1)
            spatial[:, :, 1:][:, :, ~west_here] += above[:, :, :-1][:, :, ~west_here]
            np.minimum(spatial, self.spatial_levels - 1, out=spatial)
            ctx += spatial * (self.num_contexts // self.spatial_levels)
        if self.channel_context:
            bounds = self.group_bounds(C)
            for g, stat in enumerate(self._channel_statistics(here), start=1):
                ctx[bounds[g]:bounds[g + 1]] += self.channel_level(stat, g, thresholds)[None]
        return ctx

    def spatial_contexts(self, decoded: np.ndarray, r: int, cols: np.ndarray, phase: int) -> np.ndarray:
        """The spatial part of the contexts of row ``r``'s columns ``cols`` (phase ``phase``), ``(C, m)`` int64.

        Reads only rows above and, past the first phase, earlier phases of row ``r``: known
        before any symbol of the block is decoded, so computed once per block.
        """
        C = decoded.shape[0]
        if self.spatial_levels == 1:
            return np.zeros((C, len(cols)), dtype=np.int64)
        s = np.abs(decoded[:, r - 1, cols]).astype(np.int64) if r > 0 else np.zeros((C, len(cols)), dtype=np.int64)
        has = cols > 0
        if phase > 0:
            s[:, has] += np.abs(decoded[:, r, cols[has] - 1])
        elif r > 0:
            s[:, has] += np.abs(decoded[:, r - 1, cols[has] - 1])
        np.minimum(s, self.spatial_levels - 1, out=s)
        s *= self.num_contexts // self.spatial_levels
        return s

    def channel_level(self, stat: np.ndarray, group: int, thresholds: np.ndarray) -> np.ndarray:
        """The channel level of group ``group``'s symbols from ``stat`` (any shape), the co-located ``Σ |ŷ|`` of the groups before."""
        if not self.channel_context or group == 0:
            return np.zeros(np.shape(stat), dtype=np.int64)
        return (stat[None] > np.asarray(thresholds[group - 1]).reshape((-1,) + (1,) * np.ndim(stat))).sum(0)


def channel_order(cdf, lengths) -> np.ndarray:
    """The coding order of the channels: the static tables' most spread first.

    A channel's spread is measured by its table's largest frequency (integers: the
    model's stored CDF tables), ties broken by index, so encoder and decoder agree
    everywhere. High-rate channels come first and are the context of the rest.
    """
    cdf, lengths = np.asarray(cdf, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    freq = np.diff(cdf, axis=-1)
    k = np.arange(freq.shape[-1])[None, :]
    top = np.where(k < (lengths - 1)[:, None], freq, 0).max(-1)
    return np.lexsort((np.arange(len(top)), top))
