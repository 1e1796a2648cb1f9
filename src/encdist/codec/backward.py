"""Backward adaptation of per-channel CDF tables, row by row (beyond the paper).

The paper's codec is *forward* adaptive: the encoder sends each image's
distribution ``p̂`` as side information and both sides code every latent
symbol with that one fixed table. A latent's statistics also change *within*
an image (sky rows, textured rows), which no per-image table can follow. Here
the decoder re-estimates each channel's distribution from the symbols it has
already decoded, starting from the transmitted (or static) table, so the
adaptation costs no bits:

.. code-block:: none

    row r, phase φ  ─►  table_b = quantize(α·f_base + Σ_{b'<b} γ^{b-1-b'} · count_b')
                          (block b = columns φ, φ+P, φ+2P, … of latent row r)

* ``f_base`` is the channel's integer base table (the static bottleneck's or
  the one rebuilt from ``p̂``): a Dirichlet prior of strength ``α``
  pseudo-symbols.
* ``count_b'`` are the symbol counts of already coded blocks, forgotten by a
  factor ``γ`` per block, so recent rows weigh most.
* A latent row is split into ``P`` interleaved phases (even then odd columns
  for ``P = 2``): the odd columns are coded with counts that include their
  row's even columns, their neighbours, which is most of the gain, at ``P``
  table builds and range-decoder calls per latent row (not one per symbol).

This is a Dirichlet (add-α) estimator with exponential forgetting, the idea
behind the adaptive probability states of video entropy coders, applied to
whole per-channel tables. The codec limits the tables to the image's largest
symbol magnitude (one byte in the side stream), so they stay short.

Everything is integer arithmetic (counts in 1/256 units, floor division), so
encoder and decoder build the same tables on any platform. Block order, the
block of each symbol and the per-block tables are the whole contract: the
encoder codes all blocks in one rANS call, the decoder decodes block by block
(``RansDecoder.decode_stream``) and updates its counts in between. The y string's
substreams (:data:`~encdist.codec.bitstream.SUBSTREAM_SYMBOLS`) cut this sequence at
fixed symbol counts, inside blocks too; the tables do not see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from encdist.codec.bitstream import SUBSTREAM_SYMBOLS, block_order, stream_layout
from encdist.codec.coding import PRECISION, BufferedEncoder, gc_paused, integer_cdf_table, symbol_bits_floor

__all__ = [
    "BackwardAdaptation",
    "adapted_tables",
    "block_order",
    "decode_adapted",
    "integer_cdf_table",
    "stream_layout",
    "table_indexes",
]

#: Fixed-point unit of the decayed counts (one symbol adds this much).
COUNT_ONE = 256
#: A count unit's weight next to the base table's frequencies (which sum to ``2**PRECISION``).
_COUNT_SCALE = (1 << PRECISION) // COUNT_ONE


def table_indexes(values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Table index of each symbol value, ``(C, m)``: ``value - offset``, or ``length`` (the escape) outside the support."""
    rel = values - offsets.reshape(-1, 1)
    esc = lengths.reshape(-1, 1)
    return np.where((rel < 0) | (rel >= esc), esc, rel)


class _Setup:
    """What encoder and decoder derive alike from the base tables and the parameters."""

    def __init__(self, base_freq, lengths, alpha: int, decay: int, contexts: int = 1):
        # With contexts, row c·X + x is channel c's table in context x, started from the channel's base table.
        # (Base tables already per context, ``(C·X, K)``, are taken as they are.)
        base_freq, lengths = np.asarray(base_freq), np.asarray(lengths, dtype=np.int64)
        if base_freq.shape[0] != len(lengths) * contexts:
            base_freq = np.repeat(base_freq, contexts, axis=0)
        self.lengths = np.repeat(lengths, contexts)
        K = base_freq.shape[-1]
        self.used = np.arange(K)[None, :] <= self.lengths[:, None]
        # The base tables give every used symbol a frequency >= 1, so every row's weight is positive
        # and zero exactly where unused: ``tables`` can skip integer_cdf_table's guards (same result).
        self.prior = np.where(self.used, np.maximum(np.asarray(base_freq, dtype=np.int64), 1) * int(alpha), 0)
        self.share = (1 << PRECISION) - self.used.sum(-1, keepdims=True)  # what is left after 1 per used symbol
        self.used_i = self.used.astype(np.int64)
        self.decay = int(decay)

    def next_counts(self, counts: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Counts after a block: the old ones forgotten by ``decay``/256, plus the block's histogram."""
        return ((counts * self.decay) >> 8) + COUNT_ONE * hist

    def tables(self, counts: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``integer_cdf_table(prior + counts·scale, used)`` for counts ``(..., C, K)``, with fewer operations.

        ``rows``: the tables of these rows only (``counts`` is then ``(len(rows), K)``). The
        weights are positive exactly where a table is used (the prior is, and counts are zero
        beyond it), so ``used`` is ``w > 0``; the work is done in place, in one buffer.
        """
        prior, share = (self.prior, self.share) if rows is None else (self.prior[rows], self.share[rows])
        w = counts * _COUNT_SCALE
        w += prior
        K = w.shape[-1]
        flat = w.reshape(-1, K)
        top = flat.argmax(1)
        total = w.sum(-1, keepdims=True)
        used = w > 0
        w *= share
        w //= total
        w += used
        flat[np.arange(len(flat)), top] += (1 << PRECISION) - flat.sum(1)
        cdf = np.zeros(w.shape[:-1] + (K + 1,), dtype=np.int32)
        np.cumsum(w.astype(np.int32), -1, out=cdf[..., 1:])  # frequencies fit int32: a faster sum
        return cdf


def adapted_tables(symbols, base_freqs, offsets, lengths, alpha: int, decay: int, phases: int):
    """Encoder side: every block's tables and each channel's exact bits, all blocks at once.

    The counts depend on the symbols only, so several starting points (the
    static and the transmitted tables) are adapted for the price of one.

    Args:
        symbols: ``(C, h, w)`` symbol values of one image.
        base_freqs: ``(S, C, K)`` integer frequencies of ``S`` starting
            tables over the ``K`` table symbols (index ``lengths[c]`` is
            channel ``c``'s escape; entries past it are unused), each row
            summing to ``2**16``.
        offsets: ``(C,)`` value of table index 0; ``lengths``: ``(C,)`` in-support symbols.
        alpha: prior strength in pseudo-symbols; decay: retention per block in 1/256.

    Returns:
        ``(tables, bits, ordered, bounds)``: ``(S, num_blocks, C, K+1)`` int32
        CDF tables, ``(S, C)`` bits under them (escapes' bypass bits left
        out), ``(C, h·w)`` symbol values in coding order and the block bounds.
    """
    symbols, offsets = np.asarray(symbols, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
    C, h, w = symbols.shape
    setups = [_Setup(f, lengths, alpha, decay) for f in base_freqs]
    K = setups[0].prior.shape[-1]
    order, bounds = block_order((h, w), phases)
    nb = len(bounds) - 1
    ordered = symbols.reshape(C, -1)[:, order]
    rel = table_indexes(ordered, offsets, setups[0].lengths)
    block = np.repeat(np.arange(nb), np.diff(bounds))[None, :]
    chan = np.arange(C)[:, None]
    hist = np.bincount(((block * C + chan) * K + rel).ravel(), minlength=nb * C * K).reshape(nb, C, K)
    counts = np.zeros((nb, C, K), dtype=np.int64)
    for b in range(1, nb):
        counts[b] = setups[0].next_counts(counts[b - 1], hist[b - 1])
    tables = np.stack([setup.tables(counts) for setup in setups])
    freq = np.diff(tables, axis=-1)
    bits = (hist * (PRECISION - np.log2(np.maximum(freq, 1)))).sum((1, 3))  # (coded symbols have freq >= 1)
    return tables, bits, ordered, bounds


def decode_adapted(decoder, shape: Tuple[int, int], base_freq, offsets, lengths, alpha: int, decay: int,
                   phases: int, contexts=None, thresholds=None) -> np.ndarray:
    """Decoder side: ``(C, h, w)`` symbol values, decoded block by block from a :class:`~encdist.codec.coding.StreamDecoder`.

    With ``contexts`` (a :class:`~encdist.codec.context.ContextModel`, and the image's
    ``thresholds``), each block is decoded group by group, each group's contexts computed
    from what is decoded so far; the counts are updated per block. Channels are in coding order.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    X = 1 if contexts is None else contexts.num_contexts
    setup = _Setup(base_freq, lengths, alpha, decay, X)
    V, K = setup.prior.shape
    C = V // X
    h, w = shape
    P = max(1, min(int(phases), w))
    order, bounds = block_order((h, w), phases)
    out = np.zeros((C, h, w), dtype=np.int32)
    flat = out.reshape(C, h * w)
    counts = np.zeros((V, K), dtype=np.int64)
    sizes = setup.lengths + 2
    offs = np.repeat(offsets, X)
    groups = [0, C] if contexts is None else contexts.group_bounds(C)
    spans = [(g, g0, g1, np.arange(g0, g1)[:, None]) for g, (g0, g1) in enumerate(zip(groups[:-1], groups[1:]))]
    mark = np.zeros(V, dtype=bool)
    for b, (b0, b1) in enumerate(zip(bounds[:-1], bounds[1:])):
        r, phase = divmod(b, P)
        pos = order[b0:b1]
        cols = pos - r * w
        m = b1 - b0
        if X > 1:
            spatial = contexts.spatial_contexts(out, r, cols, phase)
            stat = np.zeros(m, dtype=np.int64)  # Σ |ŷ| of the groups decoded so far, per column
        rows_all = []
        for g, g0, g1, chan in spans:
            if X > 1:
                rows = chan * X + spatial[g0:g1] + contexts.channel_level(stat, g, thresholds)[None]
            else:
                rows = np.broadcast_to(chan, (g1 - g0, m))
            # The tables some symbol uses, and each symbol's among them (no sort: a mark per table row).
            mark[rows] = True
            used = np.flatnonzero(mark)
            mark[used] = False
            index = np.searchsorted(used, rows)
            values = decoder.decode_lists(index.ravel().tolist(), setup.tables(counts[used], used).tolist(),
                                          sizes[used].tolist(), offs[used].tolist())
            block = np.fromiter(values, dtype=np.int32, count=(g1 - g0) * m).reshape(g1 - g0, m)
            flat[g0:g1, pos] = block
            if X > 1 and g + 2 < len(groups):
                stat += np.abs(block).sum(0)
            rows_all.append(rows)
        rel = table_indexes(flat[:, pos], offsets, setup.lengths[::X])
        hist = np.bincount((np.concatenate(rows_all) * K + rel).ravel(), minlength=V * K).reshape(V, K)
        counts = setup.next_counts(counts, hist)
    return out


#: Memory the encoder's block tables may take at once (bytes, estimated): larger latents
#: are planned and coded in bands of latent rows, with the same bytes.
TABLE_BUDGET = 64 << 20


@dataclass(frozen=True)
class BackwardAdaptation:
    """The codec's backward adaptation: parameters, base tables, encoder plan and decoder.

    Args:
        alpha: prior strength of the starting table, in pseudo-symbols.
        decay: share of the counts kept from one block to the next (rounded to 1/256).
        phases: interleaved phases (blocks) per latent row.
        budget: bytes the encoder's tables may take at once (:data:`TABLE_BUDGET`).
    """

    alpha: int = 16
    decay: float = 0.6
    phases: int = 2
    budget: int = TABLE_BUDGET

    def __post_init__(self):
        if int(self.alpha) < 1 or not 0 <= float(self.decay) <= 1 or int(self.phases) < 1:
            raise ValueError(
                f"need adapt_alpha >= 1, 0 <= adapt_decay <= 1 and adapt_phases >= 1, "
                f"got {self.alpha!r}, {self.decay!r}, {self.phases!r}"
            )

    @property
    def params(self) -> Tuple[int, int, int]:
        """``(alpha, decay in 1/256, phases)``: what encoder and decoder must share (fingerprinted)."""
        return int(self.alpha), round(float(self.decay) * 256), int(self.phases)

    @staticmethod
    def radius(symbols, num_bins: int) -> int:
        """Largest symbol magnitude of the image, sent in one byte (at most ``B/2``)."""
        a = np.asarray(symbols)
        return min(max(int(a.max()), -int(a.min())) if a.size else 0, num_bins // 2)  # no |a| temporary

    @staticmethod
    def support(lo: np.ndarray, length: np.ndarray, radius: int) -> Tuple[np.ndarray, np.ndarray]:
        """Coded range per channel: the fixed tables' support within ``±radius``."""
        lo, length = np.asarray(lo, dtype=np.int64), np.asarray(length, dtype=np.int64)
        hi = lo + length - 1
        b_lo = np.clip(-radius, lo, hi)
        b_hi = np.clip(radius, b_lo, hi)
        return b_lo, b_hi - b_lo + 1

    def base_freqs(self, tables: Sequence[Tuple[np.ndarray, np.ndarray]], lo, length, radius: int):
        """Integer base frequencies ``(C, K)`` of each ``(cdf, offsets)`` table on the backward support.

        In-support symbols keep the table's frequencies; the escape gets 1, since the
        image holds no symbol beyond ``±radius`` (a channel whose support is narrower
        than that may still escape, and can). Returns ``(freqs, lo, length)``.
        """
        lo, length = self.support(lo, length, radius)
        k = np.arange(int(length.max()) + 1)[None, :]
        out = []
        for cdf, offsets in tables:
            cdf = np.asarray(cdf, dtype=np.int64)
            j = np.clip((lo - np.asarray(offsets, dtype=np.int64))[:, None] + k, 0, cdf.shape[1] - 2)
            f = np.take_along_axis(cdf, j + 1, 1) - np.take_along_axis(cdf, j, 1)
            out.append(np.where(k < length[:, None], f, (k == length[:, None]).astype(np.int64)))
        return out, lo, length

    def _rows_per_band(self, C: int, w: int, K: int, starts: int, contexts: int = 1) -> int:
        P = max(1, min(self.phases, w))
        # per latent row: the dense block histograms (int64) of every table row; the tables some
        # symbol uses (at most C·min(w, P·X): int32 per start, int64 work, Python lists while
        # coding); the row's symbols as Python lists.
        # With contexts, the band's contexts and their temporaries (int32 and int64).
        used = C * min(w, P * contexts)
        per_row = 16 * P * C * contexts * (K + 1) + used * (K + 1) * (4 * starts + 80) + C * w * (80 if contexts == 1 else 120)
        return max(1, int(self.budget) // per_row)

    def plan(self, symbols, base_freqs, offsets, lengths, contexts=None, num_contexts: int = 1,
             channels: np.ndarray | None = None) -> "AdaptedPlan":
        """Encoder side: exact bits of each channel under each start, and an encoder; see :class:`AdaptedPlan`."""
        return AdaptedPlan(self, symbols, base_freqs, offsets, lengths, contexts, num_contexts, channels)

    def decode(self, decoder, shape, base_freq, offsets, lengths, contexts=None, thresholds=None) -> np.ndarray:
        """Decoder side: ``(C, h, w)`` int32 symbols, block by block (:func:`decode_adapted`)."""
        with gc_paused():
            return decode_adapted(decoder, shape, base_freq, offsets, lengths, *self.params, contexts, thresholds)

    @staticmethod
    def bits_floor(lengths) -> np.ndarray:
        """Per channel, the fewest bits rANS spends on a symbol under *any* of its adapted tables.

        Every adapted table of channel ``c`` gives each of its ``lengths[c] + 1`` used
        entries (the support and the escape) a frequency of at least 1 (:class:`_Setup`),
        so its largest is at most ``2**16 - lengths[c]``, whatever the symbols decoded so
        far: :func:`~encdist.codec.coding.symbol_bits_floor` of that. It is all that can be
        said before decoding, and little (about ``2e-5·lengths[c]`` bits): the stream's
        substream lengths and the decoder's pixel limit bound the rest.
        """
        return symbol_bits_floor((1 << PRECISION) - np.asarray(lengths, dtype=np.int64))

    def likelihoods(self, symbols: Tensor, priors: Sequence[Tensor], lo: Tensor | None = None,
                    length: Tensor | None = None, contexts: Tensor | None = None,
                    num_contexts: int = 1) -> List[Tensor]:
        """Each symbol's probability under the adapted tables, differentiable in the priors.

        The training-time model of this coder (what makes the rate it is trained
        for the rate it codes at): symbol ``s`` of channel ``c`` in block ``b`` has

        .. code-block:: none

            q(s) = (α·π(s) + n_b(s)) / (α·Σ_s' π(s') + Σ_s' n_b(s')),     n_{b+1} = γ·n_b + hist_b

        with ``π`` the prior restricted to the coded support (the bottleneck's
        support ``lo … lo+length-1`` within the image's ``±radius``), not
        renormalized, as :meth:`base_freqs` does with integer tables. It leaves out
        what the integer coder adds (one frequency unit per used symbol, floors of
        the decayed counts, escapes' bypass bits), well under 1 % of the bits.
        The counts depend on the symbols only: the gradient goes to the priors.
        With contexts, every (channel, context) has its own counts and prior.

        Args:
            symbols: ``(n, C, h, w)`` integer symbols (latent minus median).
            priors: pmfs ``(n or 1, C, B)`` over ``B`` bins (bin ``k`` holds symbol ``k - B/2``),
                or ``(n or 1, C, X, B)`` per context.
            lo, length: ``(C,)`` the static tables' support (``table_support``); ``None``: all bins.
            contexts: ``(n, C, h, w)`` context of every symbol (in ``0..num_contexts-1``), or ``None``.

        Returns:
            one ``(n, C, h, w)`` tensor of probabilities per prior.
        """
        alpha = self.params[0]
        n, C, h, w = symbols.shape
        B = priors[0].shape[-1]
        dev = priors[0].device
        X = int(num_contexts)
        inside, order_t, ordered, ctx, seen, total = self._symbol_counts(symbols, B, dev, lo, length, contexts, X)
        bins = (ordered + B // 2).clamp(0, B - 1)
        inverse = torch.empty_like(order_t)
        inverse[order_t] = torch.arange(len(order_t), device=dev)
        out = []
        for prior in priors:
            pi, strength, floor = self._restricted(prior, inside, n, X)
            pi_at = pi.flatten(2).gather(2, ctx * B + bins).clamp_min(floor)
            q = ((alpha * pi_at + seen) / (strength.flatten(2).gather(2, ctx) + total).clamp_min(alpha * floor)).clamp_min(floor)
            out.append(q[..., inverse].view(n, C, h, w))
        return out

    @staticmethod
    def _support(sym: Tensor, num_bins: int, lo: Tensor | None, length: Tensor | None) -> Tensor:
        """The coded support ``(n, C, B)`` of symbols ``(n, C, L)``: the image's ``±radius`` within ``lo … lo+length-1``."""
        n, C, B, dev = sym.shape[0], sym.shape[1], num_bins, sym.device
        radius = sym.abs().flatten(1).amax(1).clamp(max=B // 2).view(n, 1, 1)
        value = torch.arange(B, device=dev).view(1, 1, B) - B // 2
        inside = value.abs() <= radius
        if lo is not None:
            lo_ = lo.to(dev).view(1, C, 1)
            inside = inside & (value >= lo_) & (value < lo_ + length.to(dev).view(1, C, 1))
        return inside

    def _symbol_counts(self, symbols: Tensor, num_bins: int, device, lo, length, contexts, num_contexts: int):
        """Per symbol, the decayed counts its table holds when it is coded: ``(inside, order, ordered, ctx, seen, total)``.

        ``seen``: of its own value, ``total``: of all values, in its channel and context ``(n, C, L)``
        (coding order), computed block by block with counts over ``(n, C, X·K)`` only, never over
        all blocks at once. ``ctx`` is each symbol's context (zeros without contexts).
        """
        _, decay, phases = self.params
        n, C, h, w = symbols.shape
        B, dev, X = num_bins, device, int(num_contexts)
        sym = symbols.detach().long().to(dev).reshape(n, C, h * w)
        inside = self._support(sym, B, lo, length)
        order, bounds = block_order((h, w), phases)
        order_t = torch.as_tensor(order, device=dev)
        ordered = sym[..., order_t]  # (n, C, L) in coding order
        if X > 1:
            ctx = contexts.detach().long().to(dev).reshape(n, C, h * w)[..., order_t]
        else:
            ctx = torch.zeros_like(ordered)
        k = ordered - int(ordered.min())
        K = int(k.max()) + 1
        slot = ctx * K + k
        g = decay / 256.0
        with torch.no_grad():
            counts = torch.zeros(n, C, X * K, device=dev)
            tot = torch.zeros(n, C, X, device=dev)
            seen = torch.empty(ordered.shape, device=dev)
            total = torch.empty(ordered.shape, device=dev)
            for b0, b1 in zip(bounds[:-1], bounds[1:]):
                i, c = slot[..., b0:b1], ctx[..., b0:b1]
                seen[..., b0:b1] = counts.gather(2, i)
                total[..., b0:b1] = tot.gather(2, c)
                one = torch.ones(i.shape, device=dev)
                counts.mul_(g).scatter_add_(2, i, one)
                tot.mul_(g).scatter_add_(2, c, one)
        return inside, order_t, ordered, ctx, seen, total

    def channel_bits(self, symbols: Tensor, num_bins: int, lo: Tensor | None = None, length: Tensor | None = None,
                     device=None) -> Callable[[Tensor], Tensor]:
        """``bits(prior)``: each channel's bits ``(n, C)`` under the adapted tables started from ``prior``.

        ``-Σ log2`` of :meth:`likelihoods` per channel (same model, same arguments, priors
        over ``num_bins`` bins on ``device``), for many priors over the same symbols, as the
        encoder's refinement asks. The symbols' block histograms and decayed counts are
        computed once, and a symbol's probability depends only on its block and its value,
        so each call costs one term per (block, value) pair that occurs, not one per symbol.
        """
        alpha = self.params[0]
        inside, _, ordered, _, _, hist, counts = self._block_statistics(symbols, num_bins, device, lo, length)
        n, C = hist.shape[:2]
        total = counts.sum(-1, keepdim=True).expand_as(hist)
        i, c, _, k = (hist > 0).nonzero(as_tuple=True)  # the (block, value) pairs that occur
        row = i * C + c  # (image, channel) of each pair
        weight, seen, total = hist[hist > 0], counts[hist > 0], total[hist > 0]
        bins = (k + int(ordered.min()) + num_bins // 2).clamp(0, num_bins - 1)

        def bits(prior: Tensor) -> Tensor:
            pi, strength, floor = self._restricted(prior, inside, n)
            pi_at = pi.reshape(n * C, -1)[row, bins].clamp_min(floor)
            q = ((alpha * pi_at + seen) / (strength.reshape(-1)[row] + total).clamp_min(alpha * floor)).clamp_min(floor)
            out = torch.zeros(n * C, device=q.device, dtype=q.dtype).index_add(0, row, -weight * torch.log2(q))
            return out.view(n, C)

        return bits

    def _restricted(self, prior: Tensor, inside: Tensor, n: int, contexts: int = 1):
        """``(π, α·Σπ, floor)``: the prior on the coded support ``(n, C, X, B)``, its strength ``(n, C, X, 1)``.

        As :meth:`base_freqs`: the table's own frequencies inside the support (at least one unit
        in ``2**16`` each, as the integer tables give every coded symbol), nothing outside (no
        renormalization). A prior without a context axis serves every context. (Without
        contexts, ``X = 1`` and the shapes are ``(n, C, B)`` and ``(n, C, 1)``.)
        """
        floor = torch.full((), 2.0 ** -PRECISION, device=inside.device, dtype=prior.dtype)
        if contexts == 1 and prior.dim() == 3:
            pi = torch.where(inside, prior.clamp_min(floor), torch.zeros_like(floor)).expand(n, -1, -1)
        else:
            if prior.dim() == 3:
                prior = prior.unsqueeze(2)
            pi = torch.where(inside.unsqueeze(2), prior.clamp_min(floor), torch.zeros_like(floor))
            pi = pi.expand(n, -1, contexts, -1)
        return pi, self.params[0] * pi.sum(-1, keepdim=True), floor

    def _block_statistics(self, symbols: Tensor, num_bins: int, device, lo: Tensor | None, length: Tensor | None):
        """What :meth:`channel_bits` derives from the symbols alone, on ``device`` (one table per channel).

        ``(inside, order, ordered, block, k, hist, counts)``: the coded support ``(n, C, B)``,
        the coding order, the symbols in it ``(n, C, L)``, each one's block ``(L,)`` and value
        index ``k`` (value minus the smallest), the blocks' histograms and the decayed counts
        before each block, ``(n, C, blocks, K)``.
        """
        _, decay, phases = self.params
        n, C, h, w = symbols.shape
        B, dev = num_bins, device
        sym = symbols.detach().long().to(dev).reshape(n, C, h * w)
        inside = self._support(sym, B, lo, length)
        order, bounds = block_order((h, w), phases)
        nb = len(bounds) - 1
        order_t = torch.as_tensor(order, device=dev)
        ordered = sym[..., order_t]  # (n, C, L) in coding order
        block = torch.as_tensor(np.repeat(np.arange(nb), np.diff(bounds)), device=dev)
        smin = int(ordered.min())
        k = ordered - smin
        K = int(k.max()) + 1
        hist = torch.zeros(n, C, nb * K, device=dev)
        hist.scatter_add_(2, block.view(1, 1, -1) * K + k, torch.ones_like(k, dtype=hist.dtype))
        hist = hist.view(n, C, nb, K)
        counts = torch.zeros_like(hist)
        g = decay / 256.0
        for b in range(1, nb):
            counts[:, :, b] = g * counts[:, :, b - 1] + hist[:, :, b - 1]
        return inside, order_t, ordered, block, k, hist, counts


class AdaptedPlan:
    """One image's backward-adapted coding from ``S`` starting tables, in bands of latent rows.

    ``bits`` is ``(S, C)``: each channel's exact bits from each start (escapes' bypass
    bits left out). ``encode(use)`` codes channel ``c`` from start ``use[c]`` (an int per
    channel). The counts depend on the symbols only, so all starts adapt for the price of
    one. The latent is planned in bands of latent rows; the bands' tables are kept for
    ``encode`` while together they fit the budget, else nothing is kept and ``encode``
    plans the bands again, one at a time, so memory stays bounded whatever the image's
    height (same bytes either way: the coder buffers every symbol until its flush).

    With ``contexts`` (``(r0, r1) -> (C, r1-r0, w)``, the context of every symbol of latent
    rows ``r0..r1-1``, as :meth:`ContextModel.contexts <encdist.codec.context.ContextModel.contexts>`
    gives them, ``num_contexts`` of them), channel ``c`` has one adapted table per context:
    row ``c·X + x`` of every block's tables. They are asked for band by band, so the encoder's
    memory stays bounded.
    ``channels``: coding order of the channels of ``symbols`` (default: as they are), read band
    by band rather than copied.
    """

    def __init__(self, adaptation: BackwardAdaptation, symbols, base_freqs, offsets, lengths,
                 contexts=None, num_contexts: int = 1, channels: np.ndarray | None = None):
        alpha, decay, phases = adaptation.params
        self.symbols = np.asarray(symbols)
        self.channels = None if channels is None else np.asarray(channels, dtype=np.int64)
        C, h, w = self.symbols.shape
        self.X = int(num_contexts)
        self.contexts = None if self.X == 1 else contexts
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.setups = [_Setup(f, lengths, alpha, decay, self.X) for f in base_freqs]
        self.K = self.setups[0].prior.shape[-1]
        self.phases = phases
        rows = adaptation._rows_per_band(C, w, self.K, len(self.setups), self.X)
        self.bands = [(r, min(h, r + rows)) for r in range(0, h, rows)]
        self._cache = None
        per_row = np.zeros((len(self.setups), C * self.X))
        counts = np.zeros((C * self.X, self.K), dtype=np.int64)
        cache, kept = [], 0
        for r0, r1 in self.bands:
            tables, (u, k), counts, ordered, rows, where = self._band(r0, r1, counts)
            # Exact bits of every symbol (its table's frequency is >= 1), summed per table row.
            row_of = np.ascontiguousarray(rows).reshape(-1)
            for i, t in enumerate(tables):
                per_row[i] += np.bincount(row_of, PRECISION - np.log2(t[u, k + 1] - t[u, k]), minlength=per_row.shape[1])
            # The bands' tables are kept for encode() while they fit the budget (else rebuilt there).
            kept += tables.nbytes + where.nbytes + ordered.nbytes + (rows.nbytes if rows.base is None else 0)
            if cache is not None and kept <= adaptation.budget:
                cache.append((tables, ordered, rows, where))
            else:
                cache = None
        self._cache = cache
        self.bits = per_row.reshape(len(self.setups), C, self.X).sum(-1)

    def _band(self, r0: int, r1: int, counts: np.ndarray):
        """The band's tables, only where a block codes some symbol of a row.

        Returns ``(tables (S, U, K+1), (each symbol's table in tables, its entry in it), counts
        after the band, symbols in coding order, their table rows (C, L) within a block
        (c·X + context), where (nb, C·X))``: ``where[b, row]`` is the index in ``tables`` of
        block ``b``'s table of ``row``, -1 if unused.
        """
        C, _, w = self.symbols.shape
        K, X, setup = self.K, self.X, self.setups[0]
        V = C * X
        order, bounds = block_order((r1 - r0, w), self.phases)
        nb = len(bounds) - 1
        band = self.symbols[:, r0:r1] if self.channels is None else self.symbols[self.channels, r0:r1]
        ordered = band.reshape(C, -1)[:, order].astype(np.int64)
        rel = table_indexes(ordered, self.offsets, setup.lengths[::X])
        block = np.repeat(np.arange(nb), np.diff(bounds))[None, :]
        rows = np.arange(C)[:, None] * X
        if X > 1:
            rows = rows + np.asarray(self.contexts(r0, r1), dtype=np.int64).reshape(C, -1)[:, order]
        else:
            rows = np.broadcast_to(rows, ordered.shape)
        block_row = (block * V + rows).ravel()
        hist = np.bincount(block_row * K + rel.ravel(), minlength=nb * V * K).reshape(nb, V, K)
        used = np.zeros(nb * V, dtype=bool)  # (block, row) pairs some symbol codes with
        used[block_row] = True
        used = used.reshape(nb, V)
        where = np.full((nb, V), -1, dtype=np.int64)
        where[used] = np.arange(int(used.sum()))
        sel_counts = np.empty((int(used.sum()), K), dtype=np.int64)
        for b in range(nb):
            sel_counts[where[b, used[b]]] = counts[used[b]]
            counts = setup.next_counts(counts, hist[b])
        row_ids = np.nonzero(used)[1]
        tables = np.stack([s.tables(sel_counts, row_ids) for s in self.setups])
        return tables, (where.reshape(-1)[block_row], rel.ravel()), counts, ordered, rows, where

    def encode(self, use, substream_symbols: int = SUBSTREAM_SYMBOLS) -> bytes:
        """The y string, channel ``c`` coded from start ``use[c]`` (substreams: :class:`~encdist.codec.coding.BufferedEncoder`).

        The coder is handed what each symbol's record needs, not the tables (:func:`record_tables`).
        """
        with gc_paused():
            return self._encode(use, substream_symbols)

    def _encode(self, use, substream_symbols: int) -> bytes:
        C, _, w = self.symbols.shape
        X = self.X
        use = np.repeat(np.asarray(use, dtype=np.int64), X)
        lengths, offs = self.setups[0].lengths, np.repeat(self.offsets, X)
        enc = BufferedEncoder(substream_symbols)
        counts = np.zeros((C * X, self.K), dtype=np.int64)
        for band, (r0, r1) in enumerate(self.bands):
            if self._cache is not None:
                tables, ordered, rows, where = self._cache[band]
            else:  # planned again from the start: keeping every band's counts would grow with the image
                tables, _, counts, ordered, rows, where = self._band(r0, r1, counts)
            pos, idx = stream_layout(C, r1 - r0, w, self.phases)
            # stream_layout's index is block·C + channel; the table is block's of row c·X + context.
            row = np.ascontiguousarray(rows).ravel()[pos]
            # Each symbol's table: (start, index in the band's tables); entry k of it, flat.
            flat_table = (use[row] * tables.shape[1] + where[idx // C, row]) * tables.shape[2]
            cdf = tables.reshape(-1)
            enc.add(*record_tables(ordered.ravel()[pos], lengths[row], offs[row], flat_table, cdf))
        return enc.flush()


def record_tables(values: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, table: np.ndarray, cdf: np.ndarray):
    """``(symbols, indexes, cdf, sizes, offsets)`` lists for ``BufferedRansEncoder.encode_with_indexes``
    that code ``values`` as their tables would, handing over a few numbers per distinct record.

    ``values``, ``lengths`` and ``offsets`` ``(n,)``: each symbol and its table's support;
    ``cdf`` holds the CDF tables end to end (escape at ``lengths``), symbol ``i``'s from
    flat index ``table[i]``. The coder pushes one record per symbol (``cdf[v]``,
    ``cdf[v+1] - cdf[v]``), plus bypass records for an escape, from the table's
    ``v = value - offset`` (:func:`~encdist.codec.coding._coder_records`). So a symbol inside
    its table's support gets the 3-entry table ``[start, start + freq, 2**16]`` and symbol 0
    (offset 0): the same record, with one such table per table entry in use instead of
    every table's ``K+1`` entries (converting those to the coder's lists was most of the
    encoder's time). An escape gets ``[start, start + freq]`` (its last entry is the escape)
    and an offset that leaves its bypass value as it was: the offset for a value below the
    support, ``offset + length`` for one above. Same records, same bytes.
    """
    n = len(values)
    rel = values - offsets
    esc = (rel < 0) | (rel >= lengths)
    entry = table + np.where(esc, lengths, rel)
    inside = ~esc
    # The entries in use, numbered in order (a mark per entry: no sort).
    mark = np.zeros(len(cdf), dtype=bool)
    mark[entry[inside]] = True
    keys = np.flatnonzero(mark)
    number = np.cumsum(mark, dtype=np.int32) - 1
    D = len(keys)
    lo = cdf[keys].astype(np.int64)
    tables = np.stack([lo, cdf[keys + 1], np.full(D, 1 << PRECISION)], 1).tolist()
    sizes, offs = [3] * D, [0] * D
    index = number[entry]
    symbols = [0] * n
    where = np.flatnonzero(esc)
    if len(where):
        index[where] = D + np.arange(len(where))
        for i, v in zip(where.tolist(), values[where].tolist()):
            symbols[i] = v
        e = entry[where]
        tables += np.stack([cdf[e], cdf[e + 1]], 1).tolist()
        sizes += [2] * len(where)
        offs += (offsets[where] + np.where(rel[where] >= 0, lengths[where], 0)).tolist()
    return symbols, index.tolist(), tables, sizes, offs
